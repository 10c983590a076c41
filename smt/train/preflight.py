"""Before any data work: will the run about to start fit in RAM (and VRAM on a GPU), and how
did the last run in its folder end?

On a container's RAM limit, running out is not an exception but the kernel's SIGKILL: no
message, no checkpoint. So `plan_run` asks here first. The step's peak comes from the
profile's measured memory line where the run has a profile with one, else from the model's
own estimate at the largest image the data holds (`autotune.feasible`, the predictor
`autotune search` rejects points with); the process itself and the loader's workers are added
(`autotune.preflight`). Over budget: one line with the figure, the budget and its limit, and
the largest batch that fits (the accumulation keeping the effective batch) or a reduce ratio;
exit 2. `--force` starts anyway after a warning.

A run the OOM killer ended wrote no summary and said nothing; the resource monitor's live file
(autotune.monitor.files) still holds its last RSS, which `last_run_note` reads back when
`smt.train` is pointed at that folder again (`--resume`, or `--out`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from autotune.errors import UserError
# What this process holds already (imports, the parsed flags): part of the run's peak. A name
# of this module, so that a test can stand in a fresh process's figure.
from autotune.measure import current_rss_bytes as own_rss_bytes
from autotune.units import format_bytes as fb
from smt.runconfig import TrainConfig
from smt.say import say

FORCE_FLAG = "--force"


def check_memory(plan: TrainConfig, force: bool = False) -> None:
    """Refuse (UserError, exit 2) a run predicted over its RAM or VRAM budget; with `force`,
    say so and go on. A run whose peak cannot be predicted goes on with a line saying why."""
    if plan.curriculum is not None:
        return      # each stage's micro-batch is sized by its own memory line (smt.stages)
    if not plan.data and not plan.profile and not _default_data_built():
        # Its largest image is known once it is rendered (a minute or more): that is the data
        # work this check comes before, so the first start on a machine goes without it.
        say("memory check skipped: the embedded dataset is not built yet (it is next; the "
            "check runs from the next start)")
        return
    import torch

    from autotune.feasible import ram_budget, vram_budget
    from autotune.hardware import inventory
    from autotune.preflight import Limits, predict_peak, run_ram, what_fits

    own = own_rss_bytes()
    hw = run_ram(inventory(), own)
    on_gpu = bool(hw.gpus) and torch.cuda.is_available()
    ram, ram_why = ram_budget(hw)
    vram = vram_budget(hw) if on_gpu else None
    limits = Limits(ram, vram[0] if vram else None)
    s = plan.settings
    try:
        predictor, holds = _predictor_and_holds(plan, own, on_gpu)
        peak = predict_peak(predictor, s, holds)
    except Exception as exc:   # noqa: BLE001 - no prediction means no refusal, said so
        say(f"memory check skipped: no prediction ({exc})")
        return
    if peak is None:
        say(f"memory check skipped: {predictor.source}")
        return
    over = limits.over(peak)
    if not over:
        return
    figure = (f"{fb(peak.host_bytes)} of RAM" if "RAM" in over else "")
    if "VRAM" in over:
        figure += (" and " if figure else "") + f"{fb(peak.vram_bytes or 0)} of VRAM per GPU"
    budget = (f"the {fb(ram)} RAM budget ({ram_why}; limit {fb(hw.ram_bytes)})"
              if "RAM" in over else "")
    if "VRAM" in over and vram:
        budget += (" and " if budget else "") + f"the {fb(vram[0])} VRAM budget ({vram[1]})"
    fit = what_fits(predictor, s, holds, limits)
    source = predictor.source if profile_fits(predictor) else \
        f"{predictor.source}: no profile measured this model's memory, --profile auto does"
    message = (f"batch {s.batch_size} at reduce ratio {s.reduce_ratio:g} is predicted to peak "
               f"at {figure} ({source}), over {budget}; {_fix(fit, s)}")
    if not force:
        raise UserError(f"{message}; or pass {FORCE_FLAG} to start anyway")
    say(f"warning: {message}; starting anyway ({FORCE_FLAG}): if a step outgrows the limit "
        "the kernel kills the run, and only the last saved checkpoint is kept")


def _default_data_built() -> bool:
    from smt.data.default import VERSION
    from smt.paths import default_dataset_dir
    return (default_dataset_dir(VERSION) / "dataset_dict.json").is_file()


def last_run_note(out: Path) -> None:
    """Say how the last run in `out` ended when it wrote no summary and its process is gone:
    the last RSS the monitor recorded against the limit ("likely killed for memory" near it)."""
    from autotune.monitor.files import killed_note
    from smt.checkpoint import SUMMARY_NAME
    if (out / SUMMARY_NAME).is_file():
        return
    note = killed_note(out)
    if note is not None:
        say(f"the last run in {out} wrote no summary: {note}")


def profile_fits(predictor: Any) -> bool:
    """Whether the prediction comes from a profile's line (else the model's own estimate)."""
    from autotune.feasible import FitPredictor
    return isinstance(predictor, FitPredictor)


def _fix(fit: Any, s: Any) -> str:
    """What fits, as the flags that set it."""
    if fit is None:
        return ("not even batch 1 at the lowest reduce ratio fits: a machine with more RAM, "
                "or a smaller --preset")
    flags = f"--batch-size {fit.batch_size} --accumulate {fit.accumulate_grad_batches}"
    if fit.reduce_ratio != s.reduce_ratio:
        flags = f"--reduce-ratio {fit.reduce_ratio:g} " + flags
    effective = fit.batch_size * fit.accumulate_grad_batches
    return f"{flags} fits (effective batch {effective})"


def _predictor_and_holds(plan: TrainConfig, own_rss: int, on_gpu: bool) -> tuple[Any, Any]:
    """The step's predictor (the profile's line, else the model's estimate) and what the run
    holds beside it: this process (or the profile's measured one when larger) and a loader
    worker (the profile's measured RSS per worker, else the batches it keeps in flight)."""
    from autotune.decide.context import Budgets, loader_worker_rss, shape_for
    from autotune.decide.batch import process_base_rss
    from autotune.feasible import WorkloadPredictor, choose_predictor
    from autotune.preflight import RunHolds
    from autotune.records import Measurements

    from smt.stages import profile_dict
    profile = profile_dict(plan.profile)
    predictor = choose_predictor(profile, plan.preset, plan.data, fmt=plan.fmt)
    s = plan.settings
    m = Measurements.from_dict((profile or {}).get("measurements"))
    process = max(own_rss, process_base_rss(m))
    worker = loader_worker_rss(m.loader_trials)
    if worker is None and s.num_workers:
        if isinstance(predictor, WorkloadPredictor):
            shape = predictor.workload.largest_shape(s.reduce_ratio)
            hw_px: tuple[int, int] | None = (shape.height, shape.width)
        else:
            hw_px = shape_for(m, s.reduce_ratio)
        # Unmeasured: the batches a worker keeps in flight (float32 images dominate).
        worker = (Budgets().prefetch_factor * s.batch_size * hw_px[0] * hw_px[1] * 4
                  if hw_px else 0.0)
    return predictor, RunHolds(float(process), float(worker or 0.0), s.devices, on_gpu)
