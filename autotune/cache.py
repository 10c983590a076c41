"""`python -m autotune cache`: list and remove the dataset caches the workload created.

A prepared dataset is tens of GB for real page images, and a changed setting (reduce_ratio,
format) writes a new one beside the old, so disks on Kaggle and Colab fill up. The workload
declares where its caches live and how it marks them (`Workload.cache_layout()`; for SMT:
children of `prepared/` and `default/` under its cache root holding a `meta.json` whose
`creator` is `"smt-autotune"`). Only folders carrying that marker are considered. Everything
else under those roots (the user's own folders, datasets' hub cache, a folder whose marker is
missing or unreadable) is never touched: a cache tool that deletes a user's data once is never
run again.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from autotune.disk import dir_size_bytes
from autotune.errors import UserError, float_in
from autotune.units import format_bytes
from autotune.workload import DEFAULT_WORKLOAD, CacheLayout, load_workload

DAY_S = 86400.0
# Far past any cache's age; inf or nan would select everything or nothing by accident.
MAX_DAYS = 36500.0


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


def default_layout(workload: str = DEFAULT_WORKLOAD) -> CacheLayout:
    return load_workload(workload).cache_layout()


def read_marker(folder: Path, layout: CacheLayout | None = None) -> dict[str, Any] | None:
    """The folder's marker (meta.json) if it says the workload created the folder, else None.

    A symlinked folder or marker is not ours even when its target is: deleting through a link
    could reach data outside the cache root.
    """
    layout = layout or default_layout()
    meta_path = folder / layout.marker_file
    try:
        if folder.is_symlink() or not folder.is_dir() or meta_path.is_symlink():
            return None
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(meta, dict) or meta.get("creator") != layout.creator:
        return None
    return meta


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


def find_caches(now: float | None = None, layout: CacheLayout | None = None
                ) -> tuple[list[CacheEntry], list[Path]]:
    """Our caches (oldest first) and the folders left alone because they carry no marker."""
    now = time.time() if now is None else now
    layout = layout or default_layout()
    ours: list[CacheEntry] = []
    foreign: list[Path] = []
    for kind, root in layout.folders:
        if not root.is_dir():
            continue
        for folder in sorted(root.iterdir()):
            if not folder.is_dir() or folder.is_symlink():
                continue
            meta = read_marker(folder, layout)
            if meta is None:
                foreign.append(folder)
                continue
            created = _created_epoch(meta, folder / layout.marker_file)
            ours.append(CacheEntry(
                path=folder, kind=kind, size_bytes=dir_size_bytes(folder),
                age_s=max(0.0, now - created), source=_describe_source(meta.get("source")),
                settings=_describe_settings(meta), state=_state(meta), meta=meta))
    ours.sort(key=lambda e: -e.age_s)
    return ours, foreign


def remove_cache(entry: CacheEntry, layout: CacheLayout | None = None) -> int:
    """Delete one of our caches; returns the bytes freed.

    The marker is checked again right before deleting (the folder may have changed since it
    was listed). The folder is first renamed to a hidden name in the same directory, so a
    deletion cut short never leaves a half-cache that a later run would take as complete.
    """
    folder = entry.path
    layout = layout or default_layout()
    if read_marker(folder, layout) is None:
        raise UserError(f"{folder}: {layout.marker_file} no longer marks it as created by "
                        f"{layout.creator}; left alone")
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


def add_parser(subparsers: Any) -> None:
    """Register `cache` on the `autotune` CLI (called by autotune/cli.py)."""
    parser = subparsers.add_parser(
        "cache", help="list or remove the dataset caches smt-autotune created",
        description="List the prepared-dataset caches that smt-autotune created (size, age, "
                    "source, settings) and remove the ones asked for. Folders without our "
                    "meta.json marker are never touched.")
    parser.add_argument("--clear", action="store_true",
                        help="remove the listed caches (all of ours, or those --older-than)")
    parser.add_argument("--older-than", type=float_in(0.0, MAX_DAYS, lo_open=False),
                        default=None, metavar="DAYS",
                        help="only caches created more than DAYS days ago")
    parser.add_argument("--workload", default=DEFAULT_WORKLOAD, metavar="NAME",
                        help="workload whose caches to list (default smt)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.set_defaults(func=run_cache)


def run_cache(args: argparse.Namespace, console: Console | None = None) -> int:
    console = console or Console()
    layout = default_layout(getattr(args, "workload", DEFAULT_WORKLOAD))
    entries, foreign = find_caches(layout=layout)
    older = getattr(args, "older_than", None)
    if older is not None:
        entries = [e for e in entries if e.age_s > older * DAY_S]
    roots = ", ".join(str(root) for _, root in layout.folders)
    if not entries:
        what = f"no {layout.creator} caches" + (f" older than {older:g} days" if older else "")
        console.print(f"{what} under {roots}", soft_wrap=True)
        _mention_foreign(console, foreign, layout)
        return 0

    table = Table(title=f"{layout.creator} dataset caches" + (" (removing)" if args.clear else ""))
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
        _mention_foreign(console, foreign, layout)
        return 0

    freed = 0
    for e in entries:
        freed += remove_cache(e, layout)
    console.print(f"removed {len(entries)} cache(s), freed {format_bytes(freed)}")
    _mention_foreign(console, foreign, layout)
    return 0


def _mention_foreign(console: Console, foreign: list[Path], layout: CacheLayout) -> None:
    if foreign:
        console.print(f"left alone: {len(foreign)} folder(s) without the {layout.creator} marker "
                      f"({', '.join(p.name for p in foreign[:5])}"
                      f"{', ...' if len(foreign) > 5 else ''})")
