"""CuPy end to end: a store read onto the GPU, statistics and every metric, NumPy values.

Skipped cleanly without CuPy or a CUDA device (see ``strict_xp.cupy_or_skip``);
the per-kernel CuPy checks are the ``cupy`` cases of ``test_array_namespace.py``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from dense import class_data
from strict_xp import cupy_or_skip, to_host

import ncdask
from ncdask.metrics import measure

pytestmark = pytest.mark.gpu

RTOL = {"float64": 1e-9, "float32": 1e-4}


@pytest.fixture(scope="module")
def cp():
    return cupy_or_skip()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A store on local disk (workers of a LocalCUDACluster must reach it)."""
    rng = np.random.default_rng(0)
    K, D = 10, 16
    means = 3 * rng.normal(size=(K, D))
    X, y = class_data(rng, means, rng.integers(0, K, 3000))
    Xt, yt = class_data(rng, means, rng.integers(0, K, 500))
    Xo, yo = rng.normal(size=(300, D)), rng.integers(0, 4, 300)
    path = tmp_path_factory.mktemp("gpu") / "store.zarr"
    s = ncdask.EmbeddingStore.from_arrays(
        str(path), {"train": (X, y), "test": (Xt, yt), "ood": (Xo, yo)}, chunk_rows=512
    )
    W = means + 0.1 * rng.normal(size=(K, D))
    return s, W, rng.normal(size=K)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_store_on_cupy_matches_numpy(cp, store, dtype):
    s, W, b = store
    rtol = RTOL[dtype]
    ref_st = ncdask.class_stats(s.split("train"), dtype=dtype)
    st = ncdask.class_stats(s.split("train", backend="cupy"), dtype=dtype)
    assert isinstance(s.split("train", backend="cupy")["embeddings"].data._meta, cp.ndarray)
    for v in ("means", "global_mean", "within_cov", "var_norms"):
        assert isinstance(st[v].data._meta, cp.ndarray), v
        np.testing.assert_allclose(
            to_host(st[v]), ref_st[v].values, rtol=rtol, atol=rtol * 1e-3, err_msg=v
        )
    kw = dict(weights=W, bias=b, tile_size=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ncdask.DegenerateInputWarning)
        ref = measure(ref_st, test=s.split("test"), ood=s.split("ood"), **kw).compute()
        res = measure(
            st, test=s.split("test", backend="cupy"), ood=s.split("ood", backend="cupy"), **kw
        )
    assert isinstance(res["nc1_cdnv"].data._meta, cp.ndarray)
    host = res.compute().as_numpy()  # moved to the host at the very end
    for k in ref.data_vars:
        assert isinstance(host[k].values, np.ndarray), k
        np.testing.assert_allclose(
            host[k].values, ref[k].values, rtol=max(rtol, 1e-9), atol=1e-10, err_msg=k
        )


def test_local_cuda_scheduler(cp, store):
    try:
        import dask_cuda  # noqa: F401
    except Exception as e:  # missing, or built against another dask
        pytest.skip(f"dask_cuda unusable: {type(e).__name__}: {e}")
    from ncdask.scheduler import use_scheduler

    s = store[0]
    ref = ncdask.class_stats(s.split("train")).compute()
    with use_scheduler("local-cuda", quiet=True) as run:
        got = run.compute(ncdask.class_stats(s.split("train", backend="cupy")))
    np.testing.assert_allclose(to_host(got["within_cov"]), ref["within_cov"].values, rtol=1e-9)


def test_faiss_gpu_nearest_matches_host(cp):
    faiss = pytest.importorskip("faiss")
    if not hasattr(faiss, "GpuIndexFlatL2") or faiss.get_num_gpus() < 1:
        pytest.skip("FAISS without GPU support")
    from ncdask.kernels.decisions import faiss_nearest

    rng = np.random.default_rng(1)
    X, Mc, mG = rng.normal(size=(2000, 32)), rng.normal(size=(50, 32)), rng.normal(size=32)
    got = faiss_nearest(cp.asarray(X), cp.asarray(mG), cp.asarray(Mc))
    assert isinstance(got, cp.ndarray)
    np.testing.assert_array_equal(got.get(), faiss_nearest(X, mG, Mc))
