"""Model probe: step time and peak memory of a training step at the worst-case input size.

For each reduce ratio on a ladder (largest images first), build the workload's model for the
largest image the data gives after that reduction and run forward + backward + optimizer step
at growing batch sizes. Memory is the CUDA allocator peak on a GPU and the growth of this
process's RSS high-water mark on CPU. A batch that raises an OOM (as `is_oom_error` defines
it) ends that ratio's ladder; one whose predicted memory would pass the budget is not tried at
all, because on CPU the kernel's OOM killer, not an exception, would answer it.

Memory is freed between trials (model, optimizer and batch dropped, allocator caches and the
C heap trimmed) so that each trial's peak is its own. Per ratio a line
memory = fixed + per_sample x batch is fitted and set beside the model's own estimate.
"""
from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from autotune.decide.batch import REDUCE_LADDER
from autotune.fits import bound_memory
from autotune.measure import (PeakRssMeter, cuda_peak_bytes, cuda_peak_reset, current_rss_bytes,
                              free_memory, is_oom_error, trim_heap)
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

def autocast_for(device_type: str, precision: str) -> Any:
    import torch
    if precision.startswith("bf16"):
        return torch.autocast(device_type=device_type, dtype=torch.bfloat16)
    if precision.startswith("16") and device_type == "cuda":
        return torch.autocast(device_type=device_type, dtype=torch.float16)
    return contextlib.nullcontext()


def _train_step(workload: Workload, model: Any, optimizer: Any, batch: Any, device_type: str,
                precision: str, scaler: Any) -> None:
    optimizer.zero_grad(set_to_none=True)
    with autocast_for(device_type, precision):
        loss = workload.training_loss(model, batch)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()


def _sync(device_type: str) -> None:
    if device_type == "cuda":
        import torch
        torch.cuda.synchronize()


