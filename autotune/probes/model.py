"""Model probe: peak memory of the training step at the worst-case input size, and its
speed on typical inputs, over growing batch sizes.

For each reduce ratio on a ladder (largest images first), the workload builds its own
training step (`Workload.make_step`: the LightningModule's step with its autocast and
optimizer) for a model sized for the largest image the data gives after that reduction.
Memory: two steps on a batch where every row is that largest image. Speed: warm-up steps,
then the median of timed steps on a synthetic batch of the typical padded shape
(`probes.step.typical_batch`: every row at the size a random batch of that many rows pads
to), because most training steps see typical images, not the largest.
Memory is the CUDA allocator peak on a GPU and the growth of this
process's RSS high-water mark on CPU. A batch that raises an OOM (as `is_oom_error` defines
it) ends that ratio's ladder; one whose predicted memory would pass the budget is not tried at
all, because on CPU the kernel's OOM killer, not an exception, would answer it.

Memory is freed between trials (model, optimizer and batch dropped, allocator caches and the
C heap trimmed) so that each trial's peak is its own. Per ratio a line
memory = fixed + per_sample x batch is fitted and set beside the model's own estimate.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from autotune.decide.batch import REDUCE_LADDER
from autotune.fits import fit_trials
from autotune.measure import (PeakRssMeter, cuda_peak_bytes, cuda_peak_reset, current_rss_bytes,
                              error_line, free_memory, is_oom_error, sync_device, trim_heap)
from autotune.probes.step import TIMED_STEPS, WARMUP_STEPS, threads, time_cell, typical_batch
from autotune.records import MemoryFit, ModelTrial
from autotune.units import format_bytes
from autotune.workload import ModelShape, Workload

BATCH_LADDER = (1, 2, 4, 8, 16, 32, 64, 128)


@dataclass
class ModelProbeResult:
    trials: list[ModelTrial]
    fits: list[MemoryFit]
    device: str
    precision: str
    memory_budget_bytes: int | None     # the probe never tried a batch predicted above this
    num_params: int | None
    # RSS of the training process before the model was built: CPU peaks above are growth over
    # it, and on a GPU it is the host memory a rank holds before its loader workers.
    base_rss_bytes: int | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def fit_for(self, reduce_ratio: float) -> MemoryFit | None:
        return next((f for f in self.fits if math.isclose(f.reduce_ratio, reduce_ratio)), None)


# -- one step ---------------------------------------------------------------------------------

def _predict_next(fit: MemoryFit | None, estimate: int | None, batch: int) -> float | None:
    """Memory expected at `batch` before trying it: the measured line when there are two
    points, else the model's estimate scaled to what was measured."""
    if fit is not None and fit.points >= 2:
        return fit.predict(batch)
    return float(estimate) if estimate is not None else None


def probe_model(workload: Workload, *, device: str = "cpu", precision: str = "bf16-mixed",
                memory_budget_bytes: int | None = None,
                reduce_ratios: Sequence[float] = REDUCE_LADDER,
                batch_sizes: Sequence[int] = BATCH_LADDER,
                ratios_to_measure: int = 1, timed_steps: int = TIMED_STEPS,
                warmup_steps: int = WARMUP_STEPS, deadline: float | None = None,
                num_threads: int | None = None,
                on_trial: Callable[[ModelTrial], None] | None = None) -> ModelProbeResult:
    """Walk the ratio ladder until `ratios_to_measure` ratios fit at batch 1, measuring a
    growing batch ladder at each; stop a ladder at the first OOM, at a batch predicted above
    `memory_budget_bytes`, or when the next step would run past `deadline`.

    Each batch is two cells of the workload's own training step (`Workload.make_step`):
    memory at the largest image (warm-up + one step: the peak includes the optimizer state),
    speed on a batch of typical rows (`warmup_steps` untimed, the median of `timed_steps`).
    """
    started = time.monotonic()
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    trim_heap()
    base_rss = current_rss_bytes()
    trials: list[ModelTrial] = []
    fits: list[MemoryFit] = []
    notes: list[str] = []
    num_params: int | None = None
    fitted_ratios = 0
    cell = _Cell(workload, device, device_type, precision, warmup_steps, timed_steps)
    with threads(num_threads):
        for ratio in reduce_ratios:
            if fitted_ratios >= ratios_to_measure:
                break
            if deadline is not None and time.monotonic() >= deadline and trials:
                notes.append(f"time budget reached before reduce_ratio {ratio:g}")
                break
            shape = workload.largest_shape(ratio)
            ratio_trials = _ladder(cell, shape, ratio, memory_budget_bytes, batch_sizes,
                                   deadline, on_trial, notes)
            trials.extend(ratio_trials)
            fit = fit_trials(ratio_trials, ratio)
            if fit is not None:
                fits.append(fit)
                fitted_ratios += 1
            else:
                notes.append(f"batch 1 does not fit at reduce_ratio {ratio:g} "
                             f"({shape.height}x{shape.width} px)")
    try:
        num_params = int(workload.num_params())
    except Exception:  # an estimate we cannot get is None, not a failed probe
        num_params = None
    return ModelProbeResult(trials=trials, fits=fits, device=device, precision=precision,
                            memory_budget_bytes=memory_budget_bytes, num_params=num_params,
                            base_rss_bytes=base_rss,
                            seconds=round(time.monotonic() - started, 3), notes=notes)


