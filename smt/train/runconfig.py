"""The run plan: everything decided before the Trainer exists, saved as the run's run.json.

Settings are layered, lowest priority first: safe defaults for the machine, the profile's
`settings` (`--profile`), explicit flags. A resumed run starts from its own run.json instead of
the defaults, and a DDP rank other than 0 reads rank 0's run.json rather than deciding again.
"""
from __future__ import annotations

import argparse
import datetime as dt
import math
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from autotune.errors import UserError
from autotune.settings import Settings
from smt.builder import DEFAULT_TEACHER_NOISE
from smt.train.cli import PROG

# Environment handed from rank 0 to the DDP ranks Lightning starts by re-running this command:
# they must use the same run folder and settings, not resolve (or probe) again.
ENV_RUN_DIR = "SMT_RUN_DIR"

# CPU demo: fits the README's main command into ~20 minutes on a 2-core machine, data build
# and probe included, with several validations so that the falling loss and SER are visible.
CPU_DEMO_PRESET = "small"
CPU_DEMO_MAX_TIME_S = 12 * 60
# Validate every ~200 samples (at >= 1.1 samples/s, four or more times in the cap) on the
# batches that hold ~16 samples (loss and decoding both: ~20 s a validation on the 2-core box,
# far under a tenth of the cap).
CPU_DEMO_VAL_SAMPLES = 200
CPU_DEMO_VAL_ROWS = 16
# The demo sees ~1,000 samples. At the recipe's effective batch 16 and lr 1e-4 that is ~60
# optimizer steps, too few to see the SER move; one optimizer step per batch at lr 1e-3 (20
# warm-up steps) is. Flags (--accumulate, --lr, --warmup-steps) still win.
CPU_DEMO_LR = 1e-3
CPU_DEMO_WARMUP_STEPS = 20
# last.ckpt at least this often (minutes) besides every --ckpt-every steps: a pre-empted or
# timed-out session loses at most this much, whatever a step costs.
DEFAULT_CKPT_EVERY_MIN = 30.0


@dataclass
class RunPlan:
    """Everything decided before the Trainer exists; saved as run.json."""
    out: Path
    settings: Settings
    preset: str
    fmt: str
    data: str | None
    max_steps: int
    max_epochs: int | None
    max_time_s: float | None
    val_every: int | None
    val_batches: int | None
    ckpt_every: int
    ckpt_every_min: float | None
    patience: int
    lr: float
    warmup_steps: int
    grad_clip: float | None
    teacher_noise: float
    augment: str
    seed: int
    num_nodes: int
    cpu_demo: bool
    resume_ckpt: Path | None
    profile: str | None
    curriculum: dict[str, Any] | None
    # Per machine, so never taken from a resumed run's run.json: the flag of this launch.
    ddp_interface: str | None = None
    # --init-from: weights to start a new run from (smt.convert.finetune); a resumed run has its own.
    init_from: str | None = None
    extend_vocab: bool = False
    # --no-adapt-workers turns it off: the resource monitor changes the train loader's
    # workers when the step starves or RAM nears its budget (smt.train.workers).
    adapt_workers: bool = True

    def to_json(self) -> dict[str, Any]:
        out = {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}
        out["settings"] = self.settings.to_dict()
        return out


def is_rank_zero() -> bool:
    for var in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "NODE_RANK"):
        if int(os.environ.get(var, "0") or 0) != 0:
            return False
    return True


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
    import torch
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    devices = max(1, gpus)
    return Settings(precision=default_precision(), devices=devices,
                    strategy="ddp" if devices > 1 else "auto", effective_batch_size=devices)


# Settings field -> the flag that overrides it (and names it in an error).
_FLAG_OF = {"num_proc": "--num-proc", "writer_batch_size": "--writer-batch-size",
            "batch_size": "--batch-size", "reduce_ratio": "--reduce-ratio",
            "accumulate_grad_batches": "--accumulate", "num_workers": "--num-workers",
            "num_threads": "--num-threads", "precision": "--precision",
            "strategy": "--strategy", "devices": "--devices"}
_ARG_OF = {"accumulate_grad_batches": "accumulate"}


def _apply_overrides(base: Settings, args: argparse.Namespace) -> Settings:
    flags = {field: getattr(args, _ARG_OF.get(field, field), None) for field in _FLAG_OF}
    try:
        settings = base.with_overrides(**flags)
    except ValueError as exc:
        text = str(exc)
        flag = _FLAG_OF.get(text.split(" ", 1)[0])
        raise UserError(f"{flag}: {text}" if flag else text) from None
    if settings.devices > 1 and settings.strategy == "auto" and args.strategy is None:
        settings = Settings.from_dict({**settings.to_dict(), "strategy": "ddp"})
    _check_strategy(settings.strategy)
    return settings


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
    if not args.resume:
        out = Path(args.out) if args.out else \
            Path("runs") / dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        if ck.last_checkpoint(out):
            raise UserError(f"--out {out} already holds a run (checkpoints/last.ckpt); "
                            "pass --resume to continue it or choose another --out")
        from autotune.outdir import check_run_dir
        check_run_dir(out, [args.data])           # a file, the data folder, read-only: now
        return out, None, {}
    out, resume_ckpt = ck.resolve_resume(args.resume, Path(args.out) if args.out else Path("runs"))
    # Fail before any data work if the checkpoint is unreadable or not weights-only.
    ckpt = ck.load_checkpoint(resume_ckpt)
    ck.check_matches_run(ckpt, resume_ckpt)         # another run's model or vocabulary: now
    step = ckpt.get("global_step")
    if is_rank_zero():
        print(f"[{PROG}] resuming {out} from {resume_ckpt.name} at step {step}", flush=True)
    previous = ck.read_json(out / ck.RUN_NAME) if (out / ck.RUN_NAME).is_file() else {}
    return out, resume_ckpt, previous


