"""The ``ncdask`` command line end to end: import, stats, analyze, schedulers, errors."""

from __future__ import annotations

import importlib.util
import json
import math
import os

import numpy as np
import pytest
import xarray as xr
from dense import class_data, split

import ncdask
from ncdask.cli import json_value, main, scalar_dict
from ncdask.scheduler import SchedulerError, use_scheduler

K, D = 5, 8


@pytest.fixture
def arrays():
    return _arrays()


def _arrays():
    rng = np.random.default_rng(0)
    means = 3 * rng.normal(size=(K, D))
    W = means + 0.3 * rng.normal(size=(K, D))
    b = 0.1 * rng.normal(size=K)
    Xo = rng.normal(size=(60, D)).astype(np.float32)
    return {
        "train": class_data(rng, means, 300, dtype=np.float32),
        "test": class_data(rng, means, 100, dtype=np.float32),
        "ood": (Xo, np.arange(60) % 2),
        "W": W,
        "b": b,
    }


def _write(url, arrays):
    splits = {k: arrays[k] for k in ("train", "test", "ood")}
    ncdask.EmbeddingStore.from_arrays(url, splits, W=arrays["W"], b=arrays["b"], chunk_rows=64)
    return url


@pytest.fixture
def store_url(tmp_path, arrays):
    return _write(str(tmp_path / "s.zarr"), arrays)


@pytest.fixture(scope="module")
def read_only_url(tmp_path_factory):
    """The same store, shared by the tests that only read it."""
    return _write(str(tmp_path_factory.mktemp("cli") / "s.zarr"), _arrays())


def _api(url, **kw):
    s = ncdask.EmbeddingStore.open(url)
    W, b = s.classifier()
    stats_kw = {k: kw.pop(k) for k in ("ignore_index",) if k in kw}
    return ncdask.measure(ncdask.class_stats(s, "train", **stats_kw), weights=W, bias=b,
                          test=s.split("test"), ood=s.split("ood"), **kw).compute()


def _compare(got: dict, ref: xr.Dataset, rtol=1e-12):
    scalars = [n for n, v in ref.data_vars.items() if not v.dims]
    assert sorted(got) == sorted(scalars)
    for name in scalars:
        np.testing.assert_allclose(got[name], float(ref[name]), rtol=rtol, err_msg=name)


# ------------------------------------------------------------------------ analyze


def test_analyze_json_matches_the_python_api(store_url, tmp_path, capsys):
    out = tmp_path / "m.json"
    assert main(["analyze", store_url, "--json", str(out), "--quiet"]) == 0
    cap = capsys.readouterr()
    # --quiet hides progress (stderr), never the answer (the table on stdout)
    assert cap.err == "" and "nc1_pinv" in cap.out and "long_name" in cap.out
    got = json.loads(out.read_text())
    ref = _api(store_url)
    _compare(got, ref)
    assert {"nc1_pinv", "nc3_dual_err", "nc4_agree", "nc5_ood_dev"} <= set(got)


def test_analyze_table_out_and_json_to_stdout(store_url, tmp_path, capsys):
    res_url = str(tmp_path / "results.zarr")
    assert main(["analyze", store_url, "--out", res_url]) == 0
    cap = capsys.readouterr()
    lines = cap.out.splitlines()
    assert lines[0].split() == ["metric", "value", "long_name"]
    row = next(line for line in lines if line.startswith("nc1_pinv "))
    assert "pseudo-inverse" in row
    assert "measuring" in cap.err and f"wrote {res_url}" in cap.err
    back = xr.open_zarr(res_url, consolidated=False).compute()
    ref = _api(store_url)
    xr.testing.assert_allclose(back[list(ref.data_vars)], ref)

    assert main(["analyze", store_url, "--json", "-", "-q"]) == 0
    _compare(json.loads(capsys.readouterr().out), ref)


def test_analyze_options_pass_through(store_url, capsys):
    argv = ["analyze", store_url, "--json", "-", "-q", "--metrics", "nc1_cdnv", "nc2g_dist",
            "nc4_agree", "--dist-exp", "2", "--tile-size", "2"]
    assert main(argv) == 0
    got = json.loads(capsys.readouterr().out)
    ref = _api(store_url, metrics=["nc1_cdnv", "nc2g_dist", "nc4_agree"], dist_exp=2.0,
               tile_size=2)
    _compare(got, ref)
    default = _api(store_url, metrics=["nc1_cdnv"])
    assert not math.isclose(got["nc1_cdnv"], float(default.nc1_cdnv))


