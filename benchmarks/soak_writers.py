"""Soak: every kind of writer at once, appenders SIGKILLed at random; then nothing lost or twice.

For ``--minutes`` (default 10 on a local disk, 5 with ``--s3``, a moto server on the
loopback started as in tests/test_s3.py), seven processes work on one store (K=5, D=6,
8-row chunks):

- 4 appenders: ``append`` and ``store.writer`` batches of 1-12 rows to ``train`` (never
  deleted) and ``churn``; SIGKILLed at random (``--kill-every`` seconds on average) and
  restarted, numbering batches on from their log;
- 1 deleter: ``delete_split("churn")`` and ``import_files("churn", ..., mode="overwrite")``
  of a new file (on S3, where overwrite is refused, a delete then an import);
- 1 classifier replacer: ``set_classifier`` of W = b = version;
- 1 reader: ``n_rows`` and ``class_stats`` (with and without cache) of both splits, through
  one long-lived handle, which at the end must see what a fresh one sees.

Every row says which writer, batch and row it is, its split and a check value; its label
follows from them. Each process logs (JSON lines, one write each) every batch or operation
it starts, and each acknowledged (the call returned) or failed, with times.

The accounting, per batch of a split with start time ``s`` and end time ``e`` (the ack; for
a batch never acknowledged, the failure or the SIGKILL): a delete or overwrite of that split
that began after ``e`` and committed removes it (must be absent); one that overlaps
``[s, e]`` (or failed) leaves it either way; otherwise an acknowledged batch must be present.
Always: every row at most once, in its split, undamaged; an append or import whole or not at
all; a call that fails fails with an error of ncdask's (not one raised inside zarr or fsspec)
and commits nothing. At the end ``check_store`` must be clean, the classifier one whole
acknowledged version, and the cached statistics equal to a full pass.

    python benchmarks/soak_writers.py --minutes 10
    python benchmarks/soak_writers.py --s3 --minutes 5

Writes ``benchmarks/results/soak/soak_{local,s3}.{json,md}``; exit status 1 if it found
problems.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import numpy as np

import ncdask

K, D, CHUNK_ROWS = 5, 6, 8
SPLITS = ("train", "churn")
MARGIN_S = 1.0  # a killed process's last request may still land this long after the kill


# --------------------------------------------------------------------------- rows
def encode(w: int, b: int, n: int, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Rows of batch ``b`` of writer ``w``: writer, batch, row, split, check value, 1."""
    r = np.arange(n)
    X = np.empty((n, D), np.float32)
    X[:, 0], X[:, 1], X[:, 2], X[:, 3] = w, b, r, SPLITS.index(split)
    X[:, 4], X[:, 5] = check_value(w, b, r), 1.0
    return X, (w + b + r) % K


def check_value(w: Any, b: Any, r: Any) -> Any:
    return (np.int64(w) * 7919 + np.int64(b) * 104729 + np.int64(r) * 31) % 65521


