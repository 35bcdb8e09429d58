"""Run by a Python with torch (sd-scripts' own will do), not copymachine's: ComfyUI's own LoRA loader
on copymachine's final LoRAs, on the CPU.

    PY tests/integration/comfyui_loader.py COMFYUI_CHECKOUT OUT_DIR

A tiny SD1.5 of ComfyUI's own classes (comfy.supported_models.SD15 with model_channels 32 and a
CLIP-L text encoder of width 32, same topology and module names as SD1.5, random weights) in a
ModelPatcher and a comfy.sd.CLIP; the final LoRAs of `train` and `diff` (tests/integration/final_loras.py)
loaded as ComfyUI's LoraLoader node does (comfy.utils.load_torch_file + comfy.sd.load_lora_for_models:
model_lora_keys_unet / model_lora_keys_clip / load_lora / add_patches), patched in
(comfy.model_management.load_models_gpu, as sampling and CLIPTextEncode do: comfy.lora.calculate_weight) and compared with strength * alpha/rank *
up @ down. The text encoder is run at float32 and at ComfyUI's CPU default (fp16). One JSON line per
LoRA, text-encoder dtype and strength.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COMFY = os.path.abspath(sys.argv[1])
OUT = sys.argv[2]
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))
sys.path.insert(0, REPO)
sys.path.insert(0, COMFY)
os.chdir(COMFY)  # ComfyUI resolves its own files (tokenizer, configs) from its folder

import comfy.cli_args  # noqa: E402

comfy.cli_args.args.cpu = True  # as `python main.py --cpu`

from pathlib import Path  # noqa: E402

import comfy.model_management  # noqa: E402
import comfy.model_patcher  # noqa: E402
import comfy.sd  # noqa: E402
import comfy.supported_models  # noqa: E402
import comfy.utils  # noqa: E402
import final_loras  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


class Caught(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


caught = Caught()
logging.getLogger().addHandler(caught)

t0 = time.time()
torch.manual_seed(0)
cpu = torch.device("cpu")
# comfy.model_detection's SD15 config, at width 32 (GroupNorm's 32 groups still divide every width)
unet_config = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True, "legacy": False, "adm_in_channels": None,
               "in_channels": 4, "model_channels": 32, "num_res_blocks": [2, 2, 2, 2], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
               "channel_mult": [1, 2, 4, 4], "transformer_depth_middle": 1, "use_linear_in_transformer": False, "context_dim": 32,
               "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], "use_temporal_attention": False, "use_temporal_resblock": False}
model_config = comfy.supported_models.SD15(unet_config)
model_config.set_inference_dtype(torch.float32, None)
model = model_config.get_model({}, "model.diffusion_model.", device=cpu)
clip_config = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4, "projection_dim": 32}


def randomize(module):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_((torch.randn(p.shape, generator=g) * 0.05).to(p.dtype))


randomize(model)
patcher = comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)
clips = {}
for te_dtype in ("float32", "default"):
    opts = {"clip_l_model_config": clip_config}
    if te_dtype == "float32":
        opts["dtype"] = torch.float32
    clip = comfy.sd.CLIP(model_config.clip_target({}), model_options=opts)
    randomize(clip.cond_stage_model)
    clips[te_dtype] = clip

# every module's weight, by the kohya name sd-scripts gives it (its ckpt_key: the single-file checkpoint's name)
modules = final_loras.sd15_modules()
target = {}
for m in modules:
    k = m["ckpt_key"]
    if k.startswith("model.diffusion_model."):
        target[m["name"]] = ("unet", k[len("model."):])
    else:
        target[m["name"]] = ("te", k.replace("cond_stage_model.transformer.", "clip_l.transformer.", 1))


def weight(owner, key):
    return comfy.utils.get_attr(owner, key)


shapes = {name: tuple(weight(model if part == "unet" else clips["float32"].cond_stage_model, key).shape) for name, (part, key) in target.items()}
loras = final_loras.build(shapes, Path(OUT))
try:
    commit = subprocess.run(["git", "-C", COMFY, "rev-parse", "HEAD"], capture_output=True, text=True, check=False).stdout.strip()
except OSError:
    commit = ""
if not commit and os.path.isfile(os.path.join(COMFY, "COMMIT")):
    commit = Path(COMFY, "COMMIT").read_text(encoding="utf-8").strip()
version = ""
if os.path.isfile(os.path.join(COMFY, "comfyui_version.py")):
    ns = {}
    exec(Path(COMFY, "comfyui_version.py").read_text(encoding="utf-8"), ns)
    version = ns.get("__version__", "")

key_map = comfy.lora.model_lora_keys_unet(model, {})
key_map = comfy.lora.model_lora_keys_clip(clips["float32"].cond_stage_model, key_map)
mapping_wrong = [n for n, (_, k) in target.items() if key_map.get(n) != k]

# the control: a key ComfyUI has no place for is reported (so 0 reported above means 0 ignored)
caught.messages.clear()
control = dict(comfy.utils.load_torch_file(str(loras["diff"]), safe_load=True))
control["lora_unet_no_such_block_to_q.lora_down.weight"] = control["lora_unet_mid_block_attentions_0_proj_in.lora_down.weight"]
comfy.sd.load_lora_for_models(patcher, clips["float32"], control, 1.0, 1.0)
print(json.dumps({"control_not_loaded": [m for m in caught.messages if m.startswith("lora key not loaded")]}), flush=True)

# and, for the record, resize_lora.py's output before copymachine's finalize (mixed ranks: 2 modules at rank 1)
loras["train-unpadded"] = Path(OUT) / "train-resized.safetensors"
for kind, path in loras.items():
    lora_sd = comfy.utils.load_torch_file(str(path), safe_load=True)
    for clip in clips.values():
        for strength in (1.0, -1.0, 0.5):
            caught.messages.clear()
            before = {n: weight(model if part == "unet" else clip.cond_stage_model, key).detach().clone() for n, (part, key) in target.items()}
            new_model, new_clip = comfy.sd.load_lora_for_models(patcher, clip, lora_sd, strength, strength)
            patched_keys = set(new_model.patches) | set(new_clip.patcher.patches)
            # as sampling and CLIPTextEncode do: load_models_gpu patches the weights (comfy.lora.calculate_weight)
            comfy.model_management.load_models_gpu([new_model, new_clip.patcher], force_full_load=True)
            worst = {"unet": 0.0, "te": 0.0}
            ulps = 0.0
            applied = 0
            deltas = final_loras.expected_deltas(path, strength)
            for n, (part, key) in target.items():
                w = weight(model if part == "unet" else clip.cond_stage_model, key).detach()
                exp = deltas[n].reshape(w.shape)
                got = w.double() - before[n].double()
                if got.abs().max() > 0:
                    applied += 1
                if w.dtype == torch.float32:
                    scale = float(np.abs(exp).max())
                    err = float((got - torch.from_numpy(exp)).abs().max())
                    worst[part] = max(worst[part], err / scale if scale else err)
                else:  # the patched weight is (w + delta) rounded to w's dtype: count its units in the last place
                    want = (before[n].double() + torch.from_numpy(exp)).to(w.dtype)
                    ulp = torch.finfo(w.dtype).eps * torch.maximum(want.double().abs(), torch.tensor(torch.finfo(w.dtype).tiny))
                    ulps = max(ulps, float(((w.double() - want.double()).abs() / ulp).max()))
                    if part == "unet":
                        raise AssertionError("the U-Net is float32 here")
            comfy.model_management.unload_all_models()  # unpatches: the weights must come back as they were
            restored = all(torch.equal(weight(model if part == "unet" else clip.cond_stage_model, key), before[n]) for n, (part, key) in target.items())
            not_loaded = [m for m in caught.messages if m.startswith(("lora key not loaded", "NOT LOADED"))]
            lora_keys = [k for k in lora_sd if k.startswith("lora_")]
            print(json.dumps({"lora": kind, "te_dtype": str(clip.cond_stage_model.clip_l.transformer.text_model.encoder.layers[0].mlp.fc1.weight.dtype).replace("torch.", ""),
                              "strength": strength, "modules": len(target), "lora_keys": len(lora_keys), "patches": len(patched_keys),
                              "mapped_as_sd_scripts": len(target) - len(mapping_wrong), "mapping_wrong": mapping_wrong[:3],
                              "applied": applied, "not_loaded": not_loaded[:5], "n_not_loaded": len(not_loaded), "warnings": caught.messages[:5],
                              "max_rel_error_unet": worst["unet"], "max_rel_error_te": worst["te"], "te_max_ulps": ulps, "restored": restored,
                              "comfyui_commit": commit, "comfyui_version": version}), flush=True)
print(json.dumps({"wall_s": round(time.time() - t0, 1)}), flush=True)
