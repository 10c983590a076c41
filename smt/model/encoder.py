"""ConvNeXt image encoder: 1 channel in, 3 stages, features at 1/16 of the image in each dimension.

Padding-aware: given the true size of each image in a padded batch, features outside an image
are zeroed before every spatial convolution, which is exactly what a convolution's own zero
padding does at a lone image's border. So an image's features do not depend on what it was
batched with (the stem's 4x4 patches see white paper beyond the image either way).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from smt.config import SMTConfig

STEM_STRIDE = 4
STAGE_STRIDE = 2


def valid_extent(sizes: torch.Tensor, stride: int, rounding: str = "ceil") -> torch.Tensor:
    """Rows/columns of a feature map at `stride` that belong to the image: those that overlap
    it, ceil(size / stride), or with rounding "floor" only those that lie wholly inside it,
    as an unpadded strided convolution computes (floor(floor(s / 4) / 2) = floor(s / 8), so
    one division per stride matches the reference stage by stage)."""
    if rounding == "floor":
        return torch.div(sizes, stride, rounding_mode="floor")
    return torch.div(sizes + (stride - 1), stride, rounding_mode="floor")


def grid_mask(sizes: torch.Tensor, stride: int, height: int, width: int,
              dtype: torch.dtype, rounding: str = "ceil") -> torch.Tensor:
    """[B, 1, height, width] with 1 where the feature map at `stride` lies on the image."""
    extent = valid_extent(sizes, stride, rounding)
    rows = torch.arange(height, device=sizes.device)[None, :] < extent[:, 0:1]
    cols = torch.arange(width, device=sizes.device)[None, :] < extent[:, 1:2]
    return (rows[:, :, None] & cols[:, None, :]).unsqueeze(1).to(dtype)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map (the ConvNeXt "channels_first" norm)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return y.permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """7x7 depthwise conv, LayerNorm, 4x pointwise MLP with GELU, layer scale, residual."""

    def __init__(self, dim: int, layer_scale_init: float = 1e-6) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pw1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pw2 = nn.Linear(4 * dim, dim)
        # Tiny layer scale: each block starts near identity, which keeps the deep stage stable.
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale_init))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        y = self.dwconv(x if mask is None else x * mask)
        y = self.pw2(self.act(self.pw1(self.norm(y.permute(0, 2, 3, 1)))))
        return x + (self.gamma * y).permute(0, 3, 1, 2)


class ConvNeXtEncoder(nn.Module):
    def __init__(self, config: SMTConfig) -> None:
        super().__init__()
        widths, depths = config.encoder_widths, config.encoder_depths
        self.rounding = config.grid_rounding
        self.stem = nn.Conv2d(config.in_channels, widths[0], kernel_size=STEM_STRIDE, stride=STEM_STRIDE)
        self.stem_norm = LayerNorm2d(widths[0], eps=1e-6)
        self.down_norms = nn.ModuleList()
        self.down_convs = nn.ModuleList()
        for i in range(1, len(widths)):
            self.down_norms.append(LayerNorm2d(widths[i - 1], eps=1e-6))
            self.down_convs.append(nn.Conv2d(widths[i - 1], widths[i], kernel_size=STAGE_STRIDE,
                                             stride=STAGE_STRIDE))
        self.stages = nn.ModuleList(
            nn.ModuleList(ConvNeXtBlock(w) for _ in range(d)) for w, d in zip(widths, depths)
        )
        self.apply(_init_weights)

    @property
    def downsample(self) -> int:
        return STEM_STRIDE * STAGE_STRIDE ** len(self.down_convs)

    def forward(self, images: torch.Tensor, sizes: torch.Tensor | None = None) -> torch.Tensor:
        """images [B, C, H, W] with H, W multiples of `downsample`; sizes [B, 2] (h, w) of each
        image inside the padding, or None when every image fills the tensor.
        Returns [B, widths[-1], H/16, W/16]."""
        x = self.stem_norm(self.stem(images))
        stride = STEM_STRIDE
        for i, blocks in enumerate(self.stages):
            if i > 0:
                x = self.down_norms[i - 1](x)
                if sizes is not None:
                    x = x * grid_mask(sizes, stride, x.shape[2], x.shape[3], x.dtype, self.rounding)
                x = self.down_convs[i - 1](x)
                stride *= STAGE_STRIDE
            mask = None if sizes is None else grid_mask(sizes, stride, x.shape[2], x.shape[3],
                                                        x.dtype, self.rounding)
            for block in blocks:
                x = block(x, mask)
        return x


def _init_weights(module: nn.Module) -> None:
    # ConvNeXt's initialisation: truncated normal, std 0.02, zero biases.
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
