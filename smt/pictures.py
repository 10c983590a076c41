"""See what the model read: one PNG per score image, the image above its predicted **kern
engraved back (and the truth engraved below it, with the SER, where the truth is known).

Written by `smt.predict --render DIR` and at the end of every training run (a few validation
samples, `smt.train.pictures`). A kern that does not engrave (verovio refuses it, crashes on
it or draws nothing: `smt.engrave`) is drawn as text, with the reason in its caption, so a
picture is always written. Each picture comes with a `Picture` record of what each panel is.
"""
from __future__ import annotations

import functools
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Every panel is scaled to one common width, so the engraved staves lie under the input's
# and a user compares them measure by measure. The input's own width, kept within bounds:
# below 640 px captions and engraved noteheads become unreadable (the test systems are ~300
# px wide); above 1400 px a picture no longer fits a laptop screen and a page's PNG grows
# past a few MB for no gain in legibility.
WIDTH_MIN, WIDTH_MAX = 640, 1400
# A full page at 1400 px wide is ~1980 px tall; a cap just above keeps a page's picture (three
# panels) under ~6500 px tall; a taller panel (a runaway prediction) is scaled down to fit.
PANEL_MAX_HEIGHT = 2000
# Text: 14 px DejaVu Sans Mono (~8.4 px a character) puts ~160 characters on a 1400 px line,
# more than a 4-spine kern record; 60 lines show a system's kern whole and a page's start.
FONT_PX, CAPTION_PX, LINE_GAP = 14, 16, 4
TEXT_LINES_MAX = 60
PAD = 8                          # around captions and panels
# An image taller than 0.6 of its width is a page (systems are ~0.3, pages ~1.4): its kern
# engraves as a page with line breaks, not as one system many metres long.
PAGE_ASPECT = 0.6

ROLES = ("input", "prediction", "truth")
KINDS = ("image", "engraved", "text")


@dataclass(frozen=True)
class Sample:
    """What one picture shows: `image` as the model read it (uint8 HxW, 0 ink, 255 paper)."""
    name: str                    # the picture's file stem and title
    image: np.ndarray
    prediction: str
    truth: str | None = None     # None: unknown, no truth panel and no SER


@dataclass(frozen=True)
class Panel:
    """One panel of a picture: `role` (ROLES) shown as `kind` (KINDS); `reason` says why a
    kern is shown as text; `box` is (left, top, right, bottom) of its pixels, caption excluded."""
    role: str
    kind: str
    caption: str
    reason: str | None
    box: tuple[int, int, int, int]


@dataclass(frozen=True)
class Picture:
    path: Path
    size: tuple[int, int]        # (width, height) px
    title: str
    panels: tuple[Panel, ...]
    ser: float | None            # the prediction's SER (%) against the truth, None without

    def panel(self, role: str) -> Panel | None:
        return next((p for p in self.panels if p.role == role), None)


@functools.lru_cache(maxsize=4)
def _font(px: int) -> Any:
    from smt.data.render import bundled_font
    path = bundled_font("DejaVuSansMono.ttf")
    return ImageFont.truetype(str(path), px) if path else ImageFont.load_default(px)


def _char_width(font: Any) -> float:
    return max(1.0, font.getlength("M"))


