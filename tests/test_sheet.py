"""Contact sheets: cell positions, labels that fit, the frame; and the compare sheet's labels."""

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from copymachine import check
from copymachine.check import compare_sheet
from copymachine.effects import apply_effect
from copymachine.sheet import FRAME, Fonts, SheetLayout, ascii_label, contact_sheet, display_size, fit_text, text_width

COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200)]


def solid(colour, size=(64, 64)):
    return Image.new("RGB", size, colour)


def test_layout_positions_are_a_regular_grid():
    layout = SheetLayout(rows=2, cols=3, cell=(100, 80), label_width=50, header_height=20, title_height=16, margin=10, gap=5)
    assert layout.grid_origin == (10 + 50 + 5, 10 + 16 + 20)
    assert layout.cell_box(0, 0) == (65, 46, 165, 126)
    assert layout.cell_box(1, 2) == (65 + 2 * 105, 46 + 85, 65 + 2 * 105 + 100, 46 + 85 + 80)
    assert layout.header_box(1) == (170, 26, 270, 46)
    assert layout.row_label_box(1) == (10, 131, 60, 211)
    assert layout.size == (65 + 3 * 100 + 2 * 5 + 10, 46 + 2 * 80 + 5 + 10)
    with pytest.raises(IndexError):
        layout.cell_box(2, 0)
    # the frame of a column encloses its header and every cell, inside the gaps
    x0, y0, x1, y1 = layout.column_frame(1)
    assert x0 < 170 and x1 >= 270 and y0 < 26 and y1 >= 46 + 85 + 80
    assert x0 > layout.cell_box(0, 0)[2] and x1 < layout.cell_box(0, 2)[0]


def test_contact_sheet_places_cells_labels_and_frame():
    grid = [[solid(c) for c in COLOURS], [solid(c) for c in reversed(COLOURS)]]
    sheet, layout = contact_sheet(
        grid,
        col_labels=[["-1"], ["-0.5"], ["0 (off)"], ["+0.5"], ["+1"]],
        row_labels=[["a prompt", "seed 1"], ["a prompt", "seed 2"]],
        title="lora on model",
        framed_cols=[2],
    )
    a = np.asarray(sheet)
    assert sheet.size == layout.size
    assert layout.cell == (128, 128)  # 64 px images shown at 128 (nearest neighbour)
    for r, row in enumerate(grid):
        for c, im in enumerate(row):
            x0, y0, x1, y1 = layout.cell_box(r, c)
            assert (a[y0:y1, x0:x1] == im.getpixel((0, 0))).all()
    # labels are drawn: ink in every header, row label and the title
    for c in range(5):
        x0, y0, x1, y1 = layout.header_box(c)
        assert a[y0:y1, x0:x1].min() < 100
    for r in range(2):
        x0, y0, x1, y1 = layout.row_label_box(r)
        assert a[y0:y1, x0:x1].min() < 100
    x0, y0, x1, y1 = layout.title_box()
    assert a[y0:y1, x0:x1].min() < 100
    # the frame: red around column 2 only
    red = np.all(a == FRAME, axis=2)
    fx0, fy0, fx1, fy1 = layout.column_frame(2)
    assert red[fy0 + 1 : fy1, fx0].all() and red[fy0 + 1 : fy1, fx1 - 1].all()
    assert red[fy1 - 1, fx0 : fx1].all()
    left_gap = slice(layout.cell_box(0, 0)[2], layout.cell_box(0, 1)[0])
    assert not red[:, left_gap].any()


def test_contact_sheet_scales_large_images_down_and_leaves_gaps_blank():
    grid = [[solid((10, 10, 10), (1024, 768)), None]]
    sheet, layout = contact_sheet(grid)
    assert layout.cell == (512, 384) and layout.label_width == 0 and layout.header_height == 0
    x0, y0, x1, y1 = layout.cell_box(0, 1)
    assert (np.asarray(sheet)[y0:y1, x0:x1] == 255).all()
    assert display_size((64, 32)) == (128, 64) and display_size((300, 200)) == (300, 200)


def test_long_labels_shrink_then_shorten():
    fonts = Fonts()
    short_font, text = fit_text(fonts, "0 (off)", 200, 20)
    assert text == "0 (off)" and short_font.size == 20
    font, text = fit_text(fonts, "a rather long label that needs a smaller font", 200, 20)
    assert text.startswith("a rather long") and font.size < 20 and text_width(font, text) <= 200
    font, text = fit_text(fonts, "x" * 500, 100, 20)
    assert text.endswith("...") and text_width(font, text) <= 100 and font.size == 9


def test_labels_are_ascii_with_the_builtin_font():
    assert ascii_label("café 猫 ok") == "cafe ? ok"
    assert Fonts().text("猫") == "?"


def test_a_font_file_is_used_as_is():
    from pathlib import Path

    candidates = sorted(Path("/usr/share/fonts").glob("**/*.ttf")) + sorted(Path("C:/Windows/Fonts").glob("*.ttf"))
    if not candidates:
        pytest.skip("no .ttf font on this machine")
    fonts = Fonts(candidates[0])
    assert fonts.text("猫") == "猫" and fonts.get(15).size == 15
    sheet, _ = contact_sheet([[solid((0, 0, 0))]], col_labels=[["label"]], font=candidates[0])
    assert sheet.size[0] > 128


def test_compare_sheet_labels_fit_small_panels(tmp_path, scene):
    """At 128 px panels the third label ('difference (dE 0-NN, sqrt scale)') used to run past its
    panel and off the sheet; now it is shrunk to the panel's width."""
    small = scene.image.resize((128, 128), Image.Resampling.LANCZOS)
    compare_sheet(small, apply_effect("outline", small), tmp_path / "sheet.png")
    a = np.asarray(Image.open(tmp_path / "sheet.png"))
    m, w = check.SHEET_MARGIN, 128
    labels = a[w:, :]
    assert labels.min() < 100  # drawn
    ink = labels.min(axis=(0, 2)) < 160
    panels = np.zeros(a.shape[1], bool)
    for i in range(3):
        panels[m + i * (w + m) : m + i * (w + m) + w] = True
    assert not ink[~panels].any(), "a label reaches outside its panel"
    third = ink[m + 2 * (w + m) : m + 2 * (w + m) + w]
    assert third[:8].any() or third.sum() > 60  # the third label is there, using its width


def test_compare_sheet_with_the_old_bitmap_font_still_fits(tmp_path, scene, monkeypatch):
    bitmap = ImageFont.load_default_imagefont()

    def old_load_default(*args, **kwargs):
        if args or kwargs:
            raise TypeError("load_default() takes no arguments")
        return bitmap

    monkeypatch.setattr(ImageFont, "load_default", old_load_default)
    small = scene.image.resize((128, 128))
    compare_sheet(small, apply_effect("jpeg", small), tmp_path / "old.png")
    d = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    assert d.textlength("difference", font=bitmap) < 128
