"""Ctrl-C and logs: SIGINT to a real ``ncdask import`` / ``ncdask analyze --out`` removes
what the command staged and says in one line what was committed (exit 130); progress writes
no ``\\r`` where stderr is no terminal; ``-q`` still says where outputs went."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import dask
import numpy as np
import pytest

import ncdask
from ncdask import scheduler
from ncdask.cli import main
from ncdask.results import open_results

CLI = "import sys; from ncdask.cli import main; sys.exit(main())"


def _listing(root: Path) -> list[str]:
    """Every file under ``root`` (split locks aside: flock files, made once per split)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.is_file() and "locks" not in p.parts)


def _interrupt(args: list[str], ready, timeout: float = 120.0) -> tuple[int, str]:
    """Run ``ncdask *args`` in its own process; SIGINT it once ``ready()`` holds."""
    from killing import python

    p = python(CLI, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            assert p.poll() is None, p.communicate()
            assert time.monotonic() < deadline, "the command never got going"
            time.sleep(0.002)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
    finally:
        p.kill()
    return p.returncode, err


def _files(tmp_path: Path, n: int, rows: int, D: int = 64) -> list[str]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        np.save(x := tmp_path / f"X{i}.npy", rng.standard_normal((rows, D), dtype=np.float32))
        np.save(y := tmp_path / f"y{i}.npy", rng.integers(0, 10, rows))
        out += [str(x), str(y)]
    return out


@pytest.fixture
def store(tmp_path):
    """A store that an earlier import wrote to (its own folders exist)."""
    url = tmp_path / "s.zarr"
    X = np.random.default_rng(1).standard_normal((500, 64), dtype=np.float32)
    np.save(tmp_path / "a.npy", X)
    np.save(tmp_path / "b.npy", np.arange(500) % 10)
    assert main(["import", str(tmp_path / "a.npy"), str(tmp_path / "b.npy"), "--store",
                 str(url), "--split", "test", "--n-classes", "10", "-q"]) == 0
    return url


def test_ctrl_c_in_a_staged_import_commits_nothing_and_leaves_nothing(store, tmp_path):
    """SIGINT while the first file is written into its staging folder: that folder and the
    lease go, the store's files are as before, one line on stderr, exit status 130."""
    files = _files(tmp_path, 1, 300_000)
    before = _listing(store)
    code, err = _interrupt(["import", *files, "--store", str(store), "--split", "train"],
                           lambda: any(store.glob(".import-train-*/embeddings/c")))
    assert (code, err) == (130, "ncdask: interrupted: nothing was committed\n")
    assert _listing(store) == before
    assert ncdask.EmbeddingStore.open(str(store)).splits() == ["test"]


def test_ctrl_c_in_a_multi_file_import_says_how_many_files_are_in(store, tmp_path):
    """SIGINT once the first of four files is committed: the committed files stay, the one
    being appended is cut back, and the same command run again continues."""
    files = _files(tmp_path, 4, 100_000)
    args = ["import", *files, "--store", str(store), "--split", "train"]
    code, err = _interrupt([*args, "-q"], lambda: (store / "train" / "zarr.json").exists())
    m = re.fullmatch(r"ncdask: interrupted: the first (file was|(\d) files were) committed; "
                     r"run the same command to continue\n", err)
    assert code == 130 and m, err
    n = int(m.group(2) or 1)
    assert n < 4
    s = ncdask.EmbeddingStore.open(str(store))
    assert s.n_rows("train") == n * 100_000
    assert [x["embeddings"] for x in s.sources("train")] == files[0:2 * n:2]
    assert not [p for p in store.rglob("*") if ".import-" in p.name]
    assert not [p for p in (store / ".ncdask" / "leases").iterdir() if p.is_dir()]
    assert main(args) == 0
    assert ncdask.EmbeddingStore.open(str(store)).n_rows("train") == 400_000


def test_ctrl_c_while_analyze_writes_its_output(tmp_path):
    """SIGINT while ``analyze --out`` writes the results beside their path: no staging and no
    lease left beside it, the store untouched, one line, 130; no output, or (where the
    signal came after the output's commit) a whole one that the line names."""
    K, D, n = 1500, 32, 6
    rng = np.random.default_rng(2)
    y = np.repeat(np.arange(K), n)
    url = str(tmp_path / "e.zarr")
    ncdask.EmbeddingStore.from_arrays(
        url, {"train": (rng.standard_normal((K * n, D), dtype=np.float32), y)},
        W=rng.standard_normal((K, D)))
    before = _listing(Path(url))
    out = tmp_path / "r.zarr"
    code, err = _interrupt(
        ["analyze", url, "--out", str(out), "--no-cache", "-q", "--metrics", "nc1_pinv",
         "similarities", "similarities_cos"],
        lambda: any(tmp_path.glob("r.zarr.ncdask-tmp-*/similarities/c")))
    assert code == 130
    if err == f"ncdask: interrupted: {out} was written, the rest was not done\n":
        assert open_results(str(out)).similarities.shape == (K, K)  # pragma: no cover
    else:
        assert err == "ncdask: interrupted: nothing was committed\n"
        assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "r.zarr") == ["e.zarr"]
    assert _listing(Path(url)) == before


