"""Dataset preparation: raw rows -> resized grayscale PNG + normalised kern, cached, resumable.

The parts: `rows` (one row's transform, the map function), `layout` (the cache folder and
reading it back), `shard` (one shard mapped in a supervised child), `records` (config and
result). This module orchestrates them.

How it survives faults:
- Work is cut into shards of `shard_rows` rows, each mapped by a child process that marks it
  done (`shard.py`). A rerun (after Ctrl-C, SIGKILL, a crashed notebook) skips every shard
  that has a `done.json`, so at most one shard per split is redone, and the end result is the
  same files an uninterrupted run makes.
- On a stall, a RAM reading near the budget, or a child that died (the OOM killer), the
  shard's tree is stopped, writer_batch_size is halved (down to MIN_WRITER_BATCH), then
  num_proc lowered, and that shard redone. Every step is printed and returned in
  `PrepareResult.actions` so the profile can start safe next time.
- Before any map, the cache size is predicted from a few prepared rows and checked against
  the free disk (`disk_free_bytes`, one function so tests can fake a full disk).
"""
from __future__ import annotations

import json
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from autotune.atomic import atomic_write_json
from autotune.disk import disk_free_bytes
from autotune.errors import UserError
from autotune.outdir import check_out_dir, replace_dir
from smt.data.layout import cache_key, exclusive, load_prepared, read_json, shard_plan
from smt.data.prepconfig import PREP_VERSION, PrepareConfig, PrepareResult, WatchdogAction
from smt.data.render import quiet_datasets
from smt.data.rows import (R_EMPTY, R_IMAGE, R_LONG, R_NO_TEXT, R_NOT_KERN, R_TOKENS,
                           check_transcription, decode_gray, map_function, map_spec,
                           output_features, prepare_example)
from smt.data.shard import MIN_WRITER_BATCH, ShardJob, attempt, lower, run_shard, warm_up_shards
from smt.paths import CREATOR, MARKER_FILE, cache_root, prepared_root
from smt.tokenizer import Vocab, tokenize

__all__ = ["MIN_WRITER_BATCH", "PREP_VERSION", "PrepareConfig", "PrepareResult", "R_EMPTY",
           "R_IMAGE", "R_LONG", "R_NOT_KERN", "R_NO_TEXT", "R_TOKENS", "WatchdogAction",
           "cache_key", "check_transcription", "decode_gray", "disk_free_bytes",
           "load_prepared", "map_function", "map_spec", "output_features", "prepare",
           "prepare_example"]

# Rows prepared up front to predict the cache size: 16, but at most 1 in 10 of what is to do
# (at least 2). The sample is mapped twice (here and in its shard), so on a small dataset a
# fixed 16 repeated most of the work (16 of 24 pages), while the disk it must fit is small.
SAMPLE_ROWS_FOR_DISK = 16
DISK_MARGIN = 1.3                # predicted cache x margin must fit the free disk
MAX_RETRIES_PER_SHARD = 8
_lower, _run_shard = lower, run_shard      # the names tests and benches have used


@dataclass
class _Plan:
    """The shards of one preparation and which of them are still to do."""
    root: Path
    meta: dict[str, Any]
    bounds: dict[str, list[tuple[int, int]]]       # split -> [(lo, hi)] row ranges
    todo: list[tuple[str, int]]                    # (split, shard index) without done.json

    def name(self, split: str, i: int) -> str:
        return self.meta["shards"][split][i]

    @property
    def todo_rows(self) -> int:
        return sum(self.bounds[s][i][1] - self.bounds[s][i][0] for s, i in self.todo)


PREPARE_COMMAND = "smt.data prepare"       # the --out marker's command (autotune.outdir)


@dataclass(frozen=True)
class _Out:
    """Where a copy of the prepared data goes, and what it must not overlap."""
    path: str | os.PathLike[str]
    inputs: tuple[Any, ...]
    overwrite: bool

    def check(self) -> None:
        check_out_dir(self.path, PREPARE_COMMAND, self.inputs, self.overwrite)


