"""The demo: an MLP on sklearn's digits, embeddings per epoch in one store, NC over training."""

from __future__ import annotations

import functools
import re
import warnings

import numpy as np
import pytest
import xarray as xr

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")
from matplotlib.image import imread  # noqa: E402

import ncdask  # noqa: E402
from ncdask._demo import demo as demo_module  # noqa: E402
from ncdask._demo.demo import (  # noqa: E402
    EPOCHS,
    HIDDEN,
    MLP,
    collapse_summary,
    cosine_lr,
    default_checkpoints,
    penultimate,
    run_demo,
    train_to_store,
)
from ncdask.cli import main  # noqa: E402

pytestmark = pytest.mark.xdist_group("demo")  # one worker runs the module's demo once


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The default demo, exactly as ``ncdask demo`` runs it (about 10 s)."""
    out = tmp_path_factory.mktemp("demo")
    return out, run_demo(out, quiet=True)


def test_collapse_over_training(demo):
    """Issue 11: the default demo reaches the terminal phase and collapses."""
    out, res = demo
    first, last = res.isel(epoch=0), res.isel(epoch=-1)
    assert list(res.epoch.values) == default_checkpoints(EPOCHS)
    assert res.attrs["training"]["epochs"] == EPOCHS
    # NC1 falls by over 10x, the ETF and self-duality errors by over 2x each
    assert float(first.nc1_pinv) >= 10 * float(last.nc1_pinv)
    assert float(first.nc2_etf_err) >= 2 * float(last.nc2_etf_err)
    assert float(first.nc3_dual_err) >= 2 * float(last.nc3_dual_err)
    assert float(last.nc1_cdnv) < 0.1 * float(first.nc1_cdnv)
    # past zero training error: the terminal phase
    assert float(last.train_acc) == 1.0 and float(first.train_acc) < 0.9
    assert float(last.test_acc) > 0.95
    # the classifier and the nearest class centre come to agree
    assert float(last.nc4_agree) > 0.99 > 0.9 > float(first.nc4_agree)
    assert "nc5_ood_dev" in res and res.attrs["left_out"] == {}
    s = collapse_summary(res)
    assert s["nc1_pinv"] == pytest.approx(float(first.nc1_pinv) / float(last.nc1_pinv))
    hit = res.epoch.values[res.train_acc.values == 1.0]
    assert s["tpt_epoch"] == hit[0] < EPOCHS


def test_default_epochs_and_determinism(demo, tmp_path):
    """epochs=None is the default schedule; a rerun reproduces the same numbers."""
    import inspect

    _, res = demo
    assert inspect.signature(run_demo).parameters["epochs"].default == EPOCHS
    # only the first two epochs of the default 300-epoch schedule
    short = run_demo(tmp_path / "short", epochs=None, checkpoints=[1, 2], quiet=True,
                     plots=False)
    assert short.attrs["training"]["epochs"] == EPOCHS
    assert list(short.epoch.values) == [1, 2]
    for k in ("nc1_pinv", "nc2_etf_err", "nc3_dual_err", "train_acc", "test_acc"):
        np.testing.assert_array_equal(short[k].values, res[k].sel(epoch=[1, 2]).values)
    assert not (tmp_path / "short" / "nc_curves.png").exists()


def test_outputs_reopen(demo):
    out, res = demo
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a plain open_zarr is quiet
        back = xr.open_zarr(out / "results.zarr").compute()
    assert back.sizes["epoch"] == res.sizes["epoch"]
    # every metric keeps its labels, which the plots use as y labels
    assert back.nc1_pinv.attrs["long_name"] == res.nc1_pinv.attrs["long_name"] != ""
    assert list(ncdask.open_results(str(out / "results.zarr")).data_vars) == list(res.data_vars)
    xr.testing.assert_allclose(back[["nc1_pinv", "nc1_cdnv", "nc4_agree"]],
                               res[["nc1_pinv", "nc1_cdnv", "nc4_agree"]])
    for name in ("nc_curves.png", "gram.png"):
        img = imread(str(out / name))
        assert img.ndim == 3 and min(img.shape[:2]) > 200
    store = ncdask.EmbeddingStore.open(str(out / "embeddings.zarr"))
    assert store.n_classes == 8 and store.dim == HIDDEN[-1]
    assert store.sets() == [{"epoch": e} for e in default_checkpoints(EPOCHS)]
    assert store.splits(epoch=EPOCHS) == ["ood", "test", "train"]
    W, b = store.classifier(epoch=EPOCHS)
    assert W.shape == (8, HIDDEN[-1]) and b.shape == (8,)
    # the stored accuracy is the stored classifier's on the stored embeddings
    test = store.split("test", epoch=EPOCHS)
    pred = np.argmax(test.embeddings.values @ np.asarray(W).T + np.asarray(b), axis=1)
    assert np.mean(pred == test.labels.values) == pytest.approx(float(res.test_acc[-1]), abs=2e-3)
    # the OOD split holds the held-out digits 8 and 9, stored without labels
    ood = store.split("ood", epoch=EPOCHS)
    assert "labels" not in ood and ood.sizes["sample"] == 354  # 174 eights, 180 nines


def test_results_match_a_direct_measurement(demo):
    out, res = demo
    store = ncdask.EmbeddingStore.open(str(out / "embeddings.zarr"))
    W, b = store.classifier(epoch=1)
    direct = ncdask.measure(
        ncdask.class_stats(store.split("train", epoch=1)), weights=W, bias=b,
        test=store.split("test", epoch=1), ood=store.split("ood", epoch=1),
        metrics=["nc1_pinv", "nc3_dual_err", "nc4_agree", "nc5_ood_dev"],
    ).compute()
    for k in direct.data_vars:
        np.testing.assert_allclose(float(res[k].sel(epoch=1)), float(direct[k]), rtol=1e-12)


def test_deterministic(tmp_path):
    a, acc_a = train_to_store(tmp_path / "a.zarr", epochs=2, checkpoints=[2])
    b, acc_b = train_to_store(tmp_path / "b.zarr", epochs=2, checkpoints=[2])
    assert acc_a == acc_b
    np.testing.assert_array_equal(a.split("train", epoch=2).embeddings.values,
                                  b.split("train", epoch=2).embeddings.values)


def test_bad_checkpoints(tmp_path):
    with pytest.raises(ValueError, match="checkpoints"):
        train_to_store(tmp_path / "c.zarr", epochs=3, checkpoints=[5])
    with pytest.raises(ValueError, match="epochs"):
        default_checkpoints(0)


def test_cli_demo_prints_a_table(tmp_path, capsys, monkeypatch):
    assert main(["demo", "--out", str(tmp_path / "d"), "--epochs", "2"]) == 0
    cap = capsys.readouterr()
    assert "nc1_pinv" in cap.out and "test_acc" in cap.out and "fell by" in cap.out
    summary = cap.out.splitlines()[-1]  # NC1-NC3 fell, NC4 and NC5 went somewhere
    assert re.search(r"nc4_agree [\d.]+ -> [\d.]+; nc5_ood_dev [\d.]+ -> [\d.]+", summary)
    assert "training an MLP" in cap.err
    assert (tmp_path / "d" / "results.zarr").is_dir()
    assert (tmp_path / "d" / "nc_curves.png").stat().st_size > 2000
    # the figures are checked above: the --quiet run draws none (they are most of its time)
    monkeypatch.setattr(demo_module, "run_demo", functools.partial(run_demo, plots=False))
    assert main(["demo", "--out", str(tmp_path / "e"), "--epochs", "1", "--quiet"]) == 0
    cap = capsys.readouterr()
    # --quiet hides the progress, not the answer
    e = tmp_path / "e"
    assert cap.err == f"wrote {e / 'embeddings.zarr'}, {e / 'results.zarr'}\n"
    assert "nc1_pinv" in cap.out and "fell by" in cap.out


def test_mlp_step_is_gradient_descent_on_the_smoothed_cross_entropy():
    """One step with lr=1, no momentum, no decay moves the weights by minus the gradient."""
    rng = np.random.default_rng(0)
    mlp = MLP((5, 7, 6, 3), rng)
    mlp.coefs_ = [w.astype(np.float64) for w in mlp.coefs_]
    mlp.intercepts_ = [b.astype(np.float64) + 0.1 for b in mlp.intercepts_]
    mlp._velocity = [np.zeros_like(p) for p in mlp.coefs_ + mlp.intercepts_]
    X = rng.normal(size=(10, 5)).astype(np.float32)
    T = np.full((10, 3), 0.1 / 3) + 0.9 * np.eye(3)[np.arange(10) % 3]

    def loss():
        _, z = mlp._forward(X)
        z = z - z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return -np.mean((T * logp).sum(axis=1))

    params = mlp.coefs_ + mlp.intercepts_
    before = [p.copy() for p in params]
    numeric = []
    for p in params:
        g = np.zeros_like(p)
        for i in np.ndindex(p.shape):
            old = p[i]
            p[i] = old + 1e-6
            up = loss()
            p[i] = old - 1e-6
            down = loss()
            p[i] = old
            g[i] = (up - down) / 2e-6
        numeric.append(g)
    mlp.step(X, T, lr=1.0, momentum=0.0, weight_decay=0.0)
    for p, b0, g in zip(params, before, numeric, strict=True):
        np.testing.assert_allclose(b0 - p, g, rtol=1e-4, atol=1e-7)
    # weight decay acts on the weights, not the biases
    w0, b0 = mlp.coefs_[0].copy(), mlp.intercepts_[0].copy()
    mlp._velocity = [np.zeros_like(p) for p in mlp.coefs_ + mlp.intercepts_]
    X0 = np.zeros((4, 5), dtype=np.float32)
    T0 = np.full((4, 3), 1 / 3)
    mlp.coefs_[-1][:] = 0
    mlp.intercepts_[-1][:] = 0  # uniform logits: zero loss gradient
    mlp.step(X0, T0, lr=0.5, momentum=0.0, weight_decay=0.1)
    np.testing.assert_allclose(mlp.coefs_[0], w0 * (1 - 0.05))
    np.testing.assert_allclose(mlp.intercepts_[0], b0)


def test_cosine_lr_and_penultimate_of_sklearn_mlp():
    assert cosine_lr(1, 10, 0.2) == 0.2
    assert cosine_lr(6, 10, 0.2) == pytest.approx(0.1)
    assert 0 < cosine_lr(10, 10, 0.2) < 0.01
    from sklearn.neural_network import MLPClassifier

    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(40, 4)), np.arange(40) % 3
    sk = MLPClassifier(hidden_layer_sizes=(6, 5), random_state=0)
    sk.partial_fit(X, y, classes=[0, 1, 2])
    h = np.maximum(np.maximum(X @ sk.coefs_[0] + sk.intercepts_[0], 0) @ sk.coefs_[1]
                   + sk.intercepts_[1], 0)
    np.testing.assert_allclose(penultimate(sk, X), h)
    ours = MLP((4, 6, 5, 3), rng)
    h = np.maximum(np.maximum(X @ ours.coefs_[0] + ours.intercepts_[0], 0) @ ours.coefs_[1]
                   + ours.intercepts_[1], 0)
    np.testing.assert_allclose(penultimate(ours, X), h, rtol=1e-6)


def test_the_end_to_end_example_runs(tmp_path, capsys):
    import runpy
    import sys
    from pathlib import Path

    script = Path(__file__).parents[1] / "examples" / "end_to_end.py"
    argv = sys.argv
    sys.argv = [str(script), str(tmp_path / "ex.zarr")]
    try:
        with pytest.raises(SystemExit) as done:
            runpy.run_path(str(script), run_name="__main__")
    finally:
        sys.argv = argv
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "N=19968 K=10 D=64" in out and "NC1 quotient" in out
