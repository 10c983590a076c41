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

The parts: `cli` (flags, `main`), `runconfig` (`TrainConfig`: every default of a run, saved as
run.json, and `merge`, the one layering of defaults < resumed run.json < profile < flags),
`planner` (`plan_run`: the run folder, resume, the profile, the CPU demo cap), `data` (prepared splits, vocabulary reconciliation, the data's extent),
`assembly` (model config, loaders, callbacks, loggers, the Trainer), `run` (`train`: fit, the
last validation, the run files) and `summary` (summary.json and the final line). The model,
loaders and step themselves come from `smt.builder`, shared with the probe.
"""
from __future__ import annotations

import importlib
from typing import Any

# Every name is loaded on first use: the lower layers (smt.module, smt.curriculum,
# smt.workload) import `smt.runconfig` for the defaults, and that must not pull in the
# command line, the planner (which sets the CUDA allocator's variable) or torch and Lightning.
_LAZY = {"PROG": "smt.say",
         "build_parser": "smt.train.cli", "main": "smt.train.cli", "parse_duration": "smt.train.cli",
         "default_precision": "smt.train.planner", "default_settings": "smt.train.planner",
         "describe": "smt.train.planner", "plan_run": "smt.train.planner",
         "CPU_DEMO_MAX_TIME_S": "smt.runconfig", "CPU_DEMO_PRESET": "smt.runconfig",
         "CPU_DEMO_VAL_ROWS": "smt.runconfig",
         "CPU_DEMO_VAL_BATCH": "smt.runconfig", "CPU_DEMO_VAL_SAMPLES": "smt.runconfig",
         "CurriculumConfig": "smt.runconfig", "TrainConfig": "smt.runconfig",
         "merge": "smt.runconfig",
         "train": "smt.train.run", "RunData": "smt.train.data", "load_data": "smt.train.data",
         "load_curriculum": "smt.train.data", "make_trainer": "smt.train.assembly",
         "make_callbacks": "smt.train.assembly", "make_loggers": "smt.train.assembly",
         "make_loaders": "smt.train.assembly", "model_config": "smt.train.assembly",
         "one_line": "smt.train.summary"}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'smt.train' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
