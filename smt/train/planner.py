"""Planning a run: from the parsed flags to its `TrainConfig` (`plan_run`), and what it prints
first (`describe`).

Planning decides what the layers of `runconfig.merge` are: the machine's default settings,
whether this is the CPU demo, the run folder (and the checkpoint and run.json of a resumed
run), the profile. A DDP rank that Lightning starts re-runs this command with
`--from-run-json OUT/run.json` added by rank 0 (`ranks_read_plan`) and takes rank 0's plan
from that file instead of deciding again (or probing). Ranks that a launcher starts
together (torchrun, srun) each plan from the same flags.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from autotune.errors import UserError
from autotune.settings import Settings
from smt.say import is_rank_zero, line, say
from smt.runconfig import (CPU_DEMO_LR, CPU_DEMO_MAX_TIME_S, CPU_DEMO_PRESET,
                                 CPU_DEMO_WARMUP_STEPS, DEFAULTS, FLAG_OF, Layers, TrainConfig,
                                 flag_values, merge)

# The CUDA caching allocator reads this when CUDA initialises, which planning may do first
# (default_precision); expandable segments cut fragmentation when image sizes vary per batch.
# Here, so that only a training process sets it (not the probe importing the defaults).
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

# The flag rank 0 adds to the command line Lightning re-runs for the other ranks (hidden: it
# is not for users). An argument, not an environment variable: it goes to those ranks only,
# and a later run in the same process never sees it.
PLAN_FLAG = "--from-run-json"


def _accelerator_present() -> bool:
    import torch   # here, not at import: parsing flags must not pay for torch
    return torch.cuda.is_available()


def default_precision() -> str:
    """fp16 mixed below compute capability 8 (T4, P100: no bf16 tensor cores), bf16 elsewhere."""
    import torch
    if torch.cuda.is_available():
        caps = [torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())]
        if min(caps)[0] < 8:
            return "16-mixed"
    return "bf16-mixed"


def default_settings() -> Settings:
    """Settings' safe defaults on every visible GPU (DDP when there are several)."""
    import torch
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    devices = max(1, gpus)
    return Settings(precision=default_precision(), devices=devices,
                    strategy="ddp" if devices > 1 else "auto", effective_batch_size=devices)


def _check_strategy(strategy: str) -> None:
    """What Lightning would refuse with a traceback after the data is prepared: refuse now."""
    import importlib.util
    if strategy in ("fsdp", "deepspeed") and not _accelerator_present():
        raise UserError(f"--strategy {strategy} needs a CUDA GPU and this machine has none; "
                        "use --strategy auto (or ddp)")
    if strategy == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
        raise UserError("--strategy deepspeed needs the deepspeed package (pip install deepspeed)")


def _run_folder(args: argparse.Namespace) -> tuple[Path, Path | None, dict[str, Any]]:
    """(run folder, checkpoint to resume or None, the resumed run's run.json or {})."""
    from smt import checkpoint as ck   # imports torch and Lightning: not at flag parsing
    from smt.train.preflight import last_run_note
    if not args.resume:
        out = Path(args.out) if args.out else \
            Path("runs") / dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        last_run_note(out)            # how the last run there ended, then why not into it
        refuse_held_run(out, everything=is_rank_zero())
        from autotune.outdir import check_run_dir
        check_run_dir(out, [args.data])           # a file, the data folder, read-only: now
        return out, None, {}
    out, resume_ckpt = ck.resolve_resume(args.resume, Path(args.out) if args.out else Path("runs"))
    last_run_note(out)
    # Fail before any data work if the checkpoint is unreadable or not weights-only.
    ckpt = ck.load_checkpoint(resume_ckpt)
    ck.check_matches_run(ckpt, resume_ckpt)         # another run's model or vocabulary: now
    say(f"resuming {out} from {resume_ckpt.name} at step {ckpt.get('global_step')}")
    previous = ck.read_json(out / ck.RUN_NAME) if (out / ck.RUN_NAME).is_file() else {}
    return out, resume_ckpt, previous


