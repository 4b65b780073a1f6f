"""Degenerate data gives NaN, never a number that reads as collapse (issue 14)."""

import warnings

import numpy as np
import pytest
import zarr
from dense_metrics import class_data, raise_if_dask_computes, split

import ncdask


def _nc1(X, y, K, **append):
    s = ncdask.EmbeddingStore.create("memory://degenerate", K, X.shape[1], overwrite=True)
    s.append("train", X, y, **append)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = ncdask.measure(ncdask.class_stats(s, "train"), metrics=["nc1"]).compute()
    return {k: float(r[k]) for k in r.data_vars if r[k].ndim == 0}


@pytest.mark.parametrize("K,D", [(3, 8), (7, 8), (7, 4)], ids=["K<D", "K<D-7", "K>D"])
@pytest.mark.parametrize("value", [0.1, 1.7])
def test_identical_rows_are_not_perfect_collapse(K, D, value):
    y = np.arange(63) % K
    got = _nc1(np.full((63, D), value), y, K)
    assert "nc1_pinv" in got and all(np.isnan(v) for v in got.values()), got


def test_spread_rounded_away_by_float32_storage_is_nan():
    rng = np.random.default_rng(0)
    y = np.arange(60) % 3
    got = _nc1(1e6 + 1e-3 * rng.normal(size=(60, 8)), y, 3)  # float32: every row 1e6
    assert all(np.isnan(v) for v in got.values()), got


def test_nan_embeddings_give_nan_not_linalg_errors():
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(60, 8)), np.arange(60) % 3
    X[5, 1] = np.nan
    got = _nc1(X, y, 3, allow_nonfinite=True)
    assert all(np.isnan(v) for v in got.values()), got


def test_a_collapsed_but_separated_set_is_still_zero():
    """Σ_W = 0 with distinct class means is perfect collapse: 0, not NaN."""
    K = 4
    y = np.arange(40) % K
    got = _nc1(np.eye(K, 6)[y] * 3.0, y, K)
    assert got["nc1_pinv"] == 0.0 and got["nc1_quot"] == 0.0


def _chunk_files(root, array):
    return sorted(p for p in (root / array / "c").rglob("*") if p.is_file())


