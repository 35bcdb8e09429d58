import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import imagekit


@pytest.fixture(scope="session")
def scene() -> imagekit.Scene:
    """The 256×256 drawn test scene (drawn once; do not modify its arrays)."""
    return imagekit.scene(256)


@pytest.fixture(scope="session")
def scene_path(scene, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("scene") / "original.png"
    scene.image.save(path)
    return path


FAKE_ROOT = Path(__file__).parent / "fake_sdscripts"


@pytest.fixture(scope="session", autouse=True)
def engine_cache(tmp_path_factory):
    """What copymachine learns about an sd-scripts (copymachine.capabilities) goes to a folder of
    the session, not the user's cache; learnt once per engine for the whole suite."""
    import os

    folder = tmp_path_factory.mktemp("engine-cache")
    previous = os.environ.get("COPYMACHINE_ENGINE_CACHE")
    os.environ["COPYMACHINE_ENGINE_CACHE"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("COPYMACHINE_ENGINE_CACHE", None)
    else:
        os.environ["COPYMACHINE_ENGINE_CACHE"] = previous


class FakeEngine:
    """The recording fake of sd-scripts, set up for one test: a fake base checkpoint, an offline
    tokenizer folder, its call log, and the options every run command needs."""

    def __init__(self, tmp: Path, monkeypatch):
        import importlib.util

        spec = importlib.util.spec_from_file_location("fake_make_checkpoint", FAKE_ROOT / "make_checkpoint.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        self.make_checkpoint = module.make_checkpoint
        self.tmp = tmp
        self.root = FAKE_ROOT.resolve()
        self.base = Path(self.make_checkpoint(tmp / "base model.safetensors", family="sd15", seed=0))
        self.tokenizers = tmp / "tokenizers"
        (self.tokenizers / "openai_clip-vit-large-patch14").mkdir(parents=True)
        self.log = tmp / "fake-calls.jsonl"
        monkeypatch.setenv("COPYMACHINE_FAKE_LOG", str(self.log))
        monkeypatch.delenv("COPYMACHINE_FAKE_FAIL", raising=False)
        monkeypatch.delenv("SD_SCRIPTS", raising=False)
        monkeypatch.delenv("SD_SCRIPTS_PYTHON", raising=False)
        monkeypatch.delenv("COPYMACHINE_CACHE", raising=False)

    @property
    def engine_args(self) -> list[str]:
        return ["--sd-scripts", str(self.root), "--python", sys.executable, "--tokenizer-cache-dir", str(self.tokenizers), "--offline"]

    def tree_copy(self, dest: Path, without: str = "", commit: str = "") -> Path:
        """The fake sd-scripts tree as symlinks at `dest`, optionally without one of its entries
        (a module its Python then lacks), as a git checkout at `commit`."""
        dest.mkdir(parents=True)
        for entry in self.root.iterdir():
            if entry.name != without:
                (dest / entry.name).symlink_to(entry)
        if commit:
            (dest / ".git").mkdir()
            (dest / ".git" / "HEAD").write_text(commit + "\n", encoding="utf-8")
        return dest

    def calls(self) -> list[dict]:
        import json

        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text(encoding="utf-8").splitlines() if line.strip()]

    def scripts(self) -> list[str]:
        return [Path(c["script"]).name for c in self.calls()]


@pytest.fixture
def fake_engine(tmp_path, monkeypatch) -> FakeEngine:
    return FakeEngine(tmp_path, monkeypatch)


@pytest.fixture
def small_lora():
    """small_lora(path): a two-module kohya LoRA (rank 4, SD1.x metadata) written at `path`."""
    import numpy as np

    from copymachine.lorafile import write_safetensors

    def make(path: Path) -> Path:
        rng = np.random.default_rng(0)
        tensors = {}
        for name in ("lora_unet_mid_block_attentions_0_proj_in", "lora_te_text_model_encoder_layers_0_mlp_fc1"):
            tensors[f"{name}.lora_down.weight"] = rng.normal(size=(4, 16)).astype(np.float16)
            tensors[f"{name}.lora_up.weight"] = rng.normal(size=(16, 4)).astype(np.float16)
            tensors[f"{name}.alpha"] = np.array(4.0, np.float16)
        write_safetensors(path, tensors, {"ss_base_model_version": "sd_v1", "ss_network_dim": "4", "ss_network_alpha": "4.0"})
        return path

    return make
