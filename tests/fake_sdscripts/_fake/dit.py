"""Fake flux_train_network.py / sd3_train_network.py / anima_train_network.py (FLUX.1 dev/schnell and Chroma,
SD3/3.5, Anima).

The same flow as the fake train_network.py (_fake/train.py: TOML flattening, dataset checks, progress
lines, state saving, recording), with what the DiT trainers do differently (code: flux_train_network.py,
sd3_train_network.py, anima_train_network.py and train_network.py NetworkTrainer.train at the pinned
commit): their tokenizers, their other files (--clip_l/--clip_g/--t5xxl/--ae/--vae/--qwen3), their checks
(assert_extra_args), the model version they write (ss_base_model_version) and their LoRA module names
(data/lora_modules_<family>.json, dumped from networks/lora_flux.py, lora_sd3.py, lora_anima.py). The base
checkpoint's header is read, never its data: a layout-only (sparse) checkpoint is enough.
"""

from __future__ import annotations

import hashlib
import importlib
import math
import os
import sys
import time
from pathlib import Path

from . import common, train
from .common import Console, FakeRun, crash

CLIP_L_TOK = "openai/clip-vit-large-patch14"
CLIP_G_TOK = "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k"
T5_TOK = "google/t5-v1_1-xxl"
CACHE_ASSERT = ("AssertionError: when caching Text Encoder output, either caption_dropout_rate, shuffle_caption, "
                "token_warmup_step or caption_tag_dropout_rate cannot be used / Text Encoderの出力をキャッシュするときは"
                "caption_dropout_rate, shuffle_caption, token_warmup_step, caption_tag_dropout_rateは使えません")
NONE_PATH = "TypeError: argument 'filename': 'NoneType' object cannot be converted to 'PyString'"


def main(script: str) -> None:
    run = FakeRun(script)
    run.guard(_main, run, script)


def _main(run: FakeRun, script: str) -> None:
    kind = script.split("_", 1)[0]  # flux / sd3 / anima
    rich = Console()
    parser = common.build_parser(script)
    args = train.read_config_from_file(run.parse(parser), parser, run, rich)
    run.set(args=common.namespace_json(args))
    run.maybe_fail_early()
    if args.resolution is not None and not isinstance(args.resolution, str):
        crash(run, f"AttributeError: '{type(args.resolution).__name__}' object has no attribute 'split'")
    con = Console(simple=bool(args.console_log_simple), file=args.console_log_file)
    header = base_header(args, run, con)
    tokenizers(args, kind, header, run, con)  # (code: get_tokenize_strategy, first in train())
    datasets = train.load_datasets(args, run, con)
    n_train = sum(len(s["images"]) * s["num_repeats"] for d in datasets for s in d["subsets"] if not s["is_reg"])
    if n_train == 0:
        con.error(train.NO_DATA, "train_network.py:576")
        run.exit(0)
    assert_extra_args(args, kind, datasets, run, con)
    print("accelerator device: cpu", flush=True)
    version = load_target_model(args, kind, header, run, con)
    print(f"import network module: {args.network_module}")
    init = merge_base_weights(args, run)
    modules = common.load_json(f"lora_modules_{module_family(kind, version)}.json")["modules"]
    dim = args.network_dim if args.network_dim is not None else 4
    con.info(f"create LoRA network. base dim (rank): {dim}, alpha: {args.network_alpha}", f"lora_{kind}.py")
    con.info(f"create LoRA for {kind.upper()} DiT: {len(modules)} modules.", f"lora_{kind}.py")
    train_and_save(run, args, con, datasets, modules, dim, init, header, version, n_train)


def module_family(kind: str, version: str) -> str:
    if kind == "sd3":
        return {"medium": "sd3-medium", "5-large": "sd3-5-large", "5-medium": "sd3-5-medium"}[version]
    return {"flux1": "flux"}.get(version, version)


def base_header(args, run: FakeRun, con: Console) -> dict:
    """The checkpoint's header (keys, dtypes, shapes): what the fake reads of it."""
    path = args.pretrained_model_name_or_path
    if not path or not os.path.isfile(path):
        crash(run, f"FileNotFoundError: [Errno 2] No such file or directory: '{path}' (copymachine fake: Diffusers "
                   "folders are not emulated)")
    try:
        header, _ = common.read_header(path)
    except Exception as e:
        crash(run, f"safetensors_rust.SafetensorError: Error while deserializing header: {e}")
    header.pop("__metadata__", None)
    return header


