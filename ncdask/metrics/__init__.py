"""The measurement layer: metric declarations evaluated on class statistics.

Names are resolved on first use, so that the kernels and statistics layers can
import :mod:`ncdask.metrics.inputs` without loading every declaration."""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "DegenerateInputWarning": "api",
    "RieszRangeWarning": "api",
    "label_results": "api",
    "measure": "api",
    "GROUPS": "declarations",
    "METRICS": "declarations",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'ncdask.metrics' has no attribute {name!r}")
    return getattr(importlib.import_module(f"ncdask.metrics.{_WHERE[name]}"), name)
