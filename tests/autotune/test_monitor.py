"""The resource monitor: fake GPUs, a real CPU run, the starved-loader hint, the rules."""
from __future__ import annotations

import csv
import json
import threading
import time
import warnings
from types import SimpleNamespace

import lightning.pytorch as pl
import pynvml
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, Dataset

from autotune import monitor as mon
from autotune.monitor import (GpuReader, ResourceHint, ResourceMonitor, nvml_indices_for,
                              ram_hint, shm_hint, starved_hint, vram_headroom_hint)

GIB = 1024 ** 3
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def fake_nvml(monkeypatch: pytest.MonkeyPatch) -> dict:
    """Two 16 GiB GPUs: GPU 0 at 40% busy with 1 GiB used, GPU 1 at 10% with 2 GiB."""
    gpus = {0: (40, 1 * GIB), 1: (10, 2 * GIB)}
    state = {"init": 0, "shutdown": 0}

    def init() -> None:
        state["init"] += 1

    def shutdown() -> None:
        state["shutdown"] += 1

    monkeypatch.setattr(pynvml, "nvmlInit", init)
    monkeypatch.setattr(pynvml, "nvmlShutdown", shutdown)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetCount", lambda: len(gpus))
    monkeypatch.setattr(pynvml, "nvmlDeviceGetHandleByIndex", lambda i: ("handle", i))
    monkeypatch.setattr(pynvml, "nvmlDeviceGetUtilizationRates",
                        lambda h: SimpleNamespace(gpu=gpus[h[1]][0], memory=0))
    monkeypatch.setattr(pynvml, "nvmlDeviceGetMemoryInfo",
                        lambda h: SimpleNamespace(used=gpus[h[1]][1], total=16 * GIB,
                                                  free=16 * GIB - gpus[h[1]][1]))
    return state


# --- a tiny Lightning workload whose data and step speeds we control ----------------------


class _Data(Dataset):
    def __init__(self, n: int, delay_s: float) -> None:
        self.n, self.delay_s = n, delay_s

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.delay_s:
            time.sleep(self.delay_s)  # a loader that is slow on purpose (decode, augment, disk)
        g = torch.Generator().manual_seed(i)
        return torch.randn(8, generator=g), torch.randn(1, generator=g)


class _Model(pl.LightningModule):
    def __init__(self, step_delay_s: float = 0.0, fail_at: int | None = None) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(8, 1)
        self.step_delay_s, self.fail_at = step_delay_s, fail_at

    def training_step(self, batch, batch_idx):
        if self.fail_at is not None and self.global_step >= self.fail_at:
            raise RuntimeError("boom")
        if self.step_delay_s:
            time.sleep(self.step_delay_s)  # stands in for a heavy forward/backward
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _fit(tmp_path, monitor: ResourceMonitor, steps: int = 30, data_delay_s: float = 0.0,
         step_delay_s: float = 0.0, fail_at: int | None = None) -> pl.Trainer:
    trainer = pl.Trainer(
        max_steps=steps, default_root_dir=tmp_path, logger=CSVLogger(tmp_path, name="logs"),
        callbacks=[monitor], enable_checkpointing=False, enable_model_summary=False,
        enable_progress_bar=False, log_every_n_steps=1, accelerator="cpu", devices=1)
    loader = DataLoader(_Data(4 * steps, data_delay_s), batch_size=4, num_workers=0)
    trainer.fit(_Model(step_delay_s, fail_at), loader)
    return trainer


def _logged_columns(tmp_path) -> set[str]:
    (metrics,) = tmp_path.glob("logs/version_*/metrics.csv")
    with open(metrics) as fh:
        return set(csv.DictReader(fh).fieldnames or [])


# --- GPUs through NVML --------------------------------------------------------------------


def test_fake_nvml_two_gpus_are_read(fake_nvml: dict) -> None:
    reader = GpuReader()
    assert reader.available
    got = {g.index: (g.util_pct, g.mem_used_bytes, g.mem_total_bytes) for g in reader.read()}
    assert got == {0: (40.0, 1 * GIB, 16 * GIB), 1: (10.0, 2 * GIB, 16 * GIB)}
    assert [g.index for g in GpuReader([1, 7]).read()] == [1]  # an index NVML lacks is dropped
    reader.close()
    assert fake_nvml["shutdown"] == 1


def test_missing_nvml_library_means_no_gpu_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_library() -> None:
        raise pynvml.NVMLError_LibraryNotFound()

    monkeypatch.setattr(pynvml, "nvmlInit", no_library)
    reader = GpuReader()
    assert not reader.available and reader.read() == []
    assert "NVML unavailable" in (reader.reason or "")
    sample = mon.sample_resources(0.0, 0, reader)
    assert sample.gpus == [] and sample.rss_bytes and sample.rss_bytes > 0


