"""The workload interface, as autotune calls it (smt/workload.py is SMT's side of it).

This is the one door through which autotune reaches a training workload.

autotune knows machines, measurements and decisions; it must not know what a kern token or a
ConvNeXt block is. A workload (SMT is the only one today) implements `Workload` below, and
autotune finds it by name: `load_workload(DEFAULT_WORKLOAD)` imports `smt.workload` and calls
its `make_workload(**kwargs)`. Anything the probes need from the workload goes through these
methods, and the protocol holds only what autotune calls, so a second workload only has to
write one module; the name SMT is written once here (`DEFAULT_WORKLOAD`), every entry point
takes a `workload=` name that defaults to it.

Three things cross this door besides the probes' measurements, each as a declared record:
where the workload caches what it builds (`CacheLayout`, which `autotune cache` lists and
clears), how a search trial is launched (`TrialRequest` in, `TrialLaunch` out: a child
process's argv, environment and the files it leaves) and what a finished trial reports
(`TrialReport`). The import contract in pyproject.toml (checked by `make test`) forbids
`autotune` from importing `smt` any other way.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from autotune.errors import UserError
from autotune.settings import Settings

# The workload every command measures or launches unless told otherwise (`--workload`, or a
# caller's `workload=`): the only one shipped with the project.
DEFAULT_WORKLOAD = "smt"


@dataclass(frozen=True)
class MapSpec:
    """What `datasets.Dataset.map` needs to run the workload's preparation on raw rows.

    `function` must be picklable (a module-level function or a `functools.partial` of one):
    with `num_proc > 1` datasets ships it to worker processes.
    """
    function: Callable[..., Any]
    batched: bool = False
    batch_size: int | None = None            # rows per call when batched (None: datasets' 1000)
    remove_columns: tuple[str, ...] = ()
    features: Any = None                     # `datasets.Features` of the output, when known
    fn_kwargs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelShape:
    """The input size a model trial runs at: the worst case the data gives."""
    height: int
    width: int
    seq_len: int


@dataclass(frozen=True)
class CacheLayout:
    """Where a workload keeps what it builds, and how it marks the folders it made.

    `autotune cache` considers only direct children of the `folders` whose `marker_file` is a
    JSON object with `"creator": creator`; everything else there is left alone.
    """
    root: Path                                  # everything the workload builds is below this
    folders: tuple[tuple[str, Path], ...]       # (kind, parent folder): each child is one cache
    marker_file: str
    creator: str


@dataclass(frozen=True)
class TrialRequest:
    """One search trial in autotune's terms: the settings, how long, and where it writes."""
    settings: Settings
    max_steps: int
    out_dir: Path
    seed: int = 0
    lr: float | None = None                     # None: the trainer's default
    preset: str | None = None                   # model preset (None: the trainer's default)
    data: str | None = None                     # dataset source (None: the default data)
    val_every_steps: int | None = None          # validate this often (the pruner's values)
    val_batches: int | None = None              # cap the final validation (throughput trials)


@dataclass(frozen=True)
class TrialLaunch:
    """How the workload runs one trial: a child process and the files it leaves in out_dir.

    `command` is the program and `args` the flags for the request; `autotune search --trainer`
    replaces `command` and keeps `args`, so a stand-in trainer must take the same flags.
    """
    command: tuple[str, ...]
    args: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)   # added to the child's environment
    start_marker: str = "run.json"      # written once data is ready and training begins
    progress_file: str = "progress.jsonl"   # optional JSON lines: step, samples, metrics

    def with_command(self, command: tuple[str, ...] | None) -> TrialLaunch:
        if not command:
            return self
        return TrialLaunch(tuple(command), self.args, self.env, self.start_marker,
                           self.progress_file)

    @property
    def argv(self) -> list[str]:
        return [*self.command, *self.args]


@dataclass(frozen=True)
class TrialReport:
    """What a finished trial reports; None where the trainer did not measure it."""
    samples_per_s: float | None                 # over the whole training, loading included
    steady_samples_per_s: float | None          # after the trainer's warm-up batches
    val_loss: float | None
    val_ser: float | None                       # symbol error rate, percent
    train_loss: float | None
    peak_memory_bytes: int | None
    oom_events: int                             # OOMs the trainer survived by shrinking
    micro_batch_size: int | None                # what it shrank to (None: never shrank)
    interrupted: bool                           # stopped early (signal, Ctrl-C)

    def metric(self, name: str) -> Any:
        """A reported figure by name (objectives and the study's records use names)."""
        return getattr(self, name, None)


@runtime_checkable
class TrainingStep(Protocol):
    """What `Workload.make_step` returns (also a context manager that closes it)."""

    def step(self, batch: Any = None) -> float:
        """One full optimizer step (forward, loss, backward, clipping, optimizer and
        scheduler step) on `batch` (one the workload's own loader gave, as the training loop
        feeds it) or, when None, on the batch the step was built with; returns the loss."""

    def close(self) -> None:
        """Drop the model, optimizer and batch and give their memory back."""