def prepare(data: str | os.PathLike[str] | None = None, config: PrepareConfig | None = None,
            out: str | os.PathLike[str] | None = None, quiet: bool = False,
            overwrite: bool = False) -> PrepareResult:
    """Prepare `data` (see `sources.open_source`) with `config`; reuse or resume the cache.
    With `out`, also save the prepared DatasetDict there (see `autotune.outdir`: the folder
    is checked before any work, never overlaps `data` or the cache, and an existing one is
    replaced only if an earlier prepare wrote it, or with `overwrite`)."""
    from smt.data.sources import open_source

    cfg = _capped(config or PrepareConfig(), quiet)
    start = time.perf_counter()
    target = None
    if out is not None:
        target = _Out(out, (data, cache_root()), overwrite)
        target.check()
    src = open_source(data)
    root = prepared_root() / cache_key(src.fingerprint, cfg)
    raw = src.dataset
    waiting = (f"waiting for another preparation of {src.spec} with the same settings to "
               f"finish ({root}); its result will be reused")
    with exclusive(root, waiting, quiet=quiet):
        return _prepare_locked(root, src, raw, cfg, target, start, quiet)


def _capped(cfg: PrepareConfig, quiet: bool) -> PrepareConfig:
    """num_proc above the usable CPUs only adds processes fighting for them: cap it, say so."""
    import dataclasses
    import sys

    from autotune.hardware import usable_cpus
    cpus = max(1, int(usable_cpus()))
    if cfg.num_proc <= cpus:
        return cfg
    if not quiet:
        print(f"python -m smt.data: warning: --num-proc {cfg.num_proc} is more than the {cpus} "
              f"usable CPU(s) here; using {cpus}", file=sys.stderr, flush=True)
    return dataclasses.replace(cfg, num_proc=cpus)


def _prepare_locked(root: Path, src: Any, raw: Any, cfg: PrepareConfig, target: _Out | None,
                    start: float, quiet: bool) -> PrepareResult:
    """The work under the key's lock: reuse a complete cache, else resume or start one."""
    rows_in = sum(len(raw[s]) for s in raw)
    meta = read_json(root / MARKER_FILE)
    if meta and meta.get("complete"):
        return _finish(root, meta, src, rows_in, start, cached=True, out=target,
                       mapped_rows=0, map_seconds=0.0, reused=meta["shards_total"],
                       actions=[], num_proc=cfg.num_proc, wbs=cfg.writer_batch_size)

    if cfg.isolate:
        warm_up_shards()     # only when there is work: its imports overlap the disk check
    plan = _start(root, src, raw, cfg)
    todo_rows = plan.todo_rows
    if todo_rows:
        _check_disk(raw, cfg, root, todo_rows)
    map_t0 = time.perf_counter()
    actions, num_proc, wbs = _map_shards(plan, raw, cfg, src.spec, quiet)
    return _finish(root, plan.meta, src, rows_in, start, cached=False, out=target,
                   mapped_rows=todo_rows, map_seconds=time.perf_counter() - map_t0,
                   reused=plan.meta["shards_total"] - len(plan.todo),
                   actions=actions, num_proc=num_proc, wbs=wbs)


def _start(root: Path, src: Any, raw: Any, cfg: PrepareConfig) -> _Plan:
    """Write the (incomplete) marker and find the shards an earlier run has not finished."""
    shard_rows = cfg.shard_rows or 500
    bounds = {s: shard_plan(len(raw[s]), shard_rows) for s in raw}
    shard_names = {s: [f"{s}-{i:05d}" for i in range(len(p))] for s, p in bounds.items()}
    meta = {"creator": CREATOR, "kind": "prepared", "source": src.spec,
            "source_kind": src.kind, "source_fingerprint": src.fingerprint,
            "params": cfg.output_params(), "created": datetime.now(timezone.utc).isoformat(),
            "shards": shard_names, "shards_total": sum(len(v) for v in shard_names.values()),
            "complete": False}
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(root / MARKER_FILE, meta)
    todo = [(s, i) for s in bounds for i in range(len(bounds[s]))
            if not (root / "shards" / shard_names[s][i] / "done.json").is_file()]
    return _Plan(root, meta, bounds, todo)