def refuse_held_run(out: Path, everything: bool = True, ask_lock: bool = True) -> None:
    """A new run into a folder that holds one (finished, crashed or running) is one line.
    `everything` False looks at last.ckpt alone: ranks that torchrun starts beside rank 0
    plan after it may have written its run files (and hold its lock)."""
    from smt import checkpoint as ck
    if everything and ask_lock:
        from autotune.outdir import check_run_dir_free
        check_run_dir_free(out)              # a run writing there now: name its pid
    marks = ck.run_marks(out) if everything else \
        [f"checkpoints/{ck.LAST_NAME}"] * bool(ck.last_checkpoint(out))
    if not marks:
        return
    what = f"--out {out} already holds a run ({', '.join(marks)})"
    if ck.last_checkpoint(out):
        raise UserError(f"{what}; pass --resume to continue it or choose another --out")
    raise UserError(f"{what} with no checkpoint to resume; choose another --out")


@contextmanager
def own_run_folder(plan: TrainConfig, args: argparse.Namespace) -> Iterator[None]:
    """Hold the run folder's lock while the block trains (`autotune.outdir.own_run_dir`): a
    second run into it is one line naming this one's pid. Only the launching process (rank 0)
    takes it; the ranks it starts, and those torchrun starts beside it, write nothing there
    that rank 0 does not own. Under the lock a new run looks again for one that started
    since planning."""
    if getattr(args, "from_run_json", None) or not is_rank_zero():
        yield
        return
    from autotune.outdir import own_run_dir
    with own_run_dir(plan.out):
        if not plan.resume_ckpt:
            refuse_held_run(plan.out, ask_lock=False)      # the lock is ours now
        yield


def _profile_layer(args: argparse.Namespace, preset: str) -> dict[str, Any]:
    """`--profile`'s layer: its settings (probing when it says auto), its name, and the
    learning rate a search saved with it (details.lr; not a `settings` key of the schema)."""
    from autotune.resolve import resolve_profile  # only --profile needs the probe side
    resolved = resolve_profile(args.profile, data=args.data, preset=preset, devices=args.devices)
    if resolved.note:
        say(resolved.note)
    layer: dict[str, Any] = {"settings": resolved.settings.to_dict(),
                             "profile": str(resolved.path) if resolved.path else args.profile}
    lr = ((resolved.profile or {}).get("details") or {}).get("lr")
    if isinstance(lr, (int, float)) and not isinstance(lr, bool) and lr > 0:
        layer["lr"] = float(lr)
    return layer


def _check_init_flags(args: argparse.Namespace) -> None:
    """--init-from / --extend-vocab mistakes stop here, before any data work."""
    if args.init_from and args.resume:
        raise UserError("--init-from starts a new run from weights, --resume continues a run: "
                        "pass one of them")
    if args.extend_vocab and not args.init_from:
        raise UserError("--extend-vocab needs --init-from (a new model has every token already)")
    if args.init_from:
        from smt.convert.finetune import checkpoint_of
        checkpoint_of(args.init_from)


def _demo_layer(args: argparse.Namespace, previous: dict[str, Any]) -> dict[str, Any]:
    """The CPU demo's values: a new run with no GPU and no limit flag (see smt.train)."""
    if _accelerator_present() or previous or any(
            getattr(args, name) is not None for name in ("max_steps", "max_epochs", "max_time")):
        return {}
    return {"cpu_demo": True, "preset": CPU_DEMO_PRESET, "max_time_s": CPU_DEMO_MAX_TIME_S,
            "lr": CPU_DEMO_LR, "warmup_steps": CPU_DEMO_WARMUP_STEPS}


def plan_run(args: argparse.Namespace) -> TrainConfig:
    """Decide settings, run folder and limits; a rank Lightning started reads rank 0's."""
    plan_file = getattr(args, "from_run_json", None)
    if plan_file:
        return TrainConfig.from_json(json.loads(Path(plan_file).read_text(encoding="utf-8")))
    if getattr(args, "ddp_interface", None):
        from smt.distributed import check_interface
        check_interface(args.ddp_interface)   # a typo stops here, before any data work
    _check_init_flags(args)
    out, resume_ckpt, previous = _run_folder(args)
    flags = flag_values(args, FLAG_OF)
    if args.no_grad_clip:
        flags["grad_clip"] = None             # off: a value of its own, not "not given"
    if args.init_from and args.fmt is None:
        # The model's tokens are tied to its rows: read the data as it was trained to read it
        # (a converted model: the reference's own tokenization).
        from smt.convert.finetune import recorded_format
        fmt = recorded_format(args.init_from)
        if fmt:
            flags["fmt"] = fmt
    layers = Layers(defaults=replace(DEFAULTS, settings=default_settings()),
                    demo=_demo_layer(args, previous), resumed=previous, profile={}, flags=flags,
                    decided={"out": out, "resume_ckpt": resume_ckpt},
                    curriculum=bool(args.curriculum))
    plan = merge(layers)              # without the profile first: its preset picks the profile
    if args.profile:
        layers = replace(layers, profile=_profile_layer(args, plan.preset))
        plan = merge(layers)
    _check_strategy(plan.settings.strategy)
    from smt.distributed import check_launch
    check_launch(plan.num_nodes, plan.settings.devices)   # before any data work
    # Counts first: a rank count above the cores also multiplies the memory predicted.
    check_machine(plan, layers, force=bool(getattr(args, "force_oversubscribe", False)))
    from smt.train.preflight import check_memory
    check_memory(plan, force=bool(getattr(args, "force", False)))   # RAM/VRAM: before data work
    return plan


