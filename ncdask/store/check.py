"""``ncdask check``: every committed chunk (present, decodable, matching its record's digest,
finite as promised, labels in ``[0, K)`` adding up), record, set width, classifier and cache
entry of a store, or every chunk of an output; Zarr reads a missing chunk as fill values."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any

import dask
import numpy as np
import zarr
from dask.diagnostics import ProgressBar

from ncdask.store.core import DELETED_ATTR, chunk_exists, classifier_name, naming_broken_metadata
from ncdask.store.digest import digest
from ncdask.store.embedding import EmbeddingStore
from ncdask.store.record import (
    DamagedStoreError,
    check_record,
    chunk_digest,
    record,
    snapshot,
    subgroups,
)
from ncdask.store.setkey import SetKey
from ncdask.store.staging import is_staging
from ncdask.store.zarrio import (
    CACHE_DIR,
    damaged_chunks,
    is_complete,
    recorded_digests,
    url_fs,
    written_kind,
)


@dataclass
class CheckReport:
    """What :func:`check_store` found: ``problems`` (damage, each named), ``notes``
    (leftovers of killed writers) and counts of what was verified."""

    url: str
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    sets: int = 0
    splits: int = 0
    rows: int = 0
    chunks: int = 0

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    def summary(self) -> str:
        """One line: what was verified and how many problems were found."""
        state = "ok" if self.ok else f"{len(self.problems)} problem(s)"
        held = (f"{self.sets} set(s), {self.splits} split(s), {self.rows} committed rows, "
                if self.sets else "")  # an output holds no sets
        return f"{self.url}: {state}: {held}{self.chunks} chunks verified"


def _task(fn: Any) -> Any:
    # pure=False: no hashing of the arguments (tokenizing a zarr.Array reads it whole)
    return dask.delayed(fn, pure=False)


def _chunk(a: zarr.Array, i: int, stop: int | None, where: str,
           want: tuple[int, int] | None = None) -> tuple[Any, list[str]]:
    """``(values, problems)`` of row-chunk ``i`` of ``a`` (up to ``stop``), checked against
    ``want`` = ``(digest, rows)`` from the record."""
    rows = int(a.chunks[0])
    lo, hi = i * rows, min(stop if stop is not None else a.shape[0], (i + 1) * rows)
    name = f"{where}, chunk {i} (rows {lo}-{hi - 1})"
    if not chunk_exists(a, i):
        return None, [f"{name}: missing (Zarr would read it as the fill value)"]
    try:
        v = a[lo:hi]
    except Exception as e:  # checksum, decompression, truncation: name the chunk
        return None, [f"{name}: unreadable ({type(e).__name__}: {e})"]
    if want is not None and digest(a.basename, i, v[: want[1]]) != want[0]:
        return v, [f"{name}: does not match its digest in the commit record (swapped with "
                   "another chunk, moved or altered)"]
    return v, []


def _verify_finite(a: zarr.Array, i: int, stop: int | None, finite: bool, where: str,
                   what: str = "NaN or inf values", want: tuple[int, int] | None = None) -> dict:
    """Chunk ``i`` of ``a`` readable, as digested and, if ``finite``, free of NaN and inf."""
    v, bad = _chunk(a, i, stop, where, want)
    if v is not None and finite and not np.isfinite(v).all():
        bad.append(f"{where}, chunk {i}: {what} ({int((~np.isfinite(v)).sum())})")
    return {"problems": bad, "counts": None}


def _verify_labels(a: zarr.Array, i: int, stop: int, K: int, ignore: int | None,
                   where: str, want: tuple[int, int] | None = None) -> dict:
    v, bad = _chunk(a, i, stop, where, want)
    if v is None:
        return {"problems": bad, "counts": None}
    v = np.asarray(v).astype(np.int64)
    keep = v != ignore if ignore is not None else np.ones(v.shape, bool)
    out = keep & ((v < 0) | (v >= K))
    if out.any():
        return {"problems": [*bad, f"{where}, chunk {i}: {int(out.sum())} labels outside "
                             f"[0, {K}) (e.g. {int(v[out][0])})"], "counts": None}
    return {"problems": bad, "counts": np.bincount(v[keep], minlength=K)}


def _digests(p: zarr.Group, k: int, report: CheckReport) -> int:
    """How many of part ``p``'s ``k`` rows its record digests (noting or reporting the rest)."""
    d, c = record(p).get("digests") or {"rows": 0}, int(p["embeddings"].chunks[0])
    n = d.get("rows")
    if not isinstance(n, int) or not 0 <= n <= k or any(
            a in p and len(d.get(a) or []) != -(-n // c) for a in ("embeddings", "labels")):
        report.problems.append(f"{p.path}: the commit record's chunk digests do not describe "
                               f"its {k} rows: the store is damaged")
        return 0
    if n < k:
        report.notes.append(f"{p.path}: rows {n}-{k - 1} have no chunk digests (written by an "
                            "older ncdask): their chunks' places are not verified")
    return n


def _split_tasks(s: EmbeddingStore, key: SetKey, split: str, report: CheckReport) -> list:
    """The delayed per-chunk checks of one split (and its record checks, done now)."""
    core = s.core
    g = core.split_group(split, key)
    parts, rec = snapshot(g)
    tasks: list = []
    want = rec.get("class_counts")
    label_tasks = []
    lay = core.layout(core.set_group(key))
    for p, k in parts:
        try:
            check_record(p, s.n_classes, s.url)
        except DamagedStoreError as e:
            report.problems.append(str(e))
            continue
        if lay is not None and "embeddings" in p and p["embeddings"].shape[1] != lay[0]:
            report.problems.append(f"{p.path}/embeddings has width {p['embeddings'].shape[1]}, "
                                   f"the set's is {lay[0]}")
            continue
        finite = record(p).get("finite") is True
        report.rows += k
        rec = record(p) if k and _digests(p, k, report) else {}
        for a in (p[n] for n in ("embeddings", "labels") if n in p and k):
            for i in range(math.ceil(k / a.chunks[0])):
                report.chunks += 1
                crc = chunk_digest(rec, a.basename, i, int(a.chunks[0]))
                if a.basename == "embeddings":
                    tasks.append(_task(_verify_finite)(
                        a, i, k, finite, a.path, "NaN/inf values in a split written without "
                        "allow_nonfinite", crc))
                else:
                    label_tasks.append(_task(_verify_labels)(
                        a, i, k, s.n_classes, s.ignore_index, a.path, crc))
    if want is not None and label_tasks:
        tasks.append(_task(_label_totals)(label_tasks, np.asarray(want), g.path))
    else:
        tasks += label_tasks
    return tasks


def _label_totals(results: list[dict], want: np.ndarray, where: str) -> dict:
    problems = [p for r in results for p in r["problems"]]
    if all(r["counts"] is not None for r in results):
        got = np.sum([r["counts"] for r in results], axis=0)
        if not np.array_equal(got, want):
            k = int(np.nonzero(got != want)[0][0])
            problems.append(f"{where}: the labels hold {int(got[k])} samples of class {k}, "
                            f"the record says {int(want[k])}")
    return {"problems": problems, "counts": None}


def check_tasks(store: EmbeddingStore) -> tuple[CheckReport, list]:
    """The report so far (records, structure) and the delayed chunk checks still to run."""
    with naming_broken_metadata(store.url, store.core.storage_options):
        report = CheckReport(store.url)
        tasks: list = []
        for tags in store.sets() or [{}]:
            # only the two tags: a check reports on an edited store rather than refusing it
            key = SetKey(tags.get("layer"), tags.get("epoch"))
            sg = store.core.set_group(key)
            if sg is None:
                continue
            report.sets += 1
            for split in store.splits(**key.tags):
                report.splits += 1
                tasks += _split_tasks(store, key, split, report)
                tasks += _cache_tasks(store, store.core.split_group(split, key), report)
            name = classifier_name(sg)
            if name is not None:
                cg = sg[name]
                for a in (cg[n] for n in ("W", "b") if n in cg):
                    for i in range(math.ceil(a.shape[0] / a.chunks[0])):
                        report.chunks += 1
                        tasks.append(_task(_verify_finite)(a, i, None, True, a.path))
        for left in store.core.leftovers():
            report.notes.append(f"{left}: left by a writer whose lease expired (recovered by "
                                "the next writer)")
        report.notes += _half_made(store, store.core.group, SetKey())
        return report, tasks


def _half_made(store: EmbeddingStore, sg: zarr.Group, key: SetKey) -> list[str]:
    """Splits in set ``sg`` (and below) whose creation or deletion a killed writer left half
    done."""
    fs, folder = store.core.fs_path(sg)
    groups, out = dict(subgroups(sg)), []
    for path in fs.ls(folder, detail=False):
        name = str(path).rstrip("/").rsplit("/", 1)[-1]
        g = groups.get(name)
        if g is not None and "ncdask_set" in g.attrs:
            tags = g.attrs["ncdask_set"]
            out += _half_made(store, g, SetKey(tags.get("layer"), tags.get("epoch")))
        elif name.startswith("."):
            continue
        elif g is None and fs.exists(f"{path}/embeddings/zarr.json"):
            out.append(f"{path}: arrays of a split without its record (its creation was "
                       "interrupted); invisible to readers, the next writer completes it")
        elif g is not None and (DELETED_ATTR in g.attrs or "ncdask_split" in g.attrs
                                and store.core.find_split(name, key) is None):
            out.append(f"{path}: a split whose creation or deletion was interrupted; invisible "
                       "to readers, the next writer of the split completes it")
    return out


def _output_tasks(url: str, so: dict | None, report: CheckReport, what: str = "") -> list:
    """The delayed check of the ncdask output at ``url``: every chunk against its digest."""
    recorded = recorded_digests(url, so)
    if recorded is None:
        report.notes.append(f"{what}{url}: written without checksums (by an earlier ncdask)")
        return []
    report.chunks += len(recorded[1])
    return [_task(_output_problems)(what, url, *recorded)]


def _output_problems(what: str, *args: Any) -> dict:
    return {"problems": [what + p for p in damaged_chunks(*args)], "counts": None}


def _cache_tasks(s: EmbeddingStore, g: zarr.Group, report: CheckReport) -> list:
    """The delayed checks of split ``g``'s statistics-cache entries (``stats.cache``)."""
    fs, folder = s.core.fs_path(g, CACHE_DIR)
    fs.invalidate_cache(folder)
    try:
        names = sorted(str(e["name"]).rstrip("/").rsplit("/", 1)[-1]
                       for e in fs.ls(folder, detail=True) if e["type"] == "directory")
    except (FileNotFoundError, NotADirectoryError):
        return []
    tasks: list = []
    for name in names:
        if not is_staging(name) and is_complete(fs, f"{folder}/{name}"):
            url = "/".join([s.url.rstrip("/"), g.path, CACHE_DIR, name])
            tasks += _output_tasks(url, s.core.storage_options, report,
                                   "statistics cache entry ")
    return tasks


def output_tasks(url: str, storage_options: dict | None = None) -> tuple[CheckReport, list]:
    """:func:`check_tasks` of the ncdask output (statistics, results) at ``url``."""
    report = CheckReport(url)
    if not is_complete(*url_fs(url, storage_options)):
        report.problems.append(f"{url}: incomplete (its writing was interrupted)")
        return report, []
    return report, _output_tasks(url, storage_options, report)


def check_store(store: EmbeddingStore | str, *, storage_options: dict | None = None,
                progress: bool = False) -> CheckReport:
    """Verify every chunk, record, set and cache entry of a store, or every chunk of an output.

    Parameters
    ----------
    store : EmbeddingStore or str
        The store, or its URL (opened read-only, with ``storage_options``), or an output's.
    progress : bool
        Show dask's progress bar on stderr.

    Returns
    -------
    CheckReport

    Examples
    --------
    >>> import numpy as np, ncdask
    >>> s = ncdask.EmbeddingStore.from_arrays(
    ...     "memory://check-doc", {"train": (np.ones((10, 3)), np.arange(10) % 2)},
    ...     overwrite=True)
    >>> r = ncdask.check_store(s)
    >>> r.ok, r.rows, r.chunks
    (True, 10, 2)
    """
    if isinstance(store, str) and written_kind(store, storage_options) not in (None, "store"):
        report, tasks = output_tasks(store, storage_options)
    else:
        if not isinstance(store, EmbeddingStore):
            store = EmbeddingStore.open(store, storage_options=storage_options)
        report, tasks = check_tasks(store)
    with ProgressBar() if progress and tasks else contextlib.nullcontext():
        for r in dask.compute(*tasks):
            report.problems += r["problems"]
    return report