class Log:
    """JSON lines appended with one ``write`` each (whole lines even when killed)."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def __call__(self, **ev: Any) -> None:
        os.write(self.fd, (json.dumps({"t": time.time(), **ev}) + "\n").encode())


def read_log(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:  # pragma: no cover - a torn last line
            pass
    return out


def error(e: BaseException) -> str:
    """``Type: message``, and where it was raised when not by ncdask itself (a dependency's
    error, not a named one)."""
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = "" if tb is None else tb.tb_frame.f_code.co_filename
    inner = "" if "/ncdask/" in where else f" [raised in {'/'.join(where.split('/')[-2:])}]"
    return f"{type(e).__name__}: {str(e)[:300]}{inner}"


# --------------------------------------------------------------------------- roles
def appender(a: argparse.Namespace, s: ncdask.EmbeddingStore, stop: Path) -> None:
    w, path = a.writer, Path(a.dir) / f"appender{a.writer}.jsonl"
    b = 1 + max((e["b"] for e in read_log(path) if e["ev"] == "start"), default=-1)
    log, rng = Log(path), np.random.default_rng([w, os.getpid()])
    while not stop.exists():
        split = SPLITS[int(rng.integers(2))]
        n, via = int(rng.integers(1, 13)), "writer" if rng.random() < 0.25 else "append"
        X, y = encode(w, b, n, split)
        log(ev="start", b=b, split=split, n=n, via=via, pid=os.getpid())
        try:
            if via == "append":
                s.append(split, X, y)
            else:
                with s.writer(split) as wr:
                    for part in (slice(0, n // 2), slice(n // 2, n)):
                        if part.stop > part.start:
                            wr.append(X[part], y[part])
            log(ev="ack", b=b, split=split)
        except Exception as e:
            log(ev="fail", b=b, err=error(e))
        b += 1
        time.sleep(a.pause)


def deleter(a: argparse.Namespace, s: ncdask.EmbeddingStore, stop: Path) -> None:
    path = Path(a.dir) / "deleter.jsonl"
    q = 1 + max((e["seq"] for e in read_log(path) if e["ev"] == "begin"), default=-1)
    log, rng = Log(path), np.random.default_rng([99, os.getpid()])
    files = Path(a.dir) / "files"
    files.mkdir(exist_ok=True)

    def op(kind: str) -> None:
        nonlocal q
        n = int(rng.integers(5, 41)) if kind != "delete" else 0
        if n:
            X, y = encode(a.appenders, q, n, "churn")
            xp, yp = files / f"X{q}.npy", files / f"y{q}.npy"
            np.save(xp, X)
            np.save(yp, y)
        log(ev="begin", seq=q, op=kind, split="churn", n=n)
        try:
            if kind == "delete":
                r = s.delete_split("churn")
            else:
                r = s.import_files("churn", str(xp), str(yp),
                                   mode="overwrite" if kind == "overwrite" else "add")
            log(ev="commit", seq=q, rows=int(r))
        except KeyError as e:
            log(ev="absent", seq=q, err=error(e))
        except ValueError as e:
            if kind == "overwrite" and "no rename" in str(e):
                log(ev="refused", seq=q, err=error(e))
                q += 1
                op("delete")
                op("import")
                return
            log(ev="fail", seq=q, err=error(e))
        except Exception as e:
            log(ev="fail", seq=q, err=error(e))
        q += 1

    while not stop.exists():
        time.sleep(rng.uniform(0.5, 3.0))
        if not stop.exists():
            op("delete" if rng.random() < 0.5 else "overwrite")


def replacer(a: argparse.Namespace, s: ncdask.EmbeddingStore, stop: Path) -> None:
    path = Path(a.dir) / "classifier.jsonl"
    v = 1 + max((e["v"] for e in read_log(path) if e["ev"] == "begin"), default=-1)
    log, rng = Log(path), np.random.default_rng([98, os.getpid()])
    while not stop.exists():
        log(ev="begin", v=v)
        try:
            s.set_classifier(np.full((K, D), float(v)), np.full(K, float(v)))
            log(ev="ack", v=v)
        except Exception as e:
            log(ev="fail", v=v, err=error(e))
        v += 1
        time.sleep(rng.uniform(0.2, 1.5))


def reader(a: argparse.Namespace, s: ncdask.EmbeddingStore, stop: Path) -> None:
    import dask

    dask.config.set(scheduler="synchronous")  # one core at most
    log, rng = Log(Path(a.dir) / "reader.jsonl"), np.random.default_rng([97, os.getpid()])
    seen = 0
    while not stop.exists():
        split, cache = SPLITS[int(rng.integers(2))], bool(rng.integers(2))
        try:
            n = s.n_rows(split)
            st = ncdask.class_stats(s, split, cache=cache)
            counts, means = st.counts.values, st.means.values
            nan = bool(np.isnan(means[counts > 0]).any())
            log(ev="read", split=split, cache=cache, n=n, n_samples=int(st.n_samples), nan=nan)
            if split == "train":
                if n < seen:
                    log(ev="regress", split=split, n=n, before=seen)
                seen = max(seen, n)
        except Exception as e:
            log(ev="fail", split=split, cache=cache, err=error(e))
        time.sleep(a.pause + 0.2)
    final = Path(a.dir) / "final"
    while not final.exists():
        time.sleep(0.1)
    view: dict[str, list] = {}
    for split in s.splits():
        for f in (s.n_rows, lambda sp: ncdask.class_stats(s, sp).n_samples,
                  lambda sp: ncdask.class_stats(s, sp, cache=True).n_samples):
            try:
                view.setdefault(split, []).append(int(f(split)))
            except Exception as e:
                view.setdefault(split, []).append(error(e))
    log(ev="final", view=view)


def child(a: argparse.Namespace) -> None:
    opts = json.loads(a.opts) if a.opts else None
    s = ncdask.EmbeddingStore.open(a.url, "a", storage_options=opts)
    role = {"appender": appender, "deleter": deleter, "classifier": replacer,
            "reader": reader}[a.role]
    role(a, s, Path(a.dir) / "stop")


# --------------------------------------------------------------------------- driver
def start(a: argparse.Namespace, work: Path, url: str, opts: dict | None, role: str,
          w: int = 0) -> subprocess.Popen:
    name = f"{role}{w if role == 'appender' else ''}"
    out = open(work / f"{name}.out", "ab")
    cmd = [sys.executable, __file__, "--role", role, "--writer", str(w), "--url", url,
           "--dir", str(work), "--opts", json.dumps(opts) if opts else "",
           "--appenders", str(a.appenders), "--pause", str(a.pause)]
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})


def soak(a: argparse.Namespace, trial: int, work: Path, url: str, opts: dict | None) -> dict:
    """Run the processes for ``a.minutes``, killing appenders; then stop them and evaluate."""
    ncdask.EmbeddingStore.create(url, K, D, chunk_rows=CHUNK_ROWS, storage_options=opts)
    rng = np.random.default_rng(trial)
    names = [f"appender{w}" for w in range(a.appenders)] + ["deleter", "classifier", "reader"]

    def launch(name: str) -> subprocess.Popen:
        if name.startswith("appender"):
            return start(a, work, url, opts, "appender", int(name[8:]))
        return start(a, work, url, opts, name)

    procs = {n: launch(n) for n in names}
    kills, exits = [], []
    t0 = time.time()
    next_kill = t0 + rng.exponential(a.kill_every)
    while time.time() < t0 + a.minutes * 60:
        time.sleep(0.05)
        for n, p in procs.items():
            if p.poll() is not None:  # died by itself: noted, restarted
                exits.append({"process": n, "rc": p.returncode, "t": time.time()})
                procs[n] = launch(n)
        if time.time() >= next_kill:
            n = f"appender{int(rng.integers(a.appenders))}"
            procs[n].send_signal(signal.SIGKILL)
            procs[n].wait()
            kills.append({"process": n, "pid": procs[n].pid, "t": time.time()})
            procs[n] = launch(n)
            next_kill = time.time() + rng.exponential(a.kill_every)
    (work / "stop").touch()
    t_stop, hung = time.time(), []
    for n, p in procs.items():
        if n == "reader":
            continue
        try:
            p.wait(timeout=120)
        except subprocess.TimeoutExpired:
            hung.append(n)
            p.kill()
            p.wait()
            kills.append({"process": n, "pid": p.pid, "t": time.time(), "hung": True})
    (work / "final").touch()
    try:
        procs["reader"].wait(timeout=300)
    except subprocess.TimeoutExpired:
        hung.append("reader")
        procs["reader"].kill()
    out = evaluate(work, url, opts, kills, t_stop, a.appenders)
    out.update(trial=trial, seconds=round(time.time() - t0, 1), kills=len(kills),
               hung=hung, unexpected_exits=exits,
               crash_output=[tail(work / f"{e['process']}.out") for e in exits[:3]])
    return out


def tail(path: Path, n: int = 1500) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else ""


# --------------------------------------------------------------------------- accounting
def batches_of(work: Path, kills: list[dict], t_stop: float, appenders: int) -> tuple:
    """Every batch ``(w, b)``: split, rows, interval, acknowledged; and the removals."""
    killed = {k["pid"]: k["t"] for k in kills}
    batches: dict[tuple[int, int], dict] = {}
    for w in range(appenders):
        for e in read_log(work / f"appender{w}.jsonl"):
            if e["ev"] == "start":
                batches[(w, e["b"])] = {"split": e["split"], "n": e["n"], "via": e["via"],
                                        "s": e["t"], "pid": e["pid"], "acked": False}
            elif e["ev"] in ("ack", "fail"):
                batches[(w, e["b"])].update(acked=e["ev"] == "ack", e=e["t"], err=e.get("err"))
    for bt in batches.values():  # never acknowledged: up to the kill (or the stop)
        bt.setdefault("e", killed.get(bt["pid"], t_stop) + MARGIN_S)
    removals, ops = [], collections.Counter()
    begun, ended = {}, set()
    for e in read_log(work / "deleter.jsonl"):
        if e["ev"] == "begin":
            begun[e["seq"]] = e
            continue
        b = begun[e["seq"]]
        ended.add(e["seq"])
        ops[f"{b['op']} {e['ev']}"] += 1
        if b["op"] in ("delete", "overwrite") and e["ev"] in ("commit", "fail"):
            removals.append({"seq": e["seq"], "split": b["split"], "b": b["t"], "e": e["t"],
                             "certain": e["ev"] == "commit"})
        if b["op"] in ("overwrite", "import") and e["ev"] in ("commit", "fail"):
            batches[(appenders, e["seq"])] = {
                "split": b["split"], "n": b["n"], "via": "import", "s": b["t"], "e": e["t"],
                "acked": e["ev"] == "commit", "err": e.get("err")}
    for q, b in begun.items():  # never finished (the deleter hung): either way
        if q not in ended:
            ops[f"{b['op']} unfinished"] += 1
            if b["op"] != "import":
                removals.append({"seq": q, "split": b["split"], "b": b["t"],
                                 "e": t_stop + MARGIN_S, "certain": False})
            if b["op"] != "delete":
                batches[(appenders, q)] = {"split": b["split"], "n": b["n"], "via": "import",
                                           "s": b["t"], "e": t_stop + MARGIN_S, "acked": False}
    return batches, removals, ops


def expected(bt: dict, removals: list[dict], seq: int | None) -> str:
    """"present", "absent" or "maybe" for a batch (see the module docstring)."""
    state = "present" if bt["acked"] else "maybe"
    for r in removals:
        if r["split"] != bt["split"] or r["seq"] == seq or r["e"] < bt["s"]:
            continue
        if r["certain"] and r["b"] > bt["e"]:
            return "absent"
        state = "maybe"
    return state


def found_rows(url: str, opts: dict | None) -> tuple[dict, dict, dict]:
    """``{(w, b): {split: Counter(row)}}``, damaged rows by kind (with examples), row counts."""
    s = ncdask.EmbeddingStore.open(url, storage_options=opts)
    found: dict = collections.defaultdict(lambda: collections.defaultdict(collections.Counter))
    damaged: dict[str, list] = collections.defaultdict(list)
    rows = {}
    for split in s.splits():
        d = s.split(split)
        X, y = d.embeddings.values, d.labels.values
        rows[split] = int(X.shape[0])
        ok = np.isfinite(X).all(1) & (X[:, 5] == 1)
        w, b, r = (np.where(ok, X[:, i], 0).astype(np.int64) for i in range(3))
        ok &= X[:, 4] == check_value(w, b, r)
        for i in np.flatnonzero(~ok):
            damaged["bad values (NaN, fill or wrong check)"].append(f"{split}[{i}]: {X[i]}")
        lab_ok = ok & (y == (w + b + r) % K)
        for i in np.flatnonzero(ok & ~lab_ok):
            damaged["wrong label"].append(f"{split}[{i}]: {X[i]} label {y[i]}")
        for i in np.flatnonzero(lab_ok & (X[:, 3] != SPLITS.index(split) if split in SPLITS
                                          else lab_ok)):
            damaged["in another split"].append(f"{split}[{i}]: {X[i]}")
        for i in np.flatnonzero(lab_ok):
            found[(int(w[i]), int(b[i]))][split][int(r[i])] += 1
    return found, damaged, rows


def evaluate(work: Path, url: str, opts: dict | None, kills: list[dict], t_stop: float,
             appenders: int) -> dict:
    batches, removals, ops = batches_of(work, kills, t_stop, appenders)
    found, damaged, rows = found_rows(url, opts)
    tally = collections.Counter()
    examples: dict[str, list] = collections.defaultdict(list)
    for key, bt in batches.items():
        want = expected(bt, removals, key[1] if key[0] == appenders else None)
        got = found.pop(key, {})
        mine = got.get(bt["split"], collections.Counter())
        dup = sum(c - 1 for cs in got.values() for c in cs.values())
        k = len(mine)
        tally[f"batches {want}"] += 1
        tally["rows acknowledged"] += bt["n"] if bt["acked"] else 0
        tally["rows required present"] += bt["n"] if want == "present" else 0
        problems = {
            "rows lost": bt["n"] - k if want == "present" else 0,
            "rows kept after an acknowledged delete": k if want == "absent" else 0,
            "rows duplicated": dup,
            "torn batches": int(0 < k < bt["n"] and (bt["via"] != "writer" or want != "maybe")),
        }
        for name, v in problems.items():
            if v:
                tally[name] += v
                if len(examples[name]) < 5:
                    examples[name].append({"writer": key[0], "batch": key[1], "found": k,
                                           "dup": dup, **{x: bt[x] for x in bt if x != "pid"}})
        if want == "maybe":
            tally["maybe-batches present" if k else "maybe-batches absent"] += 1
        if not bt["acked"] and bt.get("err") and k:
            tally["failed batches present"] += 1
        if not bt["acked"] and bt.get("err"):
            kind = f"failed: {bt['err'].split(':')[0]}"
            tally[kind] += 1
            if "[raised in" in bt["err"]:
                tally["failed with an error ncdask does not name"] += 1
            if len(examples[kind]) < 2:
                examples[kind].append(bt["err"])
    phantom = sum(sum(c.values()) for cs in found.values() for c in cs.values())
    if phantom:
        tally["rows never written (phantom)"] = phantom
    for kind, ex in damaged.items():
        tally[f"damaged rows: {kind}"] = len(ex)
        examples[f"damaged rows: {kind}"] = ex[:5]
    report = ncdask.check_store(url, storage_options=opts)
    out = {"rows found": rows, "counts": dict(tally), "deleter ops": dict(ops),
           "removals committed": sum(r["certain"] for r in removals),
           "check": {"ok": report.ok, "problems": len(report.problems),
                     "examples": report.problems[:5], "notes": report.notes[:5],
                     "rows": report.rows, "chunks": report.chunks},
           "examples": dict(examples)}
    out.update(side_checks(work, url, opts, rows, appenders))
    return out


def side_checks(work: Path, url: str, opts: dict | None, rows: dict, appenders: int) -> dict:
    """The classifier, the reader's long-lived view and the cached statistics."""
    s = ncdask.EmbeddingStore.open(url, "a", storage_options=opts)
    acked = [e["v"] for e in read_log(work / "classifier.jsonl") if e["ev"] == "ack"]
    clf: dict[str, Any] = {"versions acknowledged": len(acked), "failures": collections.Counter(
        e["err"].split(":")[0] for e in read_log(work / "classifier.jsonl") if e["ev"] == "fail")}
    try:
        W, b = s.classifier()
        v = float(b[0])
        clf.update(version=v, whole=bool((W == v).all() and (b == v).all()),
                   ok=bool((W == v).all() and (b == v).all()) and (not acked or v >= acked[-1]))
    except Exception as e:
        clf.update(ok=False, error=error(e))
    rlog = read_log(work / "reader.jsonl")
    fails = collections.Counter(e["err"].split(":")[0] for e in rlog if e["ev"] == "fail")
    final = next((e["view"] for e in rlog if e["ev"] == "final"), None)
    stale = final is None or set(final) != set(rows) or any(
        isinstance(v, int) and v != rows[sp] for sp, vs in final.items() for v in vs)
    first = min((e["t"] for w in range(appenders) for e in read_log(work / f"appender{w}.jsonl")
                 if e["ev"] == "ack" and e.get("split") == "train"), default=float("inf"))
    lost = [e["err"] for e in rlog if e["ev"] == "fail" and e["split"] == "train"
            and e["t"] > first and e["err"].startswith("KeyError")]
    rd = {"reads": sum(e["ev"] == "read" for e in rlog), "failures": dict(fails),
          "NaN means": sum(bool(e.get("nan")) for e in rlog),
          "train count went down": sum(e["ev"] == "regress" for e in rlog),
          "final view (n_rows, stats, cached stats)": final, "stale": stale,
          "train missing after its first ack": len(lost),
          "errors other than the churned split going": sum(map(_unexpected, rlog)),
          "fail examples": [e["err"] for e in rlog if _unexpected(e)][:3]}
    cache = {}
    for split in rows:
        try:
            full = ncdask.class_stats(s, split).counts.values
            cached = ncdask.class_stats(s, split, cache=True).counts.values
            cache[split] = bool((full == cached).all())
        except Exception as e:
            cache[split] = error(e)
    return {"classifier": clf, "reader": rd, "cache equals full pass": cache}


