"""`copymachine edit` and `copymachine check` as a user runs them."""

import json

import imagekit
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from copymachine.cli import cli
from copymachine.effects import EFFECTS, apply_effect
from copymachine.errors import EXIT_INPUT, EXIT_OUTPUT, EXIT_USAGE


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _pixels(path):
    with Image.open(path) as im:
        assert im.mode == "RGB"
        return np.asarray(im)


def _one_error_line(result, code, *needles):
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and all(n in result.stderr for n in needles), result.stderr
    return lines


def test_list_shows_every_effect_with_parameters_and_defaults():
    result = run("edit", "--list")
    assert result.exit_code == 0
    for name, effect in EFFECTS.items():
        assert f"{name}: {effect.summary}" in result.output
    for text in ("width=1", "mode=thicken", "thicken | xdog", "scale=200.0", "min_size=40", "factor=1.5",
                 "levels=6", "colors=24", "quality=10", "subsampling=4:2:0", "pixels added on each side"):
        assert text in result.output


def test_help_has_examples():
    for command in ("edit", "check"):
        result = run(command, "--help")
        assert result.exit_code == 0 and "Examples:" in result.output and f"copymachine {command} " in result.output


def test_edit_writes_the_effect_and_reports_the_check(tmp_path, scene, scene_path):
    out = tmp_path / "outline.png"
    result = run("edit", "outline", scene_path, out)
    assert result.exit_code == 0, result.output
    assert np.array_equal(_pixels(out), np.asarray(apply_effect("outline", scene.image)))
    assert f"wrote {out} (256x256): outline (mode=thicken)" in result.output
    assert "check ok (corners move 0." in result.output


def test_edit_set_amount_and_compare(tmp_path, scene, scene_path):
    out, sheet = tmp_path / "p.png", tmp_path / "sheet.png"
    result = run("edit", "posterize", scene_path, out, "--set", "levels=3", "--amount", "0.5", "--compare", sheet)
    assert result.exit_code == 0, result.output
    expected = apply_effect("posterize", scene.image, {"levels": 3}, amount=0.5)
    assert np.array_equal(_pixels(out), np.asarray(expected))
    assert "levels=3" in result.output and "amount 0.5" in result.output
    assert Image.open(sheet).size[0] > 3 * 256


def test_edit_is_deterministic(tmp_path, scene_path):
    for name in ("flat", "jpeg"):
        run("edit", name, scene_path, tmp_path / "a.png")
        run("edit", name, scene_path, tmp_path / "b.png")
        assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


def test_edit_composites_transparency_onto_the_background(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[:4, :, :] = (10, 20, 30, 255)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "in.png")
    result = run("edit", "contrast", tmp_path / "in.png", tmp_path / "out.png", "--set", "factor=1", "--background", "#ff8000")
    assert result.exit_code == 0, result.output
    out = _pixels(tmp_path / "out.png")
    assert tuple(out[6, 6]) == (255, 128, 0) and tuple(out[1, 1]) == (10, 20, 30)


def test_edit_too_weak_amount_warns_but_writes(tmp_path, scene_path):
    result = run("edit", "outline", scene_path, tmp_path / "o.png", "--amount", "0.02")
    assert result.exit_code == 0 and (tmp_path / "o.png").exists()
    assert "warning: edit too weak" in result.stderr


def test_edit_refuses_to_overwrite_its_input(tmp_path, scene):
    path = tmp_path / "in.png"
    scene.image.save(path)
    before = path.read_bytes()
    result = run("edit", "outline", path, path)
    _one_error_line(result, EXIT_OUTPUT, "refusing to overwrite the input")
    assert path.read_bytes() == before
    result = run("edit", "outline", path, tmp_path / "o.png", "--compare", path)
    _one_error_line(result, EXIT_OUTPUT, "refusing to overwrite the input")


@pytest.mark.parametrize("args, code, needle", [
    (["sharpen"], EXIT_INPUT, "the effects are: outline, flat, contrast, posterize, jpeg"),
    (["outline", "--set", "widht=2"], EXIT_INPUT, "its parameters are: mode, width"),
    (["outline", "--set", "width=99"], EXIT_INPUT, "width=99: must be 1 to 5"),
    (["outline", "--set", "width"], EXIT_USAGE, "expected KEY=VALUE"),
    (["outline", "--amount", "nan"], EXIT_INPUT, "amount"),
    (["outline", "--background", "blurple"], EXIT_INPUT, "unknown colour"),
])
def test_edit_user_errors_are_one_line(tmp_path, scene_path, args, code, needle):
    result = run("edit", args[0], scene_path, tmp_path / "o.png", *args[1:])
    _one_error_line(result, code, needle)
    assert not (tmp_path / "o.png").exists()


