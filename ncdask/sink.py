"""Where :func:`ncdask.capture` puts statistics instead of embeddings: :class:`StatsSink`."""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from ncdask.accumulate import StatsAccumulator
from ncdask.kernels._xp import to_numpy
from ncdask.store.setkey import SetKey


class _SinkWriter:
    """What :func:`ncdask.hooks` appends to: one accumulator (a store writer's stand-in)."""

    def __init__(self, update: Any, *, labelled: bool = True) -> None:
        self.update, self.labelled = update, labelled
        self.rows = 0

    def append(self, X: Any, y: Any = None) -> None:
        if y is None and self.labelled:
            raise ValueError("statistics need labels: capture(..., labels=True)")
        self.update(X, y)
        self.rows += int(X.shape[0])

    def __enter__(self) -> _SinkWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


class StatsSink:
    """Where :func:`ncdask.hooks` puts statistics instead of embeddings.

    A :class:`StatsAccumulator` per ``(layer, epoch)``; nothing is written. For NC4 and NC5
    capture the train split first, then test and OOD (an :class:`ncdask.EvalAccumulator` each).

    Parameters
    ----------
    n_classes : int
    url : str
        A name for messages.
    train_split, test_split, ood_split : str
        Split names of the three roles.
    **accumulator_options
        Passed to every :class:`StatsAccumulator`.
    """

    def __init__(self, n_classes: int, *, url: str = "<stats sink>", train_split: str = "train",
                 test_split: str = "test", ood_split: str = "ood",
                 **accumulator_options: Any) -> None:
        self.n_classes = int(n_classes)
        self.url = url
        self.roles = {"train": train_split, "test": test_split, "ood": ood_split}
        self._options = accumulator_options
        # keyed by (split, set) and by set
        self._acc: dict[tuple[str, SetKey], StatsAccumulator] = {}
        self._eval: dict[SetKey, Any] = {}
        self._eval_rows: dict[tuple[str, SetKey], int] = {}
        self._clf: dict[SetKey, tuple[Any, Any]] = {}
        self._depth: dict[SetKey, int] = {}

    # the part of the EmbeddingStore interface that capture uses
    def splits(self, *, layer: str | None = None, epoch: int | None = None) -> list[str]:
        key = SetKey(layer, epoch)
        return sorted({s for s, k in [*self._acc, *self._eval_rows] if k == key})

    def dim_of(self, *, layer: str | None = None, epoch: int | None = None) -> int:
        key = SetKey(layer, epoch)
        for (_, k), a in self._acc.items():
            if k == key:
                return a.dim
        raise KeyError(f"no set layer={layer}, epoch={epoch}")

    def split(self, name: str, *, layer: str | None = None,
              epoch: int | None = None) -> xr.Dataset:
        key = (name, SetKey(layer, epoch))
        a = self._acc.get(key)
        if a is None:
            n = self._eval_rows.get(key, 0)
        else:
            n = 0 if a.flush()._acc is None else int(to_numpy(a._acc["counts"]).sum())
        return xr.Dataset(coords={"sample": np.arange(n)})

    def n_rows(self, split: str, *, layer: str | None = None, epoch: int | None = None) -> int:
        if split not in self.splits(layer=layer, epoch=epoch):
            raise KeyError(f"no split {split!r} of layer={layer}, epoch={epoch}")
        return int(self.split(split, layer=layer, epoch=epoch).sizes["sample"])

    def writer(self, split: str, *, layer: str | None = None, epoch: int | None = None,
               allow_nonfinite: bool = False, dim: int | None = None,
               labelled: bool = True) -> _SinkWriter:
        sk = SetKey(layer, epoch)
        key = (split, sk)
        if split in (self.roles["test"], self.roles["ood"]):
            ev = self._evaluator(sk, allow_nonfinite)
            is_test = split == self.roles["test"]
            if is_test and not labelled:
                raise ValueError("the test split needs labels: NC4 counts agreement per class")
            if is_test and ev.weights is None:
                raise ValueError(f"no classifier for layer={sk.layer}, epoch={sk.epoch}: capture "
                                 f"the {self.roles['train']!r} split with classifier= first")
            update = ev.update_test if is_test else ev.update_ood

            def counted(X: Any, y: Any) -> None:
                update(X, y)
                self._eval_rows[key] = self._eval_rows.get(key, 0) + int(X.shape[0])

            return _SinkWriter(counted, labelled=is_test)
        if not labelled:
            raise ValueError("a StatsSink keeps class statistics: unlabelled data has none "
                             f"(except in its OOD split, {self.roles['ood']!r})")
        if key not in self._acc:
            self._acc[key] = StatsAccumulator(self.n_classes, int(dim),
                                              allow_nonfinite=allow_nonfinite, **self._options)
        return _SinkWriter(self._acc[key].update)

    def _evaluator(self, key: SetKey, allow_nonfinite: bool) -> Any:
        from ncdask.metrics.evaluate import EvalAccumulator

        if key not in self._eval:
            train = (self.roles["train"], key)
            if train not in self._acc:
                raise ValueError(
                    f"capture the {self.roles['train']!r} split of layer={key.layer}, "
                    f"epoch={key.epoch} first: test decisions and the OOD measures need its "
                    "class means")
            W, b = self._clf.get(key, (None, None))
            self._eval[key] = EvalAccumulator(self._acc[train].result(), W, b,
                                              allow_nonfinite=allow_nonfinite)
        return self._eval[key]

    def create_set(self, *, layer: str | None = None, epoch: int | None = None,
                   dim: int | None = None, depth: int | None = None) -> int | None:
        """Record a set's ``depth`` in its model (its statistics come with its first batch)."""
        if depth is not None:
            self._depth.setdefault(SetKey(layer, epoch), int(depth))
        return dim

    def depth(self, *, layer: str | None = None, epoch: int | None = None) -> int | None:
        return self._depth.get(SetKey(layer, epoch))

    def set_classifier(self, W: Any, b: Any = None, *, layer: str | None = None,
                       epoch: int | None = None) -> None:
        W = np.asarray(to_numpy(W), dtype=np.float64)
        self._clf[SetKey(layer, epoch)] = (W, None if b is None else
                                           np.asarray(to_numpy(b), dtype=np.float64))

    # results
    def sets(self) -> list[dict[str, Any]]:
        """The ``{layer, epoch}`` tags of every set with statistics."""
        keys = sorted({k for _, k in self._acc}, key=lambda k: (str(k.layer), k.epoch or -1))
        return [k.tags for k in keys]

    def stats(self, split: str = "train", *, layer: str | None = None,
              epoch: int | None = None) -> xr.Dataset:
        """The statistics of one set's split (:meth:`StatsAccumulator.result`)."""
        try:
            return self._acc[(split, SetKey(layer, epoch))].result()
        except KeyError:
            raise KeyError(f"no statistics for split {split!r} of layer={layer}, "
                           f"epoch={epoch}; sets: {self.sets()}") from None

    def summaries(self, *, layer: str | None = None,
                  epoch: int | None = None) -> dict[str, xr.Dataset]:
        """The set's streamed ``test`` / ``ood`` summaries (those captured) for ``measure``."""
        key = SetKey(layer, epoch)
        ev = self._eval.get(key)
        out: dict[str, xr.Dataset] = {}
        if ev is not None:
            if self._eval_rows.get((self.roles["test"], key)):
                out["test"] = ev.test_summary()
            if self._eval_rows.get((self.roles["ood"], key)):
                out["ood"] = ev.ood_summary()
        return out

    def classifier(self, *, layer: str | None = None, epoch: int | None = None,
                   lazy: bool = False) -> tuple[Any, Any]:
        """The ``(W, b)`` recorded for a set by ``capture(..., classifier=)``; KeyError if none."""
        try:
            return self._clf[SetKey(layer, epoch)]
        except KeyError:
            raise KeyError(f"no classifier for layer={layer}, epoch={epoch}") from None

    def sweep(self, over: str = "epoch", split: str = "train", *, layer: str | None = None,
              epoch: int | None = None, **measure_kwargs: Any) -> xr.Dataset:
        """Every set's metrics along ``over``, computed: :func:`ncdask.sweep` over this sink
        (NC4 and NC5 where a set's test and OOD splits were captured)."""
        from ncdask.sweeps import sweep

        train = split == self.roles["train"]
        return sweep(self, over, split, layer=layer, epoch=epoch, compute=True,
                     test=self.roles["test"] if train else None,
                     ood=self.roles["ood"] if train else None, **measure_kwargs)
