"""NC4 and NC5 from streamed batches, once the class means are known: :class:`EvalAccumulator`.

The second pass of a store-free measurement: its summaries go to :func:`ncdask.measure` as
``test=`` and ``ood=``."""

from __future__ import annotations

from typing import Any

import dask
import numpy as np
import xarray as xr

from ncdask.accumulate import StatsAccumulator
from ncdask.kernels import decisions as Dk
from ncdask.kernels._xp import array_namespace, as_array, to_numpy
from ncdask.metrics.api import measure
from ncdask.metrics.inputs import check_stats, class_inputs, kept_classes
from ncdask.metrics.summary import options_digest, row_digests, same_fingerprint

__all__ = ["EvalAccumulator"]

#: Logits (rows × classes) of one decision tile: 4 Mi float64 entries, 32 MiB.
TILE_ENTRIES = 2**22


class EvalAccumulator:
    """Test decisions and OOD sums of batches fed one at a time; exact and mergeable.

    An accumulator as :class:`ncdask.StatsAccumulator` (``update``, ``merge``,
    ``result``); ``update_test`` and ``update_ood`` name the split a batch is of.

    Parameters
    ----------
    stats : xarray.Dataset
        Class statistics (computed here if lazy).
    weights, bias : array (K, D), (K,), optional
        The classifier, needed for the test decisions (NC4).
    min_count : int, optional
        As in :func:`ncdask.measure`; pass the same value to both.
    ignore_index : int, optional
        Label of samples to skip (default: the statistics' attribute).
    allow_nonfinite : bool, default False
        Accept NaN/inf rows (else a batch holding them raises).

    Examples
    --------
    >>> import numpy as np, ncdask
    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat(np.arange(3), 100)
    >>> X = rng.normal(size=(300, 4)) + 5 * np.eye(3, 4)[y]
    >>> st = ncdask.StatsAccumulator(3, 4).update(X, y).result()
    >>> ev = ncdask.EvalAccumulator(st, weights=st.means.values - st.global_mean.values)
    >>> _ = ev.update(X[::2], y[::2]).update(rng.normal(size=(50, 4)), role="ood")
    >>> res = ncdask.measure(st, weights=ev.weights, **ev.result())
    >>> float(res.nc4_agree)
    1.0
    """

    def __init__(self, stats: xr.Dataset, weights: Any = None, bias: Any = None, *,
                 min_count: int | None = None, ignore_index: int | None = None,
                 allow_nonfinite: bool = False) -> None:
        stats = check_stats(stats)
        kept = kept_classes(stats, min_count, ignore_index)
        if not kept.n_kept:
            raise ValueError("the statistics have no class with samples to decide between")
        ins = class_inputs(stats, kept, weights=weights, bias=bias, tile_size=kept.n_kept)
        fp = [None if a is None else row_digests(a, k)
              for k, a in (("means", ins.M), ("weights", ins.W), ("bias", ins.b))]
        Mc, mG, W, b, *fp = dask.compute(ins.Mc, ins.mG, ins.W, ins.b, *fp,
                                         options_digest(kept, stats))
        self._fingerprint = dict(zip(("means", "weights", "bias", "options"), fp, strict=True))
        self.stats, self.weights, self.bias = stats, weights, bias
        self.min_count, self.kept = min_count, kept
        self.n_classes, self.dim = kept.n_all, int(Mc.shape[1])
        self.ignore_index = kept.ignore_index
        self.allow_nonfinite = bool(allow_nonfinite)
        self._Mc, self._mG, self._W, self._b = Mc, mG, W, b
        xp = array_namespace(Mc)
        self._hits = xp.zeros(self.n_classes, dtype=xp.int64)
        self._count = xp.zeros(self.n_classes, dtype=xp.int64)
        rows = np.full(self.n_classes, -1, dtype=np.int64)  # a label's row among the kept
        rows[kept.present] = np.arange(kept.n_kept)
        self._rows = xp.asarray(rows)
        self._margin_sum = xp.zeros((), dtype=xp.float64)
        self._margin_hist = xp.zeros(Dk.MARGIN_EDGES.size - 1, dtype=xp.int64)
        self._ood_sum = xp.zeros(self.dim, dtype=xp.float64)
        self._ood_n = 0
        self._ood_labels: tuple[Any, Any, Any] | None = None
        self._ood_labelled: bool | None = None
        self._ood_class = StatsAccumulator(1, self.dim, allow_nonfinite=self.allow_nonfinite)

    def _batch(self, X: Any, y: Any, *, labels_needed: bool) -> tuple[Any, Any, Any]:
        xp = array_namespace(self._Mc)
        X = as_array(X)
        if X.ndim != 2 or X.shape[1] != self.dim:
            raise ValueError(f"X has shape {tuple(X.shape)}, expected (n, {self.dim})")
        if y is None:
            if labels_needed:
                raise ValueError("test batches need labels: NC4 counts agreement per class")
        else:
            y = as_array(y)
            if y.ndim != 1 or y.shape[0] != X.shape[0]:
                raise ValueError(f"y has shape {tuple(y.shape)}, expected ({X.shape[0]},)")
            if np.dtype(y.dtype).kind not in "iu":
                raise TypeError(f"labels must be integers, got dtype {y.dtype}")
            y = xp.asarray(to_numpy(y) if array_namespace(y) is not xp else y).astype(xp.int64)
        if array_namespace(X) is not xp:
            X = xp.asarray(to_numpy(X))
        X = X.astype(xp.float64, copy=False)
        if not self.allow_nonfinite and not bool(xp.all(xp.isfinite(X))):
            raise ValueError("X holds NaN or inf values (pass allow_nonfinite=True to keep "
                             "them); nothing of this batch was added")
        return X, y, xp

    def update(self, X: Any, y: Any = None, *, role: str = "test") -> EvalAccumulator:
        """Add a batch of the ``"test"`` split (:meth:`update_test`) or the ``"ood"`` one."""
        if role not in ("test", "ood"):
            raise ValueError(f"role must be 'test' or 'ood', got {role!r}")
        return self.update_test(X, y) if role == "test" else self.update_ood(X, y)

    def update_test(self, X: Any, y: Any) -> EvalAccumulator:
        """Add a test batch: both classifiers' decisions, counted per true class, and the
        cosine margins (labels ``ignore_index`` or negative are skipped, ``≥ K`` raise)."""
        if self._W is None:
            raise ValueError("NC4 needs the classifier: EvalAccumulator(stats, weights=...)")
        X, y, xp = self._batch(X, y, labels_needed=True)
        bad = y >= self.n_classes
        if self.ignore_index is not None:
            bad &= y != self.ignore_index
        if bool(xp.any(bad)):
            raise ValueError(
                f"test label {int(y[xp.nonzero(bad)[0][0]])} is outside the statistics' "
                f"{self.n_classes} classes: NC4 needs test data of the same classes (pass "
                "ignore_index= for padding)")
        valid = (y >= 0) & (y < self.n_classes)
        if not bool(xp.all(valid)):
            X, y = X[valid], y[valid]
        if y.shape[0]:
            dec = self._decisions(X, self._rows[y], xp)
            agree = dec[:, 1] == dec[:, 3]
            true = dec[:, 4]
            self._margin_sum += xp.sum(xp.where(true > -xp.inf, true - dec[:, 5], 0.0))
            self._margin_hist += Dk.margin_histogram(dec)[0]
            self._hits += xp.bincount(y, weights=agree.astype(xp.float64),
                                      minlength=self.n_classes).astype(xp.int64)
            self._count += xp.bincount(y, minlength=self.n_classes).astype(xp.int64)
        return self

    def _decisions(self, X: Any, pos: Any, xp: Any) -> Any:
        """The rows' merged decisions with the margin columns, as measure decides."""
        n, K = X.shape[0], self._Mc.shape[0]
        T = max(1, min(K, TILE_ENTRIES // max(n, 1)))
        parts = [Dk.decision_tile(X, self._mG, self._W[s:s + T], self._b[s:s + T],
                                  self._Mc[s:s + T], xp.arange(s, min(s + T, K)), pos)
                 for s in range(0, K, T)]
        return Dk.merge_decisions(xp.concatenate(parts, axis=1))[:, 0]

    def update_ood(self, X: Any, y: Any = None) -> EvalAccumulator:
        """Add an OOD batch, with or without labels (every batch alike): its sum, per-label
        sums, and the one-class statistics of rows not labelled ``ignore_index``."""
        X, y, xp = self._batch(X, y, labels_needed=False)
        if self._ood_labelled is not None and self._ood_labelled != (y is not None):
            raise ValueError("OOD batches must all have labels or all have none")
        self._ood_labelled = y is not None
        keep = None
        if y is not None:
            part = Dk.label_sums(X, y, self.ignore_index)
            if part[0].shape[0]:
                self._ood_labels = (part if self._ood_labels is None
                                    else Dk.merge_label_sums([self._ood_labels, part]))
            if self.ignore_index is not None:
                keep = y != self.ignore_index
        self._ood_sum += X.sum(axis=0)
        self._ood_n += int(X.shape[0])
        Xk = X if keep is None or bool(xp.all(keep)) else X[keep]
        self._ood_class.update(Xk, xp.zeros(Xk.shape[0], dtype=xp.int64))
        return self

    def merge(self, other: EvalAccumulator) -> EvalAccumulator:
        """Add another rank's accumulator (built from the same statistics and classifier)."""
        if not isinstance(other, EvalAccumulator):
            raise TypeError(f"can only merge an EvalAccumulator, got {type(other).__name__}")
        if other.n_classes != self.n_classes or other.dim != self.dim or not all(
                same_fingerprint(v, other._fingerprint[k]) for k, v in self._fingerprint.items()):
            raise ValueError("cannot merge accumulators built from other statistics, weights "
                             "or min_count")
        if None not in (self._ood_labelled, other._ood_labelled) and \
                self._ood_labelled != other._ood_labelled:
            raise ValueError("OOD batches must all have labels or all have none")
        self._hits += other._hits
        self._count += other._count
        self._margin_sum += other._margin_sum
        self._margin_hist += other._margin_hist
        self._ood_sum += other._ood_sum
        self._ood_n += other._ood_n
        if self._ood_labelled is None:
            self._ood_labelled = other._ood_labelled
        parts = [p for p in (self._ood_labels, other._ood_labels) if p is not None]
        self._ood_labels = Dk.merge_label_sums(parts) if parts else None
        self._ood_class.merge(other._ood_class)
        return self

    def test_summary(self) -> xr.Dataset:
        """Per-class agreement counts for ``measure(..., test=)``, with the fingerprints."""
        if self._W is None:
            raise ValueError("no classifier was given: there are no test decisions")
        if not int(to_numpy(self._count).sum()):
            raise ValueError("no test sample was added yet")
        fp = {k: to_numpy(v) for k, v in self._fingerprint.items()}
        return xr.Dataset(
            {"nc4_hits": ("class", to_numpy(self._hits)),
             "nc4_count": ("class", to_numpy(self._count)),
             "fingerprint_means": ("kept_class", fp["means"]),
             "fingerprint_weights": ("kept_class", fp["weights"]),
             "fingerprint_bias": ("kept_class", fp["bias"]),
             "fingerprint_options": ("fingerprint", fp["options"]),
             "margin_sum": ((), float(to_numpy(self._margin_sum))),
             "margin_n": ((), int(to_numpy(self._margin_hist).sum())),
             "margin_hist": ("margin_bin", to_numpy(self._margin_hist))},
            coords={"class": self.stats["class"].values if "class" in self.stats.coords
                    else np.arange(self.n_classes)},
            attrs={"ncdask_streamed": "test", "min_count": -1 if self.min_count is None
                   else int(self.min_count)})

    def ood_summary(self) -> xr.Dataset:
        """OOD sums and one-class statistics for ``measure(..., ood=)``."""
        if not self._ood_n:
            raise ValueError("no OOD sample was added yet")
        one = self._ood_class.result()
        ds = xr.Dataset(
            {"ood_sum": ("feature", to_numpy(self._ood_sum)),
             "ood_n": ((), self._ood_n),
             "ood_class_n": ((), int(one["n_samples"].values)),
             "ood_class_mean": ("feature", to_numpy(one["means"].values[0])),
             "ood_class_within_cov": (("feature", "feature_"),
                                      to_numpy(one["within_cov"].values))},
            attrs={"ncdask_streamed": "ood"})
        if self._ood_labels is not None:
            lab, sums, counts = (to_numpy(a) for a in self._ood_labels)
            ds["ood_label_sums"] = (("ood_label", "feature"), sums)
            ds["ood_label_counts"] = ("ood_label", counts)
            ds = ds.assign_coords(ood_label=lab)
        return ds

    def result(self) -> dict[str, xr.Dataset]:
        """The summaries of what was added, ``{"test": ..., "ood": ...}`` (``measure`` kwargs)."""
        out = {}
        if self._W is not None and int(to_numpy(self._count).sum()):
            out["test"] = self.test_summary()
        if self._ood_n:
            out["ood"] = self.ood_summary()
        return out

    def measure(self, **measure_kwargs: Any) -> xr.Dataset:
        """:func:`ncdask.measure` of the statistics with these summaries (lazy)."""
        return measure(self.stats, weights=self.weights, bias=self.bias,
                       min_count=self.min_count, **self.result(), **measure_kwargs)
