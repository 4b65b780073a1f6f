"""Every pairwise statistic of one band of a tile in one compiled pass (numba, host arrays).

NumPy spends about forty passes over a band on the seven statistics (each value, its
centring and its dot product, one ufunc call each), and every pass is a trip through
memory; the two threads of a 2-core machine then share that bandwidth. This pass
computes all of a pair's values from its two cosines while they are in registers and
keeps shifted sums per row of the band (the shift is the row's first value, so the
variance does not cancel). ``log``, ``exp`` and ``sqrt`` run as scalar calls here, but
the fused pass still costs half of NumPy's per pair
(``benchmarks/results/bench_pairwise.json``). Without numba, or with
``ncdask.pairwise_jit: False``, :mod:`ncdask.kernels.pairwise` runs its NumPy passes."""

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
        for name in ("_stat", "_fix_close", "_pass1", "_pass2", "_pass3"):
            # reassoc: the sums vectorise; no nnan/ninf, so that inf and NaN keep meaning
            g[name] = numba.njit(nogil=True, cache=True, error_model="numpy",
                                 fastmath={"reassoc", "contract"})(g[name])
        _COMPILED = True


def _stat(x, j0, out, k, log_scale):
    """Moments of ``x[j0:]`` into ``out[k]``: shifted sums (shift: the first value), and
    where they are not finite, a second pass that counts the non-finite values apart."""
    n = x.shape[0] - j0
    sh = x[j0]
    s1 = 0.0
    s2 = 0.0
    for j in range(j0, x.shape[0]):
        d = x[j] - sh
        s1 += d
        s2 += d * d
    if not (math.isfinite(s1) and math.isfinite(s2)):
        n = 0
        for j in range(j0, x.shape[0]):
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
        for j in range(j0, x.shape[0]):  # the sums over the finite values only
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


def _fix_close(d, j0, base_i, base_j, rho, A, B, i):
    """``d[j] = ‖A_i − B_j‖²`` where ``d[j] < rho (base_i + base_j[j])`` (the GEMM form
    cancels there)."""
    worst = 0.0
    for j in range(j0, d.shape[0]):
        worst = min(worst, d[j] - rho * (base_i + base_j[j]))
    if worst >= 0.0:
        return
    for j in range(j0, d.shape[0]):
        if d[j] < rho * (base_i + base_j[j]):
            s = 0.0
            for q in range(A.shape[1]):
                e = A[i, q] - B[j, q]
                s += e * e
            d[j] = s


def _pass1(C, CW, start, a2i, a2j, n2i, n2j, qi, qj, vi, vj, Ui, Uj, Mi, Mj,  # noqa: PLR0913
           want, inv_km1, dist_exp, rho, r0, du, lohi, out):
    """Rows ``r0 ...`` of the band (one strip): every statistic but ``log`` and ``riesz``,
    and ``du`` = ‖u_i − u_j‖² (1 before ``start``), its smallest positive and largest value."""
    nc = C.shape[1]
    val = np.empty(nc)
    for r in range(du.shape[0]):
        i = r0 + r
        j0 = start[i]
        if j0 >= nc:
            continue
        if want[COS]:
            _stat(C[i], j0, out[i], COS, 0.0)
        if want[COS_DEV]:
            for j in range(j0, nc):
                val[j] = abs(C[i, j] + inv_km1)
            _stat(val, j0, out[i], COS_DEV, 0.0)
        if want[WCOS_DEV]:
            for j in range(j0, nc):
                val[j] = abs(CW[i, j] + inv_km1)
            _stat(val, j0, out[i], WCOS_DEV, 0.0)
        if want[CDNV]:
            for j in range(j0, nc):
                val[j] = n2i[i] + n2j[j] - 2.0 * C[i, j] * qi[i] * qj[j]
            _fix_close(val, j0, n2i[i], n2j, rho, Mi, Mj, i)
            for j in range(j0, nc):
                d2 = val[j]
                den = d2 if dist_exp == 1.0 else d2 * d2 if dist_exp == 2.0 else d2**dist_exp
                val[j] = (vi[i] + vj[j]) / den
            _stat(val, j0, out[i], CDNV, 0.0)
        d = du[r]
        for j in range(j0):
            d[j] = 1.0
        for j in range(j0, nc):
            d[j] = a2i[i] + a2j[j] - 2.0 * C[i, j]
        _fix_close(d, j0, a2i[i], a2j, rho, Ui, Uj, i)
        lo, hi = math.inf, 0.0
        for j in range(j0, nc):
            lo = min(lo, d[j] if d[j] > 0.0 else math.inf)
            hi = max(hi, d[j])
        lohi[r, 0], lohi[r, 1] = lo, hi
        if want[DIST]:
            for j in range(j0, nc):
                val[j] = math.sqrt(d[j])
            _stat(val, j0, out[i], DIST, 0.0)


def _pass2(lg, start, want, half, r0, lohi, out):
    """``log`` from ``lg = log du``, and the Riesz exponent ``half (lg − ref)`` in place
    (``ref``: the log of the row's smallest positive distance where ``S > 0``, of its largest
    where ``S < 0``, so that the largest value is 1)."""
    nc = lg.shape[1]
    val = np.empty(nc)
    for r in range(lg.shape[0]):
        i = r0 + r
        j0 = start[i]
        if j0 >= nc:
            continue
        x = lg[r]
        if want[LOG]:
            for j in range(j0, nc):
                val[j] = -0.5 * x[j]
            _stat(val, j0, out[i], LOG, 0.0)
        if want[RIESZ]:
            lo, hi = lohi[r, 0], lohi[r, 1]
            ref = 0.0
            if half < 0.0 and lo < math.inf:
                ref = math.log(lo)
            elif half > 0.0 and hi > 0.0:
                ref = math.log(hi)
            lohi[r, 0] = half * ref
            for j in range(j0, nc):
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
        _stat(y[r], j0, out[i], RIESZ, lohi[r, 0])


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
    for r0 in range(0, nb, step):
        r1 = min(nb, r0 + step)
        d, lh = du[: r1 - r0], lohi[: r1 - r0]
        _pass1(C, CW, start, rows.a2, cols.a2, rows.n2, cols.n2, 1.0 / rows.s, 1.0 / cols.s,
               vi, vj, units[0], units[1], rows.A, cols.A, want, float(inv_km1),
               float(dist_exp), float(rho), r0, d, lh, out)
        if want[LOG] or want[RIESZ]:
            with np.errstate(all="ignore"):
                np.log(d, out=d)
            _pass2(d, start, want, half, r0, lh, out)
            if want[RIESZ]:
                with np.errstate(all="ignore"):
                    np.exp(d, out=d)
                _pass3(d, start, half, r0, lh, out)
    return out
