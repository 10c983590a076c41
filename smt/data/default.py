"""The embedded default dataset: synthetic grand-staff systems, built once into the user cache.

A fresh machine with no hub access still runs end to end. 1,000/100/100 system rows is the
smallest set on which a debug-sized model visibly learns while the build stays near a minute
on two cores (~20 systems/s). The systems hold 1-3 measures (`kern_gen.PRESETS
["short-system"]`), not GrandStaff's 2-5: this is the CPU demo's data, and with 2-5 measures
the small model's validation SER stayed near 190 for the first 180 optimizer steps of a CPU
run (outputs twice the target's length); shorter systems halve the tokens and the width, so
the demo learns visibly in its 12 minutes. Real training data is your own (`--data`). Bump VERSION when the generator or renderer changes what a
row looks like: a new folder is built and old caches are simply not used.
"""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from autotune.atomic import atomic_write_json
from smt.paths import CREATOR, MARKER_FILE, default_dataset_dir

VERSION = "synth-system-v2"
GEN = "short-system"
COUNTS = {"train": 1000, "val": 100, "test": 100}
SEED = 20240


def ensure_default_dataset(quiet: bool = False) -> Path:
    """The default dataset's folder, rendering it first if this machine has none yet."""
    path = default_dataset_dir(VERSION)
    if (path / "dataset_dict.json").is_file():
        if not (path / MARKER_FILE).is_file():        # built before the marker existed
            atomic_write_json(path / MARKER_FILE, _marker())
        return path
    from smt.data.layout import exclusive
    # Two processes (DDP ranks, two notebooks) starting together: one builds, one waits.
    with exclusive(path, f"waiting for another process to finish building the default "
                         f"dataset in {path}", quiet=quiet):
        if not (path / "dataset_dict.json").is_file():
            _build(path, quiet)
    return path


def _build(path: Path, quiet: bool) -> None:
    from smt.data.synth import build
    if not quiet:
        print(f"building the embedded default dataset ({sum(COUNTS.values())} synthetic "
              f"systems) into {path} (once)")
    total = sum(COUNTS.values())
    # overwrite: a folder here without dataset_dict.json is our own interrupted build.
    from autotune.hardware import usable_cpus
    build(path, count=total, kind="system", seed=SEED, num_proc=max(1, int(usable_cpus())),
          val=COUNTS["val"], test=COUNTS["test"], quiet=quiet, overwrite=True, meta=_marker(),
          gen=GEN)


def _marker() -> dict[str, object]:
    """The cache marker (`autotune cache` lists and removes only folders that carry one)."""
    return {"creator": CREATOR, "kind": "default", "source": "embedded synthetic",
            "params": {"version": VERSION, "seed": SEED, "generator": GEN, **COUNTS},
            "created": datetime.now(timezone.utc).isoformat(), "complete": True}
