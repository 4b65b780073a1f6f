"""The store layer: embeddings, labels and classifiers in chunked Zarr groups."""

from ncdask.store.embedding import CHUNK_BYTES, EmbeddingStore, resolve_split
from ncdask.store.imports import DuplicateImportError
from ncdask.store.reads import array_backend, on_backend
from ncdask.store.record import DamagedStoreError
from ncdask.store.writer import StoreWriter
from ncdask._validate import NcdaskStoreError

__all__ = [
    "CHUNK_BYTES",
    "DamagedStoreError",
    "DuplicateImportError",
    "NcdaskStoreError",
    "EmbeddingStore",
    "StoreWriter",
    "array_backend",
    "on_backend",
    "resolve_split",
]
