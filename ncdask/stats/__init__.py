"""The statistics layer: class counts, means and covariances from one pass, saved and merged."""

from ncdask.stats.api import class_stats
from ncdask.stats.core import (
    EmptyClassWarning,
    coarsen,
    labelled_stats,
    load_stats,
    merge_stats,
    save_stats,
)

__all__ = [
    "EmptyClassWarning",
    "class_stats",
    "coarsen",
    "labelled_stats",
    "load_stats",
    "merge_stats",
    "save_stats",
]
