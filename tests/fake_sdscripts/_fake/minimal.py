"""Fake flux_minimal_inference.py / sd3_minimal_inference.py / anima_minimal_inference.py: noise PNGs named,
sized and placed as the real ones (code: each script's __main__ block / main() at the pinned commit).

- flux / sd3: ONE image per run, `<output_dir>/<%Y%m%d_%H%M%S>.png` (two runs in the same second into one
  folder overwrite each other, as the real ones do); --lora_weights `path;multiplier` (or `path`, 1.0),
  loaded with strict=True (a LoRA with modules the model lacks fails); FLUX's image is 16·ceil(size/16)
  (the packed latent), SD3's 8·(size//8).
- anima: --from_file lines (parse_prompt_line: --w --h --d --s --g/--l --fs --n), each image
  `<save_path>/<%Y%m%d-%H%M%S-mmm>_<seed>_.png` (save_output hands save_images an empty base name, which
  it turns into "_"); height and width must be multiples of 32 (check_inputs, before anything is
  rendered); --lora_weight needs --lora_multiplier (its default 1.0 is not a list: `len()` fails).
The pictures come from _fake/gen.py's png_bytes (seed, multipliers, LoRA bytes, prompt; COPYMACHINE_FAKE_COPY
and COPYMACHINE_FAKE_LEAK as for gen_img). The checkpoint's header is read, never its data.
"""

from __future__ import annotations

import datetime
import math
import os
import random
import time
from pathlib import Path
from types import SimpleNamespace

from . import common, gen
from .common import Console, FakeRun, crash

DTYPES = {"bf16", "bfloat16", "fp16", "float16", "fp32", "float32", "float", "fp8_e4m3fn", "e4m3fn", "float8_e4m3fn",
          "fp8_e4m3fnuz", "e4m3fnuz", "float8_e4m3fnuz", "fp8_e5m2", "e5m2", "float8_e5m2", "fp8_e5m2fnuz", "e5m2fnuz",
          "float8_e5m2fnuz", "fp8", "float8"}


def main(script: str) -> None:
    body = {"flux_minimal_inference.py": flux_or_sd3, "sd3_minimal_inference.py": flux_or_sd3,
            "anima_minimal_inference.py": anima}[script]
    common.run_main(script, lambda run, args: body(run, args, script))


def need_file(run: FakeRun, path, what: str, con: Console) -> None:
    if path is None:
        crash(run, "TypeError: argument 'filename': 'NoneType' object cannot be converted to 'PyString'")
    if not os.path.exists(path):
        crash(run, f"FileNotFoundError: No such file or directory: \"{path}\"")
    con.info(f"Loading {what} from {path}...", "")


def header_keys(run: FakeRun, path) -> set[str]:
    need_file(run, path, "model", Console())
    try:
        header, _ = common.read_header(path)
    except Exception as e:
        crash(run, f"safetensors_rust.SafetensorError: Error while deserializing header: {e}")
    header.pop("__metadata__", None)
    return set(header)


def lora_names(family: str) -> set[str]:
    return {m["name"] for m in common.load_json(f"lora_modules_{family}.json")["modules"]}


def check_lora(run: FakeRun, path: str, valid: set[str], prefixes: tuple[str, ...]) -> None:
    """strict=True load into the network create_network_from_weights built for the model: a module the
    model lacks is an unexpected key."""
    if not os.path.isfile(path):
        crash(run, f"FileNotFoundError: No such file or directory: \"{path}\"")
    header, _ = common.read_header(path)
    names = {k.split(".")[0] for k in header if k != "__metadata__"}
    bad = sorted(n for n in names if n not in valid and not n.startswith(prefixes))
    if bad:
        crash(run, f"RuntimeError: Error(s) in loading state_dict for LoRANetwork: Unexpected key(s) in state_dict: "
                   f"\"{bad[0]}.lora_down.weight\" (copymachine fake: {len(bad)} modules the model lacks)")


