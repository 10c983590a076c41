"""The preparation's typed records: what the caller asks for (`PrepareConfig`), what the
watchdog did (`WatchdogAction`) and what came out (`PrepareResult`)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from smt.tokenizer import ALL_FORMATS

PREP_VERSION = 2                 # bump when prepare_example's output changes for equal inputs
# Rows past these are skipped and counted: the values `smt.data.limits.row_limits()` derives
# for the reference model in 16 GB (written out so that preparing never imports torch; a
# test keeps them equal).
DEFAULT_MAX_TOKENS = 12096
DEFAULT_MAX_IMAGE_PIXELS = 8_699_840            # 2480 x 3508, an A4 page at 300 dpi


@dataclass
class PrepareConfig:
    reduce_ratio: float = 0.5            # the user's working value for 2100 px pages on 16 GB GPUs
    num_proc: int = 1                    # safe everywhere; the probe raises it where RAM allows
    writer_batch_size: int = 100         # rows buffered per Arrow write; x row cost = RAM per worker
    fmt: str = "bekern"                  # the SMT papers' format: smallest vocabulary
    max_tokens: int | None = DEFAULT_MAX_TOKENS    # longer transcriptions are skipped (None: keep all)
    # Larger images (height x width after reduce_ratio) are skipped (None: keep all).
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS
    shard_rows: int | None = None        # None: ~500 rows, at most a few minutes lost on a kill
    stall_timeout_s: float | None = 180.0  # a page takes ~1 s; minutes without a row is a stall
    ram_budget_bytes: int | None = None  # None: available RAM when preparation starts
    isolate: bool = True                 # map in a child process the watchdog can stop

    def __post_init__(self) -> None:
        if not (isinstance(self.reduce_ratio, (int, float)) and 0 < self.reduce_ratio <= 1):
            raise ValueError(f"reduce_ratio must be in (0, 1], got {self.reduce_ratio!r}")
        if not isinstance(self.num_proc, int) or self.num_proc < 1:
            raise ValueError(f"num_proc must be a positive integer, got {self.num_proc!r}")
        if not isinstance(self.writer_batch_size, int) or self.writer_batch_size < 1:
            raise ValueError(f"writer_batch_size must be a positive integer, got {self.writer_batch_size!r}")
        if self.fmt not in ALL_FORMATS:
            raise ValueError(f"fmt must be one of {ALL_FORMATS}, got {self.fmt!r}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be positive, got {self.max_tokens!r}")
        if self.max_image_pixels is not None and self.max_image_pixels < 1:
            raise ValueError(f"max_image_pixels must be positive, got {self.max_image_pixels!r}")
        if self.shard_rows is not None and self.shard_rows < 1:
            raise ValueError(f"shard_rows must be positive, got {self.shard_rows!r}")
        if self.stall_timeout_s is not None and self.stall_timeout_s <= 0:
            raise ValueError(f"stall_timeout_s must be positive, got {self.stall_timeout_s!r}")
        if self.ram_budget_bytes is not None and self.ram_budget_bytes <= 0:
            raise ValueError(f"ram_budget_bytes must be positive, got {self.ram_budget_bytes!r}")

    def output_params(self) -> dict[str, Any]:
        """What changes the prepared rows (and so the cache key); num_proc etc. do not."""
        return {"reduce_ratio": float(self.reduce_ratio), "format": self.fmt,
                "max_tokens": self.max_tokens, "max_image_pixels": self.max_image_pixels,
                "version": PREP_VERSION}


@dataclass
class WatchdogAction:
    shard: str
    reason: str                          # "stall", "ram", "crash"
    detail: str
    num_proc_before: int
    writer_batch_size_before: int
    num_proc_after: int
    writer_batch_size_after: int
    seconds_into_shard: float


@dataclass
class PrepareResult:
    cache_dir: str
    source: str
    rows_in: int
    rows_kept: dict[str, int]
    skipped: dict[str, int]
    skipped_examples: dict[str, list[str]]     # reason -> a few "split[index]" to look at
    seconds: float
    rows_per_s: float | None                   # rows mapped per second in this call
    cached: bool                               # everything came from an earlier run
    shards_total: int
    shards_reused: int
    num_proc: int                              # what the last shard ran with
    writer_batch_size: int
    actions: list[WatchdogAction] = field(default_factory=list)
    vocab_path: str = ""
    vocab_size: int = 0
    out: str | None = None
    # Transcription files with no image beside them (an image folder source): not rows at all.
    orphans: list[str] = field(default_factory=list)
    limits: dict[str, int | None] = field(default_factory=dict)   # the bounds rows were held to
    dataset: Any = None                        # the prepared DatasetDict (not serialised)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("dataset", None)
        return d

    def skipped_line(self) -> str:
        """"skipped N: reason: count (e.g. rows); ..." on one line."""
        skipped = sum(self.skipped.values())
        return f"skipped {skipped}" + (": " + "; ".join(
            f"{k}: {v} (e.g. {', '.join(self.skipped_examples.get(k, [])[:3])})"
            for k, v in sorted(self.skipped.items())) if skipped else "")

    def nothing_kept(self) -> str | None:
        """One line saying why no row was kept, or None when some were."""
        if sum(self.rows_kept.values()):
            return None
        return (f"prepared {self.source}: kept 0 of {self.rows_in} rows, nothing to train on; "
                f"{self.skipped_line()}")

    def summary(self) -> str:
        kept = sum(self.rows_kept.values())
        lines = []
        if self.cached:
            lines.append(f"reusing cached preparation at {self.cache_dir}")
        elif self.shards_reused:
            lines.append(f"resumed: {self.shards_reused} of {self.shards_total} shards were "
                         f"already done in {self.cache_dir}")
        rate = f"{self.rows_per_s:.1f} rows/s" if self.rows_per_s else "no rows mapped"
        lines.append(f"prepared {self.source}: kept {kept} of {self.rows_in} rows ("
                     + ", ".join(f"{k} {v}" for k, v in self.rows_kept.items())
                     + f"), {rate}, {self.seconds:.1f} s, num_proc {self.num_proc}, "
                       f"writer_batch_size {self.writer_batch_size}")
        lines.append(self.skipped_line())
        if self.skipped.get("transcription too long") or self.skipped.get("image too large"):
            lines.append(f"limits: --max-tokens {self.limits.get('max_tokens')}, "
                         f"--max-image-area {self.limits.get('max_image_pixels')} px "
                         "(after the reduce ratio); raise them to keep those rows")
        if self.orphans:
            lines.append(f"orphans: {len(self.orphans)} transcription(s) without an image, "
                         f"not used (e.g. {', '.join(self.orphans[:3])})")
        for a in self.actions:
            lines.append(f"watchdog: shard {a.shard}: {a.reason} ({a.detail}); num_proc "
                         f"{a.num_proc_before}->{a.num_proc_after}, writer_batch_size "
                         f"{a.writer_batch_size_before}->{a.writer_batch_size_after}")
        lines.append(f"vocabulary: {self.vocab_size} tokens ({self.vocab_path})")
        if self.out:
            lines.append(f"saved to {self.out}")
        return "\n".join(lines)
