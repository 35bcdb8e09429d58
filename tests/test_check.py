"""The custom-edit check: size, alignment (ECC) and strength, and the compare sheet."""

import json
import math

import cv2
import imagekit
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from copymachine import check
from copymachine.check import check_pair, compare_sheet, format_report
from copymachine.effects import apply_effect


@pytest.fixture(scope="module")
def posterized(scene):
    """A real edit (aligned) that the geometric cases below then move."""
    return apply_effect("posterize", scene.image)


def _rotated(image, degrees, scale=1.0):
    a = np.asarray(image)
    h, w = a.shape[:2]
    m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), degrees, scale)
    return Image.fromarray(cv2.warpAffine(a, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE))


def _has(report, text):
    return any(text in m for m in report.messages)


def test_an_aligned_edit_is_ok(scene, posterized):
    report = check_pair(scene.image, posterized)
    assert report.verdict == "ok" and report.messages == []
    assert report.size_ok and report.corner_shift_px < 0.75
    assert 15 < report.psnr_db < 40 and 0.5 < report.ssim < 1 and report.changed_fraction > 0.5


@pytest.mark.parametrize("dx, dy", [(1, 0), (0, 1), (-1, 0), (2, 0)])
def test_shift_by_one_or_two_pixels_warns(scene, posterized, dx, dy):
    report = check_pair(scene.image, imagekit.shifted(posterized, dx, dy))
    assert report.verdict == "warn" and _has(report, "out of alignment")
    assert abs(report.corner_shift_px - math.hypot(dx, dy)) < 0.15


@pytest.mark.parametrize("dx, dy", [(3, 0), (0, -3), (3, 2), (12, 5)])
def test_shift_by_three_or_more_pixels_is_refused(scene, posterized, dx, dy):
    report = check_pair(scene.image, imagekit.shifted(posterized, dx, dy))
    assert report.verdict == "refuse" and _has(report, "out of alignment")
    assert abs(report.corner_shift_px - math.hypot(dx, dy)) < 0.3


@pytest.mark.parametrize("degrees, scale", [(2.0, 1.0), (-5.0, 1.0), (0.0, 1.03)])
def test_rotated_or_rescaled_content_is_refused(scene, posterized, degrees, scale):
    report = check_pair(scene.image, _rotated(posterized, degrees, scale))
    assert report.verdict == "refuse" and _has(report, "out of alignment")
    assert report.corner_shift_px > check.SHIFT_REFUSE_PX


def test_thick_lines_pull_the_fit_and_in_place_makes_that_a_note(scene):
    """Lines thickened by 3 px spread mostly over their bright side: the fit reads a resize."""
    thick = apply_effect("outline", scene.image, {"width": 3})
    measured = check_pair(scene.image, thick)
    assert measured.verdict == "refuse" and measured.corner_shift_px > check.SHIFT_REFUSE_PX
    report = check_pair(scene.image, thick, in_place=True)
    assert report.corner_shift_px == measured.corner_shift_px
    assert report.verdict == "ok" and report.messages == []
    (note,) = report.notes
    assert f"moving {measured.corner_shift_px:.1f} px" in note and "not a shift" in note
    assert report.as_dict()["notes"] == [note]
    assert f"  note: {note}" in format_report(report)
    # in place takes only the alignment reading off the verdict: the other checks still count
    assert check_pair(scene.image, scene.image.copy(), in_place=True).verdict == "refuse"
    weak = Image.fromarray(np.minimum(np.asarray(scene.image).astype(np.int16) + 1, 255).astype(np.uint8))
    assert _has(check_pair(scene.image, weak, in_place=True), "edit too weak")
    # and an edit that stays under the warning threshold gets no note
    assert check_pair(scene.image, apply_effect("outline", scene.image), in_place=True).notes == []


def test_cropped_and_resized_back_is_refused(scene, posterized):
    w, h = posterized.size
    resized = posterized.crop((4, 4, w - 4, h - 4)).resize((w, h), Image.Resampling.BICUBIC)
    assert check_pair(scene.image, resized).verdict == "refuse"


def test_exact_multiple_size_says_how_to_fix_it(scene, posterized):
    big = posterized.resize((512, 512), Image.Resampling.NEAREST)
    report = check_pair(scene.image, big, edited_name="mine.png")
    assert report.verdict == "refuse" and not report.size_ok
    assert report.corner_shift_px is None and report.psnr_db is None
    (message,) = report.messages
    assert "exactly 2x" in message and "reduce(2)" in message and "mine.png" in message
    # and the fix it suggests restores an aligned edit of the right size
    assert check_pair(scene.image, big.reduce(2)).verdict == "ok"
    small = check_pair(big, posterized)
    assert "the original is exactly 2x" in small.messages[0]


def test_other_size_is_refused(scene, posterized):
    report = check_pair(scene.image, posterized.crop((0, 0, 250, 256)))
    assert report.verdict == "refuse" and "size differs" in report.messages[0] and "exactly" not in report.messages[0]


