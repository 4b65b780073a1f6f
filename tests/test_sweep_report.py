"""What a sweep reports: its table fits the terminal, and each undefined metric warns once,
at the caller's line, with the reason that holds for every set."""

import json
import re
import warnings

import numpy as np
import pytest
from dense import class_data, split

import ncdask
from ncdask.cli import main
from ncdask.metrics.api import METRICS

K, D = 6, 5  # K - 1 < D fails: nc1_svd is undefined in every set
EPOCHS = list(range(0, 80, 10))


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    rng = np.random.default_rng(0)
    url = str(tmp_path_factory.mktemp("sweep") / "sweep.zarr")
    s = ncdask.EmbeddingStore.create(url, K, D)
    for e in EPOCHS:
        means = (1 + e / 10) * np.eye(K, D)
        for name, n in (("train", 60), ("test", 30)):
            s.append(name, *class_data(rng, means, n), epoch=e)
        s.set_classifier(means + 0.1 * rng.normal(size=(K, D)), epoch=e)
    return url


def _blocks(text):
    """Each block of a sweep table as (set names, {metric: (long name, values)})."""
    out = []
    for block in text.strip("\n").split("\n\n"):
        lines = block.split("\n")
        sep = next(i for i, ln in enumerate(lines) if ln.startswith("-"))
        spans = [m.span() for m in re.finditer(r"-+", lines[sep])]
        cells = [[ln[a:b].strip() for a, b in spans] for ln in lines]
        heads = [" ".join(c).strip() for c in zip(*cells[1:sep], strict=True)]
        rows = {}
        for name, long, *vals in cells[sep + 1:]:
            if name:
                rows[name] = [long, vals]
            else:  # a wrapped long name
                rows[list(rows)[-1]][0] += long
        out.append((heads[2:], rows))
    return out


@pytest.mark.parametrize("width", [60, 80, 200])
def test_sweep_table_has_a_row_per_metric_and_fits_the_width(url, width, monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", str(width))
    assert main(["analyze", url, "--sweep", "-q", "--json", str(url) + ".json"]) == 0
    text = capsys.readouterr().out
    assert max(map(len, text.splitlines())) <= width
    got = json.loads(open(str(url) + ".json").read())
    names = [k for k in got if k != "epoch" and METRICS[k].dims == ()]
    blocks = _blocks(text)
    assert len(blocks) > 1 if width < 200 else len(blocks) == 1
    assert [h for heads, _ in blocks for h in heads] == [str(e) for e in EPOCHS]  # every set
    col = 0
    for heads, rows in blocks:
        assert list(rows) == names  # metrics as rows, in every block
        for name, (long, vals) in rows.items():
            assert long.replace(" ", "") == METRICS[name].attrs["long_name"].replace(" ", "")
            want = [f"{v:.4g}" for v in got[name][col:col + len(heads)]]
            assert vals == want
        col += len(heads)


@pytest.fixture
def caught():
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        yield rec


def _only(rec, category):
    return [w for w in rec if issubclass(w.category, category)]


def test_undefined_metric_warns_once_at_the_callers_line(url, caught):
    res = ncdask.sweep(url, over="epoch", metrics=["nc1_svd", "nc1_quot"], compute=True)
    assert res.sizes["epoch"] == len(EPOCHS) and "nc1_svd" not in res
    (w,) = _only(caught, ncdask.DegenerateInputWarning)
    assert w.filename == __file__, (w.filename, w.lineno)
    text = str(w.message)
    assert "nc1_svd" in text and f"K={K}, D={D}" in text and "epoch" not in text
    caught.clear()
    ncdask.analyze(url, sweep=True, metrics=["nc1_svd", "nc1_quot"])
    (w,) = _only(caught, ncdask.DegenerateInputWarning)
    assert w.filename == __file__ and "epoch" not in str(w.message)
    caught.clear()
    st = ncdask.class_stats(ncdask.EmbeddingStore.open(url).split("train", epoch=10))
    ncdask.measure(st, metrics=["nc1_svd"])
    (w,) = _only(caught, ncdask.DegenerateInputWarning)
    assert w.filename == __file__


def test_a_reason_that_holds_for_some_sets_names_them(caught):
    rng = np.random.default_rng(1)
    s = ncdask.EmbeddingStore.create("memory://sweep-report-some", K, D, overwrite=True)
    s.append("train", *class_data(rng, np.eye(K, D), 60), epoch=1)
    s.append("train", *class_data(rng, np.eye(K, D), np.arange(50) % (K - 1)), epoch=2)
    ncdask.sweep(s, over="epoch", metrics=["nc1_svd"])  # epoch 2 measures K - 1 classes
    (w,) = _only(caught, ncdask.DegenerateInputWarning)
    assert w.filename == __file__
    assert str(w.message).endswith("at epoch=1") and "epoch=2" not in str(w.message)


@pytest.mark.parametrize("scheduler", ["threads", "sync"])
def test_a_warning_raised_in_dask_compute_names_the_callers_line(scheduler, caught):
    import dask

    rng = np.random.default_rng(2)
    st = ncdask.class_stats(split(*class_data(rng, np.eye(K, D), 60), K))
    lazy = ncdask.measure(st, metrics=["nc2g_riesz"], riesz_s=1e5)  # underflows
    with dask.config.set(scheduler=scheduler):
        lazy.compute()
    w = _only(caught, ncdask.RieszRangeWarning)
    assert w and {x.filename for x in w} == {__file__}


def test_cli_prints_an_undefined_metric_once(url, capsys):
    assert main(["analyze", url, "--sweep", "--metrics", "nc1_svd", "nc1_quot"]) == 0
    cap = capsys.readouterr()
    assert (cap.out + cap.err).count("nc1_svd") == 1
    (line,) = [ln for ln in cap.err.splitlines() if "nc1_svd" in ln]
    assert line.startswith("ncdask: warning:") and "epoch" not in line


def test_one_set_says_an_undefined_metric_once(url, capsys):
    assert main(["analyze", url, "--epoch", "0", "--metrics", "nc1_svd", "nc1_quot"]) == 0
    cap = capsys.readouterr()
    assert (cap.out + cap.err).count("nc1_svd") == 1
    assert "ncdask: warning: left out as undefined" in cap.err
