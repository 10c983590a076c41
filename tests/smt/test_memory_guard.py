"""A run that will not fit in RAM says so before it starts, one that outgrows it stops with its
work saved, and a run the OOM killer ended is reported as such (smt.train.preflight,
smt.train.stop, autotune.monitor's stop and live file).

The machine's RAM is faked where a test needs a small one (`autotune.hardware.inventory`, the
monitor's limit through SMT_INJECT_RAM_LIMIT_MB); the tests at the end run the real CLI inside
a memory cgroup of 1.5 GiB, the new user's container, where the machine allows one."""
from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

import autotune.hardware
import autotune.monitor
import cgroup
import requires
import smt.train.preflight
from autotune.errors import UserError
from autotune.monitor.files import LIVE_NAME
from autotune.units import GIB
from smt.faults import ENV_KILL_AT_STEP, ENV_LOADER_FAULT, ENV_RAM_LIMIT_MB
from smt.train import build_parser, main, plan_run
from smt.train.stop import MEMORY_EXIT_CODE, MemoryStopped
from tiny_scores import FAST, tiny_dataset_dict

REPO = Path(__file__).resolve().parents[2]
# The issue's command: the small model at batch 32 on a CPU.
TOO_BIG = ["--preset", "small", "--batch-size", "32", "--accumulate", "1", "--max-steps", "20",
           "--num-workers", "0"]
# The tiny test set's images are small: the small model needs a larger batch to outgrow 1.5 GiB.
TOO_BIG_TINY = [*TOO_BIG[:2], "--batch-size", "128", *TOO_BIG[4:]]
FITS_LINE = re.compile(r"--batch-size (\d+) --accumulate (\d+) fits \(effective batch (\d+)\)")


def _container(monkeypatch: pytest.MonkeyPatch, limit: int) -> None:
    """This machine as a container of `limit` bytes, nearly all of it available, holding a
    process of the size a fresh `smt.train` has at planning (the test process itself grows
    with the suite: late in a full run it alone would fill the container)."""
    real = autotune.hardware.inventory
    monkeypatch.setattr(smt.train.preflight, "own_rss_bytes", lambda: 400 * 2**20)

    def small(*args, **kwargs):
        hw = real(*args, **kwargs)
        return replace(hw, ram_bytes=limit, ram_available_bytes=limit - 100 * 2**20, gpus=[])
    monkeypatch.setattr(autotune.hardware, "inventory", small)


def _plan(argv: list[str]):
    return plan_run(build_parser().parse_args(argv))


def test_a_run_over_the_ram_budget_stops_before_any_data_work(tmp_path, monkeypatch) -> None:
    _container(monkeypatch, int(1.5 * GIB))
    data = tiny_dataset_dict(tmp_path / "tiny", n_train=8, n_val=2, n_test=1)
    out = tmp_path / "run"
    with pytest.raises(UserError) as err:
        _plan(["--data", str(data), *TOO_BIG_TINY, "--out", str(out)])
    message = str(err.value)
    assert "\n" not in message and err.value.exit_code == 2
    assert re.search(r"predicted to peak at [\d.]+ GiB of RAM", message)
    assert "limit 1.5 GiB" in message and "--force" in message
    batch, accumulate, effective = map(int, FITS_LINE.search(message).groups())
    assert 1 <= batch < 128 and effective == batch * accumulate >= 128
    assert not out.exists()                      # nothing written, nothing prepared


def test_force_starts_anyway_with_a_warning(tmp_path, monkeypatch, capsys) -> None:
    _container(monkeypatch, int(1.5 * GIB))
    data = tiny_dataset_dict(tmp_path / "tiny", n_train=8, n_val=2, n_test=1)
    plan = _plan(["--data", str(data), *TOO_BIG_TINY, "--out", str(tmp_path / "run"),
                  "--force"])
    assert plan.settings.batch_size == 128
    warning = [ln for ln in capsys.readouterr().out.splitlines() if "warning:" in ln]
    assert len(warning) == 1 and "starting anyway (--force)" in warning[0]


def test_the_embedded_data_not_built_yet_is_not_built_by_the_check(tmp_path, capsys) -> None:
    from smt.data.default import VERSION
    from smt.paths import default_dataset_dir
    _plan([*TOO_BIG, "--out", str(tmp_path / "run")])
    assert "memory check skipped: the embedded dataset is not built yet" in capsys.readouterr().out
    assert not default_dataset_dir(VERSION).exists()


def test_a_run_that_fits_says_nothing(tmp_path, monkeypatch, capsys) -> None:
    _container(monkeypatch, 64 * GIB)
    data = tiny_dataset_dict(tmp_path / "tiny", n_train=8, n_val=2, n_test=1)
    _plan(["--data", str(data), *TOO_BIG_TINY, "--out", str(tmp_path / "run")])
    assert "memory" not in capsys.readouterr().out


def _killed_folder(out: Path, rss: int, pid: int = 2**22 + 17) -> None:
    """A run folder as the OOM killer leaves it: run.json, no summary, the live file."""
    out.mkdir(parents=True)
    (out / "run.json").write_text("{}")
    record = {"pid": pid, "t_s": 6.0, "step": 0, "rss_bytes": rss,
              "ram_available_bytes": None, "ram_limit_bytes": int(1.5 * GIB)}
    (out / LIVE_NAME).write_text(json.dumps(record) + "\n")


@pytest.mark.parametrize("rss, verdict", [(int(1.45 * GIB), "likely killed for memory"),
                                          (300 * 2**20, "not near the RAM limit")])
