"""The key of an embedding set: its ``layer`` and ``epoch`` tags, checked once at the public
boundary; it owns the set's group path, its name in messages and its dict of tags."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import numpy as np

from ncdask._validate import check_name

#: The tags that name an embedding set, in path order.
SET_TAGS = ("layer", "epoch")


@functools.total_ordering
@dataclasses.dataclass(frozen=True, eq=True)
class SetKey:
    """The tags of one embedding set (both None: the default, untagged set).

    ``layer`` becomes a group name (letters, digits, ``_``, ``.``, ``-``; no
    leading ``.``); ``epoch`` is an integer (NumPy integers become ``int``).

    Examples
    --------
    >>> from ncdask.store.setkey import SetKey
    >>> k = SetKey("fc", 3)
    >>> k.path, k.where, k.tags
    ('layer=fc/epoch=3', 'layer=fc/epoch=3', {'layer': 'fc', 'epoch': 3})
    >>> SetKey.from_tags(k.tags) == k, SetKey().path, SetKey().where
    (True, '', None)
    """

    layer: str | None = None
    epoch: int | None = None

    def __post_init__(self) -> None:
        if self.layer is not None:
            check_name("layer", self.layer)
        if self.epoch is not None:
            e = self.epoch
            if isinstance(e, bool) or not isinstance(e, (int, np.integer)):
                raise TypeError(f"epoch must be an integer, got {e!r}")
            object.__setattr__(self, "epoch", int(e))

    @classmethod
    def from_tags(cls, tags: Mapping[str, Any]) -> SetKey:
        """The key of a dict of tags (as :meth:`ncdask.EmbeddingStore.sets` lists them);
        a TypeError for a tag other than ``layer`` and ``epoch``."""
        extra = sorted(set(tags) - set(SET_TAGS))
        if extra:
            raise TypeError(f"unknown set tag(s) {extra}; sets are tagged with {SET_TAGS}")
        return cls(tags.get("layer"), tags.get("epoch"))

    @property
    def path(self) -> str:
        """The set's group path in a store (``""`` for the default set)."""
        return "/".join(f"{k}={v}" for k, v in self.tags.items())

    @property
    def where(self) -> str | None:
        """How the set is named in messages (None for the default set)."""
        return self.path or None

    @property
    def tags(self) -> dict[str, Any]:
        """The set's tags that are set: ``{}`` or ``{"layer": ..., "epoch": ...}``."""
        return {k: v for k, v in (("layer", self.layer), ("epoch", self.epoch))
                if v is not None}

    @property
    def is_default(self) -> bool:
        """Whether this is the default (untagged) set."""
        return self.layer is None and self.epoch is None

    def _order(self) -> tuple[bool, str, bool, int]:
        return (self.layer is not None, self.layer or "", self.epoch is not None,
                self.epoch or 0)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, SetKey):
            return NotImplemented
        return self._order() < other._order()


#: The default (untagged) set.
DEFAULT = SetKey()