def test_damaged_chunks_are_errors_or_nan_never_plausible(tmp_path):
    """Verified reads: a missing labels, embeddings or classifier chunk is an error naming
    the split and rows (never NaN or fill labels read as data), garbled bytes fail their
    checksum."""
    rng = np.random.default_rng(0)
    K, D = 3, 4
    X, y = rng.normal(size=(90, D)), np.arange(90) % K
    W = rng.normal(size=(K, D))
    url = tmp_path / "s.zarr"
    ncdask.EmbeddingStore.from_arrays(str(url), {"train": (X, y)}, W, chunk_rows=30)
    s = ncdask.EmbeddingStore.open(str(url))
    split = url / "train"
    # a labels chunk deleted: the pass names the damage
    lab = _chunk_files(split, "labels")
    assert len(lab) == 3
    saved = lab[1].read_bytes()
    lab[1].unlink()
    with pytest.raises(ncdask.DamagedStoreError,
                       match=r"split 'train', train/labels rows 30-59 \(chunk 1\)"):
        ncdask.class_stats(s, "train").compute()
    lab[1].write_bytes(saved)
    # an embeddings chunk deleted: an error naming the split and its rows
    emb = _chunk_files(split, "embeddings")
    saved = emb[2].read_bytes()
    emb[2].unlink()
    with pytest.raises(ncdask.DamagedStoreError, match="train/embeddings rows 60-89"):
        s["train"].embeddings.values.sum()
    with pytest.raises(ncdask.store.NcdaskStoreError, match="split 'train'.*chunk is missing"):
        _nc1_of(s)
    # NaN written on purpose (allow_nonfinite) is data: NaN statistics, no error
    s2 = ncdask.EmbeddingStore.create(str(tmp_path / "n.zarr"), K, D)
    Xn = X.copy()
    Xn[5] = np.nan
    s2.append("train", Xn, y, allow_nonfinite=True)
    assert np.isnan(_nc1_of(s2)["nc1_pinv"])
    # garbled bytes inside a chunk: the checksum fails on read
    bad = bytearray(saved)
    bad[len(bad) // 2] ^= 0xFF
    emb[2].write_bytes(bytes(bad))
    with pytest.raises(Exception, match="(?i)checksum|crc"):
        s["train"].embeddings.values.sum()  # the read that fails
    # the classifier: a missing chunk is an error, not zeros or NaN
    current = zarr.open_group(str(url), mode="r").attrs["ncdask_classifier"]
    wc = _chunk_files(url / current, "W")
    wc[0].unlink()
    with pytest.raises(ncdask.DamagedStoreError, match="/W rows 0-2 .chunk 0.: the chunk"):
        s.classifier()


def _nc1_of(s):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = ncdask.measure(ncdask.class_stats(s, "train"), metrics=["nc1"]).compute()
    return {k: float(r[k]) for k in r.data_vars if r[k].ndim == 0}


def _nc4_case(K=4, D=6, n=80):
    rng = np.random.default_rng(3)
    X, y = class_data(rng, 3 * np.eye(K, D), n, noise=0.3)
    s = ncdask.EmbeddingStore.from_arrays("memory://nc4-degenerate", {"train": (X, y)},
                                          overwrite=True)
    return s, np.eye(K, D) * 3.0


@pytest.mark.parametrize("W_kind", ["nan", "inf", "zero"])
def test_a_dead_classifier_gives_nan_agreement(W_kind):
    s, W = _nc4_case()
    W = {"nan": np.where(W > 0, np.nan, W), "inf": np.where(W > 0, np.inf, W),
         "zero": 0 * W}[W_kind]
    r = ncdask.measure(ncdask.class_stats(s, "train"), weights=W, test=(s, "train"),
                       metrics=["nc4_agree"]).compute()
    assert np.isnan(float(r.nc4_agree))
    good = ncdask.measure(ncdask.class_stats(s, "train"), weights=np.eye(4, 6) * 3.0,
                          test=(s, "train"), metrics=["nc4_agree"]).compute()
    assert float(good.nc4_agree) == 1.0


def test_test_labels_of_other_classes_are_refused():
    s, W = _nc4_case()
    rng = np.random.default_rng(4)
    other = ncdask.EmbeddingStore.create("memory://nc4-k6", 6, 6, overwrite=True)
    other.append("test", rng.normal(size=(30, 6)), np.arange(30) % 6)
    st = ncdask.class_stats(s, "train")
    with pytest.raises(ValueError, match="n_classes=6"):
        ncdask.measure(st, weights=W, test=(other, "test"), metrics=["nc4_agree"]).compute()
    ds = other["test"].copy()
    ds.attrs = {}  # no attrs to compare: the labels themselves are checked
    with pytest.raises(ValueError, match="outside the statistics' 4 classes"):
        ncdask.measure(st, weights=W, test=ds, metrics=["nc4_agree"]).compute()


@pytest.mark.parametrize("edit, value", [
    ("n_committed", -5), ("n_committed", 1_000_000), ("n_committed", "120"),
    ("n_committed", 1.5), ("class_counts", [50, 50, 50]), ("class_counts", [200, -40, 0, 0]),
])
def test_hand_edited_commit_records_are_errors(tmp_path, edit, value):
    rng = np.random.default_rng(0)
    url = str(tmp_path / "s.zarr")
    s = ncdask.EmbeddingStore.create(url, 4, 3)
    s.append("train", rng.normal(size=(160, 3)), np.arange(160) % 4)
    g = zarr.open_group(url, mode="r+")["train"]
    rec = dict(g.attrs["ncdask_split"])
    rec[edit] = value
    g.attrs["ncdask_split"] = rec
    with pytest.raises(ncdask.DamagedStoreError, match="commit record of 'train'"):
        ncdask.EmbeddingStore.open(url).split("train")
    with pytest.raises(ncdask.DamagedStoreError):
        ncdask.class_stats(ncdask.EmbeddingStore.open(url), "train")


def test_an_ood_split_of_another_width_is_refused_before_any_compute():

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(60, 4)), np.arange(60) % 3
    st = ncdask.class_stats(split(X, y, 3, chunks=None))
    ood = split(rng.normal(size=(10, 6)), chunks=None)
    with raise_if_dask_computes():
        for metric in ("nc5_ood_dev", "nc1_ood_class"):
            with pytest.raises(ValueError, match=r"OOD embeddings have shape \(10, 6\)"):
                ncdask.measure(st, ood=ood, metrics=[metric])




