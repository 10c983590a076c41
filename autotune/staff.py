"""Staff space of score images, and the reduce ratio that brings it to a legibility target.

The standard OMR run-length estimate (what most staff-line removers start from):
binarise the image, walk every column top to bottom and collect the lengths of its vertical
runs. Staff lines are the most common horizontal structure on a score, so the most frequent
white run *between two black runs* is the staff space (the gap between adjacent lines) and the
most frequent black run is the staff-line thickness. Text, noteheads and stems add runs of
other lengths but do not move the modes.

Works on images and arrays only (no workload import): the probe hands it a sample of the
dataset's images.

Why `DEFAULT_STAFF_SPACE_PX` is 8 px (`bench/bench_staff.py` prints the figures):
- the SMT reference trains GrandStaff (verovio renders) at reduce ratio 0.5; verovio's
  default scale 100, the middle of our renders' 80-110, gives a 16 px staff space, so at 0.5
  the reference's model sees ~8 px spaces;
- the encoder's stem is a 4x4 patch with stride 4 (then /8, /16). One staff position (line to
  the next space) is half a line distance: at an 8 px space and a ~1 px line that is 4.5 px,
  so neighbouring positions land in different stem patches; at ratio 0.4 (6 px) it is 3.5 px,
  under one patch;
- reduced with the preparation's resize, the measured space follows full size x ratio within
  0.03 px down to 8 px and falls behind below (-0.23 px at 7 px, -0.44 at 6 px): thinner than
  that, antialiased lines start to merge with the spaces;
- the embedded default dataset (verovio scales 80-110) measures ~14.7 px (median of the
  images' staff spaces), hence ratio ~0.54.
`--staff-space PX` sets another target.
"""
from __future__ import annotations

import io
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

DEFAULT_STAFF_SPACE_PX = 8.0
# Runs longer than this (in px) are paper margins or blank space, not a staff gap.
MAX_RUN_PX = 200


@dataclass(frozen=True)
class StaffMeasure:
    """Modes of the vertical run lengths over a sample of images; None where none was found."""
    staff_space_px: float | None        # most frequent white run between two black runs
    line_thickness_px: float | None     # most frequent black run (both: median over images)
    images: int                         # images that contributed runs
    white_runs: int                     # runs counted (how much evidence the mode rests on)

    @property
    def line_distance_px(self) -> float | None:
        """Centre-to-centre distance of adjacent staff lines."""
        if self.staff_space_px is None or self.line_thickness_px is None:
            return None
        return self.staff_space_px + self.line_thickness_px


def to_gray(image: Any) -> np.ndarray:
    """uint8 HxW from PNG/JPEG bytes, a PIL image, a `datasets` image dict or an array."""
    if isinstance(image, dict):
        image = image.get("bytes") or image.get("path")
    if isinstance(image, (bytes, bytearray, str)):
        from PIL import Image
        src = io.BytesIO(image) if isinstance(image, (bytes, bytearray)) else image
        with Image.open(src) as im:
            return np.asarray(im.convert("L"))
    if hasattr(image, "convert"):                       # PIL image
        return np.asarray(image.convert("L"))
    arr = np.asarray(image)
    if arr.ndim == 3:
        arr = arr.mean(axis=2)
    if arr.dtype != np.uint8:
        hi = float(arr.max()) if arr.size else 1.0
        arr = (arr * (255.0 if hi <= 1.0 else 1.0)).clip(0, 255).astype(np.uint8)
    return arr


def binarise(gray: np.ndarray) -> np.ndarray:
    """Ink mask (True = black) by Otsu's threshold: scores are bimodal (paper and ink)."""
    import cv2
    _, out = cv2.threshold(gray, 0, 1, cv2.THRESH_BINARY_INV + cv2.THRESH_OTSU)
    return out.astype(bool)


def run_histograms(ink: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Counts of vertical white runs between black runs and of black runs, indexed by length.

    Vectorised over columns: pad every column with paper above and below, mark where ink
    starts and ends; in column-major order the starts and ends pair up per column."""
    col = np.pad(ink.T.astype(np.int8), ((0, 0), (1, 1)))
    d = np.diff(col, axis=1)
    s_cols, starts = np.nonzero(d == 1)
    _, ends = np.nonzero(d == -1)
    black = ends - starts
    same = s_cols[1:] == s_cols[:-1]
    white = (starts[1:] - ends[:-1])[same]
    bins = MAX_RUN_PX + 1
    return (np.bincount(white[white <= MAX_RUN_PX], minlength=bins),
            np.bincount(black[black <= MAX_RUN_PX], minlength=bins))


def _mode(hist: np.ndarray) -> float | None:
    """The most frequent length, refined to a sub-pixel centre from its two neighbours (a
    space that is 9.5 px on average splits between 9 and 10)."""
    if hist.sum() == 0:
        return None
    k = int(np.argmax(hist))
    lo = hist[k - 1] if k > 0 else 0
    hi = hist[k + 1] if k + 1 < len(hist) else 0
    total = float(lo + hist[k] + hi)
    return round(float(k * hist[k] + (k - 1) * lo + (k + 1) * hi) / total, 2)


def measure_staff(images: Iterable[Any]) -> StaffMeasure:
    """Staff space and line thickness over `images` (any form `to_gray` reads): the median of
    the per-image modes. Not the mode of the pooled runs: a dataset engraved at several scales
    (ours: 80-110%, 12-18 px) would then follow whichever scale has the most pixel columns in
    the sample (32 images gave 16.1 px pooled where 100 gave 14.0)."""
    spaces: list[float] = []
    lines: list[float] = []
    runs = 0
    for image in images:
        gray = to_gray(image)
        if gray.size == 0:
            continue
        white, black = run_histograms(binarise(gray))
        # A 1 px white "gap" is antialiasing inside a stroke, not a staff space.
        white[:2] = 0
        space, line = _mode(white), _mode(black)
        if space is None or line is None:
            continue
        spaces.append(space)
        lines.append(line)
        runs += int(white.sum())
    if not spaces:
        return StaffMeasure(None, None, 0, 0)
    return StaffMeasure(round(float(np.median(spaces)), 2), round(float(np.median(lines)), 2),
                        len(spaces), runs)


def ratio_for_staff_space(measured_px: float | None, target_px: float = DEFAULT_STAFF_SPACE_PX
                          ) -> float | None:
    """The reduce ratio that brings `measured_px` to `target_px`, never above 1.0 (upscaling
    adds pixels, not information); None when nothing was measured."""
    if measured_px is None or measured_px <= 0:
        return None
    if not target_px > 0:
        raise ValueError(f"staff space target must be positive px, got {target_px!r}")
    return round(min(1.0, target_px / measured_px), 3)
