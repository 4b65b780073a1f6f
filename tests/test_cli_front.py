"""The CLI's front door: help texts, lazy start, --quiet, groups, errors, rm."""

import argparse
import json
import subprocess
import sys

import numpy as np
import pytest
from dense import class_data

import ncdask
from ncdask.cli import build_parser, main
from ncdask.metrics import GROUPS, METRICS

K, D = 3, 4


@pytest.fixture
def url(tmp_path):
    rng = np.random.default_rng(0)
    X, y = class_data(rng, 3 * np.eye(K, D), 90)
    return ncdask.EmbeddingStore.from_arrays(str(tmp_path / "s.zarr"), {"train": (X, y)}).url


def _subparsers(parser):
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            return a.choices
    raise AssertionError("no subcommands")


def test_every_option_has_help_with_its_default_and_every_command_an_example():
    parser = build_parser(full_help=True)
    subs = _subparsers(parser)
    assert set(subs) == {"demo", "import", "stats", "analyze", "rm", "check"}
    for name, sub in subs.items():
        text = sub.format_help()
        assert "example" in text and f"ncdask {name}" in text, name
        for a in sub._actions:
            if isinstance(a, argparse._HelpAction):
                continue
            assert a.help, (name, a.dest)
            if a.option_strings and a.default not in (None, False):
                assert "default" in sub._get_formatter()._get_help_string(a), (name, a.dest)
    an = subs["analyze"].format_help()
    for m in METRICS:
        assert m in an
    for g in ("nc1", "nc2", "nc2g", "nc2w", "nc3", "nc4", "nc5"):
        assert f"{g} = " in an


def test_help_does_not_import_dask():
    code = ("import sys, ncdask.cli as c, contextlib, io\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    c.main(['--help'])\n"
            "print(sorted(m for m in ('dask', 'xarray', 'zarr', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_quiet_hides_progress_not_results(url, capsys):
    assert main(["analyze", url, "--metrics", "nc1", "-q"]) == 0
    cap = capsys.readouterr()
    assert cap.err == ""
    assert "nc1_pinv" in cap.out and "nc2_etf_err" not in cap.out
    assert main(["stats", url, "-q"]) == 0
    cap = capsys.readouterr()
    assert cap.err == "" and "tr(Sigma_W)" in cap.out


def test_metric_groups_on_the_command_line(url, capsys):
    assert main(["analyze", url, "--metrics", "nc2", "nc1_quot", "--json", "-"]) == 0
    got = json.loads(capsys.readouterr().out)
    scalars = [n for n in GROUPS["nc2"] if not METRICS[n].per_class]
    assert list(got) == ["nc1_quot", *scalars]
    assert main(["analyze", url, "--metrics", "nc7"]) == 2
    assert "unknown metric 'nc7'" in capsys.readouterr().err


def test_empty_split_and_nothing_measured_are_errors(tmp_path, url, capsys):
    s = ncdask.EmbeddingStore.open(url, "a")
    with s.writer("test", dim=D) as w:
        w.append(np.zeros((0, D)), np.zeros(0, int))
    assert main(["analyze", url, "--train", "test"]) == 2
    assert "holds no rows" in capsys.readouterr().err
    # only metrics whose inputs are missing: nothing measured is an error, not "no metrics"
    assert main(["analyze", url, "--metrics", "nc4", "--test", "train"]) == 2
    err = capsys.readouterr().err
    assert "nothing was measured" in err and "nc4_agree" in err


def test_rm(url, capsys):
    s = ncdask.EmbeddingStore.open(url, "a")
    s.append("ood", np.ones((5, D)))
    assert main(["rm", url, "--split", "ood"]) == 0
    assert "5 rows" in capsys.readouterr().out
    assert ncdask.EmbeddingStore.open(url).splits() == ["train"]
    assert main(["rm", url, "--split", "ood"]) == 2
    assert "no split 'ood'" in capsys.readouterr().err
    assert main(["rm", url + "-typo", "--split", "train"]) == 2
    assert "no ncdask store" in capsys.readouterr().err
