"""Training-time image augmentation with OpenCV: scans and phone photos, not clean renders.

Each transform runs with its own probability, on a grayscale uint8 image (0 = ink, 255 =
paper), and returns one of the same kind. Geometry fills with white so the padding the collate
adds later looks like the rest of the page. The cost is a few milliseconds per system image on
one core, which DataLoader workers hide.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

WHITE = 255


@dataclass
class AugmentConfig:
    # Probabilities follow the SMT reference's "camera" augmentations: each distortion on
    # about half the images so the model still sees clean engraving most of the time.
    perspective_p: float = 0.3
    perspective_max: float = 0.03      # corner shift, fraction of the shorter side
    elastic_p: float = 0.2
    elastic_alpha: float = 8.0         # displacement in pixels; more tears thin stems apart
    elastic_sigma: float = 6.0         # smoothness of the displacement field, pixels
    morph_p: float = 0.3               # erosion (bolder ink) or dilation (thinner ink), 2x2
    brightness_contrast_p: float = 0.5
    brightness_max: float = 0.15       # +- fraction of full scale
    contrast_max: float = 0.25         # contrast factor in [1 - c, 1 + c]

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if name.endswith("_p") and not 0.0 <= value <= 1.0:
                raise ValueError(f"AugmentConfig.{name} must be in [0, 1], got {value!r}")
            if not name.endswith("_p") and value < 0:
                raise ValueError(f"AugmentConfig.{name} must be >= 0, got {value!r}")


PRESETS: dict[str, AugmentConfig] = {
    "none": AugmentConfig(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
    "default": AugmentConfig(),
    "camera": AugmentConfig(perspective_p=0.6, perspective_max=0.06, elastic_p=0.4,
                            morph_p=0.4, brightness_contrast_p=0.8),
}


class Augment:
    """Callable `img_uint8 -> img_uint8`; each transform fires with its probability."""

    def __init__(self, config: AugmentConfig | str = "default", seed: int | None = None) -> None:
        self.config = PRESETS[config] if isinstance(config, str) else config
        self._seed = seed
        self._rng: np.random.Generator | None = None

    @property
    def rng(self) -> np.random.Generator:
        # Created on first use so that each DataLoader worker draws its own stream (a generator
        # made in the parent would be copied and repeat the same "random" images per worker).
        if self._rng is None:
            self._rng = np.random.default_rng(self._seed)
        return self._rng

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_rng"] = None
        return state

    def __call__(self, img: np.ndarray) -> np.ndarray:
        c, rng = self.config, self.rng
        if rng.random() < c.perspective_p:
            img = perspective(img, rng, c.perspective_max)
        if rng.random() < c.elastic_p:
            img = elastic(img, rng, c.elastic_alpha, c.elastic_sigma)
        if rng.random() < c.morph_p:
            kernel = np.ones((2, 2), np.uint8)
            img = cv2.erode(img, kernel) if rng.random() < 0.5 else cv2.dilate(img, kernel)
        if rng.random() < c.brightness_contrast_p:
            img = brightness_contrast(img, rng, c.brightness_max, c.contrast_max)
        return img


def perspective(img: np.ndarray, rng: np.random.Generator, max_shift: float) -> np.ndarray:
    h, w = img.shape[:2]
    d = max_shift * min(h, w)
    src = np.float32([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]])
    dst = src + rng.uniform(-d, d, size=(4, 2)).astype(np.float32)
    m = cv2.getPerspectiveTransform(src, dst)
    return cv2.warpPerspective(img, m, (w, h), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=WHITE)


def elastic(img: np.ndarray, rng: np.random.Generator, alpha: float, sigma: float) -> np.ndarray:
    h, w = img.shape[:2]
    # A coarse random field blurred smooth: a page that is not quite flat.
    dx = cv2.GaussianBlur(rng.uniform(-1, 1, (h, w)).astype(np.float32), (0, 0), sigma) * alpha
    dy = cv2.GaussianBlur(rng.uniform(-1, 1, (h, w)).astype(np.float32), (0, 0), sigma) * alpha
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(img, xs + dx, ys + dy, interpolation=cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_CONSTANT, borderValue=WHITE)


def brightness_contrast(img: np.ndarray, rng: np.random.Generator, b_max: float,
                        c_max: float) -> np.ndarray:
    alpha = 1.0 + rng.uniform(-c_max, c_max)
    # Contrast pivots on mid-grey so that it does not also darken or lighten the page.
    beta = 255.0 * rng.uniform(-b_max, b_max) + (1.0 - alpha) * 127.5
    return cv2.convertScaleAbs(img, alpha=alpha, beta=beta)
