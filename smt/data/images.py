"""Any score image -> uint8 grayscale (0 = ink, 255 = paper): the one conversion that
preparation, the training loader (and so augmentation) and prediction all use.

Why not `PIL.Image.convert("L")`: for 16-bit grayscale ("I;16", "I") it clips every value
above 255 to white, so a 16-bit scan becomes a blank page that trains as one. Values are
scaled by the image's real bit depth instead (65535 -> 255), for PIL images and arrays alike
(a uint16 RGB array's plain `astype(uint8)` would wrap around). Transparency is composited
onto white, or a transparent PNG would turn black.
"""
from __future__ import annotations

from typing import Any

import numpy as np

# ITU-R 601-2 luma, the weights PIL's convert("L") uses: arrays and PIL images agree.
_LUMA = np.array([0.299, 0.587, 0.114])


def to_gray8(image: Any) -> np.ndarray:
    """A PIL image or an array (HxW, HxWx1..4; any integer, bool or float dtype) -> uint8 HxW."""
    from PIL import Image
    if isinstance(image, Image.Image):
        return _pil_gray8(image)
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[2] in (2, 4):          # gray+alpha, RGBA: onto white
        alpha = to_unit(arr[..., -1])
        color = to_unit(arr[..., :-1])
        unit = color * alpha[..., None] + (1.0 - alpha[..., None])
        arr = unit[..., 0] if unit.shape[2] == 1 else unit @ _LUMA
        return _unit_to_uint8(arr)
    if arr.ndim == 3 and arr.shape[2] == 3:
        return _unit_to_uint8(to_unit(arr) @ _LUMA)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"image array of shape {arr.shape}")
    if arr.dtype == np.uint8:
        return arr
    return _unit_to_uint8(to_unit(arr))


def _pil_gray8(image: Any) -> np.ndarray:
    from PIL import Image
    image.load()
    mode = image.mode
    if mode == "L":
        return np.asarray(image, dtype=np.uint8)
    if mode.startswith("I") or mode == "F":               # 16/32-bit integer or float gray
        arr = np.asarray(image)
        return _unit_to_uint8(to_unit(arr, bits=16 if mode.startswith("I;16") else None))
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return np.asarray(image.convert("L"), dtype=np.uint8)


def to_unit(arr: np.ndarray, bits: int | None = None) -> np.ndarray:
    """Pixel values -> float in [0, 1] by the real bit depth: the dtype's for unsigned
    integers (uint16: 65535 is white), `bits` when the container is wider than the data
    (PIL's "I;16" arrives as uint16, "I" as int32), else the smallest of 8/16/32 bits that
    holds the largest value; floats are taken as [0, 1] when they stay there, else [0, 255]."""
    if arr.dtype == np.bool_:
        return arr.astype(np.float64)
    if np.issubdtype(arr.dtype, np.floating):
        top = float(np.nanmax(arr)) if arr.size else 1.0
        scale = 1.0 if top <= 1.0 else 255.0
        return np.clip(np.nan_to_num(arr.astype(np.float64)) / scale, 0.0, 1.0)
    if bits is None:
        if np.issubdtype(arr.dtype, np.unsignedinteger) and arr.dtype.itemsize <= 2:
            bits = 8 * arr.dtype.itemsize
        else:
            top = int(arr.max()) if arr.size else 0
            bits = next(b for b in (8, 16, 32, 64) if top < 2 ** b)
    return np.clip(arr.astype(np.float64) / float(2 ** bits - 1), 0.0, 1.0)


def _unit_to_uint8(unit: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(unit * 255.0), 0, 255).astype(np.uint8)
