"""Typed measurement records: what the probes measured, with units in the field names.

`None` means "not measured / unknowable here", never a guess. Every record converts to and from
plain JSON dicts so that a profile's `measurements` section can be read back and re-decided
(`autotune plan --from PROFILE`) without re-measuring.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, TypeVar

T = TypeVar("T")


def _from_dict(cls: type[T], data: dict[str, Any]) -> T:
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in data.items() if k in known})


class _Record:
    """A record read back from JSON: unknown keys (a newer writer's) are ignored."""

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        return _from_dict(cls, data)


@dataclass
class GpuInfo:
    name: str
    memory_bytes: int
    capability: tuple[int, int] | list[int]
    index: int = 0


@dataclass
class HardwareInfo:
    cpu_count: int                      # logical CPUs the OS reports
    usable_cpus: float                  # after affinity and cgroup quota
    ram_bytes: int                      # total, or the cgroup limit when lower
    ram_available_bytes: int | None     # at probe time (not part of the fingerprint)
    shm_bytes: int | None               # /dev/shm size; DataLoader workers pass tensors there
    disk_free_bytes: int | None         # at the datasets cache
    gpus: list[GpuInfo] = field(default_factory=list)
    fingerprint: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "HardwareInfo":
        info = _from_dict(cls, data)
        info.gpus = [_from_dict(GpuInfo, g) if isinstance(g, dict) else g for g in info.gpus]
        return info


@dataclass
class MapTrial(_Record):
    """One `datasets.map` run over a sample of raw rows."""
    num_proc: int
    writer_batch_size: int
    rows: int
    seconds: float | None
    rows_per_s: float | None
    peak_rss_bytes: int | None          # whole process tree, sampled
    base_rss_bytes: int | None          # tree RSS before the map started
    bytes_per_buffered_row: float | None
    cache_bytes_per_row: float | None
    stalled: bool = False
    error: str | None = None


@dataclass
class ModelTrial(_Record):
    """Forward + backward + optimizer step at one batch size and reduce ratio."""
    reduce_ratio: float
    batch_size: int
    height: int
    width: int
    seq_len: int
    device: str                         # "cpu" or "cuda:0"
    precision: str
    step_s: float | None
    samples_per_s: float | None
    peak_memory_bytes: int | None       # CUDA allocator peak on GPU, RSS growth on CPU
    estimated_memory_bytes: int | None  # the model's own estimate, for comparison
    oom: bool = False
    error: str | None = None
    # [height px, width px, tokens] of the batch step_s was timed on (typical rows); None:
    # timed at the largest image, as probes before the typical batch did.
    speed_shape: list[int] | None = None


@dataclass
class StepTrial:
    """The training step timed at one (precision, threads, batch, shape) cell: warm-up steps
    untimed, then `step_times_s`; `step_s` is their median (None when it did not run)."""
    precision: str
    num_threads: int | None             # torch intra-op threads (None: torch's own)
    batch_size: int
    height: int
    width: int
    seq_len: int
    device: str
    step_s: float | None
    samples_per_s: float | None
    peak_memory_bytes: int | None       # CUDA allocator peak; None on CPU
    step_times_s: list[float] = field(default_factory=list)
    warmup_steps: int = 1
    oom: bool = False
    error: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "StepTrial":
        trial = _from_dict(cls, data)
        trial.step_times_s = list(trial.step_times_s or [])
        return trial


@dataclass
class LoaderTrial(_Record):
    num_workers: int
    batch_size: int
    batches_per_s: float | None
    samples_per_s: float | None
    peak_rss_bytes: int | None
    error: str | None = None


@dataclass
class LoopTrial(_Record):
    """The training loop timed at one (threads, loader workers, batch) cell: the real loader
    feeding the real step, warm (workers started, one step run), over `rounds` interleaved
    rounds. `samples_per_s` is the median of the rounds' rates; `round_samples_per_s` each
    round's (samples over wall time of next batch + step, for the round's timed steps)."""
    num_threads: int | None             # torch intra-op threads of the training process
    num_workers: int                    # DataLoader worker processes
    batch_size: int
    precision: str
    device: str
    samples_per_s: float | None
    round_samples_per_s: list[float] = field(default_factory=list)
    data_wait_frac: float | None = None  # share of the loop's time spent waiting for a batch
    timed_steps: int = 0                 # per round
    peak_rss_bytes: int | None = None    # process tree (workers included) while it ran
    error: str | None = None


@dataclass
class MemoryFit:
    """memory = fixed_bytes + per_sample_bytes x batch, fitted on ModelTrials of one ratio."""
    reduce_ratio: float
    fixed_bytes: float
    per_sample_bytes: float
    points: int
    source: str = "measured"            # "measured" or "predicted" (from the model's estimate)

    def predict(self, batch_size: int) -> float:
        return self.fixed_bytes + self.per_sample_bytes * batch_size


@dataclass
class MemoryEstimate(_Record):
    """The workload's own prediction of a training step's peak memory at one point.

    A profile carries a small table of these (a few batch sizes per reduce ratio and
    precision) so that `autotune plan` can size batches for a GPU it has never seen without
    importing the workload.
    """
    reduce_ratio: float
    batch_size: int
    height: int
    width: int
    seq_len: int
    precision: str
    estimated_memory_bytes: int | None


def _section(data: Any) -> dict[str, Any]:
    return data if isinstance(data, dict) else {}


@dataclass
class Measurements:
    """Everything the decision rules read, in one record: the profile's `measurements`.

    On disk it is nested by probe: {"map": {"trials": [...], <fit figures>}, "model": {...},
    "loader": {...}, "estimates": [...], ...}. The probes' result records (`to_dict()`) drop
    straight into those sections; keys this record does not know are kept in `extra` and
    written back unchanged, so a profile survives a round trip through an older reader.
    """
    map_trials: list[MapTrial] = field(default_factory=list)
    model_trials: list[ModelTrial] = field(default_factory=list)
    loader_trials: list[LoaderTrial] = field(default_factory=list)
    estimates: list[MemoryEstimate] = field(default_factory=list)
    dataset_rows: int | None = None          # rows the full preparation maps
    num_params: int | None = None
    map_reduce_ratio: float | None = None    # ratio the map trials ran at
    map_base_rss_bytes: float | None = None  # fitted: parent process before the map
    map_worker_rss_bytes: float | None = None  # fitted: one map worker's own RSS
    map_bytes_per_buffered_row: float | None = None  # fitted: RSS per row in a writer batch
    cache_bytes_per_row: float | None = None  # prepared dataset on disk, per row
    loader_batch_size: int | None = None
    loader_reduce_ratio: float | None = None
    model_base_rss_bytes: int | None = None  # training process RSS before the first step
    precision_trials: list[StepTrial] = field(default_factory=list)  # one per candidate
    thread_trials: list[StepTrial] = field(default_factory=list)     # at the chosen precision
    loop_trials: list[LoopTrial] = field(default_factory=list)  # loader + step together
    staff_space_px: float | None = None      # run-length mode over a sample of images
    staff_line_thickness_px: float | None = None
    staff_images: int | None = None          # images the staff figures rest on
    probe_seconds: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    _MAP_KEYS = {"base_rss_bytes": "map_base_rss_bytes", "worker_rss_bytes": "map_worker_rss_bytes",
                 "bytes_per_buffered_row": "map_bytes_per_buffered_row",
                 "cache_bytes_per_row": "cache_bytes_per_row", "full_rows": "dataset_rows",
                 "reduce_ratio": "map_reduce_ratio"}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "Measurements":
        data = dict(data or {})
        m = cls()
        map_s = _section(data.pop("map", None))
        model_s = _section(data.pop("model", None))
        loader_s = _section(data.pop("loader", None))
        m.map_trials = [MapTrial.from_dict(t) for t in map_s.get("trials", [])]
        m.model_trials = [ModelTrial.from_dict(t) for t in model_s.get("trials", [])]
        m.loader_trials = [LoaderTrial.from_dict(t) for t in loader_s.get("trials", [])]
        m.estimates = [MemoryEstimate.from_dict(e) for e in data.pop("estimates", []) or []]
        step_s = _section(data.pop("step", None))
        m.precision_trials = [StepTrial.from_dict(t) for t in step_s.get("precision_trials", [])]
        m.thread_trials = [StepTrial.from_dict(t) for t in step_s.get("thread_trials", [])]
        loop_s = _section(data.pop("loop", None))
        m.loop_trials = [LoopTrial.from_dict(t) for t in loop_s.get("trials", [])]
        staff_s = _section(data.pop("staff", None))
        m.staff_space_px = staff_s.get("staff_space_px")
        m.staff_line_thickness_px = staff_s.get("line_thickness_px")
        m.staff_images = staff_s.get("images")
        for key, attr in cls._MAP_KEYS.items():
            if map_s.get(key) is not None:
                setattr(m, attr, map_s[key])
        m.num_params = model_s.get("num_params")
        m.model_base_rss_bytes = model_s.get("base_rss_bytes")
        m.loader_batch_size = loader_s.get("batch_size")
        m.loader_reduce_ratio = loader_s.get("reduce_ratio")
        for key in ("dataset_rows", "num_params", "probe_seconds"):
            if data.get(key) is not None:
                setattr(m, key, data.pop(key))
            else:
                data.pop(key, None)
        m.extra = {"map": {k: v for k, v in map_s.items()
                           if k not in cls._MAP_KEYS and k != "trials"},
                   "model": {k: v for k, v in model_s.items()
                             if k not in ("trials", "num_params", "base_rss_bytes")},
                   "loader": {k: v for k, v in loader_s.items()
                              if k not in ("trials", "batch_size", "reduce_ratio")},
                   "step": {k: v for k, v in step_s.items()
                            if k not in ("precision_trials", "thread_trials")},
                   "loop": {k: v for k, v in loop_s.items() if k != "trials"},
                   **data}
        return m

    def to_dict(self) -> dict[str, Any]:
        extra = dict(self.extra)
        map_s = {**_section(extra.pop("map", None)),
                 "trials": [asdict(t) for t in self.map_trials]}
        for key, attr in self._MAP_KEYS.items():
            if key != "full_rows":
                map_s[key] = getattr(self, attr)
        model_s = {**_section(extra.pop("model", None)),
                   "trials": [asdict(t) for t in self.model_trials],
                   "num_params": self.num_params, "base_rss_bytes": self.model_base_rss_bytes}
        loader_s = {**_section(extra.pop("loader", None)),
                    "trials": [asdict(t) for t in self.loader_trials],
                    "batch_size": self.loader_batch_size,
                    "reduce_ratio": self.loader_reduce_ratio}
        step_s = {**_section(extra.pop("step", None)),
                  "precision_trials": [asdict(t) for t in self.precision_trials],
                  "thread_trials": [asdict(t) for t in self.thread_trials]}
        loop_s = {**_section(extra.pop("loop", None)),
                  "trials": [asdict(t) for t in self.loop_trials]}
        staff_s = {"staff_space_px": self.staff_space_px,
                   "line_thickness_px": self.staff_line_thickness_px,
                   "images": self.staff_images}
        return {**extra, "dataset_rows": self.dataset_rows, "num_params": self.num_params,
                "probe_seconds": self.probe_seconds, "map": map_s, "model": model_s,
                "loader": loader_s, "estimates": [asdict(e) for e in self.estimates],
                "step": step_s, "loop": loop_s, "staff": staff_s}
