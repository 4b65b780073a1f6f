"""ncdask: out-of-core Neural Collapse metrics with Dask, Zarr and xarray."""

from ._version import __version__
from .stats import EmptyClassWarning, class_stats, load_stats, merge_stats, save_stats
from .store import EmbeddingStore, StoreWriter, resolve_split

__all__ = [
    "__version__",
    "EmbeddingStore",
    "StoreWriter",
    "resolve_split",
    "class_stats",
    "merge_stats",
    "save_stats",
    "load_stats",
    "EmptyClassWarning",
]
