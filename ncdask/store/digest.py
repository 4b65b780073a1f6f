"""Position-bound CRC-32C digests of array chunks.

A digest starts from the CRC-32C of ``"<array>/<chunk index>"`` and extends over the chunk's
values in row order, so it binds content to its place: a chunk swapped with another, moved, or
read as the fill value because it went missing no longer matches. CRC-32C extends, so a
partial last chunk's digest grows with each append from the new rows alone. Zarr's own
dependency ``google-crc32c`` computes it (hardware CRC, about 7 GiB/s).
"""

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
