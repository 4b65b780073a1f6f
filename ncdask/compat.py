"""The reference package's functions, and the peers' standalone metrics, by name.

``neural_collapse``'s functions with their names, arguments and defaults
(:mod:`ncdask.metrics.reference_api`) and other codebases' metrics
(:mod:`ncdask.metrics.peers`); not in ``ncdask.__all__`` (README.md maps each)."""

from __future__ import annotations

from ncdask.metrics import reference_api
from ncdask.metrics.peers import (
    PEERS,
    bias_collapse,
    classifier_equinorm,
    classifier_etf_error,
    classifier_max_angle,
    ood_class_variability,
    self_duality_distance,
)
from ncdask.metrics.reference_api import (
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
    structure_error,
    variability_cdnv,
)

#: The reference package's names (``neural_collapse.measure`` / ``.kernels``).
REFERENCE = tuple(reference_api.__all__)


def __dir__() -> list[str]:  # the public names only, for dir() and tab completion
    return sorted({*__all__, "PEERS", "REFERENCE"})

__all__ = [
    "covariance_ratio", "variability_cdnv", "kernel_stats", "kernel_grid", "dist_kernel",
    "log_kernel", "riesz_kernel", "class_dist_norm_vars", "interference_grid",
    "simplex_etf_error", "self_duality_error", "similarities", "structure_error",
    "distance_norms", "mean_norms", "clf_ncc_agreement", "orthogonality_deviation",
    "classifier_etf_error", "classifier_equinorm", "classifier_max_angle",
    "self_duality_distance", "bias_collapse", "ood_class_variability",
]
assert set(__all__) == {*REFERENCE, *PEERS}
