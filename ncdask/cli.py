"""The ``ncdask`` command line: ``demo``, ``import``, ``stats``, ``analyze``, ``rm``, ``check``.

Exit codes: 0 success, 2 bad input (usage, missing store, unknown split or metric,
unreadable files), 130 interrupted (Ctrl-C; what the command staged is removed), 1 anything
else. Errors, warnings (``ncdask: error: ...``) and progress go to stderr, results to stdout;
``--json`` writes scalar metrics ``{name: value}`` (per set with ``--sweep``), NaN as
``null``, ±inf as ``"Infinity"`` / ``"-Infinity"``."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import shutil
import sys
import textwrap
import threading
import time
import traceback
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

from ncdask._version import __version__


class CLIError(Exception):
    """Bad input on the command line; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


class _Interrupted(KeyboardInterrupt):
    """Ctrl-C, with what the command had committed (the message's tail)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"ncdask: error: {message}\n")


def _number(kind: type, ok: Any, what: str) -> Any:
    """An argparse type: ``kind(text)`` that must pass ``ok``, else a message naming ``what``."""

    def parse(text: str) -> Any:
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not ok(v):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return v

    return parse


_positive_int = _number(int, lambda v: v > 0, "a positive integer")
_nonneg_int = _number(int, lambda v: v >= 0, "an integer >= 0")
_positive_float = _number(float, lambda v: math.isfinite(v) and v > 0,
                          "a positive finite number")


class _Help(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples' line breaks and shows every default that is set."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("default" not in text and action.option_strings
                and action.default not in (None, False, argparse.SUPPRESS)):
            text += " (default: %(default)s)"
        return text


_DEBUG = "show the traceback of an error or of Ctrl-C (default: one line)"
_SCHED = "where the Dask graphs run: threads, processes, sync, a scheduler ADDRESS "\
    "(tcp://host:8786) or local-cuda (default: threads)"


def _examples(*lines: str) -> str:
    head = "examples:" if len(lines) > 1 else "example:"
    return "\n".join([head, *(f"  {ln}" for ln in lines)])


def _metric_help() -> str:
    # the metric names come from ncdask.metrics.api, which imports dask: only for --help
    from ncdask.metrics.api import GROUPS, METRICS

    groups = "; ".join(f"{g} = {' '.join(v)}" for g, v in GROUPS.items()
                       if g in ("nc1", "nc2", "nc2g", "nc2w", "nc3", "nc4", "nc5"))
    return ("metrics:\n  " + "\n  ".join(textwrap.wrap(" ".join(METRICS), 76))
            + "\ngroups (--metrics nc1 ...):\n  " + "\n  ".join(textwrap.wrap(groups, 76)))


def _opt(*names: str, **kw: Any) -> tuple[tuple[str, ...], dict[str, Any]]:
    return names, kw


_URL = _opt("url", help="store path or fsspec URL")
_SCHEDULER = _opt("--scheduler", help=_SCHED)
_NO_WORKERS = _opt("--no-workers-timeout", type=_positive_float, metavar="SECONDS",
                   help="with a scheduler ADDRESS or local-cuda: stop with an error when "
                        "work has waited this long with no worker (default: dask config "
                        "ncdask.no_workers_timeout, else 60)")
_QUIET = _opt("--quiet", "-q", action="store_true",
              help="hide progress messages and bars; results and where outputs were "
                   "written are still printed")
_SET = [_opt("--layer", help="embedding set: layer tag (default: the untagged set)"),
        _opt("--epoch", type=int, help="embedding set: epoch tag (default: the untagged set)")]


def _cache_and_overwrite(kind: str) -> list[Any]:
    """``--no-cache`` and ``--overwrite`` of the commands that compute class statistics."""
    return [_opt("--no-cache", action="store_true",
                 help="compute the class statistics afresh and keep none in the store "
                      "(default: keep them beside the split and reuse them)"),
            _opt("--overwrite", action="store_true",
                 help=f"replace --out if it holds ncdask {kind} (anything else is never "
                      "replaced)")]


#: Each command: its help, examples, epilog and options (a list inside marks a mutually
#: exclusive group).
_SPECS: dict[str, tuple[str, tuple[str, ...], str, list[Any]]] = {
    "demo": ("train a small MLP on digits and watch NC happen",
             ("ncdask demo --out /tmp/ncdask-demo --epochs 200",), "", [
        _opt("--out", default="ncdask-demo", help="output folder"),
        _opt("--epochs", type=_positive_int, help="training epochs (default: the demo's, "
             "long enough to reach the terminal phase)"),
        _opt("--seed", type=int, default=0, help="seed of the data split and network"),
        _SCHEDULER, _NO_WORKERS, _QUIET]),
    "import": (
        "import saved .npy / .npz embeddings into a store",
        ("ncdask import X.npy y.npy --store emb.zarr --split train --classifier W.npy",
         "ncdask import test.npz --store emb.zarr --split test",
         "ncdask import ood.npy --no-labels --store emb.zarr --split ood"),
        "Every file, label and the classifier are checked before anything is\n"
        "written, and an import commits all its rows at once: a failed import\n"
        "changes nothing. Importing a file that the split already holds is\n"
        "refused unless --append or --overwrite is given; the same command run\n"
        "again after a kill continues with the first file not yet imported.", [
            _opt("files", nargs="+", metavar="FILES",
                 help="X.npy y.npy pairs and/or .npz files (keys X/Y or embeddings/labels); "
                      "with --no-labels, X.npy files alone"),
            _opt("--store", required=True, help="store path or URL (created if missing)"),
            _opt("--split", required=True, help="split name (train, test, ood, ...)"),
            _opt("--classifier", metavar="W.npy",
                 help="classifier weights (K, D) of this set (default: none)"),
            _opt("--bias", metavar="b.npy", help="classifier bias (K,) (default: none)"),
            _opt("--n-classes", type=_positive_int,
                 help="K, for a new store (default: the classifier's rows, else the "
                      "largest label + 1)"),
            _opt("--ignore-index", type=int,
                 help="padding label kept in a new store and left out of statistics "
                      "(default: none)"),
            _opt("--dtype", choices=("float16", "float32", "float64"),
                 help="storage dtype of a new store (default: float16 when every file is "
                      "float16, else float32)"),
            _opt("--no-labels", action="store_true",
                 help="the files hold embeddings only: an unlabelled split (OOD data)"),
            [_opt("--append", action="store_true",
                  help="add the rows even if the split already holds these files"),
             _opt("--overwrite", action="store_true",
                  help="replace the split's rows with these files' rows")],
            *_SET, _QUIET]),
    "stats": ("class statistics of one split of a store",
              ("ncdask stats emb.zarr --split train --out stats.zarr",), "", [
        _URL,
        _opt("--split", default="train", help="split to summarise"),
        _opt("--out", help="write the statistics to this Zarr path (default: print only)"),
        *_cache_and_overwrite("statistics"), *_SET, _SCHEDULER, _NO_WORKERS, _QUIET]),
    "analyze": (
        "every Neural Collapse metric of a store",
        ("ncdask analyze emb.zarr",
         "ncdask analyze emb.zarr --metrics nc1 nc2 --json metrics.json --out results.zarr",
         "ncdask analyze emb.zarr --sweep --layer fc_in"),
        "Run 'ncdask analyze --help' for the metrics.", [
            _URL,
            _opt("--train", default="train", help="split of the class statistics"),
            _opt("--test", help="split for NC4 (default: 'test' if present)"),
            _opt("--ood", help="split for NC5, labelled or not (default: 'ood' if present)"),
            _opt("--tile-size", type=_positive_int,
                 help="classes per pairwise tile (default: the largest within the budget)"),
            _opt("--memory-budget", help="bytes per blocked task, e.g. 64MiB (default: "
                 "128 MiB, less on small workers)"),
            _SCHEDULER, _NO_WORKERS,
            _opt("--out", help="write the metrics to this Zarr path (default: none)"),
            *_cache_and_overwrite("results"),
            _opt("--json", metavar="FILE", help="write the scalar metrics as JSON to FILE "
                 "('-': stdout) (default: none)"),
            _opt("--metrics", nargs="+", metavar="M",
                 help="metrics or groups such as nc1 nc2 nc3 nc4 nc5 erank, in any case "
                      "(default: all; listed below)"),
            _opt("--dist-exp", type=_positive_float, help="CDNV distance exponent (default: 1)"),
            _opt("--by-frequency", type=_positive_int, metavar="N",
                 help="also NC1 and NC4 within N bins of classes ranked by count, most "
                      "frequent first (a head/tail breakdown for long-tailed labels; each "
                      "bin's share of nc1_pinv reads the train split once more)"),
            _opt("--min-count", type=_nonneg_int, help="leave out classes with fewer samples "
                 "(default: keep every non-empty class)"),
            _opt("--ignore-index", type=int,
                 help="label to drop from the statistics (default: the store's)"),
            *_SET,
            _opt("--sweep", action="store_true",
                 help="measure every embedding set (an epoch or layer sweep)"),
            _QUIET]),
    "rm": ("delete one split of a store (its embeddings and labels)",
           ("ncdask rm emb.zarr --split train",
            "ncdask rm emb.zarr --split ood --layer fc_in --epoch 3"),
           "Only splits that ncdask wrote are deleted; the classifier and other splits stay.", [
        _URL, _opt("--split", required=True, help="the split to delete"), *_SET, _QUIET]),
    "check": (
        "verify a store (every committed chunk, record, set and cache entry) or an output",
        ("ncdask check emb.zarr", "ncdask check s3://bucket/emb.zarr --scheduler "
         "tcp://10.0.0.1:8786", "ncdask check stats.zarr"),
        "Reads every chunk that holds committed rows (checksums, missing chunks,\n"
        "NaN where none was written, labels out of range, counts against the\n"
        "records), every classifier and every statistics-cache entry (against its\n"
        "digests). On statistics or results that ncdask wrote (URL: their Zarr\n"
        "store), checks every chunk against its digest. Prints each problem with\n"
        "its set, split, array and chunk. Exit status: 0 no problem, 1 problems\n"
        "found, 2 the store cannot be read at all (the error names the broken file).",
        [_URL, _SCHEDULER, _NO_WORKERS, _QUIET]),
}


def build_parser(*, full_help: bool = False) -> argparse.ArgumentParser:
    """The argument parser of the ``ncdask`` command; ``full_help`` lists the metrics in
    ``analyze --help`` (which imports dask)."""
    p = _Parser(
        prog="ncdask", formatter_class=_Help,
        description="Out-of-core Neural Collapse metrics on Zarr embedding stores.",
        epilog=_examples(
            "ncdask demo",
            "ncdask import X.npy y.npy --store emb.zarr --split train --classifier W.npy",
            "ncdask analyze emb.zarr --metrics nc1 nc2 --json -",
        ) + "\n\nRun 'ncdask COMMAND --help' for the options of a command.")
    p.add_argument("--version", action="version", version=f"ncdask {__version__}")
    p.add_argument("--debug", action="store_true", help=_DEBUG)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help, examples, epilog, options) in _SPECS.items():
        if name == "analyze" and full_help:
            epilog = _metric_help()
        cmd = sub.add_parser(name, help=help, description=help, formatter_class=_Help,
                             epilog=_examples(*examples) + (f"\n\n{epilog}" if epilog else ""))
        for opt in options:
            group = cmd.add_mutually_exclusive_group() if isinstance(opt, list) else cmd
            for names, kw in opt if isinstance(opt, list) else [opt]:
                group.add_argument(*names, **kw)
        cmd.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                         help=_DEBUG)
    return p


def _say(args: argparse.Namespace, *parts: Any) -> None:
    if not getattr(args, "quiet", False):
        print(*parts, file=sys.stderr, flush=True)


def _wrote(*paths: Any) -> None:
    """Where outputs went (on stderr, with --quiet too)."""
    print(f"wrote {', '.join(map(str, paths))}", file=sys.stderr, flush=True)


def _open_store(url: str, mode: str = "r") -> Any:
    from ncdask.store.embedding import EmbeddingStore

    try:
        return EmbeddingStore.open(url, mode)
    except FileNotFoundError as e:
        raise CLIError(f"no ncdask store at {url!r}") from e


def _tags(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in (("layer", args.layer), ("epoch", args.epoch)) if v is not None}


def _where(tags: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in tags.items()) or "the default set"


def _require_split(store: Any, name: str, tags: dict[str, Any]) -> None:
    from ncdask.analysis import require_split

    require_split(store, name, tags)


def format_table(results: Any, columns: Sequence[str], dim: str = "epoch") -> str:
    """The computed metrics among ``columns`` that run along ``dim`` as a text table."""
    cols = [c for c in columns if c in results and results[c].dims == (dim,)]
    return results[cols].to_dataframe().to_string(float_format=lambda v: f"{v:.4g}")


def format_sweep(results: Any, dim: str, width: int | None = None) -> str:
    """A sweep's computed metrics as text: a row per metric (its name and long name), a
    column per set along ``dim``, at most ``width`` characters wide (default: the terminal's,
    80 when not one); sets that do not fit go to further blocks, each repeating the metric
    column. The long names wrap at the width that gives the fewest lines."""
    names = [n for n, v in results.data_vars.items() if v.dims == (dim,)]
    if not names:
        return "no metrics per set"
    width = width or shutil.get_terminal_size((80, 24)).columns
    heads = [str(v) for v in results[dim].values]
    cells = [[f"{float(x):.4g}" for x in results[n].values] for n in names]
    cw = [max(min(len(h), 12), *(len(r[j]) for r in cells)) for j, h in enumerate(heads)]
    kw = max(len("metric"), *map(len, names))
    longs = [str(results[n].attrs.get("long_name", "")) for n in names]

    def wrap(text: str, w: int) -> list[str]:
        return textwrap.wrap(text, w, break_on_hyphens=False) or [""]

    def layout(lw: int) -> tuple[int, list[range]]:
        blocks = _blocks(kw + 2 + lw, cw, width)
        return len(blocks) * (3 + sum(len(wrap(t, lw)) for t in longs)), blocks

    top = max(12, min(max(9, *map(len, longs)), width - kw - 4 - max(cw)))
    lw = min(range(12, top + 1), key=lambda w: (layout(w)[0], -w))
    out = []
    for cols in layout(lw)[1]:
        tops = [wrap(heads[j], cw[j]) for j in cols]
        n = max(map(len, tops))
        tops = [[""] * (n - len(t)) + t for t in tops]  # the set names end on one line
        rows = [" " * (kw + lw + 4) + dim]
        for i in range(n):
            label = f"{'metric':<{kw}}  long_name" if i == n - 1 else ""
            rows.append(f"{label:<{kw + lw + 2}}"
                        + "".join(f"  {t[i]:>{cw[j]}}" for t, j in zip(tops, cols, strict=True)))
        rows.append("  ".join(["-" * kw, "-" * lw, *("-" * cw[j] for j in cols)]))
        for name, long, vals in zip(names, longs, cells, strict=True):
            lines = wrap(long, lw)
            rows.append(f"{name:<{kw}}  {lines[0]:<{lw}}"
                        + "".join(f"  {vals[j]:>{cw[j]}}" for j in cols))
            rows += [f"{'':<{kw}}  {ln}" for ln in lines[1:]]
        out.append("\n".join(r.rstrip() for r in rows))
    return "\n\n".join(out)


def _blocks(label: int, widths: list[int], width: int) -> list[range]:
    """The columns of ``widths`` in blocks that fit ``width`` beside a ``label`` column."""
    blocks, start = [], 0
    while start < len(widths):
        end, used = start + 1, label + 2 + widths[start]
        while end < len(widths) and used + 2 + widths[end] <= width:
            used, end = used + 2 + widths[end], end + 1
        blocks.append(range(start, end))
        start = end
    return blocks


def json_value(v: float) -> float | str | None:
    """A float as JSON allows it: NaN → None (null), ±inf → "Infinity" / "-Infinity".

    >>> json_value(float("nan")), json_value(float("-inf")), json_value(0.5)
    (None, '-Infinity', 0.5)
    """
    v = float(v)
    if math.isnan(v):
        return None
    if math.isinf(v):
        return "Infinity" if v > 0 else "-Infinity"
    return v


def scalar_dict(results: Any) -> dict[str, Any]:
    """The scalar metrics of computed results as JSON-ready ``{name: value}``; for a sweep,
    ``{name: [value per set]}`` and the sweep coordinate."""
    import numpy as np

    sweep = [d for d in results.dims if d not in ("class", "margin_bin")]
    out: dict[str, Any] = {}
    if sweep:
        d = sweep[0]
        out[d] = [v.item() if hasattr(v, "item") else v for v in results[d].values]
    for name, var in results.data_vars.items():
        if "class" in var.dims or "margin_bin" in var.dims:  # not scalars: in --out
            continue
        vals = np.asarray(var.values, dtype=np.float64)
        out[name] = [json_value(x) for x in vals.ravel()] if vals.ndim else json_value(vals)
    return out


def format_summary(results: Any, out: str | None = None) -> str:
    """A table of computed scalar metrics (metric, value, long_name) of one set; the names
    of the per-class ones, written to ``out`` (if given)."""
    rows = []
    for name, var in results.data_vars.items():
        if var.dims:
            continue
        rows.append((name, f"{float(var.values):.6g}", var.attrs.get("long_name", "")))
    per_class = [n for n, v in results.data_vars.items() if "class" in v.dims]
    if not rows:
        return "no scalar metrics"
    w0 = max(len("metric"), *(len(r[0]) for r in rows))
    w1 = max(len("value"), *(len(r[1]) for r in rows))
    lines = [f"{'metric':<{w0}}  {'value':>{w1}}  long_name", f"{'-' * w0}  {'-' * w1}  ---------"]
    lines += [f"{a:<{w0}}  {b:>{w1}}  {c}" for a, b, c in rows]
    per_bin = [n for n, v in results.data_vars.items() if v.dims == ("frequency_bin",)]
    if per_bin:
        lines.append("")
        lines.append(_bin_table(results, per_bin))
    if per_class:
        where = f"in {out}" if out else "not shown; written with --out"
        lines.append(f"per-class ({where}): {', '.join(per_class)}")
    # metrics without their input ("no ood given"); the undefined ones are said once, by
    # their DegenerateInputWarning on stderr
    left = {k: r for k, r in (results.attrs.get("left_out") or {}).items() if r.endswith(" given")}
    if left:
        lines.append("left out: " + "; ".join(f"{k} ({r})" for k, r in left.items()))
    return "\n".join(lines)


def _bin_table(results: Any, names: list[str]) -> str:
    """The head/tail breakdown (``--by-frequency``): one row per class-count bin."""
    head = ["bin", "classes", "counts", *names]
    rows = []
    for i in range(results.sizes["frequency_bin"]):
        lo, hi = (int(results[c].values[i]) for c in ("bin_min_count", "bin_max_count"))
        rows.append([str(i), str(int(results["bin_n_classes"].values[i])), f"{lo}-{hi}",
                     *(f"{float(results[n].values[i]):.4g}" for n in names)])
    w = [max(len(h), *(len(r[j]) for r in rows)) for j, h in enumerate(head)]
    out = ["  ".join(f"{h:>{w[j]}}" for j, h in enumerate(head)),
           "  ".join("-" * x for x in w)]
    out += ["  ".join(f"{v:>{w[j]}}" for j, v in enumerate(r)) for r in rows]
    return "by class frequency (bin 0: the most frequent classes)\n" + "\n".join(out)


def _write_json(obj: dict, target: str) -> None:
    text = json.dumps(obj, indent=2, allow_nan=False)
    if target == "-":
        print(text)
    else:
        Path(target).write_text(text + "\n")


def _cmd_demo(args: argparse.Namespace) -> int:
    try:
        import matplotlib  # noqa: F401
        import sklearn  # noqa: F401

        from ncdask._demo.demo import TABLE, outputs, run_demo, summary_line
    except ImportError as e:
        raise CLIError(f"the demo needs scikit-learn and matplotlib: pip install 'ncdask[demo]' "
                       f"({e})", code=1) from e
    kw = {} if args.epochs is None else {"epochs": args.epochs}
    try:
        res = run_demo(args.out, seed=args.seed, scheduler=args.scheduler, quiet=args.quiet,
                       **kw)
    except KeyboardInterrupt as e:
        raise _Interrupted(f"the demo's outputs in {args.out} are incomplete") from e
    if args.quiet:  # run_demo said it otherwise
        _wrote(*[p for p in outputs(args.out) if p.exists()])
    print(format_table(res, (*TABLE, "train_acc", "test_acc")))
    print(summary_line(res))
    return 0


def _pairs(files: list[str], labels: bool = True) -> Iterator[tuple[str, str | None]]:
    i = 0
    while i < len(files):
        f = files[i]
        if f.endswith(".npz") or (not labels and f.endswith(".npy")):
            yield f, None
            i += 1
        elif f.endswith(".npy"):
            if i + 1 >= len(files) or not files[i + 1].endswith(".npy"):
                raise CLIError(f"{f}: an .npy embeddings file must be followed by its .npy "
                               "labels (or pass --no-labels for unlabelled data)")
            yield f, files[i + 1]
            i += 2
        else:
            raise CLIError(f"{f}: expected .npy (X y pairs) or .npz files")


def _load_matrix(path: str, what: str) -> Any:
    import numpy as np

    try:
        a = np.load(path)
    except (OSError, ValueError) as e:
        raise CLIError(f"{path}: cannot read {what}: {e}") from e
    if not np.issubdtype(a.dtype, np.number) or not np.isfinite(a).all():
        raise CLIError(f"{path}: {what} must be finite numbers")
    return a


def _cmd_import(args: argparse.Namespace) -> int:
    import numpy as np

    from ncdask.store import DuplicateImportError, EmbeddingStore
    from ncdask.store.files import inspect_saved

    labels = not args.no_labels
    pairs = list(_pairs(args.files, labels))
    for path in [p for pair in pairs for p in pair if p] + [args.classifier, args.bias]:
        if path and not Path(path).is_file():
            raise CLIError(f"no such file: {path}")
    if args.bias and not args.classifier:
        raise CLIError("--bias needs --classifier")
    try:
        store = EmbeddingStore.open(args.store, "a")
    except FileNotFoundError:
        store = None
    tags = _tags(args)
    W = _load_matrix(args.classifier, "classifier weights") if args.classifier else None
    b = _load_matrix(args.bias, "the classifier bias") if args.bias else None

    # everything is checked before the first write: files, widths, labels, classifier
    if store is not None:
        K, ignore = store.n_classes, store.ignore_index
        if args.n_classes is not None and args.n_classes != K:
            raise CLIError(f"--n-classes {args.n_classes} but {args.store} has K={K}")
        if args.ignore_index is not None and args.ignore_index != ignore:
            raise CLIError(f"--ignore-index {args.ignore_index} but {args.store} was created "
                           f"with ignore_index={ignore}")
        if args.dtype is not None and np.dtype(args.dtype) != store.dtype:
            raise CLIError(f"--dtype {args.dtype} but {args.store} stores {store.dtype}")
    else:
        ignore = args.ignore_index
        K = args.n_classes
        if W is not None:
            if W.ndim != 2:
                raise CLIError(f"{args.classifier}: classifier weights must be (K, D), "
                               f"got {W.shape}")
            if K is not None and K != W.shape[0]:
                raise CLIError(f"--n-classes {K} but the classifier has {W.shape[0]} rows")
            K = int(W.shape[0])
    infos = [inspect_saved(xp, yp, labels=labels, n_classes=K, ignore_index=ignore)
             for xp, yp in pairs]
    dims = {i["dim"] for i in infos}
    if len(dims) > 1:
        raise CLIError(f"the files have different widths {sorted(dims)}; import them into "
                       "different sets (--layer/--epoch)")
    D = dims.pop()
    if store is not None:
        try:
            known = store.dim_of(**tags)
        except KeyError:
            known = None
        if known is not None and known != D:
            raise CLIError(f"the files have dim {D} but {_where(tags)} of {args.store} has "
                           f"dim {known}; nothing was imported")
    if K is None:
        if not labels:
            raise CLIError("a new store needs K: pass --n-classes or --classifier")
        K = 1 + max(i["max_label"] for i in infos)
        if K < 1:
            raise CLIError("no labels to take K from: pass --n-classes")
        warnings.warn(f"K={K} taken from the largest label + 1; pass --n-classes (or "
                      "--classifier) if the last classes are missing from these files",
                      UserWarning, stacklevel=1)
    if W is not None and (W.ndim != 2 or W.shape != (K, D)):
        raise CLIError(f"{args.classifier}: classifier weights have shape {W.shape}, expected "
                       f"(K, D) = ({K}, {D}); nothing was imported")
    if b is not None and b.shape != (K,):
        raise CLIError(f"{args.bias}: bias has shape {b.shape}, expected ({K},); "
                       "nothing was imported")
    if len({i["fingerprint"] for i in infos}) < len(infos):
        raise CLIError("the same file is named twice")
    mode = "overwrite" if args.overwrite else "append" if args.append else "add"
    skip = 0
    if store is not None and mode == "add" and args.split in store.splits(**tags):
        held = {s.get("fingerprint") for s in store.sources(args.split, **tags)}
        have = [info["fingerprint"] in held for info in infos]
        # the same command run again after a kill: its first files are in (each file
        # commits at once), the rest are not; it continues with the first missing one
        skip = have.index(False) if False in have else 0
        if skip and not any(have[skip:]):
            _say(args, f"continuing an interrupted import: the first {skip} of these files "
                       f"are already in {args.split!r}")
        for (xp, _), info in list(zip(pairs, infos, strict=True))[skip:]:
            if info["fingerprint"] in held:
                raise DuplicateImportError(
                    f"split {args.split!r} of {args.store} already holds {xp} (it has "
                    f"{store.n_rows(args.split, **tags)} rows); pass --append to add these "
                    "rows again or --overwrite to replace the split with them")

    if store is None:
        extra = {} if ignore is None else {"ignore_index": ignore}
        half = all(i["dtype"] == np.float16 for i in infos)  # the precision the user saved
        dtype = args.dtype or ("float16" if half else "float32")
        store = EmbeddingStore.create(args.store, K, D, dtype=dtype, **extra)
        _say(args, f"created {args.store}: K={K} D={D} {dtype}")
    _commit(store, args, pairs, [i["fingerprint"] for i in infos], skip, mode, W, b)
    return 0


def _commit(store: Any, args: argparse.Namespace, pairs: list, prints: list[str], skip: int,
            mode: str, W: Any, b: Any) -> None:
    """Import the files after the first ``skip`` (each commits at once), then the classifier;
    on Ctrl-C, :class:`_Interrupted` says how many files are in."""
    done, first, was, tags = skip, mode, None, _tags(args)
    try:
        for i, (xp, yp) in enumerate(pairs, 1):
            if i <= skip:
                continue
            was = _split_state(store, args.split, tags)
            n = store.import_files(args.split, xp, yp, labels=not args.no_labels, mode=mode,
                                   **tags)
            done = i
            mode = "add" if mode == "overwrite" else mode  # later files join the new rows
            _say(args, f"[{i}/{len(pairs)}] {xp}{' + ' + yp if yp else ''}: "
                       f"{args.split} now has {n} rows")
        if W is not None:
            store.set_classifier(W, b, **tags)
            _say(args, f"classifier {W.shape} stored" + (" with bias" if b is not None else ""))
    except KeyboardInterrupt as e:
        now = _split_state(store, args.split, tags)
        if (done < len(pairs) and now not in (None, was)
                and now[1][-1:] == [prints[done]]):
            done += 1  # committed as the interrupt came
        raise _Interrupted(_import_told(done, len(pairs), first)) from e


def _split_state(store: Any, split: str, tags: dict[str, Any]) -> tuple[int, list] | None:
    """A split's committed rows and the fingerprints of its files (None: no split)."""
    try:
        return store.n_rows(split, **tags), [s.get("fingerprint")
                                             for s in store.sources(split, **tags)]
    except Exception:  # noqa: BLE001 - no split, or none readable: nothing committed
        return None


