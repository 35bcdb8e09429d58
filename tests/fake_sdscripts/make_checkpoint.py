"""Fake base checkpoint maker: real SD1.5 / SD2 / SDXL single-file key names, tiny tensors.

    from make_checkpoint import make_checkpoint      # with tests/fake_sdscripts on sys.path
    make_checkpoint(tmp_path / "base.safetensors", family="sd15", seed=0)

    python tests/fake_sdscripts/make_checkpoint.py OUT.safetensors [--family sd15|sd2|sdxl] [--seed N] [--dtype fp16|float|bf16]
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _fake.checkpoint import FAMILIES, checkpoint_tensors, make_checkpoint  # noqa: F401

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="Write a fake single-file checkpoint (real key names, tiny tensors).")
    ap.add_argument("out")
    ap.add_argument("--family", choices=sorted(FAMILIES), default="sd15")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-dim", type=int, default=16)
    ap.add_argument("--dtype", choices=["fp16", "float", "bf16"], default="fp16")
    a = ap.parse_args()
    p = make_checkpoint(a.out, a.family, a.seed, a.max_dim, a.dtype)
    print(f"{p} ({os.path.getsize(p)} bytes)")
