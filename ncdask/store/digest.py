"""Position-bound CRC-32C digests of array chunks.

Seeded with ``"<array>/<chunk index>"`` and extended over the values in row order: a
swapped, moved or missing (fill-valued) chunk no longer matches, and a partial chunk's digest
grows from the appended rows alone. Computed by ``google-crc32c`` (Zarr's dependency)."""

from __future__ import annotations

import google_crc32c
import numpy as np


def seed(array: str, index: int) -> int:
    """The digest of chunk ``index`` of ``array`` before any of its rows."""
    return int(google_crc32c.value(f"{array}/{int(index)}".encode()))


def extend(crc: int, rows: np.ndarray) -> int:
    """``crc`` extended over ``rows`` (their bytes in C order)."""
    view = np.ascontiguousarray(rows).view()
    view.flags.writeable = False  # google_crc32c takes read-only buffers only
    return int(google_crc32c.extend(int(crc), view.reshape(-1).view(np.uint8)))


def digest(array: str, index: int, block: np.ndarray) -> int:
    """The digest of chunk ``index`` of ``array`` holding ``block``.

    >>> a = np.arange(6, dtype=np.float32).reshape(3, 2)
    >>> digest("embeddings", 0, a) == extend(extend(seed("embeddings", 0), a[:1]), a[1:])
    True
    >>> digest("embeddings", 0, a) == digest("embeddings", 1, a)
    False
    """
    return extend(seed(array, index), block)