def _profile_settings(args: argparse.Namespace,
                      preset: str) -> tuple[Settings, str, float | None]:
    """The settings of `--profile` (probing when it says auto), the profile's name, and the
    learning rate a search saved with it (details.lr; not a `settings` key of the schema)."""
    from autotune.resolve import resolve_profile  # only --profile needs the probe side
    resolved = resolve_profile(args.profile, data=args.data, preset=preset, devices=args.devices)
    settings, ref = _unpack_resolved(resolved)
    note = getattr(resolved, "note", "")
    if note and is_rank_zero():
        print(f"[{PROG}] {note}", flush=True)
    details = (getattr(resolved, "profile", None) or {}).get("details") or {}
    lr = details.get("lr")
    lr = float(lr) if isinstance(lr, (int, float)) and not isinstance(lr, bool) and lr > 0 else None
    return settings, str(ref) if ref is not None else args.profile, lr


def _unpack_resolved(resolved: Any) -> tuple[Settings, Any]:
    """resolve_profile returns (Settings, profile path or dict) or an object with .settings."""
    if isinstance(resolved, tuple):
        settings, ref = resolved[0], resolved[1] if len(resolved) > 1 else None
    else:
        settings = getattr(resolved, "settings")
        ref = getattr(resolved, "path", None) or getattr(resolved, "name", None)
    if isinstance(settings, dict):
        settings = Settings.from_dict(settings)
    if isinstance(ref, dict):
        ref = ref.get("name")
    return settings, ref


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


def plan_run(args: argparse.Namespace) -> RunPlan:
    """Decide settings, run folder and limits; reuse rank 0's decision on other ranks."""
    inherited = os.environ.get(ENV_RUN_DIR)
    if inherited and not is_rank_zero():
        run_json = Path(inherited) / "run.json"        # smt.checkpoint.RUN_NAME
        return _plan_from_json(json.loads(run_json.read_text(encoding="utf-8")))
    if getattr(args, "ddp_interface", None):
        from smt.distributed import check_interface
        check_interface(args.ddp_interface)   # a typo stops here, before any data work
    _check_init_flags(args)
    out, resume_ckpt, previous = _run_folder(args)
    base = Settings.from_dict(previous["settings"]) if previous else None
    cpu_demo = (not _accelerator_present() and not previous
                and args.max_steps is None and args.max_epochs is None and args.max_time is None)
    preset = args.preset or previous.get("preset") or (CPU_DEMO_PRESET if cpu_demo else "paper")
    profile_name, profile_lr = None, None
    if args.profile:
        base, profile_name, profile_lr = _profile_settings(args, preset)
    settings = _apply_overrides(base or default_settings(), args)
    if profile_lr is not None and args.lr is None:
        args.lr = profile_lr                       # the profile's lr; an explicit --lr wins
    plan = _plan(args, previous, out, resume_ckpt, settings, preset, cpu_demo,
                 profile_name or previous.get("profile"))
    from smt.distributed import check_launch
    check_launch(plan.num_nodes, plan.settings.devices)   # before any data work
    return plan


def _curriculum(args: argparse.Namespace, previous: dict[str, Any]) -> dict[str, Any] | None:
    if not (args.curriculum or previous.get("curriculum")):
        return None
    prev = previous.get("curriculum") or {}
    stage_steps = args.stage_steps or prev.get("stage_steps", 1000)
    pretrain = args.pretrain_steps if args.pretrain_steps is not None else \
        prev.get("pretrain_steps", stage_steps)
    share = args.synthetic_share if args.synthetic_share is not None else \
        prev.get("synthetic_share", 0.9)
    return {"stage_steps": stage_steps, "pretrain_steps": pretrain,
            "systems": args.systems or prev.get("systems"), "synthetic_share": share,
            "max_systems": args.max_systems or prev.get("max_systems", 4)}