@runtime_checkable
class Workload(Protocol):
    """What a trainable workload tells autotune. All sizes are in pixels, tokens and bytes."""

    name: str

    def describe(self) -> dict[str, Any]:
        """The profile's `workload` section: at least `fingerprint`, `dataset`, `model`."""

    def fingerprint(self) -> str:
        """Stable id of (data source, preparation format, model preset): equal means a profile
        measured for one is valid for the other."""

    # -- data preparation (the map) -------------------------------------------------------
    def dataset_rows(self) -> int:
        """Rows the full preparation maps (all splits): the map probe extrapolates to this."""

    def raw_sample(self, rows: int, seed: int = 0) -> Any:
        """A `datasets.Dataset` of `rows` raw rows drawn from the source (fewer if smaller)."""

    def map_spec(self, reduce_ratio: float) -> MapSpec:
        """The preparation function at `reduce_ratio`, as the real preparation runs it."""

    # -- model ----------------------------------------------------------------------------
    def largest_shape(self, reduce_ratio: float) -> ModelShape:
        """The largest image (after reduction) and longest target sequence the data gives."""

    def typical_shape(self, reduce_ratio: float, quantile: float = 0.5) -> ModelShape:
        """The image (each side on its own, after reduction) and target length at `quantile`
        of the data's distribution (default the median)."""

    def make_batch(self, batch_size: int, shape: ModelShape, device: Any) -> Any:
        """A synthetic training batch of `shape` on `device` (worst case: every row full size)."""

    def make_step(self, batch_size: int, shape: ModelShape, precision: str, device: Any,
                  batch: Any = None) -> "TrainingStep":
        """The training step exactly as training runs it (its loss, autocast for `precision`,
        the real optimizer and scheduler, gradient clipping), for a model sized as training
        sizes it for data whose largest input is `shape`. It steps on `batch` (the probes
        pass a `make_batch` of a typical shape) or, when None, on the worst-case batch of
        `batch_size` at `shape`.
        Built once, called repeatedly (time warm calls); memory is freed by `close()`."""

    def estimate_memory(self, batch_size: int, shape: ModelShape, precision: str) -> int | None:
        """The model's own prediction of a training step's peak memory, bytes (None: unknown)."""

    def num_params(self) -> int:
        """Trainable parameters of the model the workload trains."""

    # -- data loading ---------------------------------------------------------------------
    def make_loader(self, batch_size: int, num_workers: int, reduce_ratio: float,
                    rows: int) -> Iterable[Any]:
        """A DataLoader over `rows` prepared rows, as the real training builds it."""

    # -- caches and search trials (what autotune's cache and search commands use) ------------
    def cache_layout(self) -> CacheLayout:
        """Where the workload caches prepared data, and the marker on the folders it made."""

    def trial_launch(self, request: TrialRequest) -> TrialLaunch:
        """The child process that trains one search trial as `request` says."""

    def trial_report(self, out_dir: Path) -> TrialReport | None:
        """What the trial that wrote `out_dir` reports; None when it wrote no summary."""

    def trial_warmup_batches(self) -> int:
        """Loader batches the trainer's steady samples/s leaves out (a trial must run more)."""


def load_workload(name: str = DEFAULT_WORKLOAD, **kwargs: Any) -> Workload:
    """Import `<name>.workload` (or `name` itself when it names a module with a dot) and call
    its `make_workload(**kwargs)`.

    A dotted name lets tests and third parties plug in a workload without registering it.
    """
    return _make(name, kwargs)


def _make(name: str, kwargs: dict[str, Any]) -> Workload:
    module_name = name if "." in name else f"{name}.workload"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise UserError(f"unknown workload {name!r}: no module {module_name!r}") from exc
        raise
    factory = getattr(module, "make_workload", None)
    if factory is None:
        raise UserError(f"workload module {module_name!r} has no make_workload()")
    workload = factory(**kwargs)
    if not isinstance(workload, Workload):
        missing = [m for m in _REQUIRED if not hasattr(workload, m)]
        raise TypeError(f"{module_name}.make_workload() returned an object lacking {missing}")
    return workload


_REQUIRED = ("name", "describe", "fingerprint", "dataset_rows", "raw_sample", "map_spec",
             "largest_shape", "typical_shape", "make_batch", "make_step", "estimate_memory",
             "num_params", "make_loader", "cache_layout", "trial_launch", "trial_report",
             "trial_warmup_batches")


def default_cache_root(name: str = DEFAULT_WORKLOAD) -> Path | None:
    """The cache root of workload `name`, None when that workload is not installed here.

    The machine inventory reports free disk where prepared data will go; it asks the workload
    rather than guessing its layout. The layout does not depend on the data or model a
    workload is made for, so a default-made one answers; it is not `load_workload`'s (whose
    callers count on building the workload they asked for, once).
    """
    try:
        return _make(name, {}).cache_layout().root
    except (UserError, ImportError):
        return None
