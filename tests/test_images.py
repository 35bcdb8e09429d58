"""Loading any image as 8-bit RGB the way it looks, and writing PNGs atomically and deterministically."""

import os

import numpy as np
import pytest
from PIL import Image

from copymachine.errors import InputError, OutputError
from copymachine.images import image_info, load_rgb, parse_color, save_png


def _rgb(path):
    return np.asarray(load_rgb(path))


def test_rgb_png_round_trip(tmp_path, scene):
    path = tmp_path / "a.png"
    save_png(scene.image, path)
    loaded = load_rgb(path)
    assert loaded.mode == "RGB" and loaded.size == scene.image.size
    assert np.array_equal(np.asarray(loaded), np.asarray(scene.image))


def test_rgba_is_composited_onto_white_or_the_background(tmp_path):
    a = np.zeros((4, 6, 4), np.uint8)
    a[..., 0] = 200  # red, fully transparent on the left, half on the right, opaque at the bottom
    a[:, 3:, 3] = 128
    a[3, :, 3] = 255
    path = tmp_path / "alpha.png"
    Image.fromarray(a, "RGBA").save(path)
    assert tuple(_rgb(path)[0, 0]) == (255, 255, 255)
    assert tuple(np.asarray(load_rgb(path, background=(0, 0, 255)))[0, 0]) == (0, 0, 255)
    half = _rgb(path)[0, 4]
    assert abs(int(half[0]) - 228) <= 1 and abs(int(half[1]) - 127) <= 1  # 200·½ + 255·½, 255·½
    assert tuple(_rgb(path)[3, 0]) == (200, 0, 0)


def test_palette_with_transparency_and_grey_alpha(tmp_path):
    p = Image.new("P", (4, 4), 1)
    p.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    p.putpixel((0, 0), 0)
    p.info["transparency"] = 0
    p.save(tmp_path / "p.png", transparency=0)
    out = _rgb(tmp_path / "p.png")
    assert tuple(out[0, 0]) == (255, 255, 255) and tuple(out[1, 1]) == (10, 200, 30)
    Image.new("LA", (3, 3), (50, 0)).save(tmp_path / "la.png")
    assert tuple(_rgb(tmp_path / "la.png")[1, 1]) == (255, 255, 255)


@pytest.mark.parametrize("mode, value, expected", [("L", 77, 77), ("1", 1, 255), ("P", 0, 12)])
def test_grey_bilevel_and_palette_become_rgb(tmp_path, mode, value, expected):
    im = Image.new(mode, (5, 3), value)
    if mode == "P":
        im.putpalette([12, 12, 12] + [0] * 765)
    im.save(tmp_path / "x.png")
    out = load_rgb(tmp_path / "x.png")
    assert out.mode == "RGB" and out.size == (5, 3)
    assert tuple(np.asarray(out)[0, 0]) == (expected,) * 3


def test_16_bit_grey_is_scaled_not_clipped(tmp_path):
    a = np.array([[0, 257 * 128, 65535, 1000]], np.uint16)
    Image.fromarray(a).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    out = _rgb(tmp_path / "g16.png")[0, :, 0]
    assert list(out) == [0, 128, 255, 4]  # Pillow's own convert("L") would clip 1000 → 255
    info = image_info(tmp_path / "g16.png")
    assert info["bit_depth"] == 16 and info["has_alpha"] is False


def test_16_bit_rgb_png(tmp_path):
    import cv2

    a = np.zeros((6, 8, 3), np.uint16)
    a[..., 2] = 65535  # cv2 writes BGR: this is red
    a[:, :4, 1] = 32896
    cv2.imwrite(str(tmp_path / "rgb16.png"), a)
    out = load_rgb(tmp_path / "rgb16.png")
    assert out.mode == "RGB" and out.size == (8, 6)
    assert tuple(np.asarray(out)[0, 7]) == (255, 0, 0)
    assert abs(int(np.asarray(out)[0, 0, 1]) - 128) <= 1
    assert image_info(tmp_path / "rgb16.png")["bit_depth"] == 16


