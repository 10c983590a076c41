"""One raw row -> one prepared row: decode to grayscale, resize, normalise and check the kern.

Why PNG bytes (not pixels) come out of the map: returning a numpy array in the `Image` column
makes datasets turn the writer batch into Python lists and int64 arrays, ~40x the image in
RAM per buffered row; PNG bytes cost their own size (tens of KB for a clean score).

Row problems (undecodable image, missing/empty/non-kern/untokenisable/over-long
transcription) are skipped and counted per reason, never fatal.
"""
from __future__ import annotations

import io
import os
import re
from typing import Any

import numpy as np

from smt import faults
from smt.data.prepconfig import PrepareConfig
from smt.tokenizer import REFERENCE_FORMATS, TokenizeError, normalize_kern, tokenize

# Reasons a row is skipped (the keys of PrepareResult.skipped).
R_IMAGE = "undecodable image"
R_NO_IMAGE = "transcription without an image"
R_LARGE = "image too large"
R_NO_TEXT = "transcription missing or unreadable"
R_EMPTY = "empty transcription"
R_NOT_KERN = "not kern (no **kern header)"
R_TOKENS = "untokenizable transcription"
R_LONG = "transcription too long"

# `**kern`, and the reference's full-page `**ekern` / `**bekern` (with any suffix).
_KERN_HEADER = re.compile(r"^\*\*(?:b?e)?kern")
# The map function runs in datasets' worker processes; it is module-level so it pickles by name.
_COUNTER: Any = None             # shared rows-done counter, set in the shard child


def set_counter(counter: Any) -> None:
    """Count rows into `counter` (a shared `multiprocessing.Value`), or stop counting (None)."""
    global _COUNTER
    _COUNTER = counter


def open_image(image: Any) -> Any:
    """A raw `image` value (undecoded dict, bytes, path, PIL or array) -> a PIL image (opened
    lazily: its size is known before any pixel is decoded) or an array. ValueError: none."""
    from PIL import Image
    if isinstance(image, dict):
        data, path = image.get("bytes"), image.get("path")
        image = data if data else path
    if image is None:
        raise ValueError("no image")
    if isinstance(image, (bytes, bytearray)):
        return Image.open(io.BytesIO(image))
    if isinstance(image, (str, os.PathLike)):
        return Image.open(image)
    return image


def decode_gray(image: Any) -> np.ndarray:
    """A raw `image` value -> uint8 HxW, scaled by its real bit depth with any transparency
    onto white (`smt.data.images.to_gray8`)."""
    from smt.data.images import to_gray8
    return to_gray8(open_image(image))


def _has_image(image: Any) -> bool:
    if isinstance(image, dict):
        return bool(image.get("bytes") or image.get("path"))
    return image is not None


def has_music(kern: str) -> bool:
    """Whether a **kern text holds any note or rest: a header, interpretations (`*clefG2`),
    barlines, comments and null tokens (`.`) alone are an empty score."""
    for line in kern.split("\n"):
        if line and line[0] not in "*!=":
            if any(field.strip() not in ("", ".") for field in line.split("\t")):
                return True
    return False


def check_transcription(text: Any, fmt: str, max_tokens: int | None) -> tuple[str, str]:
    """(normalised kern, "") for a usable transcription, else ("", reason)."""
    if not isinstance(text, str):
        return "", R_NO_TEXT
    if not text.strip():
        return "", R_EMPTY
    # A reference format reads the text as the reference's datasets hold it (ekern markers,
    # measure numbers: its tokenizer drops what it drops); ours reads normalised **kern.
    kern = text.replace("\r\n", "\n") if fmt in REFERENCE_FORMATS else normalize_kern(text)
    head = kern.split("\n", 50)[:50]
    if not any(_KERN_HEADER.match(tok) for line in head for tok in line.split("\t")):
        return "", R_NOT_KERN
    if not has_music(kern):
        return "", R_EMPTY
    try:
        n = len(tokenize(kern, fmt))
    except TokenizeError:
        return "", R_TOKENS
    if max_tokens is not None and n + 2 > max_tokens:          # + <bos>, <eos>
        return "", R_LONG
    return kern, ""


def prepare_example(example: dict[str, Any], reduce_ratio: float, fmt: str,
                    max_tokens: int | None, max_image_pixels: int | None = None) -> dict[str, Any]:
    """One raw row -> {"image": PNG bytes dict or None, "transcription", "skip": reason}."""
    faults.prepare_row()
    out = _prepare_row(example, reduce_ratio, fmt, max_tokens, max_image_pixels)
    if _COUNTER is not None:
        with _COUNTER.get_lock():
            _COUNTER.value += 1
    return out


def _skip(reason: str) -> dict[str, Any]:
    return {"image": None, "transcription": "", "skip": reason}


def _prepare_row(example: dict[str, Any], reduce_ratio: float, fmt: str,
                 max_tokens: int | None, max_image_pixels: int | None) -> dict[str, Any]:
    from smt.data.images import to_gray8
    from smt.data.render import encode_png

    kern, reason = check_transcription(example.get("transcription"), fmt, max_tokens)
    if reason:
        return _skip(reason)
    raw = example.get("image")
    if not _has_image(raw):
        return _skip(R_NO_IMAGE)
    try:
        src = open_image(raw)
        w, h = src.size if hasattr(src, "size") and not isinstance(src, np.ndarray) else \
            np.asarray(src).shape[1::-1]
        # Checked on the header, before decoding: the pixels of a huge scan are never loaded.
        if max_image_pixels is not None and w * h * reduce_ratio ** 2 > max_image_pixels:
            return _skip(R_LARGE)
        img = to_gray8(src)
    except Exception:  # noqa: BLE001 - any decode failure is a skipped row
        return _skip(R_IMAGE)
    if reduce_ratio != 1.0:
        import cv2
        h, w = img.shape
        size = (max(1, round(w * reduce_ratio)), max(1, round(h * reduce_ratio)))
        img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
    return {"image": {"bytes": encode_png(img), "path": None}, "transcription": kern, "skip": ""}


def output_features() -> Any:
    import datasets
    return datasets.Features({"image": datasets.Image(), "transcription": datasets.Value("string"),
                              "skip": datasets.Value("string")})


def map_function(reduce_ratio: float = 0.5, fmt: str = "bekern",
                 max_tokens: int | None = None,
                 max_image_pixels: int | None = None) -> tuple[Any, dict[str, Any]]:
    """(function, fn_kwargs) exactly as the preparation maps raw rows from `load_source`:
    `ds.map(fn, fn_kwargs=kw, features=output_features(), num_proc=..., writer_batch_size=...)`.
    None for a bound: no limit (the preparation itself passes `PrepareConfig`'s)."""
    PrepareConfig(reduce_ratio=reduce_ratio, fmt=fmt, max_tokens=max_tokens,
                  max_image_pixels=max_image_pixels)                          # validates
    return prepare_example, {"reduce_ratio": float(reduce_ratio), "fmt": fmt,
                             "max_tokens": max_tokens, "max_image_pixels": max_image_pixels}


def map_spec(reduce_ratio: float = 0.5, fmt: str = "bekern", max_tokens: int | None = None,
             remove_columns: tuple[str, ...] = (), max_image_pixels: int | None = None) -> Any:
    """The same as an `autotune.workload.MapSpec` (the workload interface's form)."""
    from autotune.workload import MapSpec
    fn, kw = map_function(reduce_ratio, fmt, max_tokens, max_image_pixels)
    return MapSpec(function=fn, fn_kwargs=kw, features=output_features(),
                   remove_columns=tuple(remove_columns))
