"""autotune.monitor.adapt: when the monitor changes the loader's workers, by how much, what
bounds it, and that each change is recorded in the monitor's files and plot."""
from __future__ import annotations

import json

import pytest
import torch
from torch.utils.data import DataLoader

from autotune.monitor import (AdaptConfig, Event, Limits, Reading, ResourceMonitor,
                              ResourceSample, WorkerAdapter, decide_workers, samples_to_csv,
                              worker_cap, write_outputs)
from autotune.units import GIB, MIB

BUDGET = 10 * GIB


def _r(wait: float | None = 0.0, rss: int = 2 * GIB, avail: int | None = 20 * GIB,
       gpu: float | None = None) -> Reading:
    return Reading(t_s=0.0, span_s=2.0, wait_frac=wait, rss_bytes=rss, available_bytes=avail,
                   gpu_util_pct=gpu)


STARVED = [_r(0.5)] * 3
HIGH_RAM = [_r(0.0, rss=int(9.5 * GIB))] * 3


# (history, workers, cap, since_change, ceiling, expected (new, kind) or None)
DECISIONS = [
    (STARVED, 0, 2, 9, None, (1, "starved")),
    (STARVED, 1, 2, 9, None, (2, "starved")),
    (STARVED, 2, 2, 9, None, None),                       # at the cap
    (STARVED, 1, 4, 9, 1, None),                          # RAM pushed it down to 1 earlier
    (STARVED[:2], 0, 2, 9, None, None),                   # fewer intervals than patience
    ([_r(0.5), _r(0.1), _r(0.5)], 0, 2, 9, None, None),   # one interval fed the step: no trend
    ([_r(0.5), _r(None), _r(0.5)], 0, 2, 9, None, None),  # an interval without a gap...
    ([_r(0.5), _r(None), _r(0.5), _r(0.5)], 0, 2, 9, None, (1, "starved")),  # ...is skipped
    (STARVED, 0, 2, 2, None, None),                       # cooling down after a change
    ([_r(0.5, gpu=95.0)] * 3, 0, 2, 9, None, None),       # a busy GPU is not starved
    ([_r(0.5, gpu=40.0)] * 3, 0, 2, 9, None, (1, "starved")),
    (HIGH_RAM, 2, 4, 9, None, (1, "ram")),
    (HIGH_RAM, 0, 4, 9, None, None),                      # nothing left to give back
    ([_r(0.5, rss=int(9.5 * GIB))] * 3, 2, 4, 9, None, (1, "ram")),   # RAM wins over starving
    ([_r(0.0, avail=int(0.5 * GIB))] * 3, 1, 4, 9, None, (0, "ram")),  # the machine runs out
    ([_r(0.0, rss=int(9.5 * GIB)), _r(0.0), _r(0.0, rss=int(9.5 * GIB))], 2, 4, 9, None, None),
]


@pytest.mark.parametrize("history, workers, cap, since, ceiling, expected", DECISIONS)
def test_decide_workers(history, workers, cap, since, ceiling, expected) -> None:
    change = decide_workers(history, workers, cap, since, BUDGET, ceiling)
    got = None if change is None else (change.new, change.kind)
    assert got == expected
    if change is not None:
        assert change.old == workers


@pytest.mark.parametrize("history, needle", [
    (STARVED, "waited for data 50% of each step over 3 intervals (6 s)"),
    (HIGH_RAM, "9.5 GiB of its 10.0 GiB RAM budget (over 90%) over 3 intervals (6 s)"),
])
def test_reason_names_the_numbers(history, needle) -> None:
    change = decide_workers(history, 1, 4, 9, BUDGET)
    assert change is not None and needle in change.reason


# (limits, workers, expected (cap, bound))
CAPS = [
    (Limits(cores=8, threads=2), 0, (6, "cores")),
    (Limits(cores=2, threads=2), 0, (1, "cores")),     # a waiting step leaves its cores idle
    (Limits(cores=8, threads=1, ranks=2), 0, (3, "cores")),
    (Limits(cores=16, threads=1, ram_budget_bytes=10 * GIB, rss_bytes=6 * GIB,
            worker_rss_bytes=GIB), 1, (3, "RAM")),     # 6 + 2 x 1 GiB = 80% of 10
    (Limits(cores=16, threads=1, ram_budget_bytes=10 * GIB, rss_bytes=9 * GIB,
            worker_rss_bytes=GIB), 1, (1, "RAM")),     # already above: no raise
    (Limits(cores=16, threads=1, ram_budget_bytes=10 * GIB, rss_bytes=4 * GIB,
            worker_rss_bytes=GIB, ranks=2), 0, (2, "RAM")),   # each worker on both ranks
    (Limits(cores=16, threads=1, shm_free_bytes=64 * MIB, shm_per_worker_bytes=16 * MIB),
     1, (3, "/dev/shm")),
    (Limits(cores=16, threads=1, ram_budget_bytes=None, rss_bytes=9 * GIB,
            worker_rss_bytes=GIB), 0, (15, "cores")),  # no budget known: cores only
]


