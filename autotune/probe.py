"""`python -m autotune probe`: measure the machine and the workload, decide, explain, save.

    hardware -> map probe -> staff space -> step (precision x threads) -> model probe
             -> loader probe -> loop (loader + step together) -> decide -> profile JSON -> table

The part stages narrow the field; the loop stage times the few cells of threads x loader
workers x batch they leave as the real loader feeding the real step, and the decision on those
three comes from it (`autotune.decide.loop`). The probe keeps to a time budget (default 90 s):
each stage gets a deadline and stops starting trials past it, so a slow machine gets fewer
points, not a longer wait (the shares are MAP_SHARE, MODEL_SHARE, LOADER_SHARE and LOOP_SHARE
below). Building the embedded default dataset on
first use is not probing and is reported on its own line.
"""
from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from autotune.decide import (REDUCE_LADDER, Budgets, Decision, NothingFitsError,
                             candidate_loop_cells, choose_step_settings, decide)
from autotune.errors import UserError
from autotune.hardware import describe as describe_hardware
from autotune.hardware import inventory
from autotune.measure import current_rss_bytes
from autotune.probes.loader import LoaderProbeResult, probe_loader
from autotune.probes.loop import LoopProbeResult, probe_loop, timed_steps_for
from autotune.probes.map import MapProbeResult, probe_map
from autotune.probes.estimates import estimate_table
from autotune.probes.model import BATCH_LADDER, ModelProbeResult, pick_device, probe_model
from autotune.probes.step import StepProbeResult, probe_steps
from autotune.profile import Profile, profiles_dir, save_profile
from autotune.records import HardwareInfo, LoopTrial, Measurements, StepTrial
from autotune.staff import DEFAULT_STAFF_SPACE_PX, StaffMeasure, measure_staff, ratio_for_staff_space
from autotune.show import profile_table
from autotune.units import format_bytes, parse_size
from autotune.workload import DEFAULT_WORKLOAD, Workload, load_workload

DEFAULT_TIME_BUDGET_S = 90.0
# Shares of the time budget each stage may use, cumulative (map ends by 20%, model by 60%).
# The precision and thread cells between map and model are not cut short: each candidate
# needs its warm-up and two timed steps to be compared at all. The loop's first round is not
# cut either (a cell with no round has no rate); its second starts only before LOOP_SHARE.
MAP_SHARE, MODEL_SHARE, LOADER_SHARE, LOOP_SHARE = 0.20, 0.60, 0.70, 0.97
# Images the staff space is measured on (~5 ms each for a system).
STAFF_ROWS = 32
# Batch of typical rows the precision and thread candidates are timed at.
STEP_BATCH = 2


@dataclass
class ProbeOptions:
    data: str | None = None
    preset: str = "paper"
    devices: int | None = None
    ram_budget_bytes: int | None = None
    vram_budget_bytes: int | None = None
    effective_batch_size: int = 16
    time_budget_s: float = DEFAULT_TIME_BUDGET_S
    name: str | None = None
    staff_space_px: float = DEFAULT_STAFF_SPACE_PX
    workload: str = DEFAULT_WORKLOAD    # which workload is measured, when none is passed in

    def __post_init__(self) -> None:
        if not 1.0 <= self.staff_space_px <= 200:
            raise UserError(f"--staff-space must be in [1, 200] px, got {self.staff_space_px!r}")
        if not self.time_budget_s > 0:
            raise UserError(f"--time-budget must be positive seconds, got {self.time_budget_s!r}")
        if self.effective_batch_size < 1:
            raise UserError(f"--effective-batch must be >= 1, got {self.effective_batch_size}")
        if self.devices is not None and self.devices < 1:
            raise UserError(f"--devices must be >= 1, got {self.devices}")

    def budgets(self) -> Budgets:
        return Budgets(ram_budget_bytes=self.ram_budget_bytes,
                       vram_budget_bytes=self.vram_budget_bytes,
                       effective_batch_size=self.effective_batch_size, devices=self.devices,
                       staff_space_px=self.staff_space_px)


@dataclass
class ProbeOutcome:
    profile: Profile
    decision: Decision
    seconds: float                      # the probe itself
    setup_seconds: float                # workload set-up (builds the default dataset once)
    stage_seconds: dict[str, float]


