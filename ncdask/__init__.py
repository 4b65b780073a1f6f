"""ncdask: out-of-core Neural Collapse metrics with Dask, Zarr and xarray.

The public names are imported on first use (PEP 562), so that ``import ncdask``
and ``ncdask --help`` do not pay for importing dask, xarray and zarr."""

from importlib import import_module as _import
from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

from ncdask._version import __version__

#: submodule -> the public names it defines, in the order of ``__all__``
_NAMES: dict[str, str] = {
    "store": "EmbeddingStore StoreWriter resolve_split DuplicateImportError DamagedStoreError "
             "SplitChangedError",
    "store.zarrio": "IncompleteOutputError DamagedOutputError",
    "store.check": "check_store",
    "stats": "class_stats merge_stats save_stats load_stats coarsen EmptyClassWarning",
    "accumulate": "StatsAccumulator",
    "sink": "StatsSink",
    "metrics.evaluate": "EvalAccumulator",
    "results": "save_results open_results",
    "metrics": "measure DegenerateInputWarning RieszRangeWarning",
    "metrics.separation": "equiseparation",
    "sweeps": "sweep",
    "analysis": "analyze",
    "hooks": "capture",
    "covariances": "class_covariances class_nc1 class_spectra",
    "neco": "total_covariance neco_fit neco_scores nci_scores ood_report",
}
#: public name -> submodule that defines it
_WHERE = {name: mod for mod, names in _NAMES.items() for name in names.split()}

#: Reference-compatible and peer functions: importable from here, but they live in
#: :mod:`ncdask.compat` and are not part of the top-level API (``__all__``).
_COMPAT = frozenset("""
    bias_collapse class_dist_norm_vars classifier_equinorm classifier_etf_error
    classifier_max_angle clf_ncc_agreement covariance_ratio dist_kernel distance_norms
    interference_grid kernel_grid kernel_stats log_kernel mean_norms ood_class_variability
    orthogonality_deviation riesz_kernel self_duality_distance self_duality_error
    similarities simplex_etf_error structure_error variability_cdnv
    MeanAccumulator VarNormAccumulator CovarAccumulator DecAccumulator
""".split())

if _TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs; __all__ exports them
    from ncdask.accumulate import StatsAccumulator
    from ncdask.analysis import analyze
    from ncdask.covariances import class_covariances, class_nc1, class_spectra
    from ncdask.hooks import capture
    from ncdask.metrics.api import DegenerateInputWarning, RieszRangeWarning, measure
    from ncdask.metrics.evaluate import EvalAccumulator
    from ncdask.metrics.separation import equiseparation
    from ncdask.neco import nci_scores, neco_fit, neco_scores, ood_report, total_covariance
    from ncdask.results import open_results, save_results
    from ncdask.sink import StatsSink
    from ncdask.stats import (
        EmptyClassWarning,
        class_stats,
        coarsen,
        load_stats,
        merge_stats,
        save_stats,
    )
    from ncdask.store import (
        DamagedStoreError,
        DuplicateImportError,
        EmbeddingStore,
        SplitChangedError,
        StoreWriter,
        resolve_split,
    )
    from ncdask.store.check import check_store
    from ncdask.store.zarrio import DamagedOutputError, IncompleteOutputError
    from ncdask.sweeps import sweep


def __getattr__(name: str) -> _Any:
    mod = "compat" if name in _COMPAT else _WHERE.get(name)
    if mod is None:
        if name.startswith("__"):
            raise AttributeError(f"module 'ncdask' has no attribute {name!r}")
        try:  # a submodule
            return _import(f".{name}", __name__)
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module 'ncdask' has no attribute {name!r}") from None
    value = getattr(_import(f".{mod}", __name__), name)
    if mod != "compat":  # compat's names stay out of the namespace, as out of __all__
        globals()[name] = value
    return value


#: The public subpackages and modules, offered by ``dir(ncdask)`` beside ``__all__``.
_MODULES = ("compat", "graph", "kernels", "metrics", "plot", "scheduler", "stats", "store")


def __dir__() -> list[str]:
    return sorted({*__all__, *_MODULES})


__all__ = [  # the same names as _NAMES, literally, for tools that read __all__
    "__version__", "EmbeddingStore", "StoreWriter", "resolve_split", "DuplicateImportError",
    "DamagedStoreError", "SplitChangedError", "IncompleteOutputError", "DamagedOutputError",
    "check_store", "class_stats", "merge_stats", "save_stats", "load_stats", "coarsen",
    "EmptyClassWarning",
    "StatsAccumulator", "StatsSink", "EvalAccumulator", "save_results", "open_results", "measure",
    "DegenerateInputWarning", "RieszRangeWarning", "equiseparation", "sweep", "analyze", "capture",
    "class_covariances", "class_nc1", "class_spectra", "total_covariance", "neco_fit",
    "neco_scores", "nci_scores", "ood_report",
]
