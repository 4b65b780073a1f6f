"""Every pairwise statistic of one band of a tile in one compiled pass (numba, host arrays).

NumPy spends about forty passes over a band on the seven statistics (each value, its
centring and its dot product, one ufunc call each), each a trip through memory that the
cores share. This pass computes a pair's values from its two cosines in a few vectorised
loops per row, in cache, with shifted sums (the shift is the row's first value, so that a
variance does not cancel); NumPy's vectorised ``log`` and ``exp`` run between its stages,
as numba's are scalar calls. Every pairwise metric on means and W at K=32,768, D=512
(2 cores), medians of 3 in two runs: 12.8–14.5 s, 1.34–1.47× the GEMM and elementwise
floors, against 17.7 s, 1.81× with NumPy's passes (``benchmarks/results/bench_pairwise*``).
Without numba, or with ``ncdask.pairwise_jit: False``, :mod:`ncdask.kernels.pairwise`
runs its NumPy passes."""

from __future__ import annotations

import importlib.util
import math
import threading
from typing import Any

import dask
import numpy as np

#: Index of each statistic of :data:`ncdask.kernels.pairwise.PAIR_STATS` in the pass.
CDNV, DIST, LOG, RIESZ, COS, COS_DEV, WCOS_DEV = range(7)
#: Slots of a moments row (as :data:`ncdask.kernels.pairwise.SLOTS`).
_N, _MEAN, _M2, _LOG_SCALE, _POS, _NEG, _NAN = range(7)
#: Pairs from which a tile takes the compiled pass under ``ncdask.pairwise_jit: "auto"``:
#: smaller ones gain less than numba's import and its compile (seconds, once per machine).
MIN_PAIRS = 1 << 20
_HAVE_NUMBA = importlib.util.find_spec("numba") is not None
_COMPILED = False
_LOCK = threading.Lock()


def enabled(n_pairs: int, *arrays: Any) -> bool:
    """Whether the compiled pass serves a tile of ``n_pairs`` pairs of these arrays: numba
    is installed (``pip install ncdask[fast]``), every array is float64 NumPy and the
    config key ``ncdask.pairwise_jit`` allows it (``"auto"``, the default: tiles of at
    least :data:`MIN_PAIRS` pairs; True: every tile; False: none)."""
    mode = dask.config.get("ncdask.pairwise_jit", "auto")
    if not _HAVE_NUMBA or mode is False or (mode == "auto" and n_pairs < MIN_PAIRS):
        return False
    return all(a is None or (type(a) is np.ndarray and a.dtype == np.float64) for a in arrays)


def _compile() -> None:
    """Replace the pass functions by their numba versions (once; the callers' globals are
    looked up at their compile time, so the helpers go first)."""
    global _COMPILED
    with _LOCK:
        if _COMPILED:
            return
        import numba

        g = globals()
        for name in ("_stat", "_gram_form", "_fix_close", "_pass1", "_pass2", "_pass3"):
            # reassoc: the sums vectorise; no nnan/ninf, so that inf and NaN keep meaning
            g[name] = numba.njit(nogil=True, cache=True, error_model="numpy",
                                 fastmath={"reassoc", "contract"})(g[name])
        _COMPILED = True


def _stat(x, out, k, log_scale):
    """Moments of ``x`` into ``out[k]``: shifted sums (shift: the first value), and where
    they are not finite, a second pass that counts the non-finite values apart. (Every
    loop here runs from 0 over a slice: numba then drops the negative-index checks and
    vectorises it.)"""
    n = x.shape[0]
    sh = x[0]
    s1 = 0.0
    s2 = 0.0
    for j in range(n):
        d = x[j] - sh
        s1 += d
        s2 += d * d
    if not (math.isfinite(s1) and math.isfinite(s2)):
        n = 0
        for j in range(x.shape[0]):
            v = x[j]
            if math.isfinite(v):
                if n == 0:
                    sh = v
                n += 1
            elif v > 0:
                out[k, _POS] += 1.0
            elif v < 0:
                out[k, _NEG] += 1.0
            else:
                out[k, _NAN] += 1.0
        s1, s2 = 0.0, 0.0
        for j in range(x.shape[0]):  # the sums over the finite values only
            v = x[j]
            if math.isfinite(v):
                d = v - sh
                s1 += d
                s2 += d * d
    out[k, _N] = n
    if n > 0:
        out[k, _MEAN] = sh + s1 / n
        out[k, _M2] = max(s2 - s1 * s1 / n, 0.0)
        out[k, _LOG_SCALE] = log_scale