def profile_name(preset: str, hardware: HardwareInfo) -> str:
    """Default profile name: one per preset and machine shape (same fingerprint, same file)."""
    return f"probe-{preset}-{hardware.fingerprint[:8]}"


def _staff_stage(workload: Workload, say: Callable[[str], None]) -> StaffMeasure:
    sample = workload.raw_sample(STAFF_ROWS)
    staff = measure_staff(sample["image"])
    if staff.staff_space_px is None:
        say(f"staff: no staff lines found in {STAFF_ROWS} images; the reduce ratio follows "
            f"memory alone")
    else:
        say(f"staff: space {staff.staff_space_px:.1f} px, line {staff.line_thickness_px:.1f} px "
            f"over {staff.images} images")
    return staff


def _say_step(say: Callable[[str], None]) -> Callable[[StepTrial], None]:
    return lambda t: say(
        f"  step {t.precision} threads={t.num_threads or 'torch'} batch={t.batch_size} "
        f"({t.height}x{t.width} px): "
        + ("OOM" if t.oom else f"{t.samples_per_s:.3g} samples/s (steps "
           + ", ".join(f"{x:.2f}" for x in t.step_times_s) + " s)"))


def probe_profile(*, data: str | None = None, preset: str = "paper", devices: int | None = None,
                  name: str | None = None, workload: Workload | None = None,
                  hardware: HardwareInfo | None = None,
                  time_budget_s: float = DEFAULT_TIME_BUDGET_S,
                  report: Callable[[str], None] | None = None) -> Profile:
    """Measure and decide with default budgets; the profile is returned, not saved (callers
    choose the path). This is what `--profile auto` runs."""
    opts = ProbeOptions(data=data, preset=preset, devices=devices, name=name,
                        time_budget_s=time_budget_s)
    return run_probe_stages(opts, workload=workload, hardware=hardware, report=report).profile


@dataclass
class _Run:
    """One probe under way: what every stage reads, and the seconds each took."""
    opts: ProbeOptions
    hardware: HardwareInfo
    workload: Workload
    budgets: Budgets
    say: Callable[[str], None]
    start: float
    stage_s: dict[str, float]

    def deadline(self, share: float) -> float:
        return self.start + share * self.opts.time_budget_s


def run_probe_stages(opts: ProbeOptions, *, workload: Workload | None = None,
                     hardware: HardwareInfo | None = None,
                     report: Callable[[str], None] | None = None) -> ProbeOutcome:
    say = report or (lambda _msg: None)
    setup_start = time.monotonic()
    hardware = hardware or inventory(workload=opts.workload)
    say(f"hardware: {describe_hardware(hardware)} (fingerprint {hardware.fingerprint})")
    if workload is None:
        say("workload: loading the data source (the embedded dataset is built on first use)")
        workload = load_workload(opts.workload, data=opts.data, preset=opts.preset)
    full_rows = workload.dataset_rows()        # opens the source (builds the default set once)
    setup_s = time.monotonic() - setup_start
    run = _Run(opts, hardware, workload, opts.budgets(), say, time.monotonic(), {})

    # The map goes first, before anything imports torch: its trials fork this process, and
    # workers that inherit torch's pages would overstate what a preparation worker costs.
    map_result = _map_stage(run, full_rows)
    staff = _staff_stage(workload, say)
    legible = ratio_for_staff_space(staff.staff_space_px, run.budgets.staff_space_px) or 1.0
    top_ratio = min(legible, run.budgets.max_reduce_ratio)
    device = pick_device()
    steps, precision, num_threads = _step_stage(run, device, top_ratio)
    model_result = _model_stage(run, device, precision, num_threads, top_ratio)
    loader_result = _loader_stage(workload, hardware, model_result,
                                  run.deadline(LOADER_SHARE), say)
    run.stage_s["loader"] = loader_result.seconds if loader_result else 0.0
    measurements = Measurements.from_dict({
        "map": map_result.to_dict(), "model": model_result.to_dict(),
        "loader": loader_result.to_dict() if loader_result else {},
        "step": steps.to_dict(),
        "staff": {"staff_space_px": staff.staff_space_px,
                  "line_thickness_px": staff.line_thickness_px, "images": staff.images},
        "estimates": [asdict(e) for e in estimate_table(
            workload, ratios=tuple(sorted({*REDUCE_LADDER, top_ratio}, reverse=True)))],
        "dataset_rows": workload.dataset_rows(), "num_params": model_result.num_params,
    })
    loop = _loop_stage(run, measurements, model_result)
    if loop is not None:
        measurements.loop_trials = loop.trials
        measurements.extra["loop"] = {k: v for k, v in loop.to_dict().items() if k != "trials"}
    return _outcome(run, measurements, model_result.notes, setup_s)


