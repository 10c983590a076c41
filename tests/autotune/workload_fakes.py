"""A small workload for probe tests: real `datasets.map`, a real torch model and loader, with
switches that make the map stall or the training step raise an OOM above a batch size.

It implements autotune's Workload protocol without SMT, which is also the proof that autotune
needs nothing SMT-specific.
"""
from __future__ import annotations

import functools
import io
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from autotune.workload import (CacheLayout, MapSpec, ModelShape, TrialLaunch, TrialReport,
                               TrialRequest)


def shrink(example: dict[str, Any], reduce_ratio: float, stall_after: int | None,
           stall_marker: str | None) -> dict[str, Any]:
    """Map function: resize the image and keep it as PNG bytes (the fast, small case).

    With `stall_after` it blocks forever on the row whose `idx` equals it, like the
    reference pipeline's map that stopped making progress.
    """
    if stall_after is not None and example["idx"] >= stall_after:
        if stall_marker:
            open(stall_marker, "a").close()
        while True:
            time.sleep(1)
    image = Image.open(io.BytesIO(example["image"]["bytes"])).convert("L")
    w, h = image.size
    image = image.resize((max(1, int(w * reduce_ratio)), max(1, int(h * reduce_ratio))))
    return {"image": image, "transcription": example["transcription"]}


class FakeWorkload:
    name = "fake"

    def __init__(self, rows: int = 40, height: int = 64, width: int = 256,
                 stall_after: int | None = None, stall_marker: str | None = None,
                 oom_above_batch: int | None = None, seed: int = 0) -> None:
        self.rows = rows
        self.height = height
        self.width = width
        self.stall_after = stall_after
        self.stall_marker = stall_marker
        self.oom_above_batch = oom_above_batch
        self.seed = seed
        self._sample: Any = None
        self.loaders_built: list[tuple[int, int]] = []

    # -- description ----------------------------------------------------------------------
    def fingerprint(self) -> str:
        return f"fake-{self.rows}-{self.height}x{self.width}"

    def describe(self) -> dict[str, Any]:
        return {"fingerprint": self.fingerprint(), "dataset": "fake", "model": "tiny-conv"}

    # -- data -----------------------------------------------------------------------------
    def dataset_rows(self) -> int:
        return self.rows * 10

    def raw_sample(self, rows: int, seed: int = 0) -> Any:
        import datasets
        if self._sample is not None and len(self._sample) == min(rows, self.rows):
            return self._sample
        rng = np.random.default_rng(self.seed)
        images, texts = [], []
        for _ in range(min(rows, self.rows)):
            pixels = rng.integers(0, 256, (self.height, self.width), dtype=np.uint8)
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, format="PNG")
            images.append({"bytes": buf.getvalue(), "path": None})
            texts.append("a b c")
        features = datasets.Features({"image": datasets.Image(), "transcription":
                                      datasets.Value("string"), "idx": datasets.Value("int32")})
        self._sample = datasets.Dataset.from_dict(
            {"image": images, "transcription": texts, "idx": list(range(len(texts)))},
            features=features).cast_column("image", datasets.Image(decode=False))
        return self._sample

    def map_spec(self, reduce_ratio: float) -> MapSpec:
        import datasets
        return MapSpec(function=functools.partial(shrink, reduce_ratio=reduce_ratio,
                                                  stall_after=self.stall_after,
                                                  stall_marker=self.stall_marker),
                       remove_columns=("idx",),
                       features=datasets.Features({"image": datasets.Image(),
                                                   "transcription": datasets.Value("string")}))

    # -- model ----------------------------------------------------------------------------
    def largest_shape(self, reduce_ratio: float) -> ModelShape:
        return ModelShape(max(16, int(self.height * reduce_ratio)),
                          max(16, int(self.width * reduce_ratio)), 8)

    def typical_shape(self, reduce_ratio: float, quantile: float = 0.5) -> ModelShape:
        shape = self.largest_shape(reduce_ratio)
        f = 0.5 + 0.5 * max(0.0, quantile - 0.5) / 0.5      # median half size .. max full size
        return ModelShape(max(16, int(shape.height * f)), max(16, int(shape.width * f)), 8)

    # build_model, training_loss and make_optimizer are the parts of its own step (_FakeStep),
    # not the protocol's: autotune only ever calls make_step.
    def build_model(self, shape: ModelShape) -> Any:
        import torch
        return torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(),
                                   torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(),
                                   torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                   torch.nn.Linear(8, 4))

    def make_batch(self, batch_size: int, shape: ModelShape, device: Any) -> Any:
        import torch
        return torch.rand(batch_size, 1, shape.height, shape.width, device=device)

    def make_step(self, batch_size: int, shape: ModelShape, precision: str, device: Any,
                  batch: Any = None) -> Any:
        return _FakeStep(self, shape, batch_size, device, batch)

    def training_loss(self, model: Any, batch: Any) -> Any:
        if self.oom_above_batch is not None and batch.shape[0] > self.oom_above_batch:
            raise RuntimeError(f"CUDA out of memory. Tried to allocate {batch.shape[0]} GiB")
        return model(batch).float().pow(2).mean()

    def make_optimizer(self, model: Any) -> Any:
        import torch
        return torch.optim.Adam(model.parameters(), lr=1e-3)

    def estimate_memory(self, batch_size: int, shape: ModelShape, precision: str) -> int | None:
        # Activations of two 8-channel float maps, forward and backward, plus the weights.
        return int(4 * 8 * shape.height * shape.width * batch_size * 4 + 4 * 1024)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.build_model(self.largest_shape(1.0)).parameters())

    # -- loader ---------------------------------------------------------------------------
    def make_loader(self, batch_size: int, num_workers: int, reduce_ratio: float,
                    rows: int) -> Any:
        import torch
        self.loaders_built.append((batch_size, num_workers))
        shape = self.largest_shape(reduce_ratio)
        data = torch.rand(rows, 1, shape.height, shape.width)
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data),
                                           batch_size=batch_size, num_workers=num_workers)

    # -- caches and trials: the fake builds no cache and runs no search trial -------------------
    def cache_layout(self) -> CacheLayout:
        root = Path(tempfile.gettempdir()) / "fake-workload-cache"
        return CacheLayout(root=root, folders=(), marker_file="meta.json", creator="fake")

    def trial_launch(self, request: TrialRequest) -> TrialLaunch:
        raise NotImplementedError("the fake workload runs no search trials")

    def trial_report(self, out_dir: Path) -> TrialReport | None:
        return None

    def trial_warmup_batches(self) -> int:
        return 0


class _FakeStep:
    """FakeWorkload's training step: its model, Adam, and its loss, one optimizer step a call."""

    def __init__(self, work: FakeWorkload, shape: ModelShape, batch_size: int, device: Any,
                 batch: Any) -> None:
        self.work = work
        self.model: Any = work.build_model(shape).to(device)
        self.optimizer: Any = work.make_optimizer(self.model)
        self.batch: Any = batch if batch is not None else work.make_batch(batch_size, shape, device)

    def step(self) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.work.training_loss(self.model, self.batch)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    __call__ = step

    def close(self) -> None:
        self.model = self.optimizer = self.batch = None

    def __enter__(self) -> "_FakeStep":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