def test_training_into_a_killed_runs_folder_says_how_it_ended(tmp_path, capsys, rss,
                                                                verdict) -> None:
    data = tiny_dataset_dict(tmp_path / "tiny", n_train=8, n_val=2, n_test=1)
    out = tmp_path / "run"
    _killed_folder(out, rss)
    # The folder holds that run (its run.json): refused, after saying how the run ended.
    with pytest.raises(UserError, match="already holds a run"):
        _plan(["--data", str(data), "--max-steps", "1", "--out", str(out)])
    said = [ln for ln in capsys.readouterr().out.splitlines() if "wrote no summary" in ln]
    assert len(said) == 1 and verdict in said[0] and "1.5 GiB RAM limit" in said[0]


def _fast_monitor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(autotune.monitor, "ResourceMonitor",
                        functools.partial(autotune.monitor.ResourceMonitor, interval_s=0.5))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ram_at_its_limit_saves_last_ckpt_and_stops_in_one_line(tmp_path, monkeypatch) -> None:
    _fast_monitor(monkeypatch)
    monkeypatch.setenv(ENV_RAM_LIMIT_MB, "64")           # the tree is far above it at once
    data = tiny_dataset_dict(tmp_path / "tiny", n_train=8, n_val=2, n_test=1)
    out = tmp_path / "run"
    with pytest.raises(MemoryStopped) as err:
        main(["--data", str(data), *FAST, "--batch-size", "2", "--max-steps", "100000",
              "--val-every", "100000", "--out", str(out)])
    message = str(err.value)
    assert err.value.exit_code == MEMORY_EXIT_CODE and "\n" not in message
    assert "before the OOM killer" in message and "of its 64.0 MiB RAM limit" in message
    assert f"--resume {out}" in message and "--batch-size" in message
    step = int(re.search(r"stopped at step (\d+)", message).group(1))
    import torch
    saved = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == step >= 1                    # no step lost
    events = json.loads((out / "resources.json").read_text())["events"]
    assert [e["kind"] for e in events] == ["stop"]
    assert not (out / LIVE_NAME).exists() and not (out / "summary.json").exists()


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_resume_after_a_kill_says_it_was_likely_memory(tmp_path, capsys) -> None:
    """SIGKILL mid-run (as the OOM killer does) with RAM over the monitor's limit: --resume
    names it; a run that was still going would not be."""
    data = tiny_dataset_dict(tmp_path / "tiny", n_train=8, n_val=2, n_test=1)
    out = tmp_path / "run"
    # Killed at step 2: the monitor has read at most 2 intervals (one per optimizer step),
    # fewer than its stop needs, so the kill, not the stop, ends the run.
    env = {**os.environ, "PYTHONPATH": str(REPO), ENV_KILL_AT_STEP: "2",
           ENV_RAM_LIMIT_MB: "256"}
    proc = subprocess.run([sys.executable, "-m", "smt.train", "--data", str(data), *FAST,
                           "--batch-size", "2", "--max-steps", "100000", "--ckpt-every", "1",
                           "--out", str(out)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-3000:]
    assert (out / LIVE_NAME).exists() and not (out / "summary.json").exists()
    _plan(["--resume", str(out), "--data", str(data), "--max-steps", "20"])
    said = [ln for ln in capsys.readouterr().out.splitlines() if "wrote no summary" in ln]
    assert len(said) == 1 and "256.0 MiB RAM limit: likely killed for memory" in said[0]


# -- inside a real 1.5 GiB container ------------------------------------------------------------

def _in_container(argv: list[str], limit: int, env: dict[str, str] | None = None,
                  timeout: float = 500) -> tuple[subprocess.CompletedProcess, int]:
    reason = cgroup.unavailable()
    if reason:
        requires.skip_or_fail(reason, requires.CGROUPS)
    with cgroup.memory_cgroup(limit) as group:
        proc = subprocess.run(cgroup.inside(group, [sys.executable, "-m", "smt.train", *argv]),
                              cwd=REPO, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})
        return proc, cgroup.oom_kills(group)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_in_a_small_container_the_issue_command_stops_in_one_line(tmp_path) -> None:
    from smt.data.default import ensure_default_dataset
    ensure_default_dataset(quiet=True)      # built once before (the check needs its images)
    out = tmp_path / "run"
    proc, kills = _in_container([*TOO_BIG, "--out", str(out)], int(1.5 * GIB))
    assert proc.returncode == 2 and kills == 0, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "limit 1.5 GiB" in lines[0] and FITS_LINE.search(lines[0])
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_in_a_small_container_a_run_that_grows_stops_before_the_killer(tmp_path) -> None:
    """A loader that fills the container to 96% once training runs (a batch that fit at first
    and grew): the run saves and stops in one line instead of being killed."""
    data = tiny_dataset_dict(tmp_path / "tiny", n_train=8, n_val=2, n_test=1)
    out = tmp_path / "run"
    proc, kills = _in_container(
        ["--data", str(data), *FAST, "--batch-size", "2", "--max-steps", "100000",
         "--val-every", "100000", "--out", str(out)], int(1.5 * GIB),
        env={ENV_LOADER_FAULT: "fill_pct=96"})
    assert proc.returncode == MEMORY_EXIT_CODE and kills == 0, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert "before the OOM killer" in last and "1.5 GiB RAM limit" in last
    assert (out / "checkpoints" / "last.ckpt").is_file()
