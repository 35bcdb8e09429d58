"""Fake train_network.py / sdxl_train_network.py.

Follows the real flow (code: train_network.py NetworkTrainer.train, library/train_util.py,
library/config_util.py; runs: docs/engine-notes.md) far enough that a wrapper sees the same
arguments accepted or refused, the same exit codes, the same console lines and a LoRA file with the
real key names and metadata, in a fraction of a second and without torch.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import pickle
import random
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from . import common
from .common import Console, FakeRun, crash

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

# (code: library/train_util.py IMAGE_EXTENSIONS; glob is non-recursive and case-sensitive on these)
IMAGE_EXTENSIONS = [".png", ".jpg", ".jpeg", ".webp", ".bmp", ".PNG", ".JPG", ".JPEG", ".WEBP", ".BMP"]
NO_DATA = (
    "No data found. Please verify arguments (train_data_dir must be the parent of folders with images) / "
    "画像がありません。引数指定を確認してください（train_data_dirには画像があるフォルダではなく、画像があるフォルダの親フォルダを指定する必要があります）"
)
TINY = 16  # in/out sizes of the fake LoRA tensors (real ones are 320..5120)


def main(script: str) -> None:
    run = FakeRun(script)
    run.guard(_main, run, script)


def _main(run: FakeRun, script: str) -> None:
    sdxl = script.startswith("sdxl")
    rich = Console()
    parser = common.build_parser(script)
    args = read_config_from_file(run.parse(parser), parser, run, rich)
    run.set(args=common.namespace_json(args))
    run.maybe_fail_early()

    if sdxl and args.v2:  # (code: library/sdxl_train_util.py verify_sdxl_training_args)
        crash(run, "AssertionError: v2 cannot be enabled in SDXL training / SDXL学習ではv2を有効にすることはできません")
    # (code: train_util.prepare_dataset_args: args.resolution.split(","), so a TOML int/list crashes)
    if args.resolution is not None and not isinstance(args.resolution, str):
        crash(run, f"AttributeError: '{type(args.resolution).__name__}' object has no attribute 'split'")

    # logging is re-initialised from the args inside train() (code: library/utils.py setup_logging)
    con = Console(simple=bool(args.console_log_simple), file=args.console_log_file)
    tokenizers(args, sdxl, run, con)
    datasets = load_datasets(args, run, con)
    n_train = sum(len(s["images"]) * s["num_repeats"] for d in datasets for s in d["subsets"] if not s["is_reg"])
    if sdxl and args.cache_text_encoder_outputs:  # (code: sdxl_train_network.py assert_extra_args)
        if any(s["shuffle_caption"] for d in datasets for s in d["subsets"]):
            crash(run, "AssertionError: when caching Text Encoder output, either caption_dropout_rate, shuffle_caption, token_warmup_step or caption_tag_dropout_rate cannot be used / Text Encoderの出力をキャッシュするときはcaption_dropout_rate, shuffle_caption, token_warmup_step, caption_tag_dropout_rateは使えません")
        if not args.network_train_unet_only:
            crash(run, "AssertionError: network for Text Encoder cannot be trained with caching Text Encoder outputs / Text Encoderの出力をキャッシュしながらText Encoderのネットワークを学習することはできません")
    if n_train == 0:
        con.error(NO_DATA, "train_network.py:576")
        run.exit(0)  # (run: exit 0, no file) — train() just returns

    print("accelerator device: cpu", flush=True)
    base = load_base_model(args, sdxl, run, con)
    print(f"import network module: {args.network_module}")
    init = merge_base_weights(args, run)
    modules = lora_modules(args, sdxl)
    dim = args.network_dim if args.network_dim is not None else 4  # networks.lora default rank
    con.info(f"create LoRA network. base dim (rank): {dim}, alpha: {args.network_alpha}", "lora.py:935")
    n_te = sum(1 for m in modules if m["name"].startswith("lora_te"))
    con.info(f"create LoRA for Text Encoder: {n_te} modules.", "lora.py:1035")
    con.info(f"create LoRA for U-Net: {len(modules) - n_te} modules.", "lora.py:1043")
    print("prepare optimizer, data loader etc.", flush=True)
    optimizer = (args.optimizer_type or "AdamW")
    con.info(f"use {optimizer} optimizer | {{}}", "train_util.py:5096")

    # steps (code: train_network.py around "override steps"; train_util.get_scheduler_fix)
    batches = sum(math.ceil(bucket / d["batch_size"]) for d in datasets for bucket in d["buckets"])
    ga = args.gradient_accumulation_steps
    if args.max_train_epochs is not None:
        args.max_train_steps = args.max_train_epochs * math.ceil(batches / ga)
        print(f"override steps. steps for {args.max_train_epochs} epochs is / 指定エポックまでのステップ数: {args.max_train_steps}")
    steps = args.max_train_steps
    epochs = math.ceil(steps / math.ceil(batches / ga))
    warmup = args.lr_warmup_steps
    warmup_steps = int(warmup * steps) if isinstance(warmup, float) else int(warmup or 0)
    sched = args.lr_scheduler
    if warmup_steps != 0 and (sched == "constant" or sched.startswith("adafactor") or args.lr_scheduler_type):
        name = "SchedulerType.CONSTANT" if sched == "constant" else sched
        crash(run, f"ValueError: {name} does not require `num_warmup_steps`. Set None or 0.")

    n_reg = sum(len(s["images"]) * s["num_repeats"] for d in datasets for s in d["subsets"] if s["is_reg"])
    bs = datasets[0]["batch_size"]
    print("running training / 学習開始")
    print(f"  num train images * repeats / 学習画像の数×繰り返し回数: {n_train}")
    print("  num validation images * repeats / 学習画像の数×繰り返し回数: 0")
    print(f"  num reg images / 正則化画像の数: {n_reg}")
    print(f"  num batches per epoch / 1epochのバッチ数: {batches}")
    print(f"  num epochs / epoch数: {epochs}")
    print(f"  batch size per device / バッチサイズ: {bs}")
    print(f"  gradient accumulation steps / 勾配を合計するステップ数 = {ga}")
    print(f"  total optimization steps / 学習ステップ数: {steps}", flush=True)

    started = time.time()
    loss_nan = run.fail == "nan"
    image_digest = hashlib.sha256()
    for d in datasets:
        for s in d["subsets"]:
            for path, caption in s["images"]:
                image_digest.update(Path(path).read_bytes())
                image_digest.update(caption.encode())
    rng = common.seeded_rng("loss", args.seed, image_digest.digest())
    out_dir = Path(args.output_dir or ".")
    name = args.output_name or "last"
    ext = {"safetensors": ".safetensors", "ckpt": ".ckpt", "pt": ".pt"}[args.save_model_as]
    tensors = make_lora(modules, args, dim, image_digest.digest(), init)
    start = resume_step(args, steps, run, con)
    if args.logging_dir:  # (code: train_util.prepare_accelerator: log_with tensorboard, <dir>/<prefix><time>/network_train)
        events = Path(args.logging_dir) / f"{args.log_prefix or ''}{time.strftime('%Y%m%d%H%M%S')}" / "network_train"
        events.mkdir(parents=True, exist_ok=True)
        (events / f"events.out.tfevents.{int(time.time())}.fake").write_bytes(b"fake tensorboard events")
    saver = StateSaver(args, out_dir, name, ext, tensors, run, con)
    last_meter = progress(steps, epochs, math.ceil(batches / ga), rng, loss_nan, con, start=start, on_step=saver.step)
    if args.save_state or args.save_state_on_train_end:  # (code: train_network.py save_state_on_train_end)
        saver.state(out_dir / f"{name}-state", steps)

    out = out_dir / f"{name}{ext}"
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"\nsaving checkpoint: {out}", flush=True)
    meta = metadata(args, sdxl, base, datasets, steps, epochs, batches, n_train, n_reg, warmup, started, optimizer, dim)
    meta["sshs_model_hash"], meta["sshs_legacy_hash"] = common.sshs_hashes(tensors, meta)
    run.set(steps=steps, epochs=epochs, num_train_images=n_train, modules=len(modules))
    run.save(out, tensors, meta if ext == ".safetensors" else None)
    con.info("model saved.", "train_network.py:1729")
    sys.stderr.write(last_meter + "\n")  # (run: tqdm's close repeats the bar after "model saved.")
    run.exit(0)


# --------------------------------------------------------------------------------------------------


def read_config_from_file(args, parser, run: FakeRun, con: Console):
    """(code: library/train_util.py read_config_from_file) .toml appended, any table flattened one level,
    TOML values skip argparse's type and choices checks, the command line wins over the file."""
    if not args.config_file:
        return args
    path = args.config_file if args.config_file.endswith(".toml") else args.config_file + ".toml"
    if args.output_config:
        crash(run, "NotImplementedError: copymachine fake: --output_config is not emulated", 3)
    if not os.path.exists(path):
        con.info(f"{path} not found.", "train_util.py:4741")
        run.exit(1)
    con.info(f"Loading settings from {path}...", "train_util.py:4744")
    try:
        with open(path, "rb") as f:
            cfg = tomllib.load(f)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        crash(run, f"toml.decoder.TomlDecodeError: {e}")
    flat = {}
    for k, v in cfg.items():
        if isinstance(v, dict):
            flat.update(v)
        else:
            flat[k] = v
    run.set(config_file=str(Path(path).resolve()), config=flat)
    args = run.parse(parser, namespace=argparse.Namespace(**flat))
    args.config_file = os.path.splitext(args.config_file)[0]
    return args


