"""The reference package's functions and accumulators, and the peers' standalone metrics.

``neural_collapse``'s functions and accumulators with their names, arguments and defaults
(:mod:`ncdask.metrics.reference_api`, :mod:`ncdask.metrics.reference_accumulate`; the
migration guide, docs/migration.md, maps each) and other codebases' metrics
(:mod:`ncdask.metrics.peers`); not in ``ncdask.__all__``."""

from __future__ import annotations

from ncdask.metrics import reference_accumulate, reference_api
from ncdask.metrics.peers import (
    PEERS,
    bias_collapse,
    classifier_equinorm,
    classifier_etf_error,
    classifier_max_angle,
    ood_class_variability,
    self_duality_distance,
)
from ncdask.metrics.reference_accumulate import (
    CovarAccumulator,
    DecAccumulator,
    MeanAccumulator,
    VarNormAccumulator,
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

#: The reference package's names (``neural_collapse.measure`` / ``.kernels`` / ``.accumulate``).
REFERENCE = (*reference_api.__all__, *reference_accumulate.__all__)


def __dir__() -> list[str]:  # the public names only, for dir() and tab completion
    return sorted({*__all__, "PEERS", "REFERENCE"})

__all__ = [
    "covariance_ratio", "variability_cdnv", "kernel_stats", "kernel_grid", "dist_kernel",
    "log_kernel", "riesz_kernel", "class_dist_norm_vars", "interference_grid",
    "simplex_etf_error", "self_duality_error", "similarities", "structure_error",
    "distance_norms", "mean_norms", "clf_ncc_agreement", "orthogonality_deviation",
    "classifier_etf_error", "classifier_equinorm", "classifier_max_angle",
    "self_duality_distance", "bias_collapse", "ood_class_variability",
    "MeanAccumulator", "VarNormAccumulator", "CovarAccumulator", "DecAccumulator",
]
assert set(__all__) == {*REFERENCE, *PEERS}