def _import_told(done: int, total: int, mode: str) -> str:
    """What an interrupted import committed, and how to go on."""
    if not done:
        return "nothing was committed"
    if done == total:
        return "the files were committed, not the classifier"
    files = "file was" if done == 1 else f"{done} files were"
    return f"the first {files} committed" + {
        "add": "; run the same command to continue",
        "overwrite": "; run the same command to replace the split again",
    }.get(mode, "; import the others with --append")


def _cmd_rm(args: argparse.Namespace) -> int:
    store = _open_store(args.url, "a")
    tags = _tags(args)
    _require_split(store, args.split, tags)
    n = store.delete_split(args.split, **tags)
    print(f"deleted split {args.split!r} ({n} rows) from {_where(tags)} of {args.url}")
    return 0


def _cmd_stats(args: argparse.Namespace) -> int:
    from ncdask.scheduler import use_scheduler
    from ncdask.stats import class_stats, save_stats

    store = _open_store(args.url)
    tags = _tags(args)
    _require_split(store, args.split, tags)
    if args.out:
        from ncdask.store.zarrio import check_output

        check_output(args.out, "stats", overwrite=args.overwrite)  # before the pass
    with use_scheduler(args.scheduler, quiet=args.quiet) as run:
        if args.no_cache or run.gpu:
            st = run.compute(class_stats(store.split(args.split, **tags)))
        else:  # kept in the store: the next run reads only rows appended since
            st = run.call(class_stats, store, args.split, cache=True, **tags).compute()
    print(f"{args.url} [{args.split}]: N={int(st.n_samples)} K={st.sizes['class']} "
          f"D={st.sizes['feature']} tr(Sigma_W)={float(st.within_cov.values.trace()):.6g}")
    if args.out:
        save_stats(st, args.out, overwrite=args.overwrite)
        _wrote(args.out)
    return 0


