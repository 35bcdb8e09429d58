"""The built-in effects: registry and parameters, and for each effect a property that can fail."""

import io
import json

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from copymachine.check import check_pair
from copymachine.effects import EFFECTS, apply_effect, names, resolve_params
from copymachine.effects.jpeg import parse_qualities
from copymachine.errors import InputError

ALIGNMENT_LIMIT_PX = 0.75
VARIANTS = [(name, {"mode": mode}) for name, e in EFFECTS.items() for mode in e.params["mode"].choices]
VARIANT_IDS = [f"{name}-{params['mode']}" for name, params in VARIANTS]


def luma(image):
    return cv2.cvtColor(np.asarray(image), cv2.COLOR_RGB2GRAY).astype(np.int32)


def png_bytes(image):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def edited(scene):
    """Every variant applied once to the scene (several tests look at the same results)."""
    return {(name, params["mode"]): apply_effect(name, scene.image, params) for name, params in VARIANTS}


# --- registry and parameters ------------------------------------------------------------------


def test_registry_order_and_shape():
    assert names() == ["outline", "flat", "contrast", "posterize", "jpeg"]
    for name, effect in EFFECTS.items():
        assert effect.name == name and effect.summary and "\n" not in effect.summary
        assert effect.params["mode"].choices and effect.params["mode"].default == effect.params["mode"].choices[0]
        for key, param in effect.params.items():
            assert param.help, f"{name}.{key} has no help"
            assert resolve_params(name, {key: param.default})[key] == param.default  # defaults pass their own checks


def test_resolve_params_is_complete_typed_and_json_serialisable():
    for name, effect in EFFECTS.items():
        params = resolve_params(name, {})
        assert list(params) == list(effect.params)
        assert json.loads(json.dumps(params)) == params
    params = resolve_params("outline", {"width": "2", "opacity": "0.5", "mode": "xdog"})
    assert params["width"] == 2 and params["opacity"] == 0.5 and params["mode"] == "xdog"
    assert resolve_params("flat", {"keep_lines": "false"})["keep_lines"] is False
    assert resolve_params("flat", {"keep_lines": True, "scale": 300})["scale"] == 300.0
    assert resolve_params("posterize", {"levels": 4.0})["levels"] == 4


@pytest.mark.parametrize("name, overrides, expected", [
    ("outline", {"widht": "2"}, "width"),  # unknown key: the valid ones are named
    ("outline", {"width": "two"}, "width=two"),
    ("outline", {"width": "9"}, "1 to 5"),
    ("outline", {"width": 1.5}, "width=1.5"),
    ("outline", {"mode": "canny"}, "thicken, xdog"),
    ("flat", {"keep_lines": "maybe"}, "true | false"),
    ("contrast", {"factor": "nan"}, "factor=nan"),
    ("jpeg", {"qualities": "10,,200"}, "qualities"),
    ("jpeg", {"subsampling": "4:1:1"}, "4:2:0"),
    ("sharpen", {}, "outline, flat, contrast, posterize, jpeg"),  # unknown effect: the known ones are listed
])
def test_resolve_params_refuses_bad_input(name, overrides, expected):
    with pytest.raises(InputError) as e:
        resolve_params(name, overrides)
    assert expected in e.value.message and "\n" not in e.value.message


def test_unknown_effect_in_apply_effect(scene):
    with pytest.raises(InputError) as e:
        apply_effect("sharpen", scene.image)
    assert "outline, flat" in e.value.message


# --- every effect: same size and mode, deterministic, aligned ------------------------------------


@pytest.mark.parametrize("name, params", VARIANTS, ids=VARIANT_IDS)
def test_size_mode_and_determinism_on_an_odd_sized_image(scene, name, params):
    image = scene.image.crop((10, 20, 10 + 141, 20 + 99))  # not a multiple of 8 or 16
    first = apply_effect(name, image, params)
    second = apply_effect(name, image.copy(), params)
    assert first.mode == "RGB" and first.size == image.size
    assert png_bytes(first) == png_bytes(second)
    assert not np.array_equal(np.asarray(first), np.asarray(image)), "the effect changed nothing"


@pytest.mark.parametrize("name, params", VARIANTS, ids=VARIANT_IDS)
def test_every_effect_stays_aligned(scene, edited, name, params):
    report = check_pair(scene.image, edited[(name, params["mode"])])
    assert report.corner_shift_px is not None
    assert report.corner_shift_px < ALIGNMENT_LIMIT_PX
    assert report.verdict != "refuse"


