"""Copy-check metrics on known image pairs; LPIPS stays optional (torch stays out: test_security.py)."""

import sys

import numpy as np
import pytest
from PIL import Image, ImageFilter

from copymachine.similarity import Lpips, luma_ssim_score, reference_at, score_size, ssim_score


def test_ssim_on_known_pairs(scene):
    image = scene.image
    assert ssim_score(image, image.copy()) == pytest.approx(1.0)
    blurred = ssim_score(image, image.filter(ImageFilter.GaussianBlur(1)))
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8))
    unrelated = ssim_score(image, noise)
    assert 0.8 < blurred < 1.0
    assert unrelated < 0.1
    shifted = ssim_score(image, image.transform(image.size, Image.Transform.AFFINE, (1, 0, 8, 0, 1, 0)))
    assert unrelated < shifted < blurred
    with pytest.raises(ValueError):
        ssim_score(image, image.resize((128, 128)))


def test_the_copy_check_scores_luma_at_256_px_on_the_long_side(scene):
    """Luma SSIM at 256 px: a colour change that keeps the luma is the same picture, and
    pixel-level noise at 1024 px (detail the check does not ask about) scores near 1 once
    reduced, while RGB SSIM at full size falls."""
    assert score_size((1024, 768)) == (256, 192) and score_size((576, 448)) == (256, 199)
    assert score_size((64, 64)) == (64, 64)  # never enlarged
    assert score_size((4096, 64)) == (448, 7)  # no side below SSIM's window
    big = scene.image.resize((1024, 768), Image.Resampling.LANCZOS)
    assert luma_ssim_score(big, big.copy()) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    noisy = Image.fromarray(np.clip(np.asarray(big, np.int16) + rng.integers(-20, 21, (768, 1024, 1)), 0, 255).astype(np.uint8))
    assert ssim_score(big, noisy) < 0.5 and luma_ssim_score(big, noisy) > 0.85  # measured: 0.40 and 0.91
    # the picture in grey: the same luma, so the same picture to the copy check (RGB SSIM: 0.96)
    grey = big.convert("L").convert("RGB")
    assert luma_ssim_score(big, grey) == pytest.approx(1.0) and ssim_score(big, grey) < 0.97
    unrelated = Image.fromarray(rng.integers(0, 256, (768, 1024, 3), dtype=np.uint8))
    assert luma_ssim_score(big, unrelated) < 0.3  # noise averaged down: grey-ish, still far below 0.8
    with pytest.raises(ValueError):
        luma_ssim_score(big, big.resize((512, 384)))


def test_reference_is_the_training_resize(scene):
    small = reference_at(scene.image, (64, 64))
    assert small.size == (64, 64)
    assert np.array_equal(np.asarray(small), np.asarray(scene.image.resize((64, 64), Image.Resampling.LANCZOS)))
    assert reference_at(scene.image, (256, 256)) is not None


def test_lpips_absent_is_reported_not_raised(monkeypatch, scene):
    monkeypatch.setitem(sys.modules, "lpips", None)  # import lpips -> ImportError
    lp = Lpips.load()
    assert not lp.available and "copymachine[lpips]" in lp.reason
    assert lp.distance(scene.image, scene.image) is None
