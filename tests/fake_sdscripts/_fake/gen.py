"""Fake gen_img.py: one deterministic noise PNG per image, named and logged like the real one.

(code: gen_img.py main — prompt file reading, " --d" seeds, " --x value" per-line options, file names,
the fixed_seed crash; run: docs/engine-notes.md, 64 px / 2 steps with --from_file, --d and --am.)
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import time
from pathlib import Path

import numpy as np

from . import common
from .common import Console, FakeRun, crash


def main(script: str, prompt_option) -> None:
    """`prompt_option(parg, opts, con, n_networks)` reads one " --x value" of a prompt line into
    `opts`: it lives in gen_img.py itself, as in the real script, where copymachine reads which
    prompt options the script has."""
    common.run_main(script, lambda run, args: _main(run, args, script, prompt_option))


def _main(run: FakeRun, args, script: str, prompt_option) -> None:
    con = Console()
    if not args.ckpt or not os.path.exists(args.ckpt):
        crash(run, f"OSError: {args.ckpt} is not a local file (copymachine fake)")
    is_sdxl = bool(args.sdxl) or (not args.v1 and not args.v2 and os.path.getsize(args.ckpt) > 5.5 * 1024**3)
    weights = list(args.network_weights or [])
    for w in weights:
        if not os.path.isfile(w):
            crash(run, f"FileNotFoundError: [Errno 2] No such file or directory: '{w}'")
        con.info(f"load network weights from: {w}", "gen_img.py")
    con.info("pipeline is ready.", "gen_img.py:2056")

    if args.from_file is not None:
        con.info(f"reading prompts from {args.from_file}", "gen_img.py:2164")
        with open(args.from_file, encoding="utf-8") as f:
            prompts = [d for d in f.read().splitlines() if len(d.strip()) > 0 and d[0] != "#"]
    elif args.prompt is not None:
        prompts = [args.prompt]
    else:
        crash(run, "NotImplementedError: copymachine fake: --interactive / --from_module are not emulated", 3)

    if args.seed is not None:
        if len(prompts) == 1 and args.images_per_prompt == 1 and args.from_file is not None:
            seed_random = None  # the shadowed-args fixed_seed of the real script: crashes when asked for a seed
        else:
            seed_random = random.Random(args.seed)
    else:
        seed_random = random.Random()

    def next_seed() -> int:
        if seed_random is None:  # (run: AttributeError: 'tuple' object has no attribute 'seed', exit 1)
            crash(run, "AttributeError: 'tuple' object has no attribute 'seed'")
        return seed_random.randint(0, 2**32 - 1)

    W = args.W or (1024 if is_sdxl else 512)
    H = args.H or (1024 if is_sdxl else 512)
    outdir = Path(args.outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    images = []
    for it in range(args.n_iter):
        con.info(f"iteration {it + 1}/{args.n_iter}", "gen_img.py:2362")
        iter_seed = next_seed() if args.iter_same_seed else None
        for idx, raw in enumerate(prompts):
            seeds = None
            m = re.search(r" --d ([\d+,]+)", raw, re.IGNORECASE)
            if m:
                seeds = [int(d) for d in m[0][5:].split(",")]
                con.info(f"seeds: {seeds}", "gen_img.py:2742")
                raw = raw[: m.start()] + raw[m.end() :]
            parts = raw.strip().split(" --")
            prompt = parts[0]
            con.info(f"prompt {idx + 1}/{len(prompts)}: {prompt}", "gen_img.py:2792")
            opts = {"w": W, "h": H, "steps": args.steps, "scale": args.scale, "negative": "", "muls": list(args.network_mul or [1.0] * len(weights)), "filename": None}
            for parg in parts[1:]:
                prompt_option(parg, opts, con, len(weights))
            seed = None
            for i in range(args.images_per_prompt):
                if seeds is not None:
                    if seeds:
                        seed = seeds.pop(0)  # when they run out, the previous seed is used again
                else:
                    seed = iter_seed if args.iter_same_seed else None
                if seed is None:
                    seed = next_seed()
                fln = opts["filename"] or (
                    f"im_{i + 1 + len(images):06d}.png" if args.sequential_file_name else f"im_{time.strftime('%Y%m%d%H%M%S')}_{0:03d}_{seed}.png"
                )
                path = outdir / fln
                run.save_bytes(path, png_bytes(opts["w"], opts["h"], seed, opts["muls"], weights, prompt, opts, args, run.fail == "nan"))
                images.append({"file": str(path), "prompt": prompt, "seed": seed, "network_mul": opts["muls"], "width": opts["w"], "height": opts["h"], "steps": opts["steps"]})
    run.set(images=images)
    con.info("done!", "gen_img.py:3115")
    run.exit(0)


def png_bytes(w: int, h: int, seed: int, muls: list, weights: list, prompt: str, opts: dict, args, nan: bool) -> bytes:
    """Noise from the seed, the multipliers, the LoRA files' bytes and the prompt; black for "nan"
    (NaN latents decode to a black image)."""
    import io

    from PIL import Image, PngImagePlugin

    digest = [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in weights]
    rng = common.seeded_rng("image", seed, [round(m, 6) for m in muls], digest, prompt)
    arr = np.zeros((h, w, 3), np.uint8) if nan else rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    copy = os.environ.get("COPYMACHINE_FAKE_COPY")
    if copy and not nan:
        # "perfect copy" mode: a copy machine that copies — every picture is this image, resized to
        # the size asked for as copymachine resizes the original for the copy check (Lanczos)
        with Image.open(copy) as im:
            arr = np.asarray(im.convert("RGB").resize((w, h), Image.Resampling.LANCZOS), np.uint8)
    leak = os.environ.get("COPYMACHINE_FAKE_LEAK")
    if leak and weights and not nan:
        # "leaky" mode: a LoRA that drags its training image into every picture, more with strength:
        # none up to 1, half at 2, all of it from 3 (the memo: "at higher strength the training image came out")
        weight = float(np.clip((max(muls) - 1.0) / 2.0, 0.0, 1.0))
        with Image.open(leak) as im:
            target = np.asarray(im.convert("RGB").resize((w, h), Image.Resampling.LANCZOS), np.float32)
        arr = np.clip(arr * (1.0 - weight) + target * weight + 0.5, 0, 255).astype(np.uint8)
    info = PngImagePlugin.PngInfo()  # (code: the PNG text chunks gen_img.py writes)
    info.add_text("prompt", prompt)
    info.add_text("seed", str(seed))
    info.add_text("sampler", args.sampler)
    info.add_text("steps", str(opts["steps"]))
    info.add_text("scale", str(opts["scale"]))
    if opts["negative"]:
        info.add_text("negative-prompt", opts["negative"])
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()