def _gram_form(d, c, base_i, base_j, scale_i, scale_j, rho):
    """``d = base_i + base_j − 2 c scale_i scale_j`` (a squared distance from a Gram entry);
    whether some entry is under ``rho (base_i + base_j)``, where the form cancels (counted,
    not a running min: numba vectorises sums, not min)."""
    close = 0
    for j in range(d.shape[0]):
        x = base_i + base_j[j] - 2.0 * c[j] * (scale_i * scale_j[j])
        d[j] = x
        close += x < rho * (base_i + base_j[j])
    return close > 0


def _fix_close(d, base_i, base_j, rho, A, B, i, j0):
    """``d[j] = ‖A_i − B_{j0+j}‖²`` where ``d[j] < rho (base_i + base_j[j])``."""
    for j in range(d.shape[0]):
        if d[j] < rho * (base_i + base_j[j]):
            s = 0.0
            for q in range(A.shape[1]):
                e = A[i, q] - B[j0 + j, q]
                s += e * e
            d[j] = s


def _pass1(C, CW, start, a2i, a2j, n2i, n2j, qi, qj, vi, vj, Ui, Uj, Mi, Mj,  # noqa: PLR0913
           want, inv_km1, dist_exp, rho, r0, du, out):
    """Rows ``r0 ...`` of the band (one strip): every statistic but ``log`` and ``riesz``,
    and ``du`` = ‖u_i − u_j‖² (its first pair's value before ``start``)."""
    nc = C.shape[1]
    buf = np.empty(nc)
    ones = np.ones(nc)
    for r in range(du.shape[0]):
        i = r0 + r
        j0 = start[i]
        if j0 >= nc:
            continue
        c = C[i, j0:]
        val = buf[: nc - j0]
        if want[COS]:
            _stat(c, out[i], COS, 0.0)
        if want[COS_DEV]:
            for j in range(val.shape[0]):
                val[j] = abs(c[j] + inv_km1)
            _stat(val, out[i], COS_DEV, 0.0)
        if want[WCOS_DEV]:
            cw = CW[i, j0:]
            for j in range(val.shape[0]):
                val[j] = abs(cw[j] + inv_km1)
            _stat(val, out[i], WCOS_DEV, 0.0)
        if want[CDNV]:
            n2 = n2j[j0:]
            if _gram_form(val, c, n2i[i], n2, qi[i], qj[j0:], rho):
                _fix_close(val, n2i[i], n2, rho, Mi, Mj, i, j0)
            vv = vj[j0:]
            if dist_exp == 1.0:
                for j in range(val.shape[0]):
                    val[j] = (vi[i] + vv[j]) / val[j]
            elif dist_exp == 2.0:
                for j in range(val.shape[0]):
                    val[j] = (vi[i] + vv[j]) / (val[j] * val[j])
            else:
                for j in range(val.shape[0]):
                    val[j] = (vi[i] + vv[j]) / val[j] ** dist_exp
            _stat(val, out[i], CDNV, 0.0)
        d = du[r, j0:]
        a2 = a2j[j0:]
        if _gram_form(d, c, a2i[i], a2, 1.0, ones, rho):
            _fix_close(d, a2i[i], a2, rho, Ui, Uj, i, j0)
        du[r, :j0] = d[0]  # neutral for the row's min and max
        if want[DIST]:
            for j in range(val.shape[0]):
                val[j] = math.sqrt(d[j])
            _stat(val, out[i], DIST, 0.0)