def _map_stage(run: _Run, full_rows: int) -> MapProbeResult:
    say = run.say
    say(f"map: {full_rows} rows to prepare; timing a sample at several "
        f"num_proc / writer_batch_size")
    result = probe_map(
        run.workload, usable_cpus=run.hardware.usable_cpus, deadline=run.deadline(MAP_SHARE),
        trial_timeout_s=max(5.0, MAP_SHARE * run.opts.time_budget_s / 2),
        on_trial=lambda t: say(
            f"  map num_proc={t.num_proc} writer_batch_size={t.writer_batch_size}: "
            + (f"{t.rows_per_s:.1f} rows/s, peak {format_bytes(t.peak_rss_bytes)}"
               if t.rows_per_s and not t.error else f"{t.error}")))
    run.stage_s["map"] = result.seconds
    return result


def _step_stage(run: _Run, device: str, top_ratio: float
                ) -> tuple[StepProbeResult, str, int | None]:
    """The precision x threads cells; returns them with the precision and threads chosen."""
    hardware = run.hardware
    capability = tuple(hardware.gpus[0].capability) if hardware.gpus else None
    run.say(f"step: precision and thread candidates, training step at reduce ratio "
            f"{top_ratio:g} on {STEP_BATCH} typical rows, 1 warm-up + 2 timed steps each, "
            f"interleaved")
    steps = probe_steps(run.workload, reduce_ratio=top_ratio, device=device,
                        usable_cpus=hardware.usable_cpus, capability=capability,  # type: ignore[arg-type]
                        batch_size=STEP_BATCH, on_trial=_say_step(run.say))
    run.stage_s["step"] = steps.seconds
    choice = choose_step_settings(hardware, run.budgets, steps.precision_trials,
                                  steps.thread_trials)
    run.say(f"  -> {choice.precision}, threads {choice.num_threads or 'torch'}: "
            f"{choice.reason.split(';')[0]}")
    return steps, choice.precision, choice.num_threads


def _model_stage(run: _Run, device: str, precision: str, num_threads: int | None,
                 top_ratio: float) -> ModelProbeResult:
    budgets, hardware, say = run.budgets, run.hardware, run.say
    if device.startswith("cuda"):
        memory_budget = budgets.vram_budget(hardware.gpus[0].memory_bytes) \
            if hardware.gpus else None
    else:
        memory_budget = int(budgets.ram_budget(hardware) * (1 - budgets.ram_margin)) \
            - current_rss_bytes()
    say(f"model: {device} ({precision}), memory at the largest image, speed on typical rows "
        f"(1 warm-up + 2 timed steps), growing batch sizes")
    result = probe_model(
        run.workload, device=device, precision=precision, memory_budget_bytes=memory_budget,
        reduce_ratios=(top_ratio, *(r for r in REDUCE_LADDER if r < top_ratio - 1e-9)),
        batch_sizes=_batch_ladder(run.opts, hardware),
        deadline=run.deadline(MODEL_SHARE), num_threads=num_threads,
        # A GPU step is milliseconds: measure a second reduce ratio for `plan` and the curves.
        # A CPU step is seconds: one ratio is all the budget buys.
        ratios_to_measure=2 if device.startswith("cuda") else 1,
        on_trial=lambda t: say(
            f"  model ratio={t.reduce_ratio:g} {t.height}x{t.width}px batch={t.batch_size}: "
            + ("OOM" if t.oom else f"{t.step_s:.2f} s/step, {t.samples_per_s:.2f} samples/s, "
               f"peak {format_bytes(t.peak_memory_bytes)}"
               f" (estimate {format_bytes(t.estimated_memory_bytes)})")))
    run.stage_s["model"] = result.seconds
    return result


