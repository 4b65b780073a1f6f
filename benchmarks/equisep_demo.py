"""The law of equi-separation (He & Su 2023) on the demo's network.

Trains the demo's NumPy ReLU MLP 64-64-64-64-128 on digits 0-7 (``ncdask demo``'s data and
recipe), copies it into a PyTorch ``nn.Sequential`` at a few epochs and captures every hidden
layer's activations of the train split into one store with ``ncdask.capture`` (layers
named so that their name order is not the model's). A sweep over layers and epochs gives
the separation fuzziness D_l per layer; ``ncdask.equiseparation`` fits its decay ratio ρ
and R² per epoch. Writes ``benchmarks/results/equisep_demo.json`` (and a figure with --png).

    python benchmarks/equisep_demo.py [--epochs 300] [--png equisep.png]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import ncdask
from ncdask._demo import demo

OUT = Path(__file__).resolve().parent / "results" / "equisep_demo.json"
#: Set names of the hidden layers, by depth (their name order is not the model's order).
NAMES = ("relu", "proj", "mix", "deep", "penult")


def as_torch(mlp: demo.MLP) -> nn.Sequential:
    """The NumPy MLP as ``Linear, ReLU, ..., Linear``: the same function."""
    mods: list[nn.Module] = []
    for i, (W, b) in enumerate(zip(mlp.coefs_, mlp.intercepts_, strict=True)):
        lin = nn.Linear(*W.shape)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(W.T.copy()))
            lin.bias.copy_(torch.from_numpy(b))
        mods += [lin] if i == len(mlp.coefs_) - 1 else [lin, nn.ReLU()]
    return nn.Sequential(*mods)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=demo.EPOCHS)
    ap.add_argument("--capture-at", type=int, nargs="+", default=[0, 10, 100, demo.EPOCHS])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--png", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    data = demo._data(args.seed)
    Xtr, ytr = data["train"]
    rng = np.random.default_rng(args.seed)
    K, r = demo.ID_CLASSES, demo.RECIPE
    mlp = demo.MLP((Xtr.shape[1], *demo.HIDDEN, K), rng)
    targets = np.full((K, K), r["label_smoothing"] / K, np.float32)
    targets += np.eye(K, dtype=np.float32) * (1 - r["label_smoothing"])
    X32, T = Xtr.astype(np.float32), targets[ytr]
    batch = [(torch.from_numpy(X32), torch.from_numpy(ytr))]
    layers = {n: (str(2 * i + 1), "output") for i, n in enumerate(NAMES)}  # the ReLUs
    with tempfile.TemporaryDirectory(prefix="ncdask-equisep-") as tmp:
        store = ncdask.EmbeddingStore.create(f"{tmp}/s.zarr", K, demo.HIDDEN[-1],
                                             dtype="float64")
        with demo._one_blas_thread():
            for epoch in range(max(args.capture_at) + 1):
                if epoch:
                    eta = demo.cosine_lr(epoch, args.epochs, r["lr"])
                    order = rng.permutation(len(Xtr))
                    for s in range(0, len(order), int(r["batch_size"])):
                        b = order[s:s + int(r["batch_size"])]
                        mlp.step(X32[b], T[b], lr=eta, momentum=r["momentum"],
                                 weight_decay=r["weight_decay"])
                if epoch in args.capture_at:
                    net = as_torch(mlp).double()
                    ncdask.capture(net, [(x.double(), y) for x, y in batch], store,
                                   layers=layers, epoch=epoch)
        pen = store.split("train", layer="penult", epoch=max(args.capture_at)).embeddings
        assert np.allclose(pen.values, demo.penultimate(mlp, Xtr), atol=1e-9)
        grid = ncdask.sweep(store, over=("layer", "epoch"), metrics=["nc1_pinv"], compute=True)
        fit = ncdask.equiseparation(grid).compute()
        if args.png:
            from ncdask.plot import plot_equiseparation

            plot_equiseparation(fit, path=args.png)
    out = {
        "network": f"demo NumPy ReLU MLP, hidden {'-'.join(map(str, demo.HIDDEN))}, {K} classes, "
                   "digits 0-7 train split, captured as torch (float64)",
        "layers_by_depth": [str(v) for v in fit.layer.values],
        "epochs": [int(e) for e in fit.epoch.values],
        "fuzziness": {int(e): [float(v) for v in fit.fuzziness.sel(epoch=e).values]
                      for e in fit.epoch.values},
        "rho": {int(e): float(fit.rho.sel(epoch=e)) for e in fit.epoch.values},
        "r2": {int(e): float(fit.r2.sel(epoch=e)) for e in fit.epoch.values},
        "formula": fit.attrs["formula"], "reference": fit.attrs["reference"],
        "seconds": round(time.perf_counter() - t0, 1),
    }
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(out, indent=1) + "\n")
    for e in out["epochs"]:
        print(f"epoch {e:4d}  rho = {out['rho'][e]:.4f}  R^2 = {out['r2'][e]:.4f}  D_l = "
              + " ".join(f"{v:.3g}" for v in out["fuzziness"][e]))
    print(f"wrote {OUT} ({out['seconds']} s)")


if __name__ == "__main__":
    main()
