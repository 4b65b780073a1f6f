"""The reference package's accumulators (``neural_collapse.accumulate``) over ncdask's own.

Its constructor arguments, ``accumulate`` and ``compute``, so its loops run with only their
imports changed. Mean, VarNorm and Covar feed a :class:`ncdask.StatsAccumulator`; their
exact centred statistics are moved onto the ``M`` given when computed (``Σ‖x − M_y‖² =
Σ‖x − μ_y‖² + n_y‖μ_y − M_y‖²``). Dec feeds an :class:`ncdask.EvalAccumulator`. Results are
float64 (``dtype``: float32 or float64) in the first batch's kind: a tensor on its device
for PyTorch, else NumPy (CuPy). ``device`` is accepted and unused: the state stays where
the batches are."""

from __future__ import annotations

import warnings
from typing import Any

import dask.array as da
import numpy as np

from ncdask._validate import check_count
from ncdask.accumulate import StatsAccumulator
from ncdask.kernels._xp import array_namespace, as_array, to_numpy
from ncdask.metrics.evaluate import EvalAccumulator
from ncdask.stats.core import EmptyClassWarning, labelled_stats

__all__ = ["MeanAccumulator", "VarNormAccumulator", "CovarAccumulator", "DecAccumulator"]


def _is_torch(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


def _np_dtype(dtype: Any, default: str, kinds: str, what: str) -> np.dtype:
    """A NumPy or torch dtype as a NumPy one, if its kind is one of ``kinds``."""
    try:
        dt = np.dtype(default if dtype is None else
                      str(dtype).removeprefix("torch.") if _is_torch(dtype) else dtype)
    except TypeError:
        dt = None
    if dt is None or dt.kind not in kinds or (dt.kind == "f" and dt.itemsize < 4):
        want = "float32 or float64" if kinds == "f" else "an integer dtype"
        raise TypeError(f"{what}={dtype!r} is not supported: pass {want}")
    return dt


class _Pair:
    """``(ns_samples, totals)`` as the reference's ``accumulate`` returns them, read when
    unpacked or indexed (so that a loop that ignores them pays nothing)."""

    __slots__ = ("_acc",)

    def __init__(self, acc: Any) -> None:
        self._acc = acc

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> Any:
        return getattr(self._acc, ("ns_samples", "totals")[i])

    def __iter__(self) -> Any:
        return (self[i] for i in range(2))


class _Reference:
    """What the four share: sizes, dtypes, the results' kind, the pinned ``M`` and ``W``."""

    def __init__(self, n_classes: int, d_vectors: int, device: Any = "cpu",
                 dtype: Any = None, ctype: Any = None) -> None:
        self.n_classes = check_count("n_classes", n_classes)
        self.d_vectors = check_count("d_vectors", d_vectors)
        self.device, self.dtype, self.ctype = device, dtype, ctype
        self._dt = _np_dtype(dtype, "float64", "f", "dtype")
        self._ct = _np_dtype(ctype, "int64", "iu", "ctype")
        self._pinned: dict[str, Any] = {}
        self._torch_device: Any = None
        self._xp: Any = None  # the first batch's array module: that of the results

    def _take(self, X: Any, Y: Any) -> tuple[Any, Any]:
        """A batch as NumPy or CuPy; the first one's kind is that of the results."""
        A = as_array(X)
        if self._xp is None:
            self._xp = array_namespace(A)
            self._torch_device = X.device if _is_torch(X) else None
        return A, as_array(Y).reshape(-1)

    def _out(self, a: Any, dtype: np.dtype) -> Any:
        a = (self._xp or array_namespace(a)).asarray(a).astype(dtype)
        if self._torch_device is None:
            return a
        import torch

        t = torch.from_numpy(a) if isinstance(a, np.ndarray) else torch.from_dlpack(a)
        return t.to(self._torch_device)

    def _pin(self, name: str, value: Any) -> Any:
        """``value`` (K, D) as float64, or the one given before: the reference also refuses
        a different one (its hashes must match)."""
        old = self._pinned.get(name)
        if value is None:
            return old
        a = as_array(value)
        if tuple(a.shape) != (self.n_classes, self.d_vectors):
            raise ValueError(f"{name} has shape {tuple(a.shape)}, expected (n_classes, "
                             f"d_vectors) = ({self.n_classes}, {self.d_vectors})")
        xp = array_namespace(a)
        a = xp.array(a, dtype=xp.float64, copy=True)
        if old is None:
            self._pinned[name] = a
            return a
        xo = array_namespace(old)
        if not bool(xo.array_equal(old, xo.asarray(to_numpy(a) if xo is not xp else a),
                                   equal_nan=True)):
            raise ValueError(f"{name} differs from the {name} given before: one "
                             f"{type(self).__name__} measures about one {name}")
        return old

    @property
    def ns_samples(self) -> Any:
        """Samples per class so far (K,), in ``ctype`` (default int64)."""
        return self._out(self._per_class()[0], self._ct)

    def filter_indices_by_n_samples(self, minimum: int = 0, maximum: int | None = None) -> Any:
        """Indices of the classes with ``minimum <= n < maximum`` samples (1-D)."""
        n = self._per_class()[0]
        keep = n >= minimum
        if maximum:
            keep &= n < maximum
        return self._out(array_namespace(n).nonzero(keep)[0], np.dtype(np.int64))

    def compute(self, idxs: Any = None, weighted: bool = False) -> tuple[Any, Any]:
        """The per-class averages (K, ...) and their mean over classes, as the reference:
        ``weighted``, by the samples of each; an empty class averages 0.

        Parameters
        ----------
        idxs : sequence of int, boolean mask or array, optional
            Classes to keep (default all).
        weighted : bool, default False
            Weigh the classes by their samples in the second result.
        """
        counts, avg = self._per_class()
        xp = array_namespace(avg)
        if idxs is not None:
            sel = to_numpy(idxs) if hasattr(idxs, "shape") else np.asarray(idxs)
            sel = xp.asarray(sel if sel.dtype == bool else sel.reshape(-1).astype(np.intp))
            counts, avg = counts[sel], avg[sel]
        if weighted:
            n = counts.astype(avg.dtype)
            avg_g = n @ avg / max(float(n.sum()), 1.0)
        else:
            avg_g = avg.mean(axis=0)
        return self._out(avg, self._dt), self._out(avg_g, self._dt)

    def _per_class(self) -> tuple[Any, Any]:  # counts (K,) and per-class averages
        raise NotImplementedError


class _Streamed(_Reference):
    """Mean, VarNorm and Covar: a :class:`ncdask.StatsAccumulator` over the batches."""

    def __init__(self, *args: Any, M: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pin("M", M)
        self._acc = StatsAccumulator(self.n_classes, self.d_vectors, dtype=self._dt)

    def _add(self, X: Any, Y: Any, M: Any = None) -> _Pair:
        self._pin("M", M)
        self._acc.update(*self._take(X, Y))
        return _Pair(self)

    def _finished(self) -> dict[str, Any]:
        """Counts, means, variance norms, Σ_W, N and ``d`` (``μ_k − M_k``, 0 without ``M``):
        empty classes with zeros, as the reference's ``0 / (0 + ε)``; zeros before a batch."""
        K, D, dt = self.n_classes, self.d_vectors, self._dt
        if not self._acc.n_batches:
            z = np.zeros
            return {"counts": z(K, np.int64), "means": z((K, D), dt), "var_norms": z(K, dt),
                    "within_cov": z((D, D), dt), "n": 0, "d": z((K, D), dt)}
        with warnings.catch_warnings():  # the reference keeps empty classes, as zeros
            warnings.simplefilter("ignore", EmptyClassWarning)
            st = self._acc.result()
        xp = array_namespace(st["means"].data)
        seen = xp.asarray(st["counts"].values) > 0
        f = {k: st[k].data for k in ("means", "var_norms", "within_cov")}
        f.update(counts=xp.asarray(st["counts"].values), n=int(st["n_samples"].values),
                 means=xp.where(seen[:, None], f["means"], 0.0),
                 var_norms=xp.where(seen, f["var_norms"], 0.0))
        M = self._pinned.get("M")
        M = f["means"] if M is None else xp.asarray(M if array_namespace(M) is xp
                                                    else to_numpy(M))
        f["d"] = xp.where(seen[:, None], f["means"] - M, 0.0)
        return f


class MeanAccumulator(_Streamed):
    """The reference's ``MeanAccumulator(n_classes, d_vectors, device="cpu", dtype, ctype)``:
    ``accumulate(X, Y)`` per batch, then ``compute(idxs=None, weighted=False)`` → the class
    means (K, D; an empty class's are 0) and their mean (D,). ``totals``: the sums per class.

    Examples
    --------
    >>> import numpy as np
    >>> from ncdask.compat import MeanAccumulator
    >>> acc = MeanAccumulator(2, 3)
    >>> _ = acc.accumulate(np.arange(12.0).reshape(4, 3), np.array([0, 1, 0, 1]))
    >>> means, mG = acc.compute()
    >>> means.tolist(), mG.tolist()
    ([[3.0, 4.0, 5.0], [6.0, 7.0, 8.0]], [4.5, 5.5, 6.5])
    """

    def __init__(self, n_classes: int, d_vectors: int, device: Any = "cpu", dtype: Any = None,
                 ctype: Any = None) -> None:
        super().__init__(n_classes, d_vectors, device, dtype, ctype)

    def accumulate(self, X: Any, Y: Any) -> _Pair:
        """Add a batch ``X`` (B, D) with labels ``Y`` (B,); returns ``(ns_samples, totals)``."""
        return self._add(X, Y)

    def _per_class(self) -> tuple[Any, Any]:
        f = self._finished()
        return f["counts"], f["means"]

    @property
    def totals(self) -> Any:
        counts, means = self._per_class()
        return self._out(counts[:, None] * means, self._dt)


class VarNormAccumulator(_Streamed):
    """The reference's ``VarNormAccumulator(n_classes, d_vectors, device, dtype, ctype,
    M=None)``: ``accumulate(X, Y, M)`` per batch (the same ``M`` every time), then
    ``compute()`` → the mean ``‖x − M_k‖²`` of each class (K,) and their mean."""

    def accumulate(self, X: Any, Y: Any, M: Any) -> _Pair:
        """Add a batch ``X`` (B, D), ``Y`` (B,) about the means ``M`` (K, D)."""
        return self._add(X, Y, M)

    def _per_class(self) -> tuple[Any, Any]:
        f = self._finished()
        return f["counts"], f["var_norms"] + (f["d"] * f["d"]).sum(axis=1)

    @property
    def totals(self) -> Any:
        counts, v = self._per_class()
        return self._out(counts * v, self._dt)


class CovarAccumulator(_Streamed):
    """The reference's ``CovarAccumulator(n_classes, d_vectors, device, dtype, ctype,
    M=None)``: ``accumulate(X, Y, M)`` per batch, then ``compute()`` → ``Σ (x − M_y)(x −
    M_y)ᵀ / N`` (D, D); ``compute(idxs)`` is refused, Σ_W being pooled over all classes."""

    accumulate = VarNormAccumulator.accumulate

    def _per_class(self) -> tuple[Any, Any]:
        return self._finished()["counts"], None

    def compute(self, idxs: Any = None) -> Any:  # type: ignore[override]
        """The covariance (D, D) of the samples about their class's row of ``M``."""
        if idxs is not None:
            raise ValueError("CovarAccumulator.compute(idxs=...) is not supported: ncdask "
                             "pools the covariance over all classes")
        f = self._finished()
        d = f["d"] * array_namespace(f["d"]).sqrt(f["counts"] / max(f["n"], 1))[:, None]
        return self._out(f["within_cov"] + d.T @ d, self._dt)

    @property
    def totals(self) -> Any:
        return self.compute() * self._finished()["n"]


def _centres(M: Any) -> Any:
    """Statistics whose K class centres are the rows of ``M``, every one kept: the reference's
    nearest-centre decision is over all K rows."""
    K, D = M.shape
    xp = array_namespace(M)
    arrays = {"means": M, "global_mean": M.mean(axis=0), "var_norms": xp.zeros(K),
              "within_cov": da.zeros((D, D), chunks=-1)}  # never computed
    return labelled_stats(arrays, np.ones(K, np.int64), global_mean="unweighted", attrs={})


class DecAccumulator(_Reference):
    """Per class, how often the linear classifier ``argmax_k w_k · x`` (no bias) agrees with
    the nearest class centre: the reference's NC4 accumulator.

    ``DecAccumulator(n_classes, d_vectors, device, dtype, ctype, M=None, W=None)``,
    ``create_index(M)``, ``accumulate(X, Y, W, M=None)`` per test batch, then
    ``ncdask.compat.clf_ncc_agreement(acc)``, or ``compute(idxs=None, weighted=False)`` →
    ``(rates per class, overall rate)``. ``ns_samples`` and ``totals`` are the samples and
    agreements per class. Decisions are :class:`ncdask.EvalAccumulator`'s (blocked GEMMs):
    no FAISS index is built, ``index`` stays None.
    """

    def __init__(self, *args: Any, M: Any = None, W: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pin("M", M)
        self._pin("W", W)
        self.index = None
        self._eval: EvalAccumulator | None = None

    def create_index(self, M: Any) -> None:
        """Take ``M`` (K, D) as the class centres; ``accumulate`` may then omit ``M``."""
        self._pin("M", M)

    def accumulate(self, X: Any, Y: Any, W: Any, M: Any = None) -> _Pair:
        """Add a test batch ``X`` (B, D), ``Y`` (B,) decided by ``W`` (K, D) and ``M``."""
        W, M = self._pin("W", W), self._pin("M", M)
        if M is None:
            raise ValueError("DecAccumulator needs the class means: pass M= when creating it, "
                             "call create_index(M) or accumulate(X, Y, W, M)")
        if self._eval is None:
            self._eval = EvalAccumulator(_centres(M), weights=W)
        self._eval.update_test(*self._take(X, Y))
        return _Pair(self)

    def _counts(self) -> tuple[np.ndarray, np.ndarray]:
        test = None if self._eval is None else self._eval.result().get("test")
        if test is None:
            return np.zeros(self.n_classes, np.int64), np.zeros(self.n_classes, np.int64)
        return test["nc4_count"].values, test["nc4_hits"].values

    def _per_class(self) -> tuple[Any, Any]:
        n, hits = self._counts()
        return n, np.divide(hits, n, out=np.zeros(n.shape), where=n > 0)

    @property
    def totals(self) -> Any:
        """Agreements per class (K,), in ``ctype``."""
        return self._out(self._counts()[1], self._ct)