def _outcome(run: _Run, measurements: Measurements, model_notes: list[str],
             setup_s: float) -> ProbeOutcome:
    """Decide from the measurements and wrap it all in a profile."""
    workload, hardware = run.workload, run.hardware

    decision = decide(hardware, measurements, run.budgets, estimate=_estimate_fn(workload))
    seconds = round(time.monotonic() - run.start, 2)
    measurements.probe_seconds = seconds
    details = {**decision.details, "probe_seconds": seconds, "setup_seconds": round(setup_s, 2),
               "stage_seconds": run.stage_s, "time_budget_s": run.opts.time_budget_s,
               "model_notes": model_notes}
    profile = Profile(name=run.opts.name or profile_name(run.opts.preset, hardware),
                      hardware=hardware, workload=workload.describe(),
                      settings=decision.settings, reasons=decision.reasons,
                      measurements=measurements, sources=decision.sources, kind="probe",
                      details=details)
    profile.provenance = provenance(run.opts, hardware, profile.created)
    return ProbeOutcome(profile, decision, seconds, round(setup_s, 2), run.stage_s)


def _estimate_fn(workload: Workload) -> Callable[[int, float, str], int | None]:
    """The workload's own memory estimate as decide reads it (None where it has none)."""
    def estimate(batch: int, ratio: float, precision_: str) -> int | None:
        try:
            return workload.estimate_memory(batch, workload.largest_shape(ratio), precision_)
        except (NotImplementedError, ValueError):
            return None
    return estimate


def _say_loop(say: Callable[[str], None]) -> Callable[[LoopTrial], None]:
    return lambda t: say(
        f"  loop threads={t.num_threads or 'torch'} workers={t.num_workers} "
        f"batch={t.batch_size} {t.precision}: "
        + (f"{t.samples_per_s:.3g} samples/s (rounds "
           + ", ".join(f"{x:.3g}" for x in t.round_samples_per_s)
           + (f"; waits for data {t.data_wait_frac:.0%}" if t.data_wait_frac is not None else "")
           + ")" if t.samples_per_s else f"{t.error}"))


def _loop_stage(run: _Run, measurements: Measurements,
                model: ModelProbeResult) -> LoopProbeResult | None:
    """Time the cells the part stages leave as the real loop; None when there is nothing to
    time (no batch fits, no step measured)."""
    try:
        cells, ratio = candidate_loop_cells(run.hardware, measurements, run.budgets,
                                            estimate=_estimate_fn(run.workload))
    except NothingFitsError:
        return None
    if not cells:
        return None
    steps = [t for t in model.trials if t.step_s and not t.oom and t.error is None]
    near = min(steps, key=lambda t: abs(t.batch_size - cells[0].batch_size), default=None)
    per_step = near.step_s * cells[0].batch_size / near.batch_size if near and near.step_s \
        else None
    timed = timed_steps_for(per_step)
    run.say(f"loop: the real loader feeding the real step, {len(cells)} cells of threads x "
            f"workers x batch x precision at reduce ratio {ratio:g}, {timed} timed steps "
            f"each, 2 interleaved rounds")
    result = probe_loop(run.workload, cells, device=pick_device(),
                        reduce_ratio=ratio, timed_steps=timed,
                        deadline=run.deadline(LOOP_SHARE), on_trial=_say_loop(run.say))
    run.stage_s["loop"] = result.seconds
    return result


def provenance(opts: ProbeOptions, hardware: HardwareInfo, created: str) -> dict[str, Any]:
    """When, on what and by which command a probe was recorded: the command reproduces it."""
    import platform
    import sys
    flags = [("--data", opts.data), ("--preset", opts.preset), ("--devices", opts.devices),
             ("--ram-budget", opts.ram_budget_bytes), ("--vram-budget", opts.vram_budget_bytes),
             ("--effective-batch", opts.effective_batch_size if opts.effective_batch_size != 16
              else None),
             ("--time-budget", f"{opts.time_budget_s:g}"
              if opts.time_budget_s != DEFAULT_TIME_BUDGET_S else None),
             ("--name", opts.name)]
    torch = sys.modules.get("torch")
    return {"recorded_at": created,
            "command": " ".join(["python -m autotune probe"]
                                + [f"{k} {v}" for k, v in flags if v is not None]),
            "machine": describe_hardware(hardware), "hardware_fingerprint": hardware.fingerprint,
            "platform": platform.platform(), "python": platform.python_version(),
            "torch": getattr(torch, "__version__", None)}


