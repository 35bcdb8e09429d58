"""Build the integration-test fixtures with sd-scripts' own code, offline and idempotently.

Run with the sd-scripts Python (torch, transformers, diffusers and sd-scripts' ``library`` importable):

    python tests/integration/build_fixtures.py --sd-scripts vendor/sd-scripts --out ~/.cache/copymachine-integration
    python tests/integration/build_fixtures.py --sd-scripts vendor/sd-scripts --out CACHE --sdxl

What it makes under ``--out`` (each skipped when it is already there and valid):

* ``tokenizers/openai_clip-vit-large-patch14/`` — a CLIP tokenizer directory in the layout that
  sd-scripts' ``--tokenizer_cache_dir`` loads (``CLIPTokenizer.from_pretrained(<dir>/<model id with
  "/" -> "_">)``, library/strategy_base.py ``_load_tokenizer`` and library/sdxl_train_util.py
  ``load_tokenizers``). vocab.json and merges.txt are derived from open-clip-torch's
  ``bpe_simple_vocab_16e6.txt.gz`` exactly the way CLIP's SimpleTokenizer builds its vocabulary.
* ``sd15-random.safetensors`` — a randomly initialised SD1.5-shaped single-file checkpoint, built from
  sd-scripts' own model configs (library/model_util.py) and written by its own saver
  (``save_stable_diffusion_checkpoint``), fp16.
* with ``--sdxl``: ``tokenizers/laion_CLIP-ViT-bigG-14-laion2B-39B-b160k/`` and
  ``sdxl-random.safetensors`` (library/sdxl_model_util.py configs and saver), fp16.
* with ``--anima``: ``anima/`` with a random Anima DiT, Qwen3-0.6B text encoder and Qwen-Image VAE,
  bf16 (see build_anima.py; building peaks at ~11 GB RAM).

Nothing is downloaded except, when open-clip-torch is not installed in this Python, its wheel from
the package index (``pip download --no-deps open-clip-torch``) to read the BPE file out of it.
"""

from __future__ import annotations

import argparse
import glob
import gzip
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
from functools import cache
from pathlib import Path

FIXTURE_VERSION = "1"
CAT_SENTENCE = "a photo of a cat"
CAT_IDS = [49406, 320, 1125, 539, 320, 2368, 49407]

CLIP_L_ID = "openai/clip-vit-large-patch14"
CLIP_G_ID = "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k"


def log(msg: str) -> None:
    print(f"[build_fixtures] {msg}", flush=True)


# --------------------------------------------------------------------------------------------------
# safetensors header (no torch needed)


def read_safetensors_header(path: Path) -> dict:
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError("too short")
        (n,) = struct.unpack("<Q", head)
        if n > 100_000_000:
            raise ValueError("header too large")
        header = json.loads(f.read(n))
    # the data section must be complete: the largest end offset is the data length
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if path.stat().st_size != 8 + n + end:
        raise ValueError(f"truncated: size {path.stat().st_size} != {8 + n + end}")
    return header


def checkpoint_is_valid(path: Path, kind: str) -> bool:
    if not path.is_file():
        return False
    try:
        header = read_safetensors_header(path)
    except (ValueError, OSError, json.JSONDecodeError) as e:
        log(f"{path.name}: not valid ({e}); rebuilding")
        return False
    meta = header.get("__metadata__", {})
    if meta.get("copymachine.fixture") != kind or meta.get("copymachine.fixture_version") != FIXTURE_VERSION:
        log(f"{path.name}: no fixture marker; rebuilding")
        return False
    return True


# --------------------------------------------------------------------------------------------------
# tokenizer


