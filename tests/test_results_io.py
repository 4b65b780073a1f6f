"""Results and statistics keep their labels and SPEC order, and reopen quietly."""

import warnings

import numpy as np
import pytest
import xarray as xr
from dense import class_data, split

import ncdask
from ncdask.metrics import GROUPS, METRICS, label_results, measure

K, D = 4, 6


def _stats(seed):
    rng = np.random.default_rng(seed)
    X, y = class_data(rng, (2 + seed) * np.eye(K, D), 240)
    return ncdask.class_stats(split(X, y, K, chunks=64))


def _labelled(var):
    info = METRICS[var.name]
    return (var.attrs.get("long_name") == info.long_name
            and var.attrs.get("formula") == info.formula
            and var.attrs.get("reference") == info.reference)


@pytest.mark.parametrize("form", ["list", "dict", "stacked"])
def test_sweeps_keep_every_label_and_the_spec_order(form):
    st = [_stats(s) for s in range(3)]
    if form == "list":
        arg = st
    elif form == "dict":
        arg = dict(zip((0, 5, 10), st, strict=True))
    else:
        arg = xr.concat([s.compute() for s in st], dim="epoch")
    res = measure(arg, metrics=["nc2", "nc1_quot", "nc2g_dist"]).compute()
    assert list(res.data_vars) == [n for n in METRICS if n in res.data_vars]
    assert list(res.data_vars)[0] == "nc1_quot"
    assert all(_labelled(res[n]) for n in res.data_vars)


def test_selection_order_does_not_depend_on_how_it_is_asked():
    st = _stats(0)
    a = measure(st, metrics=["nc2_etf_err", "nc1_quot", "mean_norms"])
    b = measure(st, metrics=["mean_norms", "nc1_quot", "nc2_etf_err"])
    assert list(a.data_vars) == list(b.data_vars) == ["nc1_quot", "nc2_etf_err", "mean_norms"]


def test_groups_cover_every_metric_and_name_only_metrics():
    for g in ("nc1", "nc2", "nc2g", "nc2w", "nc3", "nc4", "nc5"):
        assert g in GROUPS and set(GROUPS[g]) <= set(METRICS)
    assert set().union(*GROUPS.values()) == set(METRICS)  # every metric is in some group
    res = measure(_stats(0), metrics="nc1")
    assert set(res.data_vars) == {"nc1_pinv", "nc1_svd", "nc1_quot", "nc1_cdnv"}
    assert "nc1_ood_class" in res.attrs["left_out"]
    with pytest.raises(ValueError, match="unknown metric 'nc9'"):
        measure(_stats(0), metrics="nc9")


def test_results_and_stats_reopen_quietly_in_order_with_labels(tmp_path):
    st = [_stats(s) for s in range(2)]
    res = measure(st, metrics=["nc2", "nc1"], labels=[1, 2]).compute()
    url = str(tmp_path / "results.zarr")
    surl = str(tmp_path / "stats.zarr")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ncdask.save_results(res, url)
        ncdask.save_stats(st[0].compute(), surl)
        plain = xr.open_zarr(url)  # the user's own call: no RuntimeWarning
        xr.open_zarr(surl)
        back = ncdask.open_results(url)
        stats_back = ncdask.load_stats(surl)
    assert set(plain.data_vars) == set(res.data_vars)
    assert all(_labelled(plain[n]) for n in plain.data_vars)
    assert list(back.data_vars) == list(res.data_vars)
    xr.testing.assert_allclose(back.compute(), res)
    assert list(stats_back.data_vars) == list(st[0].data_vars)
    assert "ncdask_variables" not in back.attrs


def test_label_results_keeps_other_variables_after_the_metrics():
    ds = xr.Dataset({"train_acc": ("epoch", [0.5]), "nc2_etf_err": ("epoch", [0.1]),
                     "nc1_pinv": ("epoch", [1.0])}, attrs={"x": 1})
    out = label_results(ds)
    assert list(out.data_vars) == ["nc1_pinv", "nc2_etf_err", "train_acc"]
    assert out.attrs == {"x": 1} and _labelled(out.nc1_pinv)


def test_sweep_results_keep_labels(mem_url):
    s = ncdask.EmbeddingStore.create(mem_url(), 3, 4)
    y = np.arange(60) % 3
    rng = np.random.default_rng(0)
    for e in (0, 5):
        s.append("train", np.eye(3, 4)[y] * (1 + e) + rng.normal(size=(60, 4)), y, epoch=e)
    res = ncdask.sweep(s, over="epoch", metrics=["nc1", "nc2_etf_err"], compute=True)
    assert list(res.data_vars) == ["nc1_pinv", "nc1_svd", "nc1_quot", "nc1_cdnv",
                                   "nc2_etf_err"]
    assert all(_labelled(res[n]) for n in res.data_vars)