def tokenizers(args, sdxl: bool, run: FakeRun, con: Console) -> None:
    """(code: library/strategy_base.py _load_tokenizer) a cached tokenizer directory is loaded; without one
    sd-scripts goes to the hub, which this offline fake (like an offline machine) cannot."""
    ids = ["openai/clip-vit-large-patch14"] + (["laion/CLIP-ViT-bigG-14-laion2B-39B-b160k"] if sdxl else [])
    if args.v2 and not sdxl:
        ids = ["stabilityai/stable-diffusion-2"]
    if not sdxl:
        con.info("Using v2 tokenizer" if args.v2 else "Using v1 tokenizer", "strategy_sd.py:26")
    for mid in ids:
        local = os.path.join(args.tokenizer_cache_dir, mid.replace("/", "_")) if args.tokenizer_cache_dir else None
        if local and os.path.exists(local):
            con.info(f"load tokenizer from cache: {local}", "strategy_base.py:61")
            continue
        crash(
            run,
            f"OSError: Can't load tokenizer for '{mid}'. (copymachine fake: no network; give --tokenizer_cache_dir "
            f"holding {mid.replace('/', '_')})",
        )


# ---- dataset ---------------------------------------------------------------------------------------


class Invalid(Exception):
    pass


def _check_type(t: str, v) -> bool:
    if t == "bool":
        return isinstance(v, bool)
    if t == "int":
        return isinstance(v, int)  # voluptuous: isinstance, so a bool passes as int
    if t == "float":
        return isinstance(v, float)
    if t == "str":
        return isinstance(v, str)
    if t == "dict":
        return isinstance(v, dict)
    if t == "float|int":
        return isinstance(v, (float, int))
    if t == "int_or_pair":
        return isinstance(v, int) or (isinstance(v, list) and len(v) == 2 and all(isinstance(x, int) for x in v))
    if t in ("float_pair", "int_pair"):
        k = float if t == "float_pair" else int
        return isinstance(v, list) and len(v) == 2 and all(isinstance(x, k) for x in v)
    return True


