"""Copy-check metrics on known image pairs; LPIPS stays optional (torch stays out: test_security.py)."""

import sys

import numpy as np
import pytest
from PIL import Image, ImageFilter

from copymachine.similarity import Lpips, reference_at, ssim_score


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