def _cmd_analyze(args: argparse.Namespace) -> int:
    from ncdask.analysis import analyze

    given = ("test", "ood", "tile_size", "memory_budget", "dist_exp", "min_count",
             "by_frequency", "ignore_index")
    results = analyze(args.url, layer=args.layer, epoch=args.epoch, metrics=args.metrics,
                      train=args.train, out=args.out, overwrite=args.overwrite,
                      sweep=args.sweep or None, cache=not args.no_cache,
                      scheduler=args.scheduler or "threads", progress=not args.quiet,
                      **{k: vars(args)[k] for k in given if vars(args)[k] is not None})
    if args.out:
        _wrote(args.out)
    if args.json:
        _write_json(scalar_dict(results), args.json)
    if args.json != "-":  # --quiet hides progress, never the answer
        dim = next((d for d in ("epoch", "layer") if d in results.dims), None)
        print(format_summary(results, args.out) if dim is None
              else format_sweep(results, dim))
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    import dask

    from ncdask.scheduler import use_scheduler
    from ncdask.store.check import check_tasks, output_tasks
    from ncdask.store.zarrio import written_kind

    if written_kind(args.url) not in (None, "store"):  # statistics or results
        report, tasks = output_tasks(args.url)
    else:
        report, tasks = check_tasks(_open_store(args.url))
    if tasks:
        with use_scheduler(args.scheduler, quiet=args.quiet) as run:
            results = run.compute(dask.delayed(list, pure=False)(tasks),
                                  label=f"checking {report.chunks} chunks")
        for r in results:
            report.problems += r["problems"]
    for note in report.notes:
        _say(args, f"note: {note}")
    for problem in report.problems:
        print(f"problem: {problem}")
    print(report.summary())
    return 0 if report.ok else 1


