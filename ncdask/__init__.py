"""ncdask: out-of-core Neural Collapse metrics with Dask, Zarr and xarray.

The public names are imported on first use (PEP 562), so that ``import ncdask``
and ``ncdask --help`` do not pay for dask, xarray and zarr up front (measured:
``python -c "import ncdask.cli"`` 0.16 s lazily against 2.4-3.2 s for
``from ncdask import *``, three runs each on 2 cores).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from ncdask._version import __version__

#: public name -> submodule that defines it
_WHERE: dict[str, str] = {
    "capture": "hooks",
    "class_covariances": "covariances",
    "class_nc1": "covariances",
    "class_spectra": "covariances",
    "DegenerateInputWarning": "metrics",
    "RieszRangeWarning": "metrics",
    "measure": "metrics",
    "neco_fit": "neco",
    "neco_scores": "neco",
    "nci_scores": "neco",
    "ood_report": "neco",
    "total_covariance": "neco",
    "EmptyClassWarning": "stats",
    "class_stats": "stats",
    "load_stats": "stats",
    "merge_stats": "stats",
    "save_stats": "stats",
    "EmbeddingStore": "store",
    "StoreWriter": "store",
    "resolve_split": "store",
    "sweep": "sweeps",
    "save_results": "results",
    "open_results": "results",
    "IncompleteOutputError": "store.zarrio",
    "DuplicateImportError": "store",
    "DamagedStoreError": "store",
    "check_store": "store.check",
    "StatsAccumulator": "accumulate",
    "StatsSink": "accumulate",
    "EvalAccumulator": "metrics.evaluate",
}

#: Reference-compatible and peer functions: importable from here as before, but they
#: live in :mod:`ncdask.compat` and are not part of the top-level API (``__all__``).
_COMPAT = frozenset({
    "bias_collapse",
    "class_dist_norm_vars",
    "classifier_equinorm",
    "classifier_etf_error",
    "classifier_max_angle",
    "clf_ncc_agreement",
    "covariance_ratio",
    "dist_kernel",
    "distance_norms",
    "interference_grid",
    "kernel_grid",
    "kernel_stats",
    "log_kernel",
    "mean_norms",
    "ood_class_variability",
    "orthogonality_deviation",
    "riesz_kernel",
    "self_duality_distance",
    "self_duality_error",
    "similarities",
    "simplex_etf_error",
    "structure_error",
    "variability_cdnv",
})

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs; __all__ exports them
    from ncdask.store.zarrio import IncompleteOutputError
    from ncdask.accumulate import StatsAccumulator, StatsSink
    from ncdask.hooks import capture
    from ncdask.store.check import check_store
    from ncdask.covariances import class_covariances, class_nc1, class_spectra
    from ncdask.metrics.evaluate import EvalAccumulator
    from ncdask.metrics.api import DegenerateInputWarning, RieszRangeWarning, measure
    from ncdask.neco import nci_scores, neco_fit, neco_scores, ood_report, total_covariance
    from ncdask.results import open_results, save_results
    from ncdask.stats.core import EmptyClassWarning, class_stats, load_stats, merge_stats, save_stats
    from ncdask.store import (
        DamagedStoreError,
        DuplicateImportError,
        EmbeddingStore,
        StoreWriter,
        resolve_split,
    )
    from ncdask.sweeps import sweep


def __getattr__(name: str) -> Any:
    mod = "compat" if name in _COMPAT else _WHERE.get(name)
    if mod is None:
        if name.startswith("__"):
            raise AttributeError(f"module 'ncdask' has no attribute {name!r}")
        try:  # a submodule, as ``ncdask.metrics.api`` was with eager imports
            return importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module 'ncdask' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f".{mod}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})


class _Package(types.ModuleType):
    """Keeps ``ncdask.sweeps`` and ``ncdask.hooks`` the functions.

    Importing the submodule of the same name (``from ncdask.sweeps import
    sweep``) would otherwise rebind the package attribute to the module;
    the modules stay reachable in ``sys.modules``.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and name in _WHERE:
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


__all__ = [
    "__version__",
    # store
    "EmbeddingStore",
    "StoreWriter",
    "resolve_split",
    "DuplicateImportError",
    "IncompleteOutputError",
    "DamagedStoreError",
    "check_store",
    # class statistics
    "class_stats",
    "StatsAccumulator",
    "StatsSink",
    "EvalAccumulator",
    "merge_stats",
    "save_stats",
    "load_stats",
    "save_results",
    "open_results",
    "EmptyClassWarning",
    # measurements
    "measure",
    "DegenerateInputWarning",
    "RieszRangeWarning",
    "sweep",
    "capture",
    # beyond the reference
    "class_covariances",
    "class_nc1",
    "class_spectra",
    "total_covariance",
    "neco_fit",
    "neco_scores",
    "nci_scores",
    "ood_report",
]