def test_edit_bad_paths(tmp_path, scene_path):
    _one_error_line(run("edit", "outline", tmp_path / "missing.png", tmp_path / "o.png"), EXIT_INPUT, f"image not found: {tmp_path / 'missing.png'}")
    _one_error_line(run("edit", "outline", scene_path, tmp_path / "o.jpg"), EXIT_USAGE, "always written as PNG")
    _one_error_line(run("edit", "outline", scene_path, tmp_path / "no" / "o.png"), EXIT_OUTPUT, "does not exist")
    _one_error_line(run("edit", "outline"), EXIT_USAGE, "give EFFECT IN OUT")


def test_check_ok(tmp_path, scene_path):
    run("edit", "jpeg", scene_path, tmp_path / "j.png")
    result = run("check", scene_path, tmp_path / "j.png")
    assert result.exit_code == 0
    assert "verdict    ok" in result.output and "PSNR" in result.output and "SSIM" in result.output


def test_check_warns_on_a_one_pixel_shift(tmp_path, scene, scene_path):
    imagekit.shifted(apply_effect("flat", scene.image), 1, 0).save(tmp_path / "s.png")
    result = run("check", scene_path, tmp_path / "s.png")
    assert result.exit_code == 0 and "verdict    warn" in result.output and "out of alignment" in result.output


def test_check_refuses_with_exit_3_and_prints_the_report(tmp_path, scene, scene_path):
    imagekit.shifted(apply_effect("flat", scene.image), 3, 2).save(tmp_path / "s.png")
    result = run("check", scene_path, tmp_path / "s.png")
    assert "verdict    refuse" in result.stdout and "out of alignment" in result.stdout
    lines = _one_error_line(result, EXIT_INPUT, "s.png: refused")
    assert len(lines) == 1


def test_check_in_place_notes_what_thick_lines_do_to_the_fit(tmp_path, scene, scene_path):
    apply_effect("outline", scene.image, {"width": 3}).save(tmp_path / "thick.png")
    result = run("check", scene_path, tmp_path / "thick.png")
    assert "verdict    refuse" in result.stdout
    (error,) = [line for line in _one_error_line(result, EXIT_INPUT, "thick.png: refused") if line.startswith("copymachine: error:")]
    assert error.endswith("if you only drew on it without moving it, --in-place")
    result = run("check", scene_path, tmp_path / "thick.png", "--in-place")
    assert result.exit_code == 0, result.output
    assert "verdict    ok" in result.output and "  note: the alignment fit reads the corners as moving" in result.output


def test_edit_of_a_built_in_effect_is_never_out_of_alignment(tmp_path, scene_path):
    result = run("edit", "outline", scene_path, tmp_path / "thick.png", "--set", "width=3")
    assert result.exit_code == 0, result.output
    assert "check ok (corners move" in result.stdout
    assert "note: the alignment fit reads the corners as moving" in result.stderr and "warning" not in result.stderr


def test_check_json_and_compare(tmp_path, scene, scene_path):
    apply_effect("posterize", scene.image).resize((512, 512), Image.Resampling.NEAREST).save(tmp_path / "big.png")
    result = run("check", scene_path, tmp_path / "big.png", "--json")
    assert result.exit_code == EXIT_INPUT
    data = json.loads(result.stdout)
    assert data["verdict"] == "refuse" and data["size_ok"] is False and "reduce(2)" in data["messages"][0]
    assert str(tmp_path / "big.png") in data["messages"][0]
    apply_effect("posterize", scene.image).save(tmp_path / "p.png")
    result = run("check", scene_path, tmp_path / "p.png", "--json", "--compare", tmp_path / "sheet.png")
    assert result.exit_code == 0 and json.loads(result.stdout)["verdict"] == "ok"
    assert (tmp_path / "sheet.png").exists()


def test_check_unrelated_and_unreadable(tmp_path, scene_path):
    imagekit.unrelated(256).save(tmp_path / "u.png")
    result = run("check", scene_path, tmp_path / "u.png")
    assert result.exit_code == EXIT_INPUT and "not the same picture" in result.stdout
    (tmp_path / "t.png").write_text("text")
    _one_error_line(run("check", scene_path, tmp_path / "t.png"), EXIT_INPUT, "t.png: not an image")
