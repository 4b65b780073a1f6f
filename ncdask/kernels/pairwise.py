"""Per-tile pairwise kernels: fused moments over class pairs, and grid tiles.

A tile, a pair of class blocks ``(I, J)``, gets every statistic from one GEMM ``G = M_I
M_Jᵀ`` (close pairs' distances recomputed from the difference), as a row of moments
(:data:`SLOTS`) merged with Chan et al.'s update."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ncdask.errors import warn
from ncdask.kernels import pairwise_jit as J
from ncdask.kernels._reduction import Reduction, identity
from ncdask.kernels._xp import array_namespace, errstate, to_numpy

#: Slots of a moments row.
SLOTS = ("n", "mean", "m2", "log_scale", "n_posinf", "n_neginf", "n_nan")
N, MEAN, M2, LOG_SCALE, POSINF, NEGINF, NAN = range(len(SLOTS))
NSLOT = len(SLOTS)

#: Pairwise statistics the fused kernel knows, in the order they may be asked for.
PAIR_STATS = ("cdnv", "dist", "log", "riesz", "cos", "cos_dev", "wcos_dev")

#: Columns of :func:`finalize_moments`.
FINAL = ("n", "mean", "var", "log_mean", "log_var")

#: Relative threshold below which a GEMM distance is recomputed from the difference.
RHO = 1e-3
#: Elements per batch of that direct recomputation.
_FIX_BATCH = 1 << 22


class RieszRangeWarning(RuntimeWarning):
    """The Riesz kernel's values (or their mean or variance) over- or underflow float64.
    The log-domain values (``nc2g_riesz_log_*``, ``riesz_kernel(..., log=True)``) stay finite."""


def warn_riesz_range(issues: Sequence[tuple[str, float]], riesz_s: float | None = None) -> None:
    """Warn :class:`RieszRangeWarning` once about each ``(what, natural log of it)``."""
    s_txt = "" if riesz_s is None else f" with S={riesz_s:g}"
    parts = [f"{what}{s_txt} {'underflows to 0' if lv < 0 else 'overflows to inf'} "
             f"(its natural log is {lv:.6g})" for what, lv in issues]
    warn(
        f"the Riesz kernel's {' and '.join(parts)} in float64; use the log-domain values "
        "(nc2g_riesz_log_mean / nc2g_riesz_log_var, or riesz_kernel(..., log=True)) or a "
        "smaller riesz_s", RieszRangeWarning)


def _sq_norms(A: Any, xp: Any) -> Any:
    return xp.einsum("ij,ij->i", A, A)  # no T×D temporary


def _fix_close(d2: Any, A: Any, B: Any, a2: Any, b2: Any, mask: Any, xp: Any) -> Any:
    """Recompute ``d2[i, j] = ‖A_i − B_j‖²`` where the GEMM form is unreliable (``A``, ``B``:
    callables giving the row blocks, built only when needed)."""
    if d2.size == 0:
        return d2
    quick = RHO * (float(xp.max(a2)) + float(xp.max(b2)))
    if float(xp.min(d2)) >= quick:
        return d2
    close = d2 < RHO * (a2[:, None] + b2[None, :])
    if mask is not None:
        close &= mask
    rows, cols = xp.nonzero(close)
    if rows.shape[0] == 0:
        return d2
    A, B = A(), B()
    step = max(1, _FIX_BATCH // max(1, A.shape[1]))
    for s in range(0, int(rows.shape[0]), step):
        r, c = rows[s : s + step], cols[s : s + step]
        diff = A[r] - B[c]
        d2[r, c] = xp.sum(diff * diff, axis=1)
    return d2


class _Side:
    """Per-row quantities of one block: squared norms, ``s = 1/(‖m‖+ε)``, ``a² = (‖m‖ s)²``."""

    def __init__(self, A: Any, xp: Any) -> None:
        self.A = A
        self.n2 = _sq_norms(A, xp)
        eps = float(xp.finfo(A.dtype).eps)
        self.s = 1.0 / (xp.sqrt(self.n2) + eps)
        self.a2 = self.n2 * self.s * self.s

    def rows(self, sl: slice) -> _Side:
        out = object.__new__(_Side)
        out.A, out.n2, out.s, out.a2 = self.A[sl], self.n2[sl], self.s[sl], self.a2[sl]
        return out

    def unit(self) -> Any:
        return self.A * self.s[:, None]


class _Tile:
    """Distances and cosines of one tile from a single GEMM of the unit rows ``C = U_I U_Jᵀ``
    (the cosines themselves, so that cosine statistics cost no elementwise pass)."""

    def __init__(self, rows: _Side, cols: _Side, mask: Any, xp: Any, C: Any = None) -> None:
        self.rows, self.cols, self.mask, self.xp = rows, cols, mask, xp
        self.C = rows.unit() @ cols.unit().T if C is None else C

    def cos(self) -> Any:
        """``u_i · u_j`` with ``u = m / (‖m‖ + ε)`` (full tile; the GEMM's buffer, read only)."""
        return self.C

    def du2(self) -> Any:
        """``‖u_i − u_j‖²`` (full tile, close pairs exact)."""
        ri, rj = self.rows, self.cols
        d = self.C * -2.0
        d += ri.a2[:, None]
        d += rj.a2[None, :]
        return _fix_close(d, ri.unit, rj.unit, ri.a2, rj.a2, self.mask, self.xp)

    def d2(self) -> Any:
        """``‖m_i − m_j‖² = ‖m_i‖² + ‖m_j‖² − 2 C_ij/(s_i s_j)`` (full tile, close pairs exact)."""
        ri, rj = self.rows, self.cols
        d = self.C * (-2.0 / ri.s)[:, None]
        d *= (1.0 / rj.s)[None, :]
        d += ri.n2[:, None]
        d += rj.n2[None, :]
        return _fix_close(d, lambda: ri.A, lambda: rj.A, ri.n2, rj.n2, self.mask, self.xp)


def _count(xp: Any, cond: Any) -> int:
    return int(xp.count_nonzero(cond))


def _moments_row(x: Any, xp: Any, *, scratch_ok: bool = False, scale: float = 1.0) -> list[float]:
    """Moments of ``scale · x`` as a row of :data:`SLOTS`, non-finite values counted apart.
    Three passes: the sum, the centring and one dot product. ``scratch_ok``: ``x`` may be
    overwritten."""
    row = [0.0] * NSLOT
    if x.size == 0:
        return row
    s = float(xp.sum(x))
    if not math.isfinite(s):
        pos = _count(xp, x == math.inf)
        neg = _count(xp, x == -math.inf)
        if scale < 0:
            pos, neg = neg, pos
        row[POSINF], row[NEGINF], row[NAN] = float(pos), float(neg), float(_count(xp, xp.isnan(x)))
        x = x[xp.isfinite(x)]
        scratch_ok = True
        if x.size == 0:
            return row
        s = float(xp.sum(x))
    n = int(x.size)
    mean = s / n
    if scratch_ok:
        x -= mean
        d = xp.reshape(x, (-1,))
    else:
        d = xp.reshape(x - mean, (-1,))
    row[N], row[MEAN], row[M2] = float(n), scale * mean, scale * scale * float(d @ d)
    return row


def _riesz_row(lg: Any, s_exp: float, xp: Any, lo: float) -> list[float]:
    """Moments of ``|r| = ‖u_i − u_j‖^{−S} = exp(c) y`` from ``lg = log ‖u_i − u_j‖²``
    (``lo``: the smallest ``‖u_i − u_j‖²``). ``c`` is the largest ``log |r|`` (the row's
    ``log_scale``), so ``y ≤ 1``; zero distances with ``S > 0`` count as ``+inf``."""
    if lg.size == 0:
        return [0.0] * NSLOT
    if s_exp == 0:
        return _moments_row(xp.zeros_like(lg), xp, scratch_ok=True)
    half = -0.5 * s_exp
    pos = 0
    if s_exp > 0:
        ref = -math.inf if lo == 0 else math.log(lo) if lo > 0 else float(xp.min(lg))
        if ref == -math.inf:
            finite = lg > -math.inf
            pos = int(lg.size) - _count(xp, finite)
            lg = lg[finite]
            if lg.size == 0:
                row = [0.0] * NSLOT
                row[POSINF] = float(pos)
                return row
            ref = float(xp.min(lg))
    else:
        ref = float(xp.max(lg))
        if ref == -math.inf:  # every distance zero: |r| = 0 everywhere
            return _moments_row(xp.zeros_like(lg), xp, scratch_ok=True)
    y = lg - ref
    y *= half
    xp.exp(y, out=y)
    row = _moments_row(y, xp, scratch_ok=True)
    row[LOG_SCALE] = half * ref
    row[POSINF] += pos
    return row


def _dev_row(C: Any, inv_km1: float, xp: Any) -> list[float]:
    """Moments of ``|C + 1/(K−1)|``."""
    dev = C + inv_km1
    xp.abs(dev, out=dev)
    return _moments_row(dev, xp, scratch_ok=True)


def _block_moments(Mi, Mj, mask, vi, vj, Wi, Wj, C, CW, stats, dist_exp, riesz_s, inv_km1, xp):
    """Moments rows of one block of a tile: :class:`_Side` rows and columns, the block of
    the tile's cosine GEMMs ``C``, ``CW`` (read only), ``mask`` the pairs that count (None: all).
    Each statistic costs the fewest NumPy passes: its values, then :func:`_moments_row`."""
    out = np.zeros((len(stats), NSLOT))
    if Mi.A.shape[0] == 0 or Mj.A.shape[0] == 0:
        return out

    def pick(a: Any) -> Any:
        return a if mask is None else a[mask]

    with errstate(xp):
        t = _Tile(Mi, Mj, mask, xp, C)
        rows: dict[str, list[float]] = {}
        if "cos" in stats or "cos_dev" in stats:
            c = pick(t.cos())
            if "cos" in stats:
                rows["cos"] = _moments_row(c, xp)
            if "cos_dev" in stats:
                rows["cos_dev"] = _dev_row(c, inv_km1, xp)
            del c
        if any(k in stats for k in ("dist", "log", "riesz")):
            du2 = pick(t.du2())
            if "riesz" in stats or "log" in stats:
                lg = xp.log(du2)
                if "riesz" in stats:
                    lo = float(xp.min(du2)) if riesz_s > 0 and du2.size else 0.0
                    rows["riesz"] = _riesz_row(lg, riesz_s, xp, lo)
                if "log" in stats:
                    rows["log"] = _moments_row(lg, xp, scratch_ok=True, scale=-0.5)
                del lg
            if "dist" in stats:
                xp.sqrt(du2, out=du2)
                rows["dist"] = _moments_row(du2, xp, scratch_ok=True)
            del du2
        if "cdnv" in stats:
            d2 = pick(t.d2())
            if dist_exp != 1.0:
                d2 = d2 * d2 if dist_exp == 2.0 else d2**dist_exp
            val = pick(vi[:, None] + vj[None, :])  # halved by the caller
            val /= d2
            del d2
            rows["cdnv"] = _moments_row(val, xp, scratch_ok=True)
        if "wcos_dev" in stats:
            rows["wcos_dev"] = _dev_row(pick(_Tile(Wi, Wj, mask, xp, CW).cos()), inv_km1, xp)
    for k, name in enumerate(stats):
        if name not in rows:
            raise ValueError(f"unknown pairwise statistic {name!r}; known: {PAIR_STATS}")
        out[k] = rows[name]
    return out


#: Pairs per strip on the host (1 MiB per float64 temporary): in cache, and few
#: enough numpy calls that dask's threads do not queue on the GIL.
STRIP_PAIRS = 1 << 17
#: Rows per GEMM band on a tile that straddles the diagonal.
BAND = 512


def pair_moments(Mi: Any, Mj: Any, gi: Any, gj: Any, vi: Any = None, vj: Any = None,
                 Wi: Any = None, Wj: Any = None, *, stats: Sequence[str], dist_exp: float = 1.0,
                 riesz_s: float = 0.0, inv_km1: float = 0.0) -> Any:
    """Moments of the requested pairwise statistics over the pairs of one tile.

    Only pairs with global index ``i < j`` count: a tile below the diagonal
    gives empty rows, a tile on it its strict upper triangle.

    Parameters
    ----------
    Mi, Mj, gi, gj : arrays (Ti, D), (Tj, D), (Ti,), (Tj,)
        Centred class means of the two row blocks and their global indices (ascending).
    vi, vj, Wi, Wj : arrays, optional
        Variance norms (for ``cdnv``) and classifier rows (for ``wcos_dev``).
    stats : sequence of str
        From :data:`PAIR_STATS`: ``cdnv`` ``((v_i + v_j)/2) / ‖m_i − m_j‖^{2p}``;
        ``dist``, ``log``, ``riesz`` ``‖u_i − u_j‖``, ``−log ‖u_i − u_j‖``,
        ``‖u_i − u_j‖^{−S}`` (magnitude: :func:`finalize_moments` signs it);
        ``cos``, ``cos_dev``, ``wcos_dev`` ``cos_ij``, ``|cos_ij + 1/(K−1)|`` on
        the means and on the classifier rows.
    dist_exp, riesz_s, inv_km1 : float
        ``p``, ``S`` and ``1/(K−1)``.

    Returns
    -------
    array (len(stats), NSLOT), float64
    """
    xp = array_namespace(Mi)
    stats = tuple(stats)
    for name in stats:
        if name not in PAIR_STATS:
            raise ValueError(f"unknown pairwise statistic {name!r}; known: {PAIR_STATS}")
    Ti, Tj = Mi.shape[0], Mj.shape[0]
    if Ti == 0 or Tj == 0 or int(gi[0]) >= int(gj[-1]):
        return xp.zeros((len(stats), NSLOT), dtype=xp.float64)
    step = Ti if xp is not np else max(1, STRIP_PAIRS // Tj)
    vi, vj, Wi, Wj = (None if a is None else xp.asarray(a) for a in (vi, vj, Wi, Wj))
    with errstate(xp):
        ri, rj = _Side(Mi, xp), _Side(Mj, xp)
        WI = WJ = None
        if "wcos_dev" in stats:
            if Wi is None or Wj is None:
                raise ValueError("the 'wcos_dev' statistic needs the classifier rows")
            WI, WJ = _Side(Wi, xp), _Side(Wj, xp)
        if "cdnv" in stats:
            if vi is None or vj is None:
                raise ValueError("the 'cdnv' statistic needs the variance norms")
            vi, vj = 0.5 * vi, 0.5 * vj
        Ui, Uj = ri.unit(), rj.unit()
        UWi, UWj = (WI.unit(), WJ.unit()) if WI is not None else (None, None)
    gi_h, gj_h = np.asarray(to_numpy(gi)), np.asarray(to_numpy(gj))
    jit = J.enabled(Ti * Tj, Mi, Mj, vi, vj, Wi, Wj)
    want = [name in stats for name in PAIR_STATS]
    order = [PAIR_STATS.index(name) for name in stats]
    # one GEMM per band of rows (BLAS runs best on large ones); a tile on the diagonal in bands
    # of BAND rows, each from its first pair's column on, so that it multiplies little below it
    band = Ti if int(gi_h[-1]) < int(gj_h[0]) else BAND
    parts = []
    for b0 in range(0, Ti, band):
        b1 = min(Ti, b0 + band)
        cb = int(np.searchsorted(gj_h, gi_h[b0], side="right"))
        if cb >= Tj:
            break  # this band and all below it lie under the diagonal
        with errstate(xp):
            C = Ui[b0:b1] @ Uj[cb:].T
            CW = UWi[b0:b1] @ UWj[cb:].T if WI is not None else None
        cols = rj.rows(slice(cb, Tj))
        cols_w = None if WJ is None else WJ.rows(slice(cb, Tj))
        vc = None if vj is None else vj[cb:]
        if jit:  # the whole band in one compiled pass
            start = np.searchsorted(gj_h[cb:], gi_h[b0:b1], side="right")
            parts.append(J.band_moments(
                C, CW, start, ri.rows(slice(b0, b1)), cols, (Ui[b0:b1], Uj[cb:]),
                (None if vi is None else vi[b0:b1], vc), want, inv_km1=inv_km1,
                riesz_s=riesz_s, dist_exp=dist_exp, rho=RHO,
                strip_pairs=STRIP_PAIRS)[:, order])
            continue
        for r0 in range(b0, b1, step):
            r1 = min(b1, r0 + step)
            # columns [c0, c1) hold pairs on both sides of the diagonal (masked),
            # columns [c1, Tj) only pairs above it, columns < c0 none
            c0 = int(np.searchsorted(gj_h, gi_h[r0], side="right")) - cb
            c1 = int(np.searchsorted(gj_h, gi_h[r1 - 1], side="right")) - cb
            if c0 + cb >= Tj:
                break
            sl, sb = slice(r0, r1), slice(r0 - b0, r1 - b0)
            for cs, masked in ((slice(c0, c1), True), (slice(c1, Tj - cb), False)):
                if cs.start >= cs.stop:
                    continue
                gc = gj_h[cb:][cs]
                mask = xp.asarray(gi_h[sl][:, None] < gc[None, :]) if masked else None
                parts.append(_block_moments(
                    ri.rows(sl), cols.rows(cs), mask,
                    None if vi is None else vi[sl], None if vc is None else vc[cs],
                    None if WI is None else WI.rows(sl),
                    None if cols_w is None else cols_w.rows(cs),
                    C[sb, cs], None if CW is None else CW[sb, cs],
                    stats, dist_exp, riesz_s, inv_km1, xp,
                ))
    if not parts:
        return xp.zeros((len(stats), NSLOT), dtype=xp.float64)
    return xp.asarray(merge_moment_blocks(parts))


def merge_moments(parts: Any, n_lead: int) -> Any:
    """Merge rows of moments ``(..., S, NSLOT)`` over the ``n_lead`` leading axes: ``(S, NSLOT)``.
    Chan et al.'s update after bringing every part to the largest log scale: ``n = Σ n_a``, ``mean
    = Σ n_a mean_a / n``, ``M2 = Σ M2_a + Σ n_a (mean_a − mean)²``; non-finite counts add up."""
    xp = array_namespace(parts)
    S = parts.shape[-2]
    p = xp.reshape(parts, (-1, S, NSLOT)) if n_lead else parts[None]
    if p.shape[0] == 0:
        return xp.zeros((S, NSLOT), dtype=parts.dtype)
    with errstate(xp):
        n_a = p[:, :, N]
        has = n_a > 0
        c_a = xp.where(has, p[:, :, LOG_SCALE], -math.inf)
        c = xp.max(c_a, axis=0)
        c = xp.where(xp.isfinite(c), c, 0.0)
        f = xp.where(has, xp.exp(c_a - c[None, :]), 0.0)
        mean_a = xp.where(has, p[:, :, MEAN] * f, 0.0)
        n = xp.sum(n_a, axis=0)
        mean = xp.sum(n_a * mean_a, axis=0) / xp.where(n > 0, n, 1.0)
        dev = xp.where(has, mean_a - mean[None, :], 0.0)
        m2 = xp.sum(xp.where(has, p[:, :, M2] * f * f, 0.0) + n_a * dev * dev, axis=0)
    out = xp.zeros((S, NSLOT), dtype=parts.dtype)
    out[:, N], out[:, MEAN], out[:, M2], out[:, LOG_SCALE] = n, mean, m2, c
    for slot in (POSINF, NEGINF, NAN):
        out[:, slot] = xp.sum(p[:, :, slot], axis=0)
    return out


def merge_moment_blocks(parts: list[Any]) -> Any:
    """:func:`merge_moments` of a list of blocks ``(..., S, NSLOT)``: one ``(S, NSLOT)``."""
    xp = array_namespace(parts[0])
    S = parts[0].shape[-2]
    return merge_moments(xp.concatenate([xp.reshape(p, (-1, S, NSLOT)) for p in parts]), 1)


def moments_reduction(signs: Any = None, check_range: Any = None) -> Reduction:
    """The pairwise moments as a reduction over tile pairs (each block already a partial)."""
    return Reduction(
        combine=merge_moment_blocks, chunk=identity,
        finalize=functools.partial(finalize_moments, signs=signs, check_range=check_range),
    )


def finalize_moments(merged: Any, signs: Any = None, check_range: Any = None) -> Any:
    """Columns :data:`FINAL` (S, 5) of each statistic from its merged moments ``(S, NSLOT)``. ``n``
    counts the finite pairs, ``var`` divides by n, the logs of ``|mean|`` and ``var`` stay finite
    where the Riesz values under- or overflow. A NaN, both infinities or no pairs give NaN;
    infinities of one sign that infinite mean and a NaN variance. ``signs`` (S,) multiply the
    values (default +1); ``check_range`` (S,) marks the rows that warn :class:`RieszRangeWarning`
    when their mean or variance leaves float64."""
    xp = array_namespace(merged)
    S = merged.shape[0]
    sg = xp.ones(S, dtype=merged.dtype) if signs is None else xp.asarray(signs, dtype=merged.dtype)
    with errstate(xp):
        n, c = merged[:, N], merged[:, LOG_SCALE]
        ms, m2s = merged[:, MEAN], merged[:, M2] / merged[:, N]
        log_mean = c + xp.log(xp.abs(ms))
        log_var = 2.0 * c + xp.log(m2s)
        mean = sg * xp.exp(c) * ms
        var = xp.exp(2.0 * c) * m2s
        pos, neg, nan = merged[:, POSINF], merged[:, NEGINF], merged[:, NAN]
        bad = (nan > 0) | ((pos > 0) & (neg > 0)) | ((n == 0) & (pos == 0) & (neg == 0))
        inf = ((pos > 0) | (neg > 0)) & ~bad
        inf_val = xp.where(pos > 0, math.inf, -math.inf) * xp.where(sg == 0, 1.0, sg)
        mean = xp.where(bad, math.nan, xp.where(inf, inf_val, mean))
        log_mean = xp.where(bad, math.nan, xp.where(inf, math.inf, log_mean))
        var = xp.where(bad | inf, math.nan, var)
        log_var = xp.where(bad | inf, math.nan, log_var)
        # a statistic that is identically zero (Riesz with S = 0) has mean 0 and log -inf
    if check_range is not None:
        for k in np.nonzero(np.asarray(check_range, dtype=bool))[0]:
            issues = []
            for what, val, lg in (("mean", mean, log_mean), ("variance", var, log_var)):
                lv, vv = float(lg[k]), float(val[k])
                if math.isfinite(lv) and (vv == 0.0 or not math.isfinite(vv)):
                    issues.append((f"{what} over pairs", lv))
            if issues:
                warn_riesz_range(issues)
    return xp.stack([n, mean, var, log_mean, log_var], axis=1)


def pair_values(Ai: Any, Aj: Any, vi: Any = None, vj: Any = None, *, kind: str,
                dist_exp: float = 1.0, exponent: float = -1.0, riesz_s: float = 0.0) -> Any:
    """Values (Ti, Tj) of a pairwise kernel on the full tile of rows ``Ai``, ``Aj`` (as given).
    ``kind``: ``"cdnv"`` ``((v_i + v_j)/2) / ‖a_i − a_j‖^{2p}``, ``"dist"``
    ``‖a_i − a_j‖``, ``"log"`` ``log(‖a_i − a_j‖^{exponent})``, ``"riesz"``
    ``sign(S) ‖a_i − a_j‖^{−S}`` (a :class:`RieszRangeWarning` where it leaves
    float64), ``"riesz_log"`` its log-magnitude, ``"inner"`` ``a_i · a_j``."""
    xp = array_namespace(Ai)
    vi, vj = (None if a is None else xp.asarray(a) for a in (vi, vj))
    with errstate(xp):
        if kind == "inner":
            return Ai @ Aj.T
        t = _Tile(_Side(Ai, xp), _Side(Aj, xp), None, xp)
        d2 = t.d2()
        if kind == "cdnv":
            den = d2 if dist_exp == 1.0 else d2**dist_exp
            return (vi[:, None] + vj[None, :]) * 0.5 / den
        if kind == "dist":
            return xp.sqrt(d2)
        if kind == "log":
            return (0.5 * exponent) * xp.log(d2)
        if kind in ("riesz", "riesz_log"):
            lg = xp.log(d2)
            lg *= -0.5 * riesz_s
            if kind == "riesz_log":
                return lg
            sign = math.copysign(1.0, riesz_s) if riesz_s != 0 else 0.0
            val = xp.exp(lg)
            bad = xp.isfinite(lg) & ((val == 0) | ~xp.isfinite(val))
            if bool(xp.any(bad)):
                warn_riesz_range([("values", float(lg[bad][0]))], riesz_s)
            if riesz_s == 0:  # 0 · log 0 is NaN on the diagonal: the kernel is 0
                return xp.zeros_like(d2)
            val *= sign
            return val
    raise ValueError(f"unknown kernel kind {kind!r}")
