"""The command line of `python -m smt.train`: flags and `main`.

Each flag sets one `TrainConfig` (or `Settings`) field, `runconfig.FLAG_OF` pairs them, and a
help text names the field's default by reading it from `runconfig.DEFAULTS`: the numbers live
there only (tests/smt/test_train_flags.py checks every pair).
"""
from __future__ import annotations

import argparse
import math
import re
from collections.abc import Sequence

from autotune.bounds import FORCE_FLAG, count_arg
from autotune.errors import UserErrorParser, float_in, int_in
from smt.say import PROG
from smt.train.planner import PLAN_FLAG
from smt.runconfig import (ALL_FORMATS, AUGMENTS, CPU_DEMO_LR, CPU_DEMO_PRESET, DEFAULTS, MAX_PICTURES,
                                 PRESETS, CurriculumConfig)

MAX_TIME_RE = re.compile(r"^(?:(\d+):)?(\d+):(\d+):(\d+)$")


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


def _default(name: str, note: str = "", of: object = DEFAULTS) -> str:
    """"default X" for field `name` (of TrainConfig, or CurriculumConfig), then `note`."""
    value = getattr(of, name)
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return f"default {text}{note}"


def _data_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data and model")
    g.add_argument("--data", default=None,
                   help="hub id, save_to_disk folder or image folder (default: embedded synthetic set)")
    g.add_argument("--preset", default=None, choices=list(PRESETS),
                   help=f"model size ({_default('preset', f'; {CPU_DEMO_PRESET} in the CPU demo')})")
    g.add_argument("--format", dest="fmt", default=None, choices=ALL_FORMATS,
                   help=f"transcription format ({_default('fmt')}; a resumed run keeps its own)")
    g.add_argument("--profile", default=None, metavar="NAME|PATH|auto",
                   help="apply a profile's settings; auto reuses a matching one or probes")
    g.add_argument("--init-from", default=None, metavar="DIR|CKPT",
                   help="start from these weights (a folder from smt.convert, a run folder or a "
                        ".ckpt) with a fresh optimizer; the model's size comes from them")
    g.add_argument("--extend-vocab", action="store_true",
                   help="with --init-from: add output rows for tokens the model does not know")


def _settings_flags(p: argparse.ArgumentParser) -> None:
    s = p.add_argument_group("settings (override the profile)")
    s.add_argument("--batch-size", type=count_arg("batch_size"))
    s.add_argument("--accumulate", type=count_arg("accumulate_grad_batches"), help="loader batches per optimizer step")
    s.add_argument("--reduce-ratio", type=float_in(0.05, 1.0, lo_open=False))
    s.add_argument("--num-workers", type=count_arg("num_workers"))
    s.add_argument("--no-adapt-workers", action="store_true",
                   help="keep --num-workers for the whole run (default: more workers when the "
                        "step waits for data, fewer when RAM nears its budget)")
    s.add_argument("--num-threads", type=count_arg("num_threads"),
                   help="torch threads of the training process (default: torch's own)")
    s.add_argument("--num-proc", type=count_arg("num_proc"))
    s.add_argument("--writer-batch-size", type=int_in(1, 1_000_000))
    s.add_argument("--devices", type=count_arg("devices"))
    s.add_argument("--num-nodes", type=count_arg("num_nodes"), default=None,
                   help="machines in the run (launched by torchrun or srun, one process per "
                        f"rank; {_default('num_nodes')})")
    s.add_argument(FORCE_FLAG, action="store_true",
                   help="start more CPU processes x threads than twice the usable cores")
    s.add_argument("--ddp-interface", default=None, metavar="IFACE",
                   help="network interface DDP's sockets bind to across nodes, e.g. eth0 "
                   "(default: $SMT_DDP_INTERFACE; loopback on one node)")
    s.add_argument("--strategy", default=None)
    s.add_argument("--precision", default=None)


