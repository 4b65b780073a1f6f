"""The statistics layer: class counts, means and covariances from one pass, saved and merged."""

from ncdask.stats.core import (
    EmptyClassWarning,
    class_stats,
    labelled_stats,
    load_stats,
    merge_stats,
    save_stats,
)

__all__ = [
    "EmptyClassWarning",
    "class_stats",
    "labelled_stats",
    "load_stats",
    "merge_stats",
    "save_stats",
]
