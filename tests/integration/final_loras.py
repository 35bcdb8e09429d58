"""copymachine's two final LoRAs, built cheaply in-process for the loader tests (numpy and
copymachine.lorafile only, so any Python that has numpy can import it with the repo on sys.path).

    train: what resize_lora.py --new_rank 8 --save_precision fp16 leaves (rank 8, alpha 4 = 32/64 * 8,
           fp16; the two modules that got no gradient at rank 1, alpha 0.5, all zero), then
           copymachine's finalize: write_uniform_rank with its metadata (every module at rank 8).
    diff:  what svd_merge_lora.py --new_rank 8 --save_precision fp16 leaves (rank 8 everywhere,
           alpha = rank, fp16), then the same finalize (copied with its metadata).

Every one of SD1.5's 264 module names (tests/fake_sdscripts/data/lora_modules_sd15.json), each
at the weight shape of the loader's own (tiny, random) model: `shapes` maps a module name to the
shape of the weight it changes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from copymachine.lorafile import read_safetensors, write_safetensors, write_uniform_rank

REPO = Path(__file__).resolve().parents[2]
MODULES_JSON = REPO / "tests" / "fake_sdscripts" / "data" / "lora_modules_sd15.json"
# the modules of SD1.5 that get no gradient at 64 px (the mid block sees one token)
EMPTY = ("lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q", "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_k")
RANK = 8


def sd15_modules() -> list[dict]:
    """SD1.5's LoRA modules as sd-scripts' networks/lora.py makes them (name, kind, ckpt_key...)."""
    return json.loads(MODULES_JSON.read_text(encoding="utf-8"))["modules"]


def _module(rng, shape, rank, alpha, empty=False):
    out, inp = shape[0], shape[1]
    extra = tuple(shape[2:])
    down_shape, up_shape = (rank, inp) + extra, (out, rank) + ((1, 1) if extra else ())
    if empty:
        down, up = np.zeros(down_shape, np.float16), np.zeros(up_shape, np.float16)
    else:
        down = (rng.standard_normal(down_shape) * 0.1).astype(np.float16)
        up = (rng.standard_normal(up_shape) * 0.1).astype(np.float16)
    return down, up, np.array(alpha, np.float16)


def build(shapes: dict[str, tuple[int, ...]], out: Path, seed: int = 0) -> dict[str, Path]:
    """Write out/{train,diff}-resized.safetensors (sd-scripts' output) and out/{train,diff}.safetensors
    (copymachine's final LoRA); returns the final LoRAs' paths."""
    names = [m["name"] for m in sd15_modules()]
    missing = [n for n in names if n not in shapes]
    assert not missing, f"no shape for {len(missing)} module(s), e.g. {missing[:3]}"
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    finals = {}
    for kind in ("train", "diff"):
        tensors = {}
        for name in names:
            if kind == "train":
                empty = name in EMPTY
                rank, alpha = (1, 0.5) if empty else (RANK, 4.0)
            else:
                empty, rank, alpha = False, RANK, float(RANK)
            down, up, a = _module(rng, shapes[name], rank, alpha, empty)
            tensors[f"{name}.lora_down.weight"], tensors[f"{name}.lora_up.weight"], tensors[f"{name}.alpha"] = down, up, a
        resized = out / f"{kind}-resized.safetensors"
        write_safetensors(resized, tensors, {"ss_network_module": "networks.lora", "ss_network_dim": str(RANK), "ss_network_alpha": str(4.0 if kind == "train" else RANK)})
        final = out / f"{kind}.safetensors"
        method = "copy-machine" if kind == "train" else "difference"
        write_uniform_rank(resized, final, {"copymachine.method": method, "copymachine.effect": "outline", "copymachine.sign": "positive strength = more of the edit"})
        finals[kind] = final
    return finals


def expected_deltas(path: Path, strength: float) -> dict[str, np.ndarray]:
    """strength * alpha/rank * up @ down of every module, in float64, flattened to (out, in*k*k)."""
    st = read_safetensors(path)
    names = sorted({k.rsplit(".", 2)[0] for k in st.tensors if k.endswith(".lora_down.weight")})
    deltas = {}
    for name in names:
        down = st.read(f"{name}.lora_down.weight").astype(np.float64)
        up = st.read(f"{name}.lora_up.weight").astype(np.float64)
        rank = down.shape[0]
        alpha = float(st.read(f"{name}.alpha").reshape(-1)[0])
        deltas[name] = strength * alpha / rank * (up.reshape(up.shape[0], -1) @ down.reshape(rank, -1))
    return deltas
