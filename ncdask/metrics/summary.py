"""Streamed summaries (:class:`ncdask.EvalAccumulator`'s ``test`` and ``ood``) read as inputs.

A test summary carries fingerprints (CRC-32C digests of the exact float64 means, weights, bias
and class options), so :func:`ncdask.measure` refuses it against any other."""

from __future__ import annotations

from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr

from ncdask.kernels._xp import to_numpy
from ncdask.metrics.inputs import KeptClasses, as_dask, like
from ncdask.store.digest import digest, extend, seed


def _row_digests(block: Any, name: str) -> np.ndarray:
    rows = np.ascontiguousarray(to_numpy(block), dtype=np.float64)
    rows = rows.reshape(rows.shape[0], -1)
    return np.fromiter((digest(name, 0, r) for r in rows), dtype=np.uint32, count=rows.shape[0])


def row_digests(A: Any, name: str) -> Any:
    """CRC-32C of each row's float64 bytes (uint32 per row; lazy for a dask ``A``): equal
    exactly when the values are, whatever the chunks. A fingerprint of means, W or b."""
    if not isinstance(A, da.Array):
        return _row_digests(A, name)
    A = A.rechunk({i: -1 for i in range(1, A.ndim)})
    return A.map_blocks(_row_digests, name, drop_axis=list(range(1, A.ndim)), dtype=np.uint32,
                        meta=np.empty(0, dtype=np.uint32))


def options_digest(kept: KeptClasses, stats: xr.Dataset | None) -> Any:
    """CRC-32C (one uint32, lazy) of what picks and centres the classes: the kept classes,
    their counts, ``ignore_index``, the global-mean mode and the statistics' global mean."""
    mode = None if stats is None else stats.attrs.get("global_mean")
    gm = None if stats is None else as_dask(stats["global_mean"])
    return dask.delayed(_options_digest, pure=True)(kept, mode, gm)


def _options_digest(kept: KeptClasses, mode: Any, gm: Any) -> np.ndarray:
    crc = seed(f"options/{kept.ignore_index}/{mode}/{kept.refiltered}", 0)
    for a in (np.asarray(kept.present, np.int64), np.asarray(kept.counts, np.int64),
              np.empty(0) if gm is None else np.asarray(to_numpy(gm), np.float64)):
        crc = extend(crc, a)
    return np.asarray([crc], dtype=np.uint32)


def same_fingerprint(a: Any, b: Any) -> bool:
    """Whether two fingerprints (or two Nones) are equal."""
    if a is None or b is None:
        return a is None and b is None
    return bool(np.array_equal(np.asarray(to_numpy(a)), np.asarray(to_numpy(b))))


def is_summary(obj: Any, kind: str) -> bool:
    """Whether ``obj`` is a streamed summary of ``kind`` ("test" or "ood")."""
    return isinstance(obj, xr.Dataset) and obj.attrs.get("ncdask_streamed") == kind


def check_role(obj: Any, role: str) -> None:
    """Refuse a bare split name (no store to read it from) and a streamed summary passed
    for the other role (an OOD summary as ``test=``)."""
    if isinstance(obj, str):
        raise TypeError(f"{role}={obj!r} names a split but not its store: pass "
                        f"{role}=(store, {obj!r}), or let ncdask.analyze(store) find the "
                        "splits and the stored classifier")
    kind = obj.attrs.get("ncdask_streamed") if isinstance(obj, xr.Dataset) else None
    if kind is not None and kind != role:
        raise ValueError(f"a streamed {kind} summary was given as {role}=: pass "
                         f"EvalAccumulator.{role}_summary() there")


def summary_dim(summary: xr.Dataset) -> int:
    """The width D of a summary's embeddings."""
    return int(summary.sizes["feature"])


def _check_fingerprints(counts: Any, *pairs: Any) -> Any:
    names = ("class means", "classifier weights", "classifier bias", "class selection")
    for name, got, want in zip(names, pairs[0::2], pairs[1::2], strict=True):
        if not same_fingerprint(got, want):
            raise ValueError(
                f"the streamed test summary was made against other {name} (or another "
                "min_count) than measure was given: build the EvalAccumulator from the same "
                "statistics, weights, bias and min_count")
    return counts


