"""Fake single-file checkpoints: the real key names (dumped from sd-scripts' savers and model classes into
data/) with tiny tensors, or (FLUX.1, Chroma, SD3/3.5, Anima) layout-only: the real header over a sparse,
all-zero data section."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from . import common

FAMILIES = {"sd15": "sd15_checkpoint_keys.json", "sd2": "sd2_checkpoint_keys.json", "sdxl": "sdxl_checkpoint_keys.json"}
# released single files of the DiT families (data/layout-<name>.json, dump_layouts.py): {key: [dtype, shape]}
LAYOUTS = ("flux-dev", "flux-schnell", "chroma", "sd3-medium", "sd3-5-large", "sd3-5-medium", "anima")
ST_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4, "U8": 1}
DTYPE_NAMES = {"fp16": "F16", "float": "F32", "bf16": "BF16", "fp8": "F8_E4M3"}

# a few keys of each text encoder that SD3/3.5 "incl. clips" files embed (the ones sd3_utils looks for first)
_EMBEDDED_TE = {
    "text_encoders.clip_l.transformer.text_model.embeddings.position_embedding.weight": [77, 768],
    "text_encoders.clip_l.transformer.text_model.embeddings.token_embedding.weight": [49408, 768],
    "text_encoders.clip_l.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight": [768, 768],
    "text_encoders.clip_l.transformer.text_model.final_layer_norm.weight": [768],
    "text_encoders.clip_g.transformer.text_model.embeddings.position_embedding.weight": [77, 1280],
    "text_encoders.clip_g.transformer.text_model.embeddings.token_embedding.weight": [49408, 1280],
    "text_encoders.clip_g.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight": [1280, 1280],
    "text_encoders.clip_g.transformer.text_projection.weight": [1280, 1280],
    "text_encoders.t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.k.weight": [4096, 4096],
    "text_encoders.t5xxl.transformer.encoder.final_layer_norm.weight": [4096],
    "text_encoders.t5xxl.transformer.shared.weight": [32128, 4096],
}
# the other files copymachine asks for (it only checks that they exist): a few real-looking keys each
MODEL_FILES = {
    "clip_l": {"text_model.embeddings.position_embedding.weight": [77, 768],
               "text_model.final_layer_norm.weight": [768]},
    "clip_g": {"text_model.embeddings.position_embedding.weight": [77, 1280], "text_projection.weight": [1280, 1280]},
    "t5xxl": {"encoder.block.0.layer.0.SelfAttention.k.weight": [4096, 4096], "shared.weight": [32128, 4096]},
    "ae": {"decoder.conv_in.weight": [512, 16, 3, 3], "encoder.conv_out.weight": [32, 512, 3, 3]},
    "qwen3": {"model.embed_tokens.weight": [151936, 1024], "model.norm.weight": [1024]},
    "vae": {"decoder.conv_in.weight": [384, 16, 3, 3, 3], "encoder.conv1.weight": [96, 3, 3, 3, 3]},
}


def tiny(shape, max_dim: int) -> tuple:
    return tuple(min(int(d), max_dim) for d in shape)


def layout(family: str, text_encoders: bool = False) -> dict[str, list]:
    """{key: [dtype, shape]} of the family's released single file (SD3/3.5: with a few embedded text
    encoder keys when `text_encoders`)."""
    keys = dict(common.load_json(f"layout-{family}.json")["keys"])
    if text_encoders:
        if not family.startswith("sd3"):
            raise ValueError("text_encoders: only SD3/3.5 single files embed their text encoders")
        dtype = next(iter(keys.values()))[0]
        keys.update({k: [dtype, shape] for k, shape in _EMBEDDED_TE.items()})
    return keys


def checkpoint_tensors(family: str = "sd15", seed: int = 0, max_dim: int = 16, dtype: str | None = "fp16") -> dict:
    if family in LAYOUTS:
        keys = {k: shape for k, (_, shape) in layout(family).items()}
    else:
        keys = common.load_json(FAMILIES[family])["keys"]
    rng = common.seeded_rng("checkpoint", family, seed)
    out = {}
    for k, shape in keys.items():
        s = tiny(shape, max_dim)
        # norms' weights near 1, everything else small noise: finite and harmless either way
        base = 1.0 if (k.endswith(".weight") and len(s) == 1) else 0.0
        out[k] = common.as_precision(base + rng.normal(0, 0.02, s).astype(np.float32), dtype or "fp16")
    return out


def write_layout_only(path, keys: dict[str, list], metadata: dict | None = None) -> Path:
    """A safetensors file with the real header (every key, dtype, shape and offset) whose data section is
    a hole: the file has its full size, reads as zeros and costs (almost) no disk blocks."""
    header: dict = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for name in sorted(keys):
        dtype, shape = keys[name]
        size = ST_SIZES[dtype] * int(np.prod(shape, dtype=np.int64))
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        f.truncate(8 + len(h) + offset)
    return path


def make_checkpoint(path, family: str = "sd15", seed: int = 0, max_dim: int = 16, dtype: str | None = None,
                    metadata: dict | None = None, layout_only: bool | None = None, text_encoders: bool = False) -> Path:
    """Write a fake `family` checkpoint to `path`; returns the path.

    SD ("sd15", "sd2", "sdxl"): the key names sd-scripts' single-file saver writes, every dimension cut to
    `max_dim` (16 -> SD1.5 ~1.6 MB, SDXL ~4 MB in fp16); dtype "fp16" (default), "float" or "bf16".
    FLUX.1 / Chroma / SD3 / Anima ("flux-dev", "flux-schnell", "chroma", "sd3-medium", "sd3-5-large",
    "sd3-5-medium", "anima"): layout-only by default (the released file's header, a sparse all-zero data
    section: a 12B FLUX.1 costs a few hundred KB of disk), in the release's dtype unless `dtype` says;
    layout_only=False gives tiny tensors under the same keys instead. text_encoders=True (SD3/3.5): with a few
    `text_encoders.clip_l./clip_g./t5xxl.` keys, as the "incl. clips" files.
    """
    path = Path(path)
    if family in LAYOUTS and layout_only is not False:
        keys = layout(family, text_encoders)
        if dtype is not None:
            keys = {k: [DTYPE_NAMES[dtype], shape] for k, (_, shape) in keys.items()}
        return write_layout_only(path, keys, metadata)
    if layout_only:
        raise ValueError(f"layout_only: only for {', '.join(LAYOUTS)}")
    tensors = checkpoint_tensors(family, seed, max_dim, dtype)
    if text_encoders:
        te = {k: shape for k, (_, shape) in layout(family, True).items() if k.startswith("text_encoders.")}
        rng = common.seeded_rng("te", family, seed)
        tensors.update({k: common.as_precision(rng.normal(0, 0.02, tiny(s, max_dim)), dtype or "fp16")
                        for k, s in te.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(common.serialize_safetensors(tensors, metadata or {}))
    return path


def make_model_file(path, kind: str, seed: int = 0) -> Path:
    """A small valid safetensors standing in for one of a family's other files (clip_l, clip_g, t5xxl, ae,
    qwen3, vae): a few real-looking keys, every dimension cut to 4."""
    rng = common.seeded_rng("model-file", kind, seed)
    tensors = {k: rng.normal(0, 0.02, tiny(s, 4)).astype(np.float16) for k, s in MODEL_FILES[kind].items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(common.serialize_safetensors(tensors, {}))
    return path