def _unexpected(e: dict) -> bool:
    """A reader's failure other than the churned split missing or changing under the read
    (``SplitChangedError``: what a read racing a delete is told)."""
    return e["ev"] == "fail" and "unknown split" not in e["err"] and not (
        e["split"] != "train" and e["err"].startswith("SplitChangedError"))


def verdict(t: dict) -> list[str]:
    """The problems of one trial, in words (empty: clean)."""
    c = t["counts"]
    bad = [f"{k}: {v}" for k, v in c.items()
           if v and (k.startswith(("rows lost", "rows kept", "rows dup", "torn", "damaged",
                                   "rows never", "failed batches present", "failed with")))]
    if not t["check"]["ok"]:
        bad.append(f"check: {t['check']['problems']} problem(s)")
    if not t["classifier"].get("ok"):
        bad.append(f"classifier: {t['classifier']}")
    r = t["reader"]
    if (r["stale"] or r["NaN means"] or r["train count went down"]
            or r["train missing after its first ack"]
            or r["errors other than the churned split going"]):
        bad.append(f"reader: stale={r['stale']}, NaN means={r['NaN means']}, train count "
                   f"went down {r['train count went down']} times, train missing "
                   f"{r['train missing after its first ack']} times, "
                   f"{r['errors other than the churned split going']} errors (e.g. "
                   f"{r['fail examples'][:1]})")
    if any(v is not True for v in t["cache equals full pass"].values()):
        bad.append(f"cache: {t['cache equals full pass']}")
    if t["hung"] or t["unexpected_exits"]:
        bad.append(f"hung: {t['hung']}, unexpected exits: {len(t['unexpected_exits'])}")
    return bad


