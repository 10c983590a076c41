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
from typing import Any

import numpy as np

from smt import faults
from smt.data.records import PrepareConfig
from smt.tokenizer import TokenizeError, normalize_kern, tokenize

# Reasons a row is skipped (the keys of PrepareResult.skipped).
R_IMAGE = "undecodable image"
R_NO_TEXT = "transcription missing or unreadable"
R_EMPTY = "empty transcription"
R_NOT_KERN = "not kern (no **kern header)"
R_TOKENS = "untokenizable transcription"
R_LONG = "transcription too long"

# The map function runs in datasets' worker processes; it is module-level so it pickles by name.
_COUNTER: Any = None             # shared rows-done counter, set in the shard child


def set_counter(counter: Any) -> None:
    """Count rows into `counter` (a shared `multiprocessing.Value`), or stop counting (None)."""
    global _COUNTER
    _COUNTER = counter


def decode_gray(image: Any) -> np.ndarray:
    """A raw `image` value (undecoded dict, bytes, path, PIL or array) -> uint8 HxW, scaled by
    its real bit depth with any transparency onto white (`smt.data.images.to_gray8`)."""
    from PIL import Image

    from smt.data.images import to_gray8
    if isinstance(image, dict):
        data, path = image.get("bytes"), image.get("path")
        image = data if data else path
    if image is None:
        raise ValueError("no image")
    if isinstance(image, (bytes, bytearray)):
        image = Image.open(io.BytesIO(image))
    elif isinstance(image, (str, os.PathLike)):
        image = Image.open(image)
    return to_gray8(image)


def check_transcription(text: Any, fmt: str, max_tokens: int | None) -> tuple[str, str]:
    """(normalised kern, "") for a usable transcription, else ("", reason)."""
    if not isinstance(text, str):
        return "", R_NO_TEXT
    if not text.strip():
        return "", R_EMPTY
    kern = normalize_kern(text)
    head = kern.split("\n", 50)[:50]
    if not any(tok.startswith("**kern") for line in head for tok in line.split("\t")):
        return "", R_NOT_KERN
    try:
        n = len(tokenize(kern, fmt))
    except TokenizeError:
        return "", R_TOKENS
    if max_tokens is not None and n + 2 > max_tokens:          # + <bos>, <eos>
        return "", R_LONG
    return kern, ""


def prepare_example(example: dict[str, Any], reduce_ratio: float, fmt: str,
                    max_tokens: int | None) -> dict[str, Any]:
    """One raw row -> {"image": PNG bytes dict or None, "transcription", "skip": reason}."""
    faults.prepare_row()
    kern, reason = check_transcription(example.get("transcription"), fmt, max_tokens)
    if reason:
        out = {"image": None, "transcription": "", "skip": reason}
    else:
        try:
            img = decode_gray(example.get("image"))
        except Exception:  # noqa: BLE001 - any decode failure is a skipped row
            out = {"image": None, "transcription": "", "skip": R_IMAGE}
        else:
            if reduce_ratio != 1.0:
                import cv2
                h, w = img.shape
                size = (max(1, round(w * reduce_ratio)), max(1, round(h * reduce_ratio)))
                img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
            from smt.data.render import encode_png
            out = {"image": {"bytes": encode_png(img), "path": None}, "transcription": kern,
                   "skip": ""}
    if _COUNTER is not None:
        with _COUNTER.get_lock():
            _COUNTER.value += 1
    return out


def output_features() -> Any:
    import datasets
    return datasets.Features({"image": datasets.Image(), "transcription": datasets.Value("string"),
                              "skip": datasets.Value("string")})


def map_function(reduce_ratio: float = 0.5, fmt: str = "bekern",
                 max_tokens: int | None = None) -> tuple[Any, dict[str, Any]]:
    """(function, fn_kwargs) exactly as the preparation maps raw rows from `load_source`:
    `ds.map(fn, fn_kwargs=kw, features=output_features(), num_proc=..., writer_batch_size=...)`."""
    PrepareConfig(reduce_ratio=reduce_ratio, fmt=fmt, max_tokens=max_tokens)   # validates
    return prepare_example, {"reduce_ratio": float(reduce_ratio), "fmt": fmt,
                             "max_tokens": max_tokens}


def map_spec(reduce_ratio: float = 0.5, fmt: str = "bekern", max_tokens: int | None = None,
             remove_columns: tuple[str, ...] = ()) -> Any:
    """The same as an `autotune.workload.MapSpec` (the workload interface's form)."""
    from autotune.workload import MapSpec
    fn, kw = map_function(reduce_ratio, fmt, max_tokens)
    return MapSpec(function=fn, fn_kwargs=kw, features=output_features(),
                   remove_columns=tuple(remove_columns))
