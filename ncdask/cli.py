"""The ``ncdask`` command line.

::

    ncdask demo    [--out DIR] [--epochs N] [--quiet]
    ncdask import  FILES... --store URL --split NAME [--classifier W.npy] [--bias b.npy]
                   [--n-classes K] [--layer L] [--epoch E]
    ncdask stats   URL [--split train] [--out stats.zarr]
    ncdask analyze URL [--train train] [--test test] [--ood ood] [--tile-size T]
                   [--scheduler threads|processes|sync|ADDRESS|local-cuda]
                   [--out results.zarr] [--json FILE|-] [--metrics M ...]
                   [--dist-exp P] [--min-count N] [--ignore-index I]
                   [--layer L] [--epoch E | --sweep] [--quiet]

Exit codes: 0 success, 2 bad input (usage errors, a missing store, an
unknown split or metric, unreadable files), 1 anything else that stops a
run (a scheduler that cannot be reached, a missing optional package).
Errors are printed to stderr as ``ncdask: error: ...``; warnings as
``ncdask: warning: ...``. Progress bars go to stderr, results to stdout.

``--json`` writes the scalar metrics as one JSON object ``{name: value}``
(floats; with ``--sweep``, ``{name: [value per set]}`` plus the sweep
coordinate under its dim name). JSON has no NaN or infinity: NaN is
written as ``null`` and ±inf as the strings ``"Infinity"`` / ``"-Infinity"``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from ._version import __version__


class CLIError(Exception):
    """Bad input on the command line; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"ncdask: error: {message}\n")


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {v}")
    return v


def _nonneg_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text}")
    return v