# JPEG blocks start at the top-left, the segmentation and the regions' nearest-label fill break ties in scan order, L0 thresholds
# forward differences and k-means fits its palette on a grid sample: those are covered by the ECC
# alignment test instead.
MIRROR_EXEMPT = {"jpeg-single", "jpeg-passes", "flat-regions", "flat-segment", "flat-l0", "posterize-kmeans"}
MIRROR_VARIANTS = [v for v, i in zip(VARIANTS, VARIANT_IDS) if i not in MIRROR_EXEMPT]


@pytest.mark.parametrize("name, params", MIRROR_VARIANTS, ids=[i for i in VARIANT_IDS if i not in MIRROR_EXEMPT])
def test_no_half_pixel_shift_mirror_symmetry(scene, name, params):
    """Effects built from centred kernels commute with mirroring; an even kernel would not."""
    image = scene.image.crop((0, 0, 128, 128))
    for flip in (Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.FLIP_TOP_BOTTOM):
        a = np.asarray(apply_effect(name, image.transpose(flip), params).transpose(flip)).astype(int)
        b = np.asarray(apply_effect(name, image, params)).astype(int)
        assert np.mean(np.abs(a - b) > 2) < 0.002, f"{name}: mirrored result differs ({flip})"


def test_amount_blends_with_the_original(scene):
    original = np.asarray(scene.image).astype(int)
    full = np.asarray(apply_effect("contrast", scene.image)).astype(int)
    assert np.array_equal(np.asarray(apply_effect("contrast", scene.image, amount=0.0)), original)
    half = np.asarray(apply_effect("contrast", scene.image, amount=0.5)).astype(int)
    assert np.array_equal(half, np.floor(original + 0.5 * (full - original) + 0.5).astype(int))
    double = np.asarray(apply_effect("contrast", scene.image, amount=2.0)).astype(int)
    assert np.array_equal(double, np.clip(original + 2 * (full - original), 0, 255))
    inverse = apply_effect("contrast", scene.image, amount=-1.0)
    assert luma(inverse).std() < luma(scene.image).std()  # negative amount: the opposite effect
    for bad in (float("nan"), float("inf"), 2.01, -2.5, 100.0):
        with pytest.raises(InputError):
            apply_effect("contrast", scene.image, amount=bad)


def test_non_rgb_input_is_converted(scene):
    grey = scene.image.convert("L")
    out = apply_effect("posterize", grey)
    assert out.mode == "RGB" and out.size == grey.size


# --- outline ----------------------------------------------------------------------------------


def _distance_to_dark(image, threshold=128):
    dark = luma(image) < threshold
    return cv2.distanceTransform((~dark).astype(np.uint8), cv2.DIST_L2, 5)


def test_outline_darkens_next_to_lines_and_leaves_the_rest(scene, edited):
    out = edited[("outline", "thicken")]
    before, after = luma(scene.image), luma(out)
    ring = (cv2.distanceTransform((~scene.lines).astype(np.uint8), cv2.DIST_L2, 5) == 1)
    assert np.mean(after[ring] < before[ring] - 10) > 0.85  # the pixels beside a line get (much) darker
    far = _distance_to_dark(scene.image) > 3
    assert np.array_equal(np.asarray(out)[far], np.asarray(scene.image)[far])  # bit for bit
    assert np.all(after <= before + 1)  # it only darkens


def test_outline_width_grows_the_line(scene):
    widths = [np.sum(luma(apply_effect("outline", scene.image, {"width": w})) < 100) for w in (1, 2, 3)]
    assert np.sum(luma(scene.image) < 100) < widths[0] < widths[1] < widths[2]


def test_outline_keeps_the_hue_of_a_coloured_line(scene, edited):
    # the mouth is a dark red stroke on skin: the pixels it grows into become red, not black
    a, b = np.asarray(scene.image).astype(int), np.asarray(edited[("outline", "thicken")]).astype(int)
    mouth = (a[..., 0] - a[..., 1] > 60) & (luma(scene.image) < 110)
    mouth[:, :110] = mouth[:, 150:] = mouth[:125] = mouth[145:] = False  # the mouth only, not the shirt
    grown = cv2.dilate(mouth.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool) & ~mouth
    newly_dark = grown & (luma(edited[("outline", "thicken")]) < luma(scene.image) - 30)
    assert newly_dark.sum() > 20
    assert np.all(b[newly_dark, 0] - b[newly_dark, 1] > 50)


def test_outline_large_dark_fills_are_not_line_art():
    # a 40 px dark disc is a fill, not a stroke: its surroundings stay as they were
    a = np.full((96, 96, 3), 235, np.uint8)
    cv2.circle(a, (48, 48), 20, (30, 30, 60), -1, lineType=cv2.LINE_AA)
    out = np.asarray(apply_effect("outline", Image.fromarray(a)))
    assert np.mean(np.any(out != a, axis=2)) < 0.01


