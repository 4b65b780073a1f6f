"""Standalone functions for the metrics other Neural Collapse codebases report.

The same quantities as :func:`ncdask.measure`'s ``nc2w_*``, ``nc3_papyan``,
``nc3_bias`` and ``nc1_ood_class`` variables (SPEC.md, "Beyond the
reference"), in the style of :mod:`ncdask.metrics.reference_api`: arrays in (NumPy,
CuPy, dask, xarray or PyTorch), a Python ``float`` out, computed in float64
with ncdask's blocked kernels, so that no K×K matrix is formed. Rows are
taken as given: drop empty classes first (:func:`ncdask.measure` does).

==========================  ==========================
function                    ``measure`` variable
==========================  ==========================
:func:`classifier_etf_error`   ``nc2w_etf_err``
:func:`classifier_equinorm`    ``nc2w_equinorm``
:func:`classifier_max_angle`   ``nc2w_max_angle``
:func:`self_duality_distance`  ``nc3_papyan``
:func:`bias_collapse`          ``nc3_bias``
:func:`ood_class_variability`  ``nc1_ood_class``
==========================  ==========================
"""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from ncdask.metrics.inputs import as_dask, class_rows, computed_float
from ncdask.metrics.declarations import evaluate
from ncdask.metrics.api import measure

Array = Any

__all__ = [
    "classifier_etf_error",
    "classifier_equinorm",
    "classifier_max_angle",
    "self_duality_distance",
    "bias_collapse",
    "ood_class_variability",
]


def _rows(A: Array, name: str, tile_size: int | None = None) -> tuple[da.Array, int]:
    return class_rows(A, tile_size, name)


def _need_two(K: int, name: str) -> None:
    if K < 2:
        raise ValueError(f"{name} needs at least 2 rows, got {K}")


def _declared(name: str, **arrays: Any) -> float:
    """The declaration of ``measure``'s variable ``name`` on rows taken as given."""
    return computed_float(evaluate(name, **arrays))


def _centred(M: Array, m_G: Array, like: da.Array) -> da.Array:
    Mc, _ = _rows(M, "M")
    if Mc.shape != like.shape:
        raise ValueError(f"W has shape {like.shape} but M has shape {Mc.shape}")
    if isinstance(m_G, (int, float)) and m_G == 0:
        return Mc.rechunk(like.chunks)
    g = as_dask(m_G).astype(np.float64)
    if g.shape != (Mc.shape[1],):
        raise ValueError(f"m_G has shape {g.shape}, expected ({Mc.shape[1]},)")
    return (Mc - g.rechunk(-1)[None, :]).rechunk(like.chunks)


def classifier_etf_error(W: Array) -> float:
    """Distance of the classifier's Gram matrix from a simplex ETF (``nc2w_etf_err``).

    ``‖G/‖G‖_F − (I − 11ᵀ/K)/√(K−1)‖_F`` with ``G = W Wᵀ``, in closed form
    (two D×D grams when D < K).

    Parameters
    ----------
    W : array (K, D)
        Classifier weights, one row per class.

    Returns
    -------
    float

    References
    ----------
    Zhu et al. (2021), A geometric analysis of neural collapse with
    unconstrained features, NeurIPS.

    Examples
    --------
    >>> import numpy as np
    >>> from ncdask.metrics.peers import classifier_etf_error
    >>> W = np.eye(4) - 0.25  # a simplex ETF
    >>> round(classifier_etf_error(W), 6)
    0.0
    """
    Wd, _ = _rows(W, "W")
    _need_two(Wd.shape[0], "classifier_etf_error")
    return _declared("nc2w_etf_err", W=Wd)


def classifier_equinorm(W: Array) -> float:
    """Coefficient of variation of the classifier's row norms (``nc2w_equinorm``).

    ``std_k ‖w_k‖ / mean_k ‖w_k‖`` with the unbiased standard deviation, as
    Papyan et al. report it.

    Parameters
    ----------
    W : array (K, D)

    Returns
    -------
    float

    References
    ----------
    Papyan, Han & Donoho (2020), PNAS 117(40).

    Examples
    --------
    >>> import numpy as np
    >>> from ncdask.metrics.peers import classifier_equinorm
    >>> classifier_equinorm(np.array([[1.0, 0.0], [0.0, 3.0]]))
    0.7071067811865476
    """
    Wd, _ = _rows(W, "W")
    _need_two(Wd.shape[0], "classifier_equinorm")
    return _declared("nc2w_equinorm", W=Wd)


