"""`python -m smt.train`: settings from a profile and flags -> a Lightning run of SMT.

    python -m smt.train --profile auto                  # probe or reuse a profile, then train
    python -m smt.train --data DIR --preset small --batch-size 4 --accumulate 4 --devices 2
    python -m smt.train --resume auto                   # continue the latest run

Where settings come from, lowest to highest priority: safe defaults (all visible GPUs, fp16
below compute capability 8, bf16 elsewhere), the profile's `settings`, explicit flags. A resumed
run starts from the settings in its own run.json.

CPU demo cap: with no GPU and none of --max-steps/--max-epochs/--max-time, a CPU cannot run the
full recipe (days), so the run uses the `small` preset (unless --preset is given), stops after
CPU_DEMO_MAX_TIME_S and validates every ~CPU_DEMO_VAL_SAMPLES samples. It prints this at the start;
any of those three flags lifts it.
"""
from __future__ import annotations

import os

# The CUDA caching allocator reads this when CUDA initialises, which happens later (first
# tensor on a GPU); expandable segments cut fragmentation when image sizes vary per batch.
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

import argparse  # noqa: E402
import datetime as dt  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from autotune.atomic import atomic_write_json  # noqa: E402
from autotune.errors import UserError, UserErrorParser, float_in, int_in, run_cli  # noqa: E402
from autotune.settings import Settings  # noqa: E402

PROG = "smt.train"
# Environment handed from rank 0 to the DDP ranks Lightning starts by re-running this command:
# they must use the same run folder and settings, not resolve (or probe) again.
ENV_RUN_DIR = "SMT_RUN_DIR"

# CPU demo: fits the README's main command into ~20 minutes on a 2-core machine, data build
# and probe included, with several validations so that the falling loss and SER are visible.
CPU_DEMO_PRESET = "small"
CPU_DEMO_MAX_TIME_S = 12 * 60
# Validate every ~400 samples: a few times in the demo whatever batch size the profile picked.
CPU_DEMO_VAL_SAMPLES = 400
CPU_DEMO_VAL_BATCHES = 4

MAX_TIME_RE = re.compile(r"^(?:(\d+):)?(\d+):(\d+):(\d+)$")