def _validate(obj, schema: dict, where: str) -> None:
    if not isinstance(obj, dict):
        raise Invalid(f"expected a dictionary @ data{where}")
    for k, v in obj.items():
        if k not in schema:
            raise Invalid(f"extra keys not allowed @ data{where}['{k}']")
        t = schema[k]["type"]
        if t != "list" and not _check_type(t, v):
            name = {"float|int": "float", "int_or_pair": "int", "float_pair": "float", "int_pair": "int"}.get(t, t)
            raise Invalid(f"expected {name} for dictionary value @ data{where}['{k}']")
    for k, info in schema.items():
        if info["required"] and k not in obj:
            raise Invalid(f"required key not provided @ data{where}['{k}']")


def validate_dataset_config(cfg: dict) -> None:
    """The DreamBooth branch of library/config_util.py ConfigSanitizer, with voluptuous' messages."""
    schema = common.options()["dataset_schema"]
    for k in cfg:
        if k not in ("general", "datasets"):
            raise Invalid(f"extra keys not allowed @ data['{k}']")
    if "general" in cfg:
        _validate(cfg["general"], schema["general"], "['general']")
    datasets = cfg.get("datasets", [])
    if not isinstance(datasets, list):
        raise Invalid("expected list for dictionary value @ data['datasets']")
    for i, d in enumerate(datasets):
        _validate(d, schema["dataset"], f"['datasets'][{i}]")
        subsets = d.get("subsets", [])
        if any(isinstance(s, dict) and "metadata_file" in s for s in subsets):
            raise Invalid("copymachine fake: fine-tuning (metadata_file) datasets are not emulated")
        for j, s in enumerate(subsets):
            _validate(s, schema["subset"], f"['datasets'][{i}]['subsets'][{j}]")


def _pick(key, *layers, default=None):
    """subset -> dataset -> general -> argparse: the first value that is not None (code: config_util.generate)."""
    for layer in layers:
        if layer is not None and layer.get(key) is not None:
            return layer[key]
    return default


