"""A self-contained demo: watch Neural Collapse happen while a small MLP trains.

    ncdask demo --out ncdask-demo          # or: python -m ncdask.demo [OUT_DIR]

No downloads: scikit-learn's bundled ``load_digits`` (1797 8×8 images).
Digits 0-7 are the in-distribution classes (K = 8, a stratified 75/25
train/test split); digits 8 and 9 are never trained on and form the OOD
split (their labels are stored as 0 and 1: OOD group ids, not ID classes).
A :class:`sklearn.neural_network.MLPClassifier` with two ReLU hidden layers
trains one epoch per ``partial_fit`` call; at checkpoints the penultimate
activations (a forward pass by hand from ``coefs_`` / ``intercepts_``) of
all three splits and the last layer's weights and bias go into one Zarr
store, one embedding set per epoch. Then every metric is measured as an
epoch sweep.

Outputs in ``out_dir``: ``embeddings.zarr`` (the store), ``results.zarr``
(metrics with an ``epoch`` dim), ``nc_curves.png`` (NC metrics against
epoch) and ``gram.png`` (class-mean cosines at the last checkpoint).
Needs the ``demo`` extra (scikit-learn, matplotlib).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

ID_CLASSES = 8  # digits 0..7 in distribution, 8 and 9 out of distribution
TABLE = ("nc1_pinv", "nc1_cdnv", "nc2_etf_err", "nc3_dual_err", "nc4_agree", "nc5_ood_dev")


def default_checkpoints(epochs: int, n: int = 10) -> list[int]:
    """About ``n`` log-spaced epochs from 1 to ``epochs`` (early training changes fastest).

    >>> default_checkpoints(40)
    [1, 2, 3, 5, 8, 12, 18, 27, 40]
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    return sorted({int(round(e)) for e in np.geomspace(1, epochs, num=min(n, epochs))})