def test_analyze_min_count(tmp_path, arrays, capsys):
    X, y = arrays["train"]
    keep = (y != 4) | (np.arange(y.size) < 40)  # class 4 keeps only a few samples
    url = str(tmp_path / "few.zarr")
    ncdask.EmbeddingStore.from_arrays(url, {"train": (X[keep], y[keep]),
                                            "test": arrays["test"]}, W=arrays["W"])
    n4 = int((y[keep] == 4).sum())
    assert 0 < n4 < 20
    assert main(["analyze", url, "--json", "-", "-q", "--min-count", "20"]) == 0
    got = json.loads(capsys.readouterr().out)
    s = ncdask.EmbeddingStore.open(url)
    ref = ncdask.measure(ncdask.class_stats(s, "train"), weights=arrays["W"],
                         test=s.split("test"), min_count=20).compute()
    _compare(got, ref)
    assert ref.attrs["n_classes_measured"] == K - 1


def test_ignore_index_import_and_analyze(tmp_path, arrays, capsys):
    # PyTorch-style padding labels (-100) kept in the store and left out of the statistics
    X, y = arrays["train"]
    y = y.copy()
    y[::7] = -100
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    url = str(tmp_path / "pad.zarr")
    assert main(["import", str(tmp_path / "X.npy"), str(tmp_path / "y.npy"), "--store", url,
                 "--split", "train", "--ignore-index", "-100", "-q"]) == 0
    assert "K=5 taken from the largest label" in capsys.readouterr().err
    s = ncdask.EmbeddingStore.open(url)
    assert s.n_classes == K and s.split("train").sizes["sample"] == X.shape[0]
    assert main(["analyze", url, "--json", "-", "-q", "--ignore-index", "-100",
                 "--metrics", "nc1_pinv", "nc1_quot"]) == 0
    got = json.loads(capsys.readouterr().out)
    keep = y != -100
    dense = ncdask.class_stats(split(X[keep], y[keep], K, chunks=None))
    ref = ncdask.measure(dense, metrics=["nc1_pinv", "nc1_quot"]).compute()
    _compare(got, ref, rtol=1e-9)
    assert main(["import", str(tmp_path / "X.npy"), str(tmp_path / "y.npy"), "--store", url,
                 "--split", "train", "--ignore-index", "-1"]) == 2
    assert "created with ignore_index=-100" in capsys.readouterr().err


def test_analyze_nonfinite_values_in_json(tmp_path, capsys):
    # two classes with the same mean: CDNV is +inf and its variance-type companions NaN
    rng = np.random.default_rng(2)
    means = np.array([[0.0, 0, 0], [0, 0, 0], [5, 0, 0]])
    X, y = class_data(rng, means, 90)
    X[y == 1] = X[y == 0]  # identical samples, identical means
    url = str(tmp_path / "same.zarr")
    ncdask.EmbeddingStore.from_arrays(url, {"train": (X, y)})
    out = tmp_path / "m.json"
    assert main(["analyze", url, "--json", str(out), "-q", "--metrics", "nc1_cdnv",
                 "nc2g_log", "nc1_quot"]) == 0
    text = out.read_text()
    assert "NaN" not in text.replace('"', "")
    got = json.loads(text)
    assert got["nc1_cdnv"] == "Infinity" and got["nc2g_log_mean"] == "Infinity"
    assert got["nc2g_log_var"] is None
    assert isinstance(got["nc1_quot"], float)


def test_json_value_and_scalar_dict():
    assert json_value(float("nan")) is None
    assert json_value(float("inf")) == "Infinity" and json_value(-np.inf) == "-Infinity"
    assert json_value(np.float32(0.5)) == 0.5
    res = xr.Dataset({"a": ((), 1.0), "b": ("epoch", [1.0, np.nan]),
                      "pc": (("epoch", "class"), np.ones((2, 3)))}, coords={"epoch": [1, 5]})
    assert scalar_dict(res) == {"epoch": [1, 5], "a": 1.0, "b": [1.0, None]}
    json.dumps(scalar_dict(res), allow_nan=False)