def _ladder(cell: "_Cell", shape: ModelShape, ratio: float, budget: int | None,
            batch_sizes: Sequence[int], deadline: float | None,
            on_trial: Callable[[ModelTrial], None] | None, notes: list[str]) -> list[ModelTrial]:
    out: list[ModelTrial] = []
    last_cost_s: float | None = None
    for batch_size in batch_sizes:
        estimate = _safe_estimate(cell.workload, batch_size, shape, cell.precision)
        fit = fit_trials(out, ratio)
        predicted = _predict_next(fit, estimate, batch_size)
        # On a GPU the first batch is always tried: an OOM there is an exception we catch,
        # and a measurement beats the estimate. On CPU the OOM killer answers instead.
        if budget is not None and predicted is not None and predicted > budget \
                and (out or cell.device_type == "cpu"):
            notes.append(f"reduce_ratio {ratio:g}: batch {batch_size} not tried, predicted "
                         f"{format_bytes(predicted)} > budget {format_bytes(budget)}")
            break
        if deadline is not None and out and last_cost_s is not None:
            expected = last_cost_s * batch_size / max(out[-1].batch_size, 1)
            if time.monotonic() + expected > deadline:
                notes.append(f"reduce_ratio {ratio:g}: batch {batch_size} skipped, "
                             f"~{expected:.1f} s would pass the time budget")
                break
        t0 = time.monotonic()
        trial = cell.trial(shape, ratio, batch_size, estimate)
        last_cost_s = time.monotonic() - t0
        out.append(trial)
        if on_trial:
            on_trial(trial)
        if trial.oom or trial.error:
            break
    return out


@dataclass
class _Cell:
    """One batch size's memory and speed cells, with what every cell of a probe shares."""
    workload: Workload
    device: str
    device_type: str
    precision: str
    warmup_steps: int
    timed_steps: int

    def trial(self, shape: ModelShape, ratio: float, batch_size: int,
              estimate: int | None) -> ModelTrial:
        peak, oom, error = self._memory(shape, batch_size)
        step_s = speed_shape = None
        if not oom:
            typical = typical_batch(self.workload, batch_size, ratio)
            timing = time_cell(self.workload, precision=self.precision, batch_size=batch_size,
                               shape=shape, device=self.device, batch=typical,
                               warmup_steps=self.warmup_steps, timed_steps=self.timed_steps)
            oom, error, step_s = timing.oom, timing.error, timing.step_s
            speed_shape = [timing.height, timing.width, timing.seq_len]
        return ModelTrial(
            reduce_ratio=ratio, batch_size=batch_size, height=shape.height, width=shape.width,
            seq_len=shape.seq_len, device=self.device, precision=self.precision,
            step_s=step_s, samples_per_s=round(batch_size / step_s, 4) if step_s else None,
            peak_memory_bytes=int(peak) if peak is not None and not oom else None,
            estimated_memory_bytes=estimate, oom=oom, error=error, speed_shape=speed_shape)

    def _memory(self, shape: ModelShape, batch_size: int) -> tuple[int | None, bool, str | None]:
        """Peak of two steps on the worst-case batch (every row the largest image)."""
        trim_heap()
        base = current_rss_bytes() if self.device_type == "cpu" else 0
        meter = PeakRssMeter()
        step = None
        try:
            cuda_peak_reset(self.device if self.device_type == "cuda" else None)
            with meter.measure():
                step = self.workload.make_step(batch_size, shape, self.precision, self.device)
                step.step()
                step.step()
                sync_device(self.device)
            if self.device_type == "cuda":
                return cuda_peak_bytes(self.device), False, None
            peak = None if meter.peak_bytes is None else max(0, meter.peak_bytes - base)
            return peak, False, None
        except Exception as exc:
            if not is_oom_error(exc):
                raise
            return None, True, error_line(exc)
        finally:
            if step is not None:
                step.close()
            del step
            free_memory()
            trim_heap()


def _safe_estimate(workload: Workload, batch_size: int, shape: ModelShape,
                   precision: str) -> int | None:
    try:
        value = workload.estimate_memory(batch_size, shape, precision)
    except (NotImplementedError, ValueError):
        return None
    return int(value) if value is not None else None


def pick_device() -> str:
    """The device a probe measures on: the first GPU when there is one."""
    import torch
    return "cuda:0" if torch.cuda.is_available() else "cpu"

