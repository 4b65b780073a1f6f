"""The kernels and graphs stay honest about their array module.

Every per-chunk kernel, then ``class_stats`` and ``measure`` end to end, run on
a second array module and must give the NumPy results:

``strict`` (always, on the CPU)
    :mod:`strict_xp`, NumPy behind a CuPy-like wall: an implicit conversion
    to NumPy (``np.asarray`` on an ``xp`` array), a NumPy array mixed into
    ``xp`` arithmetic, or a NumPy-only code path (``if xp is np: ... else:
    cupyx``) fails here as it would on a GPU.
``cupy`` (marked ``gpu``; skipped without CuPy and a CUDA device)
    the same tests on the device.
"""

from __future__ import annotations

import math
import sys
import types
import warnings

import dask
import dask.array as da
import numpy as np
import pytest
from dense import class_data
from strict_xp import StrictArray, asstrict, namespace, sx, to_host

import ncdask
from ncdask.kernels import closed_forms as C
from ncdask.kernels import decisions as Dk
from ncdask.kernels import pairwise as P
from ncdask.kernels import stats as S
from ncdask.kernels import tiled_stats as KT
from ncdask.kernels._xp import array_namespace, to_numpy
from ncdask.metrics import measure
from ncdask.store import array_backend

BACKENDS = ["strict", pytest.param("cupy", marks=pytest.mark.gpu)]
RTOL = {np.dtype(np.float64): 1e-9, np.dtype(np.float32): 1e-4}


@pytest.fixture(params=BACKENDS)
def xp(request):
    return namespace(request.param)


def _close(got, want, rtol=1e-9, atol=1e-12, err_msg=""):
    np.testing.assert_allclose(to_host(got), to_numpy(want), rtol=rtol, atol=atol, err_msg=err_msg)


def _is_xp(a, xp):
    return isinstance(a, xp.ndarray)


# --------------------------------------------------------------------------- the wall itself


def test_strict_array_refuses_implicit_host_conversion():
    a = sx.asarray(np.arange(6.0).reshape(2, 3))
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.asarray(a)
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.array(a, dtype=np.float64)
    with pytest.raises(TypeError, match="Unsupported type"):
        _ = a + np.ones(3)
    with pytest.raises(TypeError, match="Unsupported type"):
        sx.concatenate([a, np.ones((1, 3))])
    with pytest.raises(TypeError, match="Unsupported type"):
        np.stack([a, np.ones((2, 3))])  # np.<function> dispatches to the namespace
    # what CuPy allows: explicit transfers, scalars, host index arrays
    assert isinstance(np.sum(a), StrictArray) and float(np.sum(a)) == 15.0
    assert isinstance(a * 2.0 + np.float64(1), StrictArray)
    assert isinstance(a[np.array([1, 0])], StrictArray)
    np.testing.assert_array_equal(a.get(), np.arange(6.0).reshape(2, 3))
    assert array_namespace(a) is sx and array_namespace(np.ones(1), a) is sx
    np.testing.assert_array_equal(to_numpy(a), a.get())


def test_strict_dask_array_keeps_its_chunks():
    x = asstrict(da.ones((10, 3), chunks=4))
    y = (x * 2).sum(axis=0) + x.std(axis=0)
    assert isinstance(y._meta, StrictArray)
    assert isinstance(y.compute(), StrictArray)
    np.testing.assert_allclose(to_host(y), np.full(3, 20.0))


def test_a_numpy_only_call_is_caught():
    """The guard works: a kernel written with ``np.`` on its inputs fails under it."""

    def leaky_kernel(X):
        xp = array_namespace(X)
        return xp.asarray(np.bincount(np.asarray(X, dtype=np.int64)))

    leaky_kernel(np.arange(3))
    with pytest.raises(TypeError):
        leaky_kernel(sx.asarray(np.arange(3)))


# --------------------------------------------------------------------------- kernels