def _text_block(lines: Sequence[str], width: int, px: int) -> Image.Image:
    """`lines` in a monospace font on white, `width` px wide; lines too long are cut with …"""
    font = _font(px)
    per_line = max(8, int((width - 2 * PAD) // _char_width(font)))
    cut = [ln if len(ln) <= per_line else ln[:per_line - 1] + "…" for ln in lines]
    height = 2 * PAD + max(1, len(cut)) * (px + LINE_GAP)
    img = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(img)
    for i, ln in enumerate(cut):
        draw.text((PAD, PAD + i * (px + LINE_GAP)), ln, fill=0, font=font)
    return img


def _caption(text: str, width: int) -> Image.Image:
    per_line = max(8, int((width - 2 * PAD) // _char_width(_font(CAPTION_PX))))
    return _text_block(textwrap.wrap(text, per_line) or [""], width, CAPTION_PX)


def kern_as_text(kern: str, width: int) -> Image.Image:
    """The kern drawn as text (tabs as spaces), at most TEXT_LINES_MAX lines; blank space
    alone is said, not drawn (a page of empty lines shows nothing)."""
    if not kern.strip():
        return _text_block([f"({kern.count(chr(10))} line break(s) and nothing else)"
                            if kern else "(nothing)"], width, FONT_PX)
    lines = kern.rstrip("\n").expandtabs(8).split("\n")
    if len(lines) > TEXT_LINES_MAX:
        lines = lines[:TEXT_LINES_MAX - 1] + [f"... {len(lines) - TEXT_LINES_MAX + 1} more lines"]
    return _text_block(lines, width, FONT_PX)


def fit(image: np.ndarray | Image.Image, width: int, max_height: int = PANEL_MAX_HEIGHT,
        scale: float | None = None) -> Image.Image:
    """`image` scaled to `width` px wide (or by `scale`, at most `width` wide), and smaller
    where that would pass `max_height`."""
    img = image if isinstance(image, Image.Image) else Image.fromarray(image, mode="L")
    w, h = img.size
    s = min(width / w, max_height / h, scale if scale is not None else width / w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return img.convert("L").resize(size, Image.Resampling.LANCZOS)


def engraving_kind(image: np.ndarray) -> str:
    """"page" or "system" (smt.data.render.KINDS): how the image's kern is engraved."""
    h, w = image.shape[:2]
    return "page" if h > PAGE_ASPECT * w else "system"


def sample_ser(prediction: str, truth: str, fmt: str) -> tuple[float | None, str]:
    """(SER %, the one line saying it) of `prediction` against `truth`."""
    from smt.metrics import default_tokenizer, ser
    try:
        reference = default_tokenizer(fmt)(truth)
        n = len(reference)
        value = ser([prediction], [reference], fmt)
    except ValueError as exc:            # TokenizeError included: a truth we cannot score
        return None, f"SER n/a ({exc})"
    return value, f"SER {value:.1f}% (prediction against the truth's {n} tokens)"


def compose(sample: Sample, engraver: Any, fmt: str) -> tuple[Image.Image, str,
                                                             list[Panel], float | None]:
    """(the picture, its title, its panels, the SER) of one sample; `engraver` is an
    `smt.engrave.Engraver`."""
    h, w = sample.image.shape[:2]
    width = min(WIDTH_MAX, max(WIDTH_MIN, w))
    kind = engraving_kind(sample.image)
    ser_value, ser_line = (sample_ser(sample.prediction, sample.truth, fmt)
                           if sample.truth is not None else (None, "no truth known: no SER"))
    title = f"{sample.name}: {ser_line}"
    kerns = [(role, kern) for role, kern in (("prediction", sample.prediction),
                                             ("truth", sample.truth)) if kern is not None]
    done = [engraver.engrave(kern, kind) for _, kern in kerns]
    # One scale for both engravings (the wider fills the width): the staves come out the same
    # size, so a prediction that stops after two measures looks shorter, not magnified.
    widths = [d.image.shape[1] for d in done if d.image is not None]
    scale = width / max(widths) if widths else None
    parts: list[tuple[str, str, str, str | None, Image.Image]] = [
        ("input", "image", f"input: the image as the model read it ({w}x{h} px)", None,
         fit(sample.image, width))]
    for (role, kern), d in zip(kerns, done):
        if d.image is not None:
            parts.append((role, "engraved", f"{role}: engraved by verovio", None,
                          fit(d.image, width, scale=scale)))
        else:
            parts.append((role, "text", f"{role}: shown as text, it does not engrave: {d.reason}",
                          d.reason, kern_as_text(kern, width)))

    title_block = _caption(title, width)
    placed: list[tuple[Image.Image, int]] = [(title_block, 0)]     # (block, its top)
    panels: list[Panel] = []
    top = title_block.height
    for role, how, caption, reason, img in parts:
        cap = _caption(caption, width)
        placed += [(cap, top), (img, top + cap.height)]
        top += cap.height
        panels.append(Panel(role, how, caption, reason, (0, top, img.width, top + img.height)))
        top += img.height + PAD                                   # a gap after each panel
    canvas = Image.new("L", (width, top), 255)
    for block, y in placed:
        canvas.paste(block, (0, y))
    return canvas, title, panels, ser_value


def write_pictures(out_dir: Path, samples: Sequence[Sample], fmt: str,
                   show_progress: bool = True) -> list[Picture]:
    """OUT_DIR/<name>.png for each sample (created as needed), with a progress bar on stderr;
    returns what each picture shows."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from smt.data.render import encode_png
    from smt.engrave import Engraver

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pictures: list[Picture] = []
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        console=Console(stderr=True), disable=not show_progress)
    with Engraver() as engraver, progress:
        task = progress.add_task("engraving pictures", total=len(samples))
        for sample in samples:
            canvas, title, panels, ser_value = compose(sample, engraver, fmt)
            path = out_dir / f"{sample.name}.png"
            path.write_bytes(encode_png(canvas, compress_level=6))
            pictures.append(Picture(path, canvas.size, title, tuple(panels), ser_value))
            progress.advance(task)
    return pictures