def _map_shards(plan: _Plan, raw: Any, cfg: PrepareConfig, spec: str,
                quiet: bool) -> tuple[list[WatchdogAction], int, int]:
    """Map every unfinished shard, retrying lighter after each watchdog stop. Returns the
    actions taken and the (num_proc, writer_batch_size) the last shard ran with."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    fn_kwargs = map_function(cfg.reduce_ratio, cfg.fmt, cfg.max_tokens, cfg.max_image_pixels)[1]
    ram_budget = cfg.ram_budget_bytes or _default_ram_budget()
    num_proc, wbs = cfg.num_proc, cfg.writer_batch_size
    actions: list[WatchdogAction] = []
    map_t0 = time.perf_counter()
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]}"), TimeRemainingColumn()]
    with Progress(*columns, disable=quiet) as progress:
        task = progress.add_task(f"preparing {spec}", total=plan.todo_rows, rate="")
        done_rows = 0

        def on_rows(now: int) -> None:
            rate = (done_rows + now) / max(1e-9, time.perf_counter() - map_t0)
            progress.update(task, completed=done_rows + now, rate=f"{rate:.1f} rows/s")

        for split, i in plan.todo:
            lo, hi = plan.bounds[split][i]
            name = plan.name(split, i)
            job_ds = raw[split].select(range(lo, hi))
            for retries in range(MAX_RETRIES_PER_SHARD + 1):
                job = ShardJob(name, str(plan.root / "shards" / name), job_ds, lo, split,
                               fn_kwargs, num_proc, wbs, tuple(os.environ.items()))
                progress.update(task, description=f"{name} (num_proc {num_proc}, "
                                                  f"writer_batch_size {wbs})")
                outcome = attempt(job, cfg, ram_budget, on_rows)
                if outcome is None:
                    break
                reason, detail, elapsed = outcome
                new_np, new_wbs = lower(num_proc, wbs)
                if (new_np, new_wbs) == (num_proc, wbs) or retries >= MAX_RETRIES_PER_SHARD:
                    raise UserError(f"preparation of {spec} shard {name} keeps failing "
                                    f"({reason}: {detail}) even at num_proc {num_proc}, "
                                    f"writer_batch_size {wbs}; raise the RAM budget or check "
                                    f"the data")
                actions.append(WatchdogAction(name, reason, detail, num_proc, wbs, new_np,
                                              new_wbs, round(elapsed, 2)))
                progress.console.print(
                    f"[yellow]watchdog[/]: shard {name}: {reason} ({detail}); stopped its "
                    f"workers, retrying with num_proc {new_np}, writer_batch_size {new_wbs}")
                num_proc, wbs = new_np, new_wbs
            done_rows += hi - lo
            progress.update(task, completed=done_rows)
    return actions, num_proc, wbs


def _default_ram_budget() -> int:
    import psutil

    from autotune.measure import tree_rss_bytes
    return int(psutil.virtual_memory().available + tree_rss_bytes())


def _check_disk(raw: Any, cfg: PrepareConfig, root: Path, todo_rows: int) -> None:
    """Prepare a few rows in-process, extrapolate the cache size, compare with free disk."""
    wanted = min(SAMPLE_ROWS_FOR_DISK, max(2, todo_rows // 10))
    sample = raw["train"].select(range(min(wanted, len(raw["train"]))))
    fn, kw = map_function(cfg.reduce_ratio, cfg.fmt, cfg.max_tokens, cfg.max_image_pixels)
    sizes = []
    for row in sample:
        out = fn(row, **kw)
        img = out["image"]
        sizes.append((len(img["bytes"]) if img else 0) + len(out["transcription"].encode()) + 64)
    per_row = (sum(sizes) / len(sizes)) if sizes else 0.0
    need = int(per_row * todo_rows * DISK_MARGIN)
    free = disk_free_bytes(root)
    if free is not None and need > free:
        raise UserError(f"not enough disk for the prepared cache at {root}: need about "
                        f"{need / 2**30:.2f} GiB ({todo_rows} rows x {per_row / 1024:.0f} KiB "
                        f"x {DISK_MARGIN} margin), {free / 2**30:.2f} GiB free; free space or "
                        f"point SMT_AUTOTUNE_CACHE elsewhere")


def _skips(root: Path, meta: dict[str, Any],
           raw: Any) -> tuple[Counter, dict[str, list[str]]]:
    """Skipped-row counts per reason and a few examples of each, from the shards' done.json;
    an example names the row's source file where it has one."""
    skipped: Counter = Counter()
    examples: dict[str, list[str]] = {}
    for split, names in meta["shards"].items():
        for name in names:
            done = json.loads((root / "shards" / name / "done.json").read_text())
            skipped.update(done["skipped"])
            for reason, rows in done["skipped_rows"].items():
                ex = examples.setdefault(reason, [])
                ex.extend(_row_name(raw, split, r) for r in rows if len(ex) < 5)
    return skipped, examples


