"""What a base-model family is to copymachine: how sd-scripts trains it, renders with it and merges it (one field
of the plan, not a fork of the code: every stage asks the family)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

GEN_IMG = "gen_img.py"


def _plain(value: Any) -> Any:
    """Tuples as lists (as JSON holds them), nested too."""
    return [_plain(v) for v in value] if isinstance(value, tuple) else value


@dataclass(frozen=True)
class ModelFile:
    """A file the family needs beside its checkpoint (a text encoder, the VAE/AE): `--model-file NAME=FILE`."""

    name: str  # what the user writes before '=': clip_l, clip_g, t5xxl, ae, qwen3, vae
    label: str  # what it is: "the T5-XXL text encoder"
    option: str  # the training scripts' option (clip_l, t5xxl, ae, qwen3, vae)
    render_option: str  # the family renderer's option for it ("" when the renderer does not take it)
    embedded_prefix: str = ""  # the key prefix of the file inside the checkpoint (SD3.5's text encoders)


@dataclass(frozen=True)
class Family:
    name: str  # short id, recorded in the manifest
    label: str  # shown to the user
    train_script: str  # relative to the sd-scripts root
    merge_script: str  # writes a LoRA into a checkpoint ("" when sd-scripts has none for the family)
    gen_flag: str  # gen_img.py's model-version flag ("" for a family gen_img.py does not render)
    base_model_version: str  # what sd-scripts writes to ss_base_model_version
    v2: bool = False
    supported: bool = True
    training_options: dict[str, Any] = field(default_factory=dict)  # extra training TOML keys
    merge_options: tuple[str, ...] = ()  # extra merge script options
    extract_options: tuple[str, ...] = ()  # extra extract_lora_from_models.py options
    default_size: int = 512
    render_no_half_vae: bool = False  # gen_img.py --no_half_vae (SDXL: its VAE gives NaN/black images in fp16)
    # folders sd-scripts looks for in --tokenizer_cache_dir (library/strategy_*.py)
    tokenizers: tuple[str, ...] = ("openai_clip-vit-large-patch14",)
    # --- the families after SDXL (their defaults keep SD1/SDXL stage keys as they were)
    network_module: str = "networks.lora"  # sd-scripts' LoRA module for the family
    renderer: str = GEN_IMG  # the script that renders images with the model and a LoRA
    render_options: tuple[str, ...] = ()  # the renderer's options every render takes (e.g. --model_type chroma)
    needs: tuple[ModelFile, ...] = ()  # the other files the family needs (ModelFile)
    files: tuple[tuple[str, str], ...] = ()  # the user's files for `needs`: (name, path), in `needs` order
    no_file_merge: str = ""  # why a copy model / processed model cannot be written to a file
    # training TOML keys with LoRAs merged in memory (--base_weights): Anima's merge needs lowram on a GPU
    base_weights_options: dict[str, Any] = field(default_factory=dict)
    has_clip_skip: bool = False  # a CLIP layer to choose (SD1.x/2.x); v-prediction too (an SD U-Net's choice)

    # what names or describes the family, or where sd-scripts finds its tokenizers: not in keys
    # (render_no_half_vae reaches renders through BaseOptions, which is in their keys)
    COSMETIC = ("label", "supported", "default_size", "tokenizers", "render_no_half_vae", "needs", "no_file_merge",
                "has_clip_skip")
    # fields added with FLUX.1/SD3.5/Anima: in keys only when they differ from the default (SD caches stay valid)
    LATER = ("network_module", "renderer", "render_options", "files", "base_weights_options")

    def as_key(self) -> dict[str, Any]:
        """What of the family changes a stage's results (not its label: a new wording must not invalidate caches)."""
        values: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if f.name in self.COSMETIC or (f.name in self.LATER and value == default):
                continue
            values[f.name] = _plain(value)
        return values

    @property
    def renders_with_gen_img(self) -> bool:
        return self.renderer == GEN_IMG

    def file_options(self) -> dict[str, str]:
        """The training TOML keys of the user's other files (clip_l = "...", t5xxl = "...")."""
        by_name = {m.name: m for m in self.needs}
        return {by_name[name].option: path for name, path in self.files}

    def render_file_args(self) -> list[str]:
        """The renderer's options for the user's other files."""
        options = {m.name: m.render_option for m in self.needs}
        return [arg for name, path in self.files if options[name] for arg in (f"--{options[name]}", path)]