# --------------------------------------------------------------------------- flag parsing
def parse_duration(text: str) -> float:
    """Seconds from `3600`, `90s`, `45m`, `2h`, `1d` or Lightning's `DD:HH:MM:SS`."""
    t = text.strip().lower()
    m = MAX_TIME_RE.match(t)
    try:
        if m:
            d, h, mi, s = (int(g or 0) for g in m.groups())
            seconds = ((d * 24 + h) * 60 + mi) * 60 + s
        elif t and t[-1] in "smhd":
            seconds = float(t[:-1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[t[-1]]
        else:
            seconds = float(t)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be seconds, 45m, 2h or DD:HH:MM:SS, got {text!r}") from None
    if not math.isfinite(seconds) or seconds <= 0 or seconds > 365 * 86400:
        raise argparse.ArgumentTypeError(f"must be between 1 second and a year, got {text!r}")
    return float(seconds)


def build_parser() -> argparse.ArgumentParser:
    p = UserErrorParser(prog=PROG, description="Train the Sheet Music Transformer with autotuned settings.")
    g = p.add_argument_group("data and model")
    g.add_argument("--data", default=None,
                   help="hub id, save_to_disk folder or image folder (default: embedded synthetic set)")
    g.add_argument("--preset", default=None, choices=["paper", "small", "debug"],
                   help="model size (default: paper; small in the CPU demo)")
    g.add_argument("--format", dest="fmt", default="bekern", choices=["kern", "ekern", "bekern"])
    g.add_argument("--profile", default=None, metavar="NAME|PATH|auto",
                   help="apply a profile's settings; auto reuses a matching one or probes")
    s = p.add_argument_group("settings (override the profile)")
    s.add_argument("--batch-size", type=int_in(1, 65536))
    s.add_argument("--accumulate", type=int_in(1, 65536), help="loader batches per optimizer step")
    s.add_argument("--reduce-ratio", type=float_in(0.05, 1.0, lo_open=False))
    s.add_argument("--num-workers", type=int_in(0, 1024))
    s.add_argument("--num-proc", type=int_in(1, 1024))
    s.add_argument("--writer-batch-size", type=int_in(1, 1_000_000))
    s.add_argument("--devices", type=int_in(1, 4096))
    s.add_argument("--num-nodes", type=int_in(1, 4096), default=None)
    s.add_argument("--strategy", default=None)
    s.add_argument("--precision", default=None)
    r = p.add_argument_group("run length and optimisation")
    r.add_argument("--max-steps", type=int_in(1, 10**9))
    r.add_argument("--max-epochs", type=int_in(1, 10**6))
    r.add_argument("--max-time", type=parse_duration, metavar="DURATION",
                   help="seconds, 45m, 2h or DD:HH:MM:SS")
    r.add_argument("--lr", type=float_in(0.0, 1.0))
    r.add_argument("--warmup-steps", type=int_in(0, 10**7), default=None)
    r.add_argument("--grad-clip", type=float_in(0.0, 1e6),
                   help="max gradient norm (default 1.0)")
    r.add_argument("--no-grad-clip", action="store_true", help="turn clipping off")
    r.add_argument("--teacher-noise", type=float_in(0.0, 0.9, lo_open=False), default=None,
                   help="fraction of decoder input tokens replaced at random (default 0.2)")
    r.add_argument("--augment", default=None, choices=["none", "default", "camera"],
                   help="training image augmentation (default none)")
    r.add_argument("--val-every", type=int_in(1, 10**9), metavar="STEPS",
                   help="validate every STEPS optimizer steps (default: every epoch)")
    r.add_argument("--val-batches", type=int_in(1, 10**9), default=None,
                   help="decode at most this many validation batches")
    r.add_argument("--ckpt-every", type=int_in(1, 10**9), metavar="STEPS", default=None,
                   help="write last.ckpt every STEPS optimizer steps (default 200)")
    r.add_argument("--patience", type=int_in(0, 10**6), default=None,
                   help="stop after this many validations without a better SER (0 = never; default 10)")
    r.add_argument("--seed", type=int_in(0, 2**31 - 1), default=None)
    c = p.add_argument_group("curriculum (SMT++ full pages)")
    c.add_argument("--curriculum", action="store_true",
                   help="pre-train on systems, then pages with a growing number of systems")
    c.add_argument("--systems", default=None, metavar="SRC",
                   help="system-level data for pre-training (default: the embedded synthetic set)")
    c.add_argument("--pretrain-steps", type=int_in(0, 10**9), default=None,
                   help="optimizer steps on single systems before pages (default: --stage-steps)")
    c.add_argument("--stage-steps", type=int_in(1, 10**9), default=None,
                   help="optimizer steps per curriculum stage (default 1000)")
    c.add_argument("--synthetic-share", type=float_in(0.0, 1.0, lo_open=False), default=None,
                   help="share of synthetic pages at the start of fine-tuning (default 0.9)")
    c.add_argument("--max-systems", type=int_in(1, 64), default=None,
                   help="systems per synthetic page in the last stage (default 4)")
    o = p.add_argument_group("output")
    o.add_argument("--out", default=None, metavar="DIR",
                   help="run folder (default runs/<timestamp>); --resume auto looks here")
    o.add_argument("--resume", default=None, metavar="auto|RUN|CKPT",
                   help="continue a run from its last.ckpt (auto: the latest under --out or runs/)")
    o.add_argument("--wandb", action="store_true", help="also log to Weights & Biases")
    o.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


# ------------------------------------------------------------------------- run planning
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

    def to_json(self) -> dict[str, Any]:
        out = {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}
        out["settings"] = self.settings.to_dict()
        return out


def _is_rank_zero() -> bool:
    for var in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "NODE_RANK"):
        if int(os.environ.get(var, "0") or 0) != 0:
            return False
    return True


def _accelerator_present() -> bool:
    import torch
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


_FLAG_OF = {"num_proc": "--num-proc", "writer_batch_size": "--writer-batch-size",
            "batch_size": "--batch-size", "reduce_ratio": "--reduce-ratio",
            "accumulate_grad_batches": "--accumulate", "num_workers": "--num-workers",
            "precision": "--precision", "strategy": "--strategy", "devices": "--devices"}


def _apply_overrides(base: Settings, args: argparse.Namespace) -> Settings:
    flags = {"num_proc": args.num_proc, "writer_batch_size": args.writer_batch_size,
             "batch_size": args.batch_size, "reduce_ratio": args.reduce_ratio,
             "accumulate_grad_batches": args.accumulate, "num_workers": args.num_workers,
             "precision": args.precision, "strategy": args.strategy, "devices": args.devices}
    try:
        settings = base.with_overrides(**flags)
    except ValueError as exc:
        text = str(exc)
        field = text.split(" ", 1)[0]
        flag = _FLAG_OF.get(field)
        raise UserError(f"{flag}: {text}" if flag else text) from None
    if settings.devices > 1 and settings.strategy == "auto" and args.strategy is None:
        settings = Settings.from_dict({**settings.to_dict(), "strategy": "ddp"})
    return settings


def _default_out_root(args: argparse.Namespace) -> Path:
    return Path(args.out) if args.out else Path("runs")


def plan_run(args: argparse.Namespace) -> RunPlan:
    """Decide settings, run folder and limits; reuse rank 0's decision on other ranks."""
    inherited = os.environ.get(ENV_RUN_DIR)
    if inherited and not _is_rank_zero():
        run_json = Path(inherited) / "run.json"
        data = json.loads(run_json.read_text(encoding="utf-8"))
        return _plan_from_json(data)

    from smt import checkpoint as ck

    base: Settings | None = None
    previous: dict[str, Any] = {}
    resume_ckpt: Path | None = None
    out: Path
    if args.resume:
        out, resume_ckpt = ck.resolve_resume(args.resume, _default_out_root(args))
        # Fail before any data work if the checkpoint is unreadable or not weights-only.
        step = ck.load_checkpoint(resume_ckpt).get("global_step")
        if _is_rank_zero():
            print(f"[{PROG}] resuming {out} from {resume_ckpt.name} at step {step}", flush=True)
        if (out / ck.RUN_NAME).is_file():
            previous = ck.read_json(out / ck.RUN_NAME)
            base = Settings.from_dict(previous["settings"])
    else:
        out = Path(args.out) if args.out else Path("runs") / dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        if ck.last_checkpoint(out):
            raise UserError(f"--out {out} already holds a run (checkpoints/last.ckpt); "
                            "pass --resume to continue it or choose another --out")

    profile_name = None
    preset = args.preset or previous.get("preset")
    cpu_demo = (not _accelerator_present() and not previous
                and args.max_steps is None and args.max_epochs is None and args.max_time is None)
    if preset is None:
        preset = CPU_DEMO_PRESET if cpu_demo else "paper"
    if args.profile:
        from autotune.resolve import resolve_profile  # only --profile needs the probe side
        resolved = resolve_profile(args.profile, data=args.data, preset=preset,
                                   devices=args.devices)
        base, profile_ref = _unpack_resolved(resolved)
        note = getattr(resolved, "note", "")
        if note and _is_rank_zero():
            print(f"[{PROG}] {note}", flush=True)
        profile_name = str(profile_ref) if profile_ref is not None else args.profile
    if base is None:
        base = default_settings()
    settings = _apply_overrides(base, args)

    def pick(name: str, flag: Any, default: Any) -> Any:
        if flag is not None:
            return flag
        return previous.get(name, default)

    grad_clip = None if args.no_grad_clip else pick("grad_clip", args.grad_clip, 1.0)
    curriculum = None
    if args.curriculum or previous.get("curriculum"):
        prev_c = previous.get("curriculum") or {}
        stage_steps = args.stage_steps or prev_c.get("stage_steps", 1000)
        pretrain = args.pretrain_steps if args.pretrain_steps is not None else \
            prev_c.get("pretrain_steps", stage_steps)
        curriculum = {"stage_steps": stage_steps, "pretrain_steps": pretrain,
                      "systems": args.systems or prev_c.get("systems"),
                      "synthetic_share": pick("_", args.synthetic_share,
                                              prev_c.get("synthetic_share", 0.9)),
                      "max_systems": args.max_systems or prev_c.get("max_systems", 4)}
    max_steps = pick("max_steps", args.max_steps, -1)
    return RunPlan(
        out=out, settings=settings, preset=preset, fmt=previous.get("fmt", args.fmt),
        data=args.data if args.data is not None else previous.get("data"),
        max_steps=max_steps,
        max_epochs=pick("max_epochs", args.max_epochs, None),
        max_time_s=CPU_DEMO_MAX_TIME_S if cpu_demo else pick("max_time_s", args.max_time, None),
        val_every=max(5, round(CPU_DEMO_VAL_SAMPLES / settings.effective_batch_size))
        if cpu_demo and args.val_every is None
        else pick("val_every", args.val_every, None),
        val_batches=CPU_DEMO_VAL_BATCHES if cpu_demo and args.val_batches is None
        else pick("val_batches", args.val_batches, None),
        ckpt_every=pick("ckpt_every", args.ckpt_every, 200),
        patience=pick("patience", args.patience, 10),
        lr=pick("lr", args.lr, 1e-4),
        warmup_steps=pick("warmup_steps", args.warmup_steps, 0),
        grad_clip=grad_clip,
        teacher_noise=pick("teacher_noise", args.teacher_noise, 0.2),
        augment=pick("augment", args.augment, "none"),
        seed=pick("seed", args.seed, 0),
        num_nodes=pick("num_nodes", args.num_nodes, 1),
        cpu_demo=bool(previous.get("cpu_demo", cpu_demo)) if previous else cpu_demo,
        resume_ckpt=resume_ckpt,
        profile=profile_name or previous.get("profile"),
        curriculum=curriculum,
    )


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


def _plan_from_json(data: dict[str, Any]) -> RunPlan:
    values = dict(data)
    values["out"] = Path(values["out"])
    values["settings"] = Settings.from_dict(values["settings"])
    values["resume_ckpt"] = Path(values["resume_ckpt"]) if values.get("resume_ckpt") else None
    known = set(RunPlan.__dataclass_fields__)
    return RunPlan(**{k: v for k, v in values.items() if k in known})


def describe(plan: RunPlan) -> str:
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
    lines.append(f"[{PROG}] batch {s.batch_size} x accumulate {s.accumulate_grad_batches} x "
                 f"{s.devices} device(s) x {plan.num_nodes} node(s) = effective "
                 f"{s.batch_size * s.accumulate_grad_batches * s.devices * plan.num_nodes}; "
                 f"{s.precision}, strategy {s.strategy}, reduce ratio {s.reduce_ratio}, "
                 f"{s.num_workers} loader workers, map num_proc {s.num_proc} / writer batch "
                 f"{s.writer_batch_size}")
    if plan.cpu_demo:
        lines.append(
            f"[{PROG}] no GPU found: CPU demo mode - preset {plan.preset}, stops after "
            f"{plan.max_time_s / 60:.0f} min, validates every {plan.val_every} steps on "
            f"{plan.val_batches} batches. Lift it with --max-time/--max-steps/--max-epochs "
            "(and --preset paper for the full model).")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- data
@dataclass
class RunData:
    train: Any
    val: Any
    vocab: Any
    max_height: int
    max_width: int
    max_seq_len: int


def load_data(plan: RunPlan, vocab_path: Path | None) -> RunData:
    """Prepared splits (cached), the vocabulary, and the largest image / sequence in them."""
    from smt.data import prepare as prep
    from smt.tokenizer import Vocab

    s = plan.settings
    config = prep.PrepareConfig(reduce_ratio=s.reduce_ratio, num_proc=s.num_proc,
                                writer_batch_size=s.writer_batch_size, fmt=plan.fmt)
    # Other DDP ranks re-run this after rank 0 prepared: they only read the cache, quietly.
    result = prep.prepare(plan.data, config, quiet=not _is_rank_zero())
    if _is_rank_zero():
        print(result.summary(), flush=True)
    dataset = result.dataset if result.dataset is not None else prep.load_prepared(result.cache_dir)
    vocab = Vocab.load(result.vocab_path)
    if vocab_path is not None and vocab_path.is_file():
        saved = Vocab.load(vocab_path)
        if saved != vocab:
            missing = sorted(set(vocab.tokens) - set(saved.tokens))
            if missing:
                raise UserError(f"the data has tokens the resumed run's {vocab_path} lacks: "
                                f"{', '.join(missing[:10])}")
            vocab = saved
    for split in ("train", "val"):
        if split not in dataset or len(dataset[split]) == 0:
            raise UserError(f"the prepared data has no '{split}' rows (source {plan.data or 'default'})")
    h, w, t = _extent(dataset, plan.fmt)
    return RunData(dataset["train"], dataset["val"], vocab, h, w, t)


def _extent(splits: Any, fmt: str) -> tuple[int, int, int]:
    """Largest height, width and token count over all splits (`smt.builder.scan_extent`)."""
    from smt.builder import scan_extent
    ext = scan_extent(splits, fmt)
    return ext.max_height_px, ext.max_width_px, ext.max_seq_len_tokens


def _prepare_source(plan: RunPlan, source: str | None) -> Any:
    from smt.data import prepare as prep
    s = plan.settings
    config = prep.PrepareConfig(reduce_ratio=s.reduce_ratio, num_proc=s.num_proc,
                                writer_batch_size=s.writer_batch_size, fmt=plan.fmt)
    result = prep.prepare(source, config, quiet=not _is_rank_zero())
    if _is_rank_zero():
        print(result.summary(), flush=True)
    return result.dataset if result.dataset is not None else prep.load_prepared(result.cache_dir)


def load_curriculum(plan: RunPlan, vocab_path: Path | None) -> tuple[RunData, Any]:
    """Systems (the embedded set), the user's real pages (--data, optional), synthetic pages on
    demand, one vocabulary over all three; validation on real pages, else fixed synthetic ones."""
    from smt.curriculum import (VAL_PAGES, CurriculumSchedule, CurriculumSource, SyntheticPage,
                                vocabulary_tokens)
    from smt.tokenizer import Vocab, tokenize

    c = plan.curriculum or {}
    share = float(c.get("synthetic_share", 0.9))
    schedule = CurriculumSchedule(pretrain_steps=int(c["pretrain_steps"]),
                                  stage_steps=int(c["stage_steps"]),
                                  max_systems=int(c["max_systems"]),
                                  synthetic_share_start=share,
                                  synthetic_share_end=min(share, 0.2))
    systems = _prepare_source(plan, c.get("systems"))
    pages = _prepare_source(plan, plan.data) if plan.data else None
    if vocab_path is not None and vocab_path.is_file():
        vocab = Vocab.load(vocab_path)
    else:
        lists = [tokenize(t, plan.fmt) for dd in (systems, pages) if dd is not None
                 for split in dd.values() for t in split["transcription"]]
        vocab = Vocab.build(lists + vocabulary_tokens(schedule, plan.fmt, plan.seed), fmt=plan.fmt)
    maker = SyntheticPage(plan.settings.reduce_ratio, plan.fmt, vocab.tokens)
    if pages is not None and len(pages.get("val", [])):
        val: Any = pages["val"]
    else:
        if _is_rank_zero():
            print(f"[{PROG}] curriculum: no real validation pages; rendering {VAL_PAGES} "
                  f"synthetic pages of {schedule.max_systems} systems", flush=True)
        val = [maker(schedule.max_systems, 1_000_003 + i) for i in range(VAL_PAGES)]
    real_train = pages["train"] if pages is not None and "train" in pages else None
    length = len(systems["train"]) + (len(real_train) if real_train is not None else 0)
    source = CurriculumSource(schedule, systems["train"], real_train, maker, length, plan.seed)
    splits = {"systems": systems["train"], "val": val}
    if pages is not None:
        splits.update({f"pages_{k}": v for k, v in pages.items()})
    h, w, t = _extent(splits, plan.fmt)
    # Synthetic pages may come out taller than any measured one: allow an A4 page's height.
    h = max(h, int(w * 1.414))
    return RunData(source, val, vocab, h, w, t), source


def model_config(plan: RunPlan, data: RunData) -> Any:
    from smt.builder import model_config as build_config
    return build_config(plan.preset, len(data.vocab), data.max_height, data.max_width,
                        data.max_seq_len)


def make_loaders(plan: RunPlan, data: RunData) -> tuple[Any, Any]:
    from smt.builder import make_loader
    s = plan.settings
    common = dict(batch_size=s.batch_size, num_workers=s.num_workers)
    train = make_loader(data.train, data.vocab, plan.fmt, shuffle=True, augment=plan.augment,
                        teacher_noise=plan.teacher_noise, seed=plan.seed, **common)
    val = make_loader(data.val, data.vocab, plan.fmt, shuffle=False, **common)
    return train, val


# ---------------------------------------------------------------------------- trainer
def make_trainer(plan: RunPlan, callbacks: list[Any], loggers: list[Any]) -> Any:
    import lightning.pytorch as pl

    from smt.checkpoint import AtomicCheckpointIO
    from smt.distributed import make_strategy

    s = plan.settings
    kwargs: dict[str, Any] = {}
    if plan.val_every is not None:
        kwargs.update(val_check_interval=plan.val_every * s.accumulate_grad_batches,
                      check_val_every_n_epoch=None)
    max_epochs = plan.max_epochs
    if max_epochs is None and plan.max_steps == -1 and plan.max_time_s is None:
        max_epochs = 1000  # the full recipe ends on early stopping, this is a backstop
    return pl.Trainer(
        accelerator="auto", devices=s.devices, num_nodes=plan.num_nodes,
        strategy=make_strategy(s.strategy, s.devices, plan.num_nodes, plan.out),
        precision=s.precision, max_steps=plan.max_steps, max_epochs=max_epochs or -1,
        max_time=dt.timedelta(seconds=plan.max_time_s) if plan.max_time_s else None,
        limit_val_batches=None, num_sanity_val_steps=0, callbacks=callbacks, logger=loggers,
        default_root_dir=str(plan.out), plugins=[AtomicCheckpointIO()],
        log_every_n_steps=10, enable_model_summary=True, use_distributed_sampler=True,
        **kwargs)


def make_loggers(plan: RunPlan, wandb: bool) -> list[Any]:
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    loggers: list[Any] = [CSVLogger(str(plan.out), name="logs", version="csv"),
                          TensorBoardLogger(str(plan.out), name="logs", version="tensorboard")]
    if wandb:
        try:
            from lightning.pytorch.loggers import WandbLogger
            import wandb as _  # noqa: F401
        except ImportError:
            raise UserError("--wandb needs the wandb package: pip install 'smt-autotune[wandb]'") from None
        loggers.append(WandbLogger(project="smt-autotune", save_dir=str(plan.out),
                                   name=plan.out.name))
    return loggers


def make_callbacks(plan: RunPlan) -> tuple[list[Any], Any]:
    from lightning.pytorch.callbacks import EarlyStopping, RichProgressBar, TQDMProgressBar

    from smt import faults
    from smt.callbacks import (FreeMemoryAfterValidation, KillAtStep, LastCheckpoint, Throughput,
                               best_checkpoint)

    ckpt_dir = plan.out / "checkpoints"
    throughput = Throughput()
    callbacks: list[Any] = [LastCheckpoint(ckpt_dir, plan.ckpt_every), best_checkpoint(ckpt_dir),
                            FreeMemoryAfterValidation(), throughput]
    callbacks.append(RichProgressBar() if sys.stdout.isatty() else TQDMProgressBar(refresh_rate=5))
    if plan.patience > 0:
        callbacks.append(EarlyStopping(monitor="val_ser", mode="min", patience=plan.patience,
                                       check_on_train_epoch_end=False))
    kill_at = faults.kill_at_step()
    if kill_at is not None:
        callbacks.append(KillAtStep(kill_at))
    try:
        from autotune.monitor import ResourceMonitor
        callbacks.append(ResourceMonitor(out_dir=str(plan.out)))
    except ImportError:
        pass
    return callbacks, throughput


# -------------------------------------------------------------------------------- run
def train(plan: RunPlan, wandb: bool = False) -> dict[str, Any]:
    """Run (or continue) a training run; returns the summary written to OUT/summary.json."""
    import lightning.pytorch as pl

    from smt import checkpoint as ck
    from smt.builder import configure_torch
    from smt.config import SMTConfig
    from smt.module import SMTModule, TrainHParams

    configure_torch()
    pl.seed_everything(plan.seed, workers=True, verbose=False)
    rank0 = _is_rank_zero()
    if rank0:
        print(describe(plan), flush=True)
    vocab_path = plan.out / ck.VOCAB_NAME if plan.resume_ckpt else None
    curriculum_source = None
    if plan.curriculum:
        data, curriculum_source = load_curriculum(plan, vocab_path)
    else:
        data = load_data(plan, vocab_path)
    config_path = plan.out / ck.CONFIG_NAME
    if plan.resume_ckpt and config_path.is_file():
        config = SMTConfig.load(config_path)
        if data.max_height > config.max_height or data.max_width > config.max_width:
            raise UserError(
                f"the data ({plan.data or 'default'}) has images up to {data.max_width}x"
                f"{data.max_height} px (WxH) after reduce ratio {plan.settings.reduce_ratio}, larger "
                f"than the resumed model's maximum {config.max_width}x{config.max_height} "
                f"({config_path}); pass a smaller --reduce-ratio")
    else:
        config = model_config(plan, data)
    if rank0:
        plan.out.mkdir(parents=True, exist_ok=True)
        config.save(config_path)
        data.vocab.save(plan.out / ck.VOCAB_NAME)
        record = plan.to_json()
        record.update(started=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                      command=[sys.executable, *sys.argv])
        atomic_write_json(plan.out / ck.RUN_NAME, record)
        os.environ[ENV_RUN_DIR] = str(plan.out)

    train_loader, val_loader = make_loaders(plan, data)
    s = plan.settings
    hp = TrainHParams(lr=plan.lr, warmup_steps=plan.warmup_steps, grad_clip=plan.grad_clip,
                      accumulate=s.accumulate_grad_batches, val_decode_batches=plan.val_batches,
                      reduce_ratio=s.reduce_ratio)
    module = SMTModule(config, data.vocab, plan.fmt, hp)
    callbacks, throughput = make_callbacks(plan)
    if curriculum_source is not None:
        from smt.curriculum import CurriculumStep
        callbacks.append(CurriculumStep(curriculum_source))
    trainer = make_trainer(plan, callbacks, make_loggers(plan, wandb))
    t0 = time.perf_counter()
    trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader,
                ckpt_path=str(plan.resume_ckpt) if plan.resume_ckpt else None, weights_only=True)
    if module.last_val.get("step") != trainer.global_step and trainer.global_step > 0 \
            and not trainer.interrupted:
        # The run stopped between validations (max_time, max_steps): one last look, which
        # competes for best.ckpt like any other validation.
        trainer.validate(module, dataloaders=val_loader, verbose=False)
        _keep_if_best(trainer, module, plan.out / "checkpoints" / ck.BEST_NAME)
    summary = _summary(plan, trainer, module, throughput, time.perf_counter() - t0)
    if trainer.is_global_zero:
        atomic_write_json(plan.out / ck.SUMMARY_NAME, summary)
        print(one_line(summary), flush=True)
    return summary


