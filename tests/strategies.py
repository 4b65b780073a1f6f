"""Hypothesis strategies and chunkings shared by the invariance tests."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

#: Seeds of NumPy generators.
SEEDS = st.integers(0, 2**32 - 1)


@st.composite
def labelled_data(draw, max_rows: int = 120, max_classes: int = 6, max_dim: int = 5):
    """``(X, y, K, cuts, seed)``: rows of any scale and offset, labels, and batch cuts."""
    n = draw(st.integers(1, max_rows))
    K = draw(st.integers(1, max_classes))
    D = draw(st.integers(1, max_dim))
    seed = draw(SEEDS)
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, D)) * rng.uniform(0.01, 10) + rng.uniform(-100, 100)
    y = rng.integers(0, K, n)
    cuts = sorted(draw(st.lists(st.integers(1, max(n - 1, 1)), max_size=6, unique=True)))
    return X, y, K, cuts, seed


def irregular_chunks(n: int, cuts: list[int]) -> tuple[int, ...]:
    """Chunk sizes of ``n`` rows cut at ``cuts``."""
    edges = [0, *[c for c in cuts if 0 < c < n], n]
    return tuple(b - a for a, b in zip(edges[:-1], edges[1:], strict=False))