def load_datasets(args, run: FakeRun, con: Console) -> list[dict]:
    argd = dict(vars(args))
    argd["batch_size"] = args.train_batch_size
    argd["num_repeats"] = args.dataset_repeats
    if isinstance(args.resolution, str):
        r = tuple(int(x) for x in args.resolution.split(","))
        argd["resolution"] = r * 2 if len(r) == 1 else r
    if args.dataset_config:
        path = str(args.dataset_config)
        if not os.path.exists(path):
            crash(run, f"ValueError: file not found / ファイルが見つかりません: {path}")
        if not path.endswith((".toml", ".json")):
            crash(run, f"ValueError: not supported config file format / 対応していない設定ファイルの形式です: {path}")
        con.info(f"Loading dataset config from {path}", "train_network.py:519")
        try:
            with open(path, "rb") as f:
                cfg = tomllib.load(f) if path.endswith(".toml") else json.load(f)
        except Exception as e:
            crash(run, f"toml.decoder.TomlDecodeError: {e}")
        run.set(dataset_config_file=str(Path(path).resolve()), dataset_config=cfg)
        try:
            validate_dataset_config(cfg)
        except Invalid as e:
            con.error("Invalid user config / ユーザ設定の形式が正しくないようです", "config_util.py:375")
            crash(run, f"voluptuous.error.MultipleInvalid: {e}")
        general = cfg.get("general", {})
        raw = [(d, d.get("subsets", [])) for d in cfg.get("datasets", [])]
    else:
        # legacy folder mode: train_data_dir holds "<repeats>_<class tokens>" folders (code: train_util)
        general, raw = {}, []
        subs = []
        if args.train_data_dir and os.path.isdir(args.train_data_dir):
            for entry in sorted(os.listdir(args.train_data_dir)):
                p = os.path.join(args.train_data_dir, entry)
                head, _, tokens = entry.partition("_")
                if os.path.isdir(p) and head.isdigit():
                    subs.append({"image_dir": p, "num_repeats": int(head), "class_tokens": tokens})
        raw = [({}, subs)]
    out = []
    for d, subsets in raw:
        res = _pick("resolution", d, general, argd)
        if res is None:
            crash(run, "AssertionError: resolution is required / resolution（解像度）を指定してください")
        res = (res, res) if isinstance(res, int) else tuple(res)
        ds = {"batch_size": _pick("batch_size", d, general, argd, default=1), "resolution": res,
              "enable_bucket": bool(_pick("enable_bucket", d, general, argd, default=False)), "subsets": []}
        seen_dirs = set()
        for s in subsets:
            image_dir = s["image_dir"]
            sub = {
                "image_dir": image_dir,
                "num_repeats": _pick("num_repeats", s, d, general, argd, default=1),
                "caption_extension": _pick("caption_extension", s, d, general, argd, default=".caption"),
                "class_tokens": _pick("class_tokens", s, d, general),
                "is_reg": bool(s.get("is_reg", False)),
                "shuffle_caption": bool(_pick("shuffle_caption", s, d, general, argd, default=False)),
                "keep_tokens": _pick("keep_tokens", s, d, general, argd, default=0),
            }
            if image_dir in seen_dirs:
                con.warning(f"Dataset contains duplicate image_dir: {image_dir}", "config_util.py")
                continue
            seen_dirs.add(image_dir)
            sub["images"] = find_images(sub, run, con)
            if sub["num_repeats"] < 1 or not sub["images"]:
                con.warning(f"ignore subset with image_dir='{image_dir}': no images found / 画像が見つからないためサブセットを無視します", "train_util.py:2103")
                sub["images"] = []
            ds["subsets"].append(sub)
        n = sum(len(s["images"]) * s["num_repeats"] for s in ds["subsets"] if not s["is_reg"])
        n_reg_imgs = sum(len(s["images"]) * s["num_repeats"] for s in ds["subsets"] if s["is_reg"])
        total = n + (n if n_reg_imgs else 0)  # reg images are repeated up to the train count
        con.info(f"{n} train images with repeats.", "train_util.py:2158")
        con.info(f"{n_reg_imgs} reg images with repeats.", "train_util.py:2162")
        if not n_reg_imgs:
            con.warning("no regularization images / 正則化画像が見つかりませんでした", "train_util.py:2167")
        if ds["enable_bucket"]:  # one bucket per image size (an approximation of the aspect buckets)
            sizes = {}
            for s in ds["subsets"]:
                for path, _ in s["images"]:
                    sizes[image_size(path)] = sizes.get(image_size(path), 0) + s["num_repeats"] * (2 if n_reg_imgs and not s["is_reg"] else 1)
            ds["buckets"] = list(sizes.values())
        else:
            ds["buckets"] = [total] if total else []
        out.append(ds)
    return out


def find_images(sub: dict, run: FakeRun, con: Console) -> list[tuple[str, str]]:
    d = sub["image_dir"]
    if not os.path.isdir(d):
        con.warning(f"not directory: {d}", "train_util.py:1974")
        return []
    paths = sorted({os.path.join(d, f) for f in os.listdir(d) if os.path.splitext(f)[1] in IMAGE_EXTENSIONS and os.path.isfile(os.path.join(d, f))})
    con.info(f"found directory {d} contains {len(paths)} image files", "train_util.py:2059")
    out = []
    for p in paths:
        cap_path = os.path.splitext(p)[0] + sub["caption_extension"]
        caption = None
        if os.path.isfile(cap_path):
            with open(cap_path, encoding="utf-8") as f:
                lines = f.readlines()
            if not lines:  # (code: train_util read_caption)
                crash(run, f"AssertionError: caption file is empty / キャプションファイルが空です: {cap_path}")
            caption = lines[0].strip()
        if caption is None:
            caption = sub["class_tokens"] or ""
            if not sub["class_tokens"]:
                con.warning(f"neither caption file nor class tokens are found. use empty caption for {p}", "train_util.py:2090")
        out.append((p, caption))
    return out


def image_size(path: str) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:
        return im.size


# ---- model -----------------------------------------------------------------------------------------


