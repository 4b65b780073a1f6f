"""A small end-to-end run: synthetic embeddings → Zarr store → class statistics.

    python examples/end_to_end.py [STORE_PATH]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

from ncdask import EmbeddingStore, class_stats


def main(argv: list[str] | None = None) -> int:
    """Build a small store of collapsing embeddings and print its class statistics."""
    argv = sys.argv[1:] if argv is None else argv
    root = Path(argv[0]) if argv else Path(tempfile.mkdtemp()) / "example.zarr"
    K, D, N = 10, 64, 20_000
    rng = np.random.default_rng(0)
    means = rng.normal(size=(K, D)) * 5
    store = EmbeddingStore.create(str(root), K, D, chunk_rows=4096, overwrite=True)
    with store.writer("train") as w:
        for _ in range(N // 256):
            y = rng.integers(0, K, 256)
            w.append(means[y] + rng.normal(size=(256, D)), y)
    store.set_classifier(means)
    st = class_stats(store, "train").compute()
    tr_w = float(np.trace(st.within_cov.values))
    M = st.means.values - st.global_mean.values
    tr_b = float((M * M).sum() / K)
    print(store)
    print(f"N={int(st.n_samples)} K={K} D={D}")
    print(f"tr(Sigma_W) = {tr_w:.4f}   tr(Sigma_B) = {tr_b:.4f}   "
          f"NC1 quotient = {tr_w / tr_b:.4f}")
    print(f"variance norms (first 5): {np.round(st.var_norms.values[:5], 3).tolist()}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
