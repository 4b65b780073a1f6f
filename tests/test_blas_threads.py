"""One BLAS thread per task while ncdask graphs run threaded; settings restored after."""

import dask
import numpy as np
import pytest

threadpoolctl = pytest.importorskip("threadpoolctl")

import ncdask  # noqa: E402  (registers the callback through ncdask.graph)
import ncdask.graph  # noqa: E402,F401


def _blas_threads():
    """Threads of the process-wide BLAS libraries (NumPy's, which the kernels call).

    A BLAS built on OpenMP (faiss-cpu bundles one) keeps its thread count per
    thread, so a limit set before the compute does not reach dask's worker
    threads; NumPy's OpenBLAS (pthreads) and MKL are limited process-wide.
    """
    infos = threadpoolctl.threadpool_info()
    return sorted({i["num_threads"] for i in infos
                   if i["user_api"] == "blas" and i.get("threading_layer") != "openmp"})


def _probe(name):
    return dask.delayed(_blas_threads, pure=False)(dask_key_name=name)


@pytest.fixture
def two_blas_threads():
    np.ones((4, 4)) @ np.ones((4, 4))  # BLAS loaded
    if not _blas_threads():
        pytest.skip("no BLAS library that threadpoolctl can see")
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        yield


def test_default_scheduler_gets_the_limit(two_blas_threads):
    """No scheduler configured: arrays and delayed run threaded, and are limited."""
    import ncdask.kernels.tiled_stats as KS

    seen = []
    orig = KS.fold

    def probe(*a, **k):
        seen.append(_blas_threads())
        return orig(*a, **k)

    s = ncdask.EmbeddingStore.create("memory://blas-default", 5, 16, chunk_rows=100,
                                     overwrite=True)
    s.append("train", np.random.default_rng(0).random((1000, 16)), np.arange(1000) % 5)
    KS.fold = probe
    try:
        with dask.config.set(num_workers=2):
            ncdask.class_stats(s, "train").compute()
    finally:
        KS.fold = orig
    assert seen and all(t == [1] for t in seen)
    assert _blas_threads() == [2]


def test_limit_inside_ncdask_tasks_and_restored(two_blas_threads):
    with dask.config.set(scheduler="threads", num_workers=2):
        assert dask.compute(_probe("ncdask-probe-a"))[0] == [1]
        assert _blas_threads() == [2]  # put back after the compute
        # graphs without ncdask tasks are left alone
        assert dask.compute(_probe("user-probe"))[0] == [2]
        # an error inside the graph restores the setting too
        boom = dask.delayed(lambda: 1 / 0, pure=False)(dask_key_name="ncdask-boom")
        with pytest.raises(ZeroDivisionError):
            dask.compute(boom)
        assert _blas_threads() == [2]


def test_no_limit_for_one_worker_or_when_switched_off(two_blas_threads):
    with dask.config.set(scheduler="sync"):
        assert dask.compute(_probe("ncdask-probe-b"))[0] == [2]
    with dask.config.set({"scheduler": "threads", "num_workers": 2,
                          "ncdask.blas-per-task": False}):
        assert dask.compute(_probe("ncdask-probe-c"))[0] == [2]


def test_stats_unchanged_by_the_limit(two_blas_threads):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(3000, 40)), np.arange(3000) % 7
    ds = ncdask.EmbeddingStore.create("memory://blas-stats", 7, 40, chunk_rows=500,
                                      dtype="float64", overwrite=True)
    ds.append("train", X, y)
    with dask.config.set(scheduler="threads", num_workers=2):
        a = ncdask.class_stats(ds, "train").compute()
    with dask.config.set({"scheduler": "threads", "num_workers": 2,
                          "ncdask.blas-per-task": False}):
        b = ncdask.class_stats(ds, "train").compute()
    np.testing.assert_allclose(a.within_cov.values, b.within_cov.values, rtol=1e-12)
    assert _blas_threads() == [2]