def bytes_to_unicode() -> dict[int, str]:
    """The byte -> printable unicode table of GPT-2/CLIP BPE (same definition as CLIP's SimpleTokenizer)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def find_bpe_gz(cache: Path) -> Path:
    try:
        import open_clip

        p = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
        if p.is_file():
            return p
    except Exception:
        pass
    for p in Path(sys.prefix).glob("lib/python*/site-packages/open_clip/bpe_simple_vocab_16e6.txt.gz"):
        return p
    dest = cache / "open_clip" / "bpe_simple_vocab_16e6.txt.gz"
    if dest.is_file():
        return dest
    dl = cache / "open_clip" / "wheel"
    dl.mkdir(parents=True, exist_ok=True)
    log("open-clip-torch is not installed here; pip download --no-deps open-clip-torch")
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(dl), "open-clip-torch"], check=True)
    wheels = sorted(glob.glob(str(dl / "open_clip_torch-*.whl")))
    if not wheels:
        raise SystemExit("could not download open-clip-torch")
    with zipfile.ZipFile(wheels[-1]) as z:
        data = z.read("open_clip/bpe_simple_vocab_16e6.txt.gz")
    dest.write_bytes(data)
    return dest


def build_vocab(bpe_gz: Path) -> tuple[dict[str, int], list[str]]:
    """vocab (token -> id) and merges, as CLIP's SimpleTokenizer.__init__ builds them."""
    with gzip.open(bpe_gz) as f:
        lines = f.read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    merges_t = [tuple(m.split()) for m in merges]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab.extend("".join(m) for m in merges_t)
    vocab.extend(["<|startoftext|>", "<|endoftext|>"])
    return {t: i for i, t in enumerate(vocab)}, [" ".join(m) for m in merges_t]


def tokenizer_files(bpe_gz: Path, pad_token: str) -> dict[str, str]:
    encoder, merges = build_vocab(bpe_gz)
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": pad_token,
    }
    config = {
        **special,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": True,
        "do_lower_case": True,
        "errors": "replace",
        "model_max_length": 77,
        "tokenizer_class": "CLIPTokenizer",
    }
    return {
        "vocab.json": json.dumps(encoder, ensure_ascii=False),
        "merges.txt": "#version: 0.2\n" + "\n".join(merges) + "\n",
        "special_tokens_map.json": json.dumps(special, indent=2),
        "tokenizer_config.json": json.dumps(config, indent=2),
    }


def tokenizer_ok(path: Path) -> bool:
    if not (path / "vocab.json").is_file() or not (path / "merges.txt").is_file():
        return False
    from transformers import CLIPTokenizer

    try:
        ids = CLIPTokenizer.from_pretrained(str(path))(CAT_SENTENCE).input_ids
    except Exception as e:  # a broken directory: rebuild it
        log(f"{path.name}: does not load ({e})")
        return False
    return ids == CAT_IDS


def build_tokenizer(cache: Path, model_id: str, pad_token: str) -> Path:
    dest = cache / "tokenizers" / model_id.replace("/", "_")
    if tokenizer_ok(dest):
        log(f"tokenizer {dest.name}: present")
        return dest
    t0 = time.time()
    bpe = find_bpe_gz(cache)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tok-", dir=dest.parent))
    for name, text in tokenizer_files(bpe, pad_token).items():
        (tmp / name).write_text(text, encoding="utf-8")
    if not tokenizer_ok(tmp):
        raise SystemExit(f"tokenizer built from {bpe} does not encode {CAT_SENTENCE!r} to {CAT_IDS}")
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)
    log(f"tokenizer {dest.name}: built in {time.time() - t0:.1f}s from {bpe}")
    return dest


# --------------------------------------------------------------------------------------------------
# checkpoints


@cache
def _torch():
    import torch

    torch.manual_seed(0)
    return torch


