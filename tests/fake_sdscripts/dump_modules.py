"""Dump real key names as data for the fake: checkpoint keys and LoRA module names.

Run once with the sd-scripts Python:

    vendor/sd-scripts/venv/bin/python tests/fake_sdscripts/dump_modules.py --sd-scripts vendor/sd-scripts

No weights are allocated: the models are built on the meta device (accelerate.init_empty_weights),
written through sd-scripts' own single-file savers with ``save_file`` intercepted (so the key names
and shapes are exactly what the saver writes), and sd-scripts' networks/lora.py ``create_network``
is run on them to list the LoRA modules it creates (names, layer kind, in/out sizes), with and
without ``conv_dim``.

Writes tests/fake_sdscripts/data/{sd15,sd2,sdxl}_checkpoint_keys.json and
tests/fake_sdscripts/data/lora_modules_{sd15,sdxl}.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Python put this folder first on sys.path; its fake accelerate/ and library/ would shadow the real ones.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sd-scripts", required=True, type=Path)
    ap.add_argument("--out", type=Path, default=HERE / "data")
    args = ap.parse_args()
    sd = args.sd_scripts.resolve()
    sys.path[:0] = [str(sd), str(sd / "networks")]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args.out.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=sd, capture_output=True, text=True).stdout.strip()

    import torch
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    sys.path.insert(0, str(HERE.parent / "integration"))
    import lora
    from build_fixtures import clip_text_config  # the configs sd-scripts' loaders build
    from library import model_util, sdxl_model_util, sdxl_original_unet
    from library.original_unet import UNet2DConditionModel

    captured = {}

    def fake_save_file(state_dict, path, metadata=None):
        captured["sd"] = state_dict

    model_util.save_file = fake_save_file
    sdxl_model_util.save_file = fake_save_file

    def keys_of(sd_dict):
        return {k: list(v.shape) for k, v in sd_dict.items()}

    def write(name, obj):
        obj = {"_about": f"dumped by tests/fake_sdscripts/dump_modules.py from sd-scripts {commit}", **obj}
        (args.out / name).write_text(json.dumps(obj, indent=0) + "\n")
        print("wrote", args.out / name)

    models = {}
    with init_empty_weights():
        for v2 in (False, True):
            unet = UNet2DConditionModel(**model_util.create_unet_diffusers_config(v2, use_linear_projection_in_v2=v2))
            vae = AutoencoderKL(**model_util.create_vae_diffusers_config())
            te = CLIPTextModel._from_config(
                clip_text_config(1024, 4096, 23, 16, "gelu", 512) if v2 else clip_text_config()
            )
            model_util.save_stable_diffusion_checkpoint(v2, "x.safetensors", te, unet, None, 0, 0, None, None, vae)
            name = "sd2" if v2 else "sd15"
            write(f"{name}_checkpoint_keys.json", {"format": "single-file checkpoint as sd-scripts' saver writes it (library/model_util.py save_stable_diffusion_checkpoint, v2=%s)" % v2, "keys": keys_of(captured["sd"])})
            models[name] = (te, vae, unet)

        xl_unet = sdxl_original_unet.SdxlUNet2DConditionModel()
        te1 = CLIPTextModel._from_config(clip_text_config())
        te2 = CLIPTextModelWithProjection(clip_text_config(1280, 5120, 32, 20, "gelu", 1280))
        vae = AutoencoderKL(**model_util.create_vae_diffusers_config())
        sdxl_model_util.save_stable_diffusion_checkpoint("x.safetensors", te1, te2, xl_unet, 0, 0, None, vae, torch.tensor(4.6), None, None)
        write("sdxl_checkpoint_keys.json", {"format": "single-file checkpoint as sd-scripts' saver writes it (library/sdxl_model_util.py save_stable_diffusion_checkpoint)", "keys": keys_of(captured["sd"])})
        models["sdxl"] = ([te1, te2], vae, xl_unet)

    import re

    def ckpt_key_map(name, te, unet):
        """id(org module) -> the checkpoint key of the weight it holds, as the savers name it."""
        ids = {}
        if name == "sd15":
            hf_to_sd = {hf: sdk for sdk, hf in model_util.convert_unet_state_dict_to_sd(False, {k: k for k in unet.state_dict()}).items()}
            for n, mod in unet.named_modules():
                if n + ".weight" in hf_to_sd:
                    ids[id(mod)] = "model.diffusion_model." + hf_to_sd[n + ".weight"]
            for n, mod in te.named_modules():
                ids[id(mod)] = "cond_stage_model.transformer." + n + ".weight"
        else:
            for n, mod in unet.named_modules():
                ids[id(mod)] = "model.diffusion_model." + n + ".weight"
            for n, mod in te[0].named_modules():
                ids[id(mod)] = "conditioner.embedders.0.transformer." + n + ".weight"
            for n, mod in te[1].named_modules():
                # library/sdxl_model_util.py convert_text_encoder_2_state_dict_to_sdxl: q/k/v are fused into
                # attn.in_proj_weight (no single key); out_proj, fc1 and fc2 keep a key of their own
                m = re.match(r"text_model\.encoder\.layers\.(\d+)\.(self_attn\.out_proj|mlp\.fc1|mlp\.fc2)$", n)
                if m:
                    part = {"self_attn.out_proj": "attn.out_proj", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}[m.group(2)]
                    ids[id(mod)] = f"conditioner.embedders.1.model.transformer.resblocks.{m.group(1)}.{part}.weight"
        return ids

    def modules_of(net, keymap, ckpt_keys):
        out = []
        for m in list(net.text_encoder_loras) + list(net.unet_loras):
            down = m.lora_down
            if isinstance(down, torch.nn.Conv2d):
                kind, k = "conv2d", list(down.kernel_size)
                in_dim, out_dim = down.in_channels, m.lora_up.out_channels
            else:
                kind, k = "linear", None
                in_dim, out_dim = down.in_features, m.lora_up.out_features
            key = keymap.get(id(m.org_module))
            assert key is None or key in ckpt_keys, key
            out.append({"name": m.lora_name, "kind": kind, "kernel": k, "in": in_dim, "out": out_dim, "ckpt_key": key})
        return out

    # networks/lora.py extends LoRANetwork.UNET_TARGET_REPLACE_MODULE *in place* (`+=` on the class
    # list) when a network has conv_dim: after one such network, every later network in the same
    # process also wraps the ResBlock linears. Restore the list before each network (a training run
    # is a fresh process and never sees this).
    targets = list(lora.LoRANetwork.UNET_TARGET_REPLACE_MODULE)

    def network(*args, **kwargs):
        lora.LoRANetwork.UNET_TARGET_REPLACE_MODULE = list(targets)
        return lora.create_network(*args, **kwargs)

    for name in ("sd15", "sdxl"):
        te, vae, unet = models[name]
        plain = network(1.0, 4, 1.0, vae, te, unet)
        conv = network(1.0, 4, 1.0, vae, te, unet, conv_dim=4, conv_alpha=1)
        keymap = ckpt_key_map(name, te, unet)
        ckpt_keys = json.loads((args.out / f"{name}_checkpoint_keys.json").read_text())["keys"]
        plain_mods = modules_of(plain, keymap, ckpt_keys)
        plain_names = {m["name"] for m in plain_mods}
        write(
            f"lora_modules_{name}.json",
            {
                "format": "modules networks/lora.py create_network makes (LoRAModule.lora_name, layer kind, real in/out sizes, ckpt_key = the single-file checkpoint weight it changes or null); 'conv_only' are the extra modules with network_args conv_dim",
                "modules": plain_mods,
                "conv_only": [m for m in modules_of(conv, keymap, ckpt_keys) if m["name"] not in plain_names],
                "counts": {"te": len(plain.text_encoder_loras), "unet": len(plain.unet_loras), "unet_with_conv": len(conv.unet_loras)},
            },
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
