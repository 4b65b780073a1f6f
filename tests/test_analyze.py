"""``ncdask.analyze``: the CLI's analyze as one Python call, and the errors of both front
ends (a bare split name, the wording of options, set selection)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr
from dense import class_data

import ncdask
from ncdask.cli import main
from ncdask.errors import FRONT_END

K, D = 4, 6


def _store(url, splits=("train", "test", "ood")):
    rng = np.random.default_rng(0)
    means = 3 * rng.normal(size=(K, D))
    data = {"train": class_data(rng, means, 200), "test": class_data(rng, means, 80),
            "ood": (rng.normal(size=(40, D)), np.arange(40) % 2)}
    W = means + 0.3 * rng.normal(size=(K, D))
    return ncdask.EmbeddingStore.from_arrays(url, {k: data[k] for k in splits}, W=W,
                                             b=0.1 * rng.normal(size=K))


@pytest.fixture
def url(tmp_path):
    return _store(str(tmp_path / "s.zarr")).url


@pytest.fixture
def sweep_url(tmp_path):
    rng = np.random.default_rng(1)
    s = ncdask.EmbeddingStore.create(str(tmp_path / "sweep.zarr"), K, D)
    means = 3 * rng.normal(size=(K, D))
    for e, noise in ((1, 2.0), (5, 0.5), (9, 0.1)):
        s.append("train", *class_data(rng, means, 120, noise=noise), epoch=e)
        s.append("test", *class_data(rng, means, 40, noise=noise), epoch=e)
        s.set_classifier(means, epoch=e)
    return s.url


def _cli_json(capsys, *argv):
    assert main(["analyze", *argv, "--json", "-", "-q"]) == 0
    return json.loads(capsys.readouterr().out)


def _same_scalars(got: dict, res: xr.Dataset):
    scalars = {n: v for n, v in res.data_vars.items()
               if not {"class", "margin_bin"} & set(v.dims)}  # a histogram is no scalar
    assert sorted(got) == sorted(scalars) or sorted(got) == sorted([*scalars, *res.dims])
    for n, v in scalars.items():
        np.testing.assert_allclose(np.asarray(got[n], float), v.values, rtol=1e-12, err_msg=n)


def test_analyze_equals_the_cli_and_measure_by_hand(url, capsys):
    res = ncdask.analyze(url)
    _same_scalars(_cli_json(capsys, url), res)
    s = ncdask.EmbeddingStore.open(url)
    W, b = s.classifier()
    ref = ncdask.measure(ncdask.class_stats(s, "train"), weights=W, bias=b,
                         test=(s, "test"), ood=(s, "ood")).compute()
    xr.testing.assert_allclose(res, ref)
    assert {"nc3_dual_err", "nc4_agree", "nc5_ood_dev"} <= set(res.data_vars)
    # the store object, no cache, weights given by hand, options passed through
    again = ncdask.analyze(s, cache=False, weights=(W, b), metrics="nc1", dist_exp=2.0,
                           ood=None)
    xr.testing.assert_allclose(again, ncdask.measure(
        ncdask.class_stats(s, "train"), metrics="nc1", dist_exp=2.0).compute())


def test_optional_splits_absent_present_and_none(tmp_path):
    s = _store(str(tmp_path / "t.zarr"), splits=("train",))
    alone = ncdask.analyze(s, metrics=["nc1_pinv", "nc4_agree", "nc5_ood_dev"])
    assert list(alone.data_vars) == ["nc1_pinv"]  # test and ood absent: left out quietly
    assert {"nc4_agree", "nc5_ood_dev"} <= set(alone.attrs["left_out"])
    full = _store(str(tmp_path / "f.zarr"))
    both = ncdask.analyze(full, metrics=["nc1_pinv", "nc4_agree", "nc5_ood_dev"])
    assert list(both.data_vars) == ["nc1_pinv", "nc4_agree", "nc5_ood_dev"]
    off = ncdask.analyze(full, metrics=["nc4_agree", "nc5_ood_dev"], test=None)
    assert list(off.data_vars) == ["nc5_ood_dev"]
    off = ncdask.analyze(full, metrics=["nc1_pinv", "nc4_agree", "nc5_ood_dev"], ood=None)
    assert list(off.data_vars) == ["nc1_pinv", "nc4_agree"]
    off = ncdask.analyze(full, metrics=["nc1_pinv", "nc4_agree"], weights=None)
    assert list(off.data_vars) == ["nc1_pinv"]  # NC4 needs the classifier
    # another split as test: the same numbers as measure on it
    other = ncdask.analyze(full, metrics=["nc4_agree"], test="train")
    W, b = full.classifier()
    ref = ncdask.measure(ncdask.class_stats(full, "train"), weights=W, bias=b,
                         test=(full, "train"), metrics=["nc4_agree"]).compute()
    xr.testing.assert_allclose(other, ref)


def test_a_named_split_that_is_missing_is_an_error_with_did_you_mean(url, capsys):
    for kw, name in (({"test": "tset"}, "test"), ({"ood": "odo"}, "ood"),
                     ({"train": "trian"}, "train")):
        with pytest.raises(KeyError, match=f"no split .*did you mean '{name}'"):
            ncdask.analyze(url, **kw)
    assert main(["analyze", url, "--test", "tset"]) == 2
    assert "did you mean 'test'?" in capsys.readouterr().err
    with pytest.raises(ValueError, match="nothing was measured"):
        ncdask.analyze(url, metrics="nc4", test=None)


def test_sweep_equals_the_cli(sweep_url, capsys):
    res = ncdask.analyze(sweep_url, sweep=True, metrics=["nc1_pinv", "nc4_agree"])
    assert res.epoch.values.tolist() == [1, 5, 9] and "nc4_agree" in res
    _same_scalars(_cli_json(capsys, sweep_url, "--sweep", "--metrics", "nc1_pinv",
                            "nc4_agree"), res)
    xr.testing.assert_allclose(res, ncdask.analyze(sweep_url, sweep="epoch",
                                                   metrics=["nc1_pinv", "nc4_agree"]))
    s = ncdask.EmbeddingStore.open(sweep_url)
    one = ncdask.analyze(s, epoch=5, metrics=["nc1_pinv"])
    np.testing.assert_allclose(float(one.nc1_pinv), res.nc1_pinv.values[1], rtol=1e-12)
    with pytest.raises(ValueError, match="stored classifier"):
        ncdask.analyze(s, sweep=True, weights=np.ones((K, D)))
    with pytest.raises(ValueError, match="do not pass epoch="):
        ncdask.analyze(s, sweep=True, epoch=5)


def test_out_is_written_and_refused_without_overwrite(url, tmp_path, capsys):
    out = str(tmp_path / "res.zarr")
    res = ncdask.analyze(url, metrics="nc1", out=out)
    xr.testing.assert_allclose(ncdask.open_results(out).compute(), res)
    with pytest.raises(FileExistsError, match="pass overwrite=True to replace") as e:
        ncdask.analyze(url, metrics="nc2", out=out)
    assert "--overwrite" not in str(e.value)
    assert list(ncdask.open_results(out).data_vars) == list(res.data_vars)  # untouched
    ncdask.analyze(url, metrics="nc2", out=out, overwrite=True)
    assert "nc2_etf_err" in ncdask.open_results(out)
    # the CLI words the same refusal with its flag
    assert main(["analyze", url, "--out", out, "-q"]) == 2
    err = capsys.readouterr().err
    assert "pass --overwrite to replace" in err and "overwrite=True" not in err
    assert FRONT_END.get() == "python"  # main resets the front end it set


# ------------------------------------------------------------------ the rows of errors


def test_measure_refuses_a_bare_split_name(url):
    stats = ncdask.class_stats(url, "train")
    for role in ("test", "ood"):
        with pytest.raises(TypeError, match=rf"{role}=\(store, '{role}'\).*ncdask.analyze"):
            ncdask.measure(stats, **{role: role})


def test_errors_use_the_words_of_the_front_end_called(tmp_path, url, capsys):
    npz = str(tmp_path / "x.npz")
    np.savez(npz, X=np.ones((3, D)))
    s = ncdask.EmbeddingStore.open(url, "a")
    with pytest.raises(KeyError, match="labels=False") as e:
        s.import_files("more", npz)
    assert "--no-labels" not in str(e.value)
    assert main(["import", npz, "--store", url, "--split", "more"]) == 2
    err = capsys.readouterr().err
    assert "--no-labels" in err and "labels=False" not in err
    # per-class metrics: where they were written, never "(in --out)" without --out
    assert main(["analyze", url, "--metrics", "nc1", "nc3"]) == 0
    text = capsys.readouterr().out
    assert "per-class (" in text and "in --out" not in text
    out = str(tmp_path / "r.zarr")
    assert main(["analyze", url, "--metrics", "nc1", "nc3", "--out", out]) == 0
    assert f"per-class (in {out})" in capsys.readouterr().out


def test_set_selection_lists_the_sets_and_suggests_sweep(sweep_url, tmp_path, capsys):
    assert main(["analyze", sweep_url]) == 2
    err = capsys.readouterr().err
    assert "--sweep" in err and "{'epoch': 5}" in err and "sweep=True" not in err
    with pytest.raises(KeyError, match=r"sweep=True") as e:
        ncdask.analyze(sweep_url)
    assert "--sweep" not in str(e.value) and "{'epoch': 9}" in str(e.value)
    s = ncdask.EmbeddingStore.create(str(tmp_path / "layers.zarr"), K, D)
    for layer in ("fc_in", "fc_out"):
        s.append("train", np.eye(K, D)[np.arange(20) % K], np.arange(20) % K, layer=layer,
                 epoch=3)
    with pytest.raises(KeyError, match=r"did you mean 'fc_in'\?.*'layer': 'fc_out'"):
        ncdask.analyze(s, layer="fc_inn", epoch=3)
    with pytest.raises(ValueError, match=r"did you mean 'fc_out'\?"):
        ncdask.analyze(s, layer="fc_ot", sweep="epoch")
    with pytest.raises(KeyError, match=r"did you mean 'train'\?"):
        s.split("trian", layer="fc_in", epoch=3)
    assert main(["analyze", s.url, "--layer", "fc_in", "--epoch", "7"]) == 2
    err = capsys.readouterr().err
    assert "splits there: []" not in err and "'layer': 'fc_out', 'epoch': 3" in err