def clip_text_config(hidden=768, inter=3072, layers=12, heads=12, act="quick_gelu", proj=768):
    """The CLIPTextConfig sd-scripts builds when it loads a single-file checkpoint (library/model_util.py
    load_models_from_stable_diffusion_checkpoint for v1; library/sdxl_model_util.py for SDXL's
    encoders: the defaults are CLIP-L, SDXL's second one is 1280/5120/32/20/gelu/1280)."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=49408, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
        num_attention_heads=heads, max_position_embeddings=77, hidden_act=act, layer_norm_eps=1e-05,
        dropout=0.0, attention_dropout=0.0, initializer_range=0.02, initializer_factor=1.0,
        pad_token_id=1, bos_token_id=0, eos_token_id=2, model_type="clip_text_model", projection_dim=proj,
    )


def build_sd15(path: Path) -> None:
    torch = _torch()
    from diffusers import AutoencoderKL
    from library import model_util
    from library.original_unet import UNet2DConditionModel
    from transformers import CLIPTextModel

    unet = UNet2DConditionModel(**model_util.create_unet_diffusers_config(False))
    vae = AutoencoderKL(**model_util.create_vae_diffusers_config())
    te = CLIPTextModel._from_config(clip_text_config())
    meta = {"copymachine.fixture": "sd15-random", "copymachine.fixture_version": FIXTURE_VERSION}
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.safetensors")
    n = model_util.save_stable_diffusion_checkpoint(False, str(tmp), te, unet, None, 0, 0, meta, torch.float16, vae)
    os.replace(tmp, path)
    log(f"{path.name}: {n} keys")


def build_sdxl(path: Path) -> None:
    torch = _torch()
    from diffusers import AutoencoderKL
    from library import model_util, sdxl_model_util, sdxl_original_unet
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    # Built one part at a time and halved at once, to keep the peak low (the fp32 U-Net alone is ~10 GB).
    unet = sdxl_original_unet.SdxlUNet2DConditionModel().to(torch.float16)
    te1 = CLIPTextModel._from_config(clip_text_config()).to(torch.float16)
    te2 = CLIPTextModelWithProjection(clip_text_config(1280, 5120, 32, 20, "gelu", 1280)).to(torch.float16)
    vae = AutoencoderKL(**model_util.create_vae_diffusers_config()).to(torch.float16)
    logit_scale = torch.tensor(4.6052, dtype=torch.float16)  # ln(100), as in CLIP
    meta = {"copymachine.fixture": "sdxl-random", "copymachine.fixture_version": FIXTURE_VERSION}
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.safetensors")
    n = sdxl_model_util.save_stable_diffusion_checkpoint(str(tmp), te1, te2, unet, 0, 0, None, vae, logit_scale, meta, None)
    os.replace(tmp, path)
    log(f"{path.name}: {n} keys")


def ensure_checkpoint(path: Path, kind: str, builder) -> None:
    if checkpoint_is_valid(path, kind):
        log(f"{path.name}: present")
        return
    t0 = time.time()
    builder(path)
    log(f"{path.name}: built in {time.time() - t0:.1f}s, {path.stat().st_size / 1e9:.2f} GB")


# --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sd-scripts", required=True, type=Path, help="sd-scripts checkout (its library/ is imported)")
    ap.add_argument("--out", required=True, type=Path, help="fixture cache directory")
    ap.add_argument("--sdxl", action="store_true", help="also build the SDXL checkpoint and second tokenizer")
    ap.add_argument("--anima", action="store_true", help="build only the Anima files (DiT, Qwen3, VAE) under anima/")
    ap.add_argument("--tokenizers-only", action="store_true", help="build only the tokenizer directories")
    args = ap.parse_args(argv)

    sd = args.sd_scripts.resolve()
    if not (sd / "library" / "model_util.py").is_file():
        print(f"not an sd-scripts checkout: {sd}", file=sys.stderr)
        return 2
    sys.path.insert(0, str(sd))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = args.out.expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)

    if args.anima:
        import build_anima  # next to this file

        build_anima.build_all(out, sd, FIXTURE_VERSION, ensure_checkpoint)
        return 0
    build_tokenizer(out, CLIP_L_ID, "<|endoftext|>")
    if args.sdxl:
        # laion's bigG tokenizer pads with "!" (id 0); sd-scripts forces pad_token_id = 0 anyway.
        build_tokenizer(out, CLIP_G_ID, "!")
    if args.tokenizers_only:
        return 0
    ensure_checkpoint(out / "sd15-random.safetensors", "sd15-random", build_sd15)
    if args.sdxl:
        ensure_checkpoint(out / "sdxl-random.safetensors", "sdxl-random", build_sdxl)
    return 0


if __name__ == "__main__":
    sys.exit(main())
