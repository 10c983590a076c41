"""How a training run speaks: the program's name, its line prefix, and which process talks.

Every line `python -m smt.train` prints (the command line, the LightningModule, the curriculum,
the DDP set-up, the stop handler) goes through `say`. A leaf: it imports nothing of ours, so
the lower modules print without importing the command line, and no cycle can start here.

Which process talks: the one of global rank 0, as one home for the three checks there were.
Before a process group exists (planning, data preparation) the rank is read from the
variables the launchers set for every rank but the first (Lightning's own launcher, torchrun,
srun); once it exists, from torch.distributed, which also covers `ddp_spawn`'s ranks.
"""
from __future__ import annotations

import os
import sys

PROG = "smt.train"
# Set by the launchers for the ranks they start: Lightning (LOCAL_RANK, NODE_RANK), torchrun
# (RANK, LOCAL_RANK), srun (SLURM_PROCID). Any of them non-zero: not the first rank.
RANK_VARS = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "NODE_RANK")
LOCAL_RANK_VARS = ("LOCAL_RANK", "SLURM_LOCALID")


def _launched_as_zero(names: tuple[str, ...]) -> bool:
    return all(int(os.environ.get(name) or 0) == 0 for name in names)


def is_rank_zero() -> bool:
    """True in the process of global rank 0 (the one that writes and talks for the run)."""
    dist = sys.modules.get("torch.distributed")      # never imports torch itself
    if dist is not None and dist.is_available() and dist.is_initialized():
        return int(dist.get_rank()) == 0
    return _launched_as_zero(RANK_VARS)


def is_local_zero() -> bool:
    """True in the first process on this machine (once-per-node notes)."""
    return _launched_as_zero(LOCAL_RANK_VARS)


def line(message: str) -> str:
    """`message` as the run prints it, after the program's name in brackets."""
    return f"[{PROG}] {message}"


def say(message: str, *, every_rank: bool = False, start: str = "") -> None:
    """Print `line(message)` (flushed: DDP ranks and progress bars interleave) from
    rank 0, or from every rank; `start` goes before the prefix (a newline ends a progress bar
    line first)."""
    if every_rank or is_rank_zero():
        print(start + line(message), flush=True)
