"""A run's settings: `TrainConfig`, the one home of every default a run has, saved as its
run.json, and `merge`, the one place that layers where a value comes from.

Lowest priority first: the defaults below (the machine's `Settings` from `smt.train.planner`,
and the CPU demo's when it applies), a resumed run's run.json, the profile (`--profile`: its
settings and the lr a search saved with it), explicit flags. A resumed run keeps its format
(its vocabulary is written in it) and whether it was the CPU demo.

This module imports no torch or Lightning: parsing flags (and a bad flag's one line) stays fast.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from autotune.errors import UserError
from autotune.settings import Settings, SettingError
from smt.config import PRESETS
from smt.tokenizer import ALL_FORMATS

# The names of smt.data.augment.PRESETS, which imports OpenCV: not at flag parsing
# (tests/smt/test_train_flags.py checks they agree).
AUGMENTS = ("none", "default", "camera")

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


# Fraction of decoder input tokens replaced at random during training (`--teacher-noise`):
# the reference recipe's 0.2 makes the decoder robust to its own mistakes at inference. The
# probe's loader (smt.workload) uses the same value, so it measures the loader that trains.
DEFAULT_TEACHER_NOISE = 0.2
# --pictures: each one costs a greedy decode and two engravings at the end of the run.
MAX_PICTURES = 64


@dataclass(frozen=True)
class CurriculumConfig:
    """`--curriculum` (SMT++ full pages): saved under run.json's `curriculum` key."""
    # Steps per page stage: long enough for the model to adapt to one more system per page.
    stage_steps: int = 1000
    # Systems-only steps before pages (SMT++ pre-trains on GrandStaff systems); None: one
    # stage's worth (stage_steps), which is what run.json then records.
    pretrain_steps: int | None = None
    # System-level data for pre-training; None: the embedded synthetic set.
    systems: str | None = None
    # Start mostly synthetic (labels are exact); the share falls to the real pages' side.
    synthetic_share: float = 0.9
    # Systems on the largest synthetic page; four 4-bar systems fill an A4 page at 2100 px.
    max_systems: int = 4

    def __post_init__(self) -> None:
        if self.pretrain_steps is None:
            object.__setattr__(self, "pretrain_steps", self.stage_steps)
        _check(self.stage_steps >= 1, "stage_steps", "must be >= 1", self.stage_steps)
        _check(self.pretrain_steps >= 0, "pretrain_steps", "must be >= 0", self.pretrain_steps)
        _check(self.max_systems >= 2, "max_systems", "must be >= 2 (a page has several systems)",
               self.max_systems)
        _check(0.0 <= self.synthetic_share <= 1.0, "synthetic_share", "must be in [0, 1]",
               self.synthetic_share)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "CurriculumConfig":
        """From run.json's `curriculum` dict (unknown keys of other versions are ignored)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run decides before the Trainer exists; its fields are run.json's keys."""
    # The run folder; chosen by planning (--out, the resumed run, or runs/<timestamp>).
    out: Path
    # Loader, precision and device settings: the profile's contract (autotune.settings),
    # whose defaults are the safe start for a small machine.
    settings: Settings = field(default_factory=Settings)
    # The reference model; the CPU demo uses CPU_DEMO_PRESET.
    preset: str = "paper"
    # bekern is the reference SMT's notation (the smallest vocabulary of the three).
    fmt: str = "bekern"
    # None: the embedded synthetic set, so a first run needs no download.
    data: str | None = None
    # -1: Lightning's "no step limit"; the recipe ends on early stopping.
    max_steps: int = -1
    # None: no epoch limit (make_trainer puts a 1000-epoch backstop when nothing else ends it).
    max_epochs: int | None = None
    # None: no time limit (the CPU demo sets CPU_DEMO_MAX_TIME_S).
    max_time_s: float | None = None
    # None: validate once per epoch, Lightning's default.
    val_every: int | None = None
    # None: decode the whole validation split (the reference recipe's SER).
    val_batches: int | None = None
    # last.ckpt every 200 optimizer steps: on the reference GPU a few minutes of work, while
    # writing an 11 M-parameter checkpoint costs well under a second.
    ckpt_every: int = 200
    # last.ckpt at least this often (minutes) besides every ckpt_every steps: a pre-empted or
    # timed-out session loses at most this much, whatever a step costs. None: steps only.
    ckpt_every_min: float | None = 30.0
    # Stop after 10 validations without a better SER (0 = never): the reference recipe's.
    patience: int = 10
    # The reference SMT recipe: Adam at 1e-4.
    lr: float = 1e-4
    # Short linear warmup keeps the first Adam steps of a post-norm decoder from diverging;
    # 0 reproduces the reference exactly.
    warmup_steps: int = 0
    # Clipping at norm 1.0 is what the user's hand-tuned Kaggle run used with fp16; None = off.
    grad_clip: float | None = 1.0
    # The loader's recipe, shared with the probe (the reason is at DEFAULT_TEACHER_NOISE).
    teacher_noise: float = DEFAULT_TEACHER_NOISE
    # No augmentation: the reference trains on clean renders.
    augment: str = "none"
    # A fixed seed: two runs of one command draw the same batches.
    seed: int = 0
    # One machine unless a launcher starts several (torchrun, srun).
    num_nodes: int = 1
    # True when this run is the CPU demo (set by planning, kept on resume).
    cpu_demo: bool = False
    # The checkpoint a resumed run continues from (set by planning).
    resume_ckpt: Path | None = None
    # The profile the settings came from (its name or path), for the record.
    profile: str | None = None
    # None: plain training on `data`; see CurriculumConfig.
    curriculum: CurriculumConfig | None = None
    # Per machine, so never taken from a resumed run's run.json: the flag of this launch.
    ddp_interface: str | None = None
    # --init-from: weights to start a new run from (smt.convert.finetune); a resumed run has its own.
    init_from: str | None = None
    # --extend-vocab: add output rows for tokens the starting model does not know.
    extend_vocab: bool = False
    # --no-adapt-workers turns it off: the resource monitor changes the train loader's
    # workers when the step starves or RAM nears its budget (smt.train.workers). On by
    # default because a stage or a machine's load can change what the probe measured.
    adapt_workers: bool = True
    # Pictures of what the model reads (smt.train.pictures) for this many fixed validation
    # samples at the end of the run. Four: enough to tell a model that reads from one that
    # repeats a memorised answer, few enough to cost seconds (four greedy decodes, eight
    # engravings). Search trials pass 0: nobody looks at a trial's pictures.
    pictures: int = 4

    def __post_init__(self) -> None:
        _check(self.preset in PRESETS, "preset", f"must be one of {', '.join(sorted(PRESETS))}", self.preset)
        _check(self.fmt in ALL_FORMATS, "fmt", f"must be one of {', '.join(ALL_FORMATS)}", self.fmt)
        _check(self.augment in AUGMENTS, "augment", f"must be one of {', '.join(AUGMENTS)}",
               self.augment)
        _check(self.max_steps == -1 or self.max_steps >= 1, "max_steps", "must be >= 1 (or -1)",
               self.max_steps)
        for name in ("max_epochs", "val_every", "val_batches", "ckpt_every", "num_nodes"):
            value = getattr(self, name)
            _check(value is None or value >= 1, name, "must be >= 1", value)
        _check(0 <= self.pictures <= MAX_PICTURES, "pictures", f"must be 0..{MAX_PICTURES}",
               self.pictures)
        for name in ("max_time_s", "ckpt_every_min"):
            value = getattr(self, name)
            _check(value is None or value >= 0, name, "must be >= 0", value)
        _check(self.patience >= 0, "patience", "must be >= 0", self.patience)
        _check(0.0 <= self.teacher_noise <= 0.9, "teacher_noise", "must be in [0, 0.9]",
               self.teacher_noise)
        _check(self.seed >= 0, "seed", "must be >= 0", self.seed)
        check_recipe(self.lr, self.warmup_steps, self.grad_clip)

    def to_json(self) -> dict[str, Any]:
        out = {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}
        out["settings"] = self.settings.to_dict()
        out["curriculum"] = asdict(self.curriculum) if self.curriculum else None
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "TrainConfig":
        """From a run.json (this version's or an older one: unknown keys are ignored, missing
        ones take the defaults, `curriculum` may be the dict every version wrote)."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["out"] = Path(values["out"])
        if isinstance(values.get("settings"), Mapping):
            values["settings"] = Settings.from_dict(values["settings"])
        if values.get("resume_ckpt"):
            values["resume_ckpt"] = Path(values["resume_ckpt"])
        if isinstance(values.get("curriculum"), Mapping):
            values["curriculum"] = CurriculumConfig.from_dict(values["curriculum"])
        return cls(**values)


def _check(ok: bool, name: str, rule: str, value: Any) -> None:
    if not ok:
        raise SettingError(name, f"{name} {rule}, got {value!r}")


def check_recipe(lr: float, warmup_steps: int, grad_clip: float | None) -> None:
    """The optimisation values a LightningModule accepts (also `smt.module.TrainHParams`'s)."""
    _check(isinstance(lr, (int, float)) and math.isfinite(lr) and 0 < lr <= 1, "lr",
           "must be in (0, 1]", lr)
    _check(warmup_steps >= 0, "warmup_steps", "must be >= 0", warmup_steps)
    _check(grad_clip is None or (math.isfinite(grad_clip) and grad_clip > 0), "grad_clip",
           "must be positive", grad_clip)


# Every default in one instance (its `out` is a placeholder: planning always decides one).
DEFAULTS = TrainConfig(out=Path("runs"))


# Field -> the flag that sets it (and that an error about it names). Settings fields first,
# then the run's, then the curriculum's; tests/smt/test_train_flags.py checks each pair
# against the parser (the flag exists, is not given by default, its help names the default).
SETTINGS_FLAGS = {"num_proc": "--num-proc", "writer_batch_size": "--writer-batch-size",
                  "batch_size": "--batch-size", "reduce_ratio": "--reduce-ratio",
                  "accumulate_grad_batches": "--accumulate", "num_workers": "--num-workers",
                  "num_threads": "--num-threads", "precision": "--precision",
                  "strategy": "--strategy", "devices": "--devices"}
RUN_FLAGS = {"preset": "--preset", "fmt": "--format", "data": "--data",
             "max_steps": "--max-steps", "max_epochs": "--max-epochs", "max_time_s": "--max-time",
             "val_every": "--val-every", "val_batches": "--val-batches",
             "ckpt_every": "--ckpt-every", "ckpt_every_min": "--ckpt-every-min",
             "patience": "--patience", "lr": "--lr", "warmup_steps": "--warmup-steps",
             "grad_clip": "--grad-clip", "teacher_noise": "--teacher-noise",
             "augment": "--augment", "seed": "--seed", "num_nodes": "--num-nodes",
             "ddp_interface": "--ddp-interface", "init_from": "--init-from",
             "extend_vocab": "--extend-vocab", "pictures": "--pictures"}
CURRICULUM_FLAGS = {"stage_steps": "--stage-steps", "pretrain_steps": "--pretrain-steps",
                    "systems": "--systems", "synthetic_share": "--synthetic-share",
                    "max_systems": "--max-systems"}
# Fields on by default that a `--no-...` flag turns off.
OFF_FLAGS = {"adapt_workers": "--no-adapt-workers"}
FLAG_OF = {**SETTINGS_FLAGS, **RUN_FLAGS, **CURRICULUM_FLAGS, **OFF_FLAGS}
# argparse destinations that are not the flag's own name.
DEST_OF = {"--format": "fmt"}


def dest(flag: str) -> str:
    """The argparse attribute of `flag`."""
    return DEST_OF.get(flag, flag[2:].replace("-", "_"))


def flag_values(args: Any, flags: Mapping[str, str]) -> dict[str, Any]:
    """field -> value of the flags the user gave (argparse leaves the others None/False)."""
    given = {name: getattr(args, dest(flag), None) for name, flag in flags.items()}
    out = {k: v for k, v in given.items() if v is not None and v is not False}
    # A `--no-...` flag given sets its field False.
    out.update({name: False for name in OFF_FLAGS if out.get(name) is True})
    return out


def _overlay(layers: list[Mapping[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for layer in layers:
        out.update(layer)
    return out


def _blame(exc: SettingError, flags: Mapping[str, Any]) -> UserError:
    """A bad value as one line, naming the flag when a flag gave it."""
    flag = FLAG_OF.get(exc.field) if exc.field in flags else None
    return UserError(f"{flag}: {exc}" if flag else str(exc))


# run.json keys a resumed run does not take over: decided anew (out, resume_ckpt), per
# launch (ddp_interface), meaningless on resume (init_from), or layered on their own.
NOT_RESUMED = frozenset({"out", "resume_ckpt", "ddp_interface", "init_from", "settings",
                         "curriculum", "fmt", "cpu_demo"})
# ... and the ones it keeps whatever the flags say: the format its vocabulary is written in,
# and whether it is the CPU demo.
KEPT_ON_RESUME = ("fmt", "cpu_demo")


@dataclass(frozen=True)
class Layers:
    """What `merge` layers, lowest priority first (each mapping holds only what it sets)."""
    defaults: TrainConfig               # DEFAULTS with the machine's settings
    demo: Mapping[str, Any]             # the CPU demo's values ({} when it is off)
    resumed: Mapping[str, Any]          # the resumed run's run.json ({} for a new run)
    profile: Mapping[str, Any]          # --profile: settings, lr, profile (its name); or {}
    flags: Mapping[str, Any]            # field -> value of each flag given (flag_values)
    decided: Mapping[str, Any]          # what planning decided: out, resume_ckpt
    curriculum: bool = False            # --curriculum given


def merge(layers: Layers) -> TrainConfig:
    """The run's TrainConfig: defaults < CPU demo < resumed run.json < profile < flags, then
    what planning decided. A bad value is one line, naming its flag when a flag gave it."""
    flags, resumed = layers.flags, layers.resumed
    settings = _settings(layers)
    demo = dict(layers.demo)
    if demo:       # validation cadence in samples and rows: from the batch just decided
        demo.setdefault("val_every",
                        max(5, round(CPU_DEMO_VAL_SAMPLES / settings.effective_batch_size)))
        demo.setdefault("val_batches", max(1, math.ceil(CPU_DEMO_VAL_ROWS / settings.batch_size)))
    names = [f.name for f in fields(TrainConfig)]
    values = _overlay([
        {name: getattr(layers.defaults, name) for name in names}, demo,
        {k: v for k, v in resumed.items() if k in names and k not in NOT_RESUMED},
        {k: v for k, v in layers.profile.items() if k != "settings"},
        {k: v for k, v in flags.items() if k in RUN_FLAGS or k in OFF_FLAGS},
        {k: resumed[k] for k in KEPT_ON_RESUME if k in resumed}, layers.decided])
    values.update(settings=settings, curriculum=_curriculum(layers))
    try:
        return TrainConfig(**values)
    except SettingError as exc:
        raise _blame(exc, flags) from None


def _settings(layers: Layers) -> Settings:
    """The Settings layer by layer; the effective batch always follows batch x accumulate x
    devices (Settings.with_overrides)."""
    given = {k: v for k, v in layers.flags.items() if k in SETTINGS_FLAGS}
    base = _overlay([layers.defaults.settings.to_dict(), layers.resumed.get("settings") or {},
                     layers.profile.get("settings") or {}])
    if layers.demo and "accumulate_grad_batches" not in given:
        base["accumulate_grad_batches"] = 1     # the demo: one optimizer step per batch
    try:
        settings = Settings.from_dict(base)
    except SettingError as exc:                 # a resumed run.json's or a profile's value
        raise UserError(str(exc)) from None
    try:
        settings = settings.with_overrides(**given)
    except SettingError as exc:
        raise _blame(exc, given) from None
    if settings.devices > 1 and settings.strategy == "auto" and "strategy" not in given:
        settings = replace(settings, strategy="ddp")
    return settings


def _curriculum(layers: Layers) -> CurriculumConfig | None:
    """The curriculum of --curriculum or of the resumed run: defaults < resumed < flags."""
    previous = layers.resumed.get("curriculum") or {}
    if not (layers.curriculum or previous):
        return None
    known = {f.name for f in fields(CurriculumConfig)}
    given = {k: v for k, v in layers.flags.items() if k in CURRICULUM_FLAGS}
    try:
        return CurriculumConfig(**_overlay([{k: v for k, v in previous.items() if k in known},
                                            given]))
    except SettingError as exc:
        raise _blame(exc, given) from None
