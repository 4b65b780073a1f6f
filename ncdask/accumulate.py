"""Class statistics streamed from batches, without a store: :class:`StatsAccumulator`.

For a training loop or an evaluation pass whose embeddings nobody wants to
keep (ImageNet's 1.28M × 2048 is 10 GB of float32 per layer and
checkpoint): each batch is folded into dense per-class accumulators, exactly
and without cancellation (:mod:`ncdask.kernels.stream`: each class shifted
by its first row, the shifts removed once at the end), so :meth:`result` equals
``class_stats(...).compute()`` on the same rows to rounding, whatever the
batch boundaries. Accumulators of data-parallel ranks merge exactly
(:meth:`merge`, or :func:`ncdask.merge_stats` on their results).

Memory: K×D sums and a D×D scatter in the accumulation dtype (K=1000,
D=2048 in float64: 16 MiB + 32 MiB), plus a row buffer of at most
``BUFFER_BYTES``. Batches stay on their device: CuPy arrays and CUDA tensors
(through DLPack, when CuPy is installed) are accumulated on the GPU.

Why a row buffer: a training batch is small, and folding each one costs a
fixed ~0.6 ms of array calls (unique, sparse class sums, bincounts, a small
scatter GEMM) whatever its size. Measured with
``python benchmarks/bench_accumulate.py`` on the 2-core machine, the demo's
64-wide MLP at batch 256: the unbuffered updates of its 5 hidden layers took
7.5× its forward pass. Batches are now checked at once (a bad one still
raises and adds nothing) and copied into a buffer of the accumulation dtype,
which is folded in when full, so the fixed cost is paid once per few thousand
rows; the figures after the change are in the benchmark's results file.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from ncdask.metrics.inputs import as_array
from ncdask.store.setkey import SetKey
from ncdask._validate import check_ignore_index
from ncdask.kernels import stats as K
from ncdask.kernels import stream as KS
from ncdask.kernels._xp import array_namespace, to_numpy

BUFFER_BYTES = 32 * 2**20
"""Largest row buffer of one accumulator (rows × D × itemsize), bytes."""
MAX_BUFFER_ROWS = 8192


class StatsAccumulator:
    """Per-class statistics of batches fed one at a time; exact and mergeable.

    Parameters
    ----------
    n_classes : int
        K; labels must lie in ``[0, K)`` (or be ``ignore_index``).
    dim : int
        D, the width of every batch.
    dtype : dtype, default "float64"
        Accumulation dtype.
    global_mean : {"unweighted", "weighted"}
        As in :func:`ncdask.class_stats`.
    ignore_index : int, optional
        Label of samples to leave out (PyTorch's ``-100`` padding).
    allow_nonfinite : bool, default False
        Accept NaN/inf embeddings (they make the statistics NaN); by default
        a batch holding them is refused and nothing of it is added.
    buffer_rows : int, optional
        Rows gathered before they are folded in (default: up to 8192 rows in
        at most 32 MiB); ``0`` folds every batch at once. The result does not
        depend on it beyond rounding.

    Examples
    --------
    >>> import numpy as np, ncdask
    >>> rng = np.random.default_rng(0)
    >>> X, y = rng.normal(size=(100, 4)), np.arange(100) % 3
    >>> acc = ncdask.StatsAccumulator(3, 4)
    >>> for i in range(0, 100, 32):
    ...     _ = acc.update(X[i:i + 32], y[i:i + 32])
    >>> st = acc.result()
    >>> st.counts.values.tolist(), bool(np.allclose(st.means[0], X[y == 0].mean(0)))
    ([34, 33, 33], True)
    """

    def __init__(
        self,
        n_classes: int,
        dim: int,
        *,
        dtype: Any = "float64",
        global_mean: str = "unweighted",
        ignore_index: int | None = None,
        allow_nonfinite: bool = False,
        buffer_rows: int | None = None,
    ) -> None:
        for name, v in (("n_classes", n_classes), ("dim", dim)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if global_mean not in ("unweighted", "weighted"):
            raise ValueError(
                f"global_mean must be 'unweighted' or 'weighted', got {global_mean!r}")
        self.n_classes, self.dim = int(n_classes), int(dim)
        self.dtype = np.dtype(dtype)
        self.global_mean = global_mean
        self.ignore_index = check_ignore_index(ignore_index, self.n_classes)
        self.allow_nonfinite = bool(allow_nonfinite)
        if buffer_rows is None:
            buffer_rows = max(1, min(MAX_BUFFER_ROWS,
                                     BUFFER_BYTES // (self.dim * self.dtype.itemsize)))
        if isinstance(buffer_rows, bool) or not isinstance(buffer_rows, (int, np.integer)) \
                or buffer_rows < 0:
            raise ValueError(f"buffer_rows must be a non-negative integer, got {buffer_rows!r}")
        self.buffer_rows = int(buffer_rows)
        self._acc: dict[str, Any] | None = None
        self._buf: tuple[Any, Any] | None = None  # (rows × D, labels), allocated when first used
        self._n_buf = 0
        self.n_batches = 0

    def update(self, X: Any, y: Any) -> StatsAccumulator:
        """Add a batch: ``X`` (n, D) embeddings and ``y`` (n,) integer labels.

        NumPy, CuPy or torch (CPU or CUDA). A bad batch (shape, labels out of
        range, NaN without ``allow_nonfinite``) raises and adds nothing.
        Returns the accumulator.
        """
        X, y = as_array(X), as_array(y)
        if X.ndim != 2 or X.shape[1] != self.dim:
            raise ValueError(f"X has shape {tuple(X.shape)}, expected (n, {self.dim})")
        if y.ndim != 1 or y.shape[0] != X.shape[0]:
            raise ValueError(f"y has shape {tuple(y.shape)}, expected ({X.shape[0]},)")
        xp = array_namespace(X)
        if np.dtype(y.dtype).kind not in "iu":
            raise TypeError(f"labels must be integers, got dtype {y.dtype}")
        if X.shape[0] == 0:
            return self
        if not self.allow_nonfinite and not bool(xp.all(xp.isfinite(X))):
            raise ValueError("X holds NaN or inf values (pass allow_nonfinite=True to keep "
                             "them); nothing of this batch was added")
        if self._acc is not None and array_namespace(self._acc["sums"]) is not xp:
            xp = array_namespace(self._acc["sums"])  # keep to the first batch's device
            X, y = xp.asarray(to_numpy(X)), xp.asarray(to_numpy(y))
        y = xp.asarray(y).astype(xp.int64)
        keep = K.check_labels(y, self.n_classes, self.ignore_index, xp)  # before any state change
        if not bool(xp.all(keep)):
            X, y = X[keep], y[keep]
        if self._acc is None:
            self._acc = KS.empty(self.n_classes, self.dim, self.dtype, xp)
        self.n_batches += 1
        n = int(y.shape[0])
        if n > self.buffer_rows - self._n_buf:
            self.flush()
        if n >= self.buffer_rows:
            KS.update(self._acc, X, y)
            return self
        if self._buf is None:
            self._buf = (xp.empty((self.buffer_rows, self.dim), dtype=self.dtype),
                         xp.empty(self.buffer_rows, dtype=xp.int64))
        i = self._n_buf
        self._buf[0][i:i + n] = X
        self._buf[1][i:i + n] = y
        self._n_buf += n
        return self

    def flush(self) -> StatsAccumulator:
        """Fold the buffered rows into the statistics (done by :meth:`result` and
        :meth:`merge`; call it before pickling to keep the pickle small)."""
        if self._n_buf:
            n, self._n_buf = self._n_buf, 0
            KS.update(self._acc, self._buf[0][:n], self._buf[1][:n])
        return self

    def merge(self, other: StatsAccumulator) -> StatsAccumulator:
        """Add another accumulator's data (another rank's) into this one, exactly."""
        if not isinstance(other, StatsAccumulator):
            raise TypeError(f"can only merge a StatsAccumulator, got {type(other).__name__}")
        for key in ("n_classes", "dim", "dtype", "global_mean", "ignore_index"):
            if getattr(self, key) != getattr(other, key):
                raise ValueError(f"cannot merge accumulators with different {key}: "
                                 f"{getattr(self, key)!r} vs {getattr(other, key)!r}")
        self.flush()
        other.flush()
        if other._acc is not None:
            theirs = KS.partial(other._acc)
            if self._acc is None:
                self._acc = KS.from_partial(theirs)
            else:
                xp = array_namespace(self._acc["sums"])
                theirs = {k: xp.asarray(to_numpy(v)) for k, v in theirs.items()}
                self._acc = KS.from_partial(K.merge_partials(KS.partial(self._acc), theirs))
        self.n_batches += other.n_batches
        return self

    def result(self, *, tile_size: int | None = None) -> xr.Dataset:
        """The statistics so far: the Dataset :func:`ncdask.class_stats` computes.

        ``counts``, ``means``, ``var_norms``, ``global_mean``, ``within_cov``
        and ``n_samples`` in memory (on the batches' device), with the same
        attrs; ready for :func:`ncdask.measure`, :func:`ncdask.merge_stats`
        and :func:`ncdask.save_stats`.
        """
        import dask

        from ncdask.graph.pairwise import default_tile_size
        from ncdask.graph.tiled_stats import assemble, finish_dense
        from ncdask.stats.core import labelled_stats

        if self._acc is None:
            raise ValueError("no batch was added yet")
        acc = KS.partial(self.flush()._acc)
        fin = finish_dense(acc, None, None)
        Kc, D = self.n_classes, self.dim
        T = min(int(tile_size or default_tile_size(Kc, D)), Kc)
        per_group = [{"means": [(dask.delayed(fin["means"]), Kc)],
                      **{k: dask.delayed(fin[k]) for k in ("var_norms", "scatter", "terms")}}]
        arrays = assemble(per_group, [(0, Kc)], D, T, self.dtype, fin["means"], self.global_mean)
        counts = np.asarray(to_numpy(acc["counts"])).astype(np.int64)
        attrs = {} if self.ignore_index is None else {"ignore_index": self.ignore_index}
        return labelled_stats(arrays, counts, global_mean=self.global_mean, attrs=attrs).compute(
            scheduler="sync")


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

    ``capture(model, loader, StatsSink(K), layers=[...], epoch=e)`` runs the
    same forward pass and hooks as with a store, but each layer's batches go
    to a :class:`StatsAccumulator` keyed by ``(layer, epoch)``; nothing is
    written. :meth:`stats` gives one set's statistics, :meth:`sweep` measures
    every set along ``epoch`` or ``layer`` with the classifier that
    ``capture(..., classifier=)`` recorded.

    NC4 and NC5 need the class means first: capture the train split (with
    ``classifier=``), then the test split and the OOD split (``labels=False``
    allowed) into the same sink. Their batches go to an
    :class:`ncdask.EvalAccumulator` of that set, and :meth:`sweep` gives
    every metric.

    Parameters
    ----------
    n_classes : int
    url : str
        A name for messages (default ``"<stats sink>"``).
    train_split, test_split, ood_split : str
        Split names of the three roles (default "train", "test", "ood").
    **accumulator_options
        Passed to every :class:`StatsAccumulator` (``dtype=``,
        ``global_mean=``, ``ignore_index=``).
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

    # ncdask.store.SplitSource, the part of the EmbeddingStore interface capture uses
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
