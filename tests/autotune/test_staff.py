"""Staff-space measurement: the run-length modes follow the scale an image is rendered at."""
import numpy as np
import pytest

from autotune.staff import (DEFAULT_STAFF_SPACE_PX, measure_staff, ratio_for_staff_space,
                            run_histograms)


def _render(scale: int) -> np.ndarray:
    from smt.data.kern_gen import generate
    from smt.data.render import Engraving, crop_margins, kern_to_svg, svg_to_gray
    e = Engraving(scale=scale, staff_line_width=0.15, spacing_staff=12, spacing_system=12,
                  beam_max_slope=10, spacing_linear=0.25, spacing_non_linear=0.6)
    return crop_margins(svg_to_gray(kern_to_svg(generate("staff-test", "system"), "system", e)))


def test_space_scales_with_the_render_scale_within_a_pixel():
    small, large = measure_staff([_render(60)]), measure_staff([_render(120)])
    assert small.staff_space_px and large.staff_space_px
    assert abs(large.staff_space_px - 2 * small.staff_space_px) <= 1.0
    assert abs(large.line_distance_px - 2 * small.line_distance_px) <= 1.0
    assert 0.5 <= small.line_thickness_px <= 3.0


def test_space_follows_the_preparation_resize():
    import cv2
    full = _render(100)
    h, w = full.shape
    half = cv2.resize(full, (round(w * 0.5), round(h * 0.5)), interpolation=cv2.INTER_AREA)
    assert abs(measure_staff([half]).staff_space_px
               - 0.5 * measure_staff([full]).staff_space_px) <= 1.0


def test_synthetic_staff_gives_exact_modes():
    img = np.full((120, 300), 255, np.uint8)
    for top in range(10, 110, 12):          # 2 px lines, 10 px spaces
        img[top:top + 2] = 0
    m = measure_staff([img])
    assert m.staff_space_px == pytest.approx(10, abs=0.1)
    assert m.line_thickness_px == pytest.approx(2, abs=0.1)
    white, black = run_histograms(img < 128)
    assert black[2] == 300 * 9 and white[10] == 300 * 8


def test_ratio_never_above_one_and_none_without_a_measurement():
    assert ratio_for_staff_space(16.0) == pytest.approx(DEFAULT_STAFF_SPACE_PX / 16.0)
    assert ratio_for_staff_space(5.0) == 1.0
    assert ratio_for_staff_space(16.0, target_px=4) == 0.25
    assert ratio_for_staff_space(None) is None
    assert measure_staff([np.full((40, 40), 255, np.uint8)]).staff_space_px is None
