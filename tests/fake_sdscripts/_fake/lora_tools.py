"""Fake networks/{merge_lora,sdxl_merge_lora,svd_merge_lora,resize_lora,extract_lora_from_models}.py.

The math is the real scripts' math in numpy (code: the networks/*.py files named below), on the fake's
tiny tensors; the console lines and metadata follow the real ones (run: docs/engine-notes.md).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from . import common
from .common import Console, FakeRun, crash

CLAMP_QUANTILE = 0.99  # (code: svd_merge_lora.py / extract_lora_from_models.py)
MIN_SV = 1e-6  # (code: resize_lora.py)


def main(script: str) -> None:
    common.run_main(script, lambda run, args: _main(run, args, script))


def _main(run: FakeRun, args, script: str) -> None:
    con = Console()  # these scripts never re-init logging from args: always Rich on stderr
    stem = Path(script).stem
    {
        "merge_lora": merge_lora,
        "sdxl_merge_lora": merge_lora,
        "svd_merge_lora": svd_merge_lora,
        "resize_lora": resize_lora,
        "extract_lora_from_models": extract_lora,
    }[stem](args, run, con, sdxl=(stem == "sdxl_merge_lora"))
    run.exit(0)


def _load(path, run: FakeRun, con: Console):
    if not path or not os.path.isfile(path):
        crash(run, f"FileNotFoundError: [Errno 2] No such file or directory: '{path}'")
    try:
        return common.load_safetensors(path)
    except Exception as e:
        crash(run, f"safetensors_rust.SafetensorError: Error while deserializing header: {e}")


def _modules(sd: dict) -> dict:
    """module name -> (down, up, alpha or None), for lora_down/lora_up keys."""
    out = {}
    for k, v in sd.items():
        if k.endswith(".lora_down.weight"):
            name = k[: -len(".lora_down.weight")]
            up = sd.get(name + ".lora_up.weight")
            a = sd.get(name + ".alpha")
            out[name] = (v.astype(np.float32), None if up is None else up.astype(np.float32), None if a is None else float(a))
    return out


def _delta(down: np.ndarray, up: np.ndarray) -> np.ndarray:
    """up @ down for linear, 1x1 and 3x3 conv (code: svd_merge_lora.py merge_lora_models)."""
    if down.ndim == 2:
        return up @ down
    r = down.shape[0]
    if down.shape[2:] == (1, 1):
        return (up.reshape(up.shape[0], r) @ down.reshape(r, -1)).reshape(up.shape[0], down.shape[1], 1, 1)
    # conv2d(down.permute(1,0,2,3), up).permute(1,0,2,3) with a 1x1 up == up @ down over the flattened kernel
    return (up.reshape(up.shape[0], r) @ down.reshape(r, -1)).reshape(up.shape[0], *down.shape[1:])


def _svd_lowrank(mat: np.ndarray, rank: int, clamp: float | None):
    """U·S and Vh truncated to rank (and clamped to the quantile of |values| as torch.quantile does)."""
    conv = mat.ndim == 4
    out_dim, in_dim = mat.shape[:2]
    m2 = mat.reshape(out_dim, -1)
    U, S, Vh = np.linalg.svd(m2.astype(np.float64), full_matrices=False)
    U = (U[:, :rank] * S[:rank]).astype(np.float32)
    Vh = Vh[:rank, :].astype(np.float32)
    if clamp is not None:
        hi = np.quantile(np.concatenate([U.ravel(), Vh.ravel()]), clamp)
        U, Vh = np.clip(U, -hi, hi), np.clip(Vh, -hi, hi)
    r = U.shape[1]
    if conv:
        U = U.reshape(out_dim, r, 1, 1)
        Vh = Vh.reshape(r, in_dim, *mat.shape[2:])
    return U, Vh, S


def _lora_modelspec(meta: dict, sdxl: bool, v2: bool, title: str, merged_from: str | None = None) -> dict:
    """sai_model_spec.build_metadata for a LoRA (code: library/sai_model_spec.py)."""
    m = {
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.architecture": "stable-diffusion-xl-v1-base/lora" if sdxl else ("stable-diffusion-v2-768-v/lora" if v2 else "stable-diffusion-v1/lora"),
        "modelspec.implementation": "https://github.com/Stability-AI/generative-models" if sdxl else "diffusers",
        "modelspec.title": title,
        "modelspec.date": common.iso_now(),
        "modelspec.resolution": "1024x1024" if sdxl else ("768x768" if v2 else "512x512"),
        "modelspec.prediction_type": "v" if v2 else "epsilon",
        "modelspec.implementation_version": f"sd-scripts/{common.sd_scripts_commit()}",
    }
    if merged_from:
        m["modelspec.merged_from"] = merged_from
    return m


def _minimum_meta(v2, base_model, dim: str, alpha: str, network_args: dict | None) -> dict:
    """(code: library/train_util.py build_minimum_network_metadata)"""
    m = {"ss_network_module": "networks.lora", "ss_network_dim": dim, "ss_network_alpha": alpha}
    if v2 is not None:
        m["ss_v2"] = v2
    if base_model is not None:
        m["ss_base_model_version"] = base_model
    if network_args:
        m["ss_network_args"] = json.dumps(network_args)
    return m


def _each_model(args, run: FakeRun, con: Console, where: str, first: dict):
    """Load the --models in turn, logging "loading: <path>" as the real scripts do; `first` gets
    ss_v2 / ss_base_model_version from the first model that has them (the real scripts' rule)."""
    for model, ratio in zip(args.models, args.ratios):
        con.info(f"loading: {model}", where)
        sd, meta = _load(model, run, con)
        for key in ("ss_v2", "ss_base_model_version"):
            if first.get(key) is None:
                first[key] = meta.get(key)
        yield sd, ratio


def _title(path) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def _merged_from(models) -> str:
    return ", ".join(_title(m) for m in models)


# ---- merge_lora.py / sdxl_merge_lora.py ------------------------------------------------------------


def merge_lora(args, run: FakeRun, con: Console, sdxl: bool) -> None:
    if len(args.models or []) != len(args.ratios or []):
        crash(run, "AssertionError: number of models must be equal to number of ratios / モデルの数と重みの数は合わせてください")
    save_p = args.save_precision or args.precision
    if args.sd_model is None:
        # copymachine never merges LoRA into LoRA (merge_lora.py squares each ratio: README)
        crash(run, "NotImplementedError: copymachine fake: merging LoRA into LoRA (no --sd_model) is not emulated", 3)
    _merge_into_checkpoint(args, run, con, sdxl, save_p)


def _merge_into_checkpoint(args, run, con, sdxl, save_p) -> None:
    """W += ratio · up@down · alpha/dim on each module's weight (code: merge_lora.py merge_to_sd_model).
    The fake finds the weight by the checkpoint key the real module maps to (data/lora_modules_*.json);
    where the tiny shapes differ (SDXL text encoder 2 q/k/v are fused in_proj) the weight is copied."""
    con.info(f"loading SD model: {args.sd_model}", "merge_lora.py:245")
    ckpt, _ckpt_meta = _load(args.sd_model, run, con)
    is_xl = any(k.startswith("conditioner.embedders.1.") for k in ckpt)
    if is_xl != sdxl:
        crash(run, "RuntimeError: Error(s) in loading state_dict: Missing key(s) in state_dict (copymachine fake: wrong merge script for this checkpoint family)")
    data = common.load_json("lora_modules_sdxl.json" if sdxl else "lora_modules_sd15.json")
    key_of = {m["name"]: m["ckpt_key"] for m in data["modules"] + data["conv_only"]}
    out = {k: v.astype(np.float32) for k, v in ckpt.items()}
    for model, ratio in zip(args.models, args.ratios):
        con.info(f"loading: {model}", "merge_lora.py")
        lora, _ = _load(model, run, con)
        con.info("merging...", "merge_lora.py")
        for name, (down, up, alpha) in _modules(lora).items():
            key = key_of.get(name)
            if key is None and name not in key_of:
                con.info(f"no module found for LoRA weight: {name}.lora_down.weight", "merge_lora.py")
                continue
            dim = down.shape[0]
            scale = (alpha if alpha is not None else dim) / dim
            if key in out and out[key].shape == _delta(down, up).shape:
                out[key] = out[key] + ratio * _delta(down, up) * scale
    tensors = {k: common.as_precision(v, save_p) for k, v in out.items()}
    meta = {}
    if not args.no_metadata:
        meta = {
            "modelspec.sai_model_spec": "1.0.1",
            "modelspec.architecture": "stable-diffusion-xl-v1-base" if sdxl else ("stable-diffusion-v2-768-v" if getattr(args, "v2", False) else "stable-diffusion-v1"),
            # (run: a merged SD1 checkpoint says generative-models too, unlike an SD1 LoRA)
            "modelspec.implementation": "https://github.com/Stability-AI/generative-models",
            "modelspec.title": _title(args.save_to),
            "modelspec.date": common.iso_now(),
            "modelspec.resolution": "1024x1024" if sdxl else ("768x768" if getattr(args, "v2", False) else "512x512"),
            "modelspec.prediction_type": "v" if getattr(args, "v2", False) else "epsilon",
            "modelspec.merged_from": _merged_from([args.sd_model] + list(args.models)),
            "modelspec.implementation_version": f"sd-scripts/{common.sd_scripts_commit()}",
        }
    con.info(f"saving SD model to: {args.save_to}", "merge_lora.py")
    run.set(mode="into_checkpoint")
    run.save(args.save_to, tensors, meta)


# ---- svd_merge_lora.py ----------------------------------------------------------------------------


def svd_merge_lora(args, run: FakeRun, con: Console, sdxl: bool = False) -> None:
    """Σ ratio·up@down·alpha/dim per module, SVD, rank truncation, 0.99-quantile clamp, alpha = rank
    (code: networks/svd_merge_lora.py merge_lora_models)."""
    if len(args.models or []) != len(args.ratios or []):
        crash(run, "AssertionError: number of models must be equal to number of ratios / モデルの数と重みの数は合わせてください")
    new_conv_rank = args.new_conv_rank if args.new_conv_rank is not None else args.new_rank
    con.info(f"new rank: {args.new_rank}, new conv rank: {new_conv_rank}", "svd_merge_lora.py")
    merged: dict[str, np.ndarray] = {}
    first: dict = {}
    for sd, ratio in _each_model(args, run, con, "svd_merge_lora.py", first):
        con.info("merging...", "svd_merge_lora.py")
        for name, (down, up, alpha) in _modules(sd).items():
            dim = down.shape[0]
            scale = (alpha if alpha is not None else dim) / dim
            d = ratio * _delta(down, up) * scale
            merged[name] = merged[name] + d if name in merged else d
    v2, base_model = first.get("ss_v2"), first.get("ss_base_model_version")
    con.info("extract new lora...", "svd_merge_lora.py")
    out = {}
    for name, mat in merged.items():
        conv3 = mat.ndim == 4 and mat.shape[2:] != (1, 1)
        rank = min(new_conv_rank if conv3 else args.new_rank, mat.shape[0], mat.shape[1])
        U, Vh, _ = _svd_lowrank(mat, rank, CLAMP_QUANTILE)
        out[name + ".lora_up.weight"] = U
        out[name + ".lora_down.weight"] = Vh
        out[name + ".alpha"] = np.array(rank, dtype=np.int64)  # torch.tensor(int): stays int64, not cast
    save_p = args.save_precision or args.precision
    tensors = {k: (common.as_precision(v, save_p) if v.dtype.kind == "f" else v) for k, v in out.items()}
    meta = _minimum_meta(v2, base_model, f"{args.new_rank}", f"{args.new_rank}", {"conv_dim": new_conv_rank, "conv_alpha": new_conv_rank})
    con.info("calculating hashes and creating metadata...", "svd_merge_lora.py")
    meta["sshs_model_hash"], meta["sshs_legacy_hash"] = common.sshs_hashes(tensors, meta)
    if not args.no_metadata:
        is_sdxl = base_model is not None and base_model.lower().startswith("sdxl")
        meta.update(_lora_modelspec(meta, is_sdxl, v2 == "True", _title(args.save_to), _merged_from(args.models)))
    con.info(f"saving model to: {args.save_to}", "svd_merge_lora.py")
    run.save(args.save_to, tensors, meta)


# ---- resize_lora.py -------------------------------------------------------------------------------


def resize_lora(args, run: FakeRun, con: Console, sdxl: bool = False) -> None:
    """full = up@down, SVD, keep new_rank, up = U·S, down = Vh, alpha = old_alpha/old_rank·new_rank;
    a zero module gets rank 1; the input metadata is copied and updated (code: networks/resize_lora.py)."""
    if not str(args.save_to).endswith((".ckpt", ".pt", ".pth", ".safetensors")):
        crash(run, f"Exception: The --save_to argument must be a .ckpt, .pt, .pth or .safetensors file: {args.save_to}")
    if args.dynamic_method:
        crash(run, "NotImplementedError: copymachine fake: --dynamic_method is not emulated", 3)
    new_conv_rank = args.new_conv_rank if args.new_conv_rank is not None else args.new_rank
    con.info("loading Model...", "resize_lora.py")
    sd, meta = _load(args.model, run, con)
    con.info("Resizing Lora...", "resize_lora.py")
    out = {}
    old_dim = new_alpha = None
    for name, (down, up, alpha) in _modules(sd).items():
        old_rank = down.shape[0]
        old_dim = max(old_dim or 0, old_rank)
        scale = 1.0 if alpha is None else alpha / old_rank
        # (code: every 4-D module, 1x1 included, goes through extract_conv with new_conv_rank)
        rank = new_conv_rank if down.ndim == 4 else args.new_rank
        full = _delta(down, up)
        U, Vh, S = _svd_lowrank(full, rank, None)
        new_rank = rank
        if S[0] <= MIN_SV:
            new_rank = 1
        U, Vh = U[:, :new_rank], Vh[:new_rank]
        new_alpha = float(scale * new_rank)
        out[name + ".lora_down.weight"] = Vh
        out[name + ".lora_up.weight"] = U
        out[name + ".alpha"] = np.array(new_alpha, dtype=np.float32)
    con.info("resizing complete", "resize_lora.py:302")
    save_p = args.save_precision  # None -> float32
    tensors = {k: common.as_precision(v, save_p) for k, v in out.items()}
    meta = dict(meta)
    comment = meta.get("ss_training_comment", "")
    conv_desc = "" if args.new_rank == new_conv_rank else f" (conv: {new_conv_rank})"
    meta["ss_training_comment"] = f"dimension is resized from {old_dim} to {args.new_rank}{conv_desc}; {comment}"
    meta["ss_network_dim"] = str(args.new_rank)
    meta["ss_network_alpha"] = str(new_alpha)
    meta["sshs_model_hash"], meta["sshs_legacy_hash"] = common.sshs_hashes(tensors, meta)
    con.info(f"saving model to: {args.save_to}", "resize_lora.py")
    run.save(args.save_to, tensors, meta)


# ---- extract_lora_from_models.py ------------------------------------------------------------------


def extract_lora(args, run: FakeRun, con: Console, sdxl: bool = False) -> None:
    """LoRA = SVD of (tuned − original) per module weight, alpha = rank; text encoder dropped when its
    max |diff| <= min_diff (code: networks/extract_lora_from_models.py svd)."""
    if args.v2 and args.sdxl:
        crash(run, "AssertionError: v2 and sdxl cannot be specified at the same time / v2とsdxlは同時に指定できません")
    org, _ = _load(args.model_org, run, con)
    tuned, _ = _load(args.model_tuned, run, con)
    data = common.load_json("lora_modules_sdxl.json" if args.sdxl else "lora_modules_sd15.json")
    mods = data["modules"] + (data["conv_only"] if args.conv_dim is not None else [])
    diffs = {}
    te_max = 0.0
    for m in mods:
        k = m["ckpt_key"]
        if k is None or k not in org or k not in tuned or org[k].shape != tuned[k].shape:
            continue
        d = tuned[k].astype(np.float32) - org[k].astype(np.float32)
        if m["name"].startswith("lora_te"):
            te_max = max(te_max, float(np.abs(d).max()))
        diffs[m["name"]] = d
    if te_max > args.min_diff:
        con.info(f"Text encoder is different. {te_max} > {args.min_diff}", "extract_lora_from_models.py")
    else:
        con.warning("Text encoder is same. Extract U-Net only.", "extract_lora_from_models.py")
        diffs = {n: d for n, d in diffs.items() if not n.startswith("lora_te")}
    con.info("calculating by svd", "extract_lora_from_models.py")
    out = {}
    for name, mat in diffs.items():
        conv3 = mat.ndim == 4 and mat.shape[2:] != (1, 1)
        rank = args.dim if not conv3 or args.conv_dim is None else args.conv_dim
        rank = min(rank, mat.shape[0], mat.shape[1])
        U, Vh, _ = _svd_lowrank(mat, rank, args.clamp_quantile)
        out[name + ".lora_up.weight"] = U
        out[name + ".lora_down.weight"] = Vh
        out[name + ".alpha"] = np.array(Vh.shape[0], dtype=np.float32)
    tensors = {k: common.as_precision(v, args.save_precision) for k, v in out.items()}
    net_kwargs = {} if args.conv_dim is None else {"conv_dim": str(args.conv_dim), "conv_alpha": str(float(args.conv_dim))}
    v2 = bool(args.v2)
    meta = {
        "ss_v2": str(v2),
        "ss_base_model_version": "sdxl_base_v1-0" if args.sdxl else ("sd_v2" + ("_v" if (args.v_parameterization if args.v_parameterization is not None else v2) else "") if v2 else "sd_v1"),
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(args.dim),
        "ss_network_alpha": str(float(args.dim)),
        "ss_network_args": json.dumps(net_kwargs),
    }
    if not args.no_metadata:
        meta.update(_lora_modelspec(meta, bool(args.sdxl), v2, _title(args.save_to)))
    meta["sshs_model_hash"], meta["sshs_legacy_hash"] = common.sshs_hashes(tensors, meta)
    Path(args.save_to).parent.mkdir(parents=True, exist_ok=True)
    run.save(args.save_to, tensors, meta)
    con.info(f"LoRA weights are saved to: {args.save_to}", "extract_lora_from_models.py")
