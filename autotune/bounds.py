"""One bound per count a user can type: the same for a flag, a profile's value and a search
point, so that no spelling of a number can start what the machine cannot hold.

Two kinds of bound:
- `COUNTS`: the typo bound of each count (devices, nodes, loader workers, torch threads, map
  processes, batch, accumulation). Far above any real machine or recipe, low enough that a
  stray digit is refused before hours of work. The flags' argparse types (`count_arg`), the
  `Settings` dataclass (profiles, run.json, search points) and the search space read it.
- `check_ranks`: what this machine holds, asked before any process is started. On CPU every
  DDP rank is a process with its own model copy, loader workers and torch threads; on GPU
  each rank needs a GPU of its own.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from autotune.errors import UserError, int_in

# count -> (lowest, highest) a user may give. The highest is a typo bound, not a machine's.
COUNTS: dict[str, tuple[int, int]] = {
    "devices": (1, 4096),                   # ranks per node: the largest pods have thousands
    "num_nodes": (1, 4096),
    "num_workers": (0, 1024),               # 0 = load in the training process
    "num_threads": (1, 4096),
    "num_proc": (1, 1024),
    "batch_size": (1, 1 << 16),
    "accumulate_grad_batches": (1, 1 << 16),
}

# Ranks x threads per rank may exceed the usable cores by this factor. Above 1x because a
# rank also waits (data, all-reduce, Python) and a little oversubscription keeps the cores
# busy meanwhile; at 2x each thread already gets half a core, and beyond it every rank's
# copy of the model and its loader workers cost RAM while the steps only get slower (DDP
# waits for the slowest rank). `--force-oversubscribe` lifts it for those who mean it.
OVERSUBSCRIBE = 2.0
FORCE_FLAG = "--force-oversubscribe"


def count_arg(name: str) -> Callable[[str], int]:
    """The argparse `type` of the flag that sets the count `name` (its bounds from COUNTS)."""
    return int_in(*COUNTS[name])


def count_problem(name: str, value: object) -> str | None:
    """Why `value` is not a valid `name` count, or None when it is one."""
    lo, hi = COUNTS[name]
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        kind = "a positive integer" if lo == 1 else f"an integer in [{lo}, {hi}]"
        return f"{name} must be {kind}, got {value!r}"
    if value > hi:
        return f"{name} is absurdly large ({value}, at most {hi})"
    return None


@dataclass(frozen=True)
class Machine:
    """What bounds the ranks of one node: usable CPU cores (affinity and cgroup quota, see
    `autotune.hardware.usable_cpus`) and the GPUs this process sees (0 on a CPU machine)."""
    usable_cpus: float
    visible_gpus: int

    def __post_init__(self) -> None:
        if not self.usable_cpus > 0:
            raise ValueError(f"usable_cpus must be positive, got {self.usable_cpus!r}")
        if self.visible_gpus < 0:
            raise ValueError(f"visible_gpus must be >= 0, got {self.visible_gpus!r}")


def most_threads_per_rank(ranks: int, usable_cpus: float) -> int:
    """The most torch threads each of `ranks` CPU ranks may take here (at least 1)."""
    return max(1, int(OVERSUBSCRIBE * usable_cpus) // max(1, ranks))


def check_ranks(devices: int, num_threads: int | None, machine: Machine, *,
                devices_key: str = "--devices", threads_key: str = "--num-threads",
                force: bool = False) -> None:
    """Refuse, as one line naming where the value came from (`devices_key`, `threads_key`: a
    flag or a profile's key), ranks this node cannot hold.

    On GPU: `devices` at most the visible GPUs (`force` does not lift it: a GPU cannot be
    shared by two ranks of one run). On CPU: `devices` x threads per rank at most OVERSUBSCRIBE
    x the usable cores. Threads per rank left to torch (`num_threads` None) count as one:
    Lightning gives each CPU rank cores // ranks threads, so only the ranks themselves can
    oversubscribe then.
    """
    if machine.visible_gpus:
        if devices > machine.visible_gpus:
            raise UserError(f"{devices_key} {devices}: this machine shows "
                            f"{machine.visible_gpus} GPU(s); at most {machine.visible_gpus}")
        return
    if force:
        return
    cores = machine.usable_cpus
    cap = int(OVERSUBSCRIBE * cores)
    threads = num_threads or 1
    if devices * threads <= cap:
        return
    why = (f"{OVERSUBSCRIBE:g}x the {cores:g} usable CPU core(s) here; pass {FORCE_FLAG} "
           "if you mean it")
    if num_threads is None or devices > cap:
        raise UserError(f"{devices_key} {devices} starts {devices} CPU training processes "
                        f"x {threads} thread(s); at most {max(1, cap // threads)} ({why})")
    raise UserError(f"{threads_key} {num_threads} x {devices} CPU training process(es) is "
                    f"{devices * threads} threads; at most {most_threads_per_rank(devices, cores)} "
                    f"per process ({why})")