def _dask_config(args: argparse.Namespace) -> Any:
    """``--no-workers-timeout`` as the dask config that ``use_scheduler`` reads."""
    if getattr(args, "no_workers_timeout", None) is None:
        return contextlib.nullcontext()
    import dask

    return dask.config.set({"ncdask.no_workers_timeout": args.no_workers_timeout})


COMMANDS = {"demo": _cmd_demo, "import": _cmd_import, "stats": _cmd_stats,
            "analyze": _cmd_analyze, "rm": _cmd_rm, "check": _cmd_check}
#: Exceptions that mean bad input (exit status 2; other failures exit 1).
_BAD_INPUT = (FileNotFoundError, FileExistsError, KeyError, ValueError, TypeError,
              PermissionError)


def _settle(timeout: float = 30.0) -> None:
    """Wait (up to ``timeout`` s each) for the work other threads had started to end: dask's
    local thread pools and zarr's I/O loop, so that nothing writes after the staging is
    removed (and no pending asyncio task is destroyed at exit)."""
    import asyncio

    import dask.threaded
    from zarr.core.sync import sync

    pools = [dask.threaded.default_pool,
             *(p for d in list(dask.threaded.pools.values()) for p in list(d.values()))]
    for pool in filter(None, pools):  # every thread held by a barrier: earlier tasks ended
        n = pool._max_workers
        barrier = threading.Barrier(n + 1, timeout=timeout)
        with contextlib.suppress(RuntimeError, threading.BrokenBarrierError):
            for _ in range(n):
                pool.submit(barrier.wait)
            barrier.wait()

    async def drain() -> None:
        rest = asyncio.all_tasks() - {asyncio.current_task()}
        if rest:
            await asyncio.wait(rest, timeout=timeout)

    with contextlib.suppress(Exception):
        sync(drain())


