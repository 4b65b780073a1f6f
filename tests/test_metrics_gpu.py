"""CuPy in, CuPy out: the metric kernels and graphs on a CUDA device (skipped without one)."""

from __future__ import annotations

import numpy as np
import pytest
from dense_metrics import dense_stats, golden, split
from strict_xp import to_host

pytestmark = pytest.mark.gpu
cp = pytest.importorskip("cupy")
try:
    cp.cuda.runtime.getDeviceCount()
except Exception:  # pragma: no cover - no device behind the module
    pytest.skip("no CUDA device", allow_module_level=True)

from ncdask.metrics import measure  # noqa: E402


def _to_cupy(ds):
    out = ds.copy()
    for v in ("means", "global_mean", "within_cov", "var_norms"):
        out[v] = ds[v].copy(data=ds[v].data.map_blocks(cp.asarray))
    return out


@pytest.mark.parametrize("name", ["collapsed", "wide"])
def test_cupy_matches_numpy(name):
    d, g = golden(name)
    K = d["W"].shape[0]
    stats = dense_stats(d["X"], d["Y"], K, chunks=3)
    kw = dict(
        test=split(d["X_test"], d["Y_test"]),
        ood=split(d["X_ood"], d["Y_ood"]),
        tile_size=3,
    )
    ref = measure(stats, weights=d["W"], **kw).compute()
    gst = _to_cupy(stats)
    kw["test"]["embeddings"] = kw["test"]["embeddings"].copy(
        data=kw["test"]["embeddings"].data.map_blocks(cp.asarray)
    )
    res = measure(gst, weights=cp.asarray(d["W"]), **kw)
    assert isinstance(res["nc1_cdnv"].data._meta, cp.ndarray)
    res = res.compute()
    for key in ref.data_vars:
        got = to_host(res[key])  # `.values` would be np.asarray(cupy): CuPy refuses it
        np.testing.assert_allclose(got, ref[key].values, rtol=1e-9, atol=1e-12, err_msg=key)


def test_pair_moments_kernel_on_cupy():
    from ncdask.kernels.pairwise import PAIR_STATS, pair_moments

    rng = np.random.default_rng(0)
    Mi, Mj = rng.normal(size=(7, 4)), rng.normal(size=(5, 4))
    vi, vj = rng.random(7), rng.random(5)
    gi, gj = np.arange(7), np.arange(3, 8)  # overlapping: a masked block
    kw = dict(stats=PAIR_STATS[:6], riesz_s=2.0, inv_km1=0.1)
    a = pair_moments(Mi, Mj, gi, gj, vi, vj, **kw)
    b = pair_moments(cp.asarray(Mi), cp.asarray(Mj), gi, gj, cp.asarray(vi), cp.asarray(vj), **kw)
    assert isinstance(b, cp.ndarray)
    np.testing.assert_allclose(b.get(), a, rtol=1e-12, atol=1e-14)
