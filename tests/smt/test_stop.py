"""Ctrl-C and SIGTERM do not lose the run (issue 13 item 2), through the real `python -m
smt.train`: the step in progress ends, last.ckpt is written, the process exits 128 + signal
with one line saying how to resume, loader workers leave no traceback, and `--resume`
continues from that step. `--ckpt-every-min` saves on time as well as on steps."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from smt.train import main
from tiny_scores import FAST, tiny_dataset_dict

REPO = Path(__file__).resolve().parents[2]
FAST_WORKERS = [a if a != "0" or FAST[i - 1] != "--num-workers" else "1"
                for i, a in enumerate(FAST)]            # one loader worker: it must stay quiet


def _step(ckpt: Path) -> int:
    return int(torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"])


def _start(data: Path, out: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    argv = ["--data", str(data), *FAST_WORKERS, "--batch-size", "2", "--max-steps", "100000",
            "--out", str(out), *extra]
    return subprocess.Popen([sys.executable, "-m", "smt.train", *argv], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _wait_for_checkpoint(proc: subprocess.Popen, ckpt: Path) -> int:
    """Wait until training has written its first periodic last.ckpt; its step."""
    deadline = time.monotonic() + 450
    while not ckpt.is_file():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "training never saved"
        time.sleep(0.2)
    time.sleep(0.5)                                       # the rename is done; let it settle
    return _step(ckpt)


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_saves_last_ckpt_and_says_how_to_resume(sig: int, tmp_path: Path) -> None:
    data = tiny_dataset_dict(tmp_path / "tiny", n_train=4, n_val=1, n_test=1)
    out = tmp_path / "run"
    ckpt = out / "checkpoints" / "last.ckpt"
    proc = _start(data, out, "--ckpt-every", "5")
    try:
        seen = _wait_for_checkpoint(proc, ckpt)
        # Ctrl-C reaches the whole process group (loader workers too); SIGTERM the main process.
        if sig == signal.SIGINT:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        _, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + sig, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    last_line = err.strip().splitlines()[-1]
    assert f"--resume {out}" in last_line and signal.Signals(sig).name in last_line
    saved = _step(ckpt)
    # The step the run stopped at is the one saved: nothing done before the signal is lost.
    # (Whether a step was in progress depends on when the signal lands: between steps or
    # during an epoch-end validation none is, so the saved step may equal the periodic one.)
    assert f"stopped by {signal.Signals(sig).name} at step {saved};" in last_line
    assert saved >= seen
    # Resume carries on from exactly that step (bare --resume: the --out folder, item 9).
    resume = ["--resume", str(out)] if sig == signal.SIGINT else ["--resume", "--out", str(out)]
    assert main([*resume, "--max-steps", str(saved + 3)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == saved + 3 and summary["samples"] == 3 * 2


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ckpt_every_min_saves_on_time(tmp_path: Path) -> None:
    data = tiny_dataset_dict(tmp_path / "tiny", n_train=4, n_val=1, n_test=1)
    out = tmp_path / "run"
    # Killed outright (no chance to save at the end): only the time interval can have saved.
    proc = _start(data, out, "--ckpt-every", "1000000", "--ckpt-every-min", "0.02",
                  env={"SMT_INJECT_KILL_AT_STEP": "60"})
    _, err = proc.communicate(timeout=500)
    assert proc.returncode == -signal.SIGKILL, err[-3000:]
    assert 0 < _step(out / "checkpoints" / "last.ckpt") <= 60


def test_bare_resume_looks_in_out(tmp_path: Path) -> None:
    from autotune.errors import UserError
    with pytest.raises(UserError, match=f"no run with checkpoints/last.ckpt under {tmp_path}"):
        main(["--resume", "--out", str(tmp_path)])


@pytest.mark.parametrize("flags, lr", [([], 0.0042), (["--lr", "0.01"], 0.01)],
                         ids=["profile", "flag wins"])
def test_a_profiles_lr_is_applied_and_a_flag_wins(flags: list[str], lr: float,
                                                  tmp_path: Path) -> None:
    """Issue 13 item 11: a profile saved by search carries details.lr; smt.train uses it."""
    from smt.train.cli import build_parser
    from smt.train.planner import plan_run
    profile = json.loads((REPO / "tests" / "autotune" / "fixtures" / "profile-synthetic-cpu.json")
                         .read_text())
    profile.setdefault("details", {})["lr"] = 0.0042
    path = tmp_path / "searched.json"
    path.write_text(json.dumps(profile))
    data = tiny_dataset_dict(tmp_path / "tiny", n_train=2, n_val=1, n_test=1)
    args = build_parser().parse_args(["--profile", str(path), "--data", str(data), "--max-steps",
                                      "1", "--out", str(tmp_path / "run"), *flags])
    assert plan_run(args).lr == lr
