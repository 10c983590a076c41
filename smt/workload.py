"""The workload interface, SMT's side (`autotune.workload.Workload` is the side autotune calls).

autotune asks through this module, and only through it, for what it measures: raw rows and
the preparation's own map function (`smt.data.prepare`), the largest and the median image and
transcription the data gives, synthetic batches of a given shape, the training step itself
(`make_step`: `smt.step.TrainStep`, the LightningModule's own step), the model's analytic
memory estimate, and the DataLoader training builds. Model config, loader, scan and batches
come from `smt.builder`, which `smt.train` uses too, so what is measured is what trains.
Nothing is loaded or scanned until a method needs it, so that `--profile auto` can compare
fingerprints cheaply.
"""
from __future__ import annotations

import functools
import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

from autotune.workload import MapSpec, ModelShape
from smt.runconfig import DEFAULTS

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
                 max_tokens: int | None = None, lr: float = DEFAULTS.lr) -> None:
        from smt.config import PRESETS
        if preset not in PRESETS:
            from autotune.errors import UserError
            raise UserError(f"unknown model preset {preset!r}; choose one of {sorted(PRESETS)}")
        self.data = None if data in (None, "", "default") else str(data)
        self.preset = preset
        self.fmt = fmt
        self.max_tokens = max_tokens
        self.lr = lr
        self._extent: Any = None
        self._vocab: Any = None
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

    def _row_max_tokens(self) -> int:
        """The bound training's preparation holds rows to (`smt.data.limits`): the probe must
        not size the model for a row that training skips."""
        from smt.data.prepconfig import DEFAULT_MAX_TOKENS
        return self.max_tokens if self.max_tokens is not None else DEFAULT_MAX_TOKENS

    # -- the worst case the data gives ------------------------------------------------------
    def extent(self) -> Any:
        """`smt.builder.Extent` of the source: largest image (each side), longest token
        sequence, the token set and the size distribution, over all splits (evenly sampled
        past SCAN_ROWS); rows the preparation would skip are skipped."""
        if self._extent is None:
            from smt.builder import scan_extent
            ext = scan_extent(self.source.dataset, self.fmt, max_tokens=self._row_max_tokens(),
                              max_rows=SCAN_ROWS)
            if ext.rows == 0:
                from autotune.errors import UserError
                raise UserError(f"{self.source.spec}: no usable rows (every image or "
                                "transcription was rejected)")
            self._extent = ext
        return self._extent

    @property
    def vocab(self) -> Any:
        if self._vocab is None:
            from smt.tokenizer import Vocab
            self._vocab = Vocab.build([sorted(self.extent().tokens)], fmt=self.fmt)
        return self._vocab

    def scan(self) -> dict[str, Any]:
        """The extent as a plain dict (the keys `describe` reports)."""
        ext = self.extent()
        return {"max_height": ext.max_height_px, "max_width": ext.max_width_px,
                "max_seq_len": ext.max_seq_len_tokens, "rows": ext.rows,
                "sampled_every": ext.sampled_every, "vocab": self.vocab,
                "vocab_size": len(self.vocab)}

    def largest_shape(self, reduce_ratio: float) -> ModelShape:
        from smt.builder import reduced
        ext = self.extent()
        return ModelShape(reduced(ext.max_height_px, reduce_ratio),
                          reduced(ext.max_width_px, reduce_ratio), ext.max_seq_len_tokens)

    def typical_shape(self, reduce_ratio: float, quantile: float = 0.5) -> ModelShape:
        """The image (each side on its own) and target length at `quantile` of the scan
        (default the median)."""
        from smt.builder import reduced
        ext = self.extent()
        h, w, t = ext.median_size() if quantile == 0.5 else ext.quantile_size(quantile)
        return ModelShape(reduced(h, reduce_ratio), reduced(w, reduce_ratio), t)

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
        from smt.data.prepconfig import DEFAULT_MAX_IMAGE_PIXELS
        return map_spec(reduce_ratio, self.fmt, self._row_max_tokens(),
                        max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS)

    # -- the model --------------------------------------------------------------------------
    def config(self, shape: ModelShape | None = None) -> Any:
        """The model training builds for data whose largest input is `shape`
        (`smt.builder.model_config`); without a shape, the preset at this vocabulary."""
        from smt.builder import model_config
        from smt.config import SMTConfig
        if shape is None:
            return SMTConfig.preset(self.preset, vocab_size=len(self.vocab))
        return model_config(self.preset, len(self.vocab), shape.height, shape.width,
                            shape.seq_len)

    def hparams(self) -> Any:
        """Training's hyper-parameters at their defaults, one optimizer step per call."""
        from smt.module import TrainHParams
        return TrainHParams(lr=self.lr)

    def make_step(self, batch_size: int, shape: ModelShape, precision: str, device: Any,
                  batch: Any = None) -> Any:
        """`smt.step.TrainStep`: the LightningModule's own training step (see
        `autotune.workload.Workload.make_step`) of a model sized for `shape`, on `batch` or
        the worst-case batch of `batch_size` at `shape`."""
        from smt.step import make_train_step
        if batch is None:
            batch = self.make_batch(batch_size, shape, "cpu")
        elif int(batch["images"].shape[0]) != batch_size:
            raise ValueError(f"batch has {int(batch['images'].shape[0])} rows, not {batch_size}")
        return make_train_step(self.config(shape), self.vocab, self.fmt, batch, precision,
                               str(device), self.hparams())

    def make_batch(self, batch_size: int, shape: ModelShape, device: Any) -> dict[str, Any]:
        """Every row at `shape`, image and sequence full size: at `largest_shape` the step's
        worst case, at a `typical_shape` the padded size of a typical batch."""
        from smt.builder import batch_to, synthetic_batch
        return batch_to(synthetic_batch(batch_size, shape.height, shape.width, shape.seq_len,
                                        len(self.vocab), seed=batch_size), device)

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
        """The training DataLoader (`smt.builder.make_loader`, as `smt.train` builds it)
        over `rows` prepared rows; workers end with the loader."""
        from smt.builder import make_loader
        from smt.runconfig import DEFAULT_TEACHER_NOISE
        return make_loader(self.prepared_sample(reduce_ratio, rows), self.vocab, self.fmt,
                           batch_size=batch_size, num_workers=num_workers, shuffle=True,
                           teacher_noise=DEFAULT_TEACHER_NOISE, persistent_workers=False)

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


def make_workload(data: str | None = None, preset: str = "paper", **kwargs: Any) -> SMTWorkload:
    """Entry point `autotune.workload.load_workload("smt", ...)` calls."""
    return SMTWorkload(data=data, preset=preset, **kwargs)