def load_base_model(args, sdxl: bool, run: FakeRun, con: Console) -> dict:
    path = args.pretrained_model_name_or_path
    if not path or not os.path.isfile(path):
        crash(run, f"OSError: {path} is not a local file (copymachine fake: Diffusers folders and hub ids are not emulated)")
    con.info(f"load StableDiffusion checkpoint: {path}", "train_util.py:5530")
    try:
        header, _ = common.read_header(path)
    except Exception as e:
        crash(run, f"safetensors_rust.SafetensorError: Error while deserializing header: {e}")
    keys = set(header) - {"__metadata__"}
    is_xl = any(k.startswith("conditioner.embedders.1.") for k in keys)
    if sdxl != is_xl or not any(k.startswith("model.diffusion_model.") for k in keys):
        crash(run, "RuntimeError: Error(s) in loading state_dict: Missing key(s) in state_dict (copymachine fake: checkpoint family does not fit the script)")
    for part in (["u-net", "vae", "text encoder"] if not sdxl else ["U-Net", "text encoder 1", "text encoder 2", "VAE"]):
        con.info(f"loading {part}: <All keys matched successfully>", "model_util.py")
    sha, legacy = common.file_hashes(path)
    return {"name": os.path.basename(path), "hash": legacy, "sha256": sha}


def lora_modules(args, sdxl: bool) -> list[dict]:
    data = common.load_json("lora_modules_sdxl.json" if sdxl else "lora_modules_sd15.json")
    net_args = dict(a.split("=", 1) for a in (args.network_args or []) if "=" in a)
    mods = list(data["modules"])
    if "conv_dim" in net_args:
        mods += data["conv_only"]
    if args.network_train_unet_only:
        mods = [m for m in mods if not m["name"].startswith("lora_te")]
    if args.network_train_text_encoder_only:
        mods = [m for m in mods if m["name"].startswith("lora_te")]
    return mods


def tiny_shape(m: dict, rank: int) -> tuple[tuple, tuple]:
    i, o = min(m["in"], TINY), min(m["out"], TINY)
    if m["kind"] == "conv2d":
        kh, kw = m["kernel"]
        return (rank, i, kh, kw), (o, rank, 1, 1)
    return (rank, i), (o, rank)


def merge_base_weights(args, run: FakeRun) -> tuple:
    """--base_weights (code: train_network.py `if args.base_weights is not None:`): each LoRA's
    network built from weights and merged. Returns what the trained network's init then depends
    on beyond the seed: () when nothing shifted it, else (torch RNG draws, U-Net target modules)."""
    import torch
    from networks import lora

    for i, path in enumerate(args.base_weights or []):
        multipliers = args.base_weights_multiplier or []
        multiplier = multipliers[i] if i < len(multipliers) else 1.0
        print(f"merging module: {path} with multiplier {multiplier}", flush=True)
        try:
            module, weights_sd = lora.create_network_from_weights(multiplier, path, None, None, None, for_inference=True)
        except FileNotFoundError as e:
            crash(run, f"FileNotFoundError: {e}")
        module.merge_to(None, None, weights_sd, "weight_dtype", "cpu")
    if args.base_weights:
        print(f"all weights merged: {', '.join(args.base_weights)}", flush=True)
    targets = list(lora.LoRANetwork.UNET_TARGET_REPLACE_MODULE)
    run.set(base_weight_merges=[list(m) for m in lora.MERGES], unet_target_modules=targets, rng_draws_before_init=torch.get_rng_state())
    if torch.get_rng_state() == 0 and targets == ["Transformer2DModel"]:
        return ()
    return (torch.get_rng_state(), tuple(targets))


def make_lora(modules: list[dict], args, dim: int, image_digest: bytes, init: tuple = ()) -> dict:
    net_args = dict(a.split("=", 1) for a in (args.network_args or []) if "=" in a)
    conv_dim = int(net_args.get("conv_dim", dim))
    conv_alpha = float(net_args.get("conv_alpha", 1))
    rng = common.seeded_rng("lora", args.seed, image_digest, dim, args.network_alpha, args.max_train_steps, args.learning_rate, *init)
    tensors = {}
    for m in modules:
        conv3 = m["kind"] == "conv2d" and m["kernel"] != [1, 1]
        rank, alpha = (conv_dim, conv_alpha) if conv3 else (dim, float(args.network_alpha))
        dshape, ushape = tiny_shape(m, rank)
        tensors[m["name"] + ".lora_down.weight"] = rng.normal(0, 0.1, dshape).astype(np.float32)
        tensors[m["name"] + ".lora_up.weight"] = rng.normal(0, 0.01, ushape).astype(np.float32)
        tensors[m["name"] + ".alpha"] = np.array(alpha, dtype=np.float32)
    return {k: common.as_precision(v, args.save_precision) for k, v in tensors.items()}


# ---- progress and metadata -------------------------------------------------------------------------


def fmt_time(s: float) -> str:
    s = int(s)
    return f"{s // 3600:d}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


def bar(n: int, total: int) -> str:
    """tqdm's meter: 'steps:  33%|███▎      | 1/3 [00:03<00:06,  3.11s/it]' (run: see engine-notes)."""
    frac = n / total if total else 1
    cells = frac * 10
    full = int(cells)
    parts = " ▏▎▍▌▋▊▉"
    b = "█" * full
    if full < 10:
        b += parts[int((cells - full) * 8)] if cells > full else " "
        b += " " * (10 - len(b))
    return f"{frac * 100:3.0f}%|{b}|"


