"""nc1_ood_class: NC1 with the OOD set as class K+1 (NECO, App. D)."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from dense_metrics import (
    dense_metrics,
    dense_ood_class,
    dense_stats,
    raise_if_dask_computes,
    small_case,
    split,
)

import ncdask
from ncdask.metrics import measure, peers

# --------------------------------------------------------------------------- nc1_ood_class





@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("D", [4, 12])  # K+1 > D and K+1 <= D: both sides of the pinv
def test_nc1_ood_class_matches_dense(weighted, D):
    X, y, W, b, Xt, yt, Xo, yo = small_case(3, K=6, D=D)
    K = 6
    want = dense_ood_class(X, y, Xo, K, weighted)
    stats = dense_stats(X, y, K, weighted=weighted, chunks=4)
    ood = split(Xo, yo, chunks=7)
    res = measure(stats, ood=ood, metrics=["nc1_ood_class", "nc1_pinv"], tile_size=3)
    if not weighted:  # unaffected by the OOD set
        assert float(res.nc1_pinv) == pytest.approx(dense_metrics(X, y, K)["nc1_pinv"], rel=1e-9)
    assert float(res.nc1_ood_class) == pytest.approx(want, rel=1e-9)
    assert peers.ood_class_variability(stats, ood) == pytest.approx(want, rel=1e-9)
    assert res["nc1_ood_class"].attrs["reference"].endswith("App. D")


def test_nc1_ood_class_with_float32_store_and_ignore_index(mem_url):
    X, y, W, b, Xt, yt, Xo, yo = small_case(4, K=5, D=6)
    yo = yo.copy()
    yo[:7] = -100
    s = ncdask.EmbeddingStore.from_arrays(
        mem_url(), {"train": (X, y), "ood": (Xo, yo)}, n_classes=5, ignore_index=-100,
        chunk_rows=16,
    )
    stats = ncdask.class_stats(s, "train")
    assert stats.attrs["ignore_index"] == -100
    res = measure(stats, ood=(s, "ood"), metrics=["nc1_ood_class", "nc5_ood_dev"])
    X32, Xo32 = X.astype(np.float32), Xo.astype(np.float32)
    want = dense_ood_class(X32, y, Xo32[7:], 5)
    assert float(res.nc1_ood_class) == pytest.approx(want, rel=1e-9)
    ref = dense_metrics(X32, y, 5, X_ood=Xo32[7:], y_ood=yo[7:])
    assert float(res.nc5_ood_dev) == pytest.approx(ref["nc5_ood_dev"], rel=1e-9)


def test_nc1_ood_class_is_lazy_and_left_out_without_ood():
    X, y, W, b, Xt, yt, Xo, yo = small_case(5)
    stats = dense_stats(X, y, 6)
    with raise_if_dask_computes():
        res = measure(stats, ood=split(Xo), metrics=["nc1_ood_class"])
    assert isinstance(res["nc1_ood_class"].data, da.Array)
    res2 = measure(stats, metrics=["nc1_ood_class"])
    assert res2.attrs["left_out"] == {"nc1_ood_class": "no ood given"}
