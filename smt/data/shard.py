"""One shard, mapped in a supervised child process the watchdog can stop.

Each shard is mapped by a child process (from a fork server, so threads of the parent never
leak into it) with datasets' own `num_proc` pool inside; when the map is done the child
writes a small `done.json` atomically. The parent watches (autotune.supervise) the rows-done
counter the map function bumps in shared memory (no progress for `stall_timeout_s` =
stalled) and the RSS of the whole process tree. On a stall, a RAM reading near the budget, or
a child that died (the OOM killer), `attempt` stops the child's tree (SIGTERM, then SIGKILL)
and reports why, so that the caller can retry lighter (`lower`).
"""
from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autotune.atomic import atomic_write_json
from autotune.decide import MIN_WRITER_BATCH  # the policy's home: the map rule's floor
from autotune.supervise import Supervision, supervise
from smt import faults
from smt.data import rows
from smt.data.layout import read_json
from smt.data.prepconfig import PrepareConfig

RAM_TRIGGER = 0.9                # act at 90% of the budget: the sampler polls, spikes are fast
STARTUP_TIMEOUT_S = 120.0        # spawn + imports; minutes under heavy load, never hours


@dataclass(frozen=True)
class ShardJob:
    name: str
    folder: str
    dataset: Any
    offset: int                  # index of the shard's first row in its split
    split: str
    fn_kwargs: dict[str, Any]
    num_proc: int
    writer_batch_size: int
    # The fork server was started with the environment of its time: the child takes the
    # caller's current one from here instead.
    environ: tuple[tuple[str, str], ...] = ()


def run_shard(job: ShardJob, counter: Any = None, ready: Any = None) -> None:
    """Map one shard into its folder and mark it done. Runs in the child (or in-process)."""
    import datasets
    rows.set_counter(counter)
    if job.environ:
        os.environ.clear()
        os.environ.update(dict(job.environ))
    faults.arm_prepare(job.writer_batch_size)
    folder = Path(job.folder)
    shutil.rmtree(folder, ignore_errors=True)          # leftovers of an interrupted attempt
    folder.mkdir(parents=True)
    datasets.disable_progress_bars()                   # the parent shows one rich bar
    ds = job.dataset
    extra = [c for c in ds.column_names if c not in ("image", "transcription")]
    num_proc = min(job.num_proc, max(1, len(ds)))
    if ready is not None:
        ready.value = 1            # imports done: from here on, no rows for a while is a stall
    out = ds.map(rows.prepare_example, fn_kwargs=job.fn_kwargs, features=rows.output_features(),
                 remove_columns=extra, num_proc=num_proc if num_proc > 1 else None,
                 writer_batch_size=job.writer_batch_size,
                 cache_file_name=str(folder / "data.arrow"), load_from_cache_file=False,
                 desc=f"prepare {job.name}")
    skips = out["skip"]
    drop = [i for i, s in enumerate(skips) if s]
    reasons: dict[str, list[int]] = {}
    for i in drop:
        reasons.setdefault(skips[i], []).append(job.offset + i)
    files = sorted(Path(f["filename"]).name for f in out.cache_files)
    atomic_write_json(folder / "done.json", {
        "rows": len(ds), "files": files, "drop": drop,
        "skipped": {k: len(v) for k, v in reasons.items()},
        "skipped_rows": {k: v[:5] for k, v in reasons.items()},
        "transcriptions_kept": len(ds) - len(drop),
    })


def _die_with_parent(main_pid: int) -> None:
    """If the preparing process is killed (SIGKILL, a dead notebook kernel), this child and its
    map workers must not live on and write into a shard folder that a rerun is redoing.
    (Our parent is the fork server, not `main_pid`: watch both.)"""
    first_ppid = os.getppid()

    def watch() -> None:
        import psutil
        while True:
            time.sleep(0.5)
            if os.getppid() != first_ppid or not psutil.pid_exists(main_pid):
                for p in psutil.Process().children(recursive=True):
                    try:
                        p.kill()
                    except psutil.NoSuchProcess:
                        pass
                os._exit(1)
    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