def _out_written(args: argparse.Namespace, since: float) -> bool:
    """Whether this command's ``--out`` was written (Ctrl-C came after its commit)."""
    import zarr

    from ncdask.store.zarrio import WRITTEN_ATTR

    try:
        attrs = zarr.open_group(args.out, mode="r").attrs
        return float(attrs.get(WRITTEN_ATTR, 0)) >= since
    except Exception:  # noqa: BLE001 - none there, or not an output
        return False


@contextlib.contextmanager
def _ctrl_c() -> Iterator[None]:
    """Ctrl-C first turns off the teardown noise of asyncio ("Task was destroyed but it is
    pending!") and distributed's loggers, then raises KeyboardInterrupt as usual."""
    import logging
    import signal

    def hush(signum: int, frame: Any) -> None:
        logging.getLogger("asyncio").disabled = True
        for h in logging.getLogger("distributed").handlers:
            h.setLevel(logging.CRITICAL + 1)
        raise KeyboardInterrupt

    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return
    signal.signal(signal.SIGINT, hush)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _interrupted(e: KeyboardInterrupt, args: argparse.Namespace, since: float) -> int:
    """After Ctrl-C: let work in flight end, remove what this process staged (its leases
    list it), print one line saying what was committed; the exit status 130."""
    import signal

    from ncdask.store.staging import release_own

    main_thread = threading.current_thread() is threading.main_thread()
    before = signal.signal(signal.SIGINT, signal.SIG_IGN) if main_thread else None
    try:  # the cleanup runs to its end
        if args.debug:
            traceback.print_exception(e)
        _settle()
        release_own()
    finally:
        if main_thread:
            signal.signal(signal.SIGINT, before)
    told = e.args[0] if isinstance(e, _Interrupted) else "nothing was committed"
    if getattr(args, "out", None) and _out_written(args, since):
        told = f"{args.out} was written, the rest was not done"
    print(f"ncdask: interrupted: {told}", file=sys.stderr, flush=True)
    return 130


