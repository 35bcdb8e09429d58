"""How close a generated image is to the original: SSIM always, LPIPS when installed.

SSIM (scikit-image, on the RGB image, 8-bit range) is 1 for identical images and falls towards 0
for unrelated ones. LPIPS (the `lpips` package, AlexNet features) is 0 for identical images and
grows with perceptual difference; it needs torch, so it is an optional extra
(`pip install copymachine[lpips]`) imported only here and only when asked for: without it,
copymachine's own process never imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image

from copymachine.check import ssim
from copymachine.heavy import numpy as np
from copymachine.images import to_rgb

LPIPS_HINT = "pip install 'copymachine[lpips]'"


def reference_at(original: Image.Image, size: tuple[int, int]) -> Image.Image:
    """The original as the LoRA saw it: resized to the training size the way the training
    image is (Lanczos), so a generated image is compared at its own size."""
    image = to_rgb(original)
    return image if image.size == tuple(size) else image.resize(tuple(size), Image.Resampling.LANCZOS)


def ssim_score(reference: Image.Image, image: Image.Image) -> float:
    a = np.asarray(to_rgb(reference), np.uint8)
    b = np.asarray(to_rgb(image), np.uint8)
    if a.shape != b.shape:
        raise ValueError(f"images differ in size: {reference.size} and {image.size}")
    return ssim(a, b)


@dataclass
class Lpips:
    """LPIPS distances, or why there are none (not installed, or its network did not load)."""

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