_WITHIN = ("nc1_pinv", "nc1_svd", "nc1_quot", "nc1_cdnv", "erank_within")


def _lone(n_per_class, K=6, D=8, seed=0):
    """A split of pure noise with ``n_per_class[k]`` samples in class k."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(K), n_per_class)
    return rng.normal(size=(len(y), D)), y


def test_one_sample_per_class_is_nan_not_perfect_collapse():
    X, y = _lone([1] * 6)
    with pytest.warns(ncdask.DegenerateInputWarning, match="every one of the 6 classes .* one "
                      "sample: the within-class covariance is unestimable") as rec:
        r = ncdask.measure(ncdask.class_stats(split(X, y, 6)),
                           metrics=[*_WITHIN, "nc2_etf_err"]).compute()
    assert all(np.isnan(float(r[k])) for k in _WITHIN), {k: float(r[k]) for k in _WITHIN}
    assert np.isfinite(float(r.nc2_etf_err))  # the means are still measured
    assert len(rec) == 1
    # a sweep warns once; a reason that holds for every item names none
    st = ncdask.class_stats(split(X, y, 6))
    with pytest.warns(ncdask.DegenerateInputWarning, match="every one of the 6") as rec:
        ncdask.measure([st, st], metrics="nc1_quot")
    assert len(rec) == 1 and "epoch" not in str(rec[0].message)


def test_some_one_sample_classes_are_counted_and_values_stay_finite():
    X, y = _lone([1, 5, 1, 4, 6, 1])
    with pytest.warns(ncdask.DegenerateInputWarning, match="3 of the 6 classes measured have "
                      "one sample") as rec:
        r = ncdask.measure(ncdask.class_stats(split(X, y, 6)), metrics=list(_WITHIN)).compute()
    assert len(rec) == 1
    assert all(np.isfinite(float(r[k])) and float(r[k]) > 0 for k in _WITHIN)
    with warnings.catch_warnings():  # no class of one sample: no warning
        warnings.simplefilter("error")
        ncdask.measure(ncdask.class_stats(split(*_lone([2, 5, 3, 4, 6, 2]), 6)),
                       metrics=list(_WITHIN)).compute()
        ncdask.measure(ncdask.class_stats(split(X, y, 6)), metrics="nc2_etf_err")  # no Σ_W


def test_a_bin_of_one_sample_classes_is_nan_the_others_finite():
    X, y = _lone([6, 1, 5, 1, 4, 1])
    freq = ["nc1_cdnv_by_frequency", "nc1_quot_by_frequency", "nc1_pinv_by_frequency"]
    with pytest.warns(ncdask.DegenerateInputWarning, match="3 of the 6 classes"):
        r = ncdask.measure(ncdask.class_stats(split(X, y, 6)), metrics=freq, by_frequency=2,
                           train=split(X, y, 6)).compute()
    for k in freq:  # bins: the three classes with 4-6 samples, then the three with one
        head, tail = r[k].values
        assert np.isfinite(head) and head > 0 and np.isnan(tail), (k, r[k].values)


@pytest.mark.parametrize("counts", [[1] * 6, [1, 5, 1, 4, 6, 1], [2, 5, 3, 4, 6, 2]],
                         ids=["all-one", "some-one", "none-one"])
def test_cli_analyze_one_sample_classes(tmp_path, capsys, counts):
    import json

    from ncdask.cli import main

    X, y = _lone(counts)
    url = str(tmp_path / "s.zarr")
    ncdask.EmbeddingStore.from_arrays(url, {"train": (X, y)})
    assert main(["analyze", url, "--metrics", "nc1_pinv", "nc1_quot", "nc1_cdnv",
                 "--json", "-", "-q"]) == 0
    cap = capsys.readouterr()
    got = json.loads(cap.out)
    lone = counts.count(1)
    if lone == len(counts):
        assert got == {"nc1_pinv": None, "nc1_quot": None, "nc1_cdnv": None}
        assert "ncdask: warning: every one of the 6 classes" in cap.err
    else:
        assert all(v is not None and v > 0 for v in got.values())
        assert (f"ncdask: warning: {lone} of the 6 classes" in cap.err) == (lone > 0)
        assert ("one sample" in cap.err) == (lone > 0)
