"""The monitor's stop before the OOM killer (autotune.monitor.adapt.decide_stop, called by
ResourceMonitor), and what a killed run leaves behind: the live file whose last line says how
much RAM the run held against its limit (autotune.monitor.files.killed_note)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from autotune.monitor import AdaptConfig, Reading, ResourceMonitor, ResourceSample
from autotune.monitor.adapt import decide_stop
from autotune.monitor.files import LIVE_NAME, append_live, killed_note, last_live
from autotune.units import GIB

LIMIT = 10 * GIB


def _r(rss: int, avail: int | None = 20 * GIB) -> Reading:
    return Reading(t_s=0.0, span_s=2.0, wait_frac=0.0, rss_bytes=rss, available_bytes=avail)


AT_LIMIT = _r(int(9.7 * GIB))
NEAR = _r(int(9.2 * GIB))           # near enough for the workers to give back, not to stop

# (history, limit, stops)
STOPS = [
    ([AT_LIMIT] * 3, LIMIT, True),
    ([AT_LIMIT] * 2, LIMIT, False),                      # fewer intervals than patience
    ([AT_LIMIT, NEAR, AT_LIMIT], LIMIT, False),          # one interval below: no trend
    ([NEAR] * 3, LIMIT, False),                          # the worker loop's business
    ([_r(GIB, avail=int(0.3 * GIB))] * 3, LIMIT, True),  # the machine itself runs out
    ([AT_LIMIT] * 3, None, False),                       # no limit known
]


@pytest.mark.parametrize("history, limit, stops", STOPS)
def test_decide_stop(history, limit, stops) -> None:
    reason = decide_stop(history, limit)
    assert (reason is not None) is stops
    if stops and history[0].rss_bytes > GIB:
        assert "9.7 GiB of its 10.0 GiB RAM limit (over 95%) over 3 intervals (6 s)" in reason


@pytest.mark.parametrize("frac", [0.0, 1.0])
def test_stop_threshold_is_a_share(frac) -> None:
    with pytest.raises(ValueError, match="ram_stop_frac"):
        AdaptConfig(ram_stop_frac=frac)


@pytest.mark.timeout(120)
def test_monitor_asks_the_run_to_stop_once_when_ram_stays_at_the_limit(tmp_path) -> None:
    """A Lightning fit whose tree is over a (tiny) limit: on_ram_stop is called once with the
    figures, the stop is an event in resources.json, and the live file is gone at the end."""
    import lightning.pytorch as pl

    class Model(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Linear(2, 1)

        def training_step(self, batch, batch_idx):
            time.sleep(0.01)
            return self.w(batch).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    asked: list[str] = []
    trainer: pl.Trainer

    def stop(reason: str) -> None:
        asked.append(reason)
        trainer.should_stop = True

    monitor = ResourceMonitor(on_ram_stop=stop, adapt=AdaptConfig(patience=2), interval_s=0.1,
                              prog_bar=False, ram_limit_bytes=2**20)
    trainer = pl.Trainer(max_steps=2000, default_root_dir=tmp_path, logger=False,
                         callbacks=[monitor], enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu", devices=1)
    trainer.fit(Model(), DataLoader(torch.ones(4000, 2), batch_size=2, num_workers=0))
    assert len(asked) == 1 and "of its 1.0 MiB RAM limit (over 95%)" in asked[0]
    assert trainer.global_step < 2000                    # it stopped on the request
    saved = json.loads((tmp_path / "resources.json").read_text())
    assert [e["kind"] for e in saved["events"]] == ["stop"]
    assert not (tmp_path / LIVE_NAME).exists()


def _sample(rss: int | None, step: int = 3) -> ResourceSample:
    return ResourceSample(t_s=4.0, step=step, rss_bytes=rss, ram_available_bytes=None,
                          ram_total_bytes=int(1.5 * GIB), cpu_pct=None, shm_used_bytes=None)


def test_a_monitor_that_never_finished_leaves_its_last_sample(tmp_path) -> None:
    """The sampling thread writes the live file as it goes: a run killed outright (no finish)
    leaves the lines; the last whole one is read back (a line cut by the kill is skipped)."""
    monitor = ResourceMonitor(interval_s=0.05, prog_bar=False)
    monitor._out = tmp_path
    monitor.start()
    time.sleep(0.3)
    monitor.stop()                              # no finish: as if SIGKILLed
    lines = (tmp_path / LIVE_NAME).read_text().splitlines()
    assert len(lines) >= 2 and json.loads(lines[-1])["rss_bytes"] > 0
    with open(tmp_path / LIVE_NAME, "a") as f:
        f.write('{"pid": 1, "rss')            # cut mid-line
    assert last_live(tmp_path) == json.loads(lines[-1])


# (rss last seen, alive, expected words or None)
NOTES = [
    (int(1.45 * GIB), False, "1.4 GiB of RSS against the 1.5 GiB RAM limit: likely killed for memory"),
    (300 * 2**20, False, "300.0 MiB of RSS against the 1.5 GiB RAM limit: not near the RAM limit"),
    (int(1.45 * GIB), True, None),             # still running: nothing to say
    (None, False, "ended without a word at step 3"),
]


@pytest.mark.parametrize("rss, alive, expected", NOTES)
def test_killed_note(tmp_path: Path, rss, alive, expected) -> None:
    append_live(tmp_path, _sample(rss), None)
    note = killed_note(tmp_path, alive=lambda pid: alive)
    if expected is None:
        assert note is None
    else:
        assert note is not None and expected in note and "at step 3" in note


def test_no_live_file_no_note(tmp_path: Path) -> None:
    assert killed_note(tmp_path, alive=lambda pid: False) is None
