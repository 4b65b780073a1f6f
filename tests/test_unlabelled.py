"""Unlabelled splits (out-of-distribution data): store, import, capture, measure, NECO."""

import numpy as np
import pytest
from dense import class_data

import ncdask
from ncdask.cli import main

K, D = 4, 6


def _id_store(url, n=400, seed=0):
    rng = np.random.default_rng(seed)
    X, y = class_data(rng, 4 * np.eye(K, D), n)
    W, b = rng.normal(size=(K, D)), rng.normal(size=K)
    return ncdask.EmbeddingStore.from_arrays(url, {"train": (X, y)}, W, b, chunk_rows=64)


def test_append_and_writer_without_labels(mem_url):
    s = _id_store(mem_url())
    rng = np.random.default_rng(1)
    Xo = rng.normal(size=(150, D)) - 3
    assert s.append("ood", Xo[:100]) == 100
    with s.writer("ood", labelled=False) as w:
        w.append(Xo[100:])
    ds = s.split("ood")
    assert "labels" not in ds and ds.attrs["labelled"] == 0
    np.testing.assert_allclose(ds.embeddings.values, Xo.astype(np.float32))
    assert "ood" in s.splits() and s.n_rows("ood") == 150
    # labelled and unlabelled batches do not mix, in either direction
    with pytest.raises(ValueError, match="unlabelled"):
        s.append("ood", Xo[:3], np.zeros(3, int))
    with pytest.raises(ValueError, match="labelled"):
        s.append("train", Xo[:3])
    with pytest.raises(ValueError, match="labelled"):
        with s.writer("ood") as w:
            w.append(Xo[:3], np.zeros(3, int))
    assert s.n_rows("ood") == 150
    # class statistics need labels, and say so
    with pytest.raises(ValueError, match="has no labels"):
        ncdask.class_stats(s, "ood")


def test_out_of_range_labels_hint_at_unlabelled_splits(mem_url):
    s = _id_store(mem_url())
    with pytest.raises(ValueError, match=r"label -1 is outside \[0, 4\).*y=None"):
        s.append("ood", np.zeros((3, D)), np.full(3, -1))
    assert "ood" not in s.splits()


def test_measure_and_neco_on_an_unlabelled_split_equal_the_labels_ignored(mem_url):
    s = _id_store(mem_url())
    rng = np.random.default_rng(2)
    Xo = rng.normal(size=(90, D)) + 1.5
    s.append("ood", Xo)
    s.append("ood_lab", Xo, rng.integers(0, K, 90))  # same rows, labels to be ignored
    st = ncdask.class_stats(s, "train")
    W, b = s.classifier()
    got = ncdask.measure(st, weights=W, bias=b, ood=(s, "ood"),
                         metrics=["nc5", "nc1_ood_class"]).compute()
    ref = ncdask.measure(st, weights=W, bias=b, ood=(s, "ood_lab"), ood_labels=False,
                         metrics=["nc5", "nc1_ood_class"]).compute()
    for k in ("nc5_ood_dev", "nc1_ood_class"):
        assert np.isfinite(float(got[k]))
        np.testing.assert_allclose(float(got[k]), float(ref[k]), rtol=1e-12)
    # NC5 by hand: uncentred class means against the plain OOD mean
    M = st.means.values
    mu = Xo.astype(np.float32).astype(np.float64).mean(0)
    cos = M @ mu / (np.linalg.norm(M, axis=1) * np.linalg.norm(mu))
    np.testing.assert_allclose(float(got.nc5_ood_dev), np.abs(cos).mean(), rtol=1e-9)
    # NECO scores of unlabelled samples
    sc = ncdask.neco_scores(st, (s, "ood"), n_components=2).compute()
    sc_lab = ncdask.neco_scores(st, (s, "ood_lab"), n_components=2).compute()
    assert sc.sizes["sample"] == 90
    np.testing.assert_allclose(sc.values, sc_lab.values, rtol=1e-12)


def test_import_no_labels(tmp_path, capsys):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(120, D)).astype(np.float32)
    y = np.arange(120) % K
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    np.savez(tmp_path / "ood.npz", X=X[:50] + 5)
    np.save(tmp_path / "ood.npy", X[50:] - 5)
    url = str(tmp_path / "s.zarr")
    assert main(["import", str(tmp_path / "X.npy"), str(tmp_path / "y.npy"), "--store", url,
                 "--split", "train", "-q"]) == 0
    # an .npz without labels is refused with the fix named, and nothing is written
    assert main(["import", str(tmp_path / "ood.npz"), "--store", url, "--split", "ood"]) == 2
    assert "--no-labels" in capsys.readouterr().err
    assert ncdask.EmbeddingStore.open(url).splits() == ["train"]
    assert main(["import", str(tmp_path / "ood.npz"), str(tmp_path / "ood.npy"), "--no-labels",
                 "--store", url, "--split", "ood", "-q"]) == 0
    s = ncdask.EmbeddingStore.open(url)
    ds = s.split("ood")
    assert "labels" not in ds
    np.testing.assert_array_equal(ds.embeddings.values,
                                  np.concatenate([X[:50] + 5, X[50:] - 5]))
    capsys.readouterr()
    assert main(["analyze", url, "--metrics", "nc5", "--json", "-"]) == 0
    assert "nc5_ood_dev" in capsys.readouterr().out


def test_capture_unlabelled(mem_url):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, D), torch.nn.ReLU(), torch.nn.Linear(D, K))
    s = ncdask.EmbeddingStore.create(mem_url(), K, D, chunk_rows=16)
    x = torch.randn(40, 3)
    loader = [x[i:i + 8] for i in range(0, 40, 8)]  # batches of x alone
    out = ncdask.capture(model, loader, s, "ood", layers={"h": "2"}, labels=False)
    assert out[0]["rows"] == 40
    ds = s.split("ood", layer="h")
    assert "labels" not in ds
    with torch.no_grad():
        ref = model[1](model[0](x)).numpy()
    np.testing.assert_allclose(ds.embeddings.values, ref, rtol=1e-6)
    with pytest.raises(TypeError, match="labels=False"):
        ncdask.capture(model, loader, s, "ood2", layers={"h": "2"})


def test_torch_bfloat16_batches(mem_url):
    """bfloat16 hidden states (LLMs): widened exactly to float32, then the store's dtype."""
    torch = pytest.importorskip("torch")
    g = torch.Generator().manual_seed(0)
    X = (torch.randn(50, D, generator=g) * 3).to(torch.bfloat16)
    y = torch.arange(50) % K
    s32 = ncdask.EmbeddingStore.create(mem_url(), K, D)
    s32.append("train", X, y)
    np.testing.assert_array_equal(s32.split("train").embeddings.values, X.float().numpy())
    s16 = ncdask.EmbeddingStore.create(mem_url(), K, D, dtype="float16")
    with s16.writer("train") as w:
        w.append(X, y)
    got = s16.split("train").embeddings.values
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got, X.float().numpy().astype(np.float16))
    big = torch.full((2, D), 1e5).to(torch.bfloat16)  # finite in bfloat16, inf in float16
    with pytest.raises(ValueError, match="NaN or inf.*float16"):
        s16.append("train", big, torch.zeros(2, dtype=torch.long))
    assert s16.n_rows("train") == 50