@pytest.mark.parametrize("fmt", ["TIFF", "JPEG"])
def test_cmyk_becomes_rgb(tmp_path, fmt):
    path = tmp_path / f"c.{fmt.lower()}"
    Image.new("CMYK", (16, 8), (0, 255, 0, 0)).save(path, format=fmt, quality=95)
    out = load_rgb(path)
    assert out.mode == "RGB" and out.size == (16, 8)
    r, g, b = (int(v) for v in np.asarray(out)[4, 8])
    assert r > 230 and g < 25 and b > 230  # magenta


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_exif_orientation_is_applied(tmp_path, fmt):
    a = np.full((20, 40, 3), 255, np.uint8)
    a[:6, :6] = (255, 0, 0)  # a red mark at the stored top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # the viewer rotates 90° clockwise
    path = tmp_path / f"o.{fmt.lower()}"
    Image.fromarray(a).save(path, format=fmt, exif=exif.tobytes(), quality=95)
    out = np.asarray(load_rgb(path))
    assert out.shape == (40, 20, 3)
    assert out[2, 17, 0] > 200 and out[2, 17, 1] < 60  # the mark is now at the top-right
    info = image_info(path)
    assert info["orientation"] == 6 and info["size"] == [20, 40] and info["stored_size"] == [40, 20]


def _one_line(excinfo, name):
    message = excinfo.value.message
    assert "\n" not in message and name in message
    return message


def test_missing_file_folder_and_non_image(tmp_path):
    with pytest.raises(InputError) as e:
        load_rgb(tmp_path / "nope.png")
    assert _one_line(e, "nope.png") == f"image not found: {tmp_path / 'nope.png'}"
    with pytest.raises(InputError) as e:
        load_rgb(tmp_path)
    _one_line(e, str(tmp_path))
    (tmp_path / "notes.png").write_text("not an image at all")
    with pytest.raises(InputError) as e:
        load_rgb(tmp_path / "notes.png")
    assert "not an image" in _one_line(e, "notes.png")
    with pytest.raises(InputError):
        image_info(tmp_path / "notes.png")


def test_truncated_image(tmp_path, scene):
    scene.image.save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as e:
        load_rgb(tmp_path / "cut.png")
    assert "truncated or corrupt" in _one_line(e, "cut.png")


def test_animated_image_is_refused(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    with pytest.raises(InputError) as e:
        load_rgb(tmp_path / "anim.gif")
    assert "2 frames" in _one_line(e, "anim.gif")
    assert image_info(tmp_path / "anim.gif")["frames"] == 2


def test_image_info(tmp_path):
    Image.new("RGBA", (7, 5)).save(tmp_path / "a.png")
    info = image_info(tmp_path / "a.png")
    assert info == {
        "path": str(tmp_path / "a.png"), "format": "PNG", "mode": "RGBA", "size": [7, 5], "stored_size": [7, 5],
        "frames": 1, "has_alpha": True, "bit_depth": 8, "orientation": 1,
    }


def test_save_png_is_deterministic_and_drops_metadata(tmp_path, scene):
    tagged = scene.image.copy()
    tagged.info.update({"dpi": (300, 300), "icc_profile": b"not really a profile", "exif": b"Exif\x00\x00"})
    save_png(tagged, tmp_path / "a.png")
    save_png(scene.image, tmp_path / "b.png")
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    with Image.open(tmp_path / "a.png") as im:
        assert im.mode == "RGB" and not {"dpi", "icc_profile", "exif"} & set(im.info)


def test_save_png_converts_to_rgb_and_uses_normal_permissions(tmp_path):
    save_png(Image.new("L", (3, 2), 9), tmp_path / "g.png")
    with Image.open(tmp_path / "g.png") as im:
        assert im.mode == "RGB" and im.getpixel((0, 0)) == (9, 9, 9)
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(tmp_path / "g.png").st_mode & 0o777 == 0o666 & ~umask


def test_save_png_is_atomic(tmp_path, scene, monkeypatch):
    target = tmp_path / "out.png"
    target.write_bytes(b"previous")

    def fail(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OutputError) as e:
        save_png(scene.image, target)
    assert "No space left" in _one_line(e, "out.png")
    assert target.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]  # no temporary file left behind


def test_save_png_into_a_missing_folder(tmp_path, scene):
    with pytest.raises(OutputError) as e:
        save_png(scene.image, tmp_path / "no" / "such" / "x.png")
    _one_line(e, "x.png")


def test_parse_color():
    assert parse_color("white") == (255, 255, 255)
    assert parse_color("#102030") == (16, 32, 48)
    assert parse_color("#fff") == (255, 255, 255)
    with pytest.raises(InputError):
        parse_color("blurple")
