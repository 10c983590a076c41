"""Where the project keeps what it builds: one root, overridable for tests and shared disks."""
from __future__ import annotations

import os
from pathlib import Path

import platformdirs

ENV_CACHE = "SMT_AUTOTUNE_CACHE"


def cache_root() -> Path:
    """`$SMT_AUTOTUNE_CACHE`, else the platform's user cache dir (e.g. ~/.cache/smt-autotune)."""
    override = os.environ.get(ENV_CACHE)
    root = Path(override) if override else Path(platformdirs.user_cache_dir("smt-autotune"))
    return root.expanduser()


def default_dataset_dir(version: str) -> Path:
    return cache_root() / "default" / version


def prepared_root() -> Path:
    return cache_root() / "prepared"
