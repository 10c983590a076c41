"""Fixed sin/cos positional encodings (no parameters, nothing to learn or to save).

1D for decoder positions; 2D for the encoder's feature grid, where half the channels encode
the row and half the column, so a cross-attention key knows where on the page it sits.

Two formulas, chosen by `SMTConfig.positional` (a model decodes correctly only with the tables
it was trained with, and neither implementation saves them):

- "ours" (`sincos_1d` / `sincos_2d`): channels [0, dim/2) hold sin(p * f_i), [dim/2, dim)
  cos(p * f_i), f_i = 10000^(-2i/dim); the 2D table applies that 1D formula to each half
  (dim/2 channels, so f_i = 10000^(-4i/dim): row/column frequencies reach down to 1e-4).
  Computed in float64, then cast.
- "reference" (`reference_1d` / `reference_2d`), the reference SMT's tables: sin and cos
  interleaved (channel 2i sin, 2i+1 cos); 1D frequencies are the same 10000^(-2i/dim), but the
  2D halves keep the denominator dim, so f_i = 10000^(-2i/dim) for i < dim/4 (frequencies
  only down to 10000^(-1/2) = 0.01). Computed in float32 in the reference's order of
  operations, so the values are bit-identical to its buffers.
"""
from __future__ import annotations

import math

import torch


def sincos_1d(length: int, dim: int, *, device: torch.device | None = None,
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[length, dim]: channels [0, dim/2) are sin(p * f_i), [dim/2, dim) cos(p * f_i),
    with frequencies f_i = 10000^(-2i/dim) as in "Attention is all you need"."""
    if dim % 2:
        raise ValueError(f"sin/cos positional encoding needs an even dim, got {dim}")
    position = torch.arange(length, device=device, dtype=torch.float64)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float64)
                     * (-math.log(10000.0) / dim))
    angle = position * freq
    # Computed in float64 then cast: at position ~1500 float32 angles lose digits.
    return torch.cat([angle.sin(), angle.cos()], dim=1).to(dtype)


def _grid(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """[H, d/2] row table + [W, d/2] column table -> [H * W, d] in row-major grid order."""
    height, half = rows.shape
    width = cols.shape[0]
    grid = torch.cat([rows[:, None, :].expand(height, width, half),
                      cols[None, :, :].expand(height, width, half)], dim=2)
    return grid.reshape(height * width, 2 * half)


def sincos_2d(height: int, width: int, dim: int, *, device: torch.device | None = None,
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[height * width, dim] in row-major grid order: first dim/2 channels encode the row,
    the other dim/2 the column."""
    if dim % 4:
        raise ValueError(f"2D sin/cos positional encoding needs dim divisible by 4, got {dim}")
    half = dim // 2
    return _grid(sincos_1d(height, half, device=device, dtype=dtype),
                 sincos_1d(width, half, device=device, dtype=dtype))


def _interleaved(length: int, channels: int, denominator: int) -> torch.Tensor:
    """[length, channels] float32 on the CPU: channel 2i = sin(p * f_i), 2i + 1 = cos(p * f_i),
    f_i = exp(-(2i / denominator) * ln 10000), evaluated as the reference evaluates it."""
    exponent = -torch.arange(0.0, channels, 2) / denominator
    freq = torch.exp(exponent * torch.log(torch.tensor(10000.0)))
    angle = torch.arange(0.0, length)[:, None] * freq
    return torch.stack([angle.sin(), angle.cos()], dim=2).reshape(length, channels)


def reference_1d(length: int, dim: int, *, device: torch.device | None = None,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The reference SMT's decoder table: [length, dim], sin/cos interleaved."""
    if dim % 2:
        raise ValueError(f"sin/cos positional encoding needs an even dim, got {dim}")
    return _interleaved(length, dim, dim).to(device=device, dtype=dtype)


def reference_2d(height: int, width: int, dim: int, *, device: torch.device | None = None,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The reference SMT's feature-grid table, flattened row-major: [height * width, dim]."""
    if dim % 4:
        raise ValueError(f"2D sin/cos positional encoding needs dim divisible by 4, got {dim}")
    # Built on the CPU in float32 (like the reference's buffers), moved before the expand so
    # only the two small tables travel.
    rows = _interleaved(height, dim // 2, dim).to(device=device, dtype=dtype)
    cols = _interleaved(width, dim // 2, dim).to(device=device, dtype=dtype)
    return _grid(rows, cols)


TABLES_1D = {"ours": sincos_1d, "reference": reference_1d}
TABLES_2D = {"ours": sincos_2d, "reference": reference_2d}
