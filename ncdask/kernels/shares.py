"""Per-class shares of ``nc1_pinv``: the factor of Σ_B⁺ and the per-block class sums.

``nc1_pinv = tr(Σ_B⁺ Σ_W)/K`` splits over the classes: class k contributes ``S_k/(N K)`` with ``S_k
= Σ_{y_i=k} (x_i − μ_k)ᵀ Σ_B⁺ (x_i − μ_k)``. With ``Σ_B⁺ = L diag(s) Lᵀ`` that is ``Σ_{y_i=k} Σ_j
s_j ((x_i − μ_k)ᵀ l_j)²``: one pass over the samples in row blocks."""

from __future__ import annotations

from typing import Any

import numpy as np

from ncdask.kernels._xp import array_namespace, errstate, to_numpy
from ncdask.kernels.spectrum import between_spectrum, nc1_undefined


def pinv_factor(A: Any, Sw: Any, n_classes: int, *, from_means: bool,
                eps_dtype: Any = None) -> Any:
    """``[L; s]`` (D + 1, R) with ``Σ_B⁺ = L diag(s) Lᵀ`` under ``nc1_pinv``'s cutoff.
    ``A``: the K×D centred means (``from_means``, R = K) or ``Σ_B`` (R = D), as
    in :func:`~ncdask.kernels.spectrum.between_spectrum`. Column j of ``L`` is
    ``v_j / √|λ_j|`` and ``s_j`` the sign of ``λ_j`` (both 0 under the cutoff);
    all NaN where NC1 is undefined (``Sw`` only counts for being finite)."""
    xp = array_namespace(A, Sw)
    A, Sw = xp.asarray(A), xp.asarray(Sw)
    D = A.shape[1]
    R = A.shape[0] if from_means else D
    if nc1_undefined(A, Sw, xp):
        return xp.full((D + 1, R), np.nan, dtype=A.dtype)
    with errstate(xp):
        lam, V, keep = between_spectrum(A, n_classes, from_means=from_means,
                                        eps_dtype=eps_dtype)
        sig = xp.abs(lam)
        scale = xp.where(keep, 1.0 / xp.sqrt(xp.where(keep, sig, 1.0)), 0.0)
        sign = xp.where(keep, xp.sign(lam), 0.0)
        return xp.concatenate([V * scale[None, :], sign[None, :]], axis=0)


def kept_positions(y: Any, lookup: np.ndarray) -> Any:
    """Labels as positions among the classes measured (``lookup[k]``); -1 for any other label."""
    xp = array_namespace(y)
    y = xp.asarray(y).astype(xp.int64)
    lk = xp.asarray(lookup, dtype=xp.int64)
    ok = (y >= 0) & (y < lk.shape[0])
    return xp.where(ok, lk[xp.where(ok, y, 0)], -1)


def class_quadratic_sums(x: Any, y: Any, means: Any, pos: Any, L: Any, sign: Any) -> Any:
    """Per class of one tile: ``[Σ_{y_i=k} (x_i − μ_k)ᵀ L diag(s) Lᵀ (x_i − μ_k), n_k]``. ``y`` are
    positions among the classes measured (-1: none), ``means`` (T, D) those of the tile's
    consecutive positions ``pos``, ``L``, ``sign`` the factor of :func:`pinv_factor`. Returns ``(1,
    2, T)`` float64, over the block's rows of the tile's classes."""
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
    """Each bin's ``Σ_{k∈bin} S_k / denom`` (``denom = N K``). ``sums`` (2, K) are ``S_k`` and the
    counts of the pass; they must equal ``expected``, the statistics' counts, else ``ValueError``
    (the samples are not those the statistics came from). ``bin_of`` (K,) is each class's bin."""
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