def agreement_from_summary(summary: xr.Dataset, M: da.Array, W: da.Array, b: da.Array,
                           kept: KeptClasses, stats: xr.Dataset | None
                           ) -> tuple[da.Array, da.Array]:
    """Lazy per-class (hits, counts) of a test summary, checked against the digests of the
    kept means ``M``, ``W``, ``b`` and the options (:func:`row_digests`, :func:`options_digest`)
    when computed."""
    counts = np.stack([summary["nc4_hits"].values, summary["nc4_count"].values]).astype(
        np.float64)
    both = _checked(summary, counts, M, W, b, kept, stats)
    return both[0], both[1]


def margins_from_summary(summary: xr.Dataset, M: da.Array, W: da.Array, b: da.Array,
                         kept: KeptClasses, stats: xr.Dataset | None
                         ) -> tuple[da.Array, da.Array]:
    """Lazy ``(margin_mean, margin_hist)`` of a test summary, checked as
    :func:`agreement_from_summary`."""
    n = int(summary["margin_n"].values)
    hist = summary["margin_hist"].values.astype(np.float64)
    mean = float(summary["margin_sum"].values) / n if n else np.nan
    both = _checked(summary, np.append(hist, mean), M, W, b, kept, stats)
    return both[-1], both[:-1].astype(np.int64)


def _checked(summary: xr.Dataset, values: np.ndarray, M: da.Array, W: da.Array, b: da.Array,
             kept: KeptClasses, stats: xr.Dataset | None) -> da.Array:
    """``values`` (float64) of a test summary, lazily, once its fingerprints match."""
    n_classes = kept.n_all
    if summary.sizes.get("class") != n_classes:
        raise ValueError(f"the streamed test summary has {summary.sizes.get('class')} "
                         f"classes, the statistics {n_classes}")
    if summary.sizes.get("kept_class") != M.shape[0]:
        raise ValueError(
            f"the streamed test summary decided between {summary.sizes.get('kept_class')} "
            f"classes, measure keeps {M.shape[0]}: pass the same min_count to both")
    if "fingerprint_options" not in summary:
        raise ValueError("the streamed test summary was made by an older ncdask (its "
                         "fingerprints are projections): build it again with this one")
    want = (row_digests(M, "means"), row_digests(W, "weights"), row_digests(b, "bias"),
            options_digest(kept, stats))
    pairs = [x for k, w in zip(("means", "weights", "bias", "options"), want, strict=True)
             for x in (summary[f"fingerprint_{k}"].values, w)]
    checked = dask.delayed(_check_fingerprints, pure=True)(values, *pairs)
    return da.from_delayed(checked, shape=values.shape, dtype=np.float64,
                           meta=np.empty((0,) * values.ndim, dtype=np.float64))


def ood_mean_from_summary(summary: xr.Dataset, use_labels: bool | None, ref: da.Array) -> da.Array:
    """The OOD global mean of a summary: of per-label means, or plain (as ``ref``'s backend)."""
    labelled = "ood_label_sums" in summary
    use = labelled if use_labels is None else bool(use_labels)
    if use and not labelled:
        raise ValueError("ood_labels=True, but the streamed OOD summary has no labels")
    if use:
        mood = (summary["ood_label_sums"].values
                / summary["ood_label_counts"].values[:, None]).mean(axis=0)
    else:
        mood = summary["ood_sum"].values / float(summary["ood_n"].values)
    return like(as_dask(np.asarray(mood, dtype=np.float64)), ref)


def ood_class_from_summary(summary: xr.Dataset, ref: da.Array) -> tuple[Any, da.Array, da.Array]:
    """``(n_o, μ_o (1, D), Σ_o)`` of a summary's one-class statistics (``ref``'s backend)."""
    n_o = float(summary["ood_class_n"].values)
    mu = like(as_dask(summary["ood_class_mean"].values[None, :].astype(np.float64)), ref)
    Sw = like(as_dask(summary["ood_class_within_cov"].values.astype(np.float64)), ref)
    return n_o, mu, Sw