def markdown(res: dict) -> str:
    lines = [f"# Soak of concurrent writers ({res['backend']}, {res['minutes']} min x "
             f"{len(res['trials'])} trial(s))", "", f"ncdask {res['ncdask']} at {res['code']}; "
             f"{res['appenders']} appenders (SIGKILL every ~{res['kill_every']} s), 1 deleter, "
             "1 classifier replacer, 1 reader; `python benchmarks/soak_writers.py "
             f"{' '.join(res['argv'])}`", ""]
    for t in res["trials"]:
        c = t["counts"]
        lines += [f"## Trial {t['trial']}: {'clean' if not t['problems'] else 'PROBLEMS'}", "",
                  "| what | value |", "|---|---|",
                  f"| seconds, SIGKILLs | {t['seconds']}, {t['kills']} |",
                  f"| rows acknowledged / required present | {c.get('rows acknowledged', 0)} "
                  f"/ {c.get('rows required present', 0)} |",
                  f"| rows found | {t['rows found']} |",
                  f"| batches required present / absent / either way | "
                  f"{c.get('batches present', 0)} / {c.get('batches absent', 0)} / "
                  f"{c.get('batches maybe', 0)} |",
                  f"| deletes+overwrites committed | {t['removals committed']} |",
                  f"| `check_store` | {'ok' if t['check']['ok'] else t['check']['problems']} "
                  f"({t['check']['rows']} rows, {t['check']['chunks']} chunks) |"]
        lines += [f"| {k} | {v} |" for k, v in sorted(c.items())
                  if not k.startswith(("rows ack", "rows req", "batches "))]
        lines += ["", "Problems:" if t["problems"] else "No problems.", ""]
        lines += [f"- {p}" for p in t["problems"]]
        lines += [f"- check: {p}" for p in t["check"]["examples"]]
        lines.append("")
    return "\n".join(lines)