def _batch_ladder(opts: ProbeOptions, hardware: HardwareInfo) -> tuple[int, ...]:
    """Batches worth measuring: no more than the effective batch on one device needs, x2 so
    that the fit sees past the target (the decision may want it on a big GPU)."""
    devices = opts.devices or max(1, len(hardware.gpus))
    top = max(1, 2 * math.ceil(opts.effective_batch_size / devices))
    return tuple(b for b in BATCH_LADDER if b <= top) or (1,)


def _loader_stage(workload: Workload, hardware: HardwareInfo, model: ModelProbeResult,
                  deadline: float, say: Callable[[str], None]) -> LoaderProbeResult | None:
    ok = [t for t in model.trials if not t.oom and t.error is None and t.step_s]
    if not ok:
        say("loader: skipped (no model step measured to compare with)")
        return None
    ratio = ok[0].reduce_ratio
    # The batch the model ran best at among those measured: the loader is compared at the
    # batch training is likely to use.
    best = max((t for t in ok if t.reduce_ratio == ratio), key=lambda t: t.samples_per_s or 0)
    if time.monotonic() >= deadline:
        say("loader: skipped (time budget spent)")
        return None
    say(f"loader: batches/s by num_workers at batch {best.batch_size} "
        f"(model: {1 / best.step_s:.2f} batches/s)")
    return probe_loader(
        workload, batch_size=best.batch_size, usable_cpus=hardware.usable_cpus,
        reduce_ratio=ratio, model_step_s=best.step_s, deadline=deadline,
        on_trial=lambda t: say(
            f"  loader num_workers={t.num_workers}: "
            + (f"{t.batches_per_s:.1f} batches/s" if t.batches_per_s else f"{t.error}")))


# -- CLI --------------------------------------------------------------------------------------

def options_from_args(args: argparse.Namespace) -> ProbeOptions:
    def size(value: Any, flag: str) -> int | None:
        if value is None or isinstance(value, int):
            return value
        try:
            return parse_size(value, flag)
        except ValueError as exc:
            raise UserError(str(exc)) from None

    return ProbeOptions(
        data=getattr(args, "data", None), preset=getattr(args, "preset", None) or "paper",
        devices=getattr(args, "devices", None),
        ram_budget_bytes=size(getattr(args, "ram_budget", None), "--ram-budget"),
        vram_budget_bytes=size(getattr(args, "vram_budget", None), "--vram-budget"),
        effective_batch_size=int(getattr(args, "effective_batch", None) or 16),
        time_budget_s=float(getattr(args, "time_budget", None) or DEFAULT_TIME_BUDGET_S),
        name=getattr(args, "name", None),
        staff_space_px=float(getattr(args, "staff_space", None) or DEFAULT_STAFF_SPACE_PX))


def run_probe(args: argparse.Namespace) -> int:
    """Entry for `python -m autotune probe`: measure, decide, save, print. Returns 0."""
    from rich.console import Console

    console = Console(stderr=False)
    opts = options_from_args(args)
    with console.status("probing...") as status:
        def say(msg: str) -> None:
            console.log(msg, highlight=False)
            status.update(msg.strip()[:100])
        outcome = run_probe_stages(opts, report=say)
    profile = outcome.profile
    out = Path(args.out) if getattr(args, "out", None) else \
        profiles_dir() / f"{profile.name}.json"
    path = save_profile(profile, out)
    console.print(profile_table(profile))
    stages = ", ".join(f"{k} {v:.1f} s" for k, v in outcome.stage_seconds.items())
    setup = f" (+{outcome.setup_seconds:.1f} s setting up the workload)" \
        if outcome.setup_seconds >= 1 else ""
    console.print(f"probe took {outcome.seconds:.1f} s of a {opts.time_budget_s:g} s budget "
                  f"({stages}){setup}")
    console.print(f"wrote {path}")
    return 0