def _data(seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    ood = y >= ID_CLASSES
    Xtr, Xte, ytr, yte = train_test_split(
        X[~ood], y[~ood], test_size=0.25, random_state=seed, stratify=y[~ood]
    )
    return {"train": (Xtr, ytr), "test": (Xte, yte), "ood": (X[ood], y[ood] - ID_CLASSES)}


def penultimate(mlp: Any, X: np.ndarray) -> np.ndarray:
    """Activations of the last hidden layer of a fitted ``MLPClassifier`` (ReLU or other).

    Parameters
    ----------
    mlp : sklearn.neural_network.MLPClassifier
        A fitted (or partially fitted) classifier.
    X : array (n, n_features)
        Inputs.

    Returns
    -------
    numpy.ndarray (n, hidden_layer_sizes[-1])
    """
    from sklearn.neural_network._base import ACTIVATIONS

    act = ACTIVATIONS[mlp.activation]
    h = np.asarray(X, dtype=np.float64)
    for W, b in zip(mlp.coefs_[:-1], mlp.intercepts_[:-1], strict=True):
        h = h @ W + b
        act(h)  # in place
    return h


def train_to_store(
    store_url: str | Path,
    *,
    epochs: int = 40,
    checkpoints: Sequence[int] | None = None,
    hidden: tuple[int, ...] = (128, 64),
    seed: int = 0,
) -> tuple[Any, dict[int, dict[str, float]]]:
    """Train the demo MLP and write its embeddings at each checkpoint into a new store.

    Parameters
    ----------
    store_url : str or Path
        Where to create the store (replaced if it exists).
    epochs : int
        Training epochs (one ``partial_fit`` pass each).
    checkpoints : sequence of int, optional
        Epochs to capture; default :func:`default_checkpoints`.
    hidden : tuple of int
        Hidden layer widths; the last is the embedding dimension D.
    seed : int
        Seed of the data split and the network.

    Returns
    -------
    (EmbeddingStore, dict)
        The store (one embedding set per checkpoint epoch, splits train /
        test / ood, a classifier per set) and the train / test accuracy per
        checkpoint.
    """
    from sklearn.neural_network import MLPClassifier

    from .store import EmbeddingStore

    cps = sorted(set(checkpoints)) if checkpoints is not None else default_checkpoints(epochs)
    if not cps or cps[0] < 1 or cps[-1] > epochs:
        raise ValueError(f"checkpoints must lie in [1, {epochs}], got {cps}")
    data = _data(seed)
    store = EmbeddingStore.create(
        str(store_url), ID_CLASSES, hidden[-1], chunk_rows=512, overwrite=True,
        class_names=[str(k) for k in range(ID_CLASSES)],
        attrs={"source": "ncdask demo: sklearn load_digits, MLPClassifier",
               "ood": "digits 8, 9 (labels 0, 1)"},
    )
    mlp = MLPClassifier(hidden_layer_sizes=hidden, batch_size=64, learning_rate_init=1e-3,
                        alpha=1e-4, random_state=seed)
    Xtr, ytr = data["train"]
    accuracy: dict[int, dict[str, float]] = {}
    for epoch in range(1, cps[-1] + 1):
        mlp.partial_fit(Xtr, ytr, classes=np.arange(ID_CLASSES))
        if epoch not in cps:
            continue
        for name, (X, y) in data.items():
            store.append(name, penultimate(mlp, X), y, epoch=epoch)
        store.set_classifier(mlp.coefs_[-1].T, mlp.intercepts_[-1], epoch=epoch)
        accuracy[epoch] = {
            "train_acc": float(mlp.score(Xtr, ytr)),
            "test_acc": float(mlp.score(*data["test"])),
        }
    return store, accuracy


def measure_store(store: Any, **measure_kwargs: Any) -> xr.Dataset:
    """Lazy metrics of every epoch set of a store that has a ``train`` split, as an epoch sweep.

    Test and OOD splits named ``test`` / ``ood`` and the set's classifier are
    used where present.

    Parameters
    ----------
    store : EmbeddingStore
        A store with epoch-tagged embedding sets.
    **measure_kwargs
        Passed to :func:`ncdask.measure`.

    Returns
    -------
    xarray.Dataset
        Lazy metrics with an ``epoch`` dim.
    """
    from .metrics import measure
    from .stats import class_stats

    sets = [s for s in store.sets() if "epoch" in s and "train" in store.splits(**s)]
    if not sets:
        raise ValueError(f"{store.url!r} has no epoch sets with a train split")
    stats, weights, bias, test, ood = {}, {}, {}, {}, {}
    for tags in sets:
        e = tags["epoch"]
        stats[e] = class_stats(store.split("train", **tags))
        have = store.splits(**tags)
        test[e] = store.split("test", **tags) if "test" in have else None
        ood[e] = store.split("ood", **tags) if "ood" in have else None
        try:
            weights[e], bias[e] = store.classifier(**tags)
        except KeyError:
            weights[e] = bias[e] = None
    kw: dict[str, Any] = {"dim": "epoch"}
    for name, d in (("weights", weights), ("bias", bias), ("test", test), ("ood", ood)):
        if all(v is not None for v in d.values()):
            kw[name] = d
    kw.update(measure_kwargs)
    return measure(stats, **kw)


def format_table(results: xr.Dataset, columns: Sequence[str] = TABLE) -> str:
    """The scalar metrics of an epoch sweep as a fixed-width text table.

    Parameters
    ----------
    results : xarray.Dataset
        Computed metrics with an ``epoch`` dim.
    columns : sequence of str
        Variables to show (those missing are skipped).

    Returns
    -------
    str
    """
    cols = [c for c in columns if c in results and results[c].dims == ("epoch",)]
    df = results[cols].to_dataframe()
    return df.to_string(float_format=lambda v: f"{v:.4g}")


def run_demo(
    out_dir: str | Path = "ncdask-demo",
    *,
    epochs: int = 40,
    checkpoints: Sequence[int] | None = None,
    hidden: tuple[int, ...] = (128, 64),
    seed: int = 0,
    scheduler: str | None = None,
    quiet: bool = False,
    plots: bool = True,
) -> xr.Dataset:
    """Train a small MLP on digits, store its embeddings per epoch and measure NC.

    Parameters
    ----------
    out_dir : str or Path
        Output folder (created; earlier demo outputs in it are replaced).
    epochs : int
        Training epochs.
    checkpoints : sequence of int, optional
        Epochs to capture; default about ten log-spaced ones.
    hidden : tuple of int
        Hidden layer widths; the last is the embedding dimension.
    seed : int
        Seed of the data split and the network (the run is deterministic).
    scheduler : str, optional
        Where the Dask graphs run (see :func:`ncdask.scheduler.use_scheduler`).
    quiet : bool
        Print nothing.
    plots : bool
        Write ``nc_curves.png`` and ``gram.png``.

    Returns
    -------
    xarray.Dataset
        Computed metrics with an ``epoch`` dim, plus ``train_acc`` and
        ``test_acc``; also written to ``out_dir/results.zarr``.
    """
    from .scheduler import use_scheduler
    from .stats import class_stats

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    t0 = time.perf_counter()
    say(f"training an MLP{hidden} on digits 0-7 for {epochs} epochs ...")
    store, acc = train_to_store(out / "embeddings.zarr", epochs=epochs, checkpoints=checkpoints,
                                hidden=hidden, seed=seed)
    say(f"  {time.perf_counter() - t0:.1f} s; embeddings of {len(acc)} checkpoints in "
        f"{out / 'embeddings.zarr'}")
    with use_scheduler(scheduler, quiet=quiet) as run:
        results = run.compute(measure_store(store), label="measuring every epoch ...")
        last = max(acc)
        gram_stats = run.compute(class_stats(store.split("train", epoch=last))) if plots else None
    ep = list(results["epoch"].values)
    for key in ("train_acc", "test_acc"):
        results[key] = xr.DataArray([acc[int(e)][key] for e in ep], dims="epoch",
                                    attrs={"long_name": key.replace("_", " ").replace("acc",
                                                                                     "accuracy")})
    results.attrs["source"] = "ncdask demo"
    results.to_zarr(out / "results.zarr", mode="w", consolidated=False)
    if plots:
        from .plot import plot_gram, plot_metrics

        plot_metrics(results, "epoch", path=out / "nc_curves.png")
        plot_gram(gram_stats, path=out / "gram.png")
    if not quiet:
        print(format_table(results, (*TABLE, "train_acc", "test_acc")))
        say(f"wrote {out / 'results.zarr'}" + (f", {out / 'nc_curves.png'}, {out / 'gram.png'}"
                                                if plots else "")
            + f" in {time.perf_counter() - t0:.1f} s")
    return results


if __name__ == "__main__":  # pragma: no cover
    run_demo(sys.argv[1] if len(sys.argv) > 1 else "ncdask-demo")