def _child_main(job: ShardJob, counter: Any, ready: Any, error_path: str,
                parent_pid: int) -> None:
    _die_with_parent(parent_pid)
    try:
        run_shard(job, counter, ready)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, then exit non-zero
        from autotune.measure import is_oom_error
        atomic_write_json(error_path, {"error": f"{type(exc).__name__}: {exc}"[:500],
                                       "oom": is_oom_error(exc)})
        raise SystemExit(1)


def lower(num_proc: int, wbs: int) -> tuple[int, int]:
    """The next lighter setting: writer_batch_size first (it multiplies every worker's
    buffer), then num_proc (each worker also holds a copy of the decoder state)."""
    if wbs > MIN_WRITER_BATCH:
        return num_proc, max(MIN_WRITER_BATCH, wbs // 2)
    if num_proc > 1:
        return max(1, num_proc // 2), wbs
    return num_proc, wbs


def attempt(job: ShardJob, cfg: PrepareConfig, ram_budget: int,
            on_rows: Callable[[int], None]) -> tuple[str, str, float] | None:
    """Run one shard; None when it finished, else (reason, detail, seconds). `on_rows` gets
    the shard's rows-done count whenever it moves (for the progress bar)."""
    t0 = time.perf_counter()
    if not cfg.isolate:
        run_shard(job)
        return None
    ctx = _context()
    counter = ctx.Value("q", 0)
    ready = ctx.Value("b", 0)
    error_path = Path(job.folder).with_name(job.name + ".error.json")
    error_path.unlink(missing_ok=True)
    # Not daemonic: a daemonic process may not start the map's own worker pool.
    proc = ctx.Process(target=_child_main, args=(job, counter, ready, str(error_path), os.getpid()))
    # Stall clock from the end of the child's imports; the budget's trigger on this process's
    # tree (the child and its map workers); SIGTERM, then SIGKILL, when it must stop.
    out = supervise(proc, Supervision(
        progress=lambda: counter.value, stall_s=cfg.stall_timeout_s or None,
        ready=lambda: bool(ready.value), startup_s=STARTUP_TIMEOUT_S,
        ram_limit_bytes=int(ram_budget * RAM_TRIGGER), rss_of_child=False, kill_grace_s=3.0,
        on_progress=lambda rows_done: on_rows(rows_done) if rows_done else None))
    if out.stopped:
        # A child that never got going counts as a stall: the caller retries lighter.
        return ("ram" if out.reason == "ram" else "stall"), out.detail, out.seconds
    if proc.exitcode == 0 and (Path(job.folder) / "done.json").is_file():
        return None
    err = read_json(error_path) or {}
    error_path.unlink(missing_ok=True)
    if proc.exitcode is not None and proc.exitcode < 0:
        sig = -proc.exitcode
        return "crash", f"worker killed by signal {sig} (the OOM killer sends 9)", \
            time.perf_counter() - t0
    if err.get("oom"):
        return "ram", err.get("error", "out of memory"), time.perf_counter() - t0
    raise RuntimeError(f"preparing shard {job.name} failed: {err.get('error', f'exit {proc.exitcode}')}")


def warm_up_shards() -> None:
    """Start the fork server now, in the background: it spends ~1 s importing datasets, which
    otherwise the first shard waits for; started early, that overlaps the caller's own work
    (opening the source, checking the cache) on another core. A no-op under spawn."""
    ctx = _context()
    if ctx.get_start_method() == "forkserver":
        from multiprocessing import forkserver
        forkserver.ensure_running()


def _context() -> Any:
    """A fork server where there is one: it imports datasets once, then forks a clean,
    single-threaded child per shard in milliseconds (spawn costs seconds of imports per
    shard; a plain fork would copy this process's threads' locks). Spawn elsewhere."""
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["smt.data.shard", "datasets", "PIL.Image", "cv2"])
        return ctx
    return mp.get_context("spawn")
