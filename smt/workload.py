"""The SMT side of autotune's workload interface (`autotune.workload.Workload`).

autotune asks through this module, and only through it, for what it measures: raw rows and
the preparation's own map function (`smt.data.prepare`), the largest image and the longest
transcription the data gives, an `SMTModel` built for them, a worst-case batch, the model's
analytic memory estimate, and the DataLoader training builds. Nothing is loaded or scanned
until a method needs it, so that `--profile auto` can compare fingerprints cheaply.
"""
from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import tempfile
from pathlib import Path
from typing import Any

from autotune.workload import MapSpec, ModelShape

# Bump when what this module measures changes for equal inputs: old profiles stop matching.
WORKLOAD_VERSION = 1
# Rows whose image header and transcription are read to find the worst case. The default set
# is scanned whole (1,200 rows in about a second); a hub set of 100k pages is sampled evenly,
# and the probe says so, because the map's memory and the model's both follow the largest image.
SCAN_ROWS = 5000


@functools.lru_cache(maxsize=8)
def _open(data: str | None) -> Any:
    from smt.data.sources import open_source
    return open_source(data)


class SMTWorkload:
    name = "smt"

    def __init__(self, data: str | None = None, preset: str = "paper", fmt: str = "bekern",
                 max_tokens: int | None = None, lr: float = 1e-4) -> None:
        from smt.config import PRESETS
        if preset not in PRESETS:
            from autotune.errors import UserError
            raise UserError(f"unknown model preset {preset!r}; choose one of {sorted(PRESETS)}")
        self.data = None if data in (None, "", "default") else str(data)
        self.preset = preset
        self.fmt = fmt
        self.max_tokens = max_tokens
        self.lr = lr
        self._scan: dict[str, Any] | None = None
        self._prepared: dict[float, Any] = {}
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    # -- the source -------------------------------------------------------------------------
    @property
    def source(self) -> Any:
        return _open(self.data)

    def fingerprint(self) -> str:
        from smt.config import SMTConfig
        key = {"version": WORKLOAD_VERSION, "source": self.source.fingerprint,
               "model": SMTConfig.preset(self.preset).to_dict(), "format": self.fmt,
               "max_tokens": self.max_tokens}
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]

    def describe(self) -> dict[str, Any]:
        scan = self.scan()
        src = self.source
        return {"fingerprint": self.fingerprint(), "name": self.name, "dataset": src.spec,
                "source_kind": src.kind, "source_fingerprint": src.fingerprint,
                "model": self.preset, "format": self.fmt, "max_tokens": self.max_tokens,
                "rows": {s: len(src.dataset[s]) for s in src.dataset},
                "largest_image": [scan["max_height"], scan["max_width"]],
                "max_seq_len": scan["max_seq_len"], "vocab_size": scan["vocab_size"],
                "scanned_rows": scan["rows"], "num_params": self.num_params()}

    def dataset_rows(self) -> int:
        dd = self.source.dataset
        return sum(len(dd[s]) for s in dd)

    # -- the worst case the data gives ------------------------------------------------------
    def scan(self) -> dict[str, Any]:
        """Largest image (each side), longest token sequence and the token set, over all
        splits (evenly sampled past SCAN_ROWS); rows the preparation would skip are skipped."""
        if self._scan is not None:
            return self._scan
        from PIL import Image

        from smt.data.prepare import check_transcription
        from smt.tokenizer import tokenize
        dd = self.source.dataset
        total = sum(len(dd[s]) for s in dd)
        step = max(1, math.ceil(total / SCAN_ROWS))
        hmax = wmax = tmax = rows = 0
        tokens: set[str] = set()
        for split in dd:
            ds = dd[split]
            if step > 1:
                ds = ds.select(range(0, len(ds), step))
            for batch in ds.select_columns(["image", "transcription"]).iter(batch_size=64):
                for image, text in zip(batch["image"], batch["transcription"]):
                    kern, reason = check_transcription(text, self.fmt, self.max_tokens)
                    if reason or not image:
                        continue
                    src = io.BytesIO(image["bytes"]) if image.get("bytes") else image.get("path")
                    try:
                        with Image.open(src) as im:
                            w, h = im.size
                    except Exception:  # noqa: BLE001 - an undecodable image is a skipped row
                        continue
                    toks = tokenize(kern, self.fmt)
                    tokens.update(toks)
                    hmax, wmax, tmax = max(hmax, h), max(wmax, w), max(tmax, len(toks) + 2)
                    rows += 1
        if rows == 0:
            from autotune.errors import UserError
            raise UserError(f"{self.source.spec}: no usable rows (every image or transcription "
                            "was rejected)")
        from smt.tokenizer import Vocab
        vocab = Vocab.build([sorted(tokens)], fmt=self.fmt)
        self._scan = {"max_height": hmax, "max_width": wmax, "max_seq_len": tmax,
                      "rows": rows, "sampled_every": step, "vocab": vocab,
                      "vocab_size": len(vocab)}
        return self._scan

    def largest_shape(self, reduce_ratio: float) -> ModelShape:
        scan = self.scan()
        # The same rounding as smt.data.prepare's resize.
        return ModelShape(max(1, round(scan["max_height"] * reduce_ratio)),
                          max(1, round(scan["max_width"] * reduce_ratio)),
                          scan["max_seq_len"])

    # -- the map ----------------------------------------------------------------------------
    def raw_sample(self, rows: int, seed: int = 0) -> Any:
        """`rows` training rows spread evenly over the split (first rows are often alike)."""
        train = self.source.dataset["train"]
        n = min(rows, len(train))
        step = len(train) / n if n else 1
        picked = sorted({int(i * step + (seed % max(1, int(step)))) % len(train)
                         for i in range(n)})
        return train.select(picked).select_columns(["image", "transcription"])

    def map_spec(self, reduce_ratio: float) -> MapSpec:
        from smt.data.prepare import map_spec
        return map_spec(reduce_ratio, self.fmt, self.max_tokens)

    # -- the model --------------------------------------------------------------------------
    def config(self, shape: ModelShape | None = None) -> Any:
        from smt.config import SMTConfig
        scan = self.scan()
        base = SMTConfig.preset(self.preset)
        changes: dict[str, Any] = {"vocab_size": scan["vocab_size"]}
        if shape is not None:
            changes.update(max_height=max(base.max_height, _round16(shape.height)),
                           max_width=max(base.max_width, _round16(shape.width)),
                           max_seq_len=max(base.max_seq_len, shape.seq_len))
        return SMTConfig.preset(self.preset, **changes)

    def build_model(self, shape: ModelShape) -> Any:
        from smt.model import SMTModel
        return SMTModel(self.config(shape))

    def make_batch(self, batch_size: int, shape: ModelShape, device: Any) -> dict[str, Any]:
        """Every row at the largest image and the longest sequence: the step's worst case."""
        import torch
        from smt.tokenizer import SPECIALS
        vocab = self.scan()["vocab_size"]
        gen = torch.Generator().manual_seed(batch_size)
        t = max(1, shape.seq_len - 1)
        images = torch.rand(batch_size, 1, shape.height, shape.width, generator=gen)
        ids = torch.randint(len(SPECIALS), max(len(SPECIALS) + 1, vocab), (batch_size, t + 1),
                            generator=gen)
        sizes = torch.tensor([[shape.height, shape.width]] * batch_size, dtype=torch.long)
        return {"images": images.to(device), "image_sizes": sizes.to(device),
                "input_ids": ids[:, :-1].contiguous().to(device),
                "target_ids": ids[:, 1:].contiguous().to(device)}

    def training_loss(self, model: Any, batch: dict[str, Any]) -> Any:
        logits = model(batch["images"], batch["input_ids"], batch["image_sizes"])
        return model.loss(logits, batch["target_ids"])

    def make_optimizer(self, model: Any) -> Any:
        import torch
        return torch.optim.Adam(model.parameters(), lr=self.lr)

    def estimate_memory(self, batch_size: int, shape: ModelShape, precision: str) -> int | None:
        from smt.model import estimate_memory
        est = estimate_memory(self.config(shape), batch_size, shape.height, shape.width,
                              shape.seq_len, precision)
        return int(est.total_bytes)

    def num_params(self) -> int:
        from smt.model import count_params
        try:
            return int(count_params(self.config()))
        except NotImplementedError:
            from smt.model import SMTModel
            return SMTModel(self.config()).num_params()

    # -- the loader -------------------------------------------------------------------------
    def prepared_sample(self, reduce_ratio: float, rows: int) -> Any:
        """`rows` training rows through the real map, in this process, kept for reuse."""
        key = round(reduce_ratio, 4)
        if key in self._prepared and len(self._prepared[key]) >= rows:
            return self._prepared[key].select(range(rows))
        spec = self.map_spec(reduce_ratio)
        raw = self.raw_sample(rows)
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="smt-workload-")
        from smt.data.render import quiet_datasets
        with quiet_datasets():
            out = raw.map(spec.function, fn_kwargs=dict(spec.fn_kwargs), features=spec.features,
                          cache_file_name=str(Path(self._tmp.name) / f"prep-{key}-{rows}.arrow"),
                          load_from_cache_file=True)
            out = out.filter(lambda skip: not skip, input_columns=["skip"])
        self._prepared[key] = out
        return out

    def make_loader(self, batch_size: int, num_workers: int, reduce_ratio: float,
                    rows: int) -> Any:
        """The training DataLoader (smt.train.make_loaders' arguments) over prepared rows."""
        import torch
        from torch.utils.data import DataLoader

        from smt.data.loader import ScoreDataset, collate
        vocab = self.scan()["vocab"]
        data = ScoreDataset(self.prepared_sample(reduce_ratio, rows), vocab, self.fmt)
        return DataLoader(data, batch_size=batch_size, shuffle=True, drop_last=False,
                          num_workers=num_workers,
                          collate_fn=functools.partial(collate, pad_id=vocab.pad_id),
                          pin_memory=torch.cuda.is_available(), persistent_workers=False)

    # -- caches and search trials (smt.paths and smt.trial declare them) ---------------------
    def cache_layout(self) -> Any:
        from smt.paths import cache_layout
        return cache_layout()

    def trial_launch(self, request: Any) -> Any:
        from smt.trial import launch
        return launch(request)

    def trial_report(self, out_dir: Path) -> Any:
        from smt.trial import read_report
        return read_report(out_dir)

    def trial_warmup_batches(self) -> int:
        from smt.trial import warmup_batches
        return warmup_batches()


def _round16(x: int) -> int:
    return -(-x // 16) * 16


def make_workload(data: str | None = None, preset: str = "paper", **kwargs: Any) -> SMTWorkload:
    """Entry point `autotune.workload.load_workload("smt", ...)` calls."""
    return SMTWorkload(data=data, preset=preset, **kwargs)
