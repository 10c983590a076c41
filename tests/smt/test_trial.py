"""How a search trial runs SMT (smt/trial.py, behind Workload.trial_launch/trial_report)."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from autotune.settings import Settings
from autotune.workload import TrialRequest, load_workload
from smt import trial


def _request(tmp_path: Path, **kw) -> TrialRequest:
    settings = Settings(batch_size=4, accumulate_grad_batches=2, reduce_ratio=0.5,
                        num_workers=1, effective_batch_size=8)
    return TrialRequest(settings=settings, max_steps=12, out_dir=tmp_path / "t", **kw)


def test_launch_is_smt_train_with_the_settings_as_flags(tmp_path: Path) -> None:
    launch = load_workload("smt").trial_launch(
        _request(tmp_path, seed=3, lr=3e-4, preset="debug", data="/d", val_batches=1))
    assert launch.command == (sys.executable, "-m", "smt.train")
    args = launch.args
    flag = dict(zip(args[::2], args[1::2]))
    assert flag["--batch-size"] == "4" and flag["--accumulate"] == "2"
    assert flag["--reduce-ratio"] == "0.5" and flag["--max-steps"] == "12"
    assert flag["--out"] == str(tmp_path / "t") and flag["--seed"] == "3"
    assert flag["--preset"] == "debug" and flag["--data"] == "/d" and flag["--lr"] == "0.0003"
    assert flag["--patience"] == "0" and flag["--val-batches"] == "1"
    assert flag["--pictures"] == "0"          # a trial ends without drawing pictures
    assert "--val-every" not in flag and "--devices" not in flag
    assert launch.start_marker == "run.json"                    # smt.checkpoint.RUN_NAME
    assert launch.with_command(("fake",)).argv == ["fake", *args]


def test_quality_trials_validate_during_the_run(tmp_path: Path) -> None:
    args = trial.launch(_request(tmp_path, val_every_steps=3)).args
    assert args[args.index("--val-every") + 1] == "3" and "--val-batches" not in args


def test_report_reads_the_summary_and_counts_oom_backoffs(tmp_path: Path) -> None:
    assert trial.read_report(tmp_path) is None                  # no summary.json: no report
    (tmp_path / "summary.json").write_text(json.dumps({
        "samples_per_s": 12.5, "steady_samples_per_s": 14.0, "val_loss": 2.0, "val_ser": None,
        "train_loss": math.inf, "peak_memory_bytes": 2**30, "micro_batch_size": 2,
        "oom_events": [{"step": 1}, {"step": 4}], "interrupted": False}))
    report = trial.read_report(tmp_path)
    assert report is not None
    assert (report.samples_per_s, report.steady_samples_per_s, report.val_loss) == (12.5, 14.0, 2.0)
    assert report.val_ser is None and report.train_loss is None  # missing or not finite
    assert (report.peak_memory_bytes, report.oom_events, report.micro_batch_size) == (2**30, 2, 2)
    assert report.interrupted is False and report.metric("val_loss") == 2.0


def test_the_announced_warmup_is_what_the_steady_rate_leaves_out(monkeypatch) -> None:
    """The search sizes throughput trials by `trial_warmup_batches()`; the trainer's steady
    samples/s must leave out exactly that many batches. Fed batches of distinct durations on
    a fake clock, only the right cut gives the rate the callback reports."""
    import types

    import torch

    from smt import callbacks
    announced = load_workload("smt").trial_warmup_batches()
    durations = [1.0 + 0.5 * i for i in range(announced + 6)]   # distinct: any other cut differs
    clock = [100.0]
    monkeypatch.setattr(callbacks.time, "perf_counter", lambda: clock[0])
    meter = callbacks.Throughput()
    trainer = types.SimpleNamespace(world_size=1)
    meter.on_train_start(trainer, None)
    batch = {"images": torch.zeros(2, 1, 4, 4)}
    for i, seconds in enumerate(durations):
        clock[0] += seconds
        meter.on_train_batch_end(trainer, None, None, batch, i)
    steady = durations[announced:]                 # the batches after the warm-up, whole
    assert meter.steady_samples_per_s == pytest.approx(2 * len(steady) / sum(steady))
