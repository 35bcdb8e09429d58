"""How close a generated image is to the original: SSIM (RGB at full size for leakage; luma at 256 px for the
copy check: "the same picture", not pixel detail, alike at 512 and 1024 px), and LPIPS, an optional extra
that needs torch, imported only here and only when asked for.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image

from copymachine.check import ssim
from copymachine.heavy import numpy as np
from copymachine.images import to_rgb

LPIPS_HINT = "pip install 'copymachine[lpips]'"
SCORE_SIDE = 256  # px: the long side the copy check's luma SSIM is measured at
SSIM_WINDOW = 7  # px: scikit-image's default window; no side is scored below it


def reference_at(original: Image.Image, size: tuple[int, int]) -> Image.Image:
    """The original resized to the training size as the training image is (Lanczos)."""
    image = to_rgb(original)
    return image if image.size == tuple(size) else image.resize(size, Image.Resampling.LANCZOS)


def round4(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def _same_size(reference: Image.Image, image: Image.Image) -> None:
    if reference.size != image.size:
        raise ValueError(f"images differ in size: {reference.size} and {image.size}")


def ssim_score(reference: Image.Image, image: Image.Image) -> float:
    _same_size(reference, image)
    return ssim(np.asarray(to_rgb(reference), np.uint8), np.asarray(to_rgb(image), np.uint8))


def score_size(size: tuple[int, int], side: int = SCORE_SIDE) -> tuple[int, int]:
    """Long side `side` px, never enlarged, no side below SSIM's window, the aspect kept."""
    width, height = size
    scale = min(1.0, side / max(width, height))
    scale = min(1.0, max(scale, SSIM_WINDOW / min(width, height)))
    return max(1, round(width * scale)), max(1, round(height * scale))


def luma(image: Image.Image, size: tuple[int, int]):
    grey = to_rgb(image).convert("L")
    if grey.size != tuple(size):
        grey = grey.resize(size, Image.Resampling.BOX)
    return np.asarray(grey, np.uint8)


def luma_ssim_score(reference: Image.Image, image: Image.Image, side: int = SCORE_SIDE) -> float:
    """The copy check's score: SSIM of two same-size images' luma at `score_size`."""
    _same_size(reference, image)
    from skimage.metrics import structural_similarity

    size = score_size(reference.size, side)
    return float(structural_similarity(luma(reference, size), luma(image, size), data_range=255))


@dataclass
class Lpips:
    """LPIPS distances, or why there are none."""

    available: bool = False
    reason: str = ""
    _model: object = field(default=None, repr=False)

    @classmethod
    def load(cls) -> Lpips:
        try:
            import lpips
        except ImportError:
            return cls(False, f"LPIPS not installed ({LPIPS_HINT})")
        try:
            model = lpips.LPIPS(net="alex", verbose=False)
            model.eval()
        except Exception as e:  # e.g. AlexNet weights not downloadable offline
            return cls(False, f"LPIPS could not load its network: {type(e).__name__}: {e}")
        return cls(True, "", model)

    def distance(self, reference: Image.Image, image: Image.Image) -> float | None:
        if not self.available:
            return None
        import torch

        def tensor(im: Image.Image):
            a = np.asarray(to_rgb(im), np.float32) / 127.5 - 1.0
            return torch.from_numpy(a.transpose(2, 0, 1).copy())[None]

        with torch.no_grad():
            return float(self._model(tensor(reference), tensor(image)).reshape(-1)[0])  # type: ignore[operator]
