"""Run in a diffusers venv (not copymachine's, not sd-scripts'): which LoRA diffusers applies exactly.

    DIFFUSERS_PY tests/integration/diffusers_loader.py OUT_DIR

A kohya LoRA with SD1.5's 264 module names (72 text encoder, 192 U-Net), on tiny random models of
SD1.5's topology, in three forms: "mixed" (two empty modules of rank 1, as resize_lora.py leaves
modules that got no gradient), "padded" (copymachine's finalize: every module at the common rank)
and "dropped" (the empty modules left out). Each is loaded with load_lora_weights, fused at +1 and
-1, and the applied delta of every module compared with strength * alpha/rank * up @ down. One
JSON line per form and strength.
"""
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)
import warnings

import diffusers
import numpy as np
import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from copymachine.lorafile import write_safetensors, write_uniform_rank

out = sys.argv[1]
names = [m["name"] for m in json.load(open(os.path.join(REPO, "tests", "fake_sdscripts", "data", "lora_modules_sd15.json")))["modules"]]
torch.manual_seed(0)
unet = UNet2DConditionModel(block_out_channels=(32, 64, 64, 64), cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32, layers_per_block=2, sample_size=8)
te = CLIPTextModel(CLIPTextConfig(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=12, vocab_size=1000, projection_dim=32))
vae = AutoencoderKL(block_out_channels=(32,), norm_num_groups=32, latent_channels=4)
mods = {}
for prefix, model in (("lora_unet_", unet), ("lora_te_", te)):
    for n, m in model.named_modules():
        if prefix == "lora_te_" and not n.startswith("text_model"):
            n = "text_model." + n  # transformers 5: CLIPTextModel without its text_model wrapper
        key = prefix + n.replace(".", "_")
        if key in names and isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
            mods[key] = m
missing = [n for n in names if n not in mods]
assert not missing, f"modules not in the tiny models: {missing[:3]}"
rng = np.random.default_rng(0)
empty = {"lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q", "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_k"}
R, ALPHA = 8, 4.0
tensors = {}
for key, m in mods.items():
    w = m.weight
    outd, ind = w.shape[0], w.shape[1]
    r = 1 if key in empty else R
    extra = tuple(w.shape[2:]) if w.ndim == 4 else ()
    if key in empty:
        down = np.zeros((r, ind) + extra, np.float32); up = np.zeros((outd, r) + ((1, 1) if extra else ()), np.float32); a = ALPHA / R * r
    else:
        down = (rng.standard_normal((r, ind) + extra) * 0.1).astype(np.float32); up = (rng.standard_normal((outd, r) + ((1, 1) if extra else ())) * 0.1).astype(np.float32); a = ALPHA
    tensors[f"{key}.lora_down.weight"], tensors[f"{key}.lora_up.weight"], tensors[f"{key}.alpha"] = down, up, np.array(a, np.float32)
os.makedirs(out, exist_ok=True)
write_safetensors(f"{out}/mixed.safetensors", tensors, {"ss_network_dim": "8"})
write_uniform_rank(__import__("pathlib").Path(f"{out}/mixed.safetensors"), __import__("pathlib").Path(f"{out}/padded.safetensors"), {})
write_safetensors(f"{out}/dropped.safetensors", {k: v for k, v in tensors.items() if k.rsplit(".", 2)[0] not in empty and k.split(".")[0] not in empty}, {"ss_network_dim": "8"})

def expected(key, strength):
    d, u = tensors[f"{key}.lora_down.weight"], tensors[f"{key}.lora_up.weight"]
    r = d.shape[0]
    return strength * float(tensors[f"{key}.alpha"]) / r * (u.reshape(u.shape[0], -1) @ d.reshape(r, -1))

for variant in ("mixed", "padded", "dropped"):
    for strength in (1.0, -1.0):
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=None, unet=unet, scheduler=DDIMScheduler(), safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        before = {k: m.weight.detach().clone().double() for k, m in mods.items()}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pipe.load_lora_weights(out, weight_name=f"{variant}.safetensors")
            pipe.fuse_lora(lora_scale=strength, components=["unet", "text_encoder"])
        ratios = {"unet": [], "te": []}; worst = 0.0; applied = 0
        for k, m in mods.items():
            delta = (m.weight.detach().double() - before[k]).reshape(m.weight.shape[0], -1).numpy()
            exp = expected(k, strength)
            if np.abs(delta).max() > 0: applied += 1
            if np.abs(exp).max() == 0:
                worst = max(worst, float(np.abs(delta).max())); continue
            ratios["unet" if k.startswith("lora_unet") else "te"].append(float((delta * exp).sum() / (exp * exp).sum()))
            worst = max(worst, float(np.abs(delta - exp).max() / np.abs(exp).max()))
        pipe.unfuse_lora(components=["unet", "text_encoder"]); pipe.unload_lora_weights()
        for k, m in mods.items():
            m.weight.data.copy_(before[k].float().reshape(m.weight.shape))
        print(json.dumps({"diffusers": diffusers.__version__, "variant": variant, "strength": strength, "modules": len(mods), "applied": applied,
                          "unet_ratio": [min(ratios["unet"]), max(ratios["unet"])], "te_ratio": [min(ratios["te"]), max(ratios["te"])],
                          "max_rel_error": worst, "warnings": [str(w.message)[:200] for w in caught]}))