def test_analyze_sweep_over_epochs(tmp_path, arrays, capsys):
    rng = np.random.default_rng(3)
    url = str(tmp_path / "sweep.zarr")
    s = ncdask.EmbeddingStore.create(url, K, D)
    means = 3 * rng.normal(size=(K, D))
    stats, Ws = {}, {}
    for e, noise in ((1, 2.0), (5, 0.5), (9, 0.1)):
        X, y = class_data(rng, means, 200, noise=noise, dtype=np.float32)
        s.append("train", X, y, epoch=e)
        s.set_classifier(means, epoch=e)
        stats[e] = ncdask.class_stats(s.split("train", epoch=e))
        Ws[e] = means
    assert main(["analyze", url, "--sweep", "--json", "-", "-q", "--metrics", "nc1_pinv",
                 "nc3_dual_err"]) == 0
    got = json.loads(capsys.readouterr().out)
    ref = ncdask.measure(stats, weights=Ws, dim="epoch",
                         metrics=["nc1_pinv", "nc3_dual_err"]).compute()
    assert got["epoch"] == [1, 5, 9]
    np.testing.assert_allclose(got["nc1_pinv"], ref.nc1_pinv.values, rtol=1e-12)
    assert got["nc1_pinv"][0] > got["nc1_pinv"][-1]
    # one set by tag, and the table of a sweep
    assert main(["analyze", url, "--epoch", "5", "--json", "-", "-q"]) == 0
    one = json.loads(capsys.readouterr().out)
    np.testing.assert_allclose(one["nc1_pinv"], got["nc1_pinv"][1], rtol=1e-12)
    assert main(["analyze", url, "--sweep", "--metrics", "nc1_pinv"]) == 0
    assert "nc1_pinv" in capsys.readouterr().out
    # the default set has no splits: a clear error naming the sets
    assert main(["analyze", url]) == 2
    err = capsys.readouterr().err
    assert "no split 'train'" in err and "--layer/--epoch" in err and "{'epoch': 5}" in err


# ------------------------------------------------------------------------ schedulers


@pytest.mark.slow
def test_scheduler_threads_processes_sync(store_url, capsys):
    from killing import warm_processes

    ref = _api(store_url, metrics=["nc1_pinv", "nc4_agree"])
    for spec in ("threads", "processes", "sync"):
        with warm_processes():
                assert main(["analyze", store_url, "--scheduler", spec, "--json", "-", "-q",
                         "--metrics", "nc1_pinv", "nc4_agree"]) == 0, spec
        _compare(json.loads(capsys.readouterr().out), ref)


def test_scheduler_distributed_address(store_url, capsys, monkeypatch):
    from ncdask import scheduler

    distributed = pytest.importorskip("distributed")
    monkeypatch.setattr(scheduler, "EVERY_S", 0.01)
    ref = _api(store_url, metrics=["nc1_pinv", "nc1_cdnv", "nc4_agree"])
    with distributed.LocalCluster(processes=False, n_workers=1, threads_per_worker=2,
                                  dashboard_address=None) as cluster:
        argv = ["analyze", store_url, "--scheduler", cluster.scheduler_address,
                "--metrics", "nc1_pinv", "nc1_cdnv", "nc4_agree", "--json", "-"]
        assert main(argv) == 0  # not quiet: progress on stderr (lines: it is no terminal)
        cap = capsys.readouterr()
        _compare(json.loads(cap.out), ref)
        assert "tasks done" in cap.err and "\r" not in cap.err
        with use_scheduler(cluster.scheduler_address, quiet=True) as run:
            assert run.client is not None
            assert int(run.compute(ncdask.class_stats(store_url, "train")).n_samples) == 300


def test_scheduler_errors(store_url, capsys):
    with pytest.raises(SchedulerError, match="unknown scheduler"):
        with use_scheduler("gpus-please"):
            pass
    assert main(["analyze", store_url, "--scheduler", "gpus-please"]) == 1
    assert "ncdask: error: unknown scheduler 'gpus-please'" in capsys.readouterr().err
    if importlib.util.find_spec("dask_cuda") is None:
        assert main(["analyze", store_url, "--scheduler", "local-cuda"]) == 1
        assert "pip install 'ncdask[gpu]'" in capsys.readouterr().err
    with pytest.raises(SchedulerError, match="cannot connect"):
        with use_scheduler("tcp://127.0.0.1:9", connect_timeout=0.5):
            pass


