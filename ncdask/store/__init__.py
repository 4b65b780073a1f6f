"""The store layer: embeddings, labels and classifiers in chunked Zarr groups."""

from ncdask._validate import NcdaskStoreError
from ncdask.store.core import CHUNK_BYTES
from ncdask.store.embedding import EmbeddingStore, resolve_split
from ncdask.store.imports import DuplicateImportError
from ncdask.store.reads import array_backend, on_backend
from ncdask.store.record import DamagedStoreError, SplitChangedError
from ncdask.store.source import SplitSource
from ncdask.store.writer import StoreWriter

__all__ = [
    "CHUNK_BYTES",
    "DamagedStoreError",
    "DuplicateImportError",
    "NcdaskStoreError",
    "EmbeddingStore",
    "SplitChangedError",
    "SplitSource",
    "StoreWriter",
    "array_backend",
    "on_backend",
    "resolve_split",
]
