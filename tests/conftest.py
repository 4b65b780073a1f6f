import itertools
import tracemalloc

import dask
import numpy as np
import pytest
import zarr

import ncdask

_counter = itertools.count()


def pytest_collection_modifyitems(config, items):
    """Tests marked ``slow`` first: under xdist (``--dist loadgroup``) the long ones start
    at once and the short ones fill the workers in around them."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture
def short_lease(monkeypatch):
    """Leases expire after 2 s (heartbeat every 0.5 s), here and in child processes."""
    monkeypatch.setenv("DASK_NCDASK__LEASE_EXPIRY", "2")
    with dask.config.set({"ncdask.lease_expiry": 2}):
        yield 2.0


@pytest.fixture
def killed_lease(monkeypatch):
    """Leases expire after 1 s, here and in child processes: for tests that wait for the
    leases of writers they killed, while no live writer's lease is judged."""
    monkeypatch.setenv("DASK_NCDASK__LEASE_EXPIRY", "1")
    with dask.config.set({"ncdask.lease_expiry": 1}):
        yield 1.0


@pytest.fixture
def mem_url():
    """A fresh in-memory fsspec URL per call."""

    def make(name: str = "store") -> str:
        return f"memory://ncdask-tests/{name}-{next(_counter)}"

    return make


@pytest.fixture
def fail_label_writes(monkeypatch):
    """Call it to make every write to a labels array fail, as a disk that fills up
    after the embeddings were written; ``monkeypatch.undo()`` ends it."""
    real = zarr.Array.__setitem__

    def failing(self, key, value):
        if self.path.endswith("labels"):
            raise OSError("disk full (simulated)")
        return real(self, key, value)

    return lambda: monkeypatch.setattr(zarr.Array, "__setitem__", failing)


@pytest.fixture
def small_store(mem_url):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 6)).astype(np.float32)
    y = rng.integers(0, 4, size=300)
    s = ncdask.EmbeddingStore.from_arrays(mem_url(), {"train": (X, y)}, n_classes=4, chunk_rows=64)
    return s, X, y


@pytest.fixture
def decision_task_peaks(monkeypatch):
    """Trace each NC4 decision task: returns the list that receives, per task, its inputs'
    bytes plus tracemalloc's peak inside it (tracing only inside the task: tracing the whole
    graph run took 22 s, and the task's peak is the same). Install before the graph is built."""
    import ncdask.graph.decisions as DG

    peaks = []
    orig = DG._decision_task

    def traced(*args, **kwargs):
        inputs = sum(a.nbytes for a in args)
        tracemalloc.start()
        try:
            out = orig(*args, **kwargs)
            peaks.append(inputs + tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
        return out

    monkeypatch.setattr(DG, "_decision_task", traced)
    return peaks
