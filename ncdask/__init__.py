"""ncdask: out-of-core Neural Collapse metrics with Dask, Zarr and xarray."""

from ._version import __version__
from .capture import capture
from .covariances import class_covariances, class_nc1, class_spectra
from .metrics import DegenerateInputWarning, RieszRangeWarning, measure
from .neco import neco_fit, neco_scores, ood_report, total_covariance
from .peers import (
    bias_collapse,
    classifier_equinorm,
    classifier_etf_error,
    classifier_max_angle,
    ood_class_variability,
    self_duality_distance,
)
from .reference_api import (
    class_dist_norm_vars,
    clf_ncc_agreement,
    covariance_ratio,
    dist_kernel,
    distance_norms,
    interference_grid,
    kernel_grid,
    kernel_stats,
    log_kernel,
    mean_norms,
    orthogonality_deviation,
    riesz_kernel,
    self_duality_error,
    similarities,
    simplex_etf_error,
    variability_cdnv,
)
from .stats import EmptyClassWarning, class_stats, load_stats, merge_stats, save_stats
from .store import EmbeddingStore, StoreWriter, resolve_split
from .sweep import sweep

__all__ = [
    "__version__",
    # store
    "EmbeddingStore",
    "StoreWriter",
    "resolve_split",
    # class statistics
    "class_stats",
    "merge_stats",
    "save_stats",
    "load_stats",
    "EmptyClassWarning",
    # measurements
    "measure",
    "DegenerateInputWarning",
    "RieszRangeWarning",
    "sweep",
    "capture",
    # the reference package's functions, blocked
    "covariance_ratio",
    "variability_cdnv",
    "kernel_stats",
    "kernel_grid",
    "dist_kernel",
    "log_kernel",
    "riesz_kernel",
    "class_dist_norm_vars",
    "interference_grid",
    "simplex_etf_error",
    "self_duality_error",
    "similarities",
    "distance_norms",
    "mean_norms",
    "clf_ncc_agreement",
    "orthogonality_deviation",
    # beyond the reference
    "classifier_etf_error",
    "classifier_equinorm",
    "classifier_max_angle",
    "self_duality_distance",
    "bias_collapse",
    "ood_class_variability",
    "class_covariances",
    "class_nc1",
    "class_spectra",
    "total_covariance",
    "neco_fit",
    "neco_scores",
    "ood_report",
]