def test_debug_shows_the_traceback(monkeypatch, capsys, tmp_path):
    """--debug (before or after the command) prints the traceback an error hides."""
    for argv in (["--debug", "rm", str(tmp_path / "none.zarr"), "--split", "x"],
                 ["rm", str(tmp_path / "none.zarr"), "--split", "x", "--debug"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "Traceback" in err and err.endswith(f"ncdask: error: no ncdask store at "
                                                   f"'{tmp_path / 'none.zarr'}'\n")
    assert main(["rm", str(tmp_path / "none.zarr"), "--split", "x"]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_progress_in_a_log_is_plain_lines(monkeypatch, capsys):
    """stderr no terminal (a log, a pipe): no bar, no ``\\r``; a plain line at most every
    EVERY_S seconds."""
    monkeypatch.setattr(scheduler, "EVERY_S", 0.05)
    tasks = [dask.delayed(time.sleep)(0.02) for _ in range(20)]
    with scheduler.use_scheduler("sync") as run:  # one task at a time: 0.4 s in all
        run.compute(dask.delayed(len)(tasks), label="sleeping ...")
    err = capsys.readouterr().err
    assert "\r" not in err and "[#" not in err
    lines = err.splitlines()
    assert lines[0] == "sleeping ..." and len(lines) > 2
    assert all(re.fullmatch(r"  \d+% of 21 tasks done \(\d+ s\)", ln) for ln in lines[1:])


def test_quiet_still_says_where_outputs_went(tmp_path, capsys):
    url, out = str(tmp_path / "e.zarr"), tmp_path / "st.zarr"
    rng = np.random.default_rng(3)
    ncdask.EmbeddingStore.from_arrays(url, {"train": (rng.standard_normal((60, 4)),
                                                      np.arange(60) % 3)})
    assert main(["stats", url, "--out", str(out), "-q"]) == 0
    assert capsys.readouterr().err == f"wrote {out}\n"
    assert main(["analyze", url, "--out", str(tmp_path / "r.zarr"), "-q", "--metrics",
                 "nc1"]) == 0
    assert capsys.readouterr().err == f"wrote {tmp_path / 'r.zarr'}\n"
    assert os.path.isdir(tmp_path / "r.zarr")


def test_python_callers_get_keyboard_interrupt_and_no_staging(store, tmp_path, monkeypatch):
    """An interrupt as the staged split's arrays are made (outside the write's own cleanup):
    the caller gets KeyboardInterrupt, the staging folder is gone at once, and what the
    lease keeps listed (for writes still in flight) is released by the next writer."""
    from ncdask.store.core import Core

    files = _files(tmp_path, 1, 1000)
    made = Core.split_arrays

    def interrupted(self, *a, **k):
        made(self, *a, **k)
        raise KeyboardInterrupt

    monkeypatch.setattr(Core, "split_arrays", interrupted)
    s = ncdask.EmbeddingStore.open(str(store), "a")
    with pytest.raises(KeyboardInterrupt):
        s.import_files("train", *files)
    assert not list(store.glob(".import-*"))
    assert s.splits() == ["test"] and s.core.leftovers() == []
    monkeypatch.undo()
    s.import_files("other", *files)
    assert not [p for p in (store / ".ncdask" / "leases").iterdir() if p.is_dir()]


def test_process_workers_leave_ctrl_c_to_the_command():
    """Ctrl-C in a terminal reaches every process of the group: --scheduler processes'
    workers ignore it (no traceback from each), the command handles it."""
    with scheduler.use_scheduler("processes", quiet=True):
        assert dask.config.get("multiprocessing.initializer") is scheduler.ignore_sigint
    with scheduler.use_scheduler("processes", quiet=True) as run:
        pid = run.compute(dask.delayed(os.getpid)())
        handler = run.compute(dask.delayed(signal.getsignal)(signal.SIGINT))
    assert pid != os.getpid() and handler == signal.SIG_IGN