def _key_of(field: str, plan: TrainConfig, layers: Layers) -> str:
    """Where the settings' `field` came from, as an error names it: the flag, the profile's
    key or the resumed run's run.json key."""
    if field in layers.flags:
        return FLAG_OF[field]
    if field in (layers.profile.get("settings") or {}):
        return f'profile {plan.profile} "{field}"'
    if field in (layers.resumed.get("settings") or {}):
        return f'{plan.out / "run.json"} "{field}"'
    return FLAG_OF[field]


def check_machine(plan: TrainConfig, layers: Layers, force: bool = False) -> None:
    """The ranks this node would start against its cores or GPUs (`autotune.bounds`), before
    any process is started and before any data work; one line naming the flag or profile key."""
    import torch
    from autotune.bounds import Machine, check_ranks
    from autotune.hardware import usable_cpus
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    s = plan.settings
    check_ranks(s.devices, s.num_threads, Machine(usable_cpus(), gpus),
                devices_key=_key_of("devices", plan, layers),
                threads_key=_key_of("num_threads", plan, layers), force=force)


@contextmanager
def ranks_read_plan(run_json: Path) -> Iterator[None]:
    """While the block runs, the command line Lightning re-runs for the other DDP ranks
    (`sys.argv`) ends in `--from-run-json RUN_JSON`, so they take this plan from the file."""
    saved = list(sys.argv)
    sys.argv = [*saved, PLAN_FLAG, str(run_json.resolve())]   # absolute: whatever their folder
    try:
        yield
    finally:
        sys.argv = saved


def describe(plan: TrainConfig) -> str:
    """The lines a run prints first: folder, data, settings, the CPU demo cap."""
    s = plan.settings
    lines = [line(f"run folder {plan.out}"
                  + (f" (resuming from {plan.resume_ckpt})" if plan.resume_ckpt else ""))]
    c = plan.curriculum
    if c is not None:
        data_text = (f"curriculum: {c.pretrain_steps} steps on systems "
                     f"({c.systems or 'embedded synthetic'}), then {c.stage_steps}-step "
                     f"stages of 2..{c.max_systems}-system synthetic pages"
                     + (f" mixed with {plan.data}" if plan.data else ""))
    else:
        data_text = f"data {plan.data or 'embedded synthetic systems'}"
    lines.append(line(f"preset {plan.preset}, format {plan.fmt}, {data_text}"
                      + (f", profile {plan.profile}" if plan.profile else "")))
    threads = f"{s.num_threads} torch threads, " if s.num_threads else ""
    lines.append(line(
        f"batch {s.batch_size} x accumulate {s.accumulate_grad_batches} x {s.devices} "
        f"device(s) x {plan.num_nodes} node(s) = effective "
        f"{s.batch_size * s.accumulate_grad_batches * s.devices * plan.num_nodes}; "
        f"{s.precision}, strategy {s.strategy}, reduce ratio {s.reduce_ratio}, "
        f"{threads}{s.num_workers} loader workers, map num_proc {s.num_proc} / writer "
        f"batch {s.writer_batch_size}"))
    if plan.cpu_demo:
        lines.append(line(
            f"no GPU found: CPU demo mode - preset {plan.preset}, stops after "
            f"{plan.max_time_s / 60:.0f} min, validates every {plan.val_every} steps on "
            f"{plan.val_batches} batches, one optimizer step per batch at lr {plan.lr:g}. "
            "Lift it with --max-time/--max-steps/--max-epochs (and --preset paper for the "
            "full model)."))
    return "\n".join(lines)
