"""`python -m autotune cache`: list and remove the dataset caches our preparation created.

A prepared dataset is tens of GB for real page images, and a changed setting (reduce_ratio,
format) writes a new one beside the old, so disks on Kaggle and Colab fill up. The only folders
this command considers are those our preparation marked: a direct child of
`smt.paths.prepared_root()` or of `cache_root()/default/` holding a `meta.json` whose
`creator` is `"smt-autotune"`. Everything else under those roots (the user's own folders,
datasets' hub cache, a folder whose marker is missing or unreadable) is never touched: a
cache tool that deletes a user's data once is never run again.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import stat
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from autotune.errors import UserError
from autotune.units import format_bytes
from smt.paths import cache_root, prepared_root

CREATOR = "smt-autotune"
META_FILE = "meta.json"
DAY_S = 86400.0


@dataclass
class CacheEntry:
    path: Path
    kind: str                    # "prepared" (a prepare() output) or "default" (embedded data)
    size_bytes: int
    age_s: float                 # since `created` in meta.json, else since meta.json was written
    source: str
    settings: str
    state: str                   # "complete", "partial" (cut short or still being written), ""
    meta: dict[str, Any] = field(repr=False, default_factory=dict)


def _roots() -> list[tuple[str, Path]]:
    return [("prepared", prepared_root()), ("default", cache_root() / "default")]


def read_marker(folder: Path) -> dict[str, Any] | None:
    """The folder's meta.json if it says we created the folder, else None.

    A symlinked folder or marker is not ours even when its target is: deleting through a link
    could reach data outside the cache root.
    """
    meta_path = folder / META_FILE
    try:
        if folder.is_symlink() or not folder.is_dir() or meta_path.is_symlink():
            return None
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(meta, dict) or meta.get("creator") != CREATOR:
        return None
    return meta


def folder_size_bytes(folder: Path) -> int:
    """Bytes of the regular files below `folder`, not following symlinks."""
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


def _created_epoch(meta: dict[str, Any], meta_path: Path) -> float:
    created = meta.get("created")
    if isinstance(created, (int, float)) and not isinstance(created, bool):
        return float(created)
    if isinstance(created, str):
        try:
            moment = datetime.fromisoformat(created)
        except ValueError:
            pass
        else:
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=timezone.utc)
            return moment.timestamp()
    return meta_path.stat().st_mtime


def _describe_source(source: Any) -> str:
    if source is None:
        return "?"
    if isinstance(source, dict):
        for key in ("id", "name", "path", "source", "uri"):
            if source.get(key):
                return str(source[key])
        return json.dumps(source, sort_keys=True)
    return str(source)


def _describe_settings(meta: dict[str, Any]) -> str:
    params = next((meta[k] for k in ("params", "parameters", "settings") if k in meta), None)
    if isinstance(params, dict):
        return ", ".join(f"{k}={v}" for k, v in params.items())
    return "" if params is None else str(params)


def _state(meta: dict[str, Any]) -> str:
    if "complete" not in meta:
        return ""
    return "complete" if meta["complete"] else "partial"


def find_caches(now: float | None = None) -> tuple[list[CacheEntry], list[Path]]:
    """Our caches (oldest first) and the folders left alone because they carry no marker."""
    now = time.time() if now is None else now
    ours: list[CacheEntry] = []
    foreign: list[Path] = []
    for kind, root in _roots():
        if not root.is_dir():
            continue
        for folder in sorted(root.iterdir()):
            if not folder.is_dir() or folder.is_symlink():
                continue
            meta = read_marker(folder)
            if meta is None:
                foreign.append(folder)
                continue
            created = _created_epoch(meta, folder / META_FILE)
            ours.append(CacheEntry(
                path=folder, kind=kind, size_bytes=folder_size_bytes(folder),
                age_s=max(0.0, now - created), source=_describe_source(meta.get("source")),
                settings=_describe_settings(meta), state=_state(meta), meta=meta))
    ours.sort(key=lambda e: -e.age_s)
    return ours, foreign


def remove_cache(entry: CacheEntry) -> int:
    """Delete one of our caches; returns the bytes freed.

    The marker is checked again right before deleting (the folder may have changed since it
    was listed). The folder is first renamed to a hidden name in the same directory, so a
    deletion cut short never leaves a half-cache that a later run would take as complete.
    """
    folder = entry.path
    if read_marker(folder) is None:
        raise UserError(f"{folder}: {META_FILE} no longer marks it as created by {CREATOR}; "
                        "left alone")
    doomed = folder.with_name(f".{folder.name}.deleting-{os.getpid()}")
    os.rename(folder, doomed)
    shutil.rmtree(doomed)
    return entry.size_bytes


def format_age(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < DAY_S:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / DAY_S:.1f} d"


def _days(text: str) -> float:
    try:
        days = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--older-than takes a number of days, got {text!r}")
    if not days >= 0:
        raise argparse.ArgumentTypeError(f"--older-than must be >= 0 days, got {text!r}")
    return days


def add_parser(subparsers: Any) -> None:
    """Register `cache` on the `autotune` CLI (called by autotune/cli.py)."""
    parser = subparsers.add_parser(
        "cache", help="list or remove the dataset caches smt-autotune created",
        description="List the prepared-dataset caches that smt-autotune created (size, age, "
                    "source, settings) and remove the ones asked for. Folders without our "
                    "meta.json marker are never touched.")
    parser.add_argument("--clear", action="store_true",
                        help="remove the listed caches (all of ours, or those --older-than)")
    parser.add_argument("--older-than", type=_days, default=None, metavar="DAYS",
                        help="only caches created more than DAYS days ago")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.set_defaults(func=run_cache)


def run_cache(args: argparse.Namespace, console: Console | None = None) -> int:
    console = console or Console()
    entries, foreign = find_caches()
    older = getattr(args, "older_than", None)
    if older is not None:
        entries = [e for e in entries if e.age_s > older * DAY_S]
    roots = ", ".join(str(root) for _, root in _roots())
    if not entries:
        what = "no smt-autotune caches" + (f" older than {older:g} days" if older else "")
        console.print(f"{what} under {roots}", soft_wrap=True)
        _mention_foreign(console, foreign)
        return 0

    table = Table(title="smt-autotune dataset caches" + (" (removing)" if args.clear else ""))
    table.add_column("cache", overflow="fold")
    table.add_column("kind")
    table.add_column("size", justify="right")
    table.add_column("age", justify="right")
    table.add_column("state")
    table.add_column("source", overflow="fold")
    table.add_column("settings", overflow="fold")
    for e in entries:
        table.add_row(e.path.name, e.kind, format_bytes(e.size_bytes), format_age(e.age_s),
                      e.state, e.source, e.settings)
    console.print(table)
    total = sum(e.size_bytes for e in entries)
    if not args.clear:
        console.print(f"{len(entries)} cache(s), {format_bytes(total)} under {roots}; "
                      "add --clear to remove them", soft_wrap=True)
        _mention_foreign(console, foreign)
        return 0

    freed = 0
    for e in entries:
        freed += remove_cache(e)
    console.print(f"removed {len(entries)} cache(s), freed {format_bytes(freed)}")
    _mention_foreign(console, foreign)
    return 0


def _mention_foreign(console: Console, foreign: list[Path]) -> None:
    if foreign:
        console.print(f"left alone: {len(foreign)} folder(s) without the {CREATOR} marker "
                      f"({', '.join(p.name for p in foreign[:5])}"
                      f"{', ...' if len(foreign) > 5 else ''})")
