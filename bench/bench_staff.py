"""Staff space of our renders, and how far down an image can be reduced before the staff
stops reading: the measurement behind `autotune.staff.DEFAULT_STAFF_SPACE_PX`.

    python bench/bench_staff.py [--rows 100]

1. The embedded default dataset: staff space and line thickness (run-length modes per image,
   their median) over an even sample of `--rows` training images, with the spread of the
   per-image values.
2. verovio at scale 100 (its default; GrandStaff is verovio-rendered): the staff
   space at full resolution, and at the reference's reduce ratio 0.5.
3. One scale-100 render reduced with the preparation's own resize (cv2 INTER_AREA) down a
   ladder of ratios: the measured space against the full-size space x ratio, and the half
   line distance (one staff position step) against the encoder stem's 4 px patch. Where the
   measured space stops following the ratio, antialiased lines merge with the spaces.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from autotune.staff import DEFAULT_STAFF_SPACE_PX, measure_staff, ratio_for_staff_space  # noqa: E402

STEM_PATCH_PX = 4
RATIOS = (1.0, 0.75, 0.6, 0.55, 0.5, 0.45, 0.4, 0.35, 0.3, 0.25)


def default_sample(rows: int) -> list[bytes]:
    import datasets

    from smt.data.default import ensure_default_dataset
    train = datasets.load_from_disk(str(ensure_default_dataset(quiet=True)))["train"]
    step = max(1, len(train) // rows)
    part = train.select(range(0, len(train), step)).cast_column(
        "image", datasets.Image(decode=False))
    return [r["bytes"] for r in part["image"]]


def scale100_render() -> np.ndarray:
    from smt.data.kern_gen import generate
    from smt.data.render import Engraving, crop_margins, kern_to_svg, svg_to_gray
    e = Engraving(scale=100, staff_line_width=0.15, spacing_staff=12, spacing_system=12,
                  beam_max_slope=10, spacing_linear=0.25, spacing_non_linear=0.6)
    return crop_margins(svg_to_gray(kern_to_svg(generate("bench-staff", "system"), "system", e)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100)
    args = ap.parse_args()
    console = Console(width=130)
    import cv2

    t0 = time.perf_counter()
    imgs = default_sample(args.rows)
    m = measure_staff(imgs)
    secs = time.perf_counter() - t0
    per = [measure_staff([i]).staff_space_px or 0.0 for i in imgs]
    p = np.percentile(per, [0, 10, 50, 90, 100])
    t = Table(title=f"embedded default dataset: {m.images} training images")
    for col in ("staff space (median of images)", "line thickness",
                "per image min/p10/median/p90/max",
                f"ratio for {DEFAULT_STAFF_SPACE_PX:g} px", "seconds"):
        t.add_column(col, justify="right")
    t.add_row(f"{m.staff_space_px:.2f}", f"{m.line_thickness_px:.2f}",
              "/".join(f"{v:.1f}" for v in p),
              f"{ratio_for_staff_space(m.staff_space_px):.3f}", f"{secs:.2f}")
    console.print(t)

    full = scale100_render()
    ref = measure_staff([full])
    space = float(ref.staff_space_px or 0)
    t = Table(title="verovio scale 100 (its default) reduced with cv2 INTER_AREA")
    for col in ("reduce ratio", "staff space", "full x ratio", "error", "line thickness",
                "half line distance", f"> {STEM_PATCH_PX} px stem patch"):
        t.add_column(col, justify="right")
    for r in RATIOS:
        h, w = full.shape
        img = full if r == 1.0 else cv2.resize(full, (round(w * r), round(h * r)),
                                               interpolation=cv2.INTER_AREA)
        mm = measure_staff([img])
        s = float(mm.staff_space_px or 0)
        half = (mm.line_distance_px or 0) / 2
        note = " (reference)" if r == 0.5 else ""
        t.add_row(f"{r:g}{note}", f"{s:.2f}", f"{space * r:.2f}", f"{s - space * r:+.2f}",
                  f"{mm.line_thickness_px:.2f}", f"{half:.2f}",
                  "yes" if half > STEM_PATCH_PX else "no")
    console.print(t)
    console.print(f"target {DEFAULT_STAFF_SPACE_PX:g} px = verovio scale 100 space {space:.1f} "
                  f"px x the reference's 0.5; default data measured {m.staff_space_px:.2f} px "
                  f"-> reduce ratio {ratio_for_staff_space(m.staff_space_px):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