def main(argv: list[str] | None = None) -> int:
    """Run the ``ncdask`` command with ``argv`` (default ``sys.argv[1:]``); return the exit
    status: 0 success, 2 bad input, 130 interrupted, 1 other failures."""
    from ncdask.errors import FRONT_END

    token = FRONT_END.set("cli")  # errors name flags, not keyword arguments
    try:
        return _main(argv)
    finally:
        FRONT_END.reset(token)


def _main(argv: list[str] | None) -> int:
    from ncdask.errors import SchedulerError

    argv = sys.argv[1:] if argv is None else list(argv)
    full = bool({"-h", "--help"} & set(argv)) and "analyze" in argv
    parser = build_parser(full_help=full)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, usage errors
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    if args.command is None:
        parser.print_help()
        return 0
    since = time.time()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with _dask_config(args), _ctrl_c():
                code = COMMANDS[args.command](args)
        except KeyboardInterrupt as e:
            caught.clear()  # one line, saying what was committed
            code = _interrupted(e, args, since)
        except (CLIError, SchedulerError, *_BAD_INPUT, ImportError, OSError) as e:
            if args.debug:
                traceback.print_exc()
            # a KeyError's message is its first argument (str() would quote it)
            message = e.args[0] if isinstance(e, KeyError) and e.args else e
            print(f"ncdask: error: {message}", file=sys.stderr)
            code = e.code if isinstance(e, CLIError) else 2 if isinstance(e, _BAD_INPUT) else 1
        finally:
            texts = [str(w.message) for w in caught
                     if issubclass(w.category, (UserWarning, RuntimeWarning))]
            for text in dict.fromkeys(texts):  # each once, in order
                print(f"ncdask: warning: {text}", file=sys.stderr)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