def resume_step(args, steps: int, run: FakeRun, con: Console) -> int:
    """The step a resumed training goes on from (code: train_network.py load_model_hook, "calculate
    steps to skip"): the state's train_state.json step with skip_until_initial_step, else 0 (the
    real script then trains every step again, from the state's weights)."""
    if not args.resume:
        return 0
    state = Path(args.resume)
    if not state.is_dir():  # (code: accelerate load_state) a missing folder is a crash
        crash(run, f"ValueError: Tried to find {state} but folder does not exist")
    con.info(f"resume training from local state: {state}", "train_util.py:4777")
    data = json.loads((state / "train_state.json").read_text(encoding="utf-8"))
    con.info(f"load train state from {state / 'train_state.json'}: {data}", "train_network.py:966")
    initial = int(data["current_step"])
    if initial and not args.max_train_steps > initial:
        crash(run, f"AssertionError: max_train_steps should be greater than initial step / max_train_stepsは初期ステップより大きい必要があります: {args.max_train_steps} vs {initial}")
    if not args.skip_until_initial_step:
        return 0
    con.info(f"skipping {initial} steps / {initial}ステップをスキップします", "train_network.py:1265")
    return initial


class StateSaver:
    """save_every_n_steps: the step LoRA and (save_state) the state folder, the old ones removed per
    save_last_n_steps(_state) (code: train_network.py, train_util.save_and_remove_state_stepwise)."""

    def __init__(self, args, out_dir: Path, name: str, ext: str, tensors: dict, run: FakeRun, con: Console):
        self.args, self.out_dir, self.name, self.ext, self.tensors, self.run, self.con = args, out_dir, name, ext, tensors, run, con

    def _remove_no(self, step: int, last_n) -> int | None:
        if last_n is None:
            return None
        no = step - last_n - 1
        return no - (no % self.args.save_every_n_steps)

    def samples(self, step: int) -> None:
        """sample_every_n_steps: one PNG per prompt line in <output_dir>/sample/ (code:
        train_util.sample_images_common, sample_image_inference: the file name; a missing prompt
        file is an error line, not a crash)."""
        a = self.args
        if not a.sample_every_n_steps or step % a.sample_every_n_steps:
            return
        self.con.info(f"generating sample images at step / サンプル画像生成 ステップ: {step}", "train_util.py:6393")
        if not a.sample_prompts or not os.path.isfile(a.sample_prompts):
            self.con.error(f"No prompt file / プロンプトファイルがありません: {a.sample_prompts}", "train_util.py:6395")
            return
        from PIL import Image

        lines = [ln.strip() for ln in Path(a.sample_prompts).read_text(encoding="utf-8").splitlines() if ln.strip() and not ln.startswith("#")]
        folder = self.out_dir / "sample"
        folder.mkdir(parents=True, exist_ok=True)
        for i, line in enumerate(lines):
            opts = dict(re.findall(r"--(\w+) (\S+)", line))
            w, h, seed = int(opts.get("w", 512)), int(opts.get("h", 512)), opts.get("d")
            shade = (step * 37 + i * 11) % 256
            ts = time.strftime("%Y%m%d%H%M%S", time.localtime())
            name = f"{self.name}_{step:06d}_{i:02d}_{ts}{'' if seed is None else '_' + seed}.png"
            Image.new("RGB", (w, h), (shade, 255 - shade, 128)).save(folder / name)
            self.run.output(folder / name)

    def step(self, step: int) -> None:
        self.samples(step)
        a = self.args
        if not a.save_every_n_steps or step % a.save_every_n_steps:
            return
        ckpt = self.out_dir / f"{self.name}-step{step:08d}{self.ext}"
        print(f"\nsaving checkpoint: {ckpt}", flush=True)
        self.run.save(ckpt, self.tensors, {"ss_steps": str(step)})
        if a.save_state:
            self.con.info(f"saving state at step {step}", "train_util.py:5963")
            self.state(self.out_dir / f"{self.name}-step{step:08d}-state", step)
            no = self._remove_no(step, a.save_last_n_steps_state or a.save_last_n_steps)
            old = self.out_dir / f"{self.name}-step{no:08d}-state" if no else None
            if old is not None and no > 0 and old.is_dir():
                self.con.info(f"removing old state: {old}", "train_util.py:5981")
                shutil.rmtree(old)
        no = self._remove_no(step, a.save_last_n_steps)
        if no is not None and no >= 0:
            (self.out_dir / f"{self.name}-step{no:08d}{self.ext}").unlink(missing_ok=True)

    def state(self, folder: Path, step: int) -> None:
        """accelerate's save_state: train_state.json (sd-scripts' pre-hook) first, the RNG states last."""
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "train_state.json").write_text(json.dumps({"current_epoch": 1, "current_step": step}), encoding="utf-8")
        self.run.save(folder / "model.safetensors", self.tensors, None)
        for part in ("optimizer.bin", "scheduler.bin"):
            self.run.save_bytes(folder / part, pickle.dumps({"fake": part, "step": step}))
        self.run.save_bytes(folder / "random_states_0.pkl", pickle.dumps({"step": step}))


