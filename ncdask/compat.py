"""The reference package's functions, and the peers' standalone metrics, by name.

``from ncdask.compat import covariance_ratio, ...`` gives the functions of
``neural_collapse.measure`` and ``.kernels`` with their names, arguments and
defaults (:mod:`ncdask.metrics.reference_api`), and the standalone forms of metrics
other codebases report (:mod:`ncdask.metrics.peers`): arrays in, a float (or a
per-class vector, or a lazy K×K grid) out, computed with ncdask's blocked
kernels. Where a function is a metric of :func:`ncdask.measure`, it computes
that metric's declaration (:mod:`ncdask.metrics.declarations`) on the rows given.

The lazy API (:func:`ncdask.measure`, :func:`ncdask.sweeps`, ...) is the
top level; these names are still importable from ``ncdask`` as before, but
are not listed in ``ncdask.__all__``. README.md's migration table maps
each reference function to its ncdask equivalent.
"""

from __future__ import annotations

from ncdask.metrics.peers import (
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
REFERENCE = (
    "covariance_ratio", "variability_cdnv", "kernel_stats", "kernel_grid", "dist_kernel",
    "log_kernel", "riesz_kernel", "class_dist_norm_vars", "interference_grid",
    "simplex_etf_error", "self_duality_error", "similarities", "structure_error",
    "distance_norms", "mean_norms", "clf_ncc_agreement", "orthogonality_deviation",
)
#: The peers' metrics as functions, each also a :func:`ncdask.measure` variable.
PEERS = {
    "classifier_etf_error": "nc2w_etf_err", "classifier_equinorm": "nc2w_equinorm",
    "classifier_max_angle": "nc2w_max_angle", "self_duality_distance": "nc3_papyan",
    "bias_collapse": "nc3_bias", "ood_class_variability": "nc1_ood_class",
}

__all__ = [
    "covariance_ratio", "variability_cdnv", "kernel_stats", "kernel_grid", "dist_kernel",
    "log_kernel", "riesz_kernel", "class_dist_norm_vars", "interference_grid",
    "simplex_etf_error", "self_duality_error", "similarities", "structure_error",
    "distance_norms", "mean_norms", "clf_ncc_agreement", "orthogonality_deviation",
    "classifier_etf_error", "classifier_equinorm", "classifier_max_angle",
    "self_duality_distance", "bias_collapse", "ood_class_variability",
]
assert set(__all__) == {*REFERENCE, *PEERS}
