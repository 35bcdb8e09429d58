import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import imagekit  # noqa: E402


@pytest.fixture(scope="session")
def scene() -> imagekit.Scene:
    """The 256×256 drawn test scene (drawn once; do not modify its arrays)."""
    return imagekit.scene(256)


@pytest.fixture(scope="session")
def scene_path(scene, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("scene") / "original.png"
    scene.image.save(path)
    return path
