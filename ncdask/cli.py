"""The ``ncdask`` command line."""

from __future__ import annotations

import argparse
import sys

from ._version import __version__


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``ncdask`` command."""
    p = argparse.ArgumentParser(
        prog="ncdask",
        description="Out-of-core Neural Collapse metrics on Zarr embedding stores.",
    )
    p.add_argument("--version", action="version", version=f"ncdask {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    st = sub.add_parser("stats", help="class statistics of one split of a store")
    st.add_argument("url", help="store path or fsspec URL")
    st.add_argument("--split", default="train")
    st.add_argument("--out", help="write the statistics to this Zarr path")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ncdask`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    if args.command is None:
        build_parser().print_help()
        return 0
    if args.command == "stats":
        from .stats import class_stats, save_stats
        from .store import EmbeddingStore

        try:
            store = EmbeddingStore.open(args.url)
            st = class_stats(store, args.split).compute()
        except (FileNotFoundError, KeyError, ValueError) as e:
            print(f"ncdask: error: {e}", file=sys.stderr)
            return 2
        print(f"{args.url} [{args.split}]: N={int(st.n_samples)} K={st.sizes['class']} "
              f"D={st.sizes['feature']} tr(Sigma_W)={float(st.within_cov.values.trace()):.6g}")
        if args.out:
            save_stats(st, args.out)
        return 0
    return 1  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