def _best_callback(trainer: Any) -> Any:
    from lightning.pytorch.callbacks import ModelCheckpoint
    return next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)


def _keep_if_best(trainer: Any, module: Any, path: Path) -> None:
    import torch
    best_cb = _best_callback(trainer)
    ser = module.last_val.get("ser")
    if best_cb is None or ser is None:
        return
    best = best_cb.best_model_score
    if best is None or ser < float(best):
        trainer.save_checkpoint(path, weights_only=False)   # all ranks: it is a collective
        best_cb.best_model_score = torch.tensor(ser)
        best_cb.best_model_path = str(path)


def _summary(plan: RunPlan, trainer: Any, module: Any, throughput: Any, elapsed_s: float) -> dict[str, Any]:
    from smt import checkpoint as ck

    best_cb = _best_callback(trainer)
    best_score = getattr(best_cb, "best_model_score", None)
    ckpt_dir = plan.out / "checkpoints"
    best_path = ckpt_dir / ck.BEST_NAME
    return {
        "steps": int(trainer.global_step),
        "samples": int(throughput.samples),
        "samples_per_s": throughput.samples_per_s,
        "steady_samples_per_s": throughput.steady_samples_per_s,
        "samples_total": int(module.samples_seen),
        "peak_memory_bytes": throughput.peak_memory_bytes,
        "best_val_ser": float(best_score) if best_score is not None else module.last_val.get("ser"),
        "val_ser": module.last_val.get("ser"),
        "val_cer": module.last_val.get("cer"),
        "val_ler": module.last_val.get("ler"),
        "val_loss": module.last_val.get("loss"),
        "train_loss": module.last_train_loss,
        "checkpoint_last": str(ckpt_dir / ck.LAST_NAME),
        "checkpoint_best": str(best_path) if best_path.is_file() else None,
        "settings": plan.settings.to_dict(),
        "micro_batch_size": module.micro_batch_size,
        "oom_events": module.oom_events,
        "elapsed_s": elapsed_s,
        "preset": plan.preset,
        "interrupted": bool(trainer.interrupted),
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def one_line(summary: dict[str, Any]) -> str:
    sps = summary["samples_per_s"]
    ser = summary["best_val_ser"]
    return (f"[{PROG}] done: {summary['steps']} steps, "
            f"{sps:.2f} samples/s, " if sps is not None else f"[{PROG}] done: {summary['steps']} steps, ") \
        + (f"peak memory {_fmt_bytes(summary['peak_memory_bytes'])}, best val SER "
           f"{'n/a' if ser is None else f'{ser:.1f}'}, last {summary['checkpoint_last']}, "
           f"best {summary['checkpoint_best'] or 'n/a'}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    plan = plan_run(args)
    train(plan, wandb=args.wandb)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, prog=PROG))
