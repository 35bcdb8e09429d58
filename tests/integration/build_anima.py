"""Random-weight Anima fixtures (DiT, Qwen3-0.6B text encoder, Qwen-Image VAE), for build_fixtures.py --anima.

Each file is built from sd-scripts' own classes and configs and written in the format its loaders read:

* ``anima-dit-random.safetensors``: ``library.anima_models.Anima`` with the fixed config of
  ``anima_utils.load_anima_model`` (2B parameters; the loader accepts no other shape), saved by
  ``anima_utils.save_anima_model`` ("net." prefix, as the official/ComfyUI file), bf16, without the
  rope buffers (seq, dim_*_range) that the official file lacks too and the loader re-creates.
* ``qwen3-06b-random.safetensors``: ``transformers.Qwen3ForCausalLM`` from sd-scripts'
  configs/qwen3_06b/config.json, its ``.model`` saved with the "model." prefix (the single-file form
  ``anima_utils.load_qwen3_text_encoder`` reads; tied embeddings, no lm_head), bf16.
* ``qwen-image-vae-random.safetensors``: ``qwen_image_autoencoder_kl.AutoencoderKLQwenImage`` with the
  defaults that equal the config in ``qwen_image_autoencoder_kl.load_vae`` (which loads strictly), bf16.

No tokenizer is built: with a single-file text encoder sd-scripts reads the Qwen3 tokenizer from its
configs/qwen3_06b (vocab.json + merges.txt; transformers converts them to a fast tokenizer offline,
no tokenizer.json needed) and the T5 one from configs/t5_old (spiece.model + tokenizer.json).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

DIT = "anima-dit-random.safetensors"
QWEN3 = "qwen3-06b-random.safetensors"
VAE = "qwen-image-vae-random.safetensors"
ANIMA_DIR = "anima"


def _meta(kind: str, version: str) -> dict[str, str]:
    return {"copymachine.fixture": kind, "copymachine.fixture_version": version}


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.stem}.tmp{os.getpid()}.safetensors")


class _Captured(Exception):
    pass


def _dit_config() -> dict:
    """The kwargs load_anima_model passes to Anima (caught by a stand-in class, so the fixture follows sd-scripts)."""
    from library import anima_models, anima_utils

    captured: dict = {}

    def capture(**kwargs):
        captured.update(kwargs)
        raise _Captured

    real = anima_models.Anima
    anima_models.Anima = capture
    try:
        anima_utils.load_anima_model("cpu", "unused.safetensors", "torch", False, "cpu", None)
    except _Captured:
        pass
    finally:
        anima_models.Anima = real
    if not captured:
        raise SystemExit("could not read the DiT config from anima_utils.load_anima_model")
    return captured


def build_dit(path: Path, version: str) -> None:
    import torch
    from library import anima_models, anima_utils

    model = anima_models.Anima(**_dit_config()).to(torch.bfloat16)  # peaks at the fp32 model, ~8.5 GB
    buffers = {name for name, _ in model.named_buffers()}
    sd = {k: v for k, v in model.state_dict().items() if k not in buffers}
    del model
    tmp = _tmp(path)
    anima_utils.save_anima_model(str(tmp), sd, _meta("anima-dit-random", version), None)
    os.replace(tmp, path)


def build_qwen3(path: Path, version: str, sd_scripts: Path) -> None:
    import torch
    import transformers
    from safetensors.torch import save_file

    config = transformers.Qwen3Config.from_pretrained(str(sd_scripts / "configs" / "qwen3_06b"), local_files_only=True)
    model = transformers.Qwen3ForCausalLM._from_config(config, torch_dtype=torch.bfloat16).model
    sd = {"model." + k: v.contiguous() for k, v in model.state_dict().items()}
    tmp = _tmp(path)
    save_file(sd, str(tmp), metadata={"format": "pt", **_meta("qwen3-06b-random", version)})
    os.replace(tmp, path)


def build_vae(path: Path, version: str) -> None:
    import torch
    from library import qwen_image_autoencoder_kl
    from safetensors.torch import save_file

    vae = qwen_image_autoencoder_kl.AutoencoderKLQwenImage().to(torch.bfloat16)
    sd = {k: v.contiguous() for k, v in vae.state_dict().items()}
    tmp = _tmp(path)
    save_file(sd, str(tmp), metadata={"format": "pt", **_meta("qwen-image-vae-random", version)})
    os.replace(tmp, path)


def build_all(out: Path, sd_scripts: Path, version: str, ensure_checkpoint) -> dict[str, Path]:
    """Build the three files under out/anima (each skipped when valid); returns their paths."""
    d = out / ANIMA_DIR
    d.mkdir(parents=True, exist_ok=True)
    paths = {"dit": d / DIT, "qwen3": d / QWEN3, "vae": d / VAE}
    ensure_checkpoint(paths["vae"], "qwen-image-vae-random", lambda p: build_vae(p, version))
    ensure_checkpoint(paths["qwen3"], "qwen3-06b-random", lambda p: build_qwen3(p, version, sd_scripts))
    ensure_checkpoint(paths["dit"], "anima-dit-random", lambda p: build_dit(p, version))
    (d / "paths.json").write_text(json.dumps({k: str(v) for k, v in paths.items()}, indent=2) + "\n")
    return paths