def test_a_port_that_is_not_a_dask_scheduler_is_an_error_not_a_hang():
    """An HTTP server accepts the connection and never answers Dask's handshake."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    srv.daemon_threads = True  # the handler stays blocked on the half-read request
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        with pytest.raises(SchedulerError, match="no Dask scheduler answered"):
            with use_scheduler(f"tcp://127.0.0.1:{srv.server_address[1]}",
                               connect_timeout=1.0):
                pass
    finally:
        srv.shutdown()


_DASK_CLI = """
import os, runpy, sys
os.setsid()  # its own process group, killed as one
runpy.run_module(f"distributed.cli.dask_{sys.argv.pop(1)}", run_name="__main__")
"""
_SLOW_TASKS = """
import time
from distributed import WorkerPlugin

class Slow(WorkerPlugin):  # each task 0.2 s: the run is still going when the workers die
    def transition(self, key, start, finish, **kw):
        if finish == "executing":
            time.sleep(0.2)

async def dask_setup(worker):
    await worker.plugin_add(Slow())
"""


@pytest.mark.slow
def test_every_worker_killed_mid_run_is_an_error_not_a_hang(store_url, tmp_path):
    """A real scheduler and worker in their own processes; the worker SIGKILLed while
    ``ncdask analyze`` runs on it. The run must stop with an error naming the scheduler
    within the no-workers timeout (2 s here) and a margin."""
    import contextlib
    import signal
    import subprocess
    import sys
    import time

    from killing import python

    distributed = pytest.importorskip("distributed")
    (tmp_path / "slow_tasks.py").write_text(_SLOW_TASKS)
    sfile, env = str(tmp_path / "scheduler.json"), {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(tmp_path), *sys.path])}
    procs = [python(_DASK_CLI, "scheduler", "--port", "0", "--no-dashboard", "--scheduler-file",
                    sfile, env=env, stderr=subprocess.DEVNULL)]
    try:
        procs.append(python(
            _DASK_CLI, "worker", "--scheduler-file", sfile, "--no-nanny", "--nthreads", "1",
            "--no-dashboard", "--preload", "slow_tasks", env=env, stderr=subprocess.DEVNULL))
        with distributed.Client(scheduler_file=sfile, timeout=30) as watcher:
            watcher.wait_for_workers(1, timeout=30)
            address = watcher.scheduler.address
            run = python("import sys; from ncdask.cli import main; sys.exit(main())",
                         "analyze", store_url, "--scheduler", address, "--no-workers-timeout",
                         "2", "--metrics", "nc1", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            deadline = time.monotonic() + 60
            while not any(watcher.processing().values()):  # the run has work on the worker
                assert run.poll() is None, run.communicate()
                assert time.monotonic() < deadline, "the run sent no task to the worker"
                time.sleep(0.05)
            os.killpg(procs[1].pid, signal.SIGKILL)
            t0 = time.monotonic()
            try:
                out, err = run.communicate(timeout=2 + 15)
            finally:
                run.kill()
            assert run.returncode == 1, err
            assert time.monotonic() - t0 < 2 + 15
            assert f"no Dask worker was connected to the scheduler at {address} for 2 s" in err
            # in the API: the named error, also when no worker is there from the start
            with pytest.raises(ncdask.errors.NoWorkersError, match=address):
                with use_scheduler(address, quiet=True, no_workers_timeout=1) as r:
                    r.compute(ncdask.class_stats(store_url, "train"))
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()


# ------------------------------------------------------------------------ import, stats


def test_import_npy_pair_with_classifier(tmp_path, arrays, capsys):
    X, y = arrays["train"]
    for name, a in (("X", X), ("y", y), ("W", arrays["W"]), ("b", arrays["b"])):
        np.save(tmp_path / f"{name}.npy", a)
    Xt, yt = arrays["test"]
    np.savez(tmp_path / "test.npz", embeddings=Xt, labels=yt)
    url = str(tmp_path / "new.zarr")
    p = str(tmp_path)
    assert main(["import", f"{p}/X.npy", f"{p}/y.npy", "--store", url, "--split", "train",
                 "--classifier", f"{p}/W.npy", "--bias", f"{p}/b.npy"]) == 0
    assert "created" in capsys.readouterr().err
    assert main(["import", f"{p}/test.npz", "--store", url, "--split", "test", "-q"]) == 0
    assert capsys.readouterr().err == ""
    s = ncdask.EmbeddingStore.open(url)
    assert (s.n_classes, s.dim) == (K, D) and s.splits() == ["test", "train"]
    np.testing.assert_array_equal(s.split("train").embeddings.values, X)
    np.testing.assert_array_equal(s.split("test").labels.values, yt)
    W, b = s.classifier()
    np.testing.assert_allclose(W, arrays["W"])
    np.testing.assert_allclose(b, arrays["b"])
    # importing the same files again is refused, and changes nothing
    assert main(["import", f"{p}/X.npy", f"{p}/y.npy", "--store", url, "--split", "train",
                 "-q"]) == 2
    assert "already holds" in capsys.readouterr().err
    assert ncdask.EmbeddingStore.open(url).n_rows("train") == X.shape[0]
    # --append adds them again, --overwrite replaces the split with them
    assert main(["import", f"{p}/X.npy", f"{p}/y.npy", "--store", url, "--split", "train",
                 "-q", "--append"]) == 0
    assert ncdask.EmbeddingStore.open(url).split("train").sizes["sample"] == 2 * X.shape[0]
    assert main(["import", f"{p}/X.npy", f"{p}/y.npy", "--store", url, "--split", "train",
                 "-q", "--overwrite"]) == 0
    s = ncdask.EmbeddingStore.open(url)
    np.testing.assert_array_equal(s.split("train").embeddings.values, X)
    assert s.split("train").attrs["class_counts"].sum() == X.shape[0]
    assert s.splits() == ["test", "train"] and s.classifier()[0].shape == (K, D)


def test_import_k_from_labels_warns_and_n_classes(tmp_path, arrays, capsys):
    X, y = arrays["train"]
    keep = y < 3  # the labels only reach 2
    np.savez(tmp_path / "a.npz", X=X[keep], Y=y[keep])
    url = str(tmp_path / "k.zarr")
    assert main(["import", str(tmp_path / "a.npz"), "--store", url, "--split", "train"]) == 0
    err = capsys.readouterr().err
    assert "ncdask: warning: K=3 taken from the largest label + 1" in err
    assert ncdask.EmbeddingStore.open(url).n_classes == 3
    url2 = str(tmp_path / "k2.zarr")
    assert main(["import", str(tmp_path / "a.npz"), "--store", url2, "--split", "train",
                 "--n-classes", "7", "-q"]) == 0
    assert "warning" not in capsys.readouterr().err
    assert ncdask.EmbeddingStore.open(url2).n_classes == 7
    assert main(["import", str(tmp_path / "a.npz"), "--store", url2, "--split", "train",
                 "--n-classes", "4"]) == 2
    assert "has K=7" in capsys.readouterr().err


def test_a_new_store_keeps_half_precision_files_in_half_precision(tmp_path, capsys):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 300)
    X = rng.normal(size=(300, 6)) + np.eye(4, 6)[y]
    p = str(tmp_path)
    np.save(f"{p}/y.npy", y)
    for dt in ("float16", "float64"):
        np.save(f"{p}/X{dt}.npy", X.astype(dt))
    got = {}
    for name, file, extra in (("half", "Xfloat16", []), ("double", "Xfloat64", []),
                              ("asked", "Xfloat16", ["--dtype", "float64"])):
        url = f"{p}/{name}.zarr"
        assert main(["import", f"{p}/{file}.npy", f"{p}/y.npy", "--store", url, "--split",
                     "train", "--n-classes", "4", *extra]) == 0
        assert "created" in capsys.readouterr().err
        s = ncdask.EmbeddingStore.open(url)
        got[name] = s.dtype
        np.testing.assert_array_equal(s.split("train").embeddings.values,
                                      np.load(f"{p}/{file}.npy").astype(s.dtype))
    assert got == {"half": np.float16, "double": np.float32, "asked": np.float64}
    # an existing store keeps its dtype: asking for another is an error, nothing written
    assert main(["import", f"{p}/Xfloat16.npy", f"{p}/y.npy", "--store", f"{p}/half.zarr",
                 "--split", "test", "--dtype", "float32"]) == 2
    assert "stores float16" in capsys.readouterr().err
    assert ncdask.EmbeddingStore.open(f"{p}/half.zarr").splits() == ["train"]
    # values beyond float16's range are refused, with the way out the command line has
    np.save(f"{p}/Xbig.npy", 1e6 * X)
    assert main(["import", f"{p}/Xbig.npy", f"{p}/y.npy", "--store", f"{p}/big.zarr",
                 "--split", "train", "--n-classes", "4", "--dtype", "float16"]) == 2
    assert "overflow float16" in capsys.readouterr().err
    res = ncdask.analyze(f"{p}/half.zarr", metrics="nc1", progress=False)
    ref = ncdask.measure(ncdask.class_stats(split(X.astype(np.float16), y, 4))).compute()
    np.testing.assert_allclose(float(res.nc1_pinv), float(ref.nc1_pinv), rtol=1e-10)


def test_import_errors(tmp_path, arrays, capsys):
    X, y = arrays["train"]
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    np.save(tmp_path / "W.npy", np.ones((K, D + 1)))
    url = str(tmp_path / "e.zarr")
    cases = [
        ([str(tmp_path / "X.npy")], "must be followed by its .npy labels"),
        ([str(tmp_path / "X.csv")], "expected .npy"),
        ([str(tmp_path / "nope.npz")], "no such file"),
        ([str(tmp_path / "X.npy"), str(tmp_path / "y.npy"), "--bias", str(tmp_path / "y.npy")],
         "--bias needs --classifier"),
        ([str(tmp_path / "X.npy"), str(tmp_path / "y.npy"), "--classifier",
          str(tmp_path / "W.npy")], "classifier weights have shape"),
    ]
    for files, msg in cases:
        assert main(["import", *files, "--store", url, "--split", "train"]) == 2, msg
        err = capsys.readouterr().err
        assert "ncdask: error: " in err and msg in err and "Traceback" not in err
        assert not os.path.exists(url), msg  # validated before anything was written
    assert main(["import", str(tmp_path / "X.npy"), str(tmp_path / "y.npy"), "--store", url,
                 "--split", "bad/name", "-q"]) == 2
    assert "split name" in capsys.readouterr().err


def test_stats_command(store_url, tmp_path, capsys, arrays):
    out = str(tmp_path / "stats.zarr")
    assert main(["stats", store_url, "--out", out, "-q"]) == 0
    line = capsys.readouterr().out
    assert f"N=300 K={K} D={D}" in line
    ref = ncdask.class_stats(store_url, "train").compute()
    back = ncdask.load_stats(out).compute()
    np.testing.assert_allclose(back.within_cov.values, ref.within_cov.values, rtol=1e-12)
    assert main(["stats", store_url, "--split", "test", "-q"]) == 0
    assert "N=100" in capsys.readouterr().out
    assert main(["stats", store_url, "--split", "nope"]) == 2
    assert "no split 'nope'" in capsys.readouterr().err


# ------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("argv", "code", "msg"),
    [
        (["analyze", "{tmp}/missing.zarr"], 2, "no ncdask store at"),
        (["stats", "{tmp}/missing.zarr"], 2, "no ncdask store at"),
        (["analyze", "{url}", "--train", "bogus"], 2, "no split 'bogus'"),
        (["analyze", "{url}", "--test", "bogus"], 2, "no split 'bogus'"),
        (["analyze", "{url}", "--ood", "bogus"], 2, "no split 'bogus'"),
        (["analyze", "{url}", "--tile-size", "0"], 2, "--tile-size: must be a positive integer"),
        (["analyze", "{url}", "--tile-size", "-3"], 2, "--tile-size: must be a positive integer"),
        (["analyze", "{url}", "--tile-size", "x"], 2, "expected a positive integer"),
        (["analyze", "{url}", "--dist-exp", "0"], 2, "--dist-exp: must be a positive"),
        (["analyze", "{url}", "--metrics", "nc9"], 2, "unknown metric 'nc9'"),
        (["analyze", "{url}", "--sweep"], 2, "no tagged embedding sets"),
        (["analyze", "{url}", "--sweep", "--epoch", "3"], 2, "do not pass --epoch"),
        (["analyze"], 2, "the following arguments are required: url"),
        (["frobnicate"], 2, "invalid choice: 'frobnicate'"),
        (["demo", "--epochs", "0"], 2, "--epochs: must be a positive integer"),
    ],
)
def test_errors(argv, code, msg, read_only_url, tmp_path, capsys):
    argv = [a.format(tmp=tmp_path, url=read_only_url) for a in argv]
    assert main(argv) == code
    err = capsys.readouterr().err
    assert "ncdask: error: " in err and msg in err, err
    assert "Traceback" not in err


def test_help_and_version(capsys):
    assert main([]) == 0
    assert "analyze" in capsys.readouterr().out
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"ncdask {ncdask.__version__}"
    assert main(["analyze", "--help"]) == 0
    out = capsys.readouterr().out
    for opt in ("--scheduler", "--json", "--min-count", "--ignore-index", "--dist-exp"):
        assert opt in out