@pytest.mark.parametrize("other", ["unrelated", "noise", "inverted"])
def test_an_unrelated_picture_is_refused(scene, other):
    edited = {
        "unrelated": imagekit.unrelated(256),
        "noise": Image.fromarray(np.random.default_rng(3).integers(0, 256, (256, 256, 3), dtype=np.uint8)),
        "inverted": Image.fromarray(255 - np.asarray(scene.image)),
    }[other]
    report = check_pair(scene.image, edited)
    assert report.verdict == "refuse" and report.corner_shift_px is None
    assert _has(report, "not the same picture")


def test_a_too_weak_edit_warns(scene):
    brighter = Image.fromarray(np.clip(np.asarray(scene.image).astype(int) + 1, 0, 255).astype(np.uint8))
    report = check_pair(scene.image, brighter)
    assert report.verdict == "warn" and _has(report, "edit too weak")
    assert report.psnr_db > check.WEAK_PSNR_DB and report.corner_shift_px < 0.1
    faint = apply_effect("outline", scene.image, amount=0.03)  # changes pixels, but hardly
    assert _has(check_pair(scene.image, faint), "edit too weak")


def test_a_too_different_edit_warns(scene):
    noisy = np.asarray(scene.image) + np.random.default_rng(0).normal(0, 70, (256, 256, 3))
    report = check_pair(scene.image, Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)))
    assert report.verdict == "warn" and _has(report, "edit too different")
    assert report.ssim < check.DIFFERENT_SSIM and report.corner_shift_px < 1


def test_identical_is_refused_and_serialises(scene):
    report = check_pair(scene.image, scene.image.copy())
    assert report.verdict == "refuse" and _has(report, "identical")
    data = report.as_dict()
    json.dumps(data, allow_nan=False)
    assert data["identical"] is True and data["psnr_db"] is None


def test_as_dict_is_json(scene, posterized):
    data = check_pair(scene.image, posterized).as_dict()
    assert json.loads(json.dumps(data, allow_nan=False)) == data
    assert {"size_ok", "corner_shift_px", "psnr_db", "ssim", "changed_fraction", "verdict", "messages"} <= set(data)


def test_report_text(scene, posterized):
    text = format_report(check_pair(scene.image, imagekit.shifted(posterized, 1, 0)), "a.png", "b.png")
    assert "a.png (256x256)" in text and "verdict    warn" in text and "corners move 1.0" in text
    assert all(len(line) < 240 for line in text.splitlines())


def test_compare_sheet_layout_and_heat_map(tmp_path, scene):
    edited = apply_effect("outline", scene.image)
    compare_sheet(scene.image, edited, tmp_path / "sheet.png")
    sheet = np.asarray(Image.open(tmp_path / "sheet.png"))
    m, w, h = check.SHEET_MARGIN, 256, 256
    assert sheet.shape[1] == 3 * w + 4 * m and sheet.shape[0] > h
    assert np.array_equal(sheet[:h, m:m + w], np.asarray(scene.image))
    assert np.array_equal(sheet[:h, 2 * m + w:2 * m + 2 * w], np.asarray(edited))
    heat = sheet[:h, 3 * m + 2 * w:3 * m + 3 * w].astype(int)
    unchanged = np.all(np.asarray(edited) == np.asarray(scene.image), axis=2)
    assert heat[unchanged].max() < 10  # black where nothing changed
    assert heat[~unchanged].sum(axis=1).mean() > 150  # bright where something did
    assert sheet[h + 2:, :].min() < 100  # the labels are drawn


def test_compare_sheet_works_with_the_old_bitmap_font(tmp_path, scene, monkeypatch):
    bitmap = ImageFont.load_default_imagefont()  # what load_default() returned before Pillow 10.1

    def old_load_default(*args, **kwargs):
        if args or kwargs:
            raise TypeError("load_default() takes no arguments")
        return bitmap

    monkeypatch.setattr(ImageFont, "load_default", old_load_default)
    compare_sheet(scene.image, apply_effect("jpeg", scene.image), tmp_path / "old.png", title="jpeg")
    assert Image.open(tmp_path / "old.png").size[0] == 3 * 256 + 4 * check.SHEET_MARGIN


@pytest.mark.parametrize("drawing, effect", [("circle", "jpeg"), ("text", "contrast"), ("text", "jpeg")])
def test_a_sparse_picture_still_aligns(drawing, effect):
    """One thin circle, or a word of tiny text, on a flat ground: on such pictures the affine fit
    alone does not converge, or wanders off, at the coarse pyramid levels."""
    image = Image.new("RGB", (512, 512), (240, 240, 240) if drawing == "circle" else (200, 220, 240))
    draw = ImageDraw.Draw(image)
    if drawing == "circle":
        draw.ellipse([200, 200, 260, 260], outline=(0, 0, 0), width=3)
    else:
        draw.text((100, 100), "hello", fill=(0, 0, 0), font=ImageFont.load_default_imagefont())
    report = check_pair(image, apply_effect(effect, image))
    assert report.corner_shift_px is not None and report.corner_shift_px < 0.75
    assert report.verdict != "refuse"
