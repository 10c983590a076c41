"""The one door through which autotune reaches a training workload.

autotune knows machines, measurements and decisions; it must not know what a kern token or a
ConvNeXt block is. A workload (SMT is the only one today) implements `Workload` below, and
autotune finds it by name: `load_workload("smt")` imports `smt.workload` and calls its
`make_workload(**kwargs)`. Anything the probes need from the workload goes through these
methods, so a second workload only has to write one module.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from autotune.errors import UserError


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

    def build_model(self, shape: ModelShape) -> Any:
        """A fresh `torch.nn.Module` able to take inputs of `shape` (on CPU; the probe moves it)."""

    def make_batch(self, batch_size: int, shape: ModelShape, device: Any) -> Any:
        """A synthetic training batch of `shape` on `device` (worst case: every row full size)."""

    def training_loss(self, model: Any, batch: Any) -> Any:
        """Forward pass and loss (a scalar tensor) for `batch`."""

    def make_optimizer(self, model: Any) -> Any:
        """The optimizer the real training uses (its state is part of the memory cost)."""

    def estimate_memory(self, batch_size: int, shape: ModelShape, precision: str) -> int | None:
        """The model's own prediction of a training step's peak memory, bytes (None: unknown)."""

    def num_params(self) -> int:
        """Trainable parameters of the model the workload trains."""

    # -- data loading ---------------------------------------------------------------------
    def make_loader(self, batch_size: int, num_workers: int, reduce_ratio: float,
                    rows: int) -> Iterable[Any]:
        """A DataLoader over `rows` prepared rows, as the real training builds it."""


def load_workload(name: str = "smt", **kwargs: Any) -> Workload:
    """Import `<name>.workload` (or `name` itself when it names a module with a dot) and call
    its `make_workload(**kwargs)`.

    A dotted name lets tests and third parties plug in a workload without registering it.
    """
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
             "largest_shape", "build_model", "make_batch", "training_loss", "make_optimizer",
             "estimate_memory", "num_params", "make_loader")