def tokenizers(args, kind: str, header: dict, run: FakeRun, con: Console) -> None:
    """FLUX (Chroma too): CLIP-L and T5-XXL tokenizers; SD3: CLIP-L, CLIP-G, T5-XXL (code: strategy_flux.py,
    strategy_sd3.py, from --tokenizer_cache_dir or the hub); Anima: the Qwen3 tokenizer from configs/qwen3_06b
    beside --qwen3 (code: strategy_anima.py AnimaTokenizeStrategy)."""
    if kind == "anima":
        if args.qwen3 is None:
            crash(run, "ValueError: Either qwen3_tokenizer or qwen3_path must be provided")
        return
    if kind == "flux" and args.model_type != "chroma":  # (code: analyze_checkpoint_state, for the T5 length)
        schnell = not any(k.endswith("guidance_in.in_layer.bias") for k in header)
        con.info(f"t5xxl_max_token_length: {args.t5xxl_max_token_length or (256 if schnell else 512)}",
                 "flux_train_network.py:180")
    ids = [CLIP_L_TOK, T5_TOK] if kind == "flux" else [CLIP_L_TOK, CLIP_G_TOK, T5_TOK]
    for mid in ids:
        local = os.path.join(args.tokenizer_cache_dir, mid.replace("/", "_")) if args.tokenizer_cache_dir else None
        if local and os.path.exists(local):
            con.info(f"load tokenizer from cache: {local}", "strategy_base.py:61")
            continue
        crash(run, f"OSError: Can't load tokenizer for '{mid}'. (copymachine fake: no network; give "
                   f"--tokenizer_cache_dir holding {mid.replace('/', '_')})")


def assert_extra_args(args, kind: str, datasets: list, run: FakeRun, con: Console) -> None:
    """(code: <script>.assert_extra_args)"""
    if kind == "flux" and args.model_type == "chroma" and not args.apply_t5_attn_mask:
        crash(run, "AssertionError: apply_t5_attn_mask must be True for Chroma / Chromaではapply_t5_attn_maskを指定する必要があります")
    if args.cache_text_encoder_outputs_to_disk and not args.cache_text_encoder_outputs:
        args.cache_text_encoder_outputs = True
    shuffled = any(s["shuffle_caption"] for d in datasets for s in d["subsets"])
    if args.cache_text_encoder_outputs and shuffled:
        crash(run, CACHE_ASSERT if kind != "anima" else "AssertionError: when caching Text Encoder output, "
              "shuffle_caption, token_warmup_step or caption_tag_dropout_rate cannot be used")
    if kind == "anima" and args.cache_text_encoder_outputs and not args.network_train_unet_only:
        crash(run, "AssertionError: network for Text Encoder cannot be trained with caching Text Encoder outputs / "
                   "Text Encoderの出力をキャッシュしながらText Encoderのネットワークを学習することはできません")
    if args.blocks_to_swap and args.cpu_offload_checkpointing:
        crash(run, "AssertionError: blocks_to_swap is not supported with cpu_offload_checkpointing")


def need_file(run: FakeRun, path, con: Console, what: str, where: str) -> None:
    """A file the loader opens (code: library/safetensors_utils.py load_safetensors / safetensors' load_file)."""
    if path is None:
        crash(run, NONE_PATH)
    if not os.path.exists(path):
        crash(run, f"FileNotFoundError: No such file or directory: \"{path}\"")
    con.info(f"Loading {what} from {path}", where)


def load_target_model(args, kind: str, header: dict, run: FakeRun, con: Console) -> str:
    """The model version load_target_model returns (ss_base_model_version), after the checks its loaders make."""
    if kind == "flux":
        chroma = args.model_type == "chroma"
        keys = {k.removeprefix("model.diffusion_model.") for k in header}
        if "double_blocks.0.img_attn.qkv.weight" not in keys:
            crash(run, "ValueError: max() arg is an empty sequence")  # (code: analyze_checkpoint_state's block count)
        missing = [k for k in (["distilled_guidance_layer.in_proj.weight"] if chroma else ["vector_in.in_layer.weight"])
                   if k not in keys]
        con.info(f"Loaded {'Chroma' if chroma else 'Flux'}: _IncompatibleKeys(missing_keys={missing}, "
                 "unexpected_keys=[])", "flux_utils.py")  # strict=False: a mismatch is only logged
        if not chroma:
            need_file(run, args.clip_l, con, "CLIP-L", "flux_utils.py")
        need_file(run, args.t5xxl, con, "T5XXL", "flux_utils.py")
        need_file(run, args.ae, con, "AE", "flux_utils.py")
        return "chroma" if chroma else "flux1"
    if kind == "sd3":
        return load_sd3(args, header, run, con)
    need_file(run, args.qwen3, con, "Qwen3 text encoder", "anima_utils.py")
    need_file(run, args.vae, con, "VAE", "qwen_image_autoencoder_kl.py")
    keys = {k.removeprefix("net.") for k in header}
    if "blocks.0.self_attn.q_proj.weight" not in keys:  # (code: load_anima_model's state-dict load)
        crash(run, "RuntimeError: Error(s) in loading state_dict for Anima: Missing key(s) in state_dict")
    return "anima"