def code_version() -> str:
    """The ncdask checkout this runs (path, branch and commit)."""
    src = Path(ncdask.__file__).parent.parent
    git = ["git", "-C", str(src), "log", "-1", "--format=%h %s"]
    head = subprocess.run(git, capture_output=True, text=True).stdout.strip()
    branch = subprocess.run(["git", "-C", str(src), "branch", "--show-current"],
                            capture_output=True, text=True).stdout.strip()
    return f"{src} ({branch}) {head[:80]}"


def s3_server() -> tuple[Any, dict]:
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    opts = {"key": "testing", "secret": "testing",
            "client_kwargs": {"endpoint_url": f"http://{host}:{port}",
                              "region_name": "eu-west-1"}}
    return server, opts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, help="per trial (default 10, or 5 with --s3)")
    ap.add_argument("--s3", action="store_true", help="on a moto S3 server on the loopback")
    ap.add_argument("--trials", type=int, default=1)
    ap.add_argument("--appenders", type=int, default=4)
    ap.add_argument("--kill-every", type=float, default=4.0, help="mean seconds between kills")
    ap.add_argument("--pause", type=float, default=0.02, help="seconds between batches")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "soak"))
    ap.add_argument("--keep", action="store_true", help="keep the logs and the local store")
    for hidden in ("--role", "--url", "--dir", "--opts"):
        ap.add_argument(hidden, help=argparse.SUPPRESS)
    ap.add_argument("--writer", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.role:
        return child(a)
    warnings.simplefilter("ignore")  # EmptyClassWarning of the final reads: not news here
    a.minutes = a.minutes if a.minutes is not None else (5.0 if a.s3 else 10.0)
    server, opts, bucket = None, None, None
    if a.s3:
        import s3fs

        server, opts = s3_server()
        bucket = f"ncdask-soak-{uuid.uuid4().hex[:8]}"
        s3fs.S3FileSystem(**opts).mkdir(bucket)
    res = {"backend": "s3 (moto)" if a.s3 else "local disk", "minutes": a.minutes,
           "appenders": a.appenders, "kill_every": a.kill_every, "ncdask": ncdask.__version__,
           "code": code_version(),
           "argv": sys.argv[1:], "trials": []}
    try:
        for trial in range(a.trials):
            work = Path(tempfile.mkdtemp(prefix="ncdask-soak-"))
            url = f"s3://{bucket}/soak{trial}.zarr" if a.s3 else str(work / "store.zarr")
            t = soak(a, trial, work, url, opts)
            t["problems"] = verdict(t)
            res["trials"].append(t)
            print(json.dumps({k: t[k] for k in ("trial", "kills", "counts", "problems")},
                             default=str), flush=True)
            if a.keep:
                t["work"] = str(work)
            else:
                shutil.rmtree(work, ignore_errors=True)
    finally:
        if server is not None:
            server.stop()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"soak_{'s3' if a.s3 else 'local'}"
    (out / f"{name}.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    (out / f"{name}.md").write_text(markdown(res))
    print(f"wrote {out / name}.json and .md")
    sys.exit(1 if any(t["problems"] for t in res["trials"]) else 0)


if __name__ == "__main__":
    main()
