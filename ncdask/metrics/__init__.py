"""The measurement layer: metric declarations evaluated on class statistics.

Names are resolved on first use, so that the kernels and statistics layers can
import :mod:`ncdask.metrics.inputs` without loading every declaration."""

from importlib import import_module as _import
from typing import Any as _Any

_WHERE = {
    "DegenerateInputWarning": "api",
    "RieszRangeWarning": "api",
    "label_results": "api",
    "measure": "api",
    "GROUPS": "declarations",
    "METRICS": "declarations",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> _Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'ncdask.metrics' has no attribute {name!r}")
    return getattr(_import(f"ncdask.metrics.{_WHERE[name]}"), name)


def __dir__() -> list[str]:
    return list(__all__)