def _data(n=60, K=5, D=4, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    means = 3 * rng.normal(size=(K, D))
    X, y = class_data(rng, means, rng.integers(0, K, n), dtype=dtype)
    return X, y, means


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_stats_kernels(xp, dtype):
    X, y, _ = _data(dtype=dtype)
    y[:3] = -100
    K = 5
    in_scatter = np.array([True, True, False, True, True])
    kw = dict(n_classes=K, dtype=dtype, ignore_index=-100)
    slices = (slice(0, 25), slice(25, 25), slice(25, 60))
    for mask in (None, in_scatter):
        ref = [KT.fold(None, X[s], y[s], mask, **kw) for s in slices]
        got = [
            KT.fold(None, xp.asarray(X[s]), xp.asarray(y[s]),
                    None if mask is None else xp.asarray(mask), **kw)
            for s in slices
        ]
        for field in ("counts", "shift", "sums", "m2", "scatter"):
            assert _is_xp(got[0][field], xp), field
            _close(got[0][field], ref[0][field], rtol=RTOL[np.dtype(dtype)], err_msg=field)
        fin_ref, fin = KT.finish(KT.merge_many(ref)), KT.finish(KT.merge_many(got))
        for k, v in fin_ref.items():
            _close(fin[k], v, rtol=RTOL[np.dtype(dtype)], atol=1e-6, err_msg=k)
        for gm in ("unweighted", "weighted"):
            _close(
                KT.global_terms(fin["terms"], fin["scatter"], gm)[0],
                KT.global_terms(fin_ref["terms"], fin_ref["scatter"], gm)[0],
                rtol=RTOL[np.dtype(dtype)],
            )
        back = KT.from_stats(fin["counts"], fin["means"], fin["var_norms"], fin["scatter"])
        assert _is_xp(back["scatter"], xp)
    with pytest.raises(ValueError, match="outside"):
        KT.fold(None, xp.asarray(X), xp.asarray(y), n_classes=K, dtype=dtype)  # -100 unignored


def test_class_sums_on_every_path(xp):
    X, y, _ = _data(n=200, K=7)
    ref = S.class_sums(X, y, 7)
    got = S.class_sums(xp.asarray(X), xp.asarray(y), 7)
    assert _is_xp(got, xp)
    _close(got, ref)
    _close(S.class_sums(xp.asarray(X[:0]), xp.asarray(y[:0]), 7), np.zeros((7, 4)))


def test_pairwise_kernels(xp):
    rng = np.random.default_rng(1)
    Mi, Mj = rng.normal(size=(7, 4)), rng.normal(size=(5, 4))
    Mj[0] = Mi[5]  # a coincident pair: the exact recomputation path
    vi, vj = rng.random(7), rng.random(5)
    Wi, Wj = rng.normal(size=(7, 4)), rng.normal(size=(5, 4))
    gi, gj = np.arange(7), np.arange(3, 8)  # overlapping: a masked block
    kw = dict(stats=P.PAIR_STATS, riesz_s=2.0, inv_km1=0.1, dist_exp=2.0)
    ref = P.pair_moments(Mi, Mj, gi, gj, vi, vj, Wi, Wj, **kw)
    for g in ((gi, gj), (xp.asarray(gi), xp.asarray(gj))):  # host or device indices
        got = P.pair_moments(
            *(xp.asarray(a) for a in (Mi, Mj)),
            *g,
            *(xp.asarray(a) for a in (vi, vj, Wi, Wj)),
            **kw,
        )
        assert _is_xp(got, xp)
        _close(got, ref, rtol=1e-12, atol=1e-14)
    parts = np.stack([ref, P.pair_moments(Mj, Mi, gj, gi + 10, vj, vi, Wj, Wi, **kw)])
    merged = P.merge_moments(xp.asarray(parts), 1)
    _close(merged, P.merge_moments(parts, 1), rtol=1e-12)
    _close(P.finalize_moments(merged), P.finalize_moments(P.merge_moments(parts, 1)), rtol=1e-12)
    for kind in ("cdnv", "dist", "log", "riesz", "inner"):
        got = P.pair_values(
            xp.asarray(Mi), xp.asarray(Mj), xp.asarray(vi), xp.asarray(vj), kind=kind, riesz_s=2.0
        )
        _close(
            got, P.pair_values(Mi, Mj, vi, vj, kind=kind, riesz_s=2.0), rtol=1e-12, err_msg=kind
        )


def test_closed_form_kernels(xp):
    rng = np.random.default_rng(2)
    for K, D in ((4, 6), (8, 3)):
        Mc = rng.normal(size=(K, D))
        Mc -= Mc.mean(0)
        A = rng.normal(size=(D, D))
        Sw = A @ A.T / D
        if K <= D:
            ref = C.nc1_from_means(Mc, Sw, K, want_svd=True)
            got = C.nc1_from_means(xp.asarray(Mc), xp.asarray(Sw), K, want_svd=True)
        else:
            ref = C.nc1_from_between(Mc.T @ Mc / K, Sw, K)
            got = C.nc1_from_between(xp.asarray(Mc.T @ Mc / K), xp.asarray(Sw), K)
        assert _is_xp(got, xp)
        _close(got, ref, rtol=1e-9)
    G = Mc @ Mc.T
    terms = [float((G * G).sum()), float(np.trace(G)), float(G.sum())]
    ref = C.etf_error(*map(np.asarray, terms), 8)
    _close(C.etf_error(*(xp.asarray(t) for t in terms), 8), ref)
    ref = C.etf_error_gram(G)
    _close(C.etf_error_gram(xp.asarray(G)), ref)
    terms = [Mc.T @ Mc, None, None, Mc.sum(0), None]
    got = C.etf_error_terms(*(None if t is None else xp.asarray(t) for t in terms), 8)
    assert _is_xp(got, xp)
    _close(got, ref)


def test_decision_kernels(xp):
    rng = np.random.default_rng(3)
    X, W, Mc = rng.normal(size=(30, 4)), rng.normal(size=(6, 4)), rng.normal(size=(6, 4))
    mG, b, g = rng.normal(size=4), rng.normal(size=6), np.arange(6)
    ref = np.concatenate(
        [Dk.decision_tile(X, mG, W[s], b[s], Mc[s], g[s]) for s in (slice(0, 4), slice(4, 6))],
        axis=1,
    )
    got = xp.concatenate(
        [
            Dk.decision_tile(
                xp.asarray(X),
                xp.asarray(mG),
                xp.asarray(W[s]),
                xp.asarray(b[s]),
                xp.asarray(Mc[s]),
                g[s],
            )
            for s in (slice(0, 4), slice(4, 6))
        ],
        axis=1,
    )
    _close(got, ref)
    _close(Dk.merge_decisions(got), Dk.merge_decisions(ref))
    y = rng.integers(-1, 3, 30)
    parts = [
        Dk.label_sums(xp.asarray(X[s]), xp.asarray(y[s])) for s in (slice(0, 10), slice(10, 30))
    ]
    ref_parts = [Dk.label_sums(X[s], y[s]) for s in (slice(0, 10), slice(10, 30))]
    merged, merged_ref = Dk.merge_label_sums(parts), Dk.merge_label_sums(ref_parts)
    for a, r in zip(merged, merged_ref, strict=True):
        _close(a, r)
    _close(Dk.mean_of_label_means(merged), Dk.mean_of_label_means(merged_ref))


def test_faiss_kernel(xp):
    pytest.importorskip("faiss")
    rng = np.random.default_rng(4)
    X, Mc, mG = rng.normal(size=(40, 8)), rng.normal(size=(5, 8)), rng.normal(size=8)
    got = Dk.faiss_nearest(xp.asarray(X), xp.asarray(mG), xp.asarray(Mc))
    assert _is_xp(got, xp)
    np.testing.assert_array_equal(to_host(got), Dk.faiss_nearest(X, mG, Mc))


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def stores():
    rng = np.random.default_rng(5)
    out = {}
    for name, (K, D) in {"tall": (6, 8), "wide": (12, 4)}.items():
        means = 3 * rng.normal(size=(K, D))
        y = rng.integers(0, K, 400)
        y[::50] = -100
        X = means[np.maximum(y, 0)] + rng.normal(size=(400, D))
        Xt, yt = class_data(rng, means, rng.integers(0, K, 90))
        Xo, yo = rng.normal(size=(50, D)), rng.integers(0, 3, 50)
        s = ncdask.EmbeddingStore.from_arrays(
            f"memory://ncdask-tests/xp-{name}",
            {"train": (X.astype(np.float32), y), "test": (Xt, yt), "ood": (Xo, yo)},
            overwrite=True,
            chunk_rows=64,
            ignore_index=-100,
        )
        W = means + 0.1 * rng.normal(size=(K, D))
        out[name] = (s, W, rng.normal(size=K))
    return out


@pytest.mark.parametrize("case", ["tall", "wide"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_class_stats_and_measure_end_to_end(xp, stores, case, dtype):
    """``store.split(backend=xp)`` → ``class_stats`` → ``measure``: xp throughout, same values."""
    s, W, b = stores[case]
    rtol = RTOL[np.dtype(dtype)]
    with dask.config.set(scheduler="sync"):
        ref_st = ncdask.class_stats(s.split("train"), dtype=dtype)
        st = ncdask.class_stats(s.split("train", backend=xp), dtype=dtype)
        for v in ("means", "global_mean", "within_cov", "var_norms"):
            assert _is_xp(st[v].data._meta, xp), v
            _close(st[v], ref_st[v].values, rtol=rtol, atol=rtol * 1e-3, err_msg=v)
        np.testing.assert_array_equal(st["counts"].values, ref_st["counts"].values)
        # the pipelined plan over class groups (a budget too small for K×D)
        piped = ncdask.class_stats(s.split("train", backend=xp), dtype=dtype,
                                   memory_budget=1, tile_size=2)
        for v in ("means", "global_mean", "within_cov", "var_norms"):
            assert _is_xp(piped[v].data._meta, xp), v
            _close(piped[v], ref_st[v].values, rtol=rtol, atol=rtol * 1e-3, err_msg=v)
        both = ncdask.merge_stats(st, st)
        assert _is_xp(both["within_cov"].data._meta, xp)
        _close(both["means"], ncdask.merge_stats(ref_st, ref_st)["means"].values, rtol=rtol)

        kw = dict(tile_size=4, test=s.split("test"), ood=s.split("ood"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ncdask.DegenerateInputWarning)
            ref = measure(ref_st, weights=W, bias=b, **kw).compute()
            runs = {
                "device inputs": measure(
                    st,
                    weights=xp.asarray(W),
                    bias=xp.asarray(b),
                    **{
                        **kw,
                        "test": s.split("test", backend=xp),
                        "ood": s.split("ood", backend=xp),
                    },
                ),
                "host inputs, no bias": measure(st, weights=W, **kw),
            }
        for label, res in runs.items():
            on_host = {"nc4_agree", "agree_per_class"}  # counted on the host by design
            lazy_host = [
                k
                for k, v in res.data_vars.items()
                if k not in on_host and not _is_xp(v.data._meta, xp)
            ]
            assert not lazy_host, f"{label}: {lazy_host} left the array module"
            res = res.compute()
            for k in ref.data_vars:
                if label.endswith("no bias") and k in ("nc3_bias", "nc4_agree", "agree_per_class"):
                    continue
                _close(
                    res[k],
                    ref[k].values,
                    rtol=max(rtol, 1e-9),
                    atol=1e-10,
                    err_msg=f"{label}: {k}",
                )


def test_measure_nc4_faiss_on_xp(xp, stores):
    pytest.importorskip("faiss")
    s, W, b = stores["tall"]
    st = ncdask.class_stats(s.split("train", backend=xp))
    kw = dict(weights=W, bias=b, test=s.split("test", backend=xp), metrics=["nc4_agree"])
    got = measure(st, nc4_backend="faiss", **kw).compute()
    ref = measure(st, nc4_backend="gemm", **kw).compute()
    assert float(to_host(got["nc4_agree"])) == float(to_host(ref["nc4_agree"]))


# --------------------------------------------------------------------------- backend errors


def test_backend_cupy_without_cupy_fails_clearly(monkeypatch, stores):
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy -> ImportError
    s = stores["tall"][0]
    with pytest.raises(ImportError, match=r"backend='cupy' needs CuPy: pip install"):
        s.split("train", backend="cupy")


def test_backend_cupy_without_device_fails_clearly(monkeypatch, stores):
    def no_device():
        raise RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")

    fake = types.ModuleType("cupy")
    fake.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=no_device))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    with pytest.raises(RuntimeError, match="no CUDA device is usable"):
        stores["tall"][0].split("train", backend="cupy")


def test_backend_argument_is_checked():
    assert array_backend("numpy") is None and array_backend(np) is None
    assert array_backend(sx) is sx
    with pytest.raises(ValueError, match="'numpy' or 'cupy', got 'gpu'"):
        array_backend("gpu")
    with pytest.raises(TypeError, match="array module"):
        array_backend(math)


def test_class_stats_of_a_dataset_without_counts(xp):
    """No ``class_counts`` attr: the labels' bincount pass runs on xp and comes to the host."""
    import xarray as xr

    X, y, _ = _data(n=300, K=5)
    ref = ncdask.class_stats(
        xr.Dataset(
            {
                "embeddings": (("sample", "feature"), da.from_array(X, chunks=70)),
                "labels": ("sample", da.from_array(y, chunks=70)),
            },
            attrs={"n_classes": 5},
        )
    )
    ds = xr.Dataset(
        {
            "embeddings": (("sample", "feature"), asstrict_or(xp, da.from_array(X, chunks=70))),
            "labels": ("sample", asstrict_or(xp, da.from_array(y, chunks=70))),
        },
        attrs={"n_classes": 5},
    )
    st = ncdask.class_stats(ds)
    np.testing.assert_array_equal(st["counts"].values, ref["counts"].values)
    _close(st["within_cov"], ref["within_cov"].values)


def asstrict_or(xp, x):
    """``x`` with ``xp`` chunks."""
    return x.map_blocks(xp.asarray, meta=xp.empty((0,) * x.ndim, dtype=x.dtype))