def test_outputs_never_replace_what_ncdask_did_not_write(tmp_path, mem_url):
    st = _stats(0).compute()
    res = measure(st, metrics=["nc1_quot"]).compute()
    # a folder of the user's
    user = tmp_path / "mine"
    (user / "sub").mkdir(parents=True)
    (user / "notes.txt").write_text("only copy")
    (user / "sub" / "X.npy").write_bytes(b"data")
    with pytest.raises(FileExistsError, match="not a Zarr store that ncdask wrote"):
        ncdask.save_stats(st, str(user))
    assert (user / "notes.txt").read_text() == "only copy"
    assert (user / "sub" / "X.npy").read_bytes() == b"data"
    # an embedding store (the typo `--out emb.zarr`)
    s = ncdask.EmbeddingStore.create(str(tmp_path / "emb.zarr"), K, D)
    s.append("train", np.ones((3, D)), np.zeros(3, int))
    with pytest.raises(FileExistsError, match="embedding store"):
        ncdask.save_results(res, s.url)
    assert ncdask.EmbeddingStore.open(s.url).n_rows("train") == 3
    # results over statistics and back: another kind of output is refused too
    ncdask.save_stats(st, str(tmp_path / "stats.zarr"))
    with pytest.raises(FileExistsError, match="holds ncdask stats"):
        ncdask.save_results(res, str(tmp_path / "stats.zarr"))
    # the same kind is replaced only when asked, and nothing is left beside it
    ncdask.save_results(res, str(tmp_path / "r.zarr"))
    with pytest.raises(FileExistsError, match="overwrite=True"):
        ncdask.save_results(res * 2, str(tmp_path / "r.zarr"))
    assert float(ncdask.open_results(str(tmp_path / "r.zarr")).nc1_quot) == float(res.nc1_quot)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        ncdask.save_stats(st, str(tmp_path / "stats.zarr"))
    with pytest.raises(FileExistsError, match="embedding store"):
        ncdask.save_stats(st, s.url, overwrite=True)  # overwrite never reaches other kinds
    ncdask.save_results(res * 2, str(tmp_path / "r.zarr"), overwrite=True)
    assert float(ncdask.open_results(str(tmp_path / "r.zarr")).nc1_quot) == 2 * float(
        res.nc1_quot)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "emb.zarr", "mine", "r.zarr", "stats.zarr"]


def test_save_stats_onto_the_store_it_reads(tmp_path, mem_url):
    st = _stats(1).compute()
    for url in (str(tmp_path / "s.zarr"), mem_url("stats")):
        ncdask.save_stats(st, url)
        # lazy reads from url itself
        ncdask.save_stats(ncdask.load_stats(url), url, overwrite=True)
        back = ncdask.load_stats(url).compute()
        xr.testing.assert_allclose(back[list(st.data_vars)], st)


def test_cli_out_refuses_a_typo_onto_the_store(tmp_path, capsys):
    from ncdask.cli import main

    train = (np.random.default_rng(0).normal(size=(40, D)), np.arange(40) % K)
    s = ncdask.EmbeddingStore.from_arrays(str(tmp_path / "emb.zarr"), {"train": train})
    for cmd in (["stats", s.url, "--out", s.url], ["analyze", s.url, "--out", s.url]):
        assert main([*cmd, "-q"]) == 2
        assert "embedding store" in capsys.readouterr().err
    assert ncdask.EmbeddingStore.open(s.url).n_rows("train") == 40


def test_cli_out_replaces_its_own_kind_only_with_overwrite(tmp_path, capsys):
    from ncdask.cli import main

    train = (np.random.default_rng(0).normal(size=(40, D)), np.arange(40) % K)
    s = ncdask.EmbeddingStore.from_arrays(str(tmp_path / "emb.zarr"), {"train": train})
    for cmd, out in ((["stats", s.url], "st.zarr"), (["analyze", s.url], "res.zarr")):
        target = str(tmp_path / out)
        assert main([*cmd, "--out", target, "-q"]) == 0
        assert main([*cmd, "--out", target, "-q"]) == 2
        assert "--overwrite" in capsys.readouterr().err
        assert main([*cmd, "--out", target, "--overwrite", "-q"]) == 0
    assert ncdask.load_stats(str(tmp_path / "st.zarr")).sizes["class"] == K


@pytest.mark.parametrize("meanwhile", ["results", "user folder"])
def test_what_appears_at_the_path_during_a_write_is_kept(tmp_path, monkeypatch, meanwhile):
    """Two `analyze --out` at once, or a folder made while results are written: the path is
    checked again before the swap, so the later writer refuses instead of replacing it."""
    from ncdask.store import zarrio

    res = measure(_stats(0), metrics=["nc1"]).compute()
    target = tmp_path / "r.zarr"
    seal = zarrio._seal

    def other_writer_first(*args, **kwargs):
        seal(*args, **kwargs)
        monkeypatch.setattr(zarrio, "_seal", seal)  # the other writer seals normally
        if meanwhile == "results":
            ncdask.save_results(res, str(target))
        else:
            target.mkdir()
            (target / "mine.txt").write_text("only copy")

    monkeypatch.setattr(zarrio, "_seal", other_writer_first)
    with pytest.raises(FileExistsError):
        ncdask.save_results(res, str(target))
    if meanwhile == "results":
        assert float(ncdask.open_results(str(target)).nc1_pinv) == float(res.nc1_pinv)
    else:
        assert (target / "mine.txt").read_text() == "only copy"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.zarr"]  # no staging left
