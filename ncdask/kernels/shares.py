"""Per-class shares of ``nc1_pinv``: the factor of Σ_B⁺ and the per-block class sums.

``nc1_pinv = tr(Σ_B⁺ Σ_W)/K`` splits over the classes: class k contributes ``S_k/(N K)`` with ``S_k
= Σ_{y_i=k} (x_i − μ_k)ᵀ Σ_B⁺ (x_i − μ_k)``. Since ``Σ_{y_i=k} (x_i − c) = n_k (μ_k − c)`` for
any ``c``, ``S_k = Σ_{y_i=k} q(x_i − c) − n_k q(μ_k − c)`` with ``q(v) = vᵀ Σ_B⁺ v = Σ_j s_j (vᵀ
l_j)²`` (``Σ_B⁺ = L diag(s) Lᵀ``): one GEMM per row block of the samples, no class mean
gathered per row, and a closed form over the means. ``c`` is the global mean, so the
subtraction loses only the digits the rows' spread about their class means lacks against
their spread about ``c`` (float64 throughout).

Why not centre each row on its class mean: that needs the K×D means in every task, or a task
per class tile that filters and gathers its rows; at K=50,257, D=1,024 the tiled pass ran 3×
slower than its GEMMs (one per row block here)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ncdask.errors import DegenerateInputWarning, warn
from ncdask.kernels._xp import array_namespace, errstate, to_numpy
from ncdask.kernels.spectrum import between_spectrum, nc1_undefined

#: A share is NaN where its classes' sums about ``c`` exceed it this many times: the
#: subtraction leaves at most 7 of float64's 16 digits, fewer where the means are far
#: from the origin (they carry their own rounding).
LOST_DIGITS = 1e9


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


def row_quadratic_sums(x: Any, y: Any, c: Any, L: Any, sign: Any, n_kept: int) -> Any:
    """``[Σ_{y_i=k} q(x_i − c), n_k]`` ``(1, 2, K)`` float64 over one block of rows, ``q(v) =
    Σ_j s_j (v·l_j)²``. ``y`` are positions among the ``n_kept`` classes measured (−1: none);
    ``x`` of any float dtype, taken to float64 here."""
    xp = array_namespace(x, L)
    y = xp.asarray(y)
    with errstate(xp):
        z = xp.asarray(x, dtype=xp.float64) - c[None, :]
        z = z @ L
        z *= z  # z is this task's own
        q = z @ sign
    keep = y >= 0
    if not bool(xp.all(keep)):
        y, q = y[keep], q[keep]
    sums = xp.bincount(y, weights=q, minlength=n_kept)
    counts = xp.bincount(y, minlength=n_kept).astype(xp.float64)
    return xp.stack([sums, counts])[None]


def mean_quadratic(Mc: Any, L: Any, sign: Any) -> Any:
    """``q(μ_k − c)`` of a tile of centred means ``Mc`` (T, D): ``(T,)`` float64."""
    xp = array_namespace(Mc, L)
    with errstate(xp):
        z = xp.asarray(Mc, dtype=xp.float64) @ L
        z *= z
        return z @ sign


def bin_shares(sums: Any, qm: Any, expected: np.ndarray, bin_of: np.ndarray, n_bins: int,
               denom: float) -> Any:
    """Each bin's ``Σ_{k∈bin} S_k / denom`` (``denom = N K``), ``S_k = sums[0, k] − n_k qm[k]``.
    ``sums`` (2, K) are the pass's :func:`row_quadratic_sums` and counts, ``qm`` (K,) the means'
    :func:`mean_quadratic`; the counts must equal ``expected``, the statistics' counts, else
    ``ValueError`` (the samples are not those the statistics came from). ``bin_of`` (K,) is each
    class's bin."""
    xp = array_namespace(sums)
    n = to_numpy(sums[1]).astype(np.int64)
    about_c = np.where(n > 1, n * to_numpy(qm), 0.0)  # a lone sample's share is 0 exactly
    S = np.where(n > 1, to_numpy(sums[0]) - about_c, 0.0)
    expected = np.asarray(expected, dtype=np.int64)
    if not np.array_equal(n, expected):
        bad = np.nonzero(n != expected)[0]
        raise ValueError(
            f"the train split does not match the class statistics: {bad.size} measured "
            f"class(es) have other counts (position {int(bad[0])}: {int(n[bad[0]])} samples, "
            f"the statistics {int(expected[bad[0]])}): pass the split they were computed from; "
            "if it is that split, its store was damaged after they were computed (a labels "
            "chunk deleted or rewritten)")
    bin_of = np.asarray(bin_of)
    out = np.bincount(bin_of, weights=S, minlength=n_bins)
    about_c = np.bincount(bin_of, weights=about_c, minlength=n_bins)
    lost = about_c > LOST_DIGITS * np.abs(out)
    if lost.any():
        warn(f"nc1_pinv_by_frequency: {int(lost.sum())} of {n_bins} bins are NaN: their "
             "classes are so tight about means so far apart that their sums about the "
             f"global mean exceed their share over {LOST_DIGITS:.0e} times, leaving too few "
             "of float64's digits (nc1_pinv itself is not affected)", DegenerateInputWarning)
    out = np.where(lost, np.nan, out / float(denom))
    return xp.asarray(out, dtype=xp.float64)
