"""The demo behind ``ncdask demo``: watch Neural Collapse happen while a small MLP trains.

Digits 0-7 of ``load_digits`` are the classes (75/25 train/test), 8 and 9 an unlabelled OOD
split. A NumPy MLP trains into the terminal phase (label smoothing, Guo et al. 2024); at ~10
log-spaced epochs its penultimate activations and last layer go into one store, measured as
an epoch sweep. Needs the ``demo`` extra; deterministic for a seed."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

ID_CLASSES = 8  # digits 0..7 in distribution, 8 and 9 out of distribution
TABLE = ("nc1_pinv", "nc1_cdnv", "nc2_etf_err", "nc3_dual_err", "nc4_agree", "nc5_ood_dev")
#: Metrics drawn in ``nc_curves.png`` (with an accuracy panel), in this order.
FIGURE = ("nc1_pinv", "nc1_cdnv", "nc2_etf_err", "nc2_equinorm", "nc2_max_angle",
          "nc3_dual_err", "nc4_agree", "nc5_ood_dev")
#: Training epochs of the demo (past zero training error, into the terminal phase).
EPOCHS = 300
#: Hidden layer widths; the last is the embedding dimension D.
HIDDEN = (64, 64, 64, 64, 128)
#: The rest of the training recipe (see :func:`train_to_store`).
RECIPE: dict[str, float] = {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4,
                            "label_smoothing": 0.1, "batch_size": 128}


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
    Xtr, Xte, ytr, yte = train_test_split(X[~ood], y[~ood], test_size=0.25, random_state=seed,
                                          stratify=y[~ood])
    # digits 8 and 9 belong to none of the model's classes: an unlabelled OOD split
    return {"train": (Xtr, ytr), "test": (Xte, yte), "ood": (X[ood], None)}


class MLP:
    """A ReLU MLP in NumPy (float32), layer widths ``sizes`` from input to logits, laid out
    as scikit-learn's ``MLPClassifier`` (:func:`penultimate` reads either); He-normal start."""

    activation = "relu"

    def __init__(self, sizes: Sequence[int], rng: np.random.Generator) -> None:
        pairs = list(zip(sizes[:-1], sizes[1:], strict=True))
        self.coefs_ = [(rng.standard_normal((a, b)) * np.sqrt(2.0 / a)).astype(np.float32)
                       for a, b in pairs]
        self.intercepts_ = [np.zeros(b, dtype=np.float32) for _, b in pairs]
        self._velocity = [np.zeros_like(p) for p in self.coefs_ + self.intercepts_]

    def _forward(self, X: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        h = [np.asarray(X, dtype=np.float32)]
        for W, b in zip(self.coefs_[:-1], self.intercepts_[:-1], strict=True):
            h.append(np.maximum(h[-1] @ W + b, 0))
        return h, h[-1] @ self.coefs_[-1] + self.intercepts_[-1]

    def step(self, X: np.ndarray, targets: np.ndarray, *, lr: float, momentum: float,
             weight_decay: float) -> None:
        """One SGD step on the mean cross-entropy against target probabilities (n, K), in
        PyTorch's convention (``v = momentum v + g``; weight decay on the matrices only)."""
        h, z = self._forward(X)
        p = np.exp(z - z.max(axis=1, keepdims=True))
        d = (p / p.sum(axis=1, keepdims=True) - targets) / len(X)
        L = len(self.coefs_)
        grads: list[np.ndarray] = [np.empty(0)] * (2 * L)
        for i in reversed(range(L)):
            grads[i] = h[i].T @ d + weight_decay * self.coefs_[i]
            grads[L + i] = d.sum(axis=0)
            if i:
                d = (d @ self.coefs_[i].T) * (h[i] > 0)
        for param, v, g in zip(self.coefs_ + self.intercepts_, self._velocity, grads,
                               strict=True):
            v *= momentum
            v += g
            param -= lr * v


def penultimate(mlp: Any, X: np.ndarray) -> np.ndarray:
    """Last hidden layer activations (float64) of an :class:`MLP` or fitted ``MLPClassifier``."""
    if mlp.activation == "relu":
        def act(h: np.ndarray) -> None:
            np.maximum(h, 0, out=h)
    else:
        from sklearn.neural_network._base import ACTIVATIONS

        act = ACTIVATIONS[mlp.activation]
    h = np.asarray(X, dtype=np.float64)
    for W, b in zip(mlp.coefs_[:-1], mlp.intercepts_[:-1], strict=True):
        h = h @ np.asarray(W, dtype=np.float64) + b
        act(h)  # in place
    return h


def cosine_lr(epoch: int, epochs: int, lr: float) -> float:
    """Learning rate of an epoch: ``lr`` at epoch 1, annealed to 0 on a half cosine.

    >>> cosine_lr(1, 300, 0.1), round(cosine_lr(151, 300, 0.1), 6)
    (0.1, 0.05)
    """
    return 0.5 * lr * (1.0 + float(np.cos(np.pi * (epoch - 1) / epochs)))


def _one_blas_thread() -> Any:
    """Single-threaded BLAS: for these small matrices threads cost more than they save."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - scikit-learn depends on threadpoolctl
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")



def train_to_store(
    store_url: str | Path, *, epochs: int | None = None,
    checkpoints: Sequence[int] | None = None, hidden: tuple[int, ...] = HIDDEN, seed: int = 0,
    lr: float = RECIPE["lr"], momentum: float = RECIPE["momentum"],
    weight_decay: float = RECIPE["weight_decay"],
    label_smoothing: float = RECIPE["label_smoothing"],
    batch_size: int = int(RECIPE["batch_size"]),
) -> tuple[Any, dict[int, dict[str, float]]]:
    """Train the demo MLP, writing its embeddings at each checkpoint into a new store.

    Parameters
    ----------
    store_url : str or Path
        Where to create the store (replaced if it exists).
    epochs : int, optional
        Training epochs; default :data:`EPOCHS`.
    checkpoints : sequence of int, optional
        Epochs to capture; default :func:`default_checkpoints`.
    hidden, seed, lr, momentum, weight_decay, label_smoothing, batch_size
        Hidden widths (the last is D), the seed, and the SGD :data:`RECIPE`.

    Returns
    -------
    (EmbeddingStore, dict)
        The store (a set per checkpoint) and the train / test accuracy per checkpoint.
    """
    from ncdask.store.embedding import EmbeddingStore

    epochs = EPOCHS if epochs is None else int(epochs)
    cps = sorted(set(checkpoints)) if checkpoints is not None else default_checkpoints(epochs)
    if not cps or cps[0] < 1 or cps[-1] > epochs:
        raise ValueError(f"checkpoints must lie in [1, {epochs}], got {cps}")
    data = _data(seed)
    store = EmbeddingStore.create(
        str(store_url), ID_CLASSES, hidden[-1], chunk_rows=512, overwrite=True,
        class_names=[str(k) for k in range(ID_CLASSES)],
        attrs={"source": "ncdask demo: sklearn load_digits, NumPy ReLU MLP",
               "ood": "digits 8, 9 (stored unlabelled)"})
    rng = np.random.default_rng(seed)
    Xtr, ytr = data["train"]
    mlp = MLP((Xtr.shape[1], *hidden, ID_CLASSES), rng)
    targets = np.full((ID_CLASSES, ID_CLASSES), label_smoothing / ID_CLASSES, np.float32)
    targets += np.eye(ID_CLASSES, dtype=np.float32) * (1 - label_smoothing)
    Xtr32, Ttr = Xtr.astype(np.float32), targets[ytr]
    accuracy: dict[int, dict[str, float]] = {}
    with _one_blas_thread():
        for epoch in range(1, cps[-1] + 1):
            eta = cosine_lr(epoch, epochs, lr)
            order = rng.permutation(len(Xtr))
            for start in range(0, len(order), batch_size):
                batch = order[start:start + batch_size]
                mlp.step(Xtr32[batch], Ttr[batch], lr=eta, momentum=momentum,
                         weight_decay=weight_decay)
            if epoch not in cps:
                continue
            W, b = mlp.coefs_[-1].astype(np.float64), mlp.intercepts_[-1].astype(np.float64)
            acc = {}
            for name, (X, y) in data.items():
                H = penultimate(mlp, X)
                store.append(name, H, y, epoch=epoch)
                if name != "ood":
                    acc[f"{name}_acc"] = float(np.mean(np.argmax(H @ W + b, axis=1) == y))
            store.set_classifier(W.T, b, epoch=epoch)
            accuracy[epoch] = acc
    return store, accuracy


def collapse_summary(results: xr.Dataset) -> dict[str, float]:
    """``{name: first / last}`` of the NC1-NC3 errors over an epoch sweep, and
    ``tpt_epoch``: the first epoch with train accuracy 1 (NaN if never reached)."""
    first, last = results.isel(epoch=0), results.isel(epoch=-1)
    out = {k: float(first[k]) / float(last[k])
           for k in ("nc1_pinv", "nc1_cdnv", "nc2_etf_err", "nc3_dual_err") if k in results}
    tpt = float("nan")
    if "train_acc" in results:
        hit = np.nonzero(results["train_acc"].values >= 1.0)[0]
        tpt = float(results["epoch"].values[hit[0]]) if hit.size else tpt
    out["tpt_epoch"] = tpt
    return out


def summary_line(results: xr.Dataset) -> str:
    """One line: how far the NC1-NC3 errors fell, where NC4 and NC5 went, when train accuracy
    reached 100 %."""
    s = collapse_summary(results)
    e0, e1 = int(results["epoch"].values[0]), int(results["epoch"].values[-1])
    falls = ", ".join(f"{k} {v:.3g}x" for k, v in s.items() if k != "tpt_epoch")
    went = [f"{k} {float(results[k][0]):.3g} -> {float(results[k][-1]):.3g}"
            for k in ("nc4_agree", "nc5_ood_dev") if k in results]
    tpt = (f"train accuracy 100 % from epoch {s['tpt_epoch']:.0f}"
           if np.isfinite(s["tpt_epoch"]) else "train accuracy never reached 100 %")
    return f"from epoch {e0} to {e1} these fell by: {falls}; " + "; ".join([*went, tpt])


def outputs(out_dir: str | Path, plots: bool = True) -> list[Path]:
    """What :func:`run_demo` writes in ``out_dir``."""
    out = Path(out_dir)
    pngs = [out / "nc_curves.png", out / "gram.png"] if plots else []
    return [out / "embeddings.zarr", out / "results.zarr", *pngs]


def run_demo(out_dir: str | Path = "ncdask-demo", *, epochs: int | None = EPOCHS,
             checkpoints: Sequence[int] | None = None, hidden: tuple[int, ...] = HIDDEN,
             seed: int = 0, scheduler: str | None = None, quiet: bool = False,
             plots: bool = True) -> xr.Dataset:
    """Train a small MLP on digits into the terminal phase, store its embeddings, measure NC.

    Parameters
    ----------
    out_dir : str or Path
        Output folder (earlier demo outputs in it are replaced): ``embeddings.zarr``,
        ``results.zarr``, and with ``plots`` ``nc_curves.png`` and ``gram.png``.
    epochs, checkpoints, hidden, seed
        As :func:`train_to_store`.
    scheduler : str, optional
        As :func:`ncdask.scheduler.use_scheduler`.
    quiet : bool
    plots : bool

    Returns
    -------
    xarray.Dataset
        Computed metrics along ``epoch`` with ``train_acc`` and ``test_acc``.
    """
    from ncdask.results import save_results
    from ncdask.scheduler import use_scheduler
    from ncdask.stats import class_stats
    from ncdask.sweeps import sweep

    epochs = EPOCHS if epochs is None else int(epochs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    t0 = time.perf_counter()
    say(f"training an MLP{hidden} on digits 0-7 for {epochs} epochs ...")
    store, acc = train_to_store(out / "embeddings.zarr", epochs=epochs, checkpoints=checkpoints,
                                hidden=hidden, seed=seed)
    say(f"  {time.perf_counter() - t0:.1f} s; embeddings of {len(acc)} checkpoints in "
        f"{out / 'embeddings.zarr'}")
    ends = (min(acc), max(acc))
    with use_scheduler(scheduler, quiet=quiet) as run:
        lazy = sweep(store, over="epoch", test="test", ood="ood")
        results = run.compute(lazy, label="measuring every epoch ...")
        gram_stats = ({e: run.compute(class_stats(store.split("train", epoch=e))) for e in ends}
                      if plots else None)
    ep = list(results["epoch"].values)
    for key in ("train_acc", "test_acc"):
        results[key] = xr.DataArray([acc[int(e)][key] for e in ep], dims="epoch",
                                    attrs={"long_name": key.replace("_acc", " accuracy")})
    results.attrs["source"] = "ncdask demo"
    results.attrs["training"] = {"epochs": epochs, "hidden": list(hidden), "seed": seed,
                                 **RECIPE}
    save_results(results, str(out / "results.zarr"), overwrite=True)  # the demo's own folder
    if plots:
        from ncdask.plot import plot_gram, plot_metrics

        plot_metrics(results, "epoch", [m for m in FIGURE if m in results],
                     path=out / "nc_curves.png")
        plot_gram(gram_stats, dim="epoch", class_names=store.class_names,
                  path=out / "gram.png")
    say(f"wrote {', '.join(map(str, outputs(out, plots)[1:]))} in "
        f"{time.perf_counter() - t0:.1f} s")
    return results
