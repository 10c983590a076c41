"""**kern -> verovio SVG -> PNG (grayscale, white paper), with randomised engraving.

Rasterizer: resvg-py. Measured on this 2-core machine (shared with other work) on the same
verovio SVGs: a system (~1270x370 px) 59 ms with resvg-py vs 131 ms with cairosvg; a
2100x2160 page 1.04 s vs 1.13 s. resvg-py wins on speed for systems and, as much, because it is
a self-contained wheel (Rust, no system library), while cairosvg needs the system libcairo that
a fresh pip install cannot provide.

One verovio toolkit per process, created on first use and remembered with the pid that made
it: a toolkit inherited through fork (datasets.map `num_proc` workers, DataLoader workers)
is never used, each process builds its own. Building one costs ~50 ms (font loading), so per
process, not per call.
"""
from __future__ import annotations

import contextlib
import functools
import io
import os
import random
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import numpy as np
from PIL import Image

KINDS = ("system", "page")
PAGE_WIDTH_PX = 2100                  # FP-GrandStaff pages are 2100 px wide

_TOOLKIT: tuple[int, Any] | None = None


class RenderError(RuntimeError):
    """verovio could not read the kern text, or produced nothing."""


def toolkit() -> Any:
    global _TOOLKIT
    if _TOOLKIT is None or _TOOLKIT[0] != os.getpid():
        import verovio
        verovio.enableLog(verovio.LOG_ERROR) if hasattr(verovio, "enableLog") else None
        tk = verovio.toolkit()
        _TOOLKIT = (os.getpid(), tk)
    return _TOOLKIT[1]


@dataclass(frozen=True)
class Engraving:
    """verovio options drawn per image, inside ranges printed scores actually use."""
    scale: int                 # percent; sets the staff size in pixels (100 -> ~18 px staff)
    staff_line_width: float    # staff units; verovio default 0.15
    spacing_staff: int         # between the two staves of the grand staff; default 12
    spacing_system: int        # between systems on a page; default 12
    beam_max_slope: int        # degrees; default 10
    spacing_linear: float      # horizontal spacing model; defaults 0.25 / 0.6
    spacing_non_linear: float

    @classmethod
    def draw(cls, rng: random.Random) -> "Engraving":
        return cls(scale=rng.randint(80, 110), staff_line_width=round(rng.uniform(0.1, 0.3), 2),
                   spacing_staff=rng.randint(8, 14), spacing_system=rng.randint(8, 16),
                   beam_max_slope=rng.randint(4, 14), spacing_linear=round(rng.uniform(0.2, 0.3), 2),
                   spacing_non_linear=round(rng.uniform(0.5, 0.7), 2))


def _options(kind: str, e: Engraving) -> dict[str, Any]:
    opts: dict[str, Any] = {
        "footer": "none", "staffLineWidth": e.staff_line_width, "spacingStaff": e.spacing_staff,
        "spacingSystem": e.spacing_system, "beamMaxSlope": e.beam_max_slope,
        "spacingLinear": e.spacing_linear, "spacingNonLinear": e.spacing_non_linear,
        "adjustPageHeight": True,
    }
    if kind == "system":
        # Small margins: the rasterizer's cost grows with the area, and crop_margins trims
        # the rest; verovio's default margins and header space double a system's pixels.
        opts.update(breaks="none", adjustPageWidth=True, header="none", scale=e.scale,
                    pageMarginTop=20, pageMarginBottom=20, pageMarginLeft=20, pageMarginRight=20)
    else:
        # pageWidth is in verovio units before scaling: divide so the page comes out 2100 px.
        opts.update(breaks="auto", adjustPageWidth=False, header="auto", scale=e.scale,
                    pageWidth=int(PAGE_WIDTH_PX * 100 / e.scale), pageHeight=60000)
    return opts


def kern_to_svg(kern: str, kind: str = "system", engraving: Engraving | None = None) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")
    tk = toolkit()
    e = engraving or Engraving.draw(random.Random(0))
    tk.resetOptions()
    tk.setOptions(_options(kind, e))
    if not tk.loadData(kern):
        raise RenderError(f"verovio could not read the kern text: {tk.getLog().strip()[:200]}")
    if tk.getPageCount() < 1:
        raise RenderError("verovio rendered no page")
    return tk.renderToSVG(1)


def bundled_font(filename: str) -> Path | None:
    """A font file matplotlib (a dependency) ships, e.g. "DejaVuSerif.ttf": the same font on
    every machine, where a bare container may have none. None when it is missing."""
    try:
        import matplotlib
    except ImportError:
        return None
    font = Path(matplotlib.__file__).parent / "mpl-data" / "fonts" / "ttf" / filename
    return font if font.is_file() else None


@functools.lru_cache(maxsize=1)
def _font_kwargs() -> dict[str, Any]:
    """Title and composer are SVG <text> in "Times, serif". Machines differ in fonts (a bare
    container may have none, so titles vanish); DejaVu Serif from matplotlib gives every
    machine the same text. Falls back to the system fonts if it is missing."""
    font = bundled_font("DejaVuSerif.ttf")
    if font is None:
        return {}
    return {"skip_system_fonts": True, "font_files": [str(font)], "font_family": "DejaVu Serif",
            "serif_family": "DejaVu Serif"}


def svg_to_gray(svg: str, rasterizer: str = "resvg") -> np.ndarray:
    """SVG -> uint8 HxW grayscale (0 ink, 255 paper)."""
    if rasterizer == "resvg":
        import resvg_py
        png = bytes(resvg_py.svg_to_bytes(svg_string=svg, background="white", **_font_kwargs()))
    elif rasterizer == "cairosvg":                      # kept for the comparison above
        import cairosvg
        png = cairosvg.svg2png(bytestring=svg.encode("utf-8"), background_color="white")
    else:
        raise ValueError(f"unknown rasterizer {rasterizer!r}")
    return np.asarray(Image.open(io.BytesIO(png)).convert("L"))


def crop_margins(img: np.ndarray, pad: int = 12, threshold: int = 250) -> np.ndarray:
    """Trim white borders to the ink's bounding box plus `pad` px (verovio reserves header
    space above a system that a recogniser should not have to look at)."""
    ink = img < threshold
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    if not len(rows):
        return img
    h, w = img.shape
    y0, y1 = max(0, rows[0] - pad), min(h, rows[-1] + pad + 1)
    x0, x1 = max(0, cols[0] - pad), min(w, cols[-1] + pad + 1)
    return img[y0:y1, x0:x1]


def encode_png(img: np.ndarray | Image.Image, compress_level: int = 1) -> bytes:
    """Grayscale PNG bytes. Level 1: clean scores compress almost as well as at 6 (mostly
    white runs) at a third of the encode time."""
    pil = img if isinstance(img, Image.Image) else Image.fromarray(img, mode="L")
    buf = io.BytesIO()
    pil.save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def render(kern: str, kind: str = "system", seed: int = 0, rasterizer: str = "resvg") -> bytes:
    """kern -> PNG bytes of a grayscale image. `seed` draws the engraving options."""
    engraving = Engraving.draw(random.Random(f"engrave-{seed}"))
    img = svg_to_gray(kern_to_svg(kern, kind, engraving), rasterizer)
    if kind == "system":
        img = crop_margins(img)
    return encode_png(img)


@contextlib.contextmanager
def quiet_datasets() -> Iterator[None]:
    """Silence datasets' own tqdm bars where we show one rich bar for the whole step."""
    import datasets
    was = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was:
            datasets.enable_progress_bars()
