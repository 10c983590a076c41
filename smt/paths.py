"""Where the project keeps what it builds: one root, overridable for tests and shared disks.

The layout below the root, and the marker on each folder our preparation made, are declared
here once (`cache_layout()`): `smt.data` writes to it and `autotune cache` lists and clears
only what it declares, reached through the workload interface.
"""
from __future__ import annotations

import os
from pathlib import Path

import platformdirs

from autotune.workload import CacheLayout

ENV_CACHE = "SMT_AUTOTUNE_CACHE"
# Every cache folder we create holds MARKER_FILE with `"creator": CREATOR`; a folder without
# it is the user's and is never deleted.
MARKER_FILE = "meta.json"
CREATOR = "smt-autotune"


def cache_root() -> Path:
    """`$SMT_AUTOTUNE_CACHE`, else the platform's user cache dir (e.g. ~/.cache/smt-autotune)."""
    override = os.environ.get(ENV_CACHE)
    root = Path(override) if override else Path(platformdirs.user_cache_dir("smt-autotune"))
    return root.expanduser()


def default_root() -> Path:
    """The embedded dataset, one folder per version."""
    return cache_root() / "default"


def default_dataset_dir(version: str) -> Path:
    return default_root() / version


def prepared_root() -> Path:
    """`prepare()` outputs, one folder per cache key."""
    return cache_root() / "prepared"


def cache_layout() -> CacheLayout:
    return CacheLayout(root=cache_root(),
                       folders=(("prepared", prepared_root()), ("default", default_root())),
                       marker_file=MARKER_FILE, creator=CREATOR)