def _run_flags(p: argparse.ArgumentParser) -> None:
    r = p.add_argument_group("run length and optimisation")
    r.add_argument("--max-steps", type=int_in(1, 10**9))
    r.add_argument("--max-epochs", type=int_in(1, 10**6))
    r.add_argument("--max-time", type=parse_duration, metavar="DURATION",
                   help="seconds, 45m, 2h or DD:HH:MM:SS")
    r.add_argument("--lr", type=float_in(0.0, 1.0),
                   help=f"Adam's learning rate ({_default('lr', f'; {CPU_DEMO_LR:g} in the CPU demo')})")
    r.add_argument("--warmup-steps", type=int_in(0, 10**7), default=None,
                   help=f"linear warm-up of the learning rate ({_default('warmup_steps')})")
    r.add_argument("--grad-clip", type=float_in(0.0, 1e6),
                   help=f"max gradient norm ({_default('grad_clip')})")
    r.add_argument("--no-grad-clip", action="store_true", help="turn clipping off")
    r.add_argument("--teacher-noise", type=float_in(0.0, 0.9, lo_open=False), default=None,
                   help=f"fraction of decoder input tokens replaced at random ({_default('teacher_noise')})")
    r.add_argument("--augment", default=None, choices=AUGMENTS,
                   help=f"training image augmentation ({_default('augment')})")
    r.add_argument("--val-every", type=int_in(1, 10**9), metavar="STEPS",
                   help="validate every STEPS optimizer steps (default: every epoch)")
    r.add_argument("--pictures", type=int_in(0, MAX_PICTURES), metavar="N", default=None,
                   help="pictures of what the model reads for N validation samples at the end "
                        f"(image, prediction and truth engraved; 0 = none; {_default('pictures')})")
    r.add_argument("--val-batches", type=int_in(1, 10**9), default=None,
                   help="decode at most this many validation batches")
    r.add_argument("--val-batch-size", type=int_in(1, 4096), default=None, metavar="N",
                   help="validation batch, loss and decoding (default: the training batch)")
    r.add_argument("--ckpt-every", type=int_in(1, 10**9), metavar="STEPS", default=None,
                   help=f"write last.ckpt every STEPS optimizer steps ({_default('ckpt_every')})")
    r.add_argument("--ckpt-every-min", type=float_in(0.0, 7 * 24 * 60.0), metavar="MINUTES",
                   default=None, help="also write last.ckpt every MINUTES of training ("
                   + _default("ckpt_every_min", "; Ctrl-C and SIGTERM always save it)"))
    r.add_argument("--patience", type=int_in(0, 10**6), default=None,
                   help="stop after this many validations without a better SER (0 = never; "
                        f"{_default('patience')})")
    r.add_argument("--seed", type=int_in(0, 2**31 - 1), default=None,
                   help=f"seed of weights, shuffling and augmentation ({_default('seed')})")


CURRICULUM = CurriculumConfig()


def _curriculum_flags(p: argparse.ArgumentParser) -> None:
    c = p.add_argument_group("curriculum (SMT++ full pages)")
    c.add_argument("--curriculum", action="store_true",
                   help="pre-train on systems, then pages with a growing number of systems")
    c.add_argument("--systems", default=None, metavar="SRC",
                   help="system-level data for pre-training (default: the embedded synthetic set)")
    c.add_argument("--pretrain-steps", type=int_in(0, 10**9), default=None,
                   help="optimizer steps on single systems before pages (default: --stage-steps)")
    c.add_argument("--stage-steps", type=int_in(1, 10**9), default=None,
                   help=f"optimizer steps per curriculum stage ({_default('stage_steps', of=CURRICULUM)})")
    c.add_argument("--synthetic-share", type=float_in(0.0, 1.0, lo_open=False), default=None,
                   help="share of synthetic pages at the start of fine-tuning "
                        f"({_default('synthetic_share', of=CURRICULUM)})")
    c.add_argument("--max-systems", type=int_in(1, 64), default=None,
                   help="systems per synthetic page in the last stage "
                        f"({_default('max_systems', of=CURRICULUM)})")


def _output_flags(p: argparse.ArgumentParser) -> None:
    o = p.add_argument_group("output")
    o.add_argument("--out", default=None, metavar="DIR",
                   help="run folder (default runs/<timestamp>); --resume auto looks here")
    o.add_argument("--resume", default=None, nargs="?", const="auto", metavar="auto|RUN|CKPT",
                   help="continue a run from its last.ckpt (auto, or the flag alone: --out "
                        "itself when it holds a run, else the latest run under --out or runs/)")
    o.add_argument("--wandb", action="store_true", help="also log to Weights & Biases")
    o.add_argument("--force", action="store_true",
                   help="start even when the memory check predicts the run will not fit in "
                        "RAM (or VRAM): a warning instead of exit 2")
    o.add_argument("--debug", action="store_true", help="show tracebacks")
    # Added by rank 0 to the command line Lightning re-runs for the other DDP ranks.
    o.add_argument(PLAN_FLAG, default=None, help=argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    p = UserErrorParser(prog=PROG, description="Train the Sheet Music Transformer with autotuned settings.")
    for add in (_data_flags, _settings_flags, _run_flags, _curriculum_flags, _output_flags):
        add(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from smt.train.planner import own_run_folder, plan_run
    from smt.train.run import train   # torch and Lightning: only once the flags are good
    plan = plan_run(args)
    with own_run_folder(plan, args):
        train(plan, wandb=args.wandb)
    return 0