def _row_name(raw: Any, split: str, index: int) -> str:
    """`split[index]`, followed by the row's image file when the source has files."""
    try:
        image = raw[split][index]["image"]
    except (KeyError, IndexError, TypeError):
        return f"{split}[{index}]"
    path = image.get("path") if isinstance(image, dict) else None
    return f"{split}[{index}] {path}" if path else f"{split}[{index}]"


def _finish(root: Path, meta: dict[str, Any], src: Any, rows_in: int, start: float, cached: bool,
            out: _Out | None, mapped_rows: int, map_seconds: float, reused: int,
            actions: list[WatchdogAction], num_proc: int, wbs: int) -> PrepareResult:
    skipped, examples = _skips(root, meta, src.dataset)
    dd = load_prepared(root)
    vocab_path = root / "vocab.json"
    fmt = meta["params"]["format"]
    if vocab_path.is_file():
        vocab = Vocab.load(vocab_path)
    else:
        vocab = Vocab.build((tokenize(t, fmt) for s in dd for t in dd[s]["transcription"]), fmt=fmt)
        vocab.save(vocab_path)
    if not meta.get("complete"):
        meta.update(complete=True, completed=datetime.now(timezone.utc).isoformat(),
                    rows_kept={s: len(dd[s]) for s in dd}, skipped=dict(skipped),
                    vocab_size=len(vocab))
        atomic_write_json(root / MARKER_FILE, meta)
    out_str = _save_out(dd, vocab_path, out) if out is not None else None
    return PrepareResult(
        cache_dir=str(root), source=src.spec, rows_in=rows_in,
        orphans=list(src.orphans), limits=_limits(meta),
        rows_kept={s: len(dd[s]) for s in dd}, skipped=dict(skipped), skipped_examples=examples,
        seconds=round(time.perf_counter() - start, 3),
        rows_per_s=round(mapped_rows / map_seconds, 2) if mapped_rows and map_seconds else None,
        cached=cached, shards_total=meta["shards_total"], shards_reused=reused,
        num_proc=num_proc, writer_batch_size=wbs, actions=actions, vocab_path=str(vocab_path),
        vocab_size=len(vocab), out=out_str, dataset=dd)


def _limits(meta: dict[str, Any]) -> dict[str, int | None]:
    params = meta.get("params", {})
    return {"max_tokens": params.get("max_tokens"),
            "max_image_pixels": params.get("max_image_pixels")}


def _save_out(dd: Any, vocab_path: Path, out: _Out) -> str:
    with replace_dir(out.path, PREPARE_COMMAND, out.inputs, out.overwrite) as tmp:
        # An empty split would be saved as zero files, which load_from_disk cannot read.
        empty = {k: 1 for k in dd if len(dd[k]) == 0}
        with quiet_datasets():
            dd.save_to_disk(str(tmp), num_shards=empty or None)
        shutil.copyfile(vocab_path, tmp / "vocab.json")
    return str(out.path)