@pytest.mark.timeout(60)
def test_cpu_run_with_fake_gpus_logs_fields_and_writes_plot(tmp_path, fake_nvml) -> None:
    monitor = ResourceMonitor(interval_s=0.05, gpu_indices=[0, 1], vram_after_s=0.0)
    with pytest.warns(ResourceHint, match="VRAM headroom unused"):
        trainer = _fit(tmp_path, monitor, steps=30, step_delay_s=0.01)

    columns = _logged_columns(tmp_path)
    for field in ("rss_bytes", "ram_available_bytes", "data_wait_frac", "cpu_pct",
                  "gpu0_util_pct", "gpu0_mem_used_bytes", "gpu1_util_pct",
                  "gpu1_mem_total_bytes"):
        assert f"resources/{field}" in columns
    assert {"gpu%", "vram%", "ram_gb"} <= set(trainer.progress_bar_metrics)
    assert trainer.progress_bar_metrics["gpu%"] == pytest.approx(25)  # mean of 40 and 10

    assert (tmp_path / "resources.png").read_bytes().startswith(PNG_MAGIC)
    data = json.loads((tmp_path / "resources.json").read_text())
    assert len(data["samples"]) >= 2
    assert {g["index"] for g in data["samples"][-1]["gpus"]} == {0, 1}
    assert data["summary"]["peak_gpu_mem_used_bytes"] == {"0": 1 * GIB, "1": 2 * GIB}
    assert [h["kind"] for h in data["hints"]] == ["vram_headroom"]
    with open(tmp_path / "resources.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(data["samples"]) and float(rows[-1]["gpu1_util_pct"]) == 10.0
    assert not any(t.name == "resource-monitor" for t in threading.enumerate())


@pytest.mark.timeout(60)
def test_real_cpu_run_without_gpus(tmp_path) -> None:
    """The real machine: no NVML GPUs are watched on a CPU trainer, host fields are real."""
    monitor = ResourceMonitor(interval_s=0.05)
    _fit(tmp_path, monitor, steps=20, step_delay_s=0.005)
    columns = _logged_columns(tmp_path)
    assert "resources/rss_bytes" in columns and "resources/data_wait_frac" in columns
    assert not any("gpu" in c for c in columns)
    samples = mon.load_samples(tmp_path / "resources.json")
    assert all(s.rss_bytes and s.rss_bytes > 10 * 2**20 for s in samples)
    assert samples[-1].step == 20  # the last sample is taken when training ends
    assert (tmp_path / "resources.png").stat().st_size > 10_000


@pytest.mark.timeout(60)
def test_crash_still_writes_the_samples(tmp_path) -> None:
    monitor = ResourceMonitor(interval_s=0.05)
    with pytest.raises(RuntimeError, match="boom"):
        _fit(tmp_path, monitor, steps=20, step_delay_s=0.01, fail_at=5)
    assert (tmp_path / "resources.png").exists()
    assert json.loads((tmp_path / "resources.json").read_text())["samples"]
    assert not any(t.name == "resource-monitor" for t in threading.enumerate())


# --- the starved loader, for real ----------------------------------------------------------


@pytest.mark.timeout(90)
@pytest.mark.parametrize("data_delay_s, step_delay_s, starved", [
    (0.03, 0.0, True),    # every batch waits ~120 ms for 4 slow items; the step is instant
    (0.0, 0.03, False),   # data is instant; the model is the bottleneck
])
def test_starved_loader_hint(tmp_path, data_delay_s, step_delay_s, starved) -> None:
    monitor = ResourceMonitor(interval_s=0.1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _fit(tmp_path, monitor, steps=25, data_delay_s=data_delay_s, step_delay_s=step_delay_s)
    shown = [str(w.message) for w in caught if issubclass(w.category, ResourceHint)]
    assert any(m.startswith("data-starved") for m in shown) is starved
    assert ("starved" in [h.kind for h in monitor.hints]) is starved
    if starved:
        assert "raise num_workers (now 0" in shown[0]
    assert (monitor.summary()["mean_data_wait_frac"] > 0.5) is starved


# --- rules as tables -------------------------------------------------------------------------


@pytest.mark.parametrize("wait, steps, gpu, workers, expect", [
    (0.6, 50, None, 0, "raise num_workers (now 0"),
    (0.6, 50, 30.0, 2, "the GPU waits for data 60%"),
    (0.6, 50, 95.0, 2, None),   # a busy GPU is not starved, whatever the host gaps say
    (0.1, 50, None, 0, None),   # below the threshold
    (0.9, 3, None, 0, None),    # too few steps to judge
    (None, 50, None, 0, None),
    (0.6, 50, None, 8, "CPU bound"),  # already more workers than cores: more will not help
])
def test_starved_rule(wait, steps, gpu, workers, expect) -> None:
    msg = starved_hint(wait, steps, gpu, workers, cpu_count=4)
    assert (msg is None) if expect is None else (expect in msg)


@pytest.mark.parametrize("rss, avail, budget, warns", [
    (29 * GIB, 10 * GIB, 30 * GIB, True),   # 97% of the budget
    (5 * GIB, 1 * GIB, 30 * GIB, True),     # we are small but the machine is nearly out
    (20 * GIB, 10 * GIB, 30 * GIB, False),
    (None, 1 * GIB, 30 * GIB, False),
])
def test_ram_rule(rss, avail, budget, warns) -> None:
    msg = ram_hint(rss, avail, budget)
    assert (msg is not None) is warns
    if warns:
        assert "lower num_workers or batch_size" in msg


@pytest.mark.parametrize("peaks, warns", [
    ({0: (2 * GIB, 16 * GIB), 1: (3 * GIB, 16 * GIB)}, True),
    ({0: (2 * GIB, 16 * GIB), 1: (12 * GIB, 16 * GIB)}, False),  # one GPU is well used
    ({}, False),
])
def test_vram_headroom_rule(peaks, warns) -> None:
    msg = vram_headroom_hint(peaks)
    assert (msg is not None) is warns
    if warns:
        assert "batch_size could grow" in msg and "GPU 1 3.0/16.0 GiB" in msg


MIB = 2 ** 20


@pytest.mark.parametrize("workers, batch, ranks, shm, warns", [
    (4, 8 * MIB, 2, (64 * MIB, 0), True),          # docker's default 64 MB: bus error ahead
    (4, 8 * MIB, 2, (8 * GIB, 0), False),
    (0, 8 * MIB, 2, (64 * MIB, 0), False),         # no workers, no shared memory traffic
    (2, 1 * MIB, 1, (1 * GIB, 950 * MIB), True),   # already nearly full
    (2, 1 * MIB, 1, None, False),                  # no /dev/shm on this platform
])
def test_shm_rule(workers, batch, ranks, shm, warns) -> None:
    msg = shm_hint(workers, 2, batch, ranks, shm)
    assert (msg is not None) is warns
    if warns:
        assert "--shm-size" in msg and "lower num_workers" in msg


@pytest.mark.parametrize("device_ids, visible, expect", [
    ([0, 1], None, [0, 1]),
    ([0, 1], "2,3", [2, 3]),
    ([1], "3,1", [1]),
    ([0], "GPU-4f3a,GPU-77b1", None),   # UUIDs: watch every GPU rather than guess
])
def test_nvml_indices_follow_cuda_visible_devices(device_ids, visible, expect) -> None:
    assert nvml_indices_for(device_ids, visible) == expect


@pytest.mark.parametrize("field, value", [
    ("interval_s", 0), ("starved_frac", 1.5), ("starved_window", 0),
    ("vram_headroom_frac", 0), ("ram_budget_bytes", -1)])
def test_config_validation_names_the_field(field, value) -> None:
    with pytest.raises(ValueError, match=field):
        ResourceMonitor(**{field: value})


@pytest.mark.timeout(60)
def test_callback_pickles_and_is_reusable_across_fits(tmp_path) -> None:
    """ddp_spawn pickles callbacks into each rank; a second fit gets a fresh record."""
    import pickle
    monitor = ResourceMonitor(interval_s=0.05)
    _fit(tmp_path / "a", monitor, steps=5)
    clone = pickle.loads(pickle.dumps(monitor))
    assert clone.config == monitor.config and len(clone.samples) == len(monitor.samples)
    _fit(tmp_path / "b", monitor, steps=8)
    assert monitor.samples[-1].step == 8 and monitor.samples[0].step == 0
    assert (tmp_path / "b" / "resources.png").exists()


def test_cuda_ordinals_map_to_nvml_by_uuid(fake_nvml: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    # The same mapping as the hardware inventory: a UUID in CUDA_VISIBLE_DEVICES names GPU 1,
    # so CUDA's device 0 is NVML's 1 and only that GPU is read.
    monkeypatch.setattr(pynvml, "nvmlDeviceGetUUID", lambda h: f"GPU-{h[1]:04d}-abcd")
    reader = GpuReader(cuda_ids=[0], visible="GPU-0001")
    assert [g.index for g in reader.read()] == [1]
    reader.close()
