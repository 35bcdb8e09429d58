"""Contact sheets with Pillow: a grid of images with a title, headers, row labels and framed columns. Labels
use Pillow's built-in font (ASCII only: other text transliterated or "?", never boxes) unless a font file is
given; each is shrunk, then shortened with "...", to fit its box.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

BACKGROUND = (255, 255, 255)
INK = (0, 0, 0)
FRAME = (220, 30, 30)
MIN_FONT = 9  # px: labels are not shrunk below this; they are shortened instead
ELLIPSIS = "..."


Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


class Fonts:
    def __init__(self, path: str | Path | None = None):
        self.path = str(path) if path else None
        self._cache: dict[int, Font] = {}

    def get(self, size: int) -> Font:
        size = max(1, int(size))
        if size not in self._cache:
            try:
                font = ImageFont.truetype(self.path, size) if self.path else ImageFont.load_default(size=size)
            except TypeError:  # Pillow < 10.1: one fixed bitmap font (every size below is the same one)
                font = ImageFont.load_default()
            self._cache[size] = font
        return self._cache[size]

    def text(self, text: str) -> str:
        return text if self.path else ascii_label(text)


def ascii_label(text: str) -> str:
    """ASCII for the built-in font: accents dropped (é -> e), other characters as '?'."""
    chars = unicodedata.normalize("NFKD", text)
    return "".join((ch if ch.isprintable() else " ") if ord(ch) < 128 else "?" for ch in chars
                   if ord(ch) < 128 or not unicodedata.combining(ch))


def text_width(font: Font, text: str) -> int:
    left, _, right, _ = font.getbbox(text) if text else (0, 0, 0, 0)
    return int(right - min(left, 0))


def line_height(font: Font) -> int:
    _, top, _, bottom = font.getbbox("Ag|")
    return int(bottom - min(top, 0)) + 2


def fit_text(fonts: Fonts, text: str, max_width: int, size: int, min_size: int = MIN_FONT) -> tuple[Font, str]:
    """The largest font from `size` down to `min_size` at which `text` fits; below that, shortened with '...'."""
    text = fonts.text(text)
    for s in range(int(size), int(min_size) - 1, -1):
        font = fonts.get(s)
        if text_width(font, text) <= max_width:
            return font, text
    font = fonts.get(min_size)
    while text and text_width(font, text + ELLIPSIS) > max_width:
        text = text[:-1]
    return font, (text.rstrip() + ELLIPSIS) if text else ""


def wrap_text(fonts: Fonts, text: str, max_width: int, size: int, max_lines: int = 3) -> list[str]:
    """Greedy word wrap into at most `max_lines` lines; the rest joins the last line (`fit_text` fits it)."""
    font = fonts.get(size)
    words = fonts.text(text).split()
    lines: list[str] = []
    for word in words:
        if lines and len(lines) <= max_lines and text_width(font, f"{lines[-1]} {word}") <= max_width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    if len(lines) > max_lines:
        lines = lines[: max_lines - 1] + [" ".join(lines[max_lines - 1 :])]
    return lines or [""]


def draw_fitted(draw: ImageDraw.ImageDraw, fonts: Fonts, box: tuple[int, int, int, int], lines: Sequence[str],
                size: int, pad: int = 4) -> None:
    x0, y0, x1, y1 = box
    fitted = [fit_text(fonts, line, max(1, x1 - x0 - 2 * pad), size) for line in lines]
    heights = [line_height(f) for f, _ in fitted]
    y = (y0 + y1) / 2 - sum(heights) / 2
    for (font, text), h in zip(fitted, heights):
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        draw.text((round((x0 + x1) / 2 - (left + right) / 2), round(y + h / 2 - (top + bottom) / 2)), text, fill=INK,
                  font=font)
        y += h


@dataclass(frozen=True)
class SheetLayout:
    rows: int
    cols: int
    cell: tuple[int, int]
    label_width: int  # the row-label column at the left (0: none)
    header_height: int  # column headers above the grid (0: none)
    title_height: int = 0
    margin: int = 12
    gap: int = 8

    @property
    def grid_origin(self) -> tuple[int, int]:
        x = self.margin + (self.label_width + self.gap if self.label_width else 0)
        y = self.margin + self.title_height + self.header_height
        return x, y

    def cell_box(self, row: int, col: int) -> tuple[int, int, int, int]:
        if not (0 <= row < self.rows and 0 <= col < self.cols):
            raise IndexError((row, col))
        gx, gy = self.grid_origin
        w, h = self.cell
        x = gx + col * (w + self.gap)
        y = gy + row * (h + self.gap)
        return x, y, x + w, y + h

    def header_box(self, col: int) -> tuple[int, int, int, int]:
        x0, y0, x1, _ = self.cell_box(0, col)
        return x0, y0 - self.header_height, x1, y0

    def row_label_box(self, row: int) -> tuple[int, int, int, int]:
        _, y0, _, y1 = self.cell_box(row, 0)
        return self.margin, y0, self.margin + self.label_width, y1

    def title_box(self) -> tuple[int, int, int, int]:
        return self.margin, self.margin, self.size[0] - self.margin, self.margin + self.title_height

    def column_frame(self, col: int, width: int = 3) -> tuple[int, int, int, int]:
        x0, y0, x1, _ = self.header_box(col)
        _, _, _, y1 = self.cell_box(self.rows - 1, col)
        o = width + 1
        return x0 - o, y0 - o + 2, x1 + o - 1, y1 + o - 1

    @property
    def size(self) -> tuple[int, int]:
        _, _, right, bottom = self.cell_box(self.rows - 1, self.cols - 1)
        return right + self.margin, bottom + self.margin


def display_size(size: tuple[int, int], largest: int = 512, smallest: int = 128) -> tuple[int, int]:
    w, h = size
    scale = min(largest, max(smallest, max(w, h))) / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def _fit_cell(image: Image.Image, cell: tuple[int, int]) -> Image.Image:
    if image.size == cell:
        return image
    # display only: nearest neighbour when enlarging (pixels stay visible), Lanczos when reducing
    method = Image.Resampling.NEAREST if image.width < cell[0] else Image.Resampling.LANCZOS
    return image.convert("RGB").resize(cell, method)


def contact_sheet(
    cells: Sequence[Sequence[Image.Image | None]], col_labels: Sequence[Sequence[str]] = (),
    row_labels: Sequence[Sequence[str]] = (), title: str | None = None, framed_cols: Sequence[int] = (),
    font: str | Path | None = None, cell: tuple[int, int] | None = None, font_size: int | None = None,
) -> tuple[Image.Image, SheetLayout]:  # fmt: skip
    """A labelled grid. `cells[row][col]` (None: left blank); each label is a list of lines."""
    rows = len(cells)
    cols = max((len(r) for r in cells), default=0)
    if not rows or not cols:
        raise ValueError("a sheet needs at least one cell")
    first = next(im for r in cells for im in r if im is not None)
    cell = cell or display_size(first.size)
    fonts = Fonts(font)
    size = font_size or max(12, min(20, cell[0] // 10))
    line_h = line_height(fonts.get(size))
    label_width = 0
    if row_labels:
        longest = max(text_width(fonts.get(size), fonts.text(line)) for r in row_labels for line in r)
        label_width = min(max(longest + 8, cell[0] // 2), int(cell[0] * 1.25))
        row_labels = [[w for line in r for w in wrap_text(fonts, line, label_width - 8, size)] for r in row_labels]
    col_labels = [[w for line in c for w in wrap_text(fonts, line, cell[0] - 8, size, max_lines=2)]
                  for c in col_labels]
    header_lines = max((len(c) for c in col_labels), default=0)
    layout = SheetLayout(rows=rows, cols=cols, cell=cell, label_width=label_width,
                         header_height=header_lines * line_h + 6 if header_lines else 0,
                         title_height=len(title.split("\n")) * line_h + 6 if title else 0)
    sheet = Image.new("RGB", layout.size, BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    if title:
        draw_fitted(draw, fonts, layout.title_box(), title.split("\n"), size)  # one line each
    for c, lines in enumerate(col_labels[:cols]):
        draw_fitted(draw, fonts, layout.header_box(c), lines, size)
    for r, lines in enumerate(row_labels[:rows]):
        draw_fitted(draw, fonts, layout.row_label_box(r), lines, size)
    for r, row in enumerate(cells):
        for c, image in enumerate(row):
            if image is not None:
                sheet.paste(_fit_cell(image, cell), layout.cell_box(r, c)[:2])
    for c in framed_cols:
        draw.rectangle(layout.column_frame(c), outline=FRAME, width=3)
    return sheet, layout
