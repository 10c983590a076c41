"""A real `smt.train` run acts on what its resource monitor sees: a starving loader gets a
worker, a RAM-hungry one loses them; each change is one logged line and a recorded event.

The monitor samples every 0.5 s here (2 s in real runs) so that the runs stay short."""
from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest

import autotune.monitor
from smt.faults import ENV_LOADER_FAULT, ENV_RAM_BUDGET_MB
from smt.train import build_parser, main, plan_run
from tiny_scores import FAST, tiny_dataset_dict


def _run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int, env: dict[str, str],
         *extra: str) -> Path:
    monkeypatch.setattr(autotune.monitor, "ResourceMonitor",
                        functools.partial(autotune.monitor.ResourceMonitor, interval_s=0.5))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    data = tiny_dataset_dict(tmp_path / "tiny", n_train=8, n_val=2, n_test=1)
    argv = ["--data", str(data), *FAST, "--batch-size", "2", "--max-steps", "1000",
            "--max-time", "8", "--val-every", "1000", "--val-batches", "1",
            "--out", str(tmp_path / "run"), *extra]
    argv[argv.index("--num-workers") + 1] = str(workers)
    assert main(argv) == 0
    return tmp_path / "run"


def _events(run: Path) -> list[str]:
    return [e["message"] for e in json.loads((run / "resources.json").read_text())["events"]]


# (workers at start, faults, the first change's line)
CASES = [
    pytest.param(0, {ENV_LOADER_FAULT: "sleep_ms=400"},
                 "loader workers 0 -> 1: waited for data", id="starving-loader-raises"),
    pytest.param(2, {ENV_LOADER_FAULT: "ram_mb=32", ENV_RAM_BUDGET_MB: "64"},
                 "loader workers 2 -> 1: the run used up to", id="ram-hungry-loader-lowers"),
]


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("workers, faults, line", CASES)
def test_run_changes_its_workers_and_says_why(tmp_path, monkeypatch, capsys, workers, faults,
                                              line) -> None:
    run = _run(tmp_path, monkeypatch, workers, faults)
    # the progress bar ends its lines with a carriage return only: our line may follow one
    printed = [ln[ln.index("[smt.train] loader workers"):]
               for ln in capsys.readouterr().out.splitlines() if "[smt.train] loader workers" in ln]
    assert printed and printed[0].startswith(f"[smt.train] {line}")
    events = _events(run)
    assert events and events[0].startswith(line)
    # what was printed is what was recorded, with the numbers (a share or a size, a span)
    assert printed[0].removeprefix("[smt.train] ") == events[0]
    assert "intervals (" in events[0]
    assert json.loads((run / "run.json").read_text())["adapt_workers"] is True


@pytest.mark.parametrize("argv, expected", [([], True), (["--no-adapt-workers"], False)])
def test_adapting_is_on_by_default_and_recorded(argv: list[str], expected: bool) -> None:
    plan = plan_run(build_parser().parse_args([*argv, "--max-steps", "1", "--out", "unused"]))
    assert plan.adapt_workers is expected and plan.to_json()["adapt_workers"] is expected
