"""Fixed sin/cos positional encodings (no parameters, nothing to learn or to save).

1D for decoder positions; 2D for the encoder's feature grid, where half the channels encode
the row and half the column, so a cross-attention key knows where on the page it sits.
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


def sincos_2d(height: int, width: int, dim: int, *, device: torch.device | None = None,
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[height * width, dim] in row-major grid order: first dim/2 channels encode the row,
    the other dim/2 the column."""
    if dim % 4:
        raise ValueError(f"2D sin/cos positional encoding needs dim divisible by 4, got {dim}")
    half = dim // 2
    rows = sincos_1d(height, half, device=device, dtype=dtype)
    cols = sincos_1d(width, half, device=device, dtype=dtype)
    grid = torch.cat([rows[:, None, :].expand(height, width, half),
                      cols[None, :, :].expand(height, width, half)], dim=2)
    return grid.reshape(height * width, dim)