def sd3_family(keys: set[str]) -> str:
    if "model.diffusion_model.joint_blocks.0.context_block.attn.ln_k.weight" not in keys:
        return "sd3-medium"
    return "sd3-5-medium" if any(".x_block.attn2.ln_k.weight" in k for k in keys) else "sd3-5-large"


def flux_or_sd3(run: FakeRun, args, script: str) -> None:
    con = Console()
    flux = script.startswith("flux")
    if args.interactive:
        crash(run, "NotImplementedError: copymachine fake: --interactive is not emulated", 3)
    keys = header_keys(run, args.ckpt_path)
    if flux:
        for d in (args.dtype, args.clip_l_dtype, args.ae_dtype, args.t5xxl_dtype, args.flux_dtype):
            if d is not None and d not in DTYPES:
                crash(run, f"ValueError: Unsupported dtype: {d}")
        if args.model_type == "flux":
            need_file(run, args.clip_l, "clip_l", con)
        need_file(run, args.t5xxl, "t5xxl", con)
        bare = {k.removeprefix("model.diffusion_model.") for k in keys}
        schnell = args.model_type == "flux" and "guidance_in.in_layer.bias" not in bare
        need_file(run, args.ae, "ae", con)
        family, prefixes = ("chroma" if args.model_type == "chroma" else "flux"), ("lora_te1_", "lora_te3_")
        seed = args.seed if args.seed is not None else random.randint(0, 2**32 - 1)
        steps = args.steps if args.steps is not None else (4 if schnell else 50)
        w, h = 16 * math.ceil(args.width / 16), 16 * math.ceil(args.height / 16)
        scale = args.guidance
    else:
        te = {"clip_l": "text_encoders.clip_l.", "clip_g": "text_encoders.clip_g.", "t5xxl": "text_encoders.t5xxl."}
        for name, prefix in te.items():
            if getattr(args, name) is None and not any(k.startswith(prefix) for k in keys):
                crash(run, "AttributeError: 'NoneType' object has no attribute 'to'")
            if getattr(args, name) is not None:
                need_file(run, getattr(args, name), name, con)
        if not any(k.startswith("first_stage_model.") for k in keys):
            crash(run, "RuntimeError: Error(s) in loading state_dict for SDVAE: Missing key(s) in state_dict")
        family, prefixes = sd3_family(keys), ("lora_te1_", "lora_te2_", "lora_te3_")
        seed, steps, w, h, scale = args.seed, args.steps, args.width // 8 * 8, args.height // 8 * 8, args.cfg_scale
    weights, muls = [], []
    for item in args.lora_weights:
        path, mul = item, 1.0
        if ";" in item:
            try:
                path, m = item.split(";")
            except ValueError as e:
                crash(run, f"ValueError: {e}")
            mul = float(m)
        check_lora(run, path, lora_names(family), prefixes)
        con.info(f"Loaded LoRA weights from {path}: <All keys matched successfully>", "")
        weights.append(path)
        muls.append(mul)
    con.info(f"Seed: {seed}", "")
    out = Path(args.output_dir) / f"{datetime.datetime.now().strftime('%Y%m%d_%H%M%S')}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    opts = {"steps": steps, "scale": scale, "negative": args.negative_prompt or ""}
    data = gen.png_bytes(w, h, seed, muls, weights, args.prompt, opts, SimpleNamespace(sampler="euler"),
                         run.fail == "nan")
    run.save_bytes(out, data)
    run.set(images=[{"file": str(out), "prompt": args.prompt, "seed": seed, "network_mul": muls, "width": w,
                     "height": h, "steps": steps}])
    con.info(f"Saved image to {out}", "")
    run.exit(0)


def parse_prompt_line(line: str) -> dict:
    """(code: anima_minimal_inference.py parse_prompt_line)"""
    parts = line.split(" --")
    out = {"prompt": parts[0].strip()}
    names = {"w": ("width", int), "h": ("height", int), "d": ("seed", int), "s": ("infer_steps", int),
             "g": ("guidance_scale", float), "l": ("guidance_scale", float), "fs": ("flow_shift", float),
             "n": ("negative_prompt", str)}
    for part in parts[1:]:
        if not part.strip():
            continue
        option, _, value = part.partition(" ")
        if option.strip() in names:
            key, kind = names[option.strip()]
            out[key] = kind(value.strip())
    return out