def _plan(args: argparse.Namespace, previous: dict[str, Any], out: Path,
          resume_ckpt: Path | None, settings: Settings, preset: str, cpu_demo: bool,
          profile: str | None) -> RunPlan:
    def pick(name: str, flag: Any, default: Any) -> Any:
        """The flag, else the resumed run's value, else the default."""
        return flag if flag is not None else previous.get(name, default)

    demo = cpu_demo and not previous
    if demo and args.accumulate is None:
        settings = replace(settings, accumulate_grad_batches=1,
                           effective_batch_size=settings.batch_size * settings.devices)
    demo_val_every = max(5, round(CPU_DEMO_VAL_SAMPLES / settings.effective_batch_size))
    demo_val_batches = max(1, math.ceil(CPU_DEMO_VAL_ROWS / settings.batch_size))
    return RunPlan(
        out=out, settings=settings, preset=preset, fmt=previous.get("fmt", args.fmt),
        data=args.data if args.data is not None else previous.get("data"),
        max_steps=pick("max_steps", args.max_steps, -1),
        max_epochs=pick("max_epochs", args.max_epochs, None),
        max_time_s=CPU_DEMO_MAX_TIME_S if cpu_demo else pick("max_time_s", args.max_time, None),
        val_every=demo_val_every if cpu_demo and args.val_every is None
        else pick("val_every", args.val_every, None),
        val_batches=demo_val_batches if cpu_demo and args.val_batches is None
        else pick("val_batches", args.val_batches, None),
        ckpt_every=pick("ckpt_every", args.ckpt_every, 200),
        ckpt_every_min=pick("ckpt_every_min", args.ckpt_every_min, DEFAULT_CKPT_EVERY_MIN),
        patience=pick("patience", args.patience, 10),
        lr=pick("lr", args.lr, CPU_DEMO_LR if demo else 1e-4),
        warmup_steps=pick("warmup_steps", args.warmup_steps, CPU_DEMO_WARMUP_STEPS if demo else 0),
        grad_clip=None if args.no_grad_clip else pick("grad_clip", args.grad_clip, 1.0),
        teacher_noise=pick("teacher_noise", args.teacher_noise, DEFAULT_TEACHER_NOISE),
        augment=pick("augment", args.augment, "none"),
        seed=pick("seed", args.seed, 0),
        num_nodes=pick("num_nodes", args.num_nodes, 1),
        cpu_demo=bool(previous.get("cpu_demo", cpu_demo)) if previous else cpu_demo,
        resume_ckpt=resume_ckpt, profile=profile, curriculum=_curriculum(args, previous),
        ddp_interface=getattr(args, "ddp_interface", None),
        init_from=None if resume_ckpt else args.init_from,
        extend_vocab=bool(args.extend_vocab or previous.get("extend_vocab", False)),
        adapt_workers=False if getattr(args, "no_adapt_workers", False)
        else previous.get("adapt_workers", True))


def _plan_from_json(data: dict[str, Any]) -> RunPlan:
    values = dict(data)
    values["out"] = Path(values["out"])
    values["settings"] = Settings.from_dict(values["settings"])
    values["resume_ckpt"] = Path(values["resume_ckpt"]) if values.get("resume_ckpt") else None
    known = set(RunPlan.__dataclass_fields__)
    return RunPlan(**{k: v for k, v in values.items() if k in known})


def describe(plan: RunPlan) -> str:
    """The lines a run prints first: folder, data, settings, the CPU demo cap."""
    s = plan.settings
    lines = [f"[{PROG}] run folder {plan.out}"
             + (f" (resuming from {plan.resume_ckpt})" if plan.resume_ckpt else "")]
    if plan.curriculum:
        c = plan.curriculum
        data_text = (f"curriculum: {c['pretrain_steps']} steps on systems "
                     f"({c.get('systems') or 'embedded synthetic'}), then {c['stage_steps']}-step "
                     f"stages of 2..{c['max_systems']}-system synthetic pages"
                     + (f" mixed with {plan.data}" if plan.data else ""))
    else:
        data_text = f"data {plan.data or 'embedded synthetic systems'}"
    lines.append(f"[{PROG}] preset {plan.preset}, format {plan.fmt}, {data_text}"
                 + (f", profile {plan.profile}" if plan.profile else ""))
    threads = f"{s.num_threads} torch threads, " if s.num_threads else ""
    lines.append(f"[{PROG}] batch {s.batch_size} x accumulate {s.accumulate_grad_batches} x "
                 f"{s.devices} device(s) x {plan.num_nodes} node(s) = effective "
                 f"{s.batch_size * s.accumulate_grad_batches * s.devices * plan.num_nodes}; "
                 f"{s.precision}, strategy {s.strategy}, reduce ratio {s.reduce_ratio}, "
                 f"{threads}{s.num_workers} loader workers, map num_proc {s.num_proc} / writer "
                 f"batch {s.writer_batch_size}")
    if plan.cpu_demo:
        lines.append(
            f"[{PROG}] no GPU found: CPU demo mode - preset {plan.preset}, stops after "
            f"{plan.max_time_s / 60:.0f} min, validates every {plan.val_every} steps on "
            f"{plan.val_batches} batches, one optimizer step per batch at lr {plan.lr:g}. "
            "Lift it with --max-time/--max-steps/--max-epochs (and --preset paper for the "
            "full model).")
    return "\n".join(lines)