def progress(steps: int, epochs: int, per_epoch: int, rng, nan: bool, con: Console, start: int = 0, on_step=None) -> str:
    delay = common.step_seconds()
    t0 = time.time()
    w = sys.stderr
    todo = steps - start  # (code: tqdm(range(args.max_train_steps - initial_step)))
    w.write(f"\rsteps: {bar(0, todo)} 0/{todo} [00:00<?, ?it/s]")
    w.flush()
    losses = []
    last = ""
    step = 0
    for epoch in range(epochs):
        if step + per_epoch <= start:  # (code: "skipping epoch k because initial_step ...")
            step += per_epoch
            continue
        print(f"\nepoch {epoch + 1}/{epochs}\n", flush=True)  # (code: accelerator.print(f"\nepoch {epoch+1}/{num_train_epochs}\n"))
        con.info(f"epoch is incremented. current_epoch: {epoch}, epoch: {epoch + 1}", "train_util.py:784")
        for _ in range(per_epoch):
            if step >= steps:
                break
            if step < start:  # skip_until_initial_step: the batches are read and thrown away
                step += 1
                continue
            if delay:
                time.sleep(delay)
            step += 1
            el = time.time() - t0
            done = step - start
            rate = done / el if el > 0 else float("inf")
            ratestr = f"{rate:5.2f}it/s" if rate >= 1 else f"{1 / rate:5.2f}s/it"
            remaining = (steps - step) / rate if rate and rate != float("inf") else 0
            meter = f"\rsteps: {bar(done, todo)} {done}/{todo} [{fmt_time(el)}<{fmt_time(remaining)}, {ratestr}"
            prev = f", avr_loss={losses_avg(losses)}" if losses else ""
            losses.append(float("nan") if nan else float(0.05 + 0.1 * rng.random()))
            # tqdm prints the new count first, then the same count with the refreshed postfix
            w.write(meter + prev + "]")
            last = meter + f", avr_loss={losses_avg(losses)}]"
            w.write(last)
            w.flush()
            if on_step is not None:
                on_step(step)
    return last if steps else ""


def losses_avg(losses: list[float]) -> str:
    v = sum(losses[-10:]) / len(losses[-10:])
    return "nan" if v != v else f"{v:.3g}"


