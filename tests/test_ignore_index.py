"""ignore_index: padding labels skipped by the store, class_stats and measure."""

from __future__ import annotations

import numpy as np
import pytest
from dense import assert_stats_equal
from dense_metrics import dense_metrics, dense_ood_class, dense_stats, small_case, split

import ncdask
from ncdask.metrics import measure

# --------------------------------------------------------------------------- ignore_index


def test_store_ignore_index_round_trip(mem_url):
    url = mem_url()
    s = ncdask.EmbeddingStore.create(url, n_classes=3, dim=2, ignore_index=-100, chunk_rows=4)
    assert s.ignore_index == -100
    X = np.arange(20, dtype=np.float32).reshape(10, 2)
    y = np.array([0, -100, 1, 2, -100, 0, 1, -100, 2, 2])
    assert s.append("train", X[:5], y[:5]) == 5
    with s.writer("train") as w:
        w.append(X[5:], y[5:])
    with pytest.raises(ValueError, match=r"label -1 is outside \[0, 3\).*ignore_index=-100"):
        s.append("train", X[:2], np.array([0, -1]))
    with pytest.raises(ValueError, match="label 3 is outside"):
        s.append("train", X[:2], np.array([3, -100]))
    back = ncdask.EmbeddingStore.open(url)
    assert back.ignore_index == -100
    ds = back["train"]
    assert ds.attrs["ignore_index"] == -100
    assert ds.attrs["class_counts"].tolist() == [2, 2, 3]
    assert ds.labels.values.tolist() == y.tolist()
    assert back.core.group["train"].attrs["ncdask_split"]["n_ignored"] == 3


def test_store_rejects_ignore_index_inside_classes_and_default_rejects_padding(mem_url):
    with pytest.raises(ValueError, match="ignore_index=1 is a class index"):
        ncdask.EmbeddingStore.create(mem_url(), n_classes=3, dim=2, ignore_index=1)
    with pytest.raises(TypeError, match="ignore_index must be an integer"):
        ncdask.EmbeddingStore.create(mem_url(), n_classes=3, dim=2, ignore_index=1.5)
    s = ncdask.EmbeddingStore.create(mem_url(), n_classes=3, dim=2)
    assert s.ignore_index is None
    with pytest.raises(ValueError, match="create the store with ignore_index="):
        s.append("train", np.zeros((2, 2)), np.array([0, -100]))


def test_class_stats_drop_ignored_samples(mem_url):
    rng = np.random.default_rng(6)
    K, D = 4, 5
    y = rng.integers(0, K, size=120)
    X = rng.normal(size=(120, D)) + y[:, None]
    y_pad = y.copy()
    y_pad[rng.random(120) < 0.3] = -100
    keep = y_pad != -100
    s = ncdask.EmbeddingStore.from_arrays(
        mem_url(), {"train": (X, y_pad)}, n_classes=K, ignore_index=-100, chunk_rows=17
    )
    want = dense_stats(X.astype(np.float32)[keep], y[keep], K)
    for st in (
        ncdask.class_stats(s, "train"),  # the store's default
        ncdask.class_stats(split(X.astype(np.float32), y_pad, chunks=13), n_classes=K,
                           ignore_index=-100),  # no store: counts from the labels
    ):
        assert st.attrs["ignore_index"] == -100
        assert int(st.n_samples) == keep.sum()
        assert_stats_equal(st, want, 1e-10)
    bad = ncdask.class_stats(split(X, y_pad, chunks=13), n_classes=K)
    with pytest.raises(ValueError, match="label -100 is outside"):
        bad.compute()


def test_measure_skips_ignored_labels_in_test_and_ood():
    X, y, W, b, Xt, yt, Xo, yo = small_case(7)
    K = 6
    ii = 250  # a positive ignore label: only ignore_index tells it apart
    yt2, yo2 = yt.copy(), yo.copy()
    yt2[:9] = ii
    yo2[:5] = ii
    stats = dense_stats(X, y, K)
    stats.attrs["ignore_index"] = ii
    res = measure(stats, weights=W, bias=b, test=split(Xt, yt2), ood=split(Xo, yo2),
                  metrics=["nc4_agree", "agree_per_class", "nc5_ood_dev", "nc1_ood_class"])
    assert res.attrs["ignore_index"] == ii
    ref = dense_metrics(X, y, K, W=W, b=b, X_test=Xt[9:], y_test=yt[9:], X_ood=Xo[5:],
                        y_ood=yo[5:])
    res = res.compute()
    assert float(res.nc4_agree) == pytest.approx(ref["nc4_agree"], rel=1e-12)
    np.testing.assert_allclose(res.agree_per_class.values, ref["agree_per_class"])
    assert float(res.nc5_ood_dev) == pytest.approx(ref["nc5_ood_dev"], rel=1e-12)
    want = dense_ood_class(X, y, Xo[5:], K)
    assert float(res.nc1_ood_class) == pytest.approx(want, rel=1e-9)
    with pytest.raises(ValueError, match="is a class index"):
        measure(stats, ignore_index=2)
