import itertools

import numpy as np
import pytest

import ncdask

_counter = itertools.count()


@pytest.fixture
def mem_url():
    """A fresh in-memory fsspec URL per call."""

    def make(name: str = "store") -> str:
        return f"memory://ncdask-tests/{name}-{next(_counter)}"

    return make


@pytest.fixture
def small_store(mem_url):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 6)).astype(np.float32)
    y = rng.integers(0, 4, size=300)
    s = ncdask.EmbeddingStore.from_arrays(mem_url(), {"train": (X, y)}, n_classes=4, chunk_rows=64)
    return s, X, y
