"""Disk space: free bytes where something will be written, bytes a folder holds.

One home for both, used by the machine inventory, `autotune cache`, the map probe and the
preparation's disk check.
"""
from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path


def disk_free_bytes(path: str | os.PathLike[str]) -> int | None:
    """Free bytes on the filesystem that holds `path`, or will: a path that does not exist
    yet is measured at its nearest existing parent. None when it cannot be read."""
    current = Path(path)
    while not current.exists() and current != current.parent:
        current = current.parent
    try:
        return int(shutil.disk_usage(current).free)
    except OSError:
        return None


def dir_size_bytes(folder: str | os.PathLike[str]) -> int:
    """Bytes of the regular files below `folder`, not following symlinks (a link could point
    outside it); files that vanish while walking count 0."""
    total = 0
    for dirpath, _dirs, files in os.walk(folder, followlinks=False):
        for name in files:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total
