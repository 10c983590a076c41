"""The prepared cache's layout: prepared_root()/<key>/{meta.json, vocab.json,
shards/<split>-<i>/{data*.arrow, done.json}}, and reading a completed one back; beside each
folder a `.<key>.lock` that one preparation of that key holds at a time."""
from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from smt.data.prepconfig import PrepareConfig
from smt.paths import MARKER_FILE


def cache_key(source_fingerprint: str, cfg: PrepareConfig) -> str:
    blob = json.dumps({"source": source_fingerprint, **cfg.output_params()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def lock_path(folder: Path) -> Path:
    """The lock beside `folder` (not inside: it must outlive a folder being replaced, and a
    file beside the caches is not taken for one)."""
    return folder.with_name(f".{folder.name}.lock")


@contextmanager
def exclusive(folder: Path, waiting: str, quiet: bool = False) -> Iterator[None]:
    """Hold `folder`'s lock for the block: a second process (another notebook, the other DDP
    rank) preparing the same key waits here, saying `waiting` once, and then finds the work
    done instead of removing the first one's shards. The OS drops the lock when its holder
    dies, even by SIGKILL, so a crashed run never blocks the next one. (No fcntl on Windows:
    no lock there.)"""
    try:
        import fcntl
    except ImportError:                                 # Windows
        yield
        return
    path = lock_path(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not quiet:
                print(waiting, file=sys.stderr, flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)                                    # releases the lock


def shard_plan(n: int, shard_rows: int) -> list[tuple[int, int]]:
    shards = max(1, math.ceil(n / shard_rows)) if n else 0
    bounds = [round(i * n / shards) for i in range(shards + 1)] if shards else [0]
    return [(bounds[i], bounds[i + 1]) for i in range(shards)]


def load_prepared(cache_dir: str | os.PathLike[str]) -> Any:
    """The prepared DatasetDict of a completed cache folder (memory-mapped, instant)."""
    import datasets
    root = Path(cache_dir)
    meta = json.loads((root / MARKER_FILE).read_text())
    splits = {}
    for split, shard_names in meta["shards"].items():
        parts = []
        for name in shard_names:
            done = json.loads((root / "shards" / name / "done.json").read_text())
            parts.append(shard_dataset(root / "shards" / name, done))
        splits[split] = (datasets.concatenate_datasets(parts) if parts else
                         datasets.Dataset.from_dict({"image": [], "transcription": []},
                                                    features=final_features()))
    return datasets.DatasetDict(splits)


def final_features() -> Any:
    import datasets
    return datasets.Features({"image": datasets.Image(), "transcription": datasets.Value("string")})


def shard_dataset(folder: Path, done: dict[str, Any]) -> Any:
    import datasets
    if not done["files"]:
        return datasets.Dataset.from_dict({"image": [], "transcription": []},
                                          features=final_features())
    ds = datasets.concatenate_datasets([datasets.Dataset.from_file(str(folder / f))
                                        for f in done["files"]])
    ds = ds.remove_columns("skip")
    if done["drop"]:
        drop = set(done["drop"])
        ds = ds.select([i for i in range(len(ds)) if i not in drop])
    return ds


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
