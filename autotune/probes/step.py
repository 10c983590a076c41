"""The training step, timed (smt/step.py is the step itself, as SMT runs it).

Time the training step that will really run: precision and thread candidates, warm medians.
A candidate is one (precision, intra-op threads, batch size, input shape) cell. Its step comes
from the workload (`Workload.make_step`: the LightningModule's own training step with its
autocast and optimizer), is run `warmup_steps` times untimed (kernel choice, allocator, Adam
state) and `timed_steps` times timed; the median of the timed steps is the cell's step time.
Speed is timed on a synthetic batch of *typical* size (`typical_batch`: every row at the size
a random batch of that many rows pads to, the median for one row), because that is what most
training steps see; memory is the probe's other job, at the largest image.

Candidates per device kind:
- CPU: `32-true` and `bf16-mixed`. A CPU without native bf16 (most rented AVX2 machines)
  runs bf16 autocast several times slower than fp32; one with AMX/AVX512-BF16 may not. Only a
  measurement tells.
- CUDA: `16-mixed`, `bf16-mixed` where compute capability >= 8.0, and `32-true` (TF32 on).
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from autotune.measure import (cuda_peak_bytes, cuda_peak_reset, error_line, free_memory,
                              is_oom_error, sync_device)
from autotune.records import StepTrial
from autotune.workload import ModelShape, Workload

CPU_PRECISIONS = ("32-true", "bf16-mixed")
CUDA_PRECISIONS = ("16-mixed", "bf16-mixed", "32-true")
WARMUP_STEPS = 1
TIMED_STEPS = 2
# A cell this many times slower than the fastest after one timed step is not timed again.
DROP_SLOWER_THAN = 3.0


@dataclass
class StepProbeResult:
    """The precision and thread cells, in the order run, and what the probe chose to run at."""
    precision_trials: list[StepTrial] = field(default_factory=list)
    thread_trials: list[StepTrial] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"precision_trials": [asdict(t) for t in self.precision_trials],
                "thread_trials": [asdict(t) for t in self.thread_trials],
                "notes": list(self.notes), "seconds": self.seconds}


def precision_candidates(device: str, capability: tuple[int, int] | None = None
                         ) -> tuple[str, ...]:
    """The precisions worth timing on `device` (bf16 on CUDA only from capability 8.0)."""
    if not device.startswith("cuda"):
        return CPU_PRECISIONS
    if capability is not None and tuple(capability) < (8, 0):
        return tuple(p for p in CUDA_PRECISIONS if not p.startswith("bf16"))
    return CUDA_PRECISIONS


def thread_candidates(usable_cpus: float) -> tuple[int, ...]:
    """1..usable CPUs; past 8 only powers of two and the top (each cell costs seconds)."""
    top = max(1, int(usable_cpus))
    if top <= 8:
        return tuple(range(1, top + 1))
    return tuple(sorted({1, 2, 4, 8, *(2 ** k for k in range(4, 12) if 2 ** k < top), top}))


class threads:  # noqa: N801 - used as a context manager like torch's own
    """`torch.set_num_threads(n)` for a block, restored after (None: leave torch's own)."""

    def __init__(self, n: int | None) -> None:
        self.n = n
        self._old: int | None = None

    def __enter__(self) -> "threads":
        if self.n is not None:
            import torch
            self._old = torch.get_num_threads()
            torch.set_num_threads(int(self.n))
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._old is not None:
            import torch
            torch.set_num_threads(self._old)


@dataclass(frozen=True)
class CellSpec:
    precision: str
    num_threads: int | None = None


def time_cells(workload: Workload, specs: Sequence[CellSpec], *, batch_size: int,
               shape: ModelShape, device: str = "cpu", batch: Any = None,
               warmup_steps: int = WARMUP_STEPS, timed_steps: int = TIMED_STEPS,
               drop_slower_than: float | None = DROP_SLOWER_THAN) -> list[StepTrial]:
    """Time the workload's training step (`Workload.make_step`, a model sized for `shape`,
    stepping on `batch`; None: the worst-case batch at `shape`) for each spec, interleaved:
    every cell is built and warmed up, then the timed steps go round the cells, so that
    load from other work on a shared machine falls on every cell alike. An OOM is a result
    (oom=True) for that cell; any other error propagates. One cell's CUDA peak is only
    exact when it runs alone (`time_cell`).

    A cell whose first timed step is more than `drop_slower_than` x the fastest cell's is not
    timed again: it has lost, and its further steps would be most of the stage's time (bf16
    emulated on a CPU is several times slower). Its trial keeps its one timed step."""
    steps: list[Any] = [None] * len(specs)
    times: list[list[float]] = [[] for _ in specs]
    errors: list[str | None] = [None] * len(specs)
    cuda = device.startswith("cuda")
    peak = None
    try:
        cuda_peak_reset(device if cuda else None)
        for i, spec in enumerate(specs):
            errors[i] = _guard(lambda i=i, spec=spec: _build_and_warm(
                workload, spec, steps, i, batch_size, shape, device, batch, warmup_steps))
        dropped: set[int] = set()
        for round_ in range(timed_steps):
            for i, spec in enumerate(specs):
                if errors[i] is None and i not in dropped:
                    errors[i] = _guard(lambda i=i, spec=spec: times[i].append(
                        _timed(steps[i], spec, device)))
            firsts = [ts[0] for ts, err in zip(times, errors) if ts and err is None]
            if round_ == 0 and drop_slower_than and firsts:
                dropped = {i for i, ts in enumerate(times)
                           if ts and ts[0] > drop_slower_than * min(firsts)}
                for i in dropped:           # free a loser's memory now, not at the end
                    steps[i].close()
                    steps[i] = None
        peak = cuda_peak_bytes(device) if cuda and len(specs) == 1 else None
    finally:
        for step in steps:
            if step is not None:
                step.close()
        steps.clear()
        free_memory()
    h, w, t = batch_extent(batch, shape)
    out = []
    for spec, ts, err in zip(specs, times, errors):
        med = statistics.median(ts) if ts and err is None else None
        out.append(StepTrial(precision=spec.precision, num_threads=spec.num_threads,
                             batch_size=batch_size, height=h, width=w, seq_len=t, device=device,
                             step_s=round(med, 4) if med else None,
                             samples_per_s=round(batch_size / med, 4) if med else None,
                             peak_memory_bytes=int(peak) if peak is not None and not err else None,
                             step_times_s=[round(x, 4) for x in ts], warmup_steps=warmup_steps,
                             oom=err is not None, error=err))
    return out


def _guard(fn: Callable[[], Any]) -> str | None:
    """Run `fn`; an OOM becomes its short description, anything else propagates."""
    try:
        fn()
    except Exception as exc:
        if not is_oom_error(exc):
            raise
        free_memory()
        return error_line(exc)
    return None


def _build_and_warm(workload: Workload, spec: CellSpec, steps: list[Any], i: int,
                    batch_size: int, shape: ModelShape, device: str, batch: Any,
                    warmup_steps: int) -> None:
    with threads(spec.num_threads):
        steps[i] = workload.make_step(batch_size, shape, spec.precision, device, batch=batch)
        for _ in range(warmup_steps):
            steps[i].step()
        sync_device(device)


def _timed(step: Any, spec: CellSpec, device: str) -> float:
    with threads(spec.num_threads):
        t0 = time.perf_counter()
        step.step()
        sync_device(device)
        return time.perf_counter() - t0


def time_cell(workload: Workload, *, precision: str, batch_size: int, shape: ModelShape,
              device: str = "cpu", num_threads: int | None = None, batch: Any = None,
              warmup_steps: int = WARMUP_STEPS, timed_steps: int = TIMED_STEPS) -> StepTrial:
    """One cell alone (its CUDA allocator peak is its own); see `time_cells`."""
    return time_cells(workload, [CellSpec(precision, num_threads)], batch_size=batch_size,
                      shape=shape, device=device, batch=batch, warmup_steps=warmup_steps,
                      timed_steps=timed_steps)[0]


def batch_extent(batch: Any, shape: ModelShape) -> tuple[int, int, int]:
    """(height, width, tokens) of a collated batch, read from its tensors' shapes where it has
    them (images [B, C, H, W], target ids [B, T]); `shape` otherwise."""
    if isinstance(batch, dict) and hasattr(batch.get("images"), "shape"):
        ids = batch.get("target_ids")
        tokens = int(ids.shape[1]) + 1 if hasattr(ids, "shape") else shape.seq_len
        return int(batch["images"].shape[-2]), int(batch["images"].shape[-1]), tokens
    if hasattr(batch, "shape") and len(batch.shape) == 4:
        return int(batch.shape[-2]), int(batch.shape[-1]), shape.seq_len
    return shape.height, shape.width, shape.seq_len


def pad_quantile(batch_size: int) -> float:
    """Where in the size distribution a batch of `batch_size` random rows pads to: the
    expected maximum of n draws sits near quantile n / (n + 1) (1 row: the median)."""
    return max(0.5, batch_size / (batch_size + 1))


def typical_batch(workload: Workload, batch_size: int, reduce_ratio: float) -> Any:
    """`batch_size` rows at the size a random training batch of that many rows is padded to
    (`Workload.typical_shape` at `pad_quantile`): what speed is timed on. Deterministic, not
    rows drawn at random (one draw of 1 row and one of 4 differ by their lengths more than by
    the batch size); and not all at the median, which would hide that a larger batch pads
    to a longer row (bench_regret: batch 16 measured faster per sample than it trained)."""
    shape = workload.typical_shape(reduce_ratio, quantile=pad_quantile(batch_size))
    return workload.make_batch(batch_size, shape, "cpu")


def fastest(trials: Sequence[StepTrial]) -> StepTrial | None:
    ok = [t for t in trials if t.samples_per_s and not t.oom]
    return max(ok, key=lambda t: t.samples_per_s or 0.0) if ok else None


def probe_steps(workload: Workload, *, reduce_ratio: float, device: str, usable_cpus: float,
                capability: tuple[int, int] | None = None, batch_size: int = 2,
                precisions: Sequence[str] | None = None,
                thread_counts: Sequence[int] | None = None,
                on_trial: Callable[[StepTrial], None] | None = None) -> StepProbeResult:
    """Time the training step of a model sized for the largest image at `reduce_ratio`, on
    one batch of median-size rows (the same batch for every cell, so only the setting differs),
    for every precision candidate x thread count (on CUDA: torch's own threads), interleaved.

    The precisions are compared at their best thread count each (the ranking can change with
    the threads: a second OpenMP thread helps fp32 more or less than emulated bf16), and the
    thread counts at the winning precision."""
    started = time.monotonic()
    out = StepProbeResult()
    say = on_trial or (lambda _t: None)
    shape = workload.largest_shape(reduce_ratio)
    batch = typical_batch(workload, batch_size, reduce_ratio)
    cands = precisions or precision_candidates(device, capability)
    counts: Sequence[int | None] = [None] if device.startswith("cuda") else \
        (thread_counts or thread_candidates(usable_cpus))
    grid = time_cells(workload, [CellSpec(p, n) for p in cands for n in counts],
                      batch_size=batch_size, shape=shape, device=device, batch=batch)
    for t in grid:
        say(t)
    out.precision_trials = [best for p in cands
                            if (best := fastest([t for t in grid if t.precision == p])
                                or next(t for t in grid if t.precision == p))]
    winner = fastest(grid)
    if winner is not None and len(counts) > 1:
        out.thread_trials = [t for t in grid if t.precision == winner.precision]
    out.seconds = round(time.monotonic() - started, 3)
    return out
