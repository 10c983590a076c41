"""How the reference SMT scaled images before its model saw them, recorded with a converted
checkpoint so that `smt.predict` feeds it what it was trained on.

The reference scales with OpenCV's bilinear `cv2.resize` to ceil(size * reduce_ratio). For its
system-level datasets it first stretches an image shorter than 256 px to 256 px high and squeezes
one wider than 3056 px to 3056 px wide (neither keeps the aspect ratio); for full pages it only
scales. Our own runs scale with PIL (bilinear, rounded sizes) and keep the aspect ratio; that
is `ImageConvention()` with its defaults.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

REFERENCE_MIN_HEIGHT_PX = 256
REFERENCE_MAX_WIDTH_PX = 3056


@dataclass(frozen=True)
class ImageConvention:
    reduce_ratio: float = 1.0
    # Stretch shorter images to this height before scaling (None: never).
    min_height_px: int | None = None
    # Squeeze wider images to this width before scaling (None: never).
    max_width_px: int | None = None
    # "round" with PIL bilinear (ours) or "ceil" with OpenCV bilinear (the reference).
    resize: str = "round"

    def __post_init__(self) -> None:
        if not (isinstance(self.reduce_ratio, (int, float)) and 0.0 < float(self.reduce_ratio) <= 4.0):
            raise ValueError(f"reduce_ratio must be in (0, 4], got {self.reduce_ratio!r}")
        if self.resize not in ("round", "ceil"):
            raise ValueError(f"resize must be 'round' or 'ceil', got {self.resize!r}")
        for name in ("min_height_px", "max_width_px"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{name} must be a positive int or null, got {value!r}")

    def target_size(self, width_px: int, height_px: int) -> tuple[int, int]:
        """(width, height) the model sees for an image of width_px x height_px."""
        w, h = width_px, height_px
        if self.min_height_px is not None:
            h = max(h, self.min_height_px)
        if self.max_width_px is not None:
            w = min(w, self.max_width_px)
        r = float(self.reduce_ratio)
        if self.resize == "ceil":
            return max(1, math.ceil(w * r)), max(1, math.ceil(h * r))
        return max(1, round(w * r)), max(1, round(h * r))

    def apply(self, image: Any) -> Any:
        """PIL image (any mode) -> uint8 grayscale array [H, W], scaled as the convention says."""
        import numpy as np
        from PIL import Image

        from smt.data.images import to_gray8

        width, height = image.size
        size = self.target_size(width, height)
        if image.mode.startswith("I") or image.mode == "F":   # 16-bit: convert() clips to white
            image = Image.fromarray(to_gray8(image), mode="L")
        if self.resize == "round":
            gray = Image.fromarray(to_gray8(image), mode="L")
            if size != (width, height):
                gray = gray.resize(size, Image.BILINEAR)
            return np.asarray(gray, dtype=np.uint8)
        import cv2

        # The reference resizes the RGB array, then converts to gray (PIL's "L" weights).
        rgb = np.asarray(image.convert("RGB"))
        if size != (width, height):
            rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_LINEAR)
        return np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.uint8)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ImageConvention":
        known = {"reduce_ratio", "min_height_px", "max_width_px", "resize"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown image convention field(s) {unknown}")
        return cls(**data)


@dataclass(frozen=True)
class ReferenceDataset:
    """What the reference trained one published model on: its images and its tokens."""
    name: str
    level: str                 # "system" (one staff system per image) or "page"
    reduce_ratio: float
    fmt: str                   # the tokenization of its vocabulary (our tokenizer's name)

    def convention(self, reduce_ratio: float | None = None) -> ImageConvention:
        ratio = self.reduce_ratio if reduce_ratio is None else reduce_ratio
        if self.level == "system":
            return ImageConvention(ratio, REFERENCE_MIN_HEIGHT_PX, REFERENCE_MAX_WIDTH_PX, "ceil")
        return ImageConvention(ratio, None, None, "ceil")


# The reference's experiment configs: reduce ratio and tokenization per dataset. System-level
# vocabularies hold whole kern fields split on the layout ("ref-system"); the full-page ones
# hold parse_kern's bekern parts ("ref-bekern"). See smt.reference_tokens.
DATASETS: dict[str, ReferenceDataset] = {d.name: d for d in (
    ReferenceDataset("grandstaff", "system", 1.0, "ref-system"),
    ReferenceDataset("camera-grandstaff", "system", 0.85, "ref-system"),
    ReferenceDataset("string-quartets", "system", 1.0, "ref-system"),
    ReferenceDataset("fp-grandstaff", "page", 1.0, "ref-bekern"),
    ReferenceDataset("fp-mozarteum", "page", 1.0, "ref-bekern"),
    ReferenceDataset("fp-polish-scores", "page", 0.5, "ref-bekern"),
)}


def dataset_of(source: str) -> ReferenceDataset | None:
    """The dataset a published model name refers to (`owner/smt-camera-grandstaff` ->
    camera-grandstaff), or None when the name does not say."""
    name = source.rstrip("/").replace("\\", "/").rsplit("/", 1)[-1].lower().replace("_", "-")
    if name.startswith("smt-"):
        name = name[len("smt-"):]
    return DATASETS.get(_ALIASES.get(name, name))


_ALIASES = {"quartets": "string-quartets", "fp-polish": "fp-polish-scores"}