def _set_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--layer", help="embedding set: layer tag")
    p.add_argument("--epoch", type=int, help="embedding set: epoch tag")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``ncdask`` command.

    Returns
    -------
    argparse.ArgumentParser
    """
    p = _Parser(
        prog="ncdask",
        description="Out-of-core Neural Collapse metrics on Zarr embedding stores.",
        epilog="Run 'ncdask COMMAND --help' for the options of a command.",
    )
    p.add_argument("--version", action="version", version=f"ncdask {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    de = sub.add_parser("demo", help="train a small MLP on digits and watch NC happen")
    de.add_argument("--out", default="ncdask-demo", help="output folder (default ncdask-demo)")
    de.add_argument("--epochs", type=_positive_int, default=40)
    de.add_argument("--seed", type=int, default=0)
    de.add_argument("--scheduler", help="threads (default), processes, sync, ADDRESS, local-cuda")
    de.add_argument("--quiet", "-q", action="store_true", help="print nothing")

    im = sub.add_parser("import", help="import saved .npy / .npz embeddings into a store")
    im.add_argument("files", nargs="+", metavar="FILES",
                    help="X.npy y.npy pairs and/or .npz files (keys X/Y or embeddings/labels)")
    im.add_argument("--store", required=True, help="store path or URL (created if missing)")
    im.add_argument("--split", required=True, help="split name (train, test, ood, ...)")
    im.add_argument("--classifier", metavar="W.npy", help="classifier weights (K, D)")
    im.add_argument("--bias", metavar="b.npy", help="classifier bias (K,)")
    im.add_argument("--n-classes", type=_positive_int, help="K, for a new store")
    im.add_argument("--ignore-index", type=int,
                    help="padding label kept in a new store and left out of statistics")
    _set_args(im)
    im.add_argument("--quiet", "-q", action="store_true")

    st = sub.add_parser("stats", help="class statistics of one split of a store")
    st.add_argument("url", help="store path or fsspec URL")
    st.add_argument("--split", default="train")
    st.add_argument("--out", help="write the statistics to this Zarr path")
    _set_args(st)
    st.add_argument("--scheduler", help="threads (default), processes, sync, ADDRESS, local-cuda")
    st.add_argument("--quiet", "-q", action="store_true", help="no progress bar")

    an = sub.add_parser("analyze", help="every Neural Collapse metric of a store")
    an.add_argument("url", help="store path or fsspec URL")
    an.add_argument("--train", default="train", help="split of the class statistics")
    an.add_argument("--test", help="split for NC4 (default: 'test' if present)")
    an.add_argument("--ood", help="split for NC5 (default: 'ood' if present)")
    an.add_argument("--tile-size", type=_positive_int, help="classes per pairwise tile")
    an.add_argument(
        "--memory-budget",
        help="bytes per blocked task, e.g. 64MiB (default 128 MiB, less on small workers)",
    )
    an.add_argument("--scheduler", help="threads (default), processes, sync, ADDRESS, local-cuda")
    an.add_argument("--out", help="write the metrics to this Zarr path")
    an.add_argument("--json", metavar="FILE", help="write scalar metrics as JSON ('-': stdout)")
    an.add_argument("--metrics", nargs="+", metavar="M", help="metrics or groups (default all)")
    an.add_argument("--dist-exp", type=_positive_float, help="CDNV distance exponent (default 1)")
    an.add_argument("--min-count", type=_nonneg_int, help="leave out classes with fewer samples")
    an.add_argument("--ignore-index", type=int, help="label to drop from the statistics")
    _set_args(an)
    an.add_argument("--sweep", action="store_true",
                    help="measure every embedding set (an epoch or layer sweep)")
    an.add_argument("--quiet", "-q", action="store_true", help="no progress bar or table")
    return p


# ----------------------------------------------------------------------------- helpers


def _err(message: str) -> None:
    print(f"ncdask: error: {message}", file=sys.stderr)


def _message(e: BaseException) -> str:
    if isinstance(e, KeyError) and e.args:
        return str(e.args[0])
    return str(e)


def _say(args: argparse.Namespace, *parts: Any) -> None:
    if not getattr(args, "quiet", False):
        print(*parts, file=sys.stderr, flush=True)


def _open_store(url: str, mode: str = "r") -> Any:
    from .store import EmbeddingStore

    try:
        return EmbeddingStore.open(url, mode)
    except FileNotFoundError as e:
        raise CLIError(f"no ncdask store at {url!r}") from e


def _tags(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in (("layer", args.layer), ("epoch", args.epoch)) if v is not None}


def _where(tags: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in tags.items()) or "the default set"


def _require_split(store: Any, name: str, tags: dict[str, Any]) -> None:
    have = store.splits(**tags)
    if name not in have:
        hint = ""
        if not have:
            sets = [s for s in store.sets() if s]
            if sets:
                hint = f"; embedding sets: {sets[:10]} (choose one with --layer/--epoch)"
        raise CLIError(
            f"no split {name!r} in {_where(tags)} of {store.url!r}; splits there: {have}{hint}"
        )


def _optional_split(store: Any, given: str | None, default: str, tags: dict) -> str | None:
    if given is not None:
        _require_split(store, given, tags)
        return given
    return default if default in store.splits(**tags) else None


def _classifier(store: Any, tags: dict) -> tuple[Any, Any]:
    try:
        return store.classifier(**tags)
    except KeyError:
        return None, None


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
    """The scalar metrics of computed results as ``{name: value}`` (JSON-ready).

    Parameters
    ----------
    results : xarray.Dataset
        Computed output of :func:`ncdask.measure`. For a sweep (one dim such
        as ``epoch``), values are lists and the coordinate is included.

    Returns
    -------
    dict
    """
    sweep = [d for d in results.dims if d != "class"]
    out: dict[str, Any] = {}
    if sweep:
        d = sweep[0]
        out[d] = [v.item() if hasattr(v, "item") else v for v in results[d].values]
    for name, var in results.data_vars.items():
        if "class" in var.dims:
            continue
        vals = np.asarray(var.values, dtype=np.float64)
        out[name] = [json_value(x) for x in vals.ravel()] if vals.ndim else json_value(vals)
    return out


def format_summary(results: Any) -> str:
    """A readable table of the scalar metrics: metric, value, long_name.

    Parameters
    ----------
    results : xarray.Dataset
        Computed output of :func:`ncdask.measure` (no sweep dim).

    Returns
    -------
    str
    """
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
    if per_class:
        lines.append(f"per-class (in --out): {', '.join(per_class)}")
    left = results.attrs.get("left_out") or {}
    if left:
        lines.append("left out: " + "; ".join(f"{k} ({r})" for k, r in left.items()))
    return "\n".join(lines)


def _save_results(results: Any, url: str) -> None:
    out = results.copy()
    out.attrs = {k: v for k, v in results.attrs.items() if v is not None}
    out.attrs["left_out"] = dict(results.attrs.get("left_out") or {})
    out.to_zarr(url, mode="w", consolidated=False)


def _write_json(obj: dict, target: str) -> None:
    text = json.dumps(obj, indent=2, allow_nan=False)
    if target == "-":
        print(text)
    else:
        Path(target).write_text(text + "\n")


# ----------------------------------------------------------------------------- commands


def _cmd_demo(args: argparse.Namespace) -> int:
    try:
        import matplotlib  # noqa: F401
        import sklearn  # noqa: F401

        from .demo import run_demo
    except ImportError as e:
        raise CLIError(f"the demo needs scikit-learn and matplotlib: pip install 'ncdask[demo]' "
                       f"({e})", code=1) from e
    run_demo(args.out, epochs=args.epochs, seed=args.seed, scheduler=args.scheduler,
             quiet=args.quiet)
    return 0


def _pairs(files: list[str]) -> Iterator[tuple[str, str | None]]:
    i = 0
    while i < len(files):
        f = files[i]
        if f.endswith(".npz"):
            yield f, None
            i += 1
        elif f.endswith(".npy"):
            if i + 1 >= len(files) or not files[i + 1].endswith(".npy"):
                raise CLIError(f"{f}: an .npy embeddings file must be followed by its .npy labels")
            yield f, files[i + 1]
            i += 2
        else:
            raise CLIError(f"{f}: expected .npy (X y pairs) or .npz files")


def _dim_of(X_path: str, y_path: str | None) -> int:
    """D of a saved embeddings file, from its header."""
    import zipfile

    from .io import X_KEYS, _NpyStream, _pick

    if y_path is not None:
        shape = np.load(X_path, mmap_mode="r").shape
    else:
        with zipfile.ZipFile(X_path) as z:
            names = [n[:-4] for n in z.namelist() if n.endswith(".npy")]
            with z.open(_pick(names, X_KEYS, "embeddings", X_path) + ".npy") as fx:
                shape = _NpyStream(fx).shape
    if len(shape) != 2:
        raise CLIError(f"{X_path}: embeddings must be 2-D, got shape {shape}")
    return int(shape[1])


def _top(y: np.ndarray, ignore: int | None) -> int:
    if ignore is not None:
        y = y[y != ignore]
    return int(y.max()) if y.size else -1


def _max_label(X_path: str, y_path: str | None, *, ignore: int | None = None,
               rows: int = 2**20) -> int:
    """The largest label of a saved file (but ``ignore``), read in blocks (labels only)."""
    import zipfile

    from .io import Y_KEYS, _NpyStream, _pick

    top = -1
    if y_path is not None:
        y = np.load(y_path, mmap_mode="r")
        for i in range(0, y.shape[0], rows):
            top = max(top, _top(np.asarray(y[i : i + rows]), ignore))
        return top
    with zipfile.ZipFile(X_path) as z:
        names = [n[:-4] for n in z.namelist() if n.endswith(".npy")]
        with z.open(_pick(names, Y_KEYS, "labels", X_path) + ".npy") as fy:
            s = _NpyStream(fy)
            while (block := s.read(rows)).size:
                top = max(top, _top(block, ignore))
    return top


def _cmd_import(args: argparse.Namespace) -> int:
    from .store import EmbeddingStore

    pairs = list(_pairs(args.files))
    for path in [p for pair in pairs for p in pair if p] + [args.classifier, args.bias]:
        if path and not Path(path).is_file():
            raise CLIError(f"no such file: {path}")
    if args.bias and not args.classifier:
        raise CLIError("--bias needs --classifier")
    W = np.load(args.classifier) if args.classifier else None
    b = np.load(args.bias) if args.bias else None
    if W is not None and W.ndim != 2:
        raise CLIError(f"{args.classifier}: classifier weights must be (K, D), got {W.shape}")
    tags = _tags(args)
    try:
        store = EmbeddingStore.open(args.store, "a")
    except FileNotFoundError:
        store = None
    if store is None:
        D = _dim_of(*pairs[0])
        if W is not None:
            K = int(W.shape[0])
            if args.n_classes is not None and args.n_classes != K:
                raise CLIError(f"--n-classes {args.n_classes} but the classifier has {K} rows")
        elif args.n_classes is not None:
            K = args.n_classes
        else:
            K = 1 + max(_max_label(*pair, ignore=args.ignore_index) for pair in pairs)
            warnings.warn(f"K={K} taken from the largest label + 1; pass --n-classes (or "
                          "--classifier) if the last classes are missing from these files",
                          UserWarning, stacklevel=1)
        extra = {} if args.ignore_index is None else {"ignore_index": args.ignore_index}
        store = EmbeddingStore.create(args.store, K, D, **extra)
        _say(args, f"created {args.store}: K={K} D={D}")
    elif args.n_classes is not None and args.n_classes != store.n_classes:
        raise CLIError(f"--n-classes {args.n_classes} but {args.store} has K={store.n_classes}")
    elif args.ignore_index is not None and args.ignore_index != getattr(store, "ignore_index",
                                                                        None):
        raise CLIError(f"--ignore-index {args.ignore_index} but {args.store} was created with "
                       f"ignore_index={getattr(store, 'ignore_index', None)}")
    for i, (xp, yp) in enumerate(pairs, 1):
        n = store.import_files(args.split, xp, yp, **tags)
        _say(args, f"[{i}/{len(pairs)}] {xp}{' + ' + yp if yp else ''}: "
                   f"{args.split} now has {n} rows")
    if W is not None:
        store.set_classifier(W, b, **tags)
        _say(args, f"classifier {W.shape} stored" + (" with bias" if b is not None else ""))
    return 0


def _cmd_stats(args: argparse.Namespace) -> int:
    from .scheduler import use_scheduler
    from .stats import class_stats, save_stats

    store = _open_store(args.url)
    tags = _tags(args)
    _require_split(store, args.split, tags)
    with use_scheduler(args.scheduler, quiet=args.quiet) as run:
        st = run.compute(class_stats(store.split(args.split, **tags)))
    print(f"{args.url} [{args.split}]: N={int(st.n_samples)} K={st.sizes['class']} "
          f"D={st.sizes['feature']} tr(Sigma_W)={float(st.within_cov.values.trace()):.6g}")
    if args.out:
        save_stats(st, args.out)
    return 0


def _cmd_analyze(args: argparse.Namespace) -> int:
    from .metrics import measure
    from .scheduler import to_gpu, to_host, use_scheduler
    from .stats import class_stats

    if args.sweep and (args.epoch is not None):
        raise CLIError("--sweep measures every embedding set; do not pass --epoch with it")
    store = _open_store(args.url)
    if args.sweep:
        sets = [s for s in store.sets() if s and args.train in store.splits(**s)]
        if args.layer is not None:
            sets = [s for s in sets if s.get("layer") == args.layer]
        if not sets:
            raise CLIError(f"no tagged embedding sets with a {args.train!r} split in {args.url!r}")
        varying = [k for k in ("layer", "epoch") if len({s.get(k) for s in sets}) > 1]
        if len(varying) > 1:
            raise CLIError("the sets vary in both layer and epoch; pick a --layer to sweep epochs")
        dim = varying[0] if varying else ("epoch" if "epoch" in sets[0] else "layer")
    else:
        sets = [_tags(args)]
        dim = None
    stats_kw = {} if args.ignore_index is None else {"ignore_index": args.ignore_index}
    measure_kw: dict[str, Any] = {"tile_size": args.tile_size, "metrics": args.metrics}
    if args.memory_budget is not None:
        measure_kw["memory_budget"] = args.memory_budget
    if args.dist_exp is not None:
        measure_kw["dist_exp"] = args.dist_exp
    if args.min_count is not None:
        measure_kw["min_count"] = args.min_count

    with use_scheduler(args.scheduler, quiet=args.quiet) as run:
        move = to_gpu if run.gpu else (lambda ds: ds)
        items: dict[Any, dict[str, Any]] = {}
        for tags in sets:
            _require_split(store, args.train, tags)
            test = _optional_split(store, args.test, "test", tags)
            ood = _optional_split(store, args.ood, "ood", tags)
            W, b = _classifier(store, tags)
            items[tags.get(dim) if dim else None] = {
                "stats": class_stats(move(store.split(args.train, **tags)), **stats_kw),
                "weights": W, "bias": b,
                "test": move(store.split(test, **tags)) if test else None,
                "ood": move(store.split(ood, **tags)) if ood else None,
            }
        if dim is None:
            one = items[None]
            lazy = measure(one.pop("stats"), **one, **measure_kw)
        else:
            per = {k: {e: it[k] for e, it in items.items()} for k in
                   ("stats", "weights", "bias", "test", "ood")}
            for k in ("weights", "bias", "test", "ood"):
                if any(v is None for v in per[k].values()):
                    per[k] = None
            lazy = measure(per.pop("stats"), dim=dim, **per, **measure_kw)
        where = f"{len(sets)} sets" if dim else _where(sets[0])
        results = run.compute(lazy, label=f"measuring {args.url} [{args.train}, {where}] ...")
    results = to_host(results)
    if args.out:
        _save_results(results, args.out)
        _say(args, f"wrote {args.out}")
    if args.json:
        _write_json(scalar_dict(results), args.json)
    if not args.quiet and args.json != "-":
        if dim is None:
            print(format_summary(results))
        else:
            from .demo import format_table

            cols = [n for n, v in results.data_vars.items() if v.dims == (dim,)]
            df = results[cols].to_dataframe()
            print(df.to_string(float_format=lambda v: f"{v:.4g}") if dim != "epoch"
                  else format_table(results, cols))
    return 0


COMMANDS = {"demo": _cmd_demo, "import": _cmd_import, "stats": _cmd_stats,
            "analyze": _cmd_analyze}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ncdask`` console script.

    Parameters
    ----------
    argv : list of str, optional
        Arguments (default ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit status: 0 success, 2 bad input, 1 other failures.
    """
    from .scheduler import SchedulerError

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, usage errors
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    if args.command is None:
        parser.print_help()
        return 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            code = COMMANDS[args.command](args)
        except CLIError as e:
            _err(str(e))
            code = e.code
        except SchedulerError as e:
            _err(str(e))
            code = 1
        except (FileNotFoundError, KeyError, ValueError, TypeError, PermissionError) as e:
            _err(_message(e))
            code = 2
        except (ImportError, OSError) as e:
            _err(_message(e))
            code = 1
        finally:
            seen = set()
            for w in caught:
                if issubclass(w.category, (UserWarning, RuntimeWarning)):
                    text = str(w.message)
                    if text not in seen:
                        seen.add(text)
                        print(f"ncdask: warning: {text}", file=sys.stderr)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