def fit_trials(trials: Sequence[ModelTrial], reduce_ratio: float) -> MemoryFit | None:
    """The memory line through the successful trials of one ratio (autotune.fits.bound_memory:
    one batch size measured gives a line through the origin, the safe reading for anyone who
    extrapolates the stored fit, e.g. the search)."""
    pts = [(t.batch_size, float(t.peak_memory_bytes)) for t in trials
           if math.isclose(t.reduce_ratio, reduce_ratio) and not t.oom and t.error is None
           and t.peak_memory_bytes is not None]
    return bound_memory(pts, reduce_ratio)


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
                ratios_to_measure: int = 1, timed_steps: int = 1, warmup_steps: int = 1,
                deadline: float | None = None,
                on_trial: Callable[[ModelTrial], None] | None = None) -> ModelProbeResult:
    """Walk the ratio ladder until `ratios_to_measure` ratios fit at batch 1, measuring a
    growing batch ladder at each; stop a ladder at the first OOM, at a batch predicted above
    `memory_budget_bytes`, or when the next step would run past `deadline`.
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
    for ratio in reduce_ratios:
        if fitted_ratios >= ratios_to_measure:
            break
        if deadline is not None and time.monotonic() >= deadline and trials:
            notes.append(f"time budget reached before reduce_ratio {ratio:g}")
            break
        shape = workload.largest_shape(ratio)
        ratio_trials = _ladder(workload, shape, ratio, device, device_type, precision,
                               memory_budget_bytes, batch_sizes, timed_steps, warmup_steps,
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


def _ladder(workload: Workload, shape: ModelShape, ratio: float, device: str, device_type: str,
            precision: str, budget: int | None, batch_sizes: Sequence[int], timed_steps: int,
            warmup_steps: int, deadline: float | None,
            on_trial: Callable[[ModelTrial], None] | None, notes: list[str]) -> list[ModelTrial]:
    import torch

    out: list[ModelTrial] = []
    trim_heap()
    cuda_peak_reset(device if device_type == "cuda" else None)
    base_bytes = current_rss_bytes() if device_type == "cpu" else 0
    model = optimizer = scaler = None
    last_step_s: float | None = None
    try:
        model = workload.build_model(shape).to(device)
        model.train()
        optimizer = workload.make_optimizer(model)
        if precision.startswith("16") and device_type == "cuda":
            scaler = torch.amp.GradScaler("cuda")
        warmed = False
        for batch_size in batch_sizes:
            estimate = _safe_estimate(workload, batch_size, shape, precision)
            fit = fit_trials(out, ratio)
            predicted = _predict_next(fit, estimate, batch_size)
            # On a GPU the first batch is always tried: an OOM there is an exception we catch,
            # and a measurement beats the estimate. On CPU the OOM killer answers instead.
            if budget is not None and predicted is not None and predicted > budget \
                    and (out or device_type == "cpu"):
                notes.append(f"reduce_ratio {ratio:g}: batch {batch_size} not tried, predicted "
                             f"{format_bytes(predicted)} > budget {format_bytes(budget)}")
                break
            if deadline is not None and out and last_step_s is not None:
                prev = out[-1]
                expected = last_step_s * batch_size / max(prev.batch_size, 1) * timed_steps
                if time.monotonic() + expected > deadline:
                    notes.append(f"reduce_ratio {ratio:g}: batch {batch_size} skipped, "
                                 f"~{expected:.1f} s would pass the time budget")
                    break
            trial = _one_trial(workload, model, optimizer, scaler, shape, ratio, batch_size,
                               device, device_type, precision, base_bytes, estimate,
                               timed_steps, 0 if warmed else warmup_steps)
            warmed = True
            out.append(trial)
            if on_trial:
                on_trial(trial)
            if trial.oom or trial.error:
                break
            last_step_s = trial.step_s
    except Exception as exc:
        if not is_oom_error(exc):
            raise
        # The model itself (weights, optimizer) does not fit at this size.
        out.append(ModelTrial(ratio, 1, shape.height, shape.width, shape.seq_len, device,
                              precision, None, None, None,
                              _safe_estimate(workload, 1, shape, precision), oom=True,
                              error=_short(exc)))
    finally:
        del model, optimizer, scaler
        free_memory()
        trim_heap()
    return out


def _one_trial(workload: Workload, model: Any, optimizer: Any, scaler: Any, shape: ModelShape,
               ratio: float, batch_size: int, device: str, device_type: str, precision: str,
               base_bytes: int, estimate: int | None, timed_steps: int,
               warmup_steps: int) -> ModelTrial:
    batch = None
    meter = PeakRssMeter()
    step_s = peak = None
    oom = False
    error = None
    try:
        # The previous trial freed its memory in its `finally`; a second gc pass here would
        # cost ~0.15 s per trial with torch loaded and find nothing.
        cuda_peak_reset(device if device_type == "cuda" else None)
        with meter.measure():
            batch = workload.make_batch(batch_size, shape, device)
            for _ in range(warmup_steps):
                _train_step(workload, model, optimizer, batch, device_type, precision, scaler)
            _sync(device_type)
            t0 = time.perf_counter()
            for _ in range(timed_steps):
                _train_step(workload, model, optimizer, batch, device_type, precision, scaler)
            _sync(device_type)
            step_s = (time.perf_counter() - t0) / max(timed_steps, 1)
        if device_type == "cuda":
            peak = cuda_peak_bytes(device)
        elif meter.peak_bytes is not None:
            peak = max(0, meter.peak_bytes - base_bytes)
    except Exception as exc:
        if not is_oom_error(exc):
            raise
        oom, error, step_s = True, _short(exc), None
    finally:
        del batch
        if oom:
            optimizer.zero_grad(set_to_none=True)
        free_memory()
    return ModelTrial(
        reduce_ratio=ratio, batch_size=batch_size, height=shape.height, width=shape.width,
        seq_len=shape.seq_len, device=device, precision=precision,
        step_s=round(step_s, 4) if step_s is not None else None,
        samples_per_s=round(batch_size / step_s, 3) if step_s else None,
        peak_memory_bytes=int(peak) if peak is not None else None,
        estimated_memory_bytes=estimate, oom=oom, error=error)


def _safe_estimate(workload: Workload, batch_size: int, shape: ModelShape,
                   precision: str) -> int | None:
    try:
        value = workload.estimate_memory(batch_size, shape, precision)
    except (NotImplementedError, ValueError):
        return None
    return int(value) if value is not None else None


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"{type(exc).__name__}: {text[:200]}"


def pick_device() -> str:
    """The device a probe measures on: the first GPU when there is one."""
    import torch
    return "cuda:0" if torch.cuda.is_available() else "cpu"