def anima(run: FakeRun, args, script: str) -> None:
    con = Console()
    if args.from_file and args.interactive:
        crash(run, "ValueError: Cannot use both --from_file and --interactive at the same time")
    if not args.latent_path and args.prompt is None and not args.from_file and not args.interactive:
        crash(run, "ValueError: Either --prompt, --from_file or --interactive must be specified")
    if args.interactive or args.latent_path or args.output_type != "images":
        crash(run, "NotImplementedError: copymachine fake: --interactive, --latent_path and latent outputs are not "
                   "emulated", 3)
    if args.attn_mode == "sdpa":
        args.attn_mode = "torch"
    need_file(run, args.text_encoder, "Qwen3 tokenizer", con)  # (code: load_qwen3_tokenizer, a file: configs/)
    if args.from_file:
        with open(args.from_file, encoding="utf-8") as f:
            lines = [ln.strip() for ln in f.readlines()]
        prompts = [parse_prompt_line(ln) for ln in lines if ln and not ln.startswith("#")]
    else:
        prompts = [{"prompt": args.prompt}]
    if not prompts:
        con.warning("No valid prompts found", "")
        run.exit(0)
    need_file(run, args.vae, "VAE", con)
    base = {"width": args.image_size[1], "height": args.image_size[0], "seed": args.seed,
            "infer_steps": args.infer_steps, "guidance_scale": args.guidance_scale,
            "negative_prompt": args.negative_prompt}
    items = [{**base, **p} for p in prompts]
    for it in items:  # (code: check_inputs for every prompt before the DiT loads)
        if it["height"] % 32 or it["width"] % 32:
            crash(run, f"ValueError: `height` and `width` have to be divisible by 32 but are {it['height']} and "
                       f"{it['width']}.")
    keys = header_keys(run, args.dit)
    if "blocks.0.self_attn.q_proj.weight" not in {k.removeprefix("net.") for k in keys}:
        crash(run, "RuntimeError: Error(s) in loading state_dict for Anima: Missing key(s) in state_dict")
    weights = list(args.lora_weight or [])
    muls = anima_multipliers(run, weights, args.lora_multiplier)
    for w in weights:
        if not os.path.isfile(w):
            crash(run, f"FileNotFoundError: No such file or directory: \"{w}\"")
        con.info(f"Loading LoRA weight from: {w}", "")
    images = []
    for it in items:
        seed = it["seed"] if it["seed"] is not None else random.randint(0, 2**32 - 1)
        flag = datetime.datetime.fromtimestamp(time.time()).strftime("%Y%m%d-%H%M%S-%f")[:-3]
        out = Path(args.save_path) / f"{flag}_{seed}_.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        opts = {"steps": it["infer_steps"], "scale": it["guidance_scale"], "negative": it["negative_prompt"] or ""}
        data = gen.png_bytes(it["width"], it["height"], seed, muls, weights, it["prompt"], opts,
                             SimpleNamespace(sampler="euler"), run.fail == "nan")
        run.save_bytes(out, data)
        con.info(f"Sample images saved to: {args.save_path}/{out.stem}", "")
        images.append({"file": str(out), "prompt": it["prompt"], "seed": seed, "network_mul": muls,
                       "width": it["width"], "height": it["height"], "steps": it["infer_steps"]})
    run.set(images=images)
    con.info("Done!", "")
    run.exit(0)


def anima_multipliers(run: FakeRun, weights: list, given) -> list[float]:
    """(code: library/lora_utils.py load_safetensors_with_lora_and_fp8) padded with 1.0, cut to the LoRAs."""
    if not weights:
        return []
    if not isinstance(given, list):
        crash(run, f"TypeError: object of type '{type(given).__name__}' has no len()")
    muls = list(given) + [1.0] * (len(weights) - len(given))
    return [float(m) for m in muls[: len(weights)]]

