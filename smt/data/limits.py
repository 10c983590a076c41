"""How long a transcription and how large an image a row may be before preparation skips it.

Why bound them at all: the model is sized from the data (`smt.builder.model_config`), so one
300k-token row made max_seq_len 375,022 and step 0 never ended, and one 12000x9000 scan grows
every batch's padding and the positional grid. A row past a bound is skipped and counted
with its reason, like any other bad row; the bounds are flags (`--max-tokens`,
`--max-image-area`).

Where the defaults come from: the model preset and a memory budget.
- Image area: the preset's positional grid (`max_height x max_width`: an A4 page at 300 dpi
  for the reference "paper" model), after the reduce ratio.
- Tokens: TOKEN_HEADROOM times the preset's sequence length (1512 is the reference's
  page-level limit), and never more than one training sample at that image size fits in the
  memory budget at batch 1 (`smt.model.estimate`, linear in the sequence length).
"""
from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PRESET = "paper"
# The GPUs this project targets (Kaggle T4/P100, Colab T4) hold 16 GB.
DEFAULT_MEMORY_BUDGET_BYTES = 16 * 2**30
# Pages denser than the reference's fit up to this multiple of its sequence length; beyond,
# a single sample costs minutes per step on those GPUs.
TOKEN_HEADROOM = 8
_PROBE_TOKENS = (256, 2304)         # two lengths to fit memory = a + b * tokens through


@dataclass(frozen=True)
class RowLimits:
    max_tokens: int                  # transcription tokens + <bos>/<eos>
    max_image_pixels: int            # height x width after the reduce ratio
    why: str


def row_limits(preset: str = DEFAULT_PRESET,
               memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
               precision: str = "32") -> RowLimits:
    """The default bounds for `preset` within `memory_budget_bytes` (see the module doc)."""
    from smt.config import SMTConfig
    from smt.model.estimate import estimate_memory

    base = SMTConfig.preset(preset)
    pixels = base.max_height * base.max_width
    tokens = TOKEN_HEADROOM * base.max_seq_len
    cfg = base.replace(max_seq_len=max(tokens, _PROBE_TOKENS[1]))
    lo, hi = (estimate_memory(cfg, 1, base.max_height, base.max_width, n, precision).total_bytes
              for n in _PROBE_TOKENS)
    per_token = (hi - lo) / (_PROBE_TOKENS[1] - _PROBE_TOKENS[0])
    fit = _PROBE_TOKENS[0] + (memory_budget_bytes - lo) / per_token if per_token > 0 else tokens
    by_memory = int(fit) < tokens
    tokens = max(_PROBE_TOKENS[0], min(tokens, int(fit)))
    why = (f"{preset} preset: images up to its {base.max_width}x{base.max_height} px grid, "
           + (f"{tokens} tokens (one sample in {memory_budget_bytes / 2**30:.0f} GiB)" if by_memory
              else f"{tokens} tokens ({TOKEN_HEADROOM}x its {base.max_seq_len})"))
    return RowLimits(tokens, pixels, why)