def metadata(args, sdxl, base, datasets, steps, epochs, batches, n_train, n_reg, warmup, started, optimizer, dim) -> dict:
    """The ss_* / modelspec.* keys train_network.py writes (run: the 3-step run's file, engine-notes)."""
    v2 = bool(args.v2)
    base_ver = "sdxl_base_v1-0" if sdxl else ("sd_v2" + ("_v" if args.v_parameterization else "") if v2 else "sd_v1")
    ds_json = []
    dirs = {}
    for d in datasets:
        tagfreq = {}
        subs = []
        for s in d["subsets"]:
            if not s["images"]:
                continue
            key = os.path.basename(s["image_dir"])
            freq = tagfreq.setdefault(key, {})
            for _, cap in s["images"]:
                for tag in [t.strip() for t in cap.split(",") if t.strip()]:
                    freq[tag] = freq.get(tag, 0) + 1
            dirs[key] = {"n_repeats": s["num_repeats"], "img_count": len(s["images"])}
            subs.append({"img_count": len(s["images"]), "num_repeats": s["num_repeats"], "color_aug": False, "flip_aug": False,
                         "random_crop": False, "shuffle_caption": s["shuffle_caption"], "keep_tokens": s["keep_tokens"],
                         "keep_tokens_separator": "", "secondary_separator": None, "enable_wildcard": False,
                         "caption_prefix": None, "caption_suffix": None, "resize_interpolation": None,
                         "image_dir": key, "class_tokens": s["class_tokens"], "is_reg": s["is_reg"]})
        ds_json.append({"is_dreambooth": True, "batch_size_per_device": d["batch_size"], "num_train_images": n_train,
                        "num_reg_images": n_reg, "resolution": list(d["resolution"]), "enable_bucket": d["enable_bucket"],
                        "min_bucket_reso": None, "max_bucket_reso": None, "tag_frequency": tagfreq, "bucket_info": None,
                        "resize_interpolation": None, "subsets": subs})
    res = args.resolution if isinstance(args.resolution, str) else None
    if res:
        r = [int(x) for x in res.split(",")]
        spec_res = f"{r[0]}x{r[-1]}"
    else:  # (run: modelspec.resolution is 512x512 when --resolution is only in the dataset TOML)
        spec_res = "1024x1024" if sdxl else ("768x768" if v2 and args.v_parameterization else "512x512")
    commit = common.sd_scripts_commit()
    m = {
        "ss_session_id": str(random.randint(0, 2**32)),
        "ss_training_started_at": str(started),
        "ss_output_name": str(args.output_name),
        "ss_learning_rate": str(args.learning_rate),
        "ss_text_encoder_lr": str(args.text_encoder_lr),
        "ss_unet_lr": str(args.unet_lr),
        "ss_num_train_images": str(n_train),
        "ss_num_validation_images": "0",
        "ss_num_reg_images": str(n_reg),
        "ss_num_batches_per_epoch": str(batches),
        "ss_num_epochs": str(epochs),
        "ss_gradient_checkpointing": str(bool(args.gradient_checkpointing)),
        "ss_gradient_accumulation_steps": str(args.gradient_accumulation_steps),
        "ss_max_train_steps": str(steps),
        "ss_lr_warmup_steps": str(warmup),
        "ss_lr_scheduler": str(args.lr_scheduler),
        "ss_network_module": str(args.network_module),
        "ss_network_dim": str(args.network_dim),
        "ss_network_alpha": str(args.network_alpha),
        "ss_network_dropout": str(args.network_dropout),
        "ss_mixed_precision": str(args.mixed_precision),
        "ss_full_fp16": str(bool(args.full_fp16)),
        "ss_v2": str(v2),
        "ss_base_model_version": base_ver,
        "ss_clip_skip": str(args.clip_skip),
        "ss_max_token_length": str(args.max_token_length),
        "ss_cache_latents": str(bool(args.cache_latents)),
        "ss_seed": str(args.seed),
        "ss_lowram": str(bool(args.lowram)),
        "ss_noise_offset": str(args.noise_offset),
        "ss_multires_noise_iterations": str(args.multires_noise_iterations),
        "ss_multires_noise_discount": str(args.multires_noise_discount),
        "ss_adaptive_noise_scale": str(args.adaptive_noise_scale),
        "ss_zero_terminal_snr": str(bool(args.zero_terminal_snr)),
        "ss_training_comment": str(args.training_comment),
        "ss_sd_scripts_commit_hash": commit,
        "ss_optimizer": "torch.optim.adamw.AdamW" if optimizer.lower() == "adamw" else optimizer,
        "ss_max_grad_norm": str(args.max_grad_norm),
        "ss_caption_dropout_rate": "0.0",
        "ss_caption_dropout_every_n_epochs": "0",
        "ss_caption_tag_dropout_rate": "0.0",
        "ss_face_crop_aug_range": "None",
        "ss_prior_loss_weight": str(args.prior_loss_weight),
        "ss_min_snr_gamma": str(args.min_snr_gamma),
        "ss_scale_weight_norms": str(args.scale_weight_norms),
        "ss_loss_type": str(args.loss_type),
        "ss_huber_schedule": str(args.huber_schedule),
        "ss_huber_scale": str(args.huber_scale),
        "ss_huber_c": str(args.huber_c),
        "ss_fp8_base": str(bool(args.fp8_base)),
        "ss_fp8_base_unet": str(bool(args.fp8_base_unet)),
        "ss_ip_noise_gamma": str(args.ip_noise_gamma),
        "ss_debiased_estimation": str(bool(args.debiased_estimation_loss)),
        "ss_noise_offset_random_strength": str(bool(args.noise_offset_random_strength)),
        "ss_ip_noise_gamma_random_strength": str(bool(args.ip_noise_gamma_random_strength)),
        "ss_validation_seed": str(args.validation_seed),
        "ss_validation_split": str(args.validation_split),
        "ss_max_validation_steps": str(args.max_validation_steps),
        "ss_validate_every_n_epochs": str(args.validate_every_n_epochs),
        "ss_validate_every_n_steps": str(args.validate_every_n_steps),
        "ss_resize_interpolation": str(args.resize_interpolation),
        "ss_datasets": json.dumps(ds_json),
        "ss_tag_frequency": json.dumps({k: v for d in ds_json for k, v in d["tag_frequency"].items()}),
        "ss_dataset_dirs": json.dumps(dirs),
        "ss_sd_model_name": base["name"],
        "ss_sd_model_hash": base["hash"],
        "ss_new_sd_model_hash": base["sha256"],
        "ss_steps": str(steps),
        "ss_epoch": str(epochs),
        "ss_training_finished_at": str(time.time()),
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.architecture": "stable-diffusion-xl-v1-base/lora" if sdxl else (("stable-diffusion-v2-768-v/lora" if args.v_parameterization else "stable-diffusion-v2-512/lora") if v2 else "stable-diffusion-v1/lora"),
        "modelspec.implementation": "https://github.com/Stability-AI/generative-models" if sdxl else "diffusers",
        "modelspec.title": args.metadata_title or str(args.output_name),
        "modelspec.date": common.iso_now(),
        "modelspec.resolution": spec_res,
        "modelspec.prediction_type": "v" if args.v_parameterization else "epsilon",
        "modelspec.implementation_version": f"sd-scripts/{commit}",
    }
    if args.network_args:
        m["ss_network_args"] = json.dumps(dict(a.split("=", 1) for a in args.network_args if "=" in a))
    return m
