"""Dump the checkpoint layouts and LoRA module names of FLUX.1 (dev, schnell), Chroma, SD3/3.5 and Anima.

Run once with the sd-scripts Python (under `flock /tmp/sd.lock` on a shared machine):

    vendor/sd-scripts/venv/bin/python tests/fake_sdscripts/dump_layouts.py --sd-scripts vendor/sd-scripts

No weights are allocated: every model is built by sd-scripts' own classes on torch's "meta" device, with
the configurations sd-scripts' loaders build:

- FLUX.1 dev / schnell: library/flux_models.py Flux(configs["dev" | "schnell"].params) (flux_utils.
  load_flow_model); the BFL single file has the bare state-dict keys (`double_blocks.0.img_attn.qkv.weight`).
- Chroma: library/chroma_models.py Chroma(chroma_params) (load_flow_model with model_type="chroma").
- SD3 medium, SD3.5 large, SD3.5 medium: library/sd3_models.py create_sd3_mmdit(SD3Params) with the
  parameters sd3_utils.analyze_state_dict_state reads from the released files (depth 24/38/24; RMS q/k
  norms on 3.5; x-block self-attention in blocks 0-12 and a 384 position grid on 3.5 medium), keys prefixed
  `model.diffusion_model.`, plus SDVAE as `first_stage_model.` (the released single files hold the VAE;
  sd3_utils.load_vae reads it from there when no --vae is given). No text encoders (`text_encoders.*`): the
  plain release files hold none (make_checkpoint can add a few).
- Anima: library/anima_models.py Anima(**dit_config of anima_utils.load_anima_model), keys prefixed `net.`
  (the released file's prefix, which load_anima_model strips).

dtype: what the released files hold (BF16 for FLUX.1/Chroma/Anima, F16 for SD3/3.5); the shapes and key
names come from the classes. The LoRA modules come from create_network of networks/lora_flux.py,
lora_sd3.py and lora_anima.py run on the meta-device model with no text encoder (a U-Net-only network,
as copymachine trains it: network_train_unet_only), default network_args.

Writes tests/fake_sdscripts/data/layout-<name>.json ({"keys": {key: [dtype, shape]}}) and
data/lora_modules_<flux|chroma|sd3-medium|sd3-5-large|sd3-5-medium|anima>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Python put this folder first on sys.path; its fake accelerate/ and library/ would shadow the real ones.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]

SD3_PARAMS = {  # (depth, pos_embed_max_size, qk_norm, x_block_self_attn_layers, model_type)
    "sd3-medium": (24, 192, None, [], "medium"),
    "sd3-5-large": (38, 192, "rms", [], "5-large"),
    "sd3-5-medium": (24, 384, "rms", list(range(13)), "5-medium"),
}


def build_models(torch):
    from accelerate import init_empty_weights
    from library import anima_models, chroma_models, flux_models, sd3_models

    models = {}
    with torch.device("meta"):
        models["flux-dev"] = ("", "BF16", flux_models.Flux(flux_models.configs["dev"].params))
        models["flux-schnell"] = ("", "BF16", flux_models.Flux(flux_models.configs["schnell"].params))
        models["chroma"] = ("", "BF16", chroma_models.Chroma(chroma_models.chroma_params))
        for name, (depth, grid, qk_norm, x_attn, model_type) in SD3_PARAMS.items():
            params = sd3_models.SD3Params(patch_size=2, depth=depth, num_patches=grid * grid, pos_embed_max_size=grid,
                                          adm_in_channels=2048, qk_norm=qk_norm, x_block_self_attn_layers=x_attn,
                                          context_embedder_in_features=4096,
                                          context_embedder_out_features=64 * depth, model_type=model_type)
            models[name] = ("model.diffusion_model.", "F16", sd3_models.create_sd3_mmdit(params))
        vae = sd3_models.SDVAE(device="meta")
    with init_empty_weights(include_buffers=True):
        dit_config = dict(max_img_h=512, max_img_w=512, max_frames=128, in_channels=16, out_channels=16,
                          patch_spatial=2, patch_temporal=1, model_channels=2048, concat_padding_mask=True,
                          crossattn_emb_channels=1024, pos_emb_cls="rope3d", pos_emb_learnable=True,
                          pos_emb_interpolation="crop", min_fps=1, max_fps=30, use_adaln_lora=True,
                          adaln_lora_dim=256, num_blocks=28, num_heads=16, extra_per_block_abs_pos_emb=False,
                          rope_h_extrapolation_ratio=4.0, rope_w_extrapolation_ratio=4.0,
                          rope_t_extrapolation_ratio=1.0, extra_h_extrapolation_ratio=1.0,
                          extra_w_extrapolation_ratio=1.0, extra_t_extrapolation_ratio=1.0,
                          rope_enable_fps_modulation=False, use_llm_adapter=True, attn_mode="torch", split_attn=False)
        models["anima"] = ("net.", "BF16", anima_models.Anima(**dit_config))
    return models, vae


def layout(prefix: str, dtype: str, model) -> dict:
    return {prefix + k: [dtype, list(v.shape)] for k, v in model.state_dict().items()}


def lora_modules(torch, name: str, prefix: str, model) -> list[dict]:
    import importlib

    module = {"flux": "lora_flux", "chroma": "lora_flux", "anima": "lora_anima"}.get(name, "lora_sd3")
    lora = importlib.import_module(f"networks.{module}")
    net = lora.create_network(1.0, 4, 1.0, None, [], model)
    paths = {id(m): n for n, m in model.named_modules()}
    out = []
    for m in list(net.text_encoder_loras) + list(net.unet_loras):
        down = m.lora_down
        if isinstance(down, torch.nn.Conv2d):
            kind, kernel, in_dim, out_dim = "conv2d", list(down.kernel_size), down.in_channels, m.lora_up.out_channels
        else:
            kind, kernel, in_dim, out_dim = "linear", None, down.in_features, m.lora_up.out_features
        path = paths.get(id(m.org_module))
        out.append({"name": m.lora_name, "kind": kind, "kernel": kernel, "in": in_dim, "out": out_dim,
                    "ckpt_key": prefix + path + ".weight" if path is not None else None})
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sd-scripts", required=True, type=Path)
    ap.add_argument("--out", type=Path, default=HERE / "data")
    args = ap.parse_args()
    sd = args.sd_scripts.resolve()
    sys.path[:0] = [str(sd)]
    os.chdir(sd)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args.out.mkdir(parents=True, exist_ok=True)
    commit = json.loads((HERE / "options.json").read_text())["sd_scripts_commit"]
    about = f"dumped by tests/fake_sdscripts/dump_layouts.py from sd-scripts {commit} (models built on the meta device)"

    import torch

    models, vae = build_models(torch)

    def write(name, obj):
        (args.out / name).write_text(json.dumps({"_about": about, **obj}, separators=(",", ":")) + "\n")
        print("wrote", args.out / name, (args.out / name).stat().st_size, "bytes")

    for name, (prefix, dtype, model) in models.items():
        keys = layout(prefix, dtype, model)
        if prefix == "model.diffusion_model.":
            keys.update(layout("first_stage_model.", dtype, vae))
        write(f"layout-{name}.json", {"format": "{key: [safetensors dtype, shape]} of the released single file",
                                      "keys": keys})
    for name, source in (("flux", "flux-dev"), ("chroma", "chroma"), ("sd3-medium", "sd3-medium"),
                         ("sd3-5-large", "sd3-5-large"), ("sd3-5-medium", "sd3-5-medium"), ("anima", "anima")):
        prefix, _, model = models[source]
        mods = lora_modules(torch, name, prefix, model)
        if name == "flux":  # schnell differs from dev only by guidance_in, which no LoRA module wraps
            assert [m["name"] for m in mods] == [m["name"] for m in lora_modules(torch, name, "", models["flux-schnell"][2])]
        write(f"lora_modules_{name}.json", {
            "format": "modules the family's networks/lora_*.py create_network makes for a U-Net-only network "
                      "(LoRAModule.lora_name, layer kind, real in/out sizes, ckpt_key = the checkpoint weight it changes)",
            "modules": mods, "counts": {"te": 0, "unet": len(mods)}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
