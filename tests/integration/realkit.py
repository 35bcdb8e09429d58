"""Helpers shared by the integration tests (tests/integration is on sys.path under pytest)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from PIL import Image, ImageDraw


def draw_original(path: Path, size: int = 128) -> Path:
    im = Image.new("RGB", (size, size), (235, 225, 210))
    d = ImageDraw.Draw(im)
    d.rectangle([0, 0, size, size // 3], fill=(150, 190, 235))
    d.ellipse([size * 0.2, size * 0.25, size * 0.8, size * 0.9], fill=(250, 215, 190), outline=(20, 20, 20), width=3)
    d.ellipse([size * 0.35, size * 0.45, size * 0.45, size * 0.55], fill=(40, 60, 120), outline=(10, 10, 10), width=2)
    d.ellipse([size * 0.55, size * 0.45, size * 0.65, size * 0.55], fill=(40, 60, 120), outline=(10, 10, 10), width=2)
    d.line([size * 0.4, size * 0.72, size * 0.6, size * 0.72], fill=(120, 30, 30), width=2)
    im.save(path)
    return path


def run_cli(args: list[str], env: dict[str, str], timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "copymachine", *args],
        env=env,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=timeout,
    )