def classifier_max_angle(W: Array, tile_size: int | None = None) -> float:
    """Mean deviation of the classifier's pairwise cosines from ``−1/(K−1)`` (``nc2w_max_angle``).

    ``mean over i<j of |cos(w_i, w_j) + 1/(K−1)|``, reduced over
    upper-triangle class tiles without a K×K grid.

    Parameters
    ----------
    W : array (K, D)
    tile_size : int, optional
        Classes per tile.

    Returns
    -------
    float

    References
    ----------
    Papyan, Han & Donoho (2020), PNAS 117(40).

    Examples
    --------
    >>> import numpy as np
    >>> from ncdask.metrics.peers import classifier_max_angle
    >>> round(classifier_max_angle(np.eye(3) - 1 / 3), 12)
    0.0
    """
    Wd, T = _rows(W, "W", tile_size)
    _need_two(Wd.shape[0], "classifier_max_angle")
    return _declared("nc2w_max_angle", W=Wd, tile_size=T)


def self_duality_distance(W: Array, M: Array, m_G: Array = 0) -> float:
    """Papyan's self-duality distance (``nc3_papyan``).

    ``‖W/‖W‖_F − M̃/‖M̃‖_F‖²_F`` with ``M̃ = M − m_G``.

    Parameters
    ----------
    W : array (K, D)
        Classifier weights.
    M : array (K, D)
        Class means.
    m_G : array (D,) or 0
        Global mean.

    Returns
    -------
    float

    References
    ----------
    Papyan, Han & Donoho (2020), PNAS 117(40).

    Examples
    --------
    >>> import numpy as np
    >>> from ncdask.metrics.peers import self_duality_distance
    >>> M = np.eye(3)
    >>> round(self_duality_distance(3 * (M - M.mean(0)), M, M.mean(0)), 12)
    0.0
    """
    Wd, _ = _rows(W, "W")
    return _declared("nc3_papyan", M=_centred(M, m_G, Wd), W=Wd)


def bias_collapse(W: Array, b: Array = None, m_G: Array = 0) -> float:
    """Zhu et al.'s bias collapse (``nc3_bias``): ``‖W μ_G + b‖₂``.

    Parameters
    ----------
    W : array (K, D)
        Classifier weights.
    b : array (K,), optional
        Classifier bias (0 if not given).
    m_G : array (D,) or 0
        The **sample-weighted** global mean ``(1/N) Σ_i x_i`` (``class_stats``
        with ``global_mean="weighted"`` gives it, or ``Σ_k n_k μ_k / N``).

    Returns
    -------
    float

    References
    ----------
    Zhu et al. (2021), A geometric analysis of neural collapse with
    unconstrained features, NeurIPS.

    Examples
    --------
    >>> import numpy as np
    >>> from ncdask.metrics.peers import bias_collapse
    >>> bias_collapse(np.eye(2), np.array([3.0, 0.0]), np.array([0.0, 4.0]))
    5.0
    """
    Wd, _ = _rows(W, "W")
    K, D = Wd.shape
    g = None
    if not (isinstance(m_G, (int, float)) and m_G == 0):
        g = as_dask(m_G).astype(np.float64)
        if g.shape != (D,):
            raise ValueError(f"m_G has shape {g.shape}, expected ({D},)")
        g = g.rechunk(-1)
    bb = None
    if b is not None:
        bb = as_dask(b).astype(np.float64)
        if bb.shape != (K,):
            raise ValueError(f"b has shape {bb.shape}, expected ({K},)")
        bb = bb.rechunk((Wd.chunks[0],))
    return _declared("nc3_bias", W=Wd, b=bb, mu_weighted=g)


def ood_class_variability(
    stats: xr.Dataset,
    ood: Any,
    *,
    min_count: int | None = None,
    ignore_index: int | None = None,
    split_every: int | None = None,
) -> float:
    """NC1 with the OOD set added as class K+1 (``nc1_ood_class``).

    One pass over the OOD embeddings adds their mean as a (K+1)-th class mean
    and their centred scatter to ``Σ_W`` (``N`` grows by the OOD count); the
    result is ``tr(Σ_B⁺ Σ_W) / (K+1)`` over the K+1 classes, as ``nc1_pinv``
    (pseudo-inverse cutoff included). It stays small when the OOD features
    are as concentrated about their own mean, relative to the separation of
    the means, as the ID classes are about theirs.

    Parameters
    ----------
    stats : xarray.Dataset
        Class statistics of the ID training split (:func:`ncdask.class_stats`).
    ood : split Dataset or (store, split)
        The OOD samples; their labels are not used, except that samples
        labelled ``ignore_index`` are left out.
    min_count : int, optional
        Leave ID classes with fewer samples out, as :func:`ncdask.measure`.
    ignore_index : int, optional
        Default: the statistics' attribute.
    split_every : int, optional
        Fan-in of the merge trees.

    Returns
    -------
    float

    References
    ----------
    Ammar et al. (2024), NECO: NEural Collapse based Out-of-distribution
    detection, ICLR (arXiv:2310.06823), Appendix D.
    """
    res = measure(
        stats,
        ood=ood,
        metrics=["nc1_ood_class"],
        min_count=min_count,
        ignore_index=ignore_index,
        split_every=split_every,
    )
    if "nc1_ood_class" not in res:
        raise ValueError(f"nc1_ood_class is undefined here: {res.attrs['left_out']}")
    return float(res["nc1_ood_class"].values)
