"""`python -m smt.train`: the run folder it leaves, its flags, and DDP on CPU."""
from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from autotune.errors import UserError, run_cli
from smt.train import build_parser, main, parse_duration
from tiny_scores import FAST, tiny_dataset_dict, trained_run

REPO = Path(__file__).resolve().parents[2]
SUMMARY_KEYS = {"steps", "samples", "samples_per_s", "peak_memory_bytes", "best_val_ser", "val_ser",
                "val_loss", "train_loss", "checkpoint_last", "checkpoint_best", "settings",
                "elapsed_s"}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_run_folder_has_checkpoints_metadata_and_summary() -> None:
    run = trained_run()
    summary = json.loads((run / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(summary)
    assert summary["steps"] == 150 and summary["samples"] == 300
    assert summary["samples_per_s"] > 0 and summary["peak_memory_bytes"] > 0
    assert 0 <= summary["best_val_ser"] <= summary["val_ser"] + 1e-6
    for key in ("checkpoint_last", "checkpoint_best"):
        ckpt = torch.load(summary[key], map_location="cpu", weights_only=True)
        assert ckpt["global_step"] > 0
    assert torch.load(summary["checkpoint_last"], weights_only=True)["global_step"] == 150
    config = json.loads((run / "config.json").read_text())
    vocab = json.loads((run / "vocab.json").read_text())
    assert config["vocab_size"] == len(vocab["tokens"])
    record = json.loads((run / "run.json").read_text())
    assert record["settings"]["batch_size"] == 2 and record["preset"] == "debug"
    # The loss visibly falls over the run (CSV log, one row per logged step).
    with open(run / "logs" / "csv" / "metrics.csv") as fh:
        losses = [float(r["train_loss"]) for r in csv.DictReader(fh) if r.get("train_loss")]
    assert len(losses) >= 5 and losses[-1] < 0.3 * losses[0]


@pytest.mark.parametrize("argv, flag", [
    (["--batch-size", "0"], "--batch-size"),
    (["--batch-size", "-3"], "--batch-size"),
    (["--accumulate", "two"], "--accumulate"),
    (["--devices", "100000"], "--devices"),
    (["--reduce-ratio", "1.5"], "--reduce-ratio"),
    (["--reduce-ratio", "nan"], "--reduce-ratio"),
    (["--lr", "0"], "--lr"),
    (["--lr", "-1e-4"], "--lr"),
    (["--max-steps", "0"], "--max-steps"),
    (["--max-time", "0"], "--max-time"),
    (["--max-time", "10 years"], "--max-time"),
    (["--num-workers", "-1"], "--num-workers"),
    (["--grad-clip", "0"], "--grad-clip"),
    (["--writer-batch-size", "0"], "--writer-batch-size"),
    (["--precision", "8-bit"], "--precision"),
])
def test_bad_flag_is_one_line_naming_it(argv: list[str], flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = run_cli(main, argv, prog="smt.train")
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("smt.train: error:") and flag in err


@pytest.mark.parametrize("text, seconds", [("90", 90), ("45m", 2700), ("2h", 7200),
                                           ("00:01:30:00", 5400), ("1:00:00", 3600)])
def test_max_time_formats(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_flags_win_over_defaults() -> None:
    from smt.train import plan_run
    args = build_parser().parse_args(["--batch-size", "3", "--accumulate", "5", "--max-steps", "7",
                                      "--precision", "32-true", "--out", "unused-dir"])
    plan = plan_run(args)
    s = plan.settings
    assert (s.batch_size, s.accumulate_grad_batches, s.precision) == (3, 5, "32-true")
    assert s.effective_batch_size == 15 * s.devices
    assert plan.max_steps == 7 and not plan.cpu_demo


def test_num_threads_from_the_profile_or_flag_is_applied_before_training(monkeypatch) -> None:
    """`--num-threads` (or a profile's `num_threads`) sets torch's intra-op threads before any
    data or model work; without it torch keeps its own count."""
    import smt.train.run as run
    from smt.train import plan_run, train

    applied = []

    class Stop(Exception):
        pass

    def record(num_threads=None):
        applied.append(num_threads)
        raise Stop

    monkeypatch.setattr(run, "configure_torch", record)
    for argv, expected in ((["--num-threads", "1"], 1), ([], None)):
        plan = plan_run(build_parser().parse_args([*argv, "--max-steps", "1", "--out", "unused-dir"]))
        assert plan.settings.num_threads == expected
        with pytest.raises(Stop):
            train(plan)
    assert applied == [1, None]
    before = torch.get_num_threads()
    try:
        from smt.builder import configure_torch
        configure_torch(1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


# How the README and docs/*.md state the CPU demo's cap: "a 12-minute training cap",
# "stopped after 12 minutes".
_CAP_PHRASES = (r"(\d+)[- ]minutes? (?:training |CPU )?(?:cap|demo)\b",
                r"(?:stopped|stops|capped) (?:after|at) (\d+) minutes")


def _documented_cap_minutes() -> set[int]:
    texts = [p.read_text() for p in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
             if p.is_file()]
    return {int(m) for text in texts for phrase in _CAP_PHRASES
            for m in re.findall(phrase, text, flags=re.IGNORECASE)}


def test_cpu_demo_cap_applies_only_without_limits() -> None:
    from smt.train import plan_run
    if torch.cuda.is_available():
        pytest.skip("the cap is for machines without an accelerator")
    demo = plan_run(build_parser().parse_args(["--out", "unused-dir"]))
    # The cap the run applies is the one the docs promise (not the code's own constant).
    promised = _documented_cap_minutes()
    assert promised, "README.md / docs/*.md no longer state the CPU demo's cap in minutes"
    assert promised == {demo.max_time_s / 60}, promised
    assert demo.cpu_demo and demo.preset == "small"
    lifted = plan_run(build_parser().parse_args(["--out", "unused-dir", "--max-time", "3h"]))
    assert not lifted.cpu_demo and lifted.max_time_s == 3 * 3600 and lifted.preset == "paper"


def test_cpu_demo_validates_often_on_a_bounded_sample_and_steps_every_batch() -> None:
    from smt.train import CPU_DEMO_VAL_ROWS, CPU_DEMO_VAL_SAMPLES, plan_run
    if torch.cuda.is_available():
        pytest.skip("the cap is for machines without an accelerator")
    demo = plan_run(build_parser().parse_args(["--out", "unused-dir", "--batch-size", "2",
                                               "--accumulate", "8"]))
    assert demo.settings.accumulate_grad_batches == 8        # a flag still wins
    demo = plan_run(build_parser().parse_args(["--out", "unused-dir", "--batch-size", "2"]))
    s = demo.settings
    assert s.accumulate_grad_batches == 1 and s.effective_batch_size == 2 and demo.lr == 1e-3
    assert demo.val_every * s.effective_batch_size <= CPU_DEMO_VAL_SAMPLES
    assert demo.val_batches * s.batch_size <= CPU_DEMO_VAL_ROWS
    # At the 1.1 samples/s the demo must reach, the cap holds at least 3 validations.
    assert demo.max_time_s * 1.1 / (demo.val_every * s.effective_batch_size) >= 3


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_out_with_a_run_in_it_is_refused() -> None:
    run = trained_run()
    with pytest.raises(UserError, match="already holds a run"):
        main(["--out", str(run), "--max-steps", "1"])


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ddp_on_cpu_with_accumulation_and_an_oom_on_one_rank(tmp_path: Path) -> None:
    """Two gloo ranks, bf16-mixed, accumulate 2; rank 1 alone runs out of memory above one
    sample per micro-batch, and both ranks must halve together or the run would hang."""
    data = tiny_dataset_dict(tmp_path / "tiny", n_train=8, n_val=2, n_test=1)
    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": str(REPO),
           "SMT_INJECT_OOM_ABOVE": "1", "SMT_INJECT_OOM_RANKS": "1"}
    argv = ["--data", str(data), *FAST, "--devices", "2", "--strategy", "ddp",
            "--precision", "bf16-mixed", "--accumulate", "2", "--batch-size", "2",
            "--max-steps", "3", "--out", str(out)]
    proc = subprocess.run([sys.executable, "-m", "smt.train", *argv], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 3
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["devices"] == 2 and summary["settings"]["accumulate_grad_batches"] == 2
    assert summary["micro_batch_size"] == 1
    assert [e["micro_batch_to"] for e in summary["oom_events"]] == [1]
    assert ckpt["smt"]["micro_batch_size"] == 1


# What Lightning printed on a first run that a user can do nothing about (smt/train/quiet.py).
LIGHTNING_NOISE = ("litlogger", "💡", "is not supported by the model summary", "LeafSpec",
                   "FLOPs", "Flops")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_first_run_prints_ours_and_not_lightnings_tips_and_warnings(tmp_path: Path) -> None:
    """`python -m smt.train` as a user runs it (bf16-mixed, the CPU's default): our lines and
    Lightning's model summary, none of Lightning's tips and warnings listed above."""
    data = tiny_dataset_dict(tmp_path / "tiny", n_train=2, n_val=1, n_test=1)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    argv = ["--data", str(data), "--preset", "debug", "--num-workers", "0", "--batch-size", "1",
            "--max-steps", "2", "--val-batches", "1", "--out", str(tmp_path / "run")]
    proc = subprocess.run([sys.executable, "-m", "smt.train", *argv], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=500)
    printed = proc.stdout + proc.stderr
    assert proc.returncode == 0, printed[-3000:]
    assert "bf16-mixed" in printed and "[smt.train] done: 2 steps" in printed
    assert "Trainable params" in printed                 # the summary itself stays
    # The run's last line says where the pictures of what the model reads are (make demo's too).
    last = proc.stdout.strip().splitlines()[-1]
    assert "pictures" in last and str(tmp_path / "run" / "pictures") in last, last
    assert (tmp_path / "run" / "pictures" / "val0.png").is_file()
    assert [noise for noise in LIGHTNING_NOISE if noise in printed] == [], printed[-3000:]
