"""Lightning's messages a user of `smt.train` can do nothing about, silenced at their source.

- The "💡 Tip" advertising litlogger: Lightning logs it (INFO) on every Trainer it builds
  without a LitLogger; a filter on that logger drops this one message, its other lines (GPU
  available, `max_steps` reached) stay.
- "Precision bf16-mixed is not supported by the model summary": the summary's size estimate
  falls back to 32 bits, which is all the warning says.
- "`isinstance(treespec, LeafSpec)` is deprecated": torch 2.9+ warns about Lightning's own
  use of it (lightning/pytorch/utilities/_pytree.py).
- The model summary's FLOPs column and total: Lightning counts FLOPs only on an
  `example_input_array`, which SMT (images of any size) has none of, so both read 0.
  `ParamSummary` is Lightning's summary without them.

The filters hold only while `quiet_lightning()` is entered (our entry point's fit), each
matching one exact message: a warning of ours, or another of Lightning's, still prints.
"""
from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from lightning.pytorch.callbacks import ModelSummary

# Lightning's info messages (rank_zero_info) go through this logger.
RANK_ZERO_LOGGER = "lightning.pytorch.utilities.rank_zero"
TIP_PREFIX = "💡 Tip:"
# (message regex, category): the warnings above, matched from their first words.
WARNINGS = ((r"Precision .+ is not supported by the model summary", UserWarning),
            (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning))


class _DropTip(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(TIP_PREFIX)


@contextmanager
def quiet_lightning() -> Iterator[None]:
    """Silence the messages of the module doc for the block."""
    logger = logging.getLogger(RANK_ZERO_LOGGER)
    tip = _DropTip()
    logger.addFilter(tip)
    try:
        with warnings.catch_warnings():
            for message, category in WARNINGS:
                warnings.filterwarnings("ignore", message=message, category=category)
            yield
    finally:
        logger.removeFilter(tip)


class ParamSummary(ModelSummary):
    """Lightning's model summary (layers, parameters, size) without the FLOPs it cannot count."""

    @staticmethod
    def summarize(summary_data: list[tuple[str, list[str]]], *totals: Any,
                  **summarize_kwargs: Any) -> None:
        from lightning.pytorch.utilities.model_summary.model_summary import _format_summary_table
        columns = [column for column in summary_data if column[0] != "FLOPs"]
        # Lightning 2.6 passes total_flops (its table's last line); earlier releases do not.
        flops = summarize_kwargs.pop("total_flops", None)
        table = _format_summary_table(*totals, *(() if flops is None else (flops,)), *columns)
        table = "\n".join(row for row in table.splitlines() if "Flops" not in row)
        logging.getLogger(ModelSummary.__module__).info("\n" + table)
