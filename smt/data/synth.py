"""Build a synthetic (or user-kern) score dataset: train/val/test `DatasetDict` on disk.

Rows are rendered in a process pool (one verovio toolkit per worker, see `render.py`) and
streamed into Arrow through `Dataset.from_generator`, so memory stays at a few writer
batches however many rows are asked for. The image column holds PNG bytes (grayscale), the
`transcription` column the plain **kern text.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import random
import shutil
import tempfile
import time
from contextlib import nullcontext as _nullcontext
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autotune.atomic import atomic_write_json
from autotune.errors import UserError
from autotune.outdir import check_out_dir, replace_dir
from smt.data.kern_gen import PRESETS as GEN_PRESETS
from smt.data.kern_gen import generate
from smt.data.render import KINDS, quiet_datasets, render
from smt.paths import MARKER_FILE
from smt.tokenizer import normalize_kern

SPLITS = ("train", "val", "test")


def features() -> Any:
    import datasets
    return datasets.Features({"image": datasets.Image(), "transcription": datasets.Value("string")})


@dataclass
class SynthResult:
    out_dir: str
    rows: dict[str, int]                       # per split
    seconds: float
    rows_per_s: float
    failed: dict[str, int] = field(default_factory=dict)   # reason -> count


@dataclass(frozen=True)
class _Job:
    key: str            # generator seed (synthetic) or file path (--kern-dir)
    kind: str
    from_file: bool
    gen: str | None = None   # kern_gen.PRESETS name (None: the kind's own)


def _render_job(job: _Job) -> dict[str, Any] | str:
    """One row, or a short failure reason (kept as a string so the pool never dies)."""
    try:
        if job.from_file:
            text = normalize_kern(Path(job.key).read_text(encoding="utf-8", errors="strict"))
        else:
            text = generate(job.key, job.kind, GEN_PRESETS[job.gen] if job.gen else None)
        png = render(text, job.kind, seed=hash_seed(job.key))
    except UnicodeDecodeError:
        return "not utf-8 text"
    except Exception as exc:  # noqa: BLE001 - any render failure is a skipped row
        return f"render failed: {type(exc).__name__}"
    return {"image": {"bytes": png, "path": None}, "transcription": text}


def hash_seed(key: str) -> int:
    return random.Random(key).randrange(2**31)


def split_counts(count: int, val: int | None = None, test: int | None = None) -> dict[str, int]:
    """val and test default to 10% of `count` each (at least 1 once count >= 3)."""
    if count < 1:
        raise UserError(f"--count must be at least 1, got {count}")
    tenth = max(1, count // 10) if count >= 3 else 0
    v = tenth if val is None else val
    t = tenth if test is None else test
    if v < 0 or t < 0 or v + t >= count:
        raise UserError(f"val ({v}) + test ({t}) must leave training rows out of {count}")
    return {"train": count - v - t, "val": v, "test": t}


def _jobs(count: int, kind: str, seed: int, kern_dir: Path | None,
          val: int | None, test: int | None, gen: str | None = None) -> dict[str, list[_Job]]:
    if kern_dir is None:
        counts = split_counts(count, val, test)
        return {s: [_Job(f"{seed}-{s}-{i}", kind, False, gen) for i in range(n)]
                for s, n in counts.items()}
    if not kern_dir.is_dir():
        raise UserError(f"--kern-dir {kern_dir}: no such folder")
    files = sorted(str(p) for p in kern_dir.rglob("*") if p.suffix.lower() in (".krn", ".kern"))
    if not files:
        raise UserError(f"--kern-dir {kern_dir}: no .krn files found")
    random.Random(seed).shuffle(files)
    counts = split_counts(len(files), val, test)
    out, start = {}, 0
    for s in SPLITS:
        out[s] = [_Job(f, kind, True) for f in files[start:start + counts[s]]]
        start += counts[s]
    return out


def _pool_rows(jobs: Sequence[_Job], pool: Any, failed: Counter, progress: Any,
               task: Any) -> Iterator[dict[str, Any]]:
    results = map(_render_job, jobs) if pool is None else pool.imap(_render_job, jobs, chunksize=4)
    for res in results:
        progress.advance(task)
        if isinstance(res, str):
            failed[res] += 1
        else:
            yield res


SYNTH_COMMAND = "smt.data synth"         # the --out marker's command (autotune.outdir)


def build(out: str | os.PathLike[str], count: int = 100, kind: str = "system", seed: int = 0,
          num_proc: int = 1, kern_dir: str | os.PathLike[str] | None = None,
          val: int | None = None, test: int | None = None, quiet: bool = False,
          overwrite: bool = False, meta: dict[str, Any] | None = None,
          gen: str | None = None) -> SynthResult:
    """Render `count` rows (or every .krn under `kern_dir`) into `out` (save_to_disk).

    `out` is checked before any rendering and written through `autotune.outdir.replace_dir`:
    never over `kern_dir`, an existing folder only if an earlier synth wrote it (or with
    `overwrite`). `meta`, when given, is written as the folder's `meta.json` (the cache
    marker of the embedded default dataset). `gen` names a `kern_gen.PRESETS` generator
    configuration (default: the kind's own)."""
    if kind not in KINDS:
        raise UserError(f"--kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if num_proc < 1:
        raise UserError(f"--num-proc must be at least 1, got {num_proc}")
    inputs = [kern_dir]
    check_out_dir(out, SYNTH_COMMAND, inputs, overwrite)
    out_dir = Path(out).expanduser()
    if gen is not None and gen not in GEN_PRESETS:
        raise UserError(f"unknown generator preset {gen!r}; choose one of {sorted(GEN_PRESETS)}")
    jobs = _jobs(count, kind, seed, Path(kern_dir) if kern_dir else None, val, test, gen)
    failed: Counter = Counter()
    start = time.perf_counter()
    with replace_dir(out_dir, SYNTH_COMMAND, inputs, overwrite) as tmp_out:
        # Arrow files go to a scratch folder beside the output, then save_to_disk writes the
        # final copy: nothing is left in datasets' global cache.
        scratch = Path(tempfile.mkdtemp(prefix=".synth-", dir=out_dir.parent))
        try:
            rows = _render_into(tmp_out, scratch, jobs, kind, num_proc, failed, quiet)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        if meta is not None:
            atomic_write_json(tmp_out / MARKER_FILE, meta)
    seconds = time.perf_counter() - start
    kept = sum(rows.values())
    return SynthResult(str(out_dir), rows, seconds, kept / seconds if seconds else 0.0, dict(failed))


def _render_into(dest: Path, scratch: Path, jobs: dict[str, list[_Job]], kind: str,
                 num_proc: int, failed: Counter, quiet: bool) -> dict[str, int]:
    """Render every job and save the DatasetDict into `dest`; rows per split."""
    import datasets
    from rich.progress import Progress

    total = sum(len(j) for j in jobs.values())
    pool = (mp.get_context("fork" if os.name == "posix" else "spawn").Pool(num_proc)
            if num_proc > 1 else None)
    with pool or _nullcontext(), Progress(disable=quiet, transient=False) as progress:
        task = progress.add_task(f"rendering {kind}s", total=total)
        splits = {}
        for name, split_jobs in jobs.items():
            progress.update(task, description=f"rendering {kind}s ({name})")
            splits[name] = _write_split(_pool_rows(split_jobs, pool, failed, progress, task),
                                        scratch / f"{name}.arrow")
        dd = datasets.DatasetDict(splits)
        with quiet_datasets():
            dd.save_to_disk(str(dest))
    return {k: len(v) for k, v in dd.items()}


def _write_split(rows: Iterator[dict[str, Any]], path: Path) -> Any:
    """Stream rows into one Arrow file (a writer batch at a time) and memory-map it back."""
    import datasets
    from datasets.arrow_writer import ArrowWriter

    feats = features()
    with ArrowWriter(features=feats, path=str(path), writer_batch_size=100) as writer:
        for row in rows:
            writer.write(feats.encode_example(row))
        writer.finalize()
    return datasets.Dataset.from_file(str(path))
