"""Dataset preparation: raw rows -> resized grayscale PNG + normalised kern, cached, resumable.

Why it does not stall (../shared/DESIGN.md section 5): the map returns *encoded* PNG bytes
into the `Image` column. Returning a numpy array there makes datasets turn the writer batch
into Python lists and int64 arrays, ~40x the image in RAM per buffered row; PNG bytes cost
their own size (tens of KB for a clean score).

How it survives faults:
- Work is cut into shards of `shard_rows` rows. Each shard is mapped by a child process
  (from a fork server, so threads of the parent never leak into it) with datasets' own `num_proc` pool
  inside; when the map is done the child writes a small `done.json` atomically. A rerun
  (after Ctrl-C, SIGKILL, a crashed notebook) skips every shard that has one, so at most one
  shard per split is redone, and the end result is the same files an uninterrupted run makes.
- A watchdog watches each shard: the rows-done counter the map function bumps in shared
  memory (no progress for `stall_timeout_s` = stalled) and the RSS of the whole process tree
  (`autotune.measure`). On a stall, a RAM reading near the budget, or a child that died
  (the OOM killer), it stops the child's tree (SIGTERM, then SIGKILL), halves
  writer_batch_size (down to 10), then lowers num_proc, and redoes that shard. Every step is
  printed and returned in `PrepareResult.actions` so the profile can start safe next time.
- Before any map, the cache size is predicted from a few prepared rows and checked against
  the free disk (`disk_free_bytes`, one function so tests can fake a full disk).

Row problems (undecodable image, missing/empty/non-kern/untokenisable/over-long
transcription) are skipped and counted per reason, never fatal.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import multiprocessing as mp
import os
import shutil
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from autotune.atomic import atomic_write_json
from autotune.errors import UserError
from smt.data.render import quiet_datasets
from smt.paths import prepared_root
from smt.tokenizer import FORMATS, TokenizeError, Vocab, normalize_kern, tokenize

PREP_VERSION = 1                 # bump when prepare_example's output changes for equal inputs
MIN_WRITER_BATCH = 10            # below this the Arrow writer's per-batch overhead dominates
SAMPLE_ROWS_FOR_DISK = 16        # rows prepared up front to predict the cache size
DISK_MARGIN = 1.3                # predicted cache x margin must fit the free disk
RAM_TRIGGER = 0.9                # act at 90% of the budget: the sampler polls, spikes are fast
MAX_RETRIES_PER_SHARD = 8
STARTUP_TIMEOUT_S = 120.0        # spawn + imports; minutes under heavy load, never hours

# Reasons a row is skipped (the keys of PrepareResult.skipped).
R_IMAGE = "undecodable image"
R_NO_TEXT = "transcription missing or unreadable"
R_EMPTY = "empty transcription"
R_NOT_KERN = "not kern (no **kern header)"
R_TOKENS = "untokenizable transcription"
R_LONG = "transcription too long"


@dataclass
class PrepareConfig:
    reduce_ratio: float = 0.5            # the user's working value for 2100 px pages on 16 GB GPUs
    num_proc: int = 1                    # safe everywhere; the probe raises it where RAM allows
    writer_batch_size: int = 100         # rows buffered per Arrow write; x row cost = RAM per worker
    fmt: str = "bekern"                  # the SMT papers' format: smallest vocabulary
    max_tokens: int | None = None        # longer transcriptions are skipped (None: keep all)
    shard_rows: int | None = None        # None: ~500 rows, at most a few minutes lost on a kill
    stall_timeout_s: float | None = 180.0  # a page takes ~1 s; minutes without a row is a stall
    ram_budget_bytes: int | None = None  # None: available RAM when preparation starts
    isolate: bool = True                 # map in a child process the watchdog can stop

    def __post_init__(self) -> None:
        if not (isinstance(self.reduce_ratio, (int, float)) and 0 < self.reduce_ratio <= 1):
            raise ValueError(f"reduce_ratio must be in (0, 1], got {self.reduce_ratio!r}")
        if not isinstance(self.num_proc, int) or self.num_proc < 1:
            raise ValueError(f"num_proc must be a positive integer, got {self.num_proc!r}")
        if not isinstance(self.writer_batch_size, int) or self.writer_batch_size < 1:
            raise ValueError(f"writer_batch_size must be a positive integer, got {self.writer_batch_size!r}")
        if self.fmt not in FORMATS:
            raise ValueError(f"fmt must be one of {FORMATS}, got {self.fmt!r}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be positive, got {self.max_tokens!r}")
        if self.shard_rows is not None and self.shard_rows < 1:
            raise ValueError(f"shard_rows must be positive, got {self.shard_rows!r}")
        if self.stall_timeout_s is not None and self.stall_timeout_s <= 0:
            raise ValueError(f"stall_timeout_s must be positive, got {self.stall_timeout_s!r}")
        if self.ram_budget_bytes is not None and self.ram_budget_bytes <= 0:
            raise ValueError(f"ram_budget_bytes must be positive, got {self.ram_budget_bytes!r}")

    def output_params(self) -> dict[str, Any]:
        """What changes the prepared rows (and so the cache key); num_proc etc. do not."""
        return {"reduce_ratio": float(self.reduce_ratio), "format": self.fmt,
                "max_tokens": self.max_tokens, "version": PREP_VERSION}


@dataclass
class WatchdogAction:
    shard: str
    reason: str                          # "stall", "ram", "crash"
    detail: str
    num_proc_before: int
    writer_batch_size_before: int
    num_proc_after: int
    writer_batch_size_after: int
    seconds_into_shard: float


@dataclass
class PrepareResult:
    cache_dir: str
    source: str
    rows_in: int
    rows_kept: dict[str, int]
    skipped: dict[str, int]
    skipped_examples: dict[str, list[str]]     # reason -> a few "split[index]" to look at
    seconds: float
    rows_per_s: float | None                   # rows mapped per second in this call
    cached: bool                               # everything came from an earlier run
    shards_total: int
    shards_reused: int
    num_proc: int                              # what the last shard ran with
    writer_batch_size: int
    actions: list[WatchdogAction] = field(default_factory=list)
    vocab_path: str = ""
    vocab_size: int = 0
    out: str | None = None
    dataset: Any = None                        # the prepared DatasetDict (not serialised)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("dataset", None)
        return d

    def summary(self) -> str:
        kept = sum(self.rows_kept.values())
        lines = []
        if self.cached:
            lines.append(f"reusing cached preparation at {self.cache_dir}")
        elif self.shards_reused:
            lines.append(f"resumed: {self.shards_reused} of {self.shards_total} shards were "
                         f"already done in {self.cache_dir}")
        rate = f"{self.rows_per_s:.1f} rows/s" if self.rows_per_s else "no rows mapped"
        lines.append(f"prepared {self.source}: kept {kept} of {self.rows_in} rows ("
                     + ", ".join(f"{k} {v}" for k, v in self.rows_kept.items())
                     + f"), {rate}, {self.seconds:.1f} s, num_proc {self.num_proc}, "
                       f"writer_batch_size {self.writer_batch_size}")
        skipped = sum(self.skipped.values())
        lines.append(f"skipped {skipped}" + (": " + "; ".join(
            f"{k}: {v} (e.g. {', '.join(self.skipped_examples.get(k, [])[:3])})"
            for k, v in sorted(self.skipped.items())) if skipped else ""))
        for a in self.actions:
            lines.append(f"watchdog: shard {a.shard}: {a.reason} ({a.detail}); num_proc "
                         f"{a.num_proc_before}->{a.num_proc_after}, writer_batch_size "
                         f"{a.writer_batch_size_before}->{a.writer_batch_size_after}")
        lines.append(f"vocabulary: {self.vocab_size} tokens ({self.vocab_path})")
        if self.out:
            lines.append(f"saved to {self.out}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The map function (runs in datasets' worker processes; module-level so it pickles by name)

_COUNTER: Any = None             # shared rows-done counter, set in the shard child
_FAULT: dict[str, Any] = {}      # fault injection for tests and bench_faults (see _load_fault)


def decode_gray(image: Any) -> np.ndarray:
    """A raw `image` value (undecoded dict, bytes, path, PIL or array) -> uint8 HxW, with any
    transparency composited onto white (a transparent PNG would otherwise turn black)."""
    from PIL import Image
    if isinstance(image, dict):
        data, path = image.get("bytes"), image.get("path")
        image = data if data else path
    if image is None:
        raise ValueError("no image")
    if isinstance(image, (bytes, bytearray)):
        image = Image.open(io.BytesIO(image))
    elif isinstance(image, (str, os.PathLike)):
        image = Image.open(image)
    if isinstance(image, Image.Image):
        image.load()
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            image = Image.alpha_composite(white, rgba)
        return np.asarray(image.convert("L"), dtype=np.uint8)
    arr = np.asarray(image)
    if arr.ndim == 3:
        arr = arr[..., :3].mean(axis=2)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"image array of shape {arr.shape}")
    return arr.astype(np.uint8)


def check_transcription(text: Any, fmt: str, max_tokens: int | None) -> tuple[str, str]:
    """(normalised kern, "") for a usable transcription, else ("", reason)."""
    if not isinstance(text, str):
        return "", R_NO_TEXT
    if not text.strip():
        return "", R_EMPTY
    kern = normalize_kern(text)
    head = kern.split("\n", 50)[:50]
    if not any(tok.startswith("**kern") for line in head for tok in line.split("\t")):
        return "", R_NOT_KERN
    try:
        n = len(tokenize(kern, fmt))
    except TokenizeError:
        return "", R_TOKENS
    if max_tokens is not None and n + 2 > max_tokens:          # + <bos>, <eos>
        return "", R_LONG
    return kern, ""


def prepare_example(example: dict[str, Any], reduce_ratio: float, fmt: str,
                    max_tokens: int | None) -> dict[str, Any]:
    """One raw row -> {"image": PNG bytes dict or None, "transcription", "skip": reason}."""
    if _FAULT:
        _fault_hook()
    kern, reason = check_transcription(example.get("transcription"), fmt, max_tokens)
    if reason:
        out = {"image": None, "transcription": "", "skip": reason}
    else:
        try:
            img = decode_gray(example.get("image"))
        except Exception:  # noqa: BLE001 - any decode failure is a skipped row
            out = {"image": None, "transcription": "", "skip": R_IMAGE}
        else:
            if reduce_ratio != 1.0:
                import cv2
                h, w = img.shape
                size = (max(1, round(w * reduce_ratio)), max(1, round(h * reduce_ratio)))
                img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
            from smt.data.render import encode_png
            out = {"image": {"bytes": encode_png(img), "path": None}, "transcription": kern,
                   "skip": ""}
    if _COUNTER is not None:
        with _COUNTER.get_lock():
            _COUNTER.value += 1
    return out


def output_features() -> Any:
    import datasets
    return datasets.Features({"image": datasets.Image(), "transcription": datasets.Value("string"),
                              "skip": datasets.Value("string")})


def map_function(reduce_ratio: float = 0.5, fmt: str = "bekern",
                 max_tokens: int | None = None) -> tuple[Any, dict[str, Any]]:
    """(function, fn_kwargs) exactly as the preparation maps raw rows from `load_source`:
    `ds.map(fn, fn_kwargs=kw, features=output_features(), num_proc=..., writer_batch_size=...)`."""
    PrepareConfig(reduce_ratio=reduce_ratio, fmt=fmt, max_tokens=max_tokens)   # validates
    return prepare_example, {"reduce_ratio": float(reduce_ratio), "fmt": fmt,
                             "max_tokens": max_tokens}


def map_spec(reduce_ratio: float = 0.5, fmt: str = "bekern", max_tokens: int | None = None,
             remove_columns: tuple[str, ...] = ()) -> Any:
    """The same as an `autotune.workload.MapSpec` (the workload interface's form)."""
    from autotune.workload import MapSpec
    fn, kw = map_function(reduce_ratio, fmt, max_tokens)
    return MapSpec(function=fn, fn_kwargs=kw, features=output_features(),
                   remove_columns=tuple(remove_columns))


# ---------------------------------------------------------------------------------------------
# Fault injection: SMT_PREPARE_FAULT="stall_after=N" | "ram_mb=M" (each optionally with
# ";above_wbs=W" so it only fires while writer_batch_size > W) | "sleep_ms=S". Real process
# faults for tests and bench/bench_faults.py; unset, it costs one dict check per row.

def _load_fault(writer_batch_size: int, spec: str | None = None) -> None:
    spec = os.environ.get("SMT_PREPARE_FAULT", "") if spec is None else spec
    _FAULT.clear()
    if not spec:
        return
    kv = dict(p.split("=", 1) for p in spec.split(";") if "=" in p)
    if "above_wbs" in kv and writer_batch_size <= int(kv["above_wbs"]):
        return
    _FAULT.update({k: int(v) for k, v in kv.items()})
    _FAULT["rows"] = 0


def _fault_hook() -> None:
    _FAULT["rows"] += 1
    if "sleep_ms" in _FAULT:
        time.sleep(_FAULT["sleep_ms"] / 1000)
    if "stall_after" in _FAULT and _FAULT["rows"] > _FAULT["stall_after"]:
        time.sleep(3600)
    if "ram_mb" in _FAULT and "_ballast" not in _FAULT:
        ballast = np.ones(_FAULT["ram_mb"] * 2**20, dtype=np.uint8)    # touched: real RSS
        _FAULT["_ballast"] = ballast


# ---------------------------------------------------------------------------------------------
# Cache layout: prepared_root()/<key>/{meta.json, vocab.json, shards/<split>-<i>/...}

def cache_key(source_fingerprint: str, cfg: PrepareConfig) -> str:
    blob = json.dumps({"source": source_fingerprint, **cfg.output_params()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def disk_free_bytes(path: str | os.PathLike[str]) -> int:
    """Free bytes on the filesystem holding `path` (its nearest existing parent)."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def _shard_plan(n: int, shard_rows: int) -> list[tuple[int, int]]:
    shards = max(1, math.ceil(n / shard_rows)) if n else 0
    bounds = [round(i * n / shards) for i in range(shards + 1)] if shards else [0]
    return [(bounds[i], bounds[i + 1]) for i in range(shards)]


def load_prepared(cache_dir: str | os.PathLike[str]) -> Any:
    """The prepared DatasetDict of a completed cache folder (memory-mapped, instant)."""
    import datasets
    root = Path(cache_dir)
    meta = json.loads((root / "meta.json").read_text())
    splits = {}
    for split, shard_names in meta["shards"].items():
        parts = []
        for name in shard_names:
            done = json.loads((root / "shards" / name / "done.json").read_text())
            parts.append(_shard_dataset(root / "shards" / name, done))
        splits[split] = (datasets.concatenate_datasets(parts) if parts else
                         datasets.Dataset.from_dict({"image": [], "transcription": []},
                                                    features=_final_features()))
    return datasets.DatasetDict(splits)


def _final_features() -> Any:
    import datasets
    return datasets.Features({"image": datasets.Image(), "transcription": datasets.Value("string")})


def _shard_dataset(folder: Path, done: dict[str, Any]) -> Any:
    import datasets
    if not done["files"]:
        return datasets.Dataset.from_dict({"image": [], "transcription": []},
                                          features=_final_features())
    ds = datasets.concatenate_datasets([datasets.Dataset.from_file(str(folder / f))
                                        for f in done["files"]])
    ds = ds.remove_columns("skip")
    if done["drop"]:
        drop = set(done["drop"])
        ds = ds.select([i for i in range(len(ds)) if i not in drop])
    return ds


# ---------------------------------------------------------------------------------------------
# One shard: the child process

@dataclass(frozen=True)
class _ShardJob:
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


def _run_shard(job: _ShardJob, counter: Any = None, ready: Any = None) -> None:
    """Map one shard into its folder and mark it done. Runs in the child (or in-process)."""
    global _COUNTER
    import datasets
    _COUNTER = counter
    if job.environ:
        os.environ.clear()
        os.environ.update(dict(job.environ))
    _load_fault(job.writer_batch_size)
    folder = Path(job.folder)
    shutil.rmtree(folder, ignore_errors=True)          # leftovers of an interrupted attempt
    folder.mkdir(parents=True)
    datasets.disable_progress_bars()                   # the parent shows one rich bar
    ds = job.dataset
    extra = [c for c in ds.column_names if c not in ("image", "transcription")]
    num_proc = min(job.num_proc, max(1, len(ds)))
    if ready is not None:
        ready.value = 1            # imports done: from here on, no rows for a while is a stall
    out = ds.map(prepare_example, fn_kwargs=job.fn_kwargs, features=output_features(),
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


def _child_main(job: _ShardJob, counter: Any, ready: Any, error_path: str,
                parent_pid: int) -> None:
    _die_with_parent(parent_pid)
    try:
        _run_shard(job, counter, ready)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, then exit non-zero
        from autotune.measure import is_oom_error
        atomic_write_json(error_path, {"error": f"{type(exc).__name__}: {exc}"[:500],
                                       "oom": is_oom_error(exc)})
        raise SystemExit(1)


def _stop_tree(proc: Any, grace_s: float = 3.0) -> None:
    """SIGTERM the child and its workers, then SIGKILL whatever is left."""
    from autotune.measure import kill_tree
    kill_tree(proc.pid, grace_s=grace_s)
    proc.join(5)


class _Watch:
    """The watchdog around one shard attempt: a rows counter fed to ProgressWatchdog, and an
    RssSampler on this process's tree with the budget's trigger."""

    def __init__(self, stall_s: float | None, ram_limit: int | None) -> None:
        from autotune.measure import ProgressWatchdog, RssSampler
        self.event = threading.Event()
        self.armed = False
        self.reason = ""
        self.detail = ""
        self.watchdog = ProgressWatchdog(stall_s, on_stall=self._stall) if stall_s else None
        self.sampler = RssSampler(interval_ms=200, limit_bytes=ram_limit, on_limit=self._ram,
                                  keep_samples=False)

    def _stall(self, idle: float) -> None:
        if not self.event.is_set():
            self.reason, self.detail = "stall", f"no row for {idle:.0f} s"
            self.event.set()

    def _ram(self, rss: int) -> None:
        if not self.event.is_set():
            self.reason, self.detail = "ram", f"process tree RSS {rss / 2**30:.2f} GiB"
            self.event.set()

    def arm(self) -> None:
        """Start the stall clock (once the child has finished importing)."""
        self.armed = True
        if self.watchdog:
            self.watchdog.start()

    def __enter__(self) -> "_Watch":
        self.sampler.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.watchdog and self.armed:
            self.watchdog.stop()
        self.sampler.stop()


# ---------------------------------------------------------------------------------------------
# The whole preparation

def prepare(data: str | os.PathLike[str] | None = None, config: PrepareConfig | None = None,
            out: str | os.PathLike[str] | None = None, quiet: bool = False) -> PrepareResult:
    """Prepare `data` (see `sources.open_source`) with `config`; reuse or resume the cache."""
    import datasets
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from smt.data.sources import open_source

    cfg = config or PrepareConfig()
    start = time.perf_counter()
    src = open_source(data)
    key = cache_key(src.fingerprint, cfg)
    root = prepared_root() / key
    meta_path = root / "meta.json"
    raw = src.dataset
    rows_in = sum(len(raw[s]) for s in raw)

    meta = _read_json(meta_path)
    if meta and meta.get("complete"):
        return _finish(root, meta, src.spec, rows_in, start, cached=True, out=out,
                       mapped_rows=0, map_seconds=0.0, reused=meta["shards_total"],
                       actions=[], num_proc=cfg.num_proc, wbs=cfg.writer_batch_size, quiet=quiet)

    shard_rows = cfg.shard_rows or 500
    plan = {s: _shard_plan(len(raw[s]), shard_rows) for s in raw}
    shard_names = {s: [f"{s}-{i:05d}" for i in range(len(p))] for s, p in plan.items()}
    meta = {"creator": "smt-autotune", "kind": "prepared", "source": src.spec,
            "source_kind": src.kind, "source_fingerprint": src.fingerprint,
            "params": cfg.output_params(), "created": datetime.now(timezone.utc).isoformat(),
            "shards": shard_names, "shards_total": sum(len(v) for v in shard_names.values()),
            "complete": False}
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(meta_path, meta)

    todo = [(s, i) for s in plan for i in range(len(plan[s]))
            if not (root / "shards" / shard_names[s][i] / "done.json").is_file()]
    reused = meta["shards_total"] - len(todo)
    todo_rows = sum(plan[s][i][1] - plan[s][i][0] for s, i in todo)
    if todo_rows:
        _check_disk(raw, cfg, root, todo_rows)

    fn_kwargs = map_function(cfg.reduce_ratio, cfg.fmt, cfg.max_tokens)[1]
    ram_budget = cfg.ram_budget_bytes or _default_ram_budget()
    num_proc, wbs = cfg.num_proc, cfg.writer_batch_size
    actions: list[WatchdogAction] = []
    map_t0 = time.perf_counter()
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]}"), TimeRemainingColumn()]
    with Progress(*columns, disable=quiet) as progress:
        task = progress.add_task(f"preparing {src.spec}", total=todo_rows, rate="")
        done_rows = 0
        for split, i in todo:
            lo, hi = plan[split][i]
            name = shard_names[split][i]
            job_ds = raw[split].select(range(lo, hi))
            retries = 0
            while True:
                job = _ShardJob(name, str(root / "shards" / name), job_ds, lo, split, fn_kwargs,
                                num_proc, wbs, tuple(os.environ.items()))
                progress.update(task, description=f"{name} (num_proc {num_proc}, "
                                                  f"writer_batch_size {wbs})")
                outcome = _attempt(job, cfg, ram_budget, progress, task, done_rows, map_t0)
                if outcome is None:
                    break
                reason, detail, elapsed = outcome
                new_np, new_wbs = _lower(num_proc, wbs)
                if (new_np, new_wbs) == (num_proc, wbs) or retries >= MAX_RETRIES_PER_SHARD:
                    raise UserError(f"preparation of {src.spec} shard {name} keeps failing "
                                    f"({reason}: {detail}) even at num_proc {num_proc}, "
                                    f"writer_batch_size {wbs}; raise the RAM budget or check "
                                    f"the data")
                action = WatchdogAction(name, reason, detail, num_proc, wbs, new_np, new_wbs,
                                        round(elapsed, 2))
                actions.append(action)
                progress.console.print(
                    f"[yellow]watchdog[/]: shard {name}: {reason} ({detail}); stopped its "
                    f"workers, retrying with num_proc {new_np}, writer_batch_size {new_wbs}")
                num_proc, wbs = new_np, new_wbs
                retries += 1
            done_rows += hi - lo
            progress.update(task, completed=done_rows)
    map_seconds = time.perf_counter() - map_t0
    return _finish(root, meta, src.spec, rows_in, start, cached=False, out=out,
                   mapped_rows=todo_rows, map_seconds=map_seconds, reused=reused,
                   actions=actions, num_proc=num_proc, wbs=wbs, quiet=quiet)


def _lower(num_proc: int, wbs: int) -> tuple[int, int]:
    """The next lighter setting: writer_batch_size first (it multiplies every worker's
    buffer), then num_proc (each worker also holds a copy of the decoder state)."""
    if wbs > MIN_WRITER_BATCH:
        return num_proc, max(MIN_WRITER_BATCH, wbs // 2)
    if num_proc > 1:
        return max(1, num_proc // 2), wbs
    return num_proc, wbs


def _attempt(job: _ShardJob, cfg: PrepareConfig, ram_budget: int, progress: Any, task: Any,
             done_rows: int, map_t0: float) -> tuple[str, str, float] | None:
    """Run one shard; None when it finished, else (reason, detail, seconds)."""
    t0 = time.perf_counter()
    if not cfg.isolate:
        _run_shard(job)
        return None
    ctx = _context()
    counter = ctx.Value("q", 0)
    ready = ctx.Value("b", 0)
    error_path = Path(job.folder).with_name(job.name + ".error.json")
    error_path.unlink(missing_ok=True)
    # Not daemonic: a daemonic process may not start the map's own worker pool.
    proc = ctx.Process(target=_child_main, args=(job, counter, ready, str(error_path), os.getpid()))
    with _Watch(cfg.stall_timeout_s, int(ram_budget * RAM_TRIGGER)) as watch:
        proc.start()
        last = 0
        while proc.is_alive():
            if not watch.armed:
                if ready.value:
                    watch.arm()
                elif time.perf_counter() - t0 > STARTUP_TIMEOUT_S:
                    watch.reason, watch.detail = "stall", f"worker did not start in {STARTUP_TIMEOUT_S:.0f} s"
                    watch.event.set()
            if watch.event.wait(0.25):
                _stop_tree(proc)
                return watch.reason, watch.detail, time.perf_counter() - t0
            now = counter.value
            if now != last:
                if watch.watchdog:
                    watch.watchdog.beat(now - last)
                last = now
                total = done_rows + now
                rate = total / max(1e-9, time.perf_counter() - map_t0)
                progress.update(task, completed=total, rate=f"{rate:.1f} rows/s")
        proc.join()
    if proc.exitcode == 0 and (Path(job.folder) / "done.json").is_file():
        return None
    err = _read_json(error_path) or {}
    error_path.unlink(missing_ok=True)
    if proc.exitcode is not None and proc.exitcode < 0:
        sig = -proc.exitcode
        return "crash", f"worker killed by signal {sig} (the OOM killer sends 9)", \
            time.perf_counter() - t0
    if err.get("oom"):
        return "ram", err.get("error", "out of memory"), time.perf_counter() - t0
    raise RuntimeError(f"preparing shard {job.name} failed: {err.get('error', f'exit {proc.exitcode}')}")


def _context() -> Any:
    """A fork server where there is one: it imports datasets once, then forks a clean,
    single-threaded child per shard in milliseconds (spawn costs seconds of imports per
    shard; a plain fork would copy this process's threads' locks). Spawn elsewhere."""
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["smt.data.prepare", "datasets", "PIL.Image", "cv2"])
        return ctx
    return mp.get_context("spawn")


def _default_ram_budget() -> int:
    import psutil

    from autotune.measure import tree_rss_bytes
    return int(psutil.virtual_memory().available + tree_rss_bytes())


def _check_disk(raw: Any, cfg: PrepareConfig, root: Path, todo_rows: int) -> None:
    """Prepare a few rows in-process, extrapolate the cache size, compare with free disk."""
    sample = raw["train"].select(range(min(SAMPLE_ROWS_FOR_DISK, len(raw["train"]))))
    fn, kw = map_function(cfg.reduce_ratio, cfg.fmt, cfg.max_tokens)
    sizes = []
    for row in sample:
        out = fn(row, **kw)
        img = out["image"]
        sizes.append((len(img["bytes"]) if img else 0) + len(out["transcription"].encode()) + 64)
    per_row = (sum(sizes) / len(sizes)) if sizes else 0.0
    need = int(per_row * todo_rows * DISK_MARGIN)
    free = disk_free_bytes(root)
    if need > free:
        raise UserError(f"not enough disk for the prepared cache at {root}: need about "
                        f"{need / 2**30:.2f} GiB ({todo_rows} rows x {per_row / 1024:.0f} KiB "
                        f"x {DISK_MARGIN} margin), {free / 2**30:.2f} GiB free; free space or "
                        f"point SMT_AUTOTUNE_CACHE elsewhere")


def _finish(root: Path, meta: dict[str, Any], spec: str, rows_in: int, start: float, cached: bool,
            out: Any, mapped_rows: int, map_seconds: float, reused: int,
            actions: list[WatchdogAction], num_proc: int, wbs: int, quiet: bool) -> PrepareResult:
    skipped: Counter = Counter()
    examples: dict[str, list[str]] = {}
    for split, names in meta["shards"].items():
        for name in names:
            done = json.loads((root / "shards" / name / "done.json").read_text())
            skipped.update(done["skipped"])
            for reason, rows in done["skipped_rows"].items():
                ex = examples.setdefault(reason, [])
                ex.extend(f"{split}[{r}]" for r in rows if len(ex) < 5)
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
        atomic_write_json(root / "meta.json", meta)
    out_str = None
    if out is not None:
        out_path = Path(out)
        tmp = out_path.with_name(out_path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        with quiet_datasets():
            dd.save_to_disk(str(tmp))
        shutil.copyfile(vocab_path, tmp / "vocab.json")
        shutil.rmtree(out_path, ignore_errors=True)
        os.replace(tmp, out_path)
        out_str = str(out_path)
    result = PrepareResult(
        cache_dir=str(root), source=spec, rows_in=rows_in,
        rows_kept={s: len(dd[s]) for s in dd}, skipped=dict(skipped), skipped_examples=examples,
        seconds=round(time.perf_counter() - start, 3),
        rows_per_s=round(mapped_rows / map_seconds, 2) if mapped_rows and map_seconds else None,
        cached=cached, shards_total=meta["shards_total"], shards_reused=reused,
        num_proc=num_proc, writer_batch_size=wbs, actions=actions, vocab_path=str(vocab_path),
        vocab_size=len(vocab), out=out_str, dataset=dd)
    return result


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
