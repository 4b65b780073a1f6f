"""Per-class shares of ``nc1_pinv``: the factor of Σ_B⁺ and the per-block class sums.

``nc1_pinv = tr(Σ_B⁺ Σ_W) / K`` with ``Σ_W = (1/N) Σ_i (x_i − μ_{y_i})(x_i − μ_{y_i})ᵀ``
splits over the classes: class k contributes
``S_k / (N K)``, ``S_k = Σ_{y_i=k} (x_i − μ_k)ᵀ Σ_B⁺ (x_i − μ_k)``. With
``Σ_B⁺ = L diag(s) Lᵀ`` (``s`` the signs of the eigenvalues kept, 0 for
those under the cutoff), ``S_k = Σ_{y_i=k} Σ_j s_j ((x_i − μ_k)ᵀ l_j)²``,
one pass over the samples in row blocks.

Everything here takes its array module from its inputs (NumPy or CuPy) and
imports neither dask nor xarray.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ncdask.kernels._xp import array_namespace, to_numpy
from ncdask.kernels.closed_forms import _undefined, between_spectrum
from ncdask.kernels.pairwise import errstate


def pinv_factor(A: Any, Sw: Any, n_classes: int, *, from_means: bool,
                eps_dtype: Any = None) -> Any:
    """``[L; s]`` with ``Σ_B⁺ = L diag(s) Lᵀ`` under ``nc1_pinv``'s cutoff, as one array.

    Parameters
    ----------
    A : array (K, D) or (D, D)
        With ``from_means``, the centred class means ``M̃`` (K ≤ D): from
        their thin SVD ``M̃ = U diag(σ) Vᵀ``, ``Σ_B = M̃ᵀM̃/K`` has eigenvalues
        ``σ²/K`` on ``V`` (as :func:`~ncdask.kernels.closed_forms.nc1_from_means`).
        Otherwise ``Σ_B`` itself (D×D, D < K), eigendecomposed as
        :func:`~ncdask.kernels.closed_forms.nc1_from_between` does.
    Sw : array (D, D)
        Within-class covariance: only whether it is finite matters (NaN
        shares where ``nc1_pinv`` is NaN).
    n_classes : int
        K.
    from_means : bool
        Which of the two ``A`` is.
    eps_dtype : dtype, optional
        Dtype whose ε sets the cutoff ``D ε λ_max`` (torch's ``pinv``), default ``A.dtype``.

    Returns
    -------
    array (D + 1, R)
        Rows ``0..D-1``: ``L``, column ``j`` the eigenvector ``v_j / √|λ_j|``
        (0 where ``|λ_j|`` is at or under the cutoff); row ``D``: the signs
        ``s_j`` (0 there). ``R = K`` from the means, ``D`` from ``Σ_B``. All
        NaN where NC1 is undefined (non-finite input, or ``Σ_B = 0``).
    """
    xp = array_namespace(A, Sw)
    A, Sw = xp.asarray(A), xp.asarray(Sw)
    D = A.shape[1]
    R = A.shape[0] if from_means else D
    if _undefined(A, Sw, xp):
        return xp.full((D + 1, R), np.nan, dtype=A.dtype)
    with errstate(xp):
        lam, V, keep = between_spectrum(A, n_classes, from_means=from_means,
                                        eps_dtype=eps_dtype)
        sig = xp.abs(lam)
        scale = xp.where(keep, 1.0 / xp.sqrt(xp.where(keep, sig, 1.0)), 0.0)
        sign = xp.where(keep, xp.sign(lam), 0.0)
        return xp.concatenate([V * scale[None, :], sign[None, :]], axis=0)


def kept_positions(y: Any, lookup: np.ndarray) -> Any:
    """Labels as positions among the classes measured; -1 for any other label.

    ``lookup[k]`` is class k's position (-1 when it is not measured); labels
    outside ``[0, len(lookup))``, such as an ``ignore_index`` of -100, map to -1.
    """
    xp = array_namespace(y)
    y = xp.asarray(y).astype(xp.int64)
    lk = xp.asarray(lookup, dtype=xp.int64)
    ok = (y >= 0) & (y < lk.shape[0])
    return xp.where(ok, lk[xp.where(ok, y, 0)], -1)


def class_quadratic_sums(x: Any, y: Any, means: Any, pos: Any, L: Any, sign: Any) -> Any:
    """Per class of one tile: ``[Σ_{y_i=k} (x_i − μ_k)ᵀ L diag(s) Lᵀ (x_i − μ_k), n_k]``.

    Parameters
    ----------
    x : array (n, D)
        A block of samples.
    y : array (n,)
        Their labels as positions among the classes measured (-1: none).
    means : array (T, D)
        The class means of one tile of consecutive positions ``pos``.
    pos : array (T,)
        Those positions.
    L : array (D, R)
    sign : array (R,)
        The factor of :func:`pinv_factor`.

    Returns
    -------
    array (1, 2, T)
        The sums and the sample counts of the tile's classes (float64), only
        the block's rows whose class is in the tile (the others are read by
        the other tiles' tasks).
    """
    xp = array_namespace(x, means)
    T = means.shape[0]
    if T == 0:
        return xp.zeros((1, 2, 0), dtype=xp.float64)
    local = xp.asarray(y) - int(to_numpy(pos[:1])[0])
    sel = (local >= 0) & (local < T)
    if not bool(xp.all(sel)):
        idx = xp.nonzero(sel)[0]
        x, local = x[idx], local[idx]
    with errstate(xp):
        z = (xp.asarray(x, dtype=xp.float64) - means[local]) @ L
        z *= z  # z is this task's own
        q = z @ sign
    sums = xp.bincount(local, weights=q, minlength=T)
    counts = xp.bincount(local, minlength=T).astype(xp.float64)
    return xp.stack([sums, counts])[None]


def bin_shares(sums: Any, expected: np.ndarray, bin_of: np.ndarray, n_bins: int,
               denom: float) -> Any:
    """Each bin's ``Σ_{k∈bin} S_k / denom`` from the per-class sums and counts.

    Parameters
    ----------
    sums : array (2, K)
        ``S_k`` and the counts of the pass (:func:`class_quadratic_sums`, summed).
    expected : array (K,)
        The counts of the statistics: the samples must be the ones they were
        computed from, else the shares are not those of ``nc1_pinv``.
    bin_of : array (K,)
        The bin of every class.
    n_bins : int
    denom : float
        ``N K``.

    Returns
    -------
    array (n_bins,)

    Raises
    ------
    ValueError
        When the samples' class counts differ from ``expected``.
    """
    xp = array_namespace(sums)
    S, n = to_numpy(sums[0]), to_numpy(sums[1]).astype(np.int64)
    expected = np.asarray(expected, dtype=np.int64)
    if not np.array_equal(n, expected):
        bad = np.nonzero(n != expected)[0]
        raise ValueError(
            f"the train split does not match the class statistics: {bad.size} measured "
            f"class(es) have other counts (position {int(bad[0])}: {int(n[bad[0]])} samples, "
            f"the statistics {int(expected[bad[0]])}): pass the split they were computed from; "
            "if it is that split, its store was damaged after they were computed (a labels "
            "chunk deleted or rewritten)")
    out = np.bincount(np.asarray(bin_of), weights=S, minlength=n_bins) / float(denom)
    return xp.asarray(out, dtype=xp.float64)