def load_sd3(args, header: dict, run: FakeRun, con: Console) -> str:
    """(code: sd3_utils.load_mmdit, analyze_state_dict_state, load_clip_l/clip_g/t5xxl, load_vae)"""
    p = "model.diffusion_model."
    if f"{p}x_embedder.proj.weight" not in header:
        crash(run, "KeyError: 'x_embedder.proj.weight'")
    if f"{p}joint_blocks.0.context_block.attn.ln_k.weight" not in header:
        version = "medium"
    else:
        version = "5-medium" if any(".x_block.attn2.ln_k.weight" in k for k in header) else "5-large"
    con.info(f"Analyzed state dict state: model_type='{version}'", "sd3_utils.py:73")
    for name, marker in (("clip_l", "text_encoders.clip_l.transformer.text_model.embeddings.position_embedding.weight"),
                         ("clip_g", "text_encoders.clip_g.transformer.text_model.embeddings.position_embedding.weight"),
                         ("t5xxl", "text_encoders.t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.k.weight")):
        if marker in header:
            con.info(f"{name} is included in the checkpoint", "sd3_utils.py")
        elif getattr(args, name) is None:
            con.info(f"{name} is not included in the checkpoint and {name}_path is not provided", "sd3_utils.py")
            crash(run, "AttributeError: 'NoneType' object has no attribute 'eval'")
        else:
            need_file(run, getattr(args, name), con, name, "sd3_utils.py")
    if args.vae:
        need_file(run, args.vae, con, "VAE", "sd3_utils.py")
    elif not any(k.startswith("first_stage_model.") for k in header):
        crash(run, "RuntimeError: Error(s) in loading state_dict for SDVAE: Missing key(s) in state_dict: "
                   "\"encoder.conv_in.weight\", ...")
    return version


def merge_base_weights(args, run: FakeRun) -> tuple:
    """--base_weights through the family's network module (code: train_network.py); as _fake/train.py's
    merge_base_weights: () when nothing shifted the trained network's init, else what did."""
    import torch

    lora = importlib.import_module(args.network_module)
    lists = {k: list(v) for k, v in vars(lora.LoRANetwork).items() if "TARGET_REPLACE_MODULE" in k}
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
    after = {k: list(v) for k, v in vars(lora.LoRANetwork).items() if "TARGET_REPLACE_MODULE" in k}
    run.set(base_weight_merges=[list(m) for m in lora.MERGES], target_lists=after,
            rng_draws_before_init=torch.get_rng_state())
    if torch.get_rng_state() == 0 and after == lists:
        return ()
    return (torch.get_rng_state(), repr(sorted(after.items())))