@pytest.mark.parametrize("limits, workers, expected", CAPS)
def test_worker_cap(limits, workers, expected) -> None:
    assert worker_cap(limits, workers) == expected


@pytest.mark.parametrize("field, value", [
    ("starved_frac", 0.0), ("ram_near_frac", 1.0), ("ram_raise_frac", 0.95),
    ("patience", 0), ("cooldown", -1)])
def test_bad_config_names_the_field(field, value) -> None:
    with pytest.raises(ValueError, match=field):
        AdaptConfig(**{field: value})


def test_adapter_raises_once_per_cooldown_and_never_back_above_a_ram_ceiling() -> None:
    calls: list[tuple[int, str]] = []
    adapter = WorkerAdapter(lambda n, why: calls.append((n, why)), workers=0,
                            cfg=AdaptConfig(patience=2, cooldown=3))
    roomy = Limits(cores=16, threads=1)
    got = [adapter.observe(_r(0.6), roomy) for _ in range(7)]
    # intervals 2 and 5: the first after `patience`, the next after the cool-down
    assert [i for i, c in enumerate(got) if c] == [1, 4] and [n for n, _ in calls] == [1, 2]
    for _ in range(3):
        adapter.observe(_r(0.0, rss=int(9.5 * GIB)), Limits(cores=16, threads=1,
                                                             ram_budget_bytes=BUDGET))
    assert [n for n, _ in calls] == [1, 2, 1] and adapter.ceiling == 1
    for _ in range(10):            # starving again, RAM fine: stays at what RAM allowed
        adapter.observe(_r(0.6), Limits(cores=16, threads=1, ram_budget_bytes=BUDGET))
    assert [n for n, _ in calls] == [1, 2, 1]


def test_events_are_written_to_json_csv_and_the_plot(tmp_path) -> None:
    samples = [ResourceSample(t_s=float(t), step=t, rss_bytes=GIB, ram_available_bytes=GIB,
                              ram_total_bytes=2 * GIB, cpu_pct=50.0, shm_used_bytes=0)
               for t in range(5)]
    event = Event("workers", "loader workers 0 -> 1: waited for data 41% of each step", 2.5, 7)
    files = write_outputs(tmp_path, samples, events=[event])
    assert json.loads(files["json"].read_text())["events"] == [
        {"kind": "workers", "message": event.message, "t_s": 2.5, "step": 7}]
    rows = samples_to_csv(samples, [event]).splitlines()
    assert rows[0].endswith(",event") and rows[4].endswith(event.message)   # t_s 3.0 >= 2.5
    assert sum(event.message in r for r in rows) == 1
    assert files["png"].read_bytes()[:4] == b"\x89PNG"


class _Slow(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 400

    def __getitem__(self, i: int) -> torch.Tensor:
        import time
        time.sleep(0.01)
        return torch.ones(2)


@pytest.mark.timeout(120)
def test_monitor_asks_for_a_worker_when_the_step_starves(tmp_path) -> None:
    """A Lightning fit whose step waits for its loader: the monitor calls set_workers and
    records the change; it never asks without set_workers (the hints alone, as before)."""
    import lightning.pytorch as pl

    class Model(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Linear(2, 1)

        def training_step(self, batch, batch_idx):
            return self.w(batch).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    asked: list[tuple[int, str]] = []
    monitor = ResourceMonitor(set_workers=lambda n, why: asked.append((n, why)),
                              adapt=AdaptConfig(patience=2), interval_s=0.1, prog_bar=False)
    trainer = pl.Trainer(max_steps=60, default_root_dir=tmp_path, logger=False,
                         callbacks=[monitor], enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu", devices=1)
    trainer.fit(Model(), DataLoader(_Slow(), batch_size=4, num_workers=0))
    assert asked and asked[0][0] == 1 and "waited for data" in asked[0][1]
    assert monitor.events[0].message.startswith("loader workers 0 -> 1: waited for data")
    saved = json.loads((tmp_path / "resources.json").read_text())
    assert saved["events"][0]["message"] == monitor.events[0].message
    assert saved["summary"]["events"][0] == monitor.events[0].message

