"""Fake base checkpoint maker: real SD1.5 / SD2 / SDXL single-file key names with tiny tensors; FLUX.1 /
Chroma / SD3 / SD3.5 / Anima layout-only (the released file's header, a sparse all-zero data section).

    from make_checkpoint import make_checkpoint, make_model_file      # with tests/fake_sdscripts on sys.path
    make_checkpoint(tmp_path / "base.safetensors", family="sd15", seed=0)
    make_checkpoint(tmp_path / "flux1-dev.safetensors", family="flux-dev")       # layout-only, ~0 disk
    make_checkpoint(tmp_path / "sd3.5.safetensors", family="sd3-5-large", text_encoders=True)
    make_model_file(tmp_path / "ae.safetensors", "ae")               # clip_l, clip_g, t5xxl, ae, qwen3, vae

    python tests/fake_sdscripts/make_checkpoint.py OUT.safetensors [--family NAME] [--seed N] [--dtype fp16|float|bf16]
        [--tiny] [--text-encoders]
    python tests/fake_sdscripts/make_checkpoint.py OUT.safetensors --model-file ae
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _fake.checkpoint import FAMILIES, LAYOUTS, MODEL_FILES, checkpoint_tensors, make_checkpoint, make_model_file  # noqa: F401

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="Write a fake single-file checkpoint (real key names, tiny tensors or layout-only).")
    ap.add_argument("out")
    ap.add_argument("--family", choices=sorted(FAMILIES) + list(LAYOUTS), default="sd15")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-dim", type=int, default=16)
    ap.add_argument("--dtype", choices=["fp16", "float", "bf16"], default=None)
    ap.add_argument("--tiny", action="store_true", help="FLUX/Chroma/SD3/Anima: tiny tensors instead of layout-only")
    ap.add_argument("--text-encoders", action="store_true", help="SD3/3.5: embed a few text encoder keys")
    ap.add_argument("--model-file", choices=sorted(MODEL_FILES), help="write a small stand-in for this other file instead")
    a = ap.parse_args()
    if a.model_file:
        p = make_model_file(a.out, a.model_file, a.seed)
    else:
        p = make_checkpoint(a.out, a.family, a.seed, a.max_dim, a.dtype, layout_only=False if a.tiny else None,
                            text_encoders=a.text_encoders)
    print(f"{p} ({os.path.getsize(p)} bytes)")