def train_and_save(run, args, con, datasets, modules, dim, init, header, version, n_train) -> None:
    print("prepare optimizer, data loader etc.", flush=True)
    optimizer = args.optimizer_type or "AdamW"
    batches = sum(math.ceil(bucket / d["batch_size"]) for d in datasets for bucket in d["buckets"])
    ga = args.gradient_accumulation_steps
    if args.max_train_epochs is not None:
        args.max_train_steps = args.max_train_epochs * math.ceil(batches / ga)
    steps = args.max_train_steps
    epochs = math.ceil(steps / math.ceil(batches / ga))
    warmup = args.lr_warmup_steps
    n_reg = sum(len(s["images"]) * s["num_repeats"] for d in datasets for s in d["subsets"] if s["is_reg"])
    print("running training / 学習開始")
    print(f"  num train images * repeats / 学習画像の数×繰り返し回数: {n_train}")
    print(f"  num reg images / 正則化画像の数: {n_reg}")
    print(f"  num batches per epoch / 1epochのバッチ数: {batches}")
    print(f"  num epochs / epoch数: {epochs}")
    print(f"  total optimization steps / 学習ステップ数: {steps}", flush=True)
    started = time.time()
    digest = hashlib.sha256()
    for d in datasets:
        for s in d["subsets"]:
            for path, caption in s["images"]:
                digest.update(Path(path).read_bytes())
                digest.update(caption.encode())
    rng = common.seeded_rng("loss", args.seed, digest.digest())
    out_dir, name = Path(args.output_dir or "."), args.output_name or "last"
    ext = {"safetensors": ".safetensors", "ckpt": ".ckpt", "pt": ".pt"}[args.save_model_as]
    tensors = train.make_lora(modules, args, dim, digest.digest(), init)
    start = train.resume_step(args, steps, run, con)
    saver = train.StateSaver(args, out_dir, name, ext, tensors, run, con)
    last = train.progress(steps, epochs, math.ceil(batches / ga), rng, run.fail == "nan", con, start=start,
                          on_step=saver.step)
    if args.save_state or args.save_state_on_train_end:
        saver.state(out_dir / f"{name}-state", steps)
    out = out_dir / f"{name}{ext}"
    print(f"\nsaving checkpoint: {out}", flush=True)
    base = {"name": os.path.basename(args.pretrained_model_name_or_path), "hash": "", "sha256": ""}
    meta = train.metadata(args, False, base, datasets, steps, epochs, batches, n_train, n_reg, warmup, started,
                          optimizer, dim)
    meta.update(family_metadata(args, version, header))
    meta["sshs_model_hash"], meta["sshs_legacy_hash"] = common.sshs_hashes(tensors, meta)
    run.set(steps=steps, epochs=epochs, num_train_images=n_train, modules=len(modules), model_version=version)
    run.save(out, tensors, meta if ext == ".safetensors" else None)
    con.info("model saved.", "train_network.py:1729")
    sys.stderr.write(last + "\n")
    run.exit(0)


def family_metadata(args, version: str, header: dict) -> dict:
    """ss_base_model_version (load_target_model's model version), the script's update_metadata keys and
    its sai model spec (code: <script>.update_metadata / get_sai_model_spec, library/sai_model_spec.py)."""
    m = {"ss_base_model_version": version, "ss_v2": "False", "ss_sd_model_hash": "", "ss_new_sd_model_hash": "",
         "ss_weighting_scheme": str(args.weighting_scheme), "ss_logit_mean": str(args.logit_mean),
         "ss_logit_std": str(args.logit_std), "ss_mode_scale": str(args.mode_scale)}
    res = args.resolution if isinstance(args.resolution, str) else "1024"
    r = [int(x) for x in res.split(",")]
    m["modelspec.resolution"] = f"{r[0]}x{r[-1]}"
    m["modelspec.prediction_type"] = "epsilon"
    if version in ("flux1", "chroma"):
        schnell = not any(k.endswith("guidance_in.in_layer.bias") for k in header)
        arch = "chroma" if version == "chroma" else ("flux-1-schnell" if schnell else "flux-1-dev")
        m.update({"ss_model_type": str(args.model_type), "ss_apply_t5_attn_mask": str(bool(args.apply_t5_attn_mask)),
                  "ss_guidance_scale": str(args.guidance_scale), "ss_timestep_sampling": str(args.timestep_sampling),
                  "ss_sigmoid_scale": str(args.sigmoid_scale),
                  "ss_model_prediction_type": str(args.model_prediction_type),
                  "ss_discrete_flow_shift": str(args.discrete_flow_shift),
                  "modelspec.implementation": "https://github.com/black-forest-labs/flux"})
    elif version == "anima":
        arch = "anima-preview"
        m.update({"ss_timestep_sampling": str(args.timestep_sampling), "ss_sigmoid_scale": str(args.sigmoid_scale),
                  "ss_discrete_flow_shift": str(args.discrete_flow_shift)})
    else:
        arch = f"stable-diffusion-3-{version}"
        m.update({"ss_apply_lg_attn_mask": str(bool(args.apply_lg_attn_mask)),
                  "ss_apply_t5_attn_mask": str(bool(args.apply_t5_attn_mask)),
                  "modelspec.implementation": "https://github.com/Stability-AI/SD3.5"})
    m["modelspec.architecture"] = f"{arch}/lora"
    return m