def _pass2(lg, start, want, half, r0, lohi, out):
    """``log`` from ``lg = log du``, and the Riesz exponent ``half (lg − ref)`` in place
    (``ref``: the log of the row's smallest positive distance where ``S > 0``, of its largest
    where ``S < 0``, so that the largest value is 1; ``lohi``: each row's min and max of du,
    then its log scale)."""
    nc = lg.shape[1]
    buf = np.empty(nc)
    for r in range(lg.shape[0]):
        i = r0 + r
        j0 = start[i]
        if j0 >= nc:
            continue
        x = lg[r, j0:]
        if want[LOG]:
            val = buf[: nc - j0]
            for j in range(val.shape[0]):
                val[j] = -0.5 * x[j]
            _stat(val, out[i], LOG, 0.0)
        if want[RIESZ]:
            lo, hi = lohi[r, 0], lohi[r, 1]
            ref = 0.0
            if half < 0.0 and lo > 0.0:
                ref = math.log(lo)
            elif half < 0.0:  # a zero distance or a NaN: the smallest positive distance
                ref = math.inf
                for j in range(x.shape[0]):
                    if x[j] > -math.inf:
                        ref = min(ref, x[j])
                ref = 0.0 if ref == math.inf else ref
            elif half > 0.0 and hi > 0.0:
                ref = math.log(hi)
            lohi[r, 0] = half * ref
            for j in range(x.shape[0]):
                x[j] = half * (x[j] - ref)


def _pass3(y, start, half, r0, lohi, out):
    """``riesz`` from its values ``y`` (exp of :func:`_pass2`'s exponent)."""
    nc = y.shape[1]
    for r in range(y.shape[0]):
        i = r0 + r
        j0 = start[i]
        if j0 >= nc:
            continue
        if half == 0.0:  # S = 0: the kernel is 0 everywhere
            out[i, RIESZ, _N] = nc - j0
            continue
        _stat(y[r, j0:], out[i], RIESZ, lohi[r, 0])


def band_moments(C: Any, CW: Any, start: Any, rows: Any, cols: Any, units: tuple[Any, Any],
                 v: tuple[Any, Any], want: Any, *, inv_km1: float, riesz_s: float,
                 dist_exp: float, rho: float, strip_pairs: int) -> Any:
    """Moments ``(nb, 7, NSLOT)`` of every statistic (in ``PAIR_STATS`` order) for each row
    of a band: row ``i`` counts the pairs ``(i, j)`` with ``j ≥ start[i]``. ``C``, ``CW``: the
    band's cosines of the means and of the classifier rows; ``rows``, ``cols``: the blocks'
    sides (squared norms, scales, rows); ``units``: their unit rows; ``v``: the halved
    variance norms (or Nones). Strips of ``strip_pairs`` pairs go through the compiled
    passes and NumPy's vectorised ``log`` and ``exp`` (numba's are scalar calls)."""
    _compile()
    nb, nc = C.shape
    out = np.zeros((nb, 7, 7))
    none1 = np.zeros(0)
    vi, vj = (none1 if a is None else a for a in v)
    CW = np.zeros((0, 0)) if CW is None else np.ascontiguousarray(CW)
    C = np.ascontiguousarray(C)
    start = np.ascontiguousarray(start, dtype=np.int64)
    want = np.asarray(want, dtype=np.bool_)
    half = -0.5 * float(riesz_s)
    step = max(1, strip_pairs // max(1, nc))
    du = np.empty((min(step, nb), nc))
    lohi = np.empty((du.shape[0], 2))
    qi, qj = 1.0 / rows.s, 1.0 / cols.s  # once per band, not per strip
    for r0 in range(0, nb, step):
        r1 = min(nb, r0 + step)
        d, lh = du[: r1 - r0], lohi[: r1 - r0]
        _pass1(C, CW, start, rows.a2, cols.a2, rows.n2, cols.n2, qi, qj,
               vi, vj, units[0], units[1], rows.A, cols.A, want, float(inv_km1),
               float(dist_exp), float(rho), r0, d, out)
        if want[LOG] or want[RIESZ]:
            if want[RIESZ]:
                np.min(d, axis=1, out=lh[:, 0])
                np.max(d, axis=1, out=lh[:, 1])
            with np.errstate(all="ignore"):
                np.log(d, out=d)
            _pass2(d, start, want, half, r0, lh, out)
            if want[RIESZ]:
                with np.errstate(all="ignore"):
                    np.exp(d, out=d)
                _pass3(d, start, half, r0, lh, out)
    return out