def test_outline_xdog_adds_lines_at_edges_only(scene, edited):
    out = edited[("outline", "xdog")]
    for name in ("sky", "face", "ground"):
        interior = cv2.erode(scene.regions[name].astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        assert np.mean(np.abs(luma(out)[interior] - luma(scene.image)[interior]) > 3) < 0.02
    assert np.all(luma(out) <= luma(scene.image) + 1)
    assert np.sum(luma(out) < luma(scene.image) - 20) > 300


# --- flat -------------------------------------------------------------------------------------


def _texture(image, region):
    """Mean squared distance of each pixel from its 5×5 neighbourhood mean, inside `region` (whose
    border is left out, so that the step to a neighbouring fill does not count)."""
    a = np.asarray(image).astype(np.float32)
    inner = cv2.erode(region.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    return float(((a - cv2.blur(a, (5, 5))) ** 2)[inner].mean())


@pytest.mark.parametrize("mode", ["regions", "segment", "meanshift", "l0"])
def test_flat_lowers_colour_variance_and_keeps_lines(scene, edited, mode):
    out = edited[("flat", mode)]
    for name in ("sky", "face", "shirt", "ground"):
        region = scene.regions[name]
        before, after = _texture(scene.image, region), _texture(out, region)
        assert after < 0.5 * before, f"{mode}: {name} local variance {before:.2f} → {after:.2f}"
    lines = scene.lines
    assert np.mean(np.abs(luma(out)[lines] - luma(scene.image)[lines])) < 4


def test_flat_segment_removes_gradients_and_shading(scene, edited):
    a, b = np.asarray(scene.image), np.asarray(edited[("flat", "segment")])
    for name in ("sky", "face", "shirt", "ground"):
        region = scene.regions[name]
        assert b[region].astype(float).std(axis=0).mean() < 0.5 * a[region].astype(float).std(axis=0).mean(), name
        assert len(np.unique(b[region], axis=0)) < 0.05 * len(np.unique(a[region], axis=0)), name
    assert b[scene.regions["sky"]].astype(float).std(axis=0).mean() < 0.5  # the gradient sky: one colour


def test_flat_segment_fills_with_few_colours(scene, edited):
    b = np.asarray(edited[("flat", "segment")])
    sky = scene.regions["sky"]
    assert len(np.unique(np.asarray(scene.image)[sky], axis=0)) > 200
    assert len(np.unique(b[sky], axis=0)) < 12


@pytest.fixture(scope="module")
def ball():
    import imagekit

    return imagekit.ball(256)


def _spread(image, region):
    """Colour spread inside a region: the mean over R, G, B of the standard deviation."""
    return float(np.asarray(image)[region].astype(np.float64).std(axis=0).mean())


def test_flat_default_empties_a_shaded_region_of_its_shading(ball):
    """A ball lit from one side, inside its outline, with a patch of another colour: the default
    fills the ball and the patch each with one colour (spread 34.4 and 25.7 -> about 1 and 0.2),
    keeps them apart and keeps the outline. The other modes leave most of the shading."""
    assert resolve_params("flat")["mode"] == "regions"
    out = apply_effect("flat", ball.image)
    for name, before_min, after_max in (("ball", 30.0, 2.0), ("band", 20.0, 1.0), ("floor", 10.0, 0.5)):
        assert _spread(ball.image, ball.regions[name]) > before_min, name
        assert _spread(out, ball.regions[name]) < after_max, f"{name}: spread {_spread(out, ball.regions[name]):.2f}"
    a = np.asarray(out).astype(int)
    fill = {name: np.median(a[ball.regions[name]], axis=0) for name in ("ball", "band")}
    assert np.abs(fill["ball"] - fill["band"]).sum() > 60  # two colours, not one
    assert np.mean(np.abs(luma(out)[ball.lines] - luma(ball.image)[ball.lines])) < 4  # the outline stays
    for mode in ("segment", "meanshift", "l0"):
        other = apply_effect("flat", ball.image, {"mode": mode})
        assert _spread(other, ball.regions["ball"]) > 2 * _spread(out, ball.regions["ball"]), mode


def test_flat_regions_keeps_small_fills_and_highlights(scene):
    """A pupil (a small dark fill inside the iris) and the 2 px highlight on the hair are regions
    of their own, at every size."""
    import imagekit

    for size in (256, 512):
        s = size / 256
        image = imagekit.scene(size).image
        out = np.asarray(apply_effect("flat", image)).astype(int)
        original = np.asarray(image).astype(int)
        for ex in (107, 148):
            box = np.s_[int(114 * s):int(122 * s), int((ex - 3) * s):int((ex + 3) * s)]
            assert np.abs(out[box].mean(axis=(0, 1)) - original[box].mean(axis=(0, 1))).max() < 8, (size, ex)
        highlight = np.s_[int(40 * s):int(52 * s), int(112 * s):int(136 * s)]
        assert luma(Image.fromarray(out[highlight].astype(np.uint8))).max() > 180, size


def test_flat_without_keep_lines_loses_them(scene):
    off = apply_effect("flat", scene.image, {"keep_lines": False})
    on = apply_effect("flat", scene.image)
    lines = scene.lines
    error = lambda img: np.mean(np.abs(luma(img)[lines] - luma(scene.image)[lines]))  # noqa: E731
    assert error(on) < error(off)


# --- contrast ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["linear", "scurve"])
def test_contrast_raises_the_luminance_spread(scene, edited, mode):
    assert luma(edited[("contrast", mode)]).std() > 1.2 * luma(scene.image).std()


def test_contrast_factor_one_is_a_no_op_and_scurve_keeps_the_ends(scene):
    assert np.array_equal(np.asarray(apply_effect("contrast", scene.image, {"factor": 1.0})), np.asarray(scene.image))
    ramp = Image.fromarray(np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2))
    out = np.asarray(apply_effect("contrast", ramp, {"mode": "scurve"}))[0, :, 0].astype(int)
    assert out[0] == 0 and out[255] == 255 and np.all(np.diff(out) >= 0)


# --- posterize --------------------------------------------------------------------------------


@pytest.mark.parametrize("levels", [2, 4, 6, 8])
def test_posterize_leaves_at_most_levels_values_per_channel(scene, levels):
    out = np.asarray(apply_effect("posterize", scene.image, {"levels": levels}))
    for c in range(3):
        assert len(np.unique(out[..., c])) <= levels
    assert len(np.unique(out[..., 2])) >= 2


def test_posterize_keeps_white_white_unlike_imageops(scene):
    white = Image.new("RGB", (16, 16), (255, 255, 255))
    assert np.all(np.asarray(apply_effect("posterize", white, {"levels": 4})) == 255)
    assert np.all(np.asarray(ImageOps.posterize(white, 2)) == 192)  # the trap this avoids
    out = np.asarray(apply_effect("posterize", scene.image))
    assert abs(out.mean() - np.asarray(scene.image).mean()) < 6  # no overall darkening


def test_posterize_kmeans_palette(scene, edited):
    out = np.asarray(edited[("posterize", "kmeans")])
    assert len(np.unique(out.reshape(-1, 3), axis=0)) <= 24
    other = np.asarray(apply_effect("posterize", scene.image, {"mode": "kmeans", "colors": 8}))
    assert len(np.unique(other.reshape(-1, 3), axis=0)) <= 8


# --- jpeg -------------------------------------------------------------------------------------


def _blockiness(image):
    """Mean step across 8-pixel block boundaries over the mean step elsewhere, both axes."""
    g = luma(image).astype(float)
    ratios = []
    for d in (np.abs(np.diff(g, axis=1)), np.abs(np.diff(g, axis=0)).T):
        ratios.append(d[:, 7::8].mean() / np.delete(d, np.s_[7::8], axis=1).mean())
    return min(ratios)


def test_jpeg_shows_8x8_blocks(scene, edited):
    assert _blockiness(scene.image) < 1.0
    assert _blockiness(edited[("jpeg", "single")]) > 1.15


def test_jpeg_passes_at_one_quality_change_little_at_several_more(scene, edited):
    single = np.asarray(edited[("jpeg", "single")]).astype(int)
    same = np.asarray(apply_effect("jpeg", scene.image, {"mode": "passes", "qualities": "10,10,10"})).astype(int)
    varied = np.asarray(edited[("jpeg", "passes")]).astype(int)
    assert np.mean(np.any(same != single, axis=2)) < 0.05
    original = np.asarray(scene.image).astype(int)
    assert np.mean((varied - original) ** 2) > 1.3 * np.mean((single - original) ** 2)


def test_jpeg_qualities_parse():
    assert parse_qualities("15, 10,20,8") == [15, 10, 20, 8]


def test_segment_medians_histogram_and_sort_paths_agree(monkeypatch):
    from copymachine.effects import flat

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    labels = rng.integers(0, 40, (60, 80))
    use = rng.random((60, 80)) > 0.3
    use[labels == 7] = False  # a segment with no usable pixel falls back to all of its pixels
    expected = []
    for label in range(40):
        pick = (labels == label) & (use if label != 7 else True)
        expected.append([np.sort(rgb[..., c][pick])[(pick.sum() - 1) // 2] for c in range(3)])
    assert np.array_equal(flat.segment_medians(rgb, labels, use), expected)
    monkeypatch.setattr(flat, "MEDIAN_HISTOGRAM_SEGMENTS", 0)
    assert np.array_equal(flat.segment_medians(rgb, labels, use), expected)
