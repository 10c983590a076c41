"""The SMT data layer: synthetic scores, sources, preparation (map + cache) and torch loading.

Names are imported on first use: `python -m smt.data synth` should not pay for torch, and
the training side should not pay for verovio.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    # preparation
    "PrepareConfig": "smt.data.prepconfig", "PrepareResult": "smt.data.prepconfig",
    "WatchdogAction": "smt.data.prepconfig", "prepare": "smt.data.prepare",
    "load_prepared": "smt.data.layout", "map_function": "smt.data.rows",
    "map_spec": "smt.data.rows", "prepare_example": "smt.data.rows",
    "output_features": "smt.data.rows", "decode_gray": "smt.data.rows",
    # sources
    "load_source": "smt.data.sources", "open_source": "smt.data.sources",
    "Source": "smt.data.sources", "ensure_default_dataset": "smt.data.default",
    # torch side
    "ScoreDataset": "smt.data.loader", "collate": "smt.data.loader",
    "Augment": "smt.data.augment", "AugmentConfig": "smt.data.augment",
    # synthetic scores
    "generate": "smt.data.kern_gen", "render": "smt.data.render", "build_synth": "smt.data.synth",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'smt.data' has no attribute {name!r}")
    attr = "build" if name == "build_synth" else name
    return getattr(importlib.import_module(module), attr)
