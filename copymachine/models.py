"""Base models: a checkpoint's family (copymachine/families/), what it predicts, and the options every
training and render of it takes."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from copymachine.errors import InputError
from copymachine.families import FAMILIES, SD1, SD2, SDXL, Family, detect_family, embedded_files, lora_family
from copymachine.lorafile import read_safetensors

# the families' names, where modules imported them from before copymachine/families/ held them
__all__ = ["FAMILIES", "SD1", "SD2", "SDXL", "BaseOptions", "Family", "ModelInfo", "Prediction", "base_options",
           "choose_prediction", "detect_family", "inspect_base_model", "lora_clip_skip", "lora_family"]


PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
# Marker tensors of v-prediction checkpoints (NoobAI-XL V-Pred and its merges; ComfyUI reads the
# same keys): `v_pred` = trained to predict v, `ztsnr` = with a zero-terminal-SNR noise schedule.
V_PRED_KEY = "v_pred"
ZTSNR_KEY = "ztsnr"


@dataclass(frozen=True)
class ModelInfo:
    path: Path
    family: Family
    size_bytes: int
    tensor_count: int
    markers: frozenset[str] = frozenset()  # V_PRED_KEY, ZTSNR_KEY when the checkpoint has them
    embedded: frozenset[str] = frozenset()  # the family's other files the checkpoint holds (SD3.5's text encoders)


@dataclass(frozen=True)
class Prediction:
    """Epsilon or v-prediction, zero terminal SNR or not: a v-pred model trained or rendered as epsilon gives noise."""

    v_parameterization: bool = False
    zero_terminal_snr: bool = False
    why: str = "no v_pred key in the checkpoint"
    flow: bool = False  # a flow-matching model (FLUX.1, SD3, Anima): nothing to choose

    @property
    def label(self) -> str:
        if self.flow:
            return "flow matching"
        if not self.v_parameterization:
            return "epsilon-prediction"
        return "v-prediction" + (" with zero terminal SNR" if self.zero_terminal_snr else "")

    def text(self) -> str:
        return f"{self.label} ({self.why})"


def choose_prediction(model: ModelInfo, v_pred: bool = False, zero_terminal_snr: bool = False) -> Prediction:
    """From the checkpoint's `v_pred` / `ztsnr` keys, else --v-pred / --zero-terminal-snr. Zero terminal SNR only
    exists with v-prediction (sd-scripts warns that training is then 'unexpected')."""
    if not model.family.renders_with_gen_img:
        if v_pred or zero_terminal_snr:
            raise InputError(f"--v-pred / --zero-terminal-snr: {model.family.label} is a flow-matching model with no "
                             "prediction type to choose")
        return Prediction(flow=True, why=f"{model.family.label}'s own")
    has_v, has_z = V_PRED_KEY in model.markers, ZTSNR_KEY in model.markers
    v, z = has_v or v_pred, has_z or zero_terminal_snr
    if z and not v:
        where = f"{model.path.name} has a {ZTSNR_KEY} key but no {V_PRED_KEY} key" if has_z else "--zero-terminal-snr"
        raise InputError(f"{where}: zero terminal SNR needs a v-prediction model; add --v-pred if {model.path.name} is "
                         "one")
    if not v:
        if model.tensor_count == 0:
            return Prediction(why="a pickle checkpoint copymachine does not open: assumed epsilon-prediction (--v-pred "
                                  "for a v-prediction model)")
        return Prediction()
    reasons = [f"the checkpoint has a {V_PRED_KEY} key" if has_v else "--v-pred"]
    if z:
        reasons.append(f"a {ZTSNR_KEY} key" if has_z else "--zero-terminal-snr")
    return Prediction(v_parameterization=True, zero_terminal_snr=z, why=", ".join(reasons))


MAX_CLIP_SKIP = 12  # CLIP ViT-L/14, SD1.x's text encoder, has 12 layers


def lora_clip_skip(metadata: dict[str, str], family: Family) -> int:
    """The clip skip a LoRA was trained with (sd-scripts' ss_clip_skip; "None": 1); SDXL: 1."""
    text = metadata.get("ss_clip_skip", "")
    if not family.has_clip_skip or not text.isdigit():
        return 1
    return min(max(int(text), 1), MAX_CLIP_SKIP)


@dataclass(frozen=True)
class BaseOptions:
    """What every training and render of the base model needs beyond its family: clip skip (NovelAI-derived anime
    models are made for 2), the prediction type, SDXL renders' float32 VAE (fp16 overflows: black/NaN images).
    Stages hold it only when it is not the default (`or_none`), so other runs' keys stay as they were."""

    clip_skip: int = 1
    v_parameterization: bool = False
    zero_terminal_snr: bool = False
    no_half_vae: bool = False  # gen_img.py only: sd-scripts' SDXL training has it from the family

    def or_none(self) -> BaseOptions | None:
        return None if self == BaseOptions() else self

    def for_training(self) -> BaseOptions | None:
        return dataclasses.replace(self, no_half_vae=False).or_none()

    def training_keys(self) -> dict[str, Any]:
        """Keys of the training TOML (option names of train_network.py / sdxl_train_network.py)."""
        keys: dict[str, Any] = {"clip_skip": self.clip_skip} if self.clip_skip > 1 else {}
        return keys | {k: True for k in ("v_parameterization", "zero_terminal_snr") if getattr(self, k)}

    def gen_img_args(self) -> list[str]:
        """gen_img.py's options (it defaults clip skip to 1 for SD1.x and to 2, SDXL's own, for SDXL)."""
        args = ["--clip_skip", str(self.clip_skip)] if self.clip_skip > 1 else []
        return args + [f"--{k}" for k in ("v_parameterization", "zero_terminal_snr", "no_half_vae") if getattr(self, k)]


def base_options(family: Family, clip_skip: int, prediction: Prediction) -> BaseOptions:
    """The options of every training and render on a `family` base model. SDXL has no clip skip to choose (its
    training ignores clip_skip, gen_img.py uses 2: they would differ)."""
    if prediction.v_parameterization and not family.renders_with_gen_img:
        raise InputError(f"v-prediction: {family.label} is a flow-matching model with no prediction type to choose; "
                         "leave out --v-pred / --zero-terminal-snr")
    if clip_skip != 1 and not family.has_clip_skip:
        why = (" (it always uses the text encoders' penultimate layer, and sd-scripts' SDXL training ignores "
               "clip_skip)") if family.renders_with_gen_img else ""
        raise InputError(f"clip skip {clip_skip}: {family.label} has no clip skip to choose{why}; leave "
                         "model.clip_skip at 1")
    return BaseOptions(clip_skip=clip_skip, v_parameterization=prediction.v_parameterization,
                       zero_terminal_snr=prediction.zero_terminal_snr, no_half_vae=family.render_no_half_vae)


def inspect_base_model(path: Path, for_training: bool = True) -> ModelInfo:
    """`path` is a single-file checkpoint of a family copymachine trains (any known one unless `for_training`)."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"base model is a folder: {path}; copymachine needs a single-file checkpoint (.safetensors)")
    if path.suffix.lower() in PICKLE_SUFFIXES and path.exists():
        raise InputError(f"base model is a pickle file ({path.suffix}): {path}; loading a pickle can run code, "
                         "so copymachine only reads .safetensors (convert it, or use a .safetensors download)")
    st = read_safetensors(path, "base model")
    family, what = detect_family(st.keys())
    if family is None:
        raise InputError(f"base model is not a checkpoint of a family copymachine knows (SD1.x/2.x, SDXL, FLUX.1, "
                         f"SD3/3.5, Anima): found {what}: {path}")
    if for_training and not family.supported:
        raise InputError(f"base model is {family.label}, which this version of copymachine does not train yet "
                         f"(supported: {', '.join(f.label for f in FAMILIES.values() if f.supported)}): {path}")
    markers = frozenset(k for k in (V_PRED_KEY, ZTSNR_KEY) if k in st.tensors)
    return ModelInfo(path=path, family=family, size_bytes=path.stat().st_size, tensor_count=len(st.tensors),
                     markers=markers, embedded=embedded_files(family, set(st.tensors)))
