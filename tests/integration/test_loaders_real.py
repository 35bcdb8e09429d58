"""copymachine's final LoRAs in the loaders our users have (`make test-loaders`):

- diffusers' own loader (a separate venv with diffusers, peft and torch: COPYMACHINE_DIFFUSERS_PYTHONS,
  a list of Pythons separated by the path separator; skipped without);
- ComfyUI's own loader (a ComfyUI checkout: COPYMACHINE_COMFYUI; run on the CPU by a Python with
  torch: COPYMACHINE_COMFYUI_PYTHON, else sd-scripts' Python; skipped without);
- A1111's key mapping (a stable-diffusion-webui checkout, or a folder holding its
  extensions-builtin/Lora/networks.py: COPYMACHINE_A1111; skipped without): its own
  convert_diffusers_name_to_compvis and load_network, taken from that file, run on our keys.

Nothing of ComfyUI or A1111 is in this repository; `make loader-checkouts` extracts them from clones.

diffusers 0.32's loader scales the whole U-Net by the wrong alpha/rank when a LoRA has mixed ranks
(resize_lora.py gives a module that got no gradient rank 1): the final LoRA is therefore of one
rank (copymachine.lorafile.write_uniform_rank); this measures that every key is applied with the
exact strength at +1 and -1, in each diffusers given.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).with_name("diffusers_loader.py")
COMFYUI_SCRIPT = Path(__file__).with_name("comfyui_loader.py")
REPO = Path(__file__).resolve().parents[2]


def pythons() -> list[str]:
    return [p for p in os.environ.get("COPYMACHINE_DIFFUSERS_PYTHONS", "").split(os.pathsep) if p]


@pytest.mark.parametrize("python", pythons() or [pytest.param(None, marks=pytest.mark.skip(reason="set COPYMACHINE_DIFFUSERS_PYTHONS to Pythons with diffusers + peft + torch"))])
def test_diffusers_applies_the_final_lora_exactly(python, tmp_path):
    result = subprocess.run([python, str(SCRIPT), str(tmp_path)], capture_output=True, text=True, timeout=1800, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    by = {(r["variant"], r["strength"]): r for r in rows}
    for strength in (1.0, -1.0):
        padded = by[("padded", strength)]
        assert padded["applied"] == padded["modules"] - 2  # every module with a delta (the 2 empty ones have none)
        assert padded["unet_ratio"] == pytest.approx([1.0, 1.0], abs=1e-5) and padded["te_ratio"] == pytest.approx([1.0, 1.0], abs=1e-5)
        assert padded["max_rel_error"] < 1e-4 and not padded["warnings"]
    for r in rows:
        print(f"\n[diffusers {r['diffusers']}] {r['variant']} at {r['strength']:+g}: applied {r['applied']}, U-Net x{r['unet_ratio'][0]:.3f}..{r['unet_ratio'][1]:.3f}, "
              f"TE x{r['te_ratio'][0]:.3f}..{r['te_ratio'][1]:.3f}, warnings {len(r['warnings'])}")


# --- ComfyUI -----------------------------------------------------------------------------------


def _comfyui() -> Path:
    d = os.environ.get("COPYMACHINE_COMFYUI")
    if not d:
        pytest.skip("set COPYMACHINE_COMFYUI to a ComfyUI checkout (make loader-checkouts COMFYUI_REPO=clone)")
    d = Path(d).expanduser()
    if not (d / "comfy" / "lora.py").is_file():
        pytest.skip(f"COPYMACHINE_COMFYUI={d} is not a ComfyUI checkout (no comfy/lora.py)")
    return d.resolve()


def _torch_python() -> str:
    p = os.environ.get("COPYMACHINE_COMFYUI_PYTHON") or os.environ.get("SD_SCRIPTS_PYTHON") or str(REPO / "vendor" / "sd-scripts" / "venv" / "bin" / "python")
    r = subprocess.run([p, "-c", "import torch, numpy"], capture_output=True, text=True, timeout=300) if Path(p).exists() else None
    if r is None or r.returncode != 0:
        pytest.skip(f"no Python with torch for ComfyUI at {p} (set COPYMACHINE_COMFYUI_PYTHON or SD_SCRIPTS_PYTHON)")
    return p


def test_comfyui_applies_the_final_loras_exactly(tmp_path):
    comfy, python = _comfyui(), _torch_python()
    t0 = time.time()
    result = subprocess.run([python, str(COMFYUI_SCRIPT), str(comfy), str(tmp_path)], capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    rows = [r for r in lines if "lora" in r]
    control = next(r["control_not_loaded"] for r in lines if "control_not_loaded" in r)
    assert control == ["lora key not loaded: lora_unet_no_such_block_to_q.lora_down.weight"]  # an unknown key is reported
    assert {(r["lora"], r["strength"]) for r in rows} == {(k, s) for k in ("train", "diff", "train-unpadded") for s in (1.0, -1.0, 0.5)}
    for r in rows:
        what = f"ComfyUI {r['comfyui_commit'][:8]}: {r['lora']} at {r['strength']:+g}, text encoder {r['te_dtype']}"
        assert r["modules"] == 264 and r["lora_keys"] == 3 * 264, what
        assert r["mapped_as_sd_scripts"] == 264, f"{what}: mapped elsewhere than sd-scripts' module: {r['mapping_wrong']}"
        assert r["patches"] == 264 and r["n_not_loaded"] == 0, f"{what}: {r['not_loaded']}"
        assert r["applied"] == (264 if r["lora"] == "diff" else 262), what  # train: the 2 empty modules change nothing
        assert r["max_rel_error_unet"] < 1e-5, what
        if r["te_dtype"] == "float32":
            assert r["max_rel_error_te"] < 1e-5, what
        else:  # ComfyUI's CPU default keeps the text encoder in fp16: (w + delta) rounded, within one fp16 step
            assert r["te_max_ulps"] <= 1.0, what
        assert r["restored"], f"{what}: the weights did not come back after unloading"
        assert not r["warnings"], f"{what}: {r['warnings']}"
    for r in rows:
        print(f"\n[ComfyUI {r['comfyui_version']} {r['comfyui_commit'][:8]}] {r['lora']} at {r['strength']:+g} (TE {r['te_dtype']}): "
              f"patched {r['patches']}/{r['modules']}, changed {r['applied']}, not loaded {r['n_not_loaded']}, "
              f"max rel error U-Net {r['max_rel_error_unet']:.1e}, TE {r['max_rel_error_te']:.1e} ({r['te_max_ulps']:.2f} fp16 steps)")
    print(f"\n[ComfyUI] wall {time.time() - t0:.1f} s (script {lines[-1].get('wall_s')} s)")


# --- A1111 -------------------------------------------------------------------------------------

A1111_NAMES = ("re_digits", "re_x_proj", "re_compiled", "suffix_conversion", "convert_diffusers_name_to_compvis", "assign_network_names_to_compvis_modules", "load_network")


def _a1111_networks() -> Path:
    d = os.environ.get("COPYMACHINE_A1111")
    if not d:
        pytest.skip("set COPYMACHINE_A1111 to a stable-diffusion-webui checkout (make loader-checkouts A1111_REPO=clone)")
    d = Path(d).expanduser()
    for f in (d / "extensions-builtin" / "Lora" / "networks.py", d / "networks.py"):
        if f.is_file():
            return f.resolve()
    pytest.skip(f"COPYMACHINE_A1111={d} has no extensions-builtin/Lora/networks.py")


def _a1111_functions(path: Path, namespace: dict) -> dict:
    """A1111's own definitions, taken out of networks.py (nothing else of it runs: it imports the webui)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    picked = []
    for node in tree.body:
        names = [node.name] if isinstance(node, ast.FunctionDef) else [t.id for t in getattr(node, "targets", []) if isinstance(t, ast.Name)]
        if any(n in A1111_NAMES for n in names):
            picked.append(node)
    found = {n.name if isinstance(n, ast.FunctionDef) else n.targets[0].id for n in picked}
    assert {"convert_diffusers_name_to_compvis", "load_network"} <= found, f"{path} lacks {sorted(set(A1111_NAMES) - found)}"
    exec(compile(ast.Module(body=picked, type_ignores=[]), str(path), "exec"), namespace)
    return namespace


def test_a1111_maps_every_module(tmp_path):
    networks_py = _a1111_networks()
    sys.path.insert(0, str(REPO / "tests" / "integration"))
    try:
        import final_loras
    finally:
        sys.path.pop(0)
    from copymachine.lorafile import read_safetensors

    modules = final_loras.sd15_modules()
    shapes = {m["name"]: (m["out"], m["in"], *(m["kernel"] or ())) for m in modules}
    loras = final_loras.build(shapes, tmp_path)

    # SD1.5 as the webui holds it (ldm: sd_model.model is the DiffusionWrapper, cond_stage_model.wrapped the
    # FrozenCLIPEmbedder), reduced to the modules a LoRA targets; A1111's own code names them
    def module(ckpt_key):
        return SimpleNamespace(ckpt_key=ckpt_key)

    unet = [(m["ckpt_key"][len("model."):-len(".weight")], module(m["ckpt_key"])) for m in modules if m["ckpt_key"].startswith("model.")]
    te = [(m["ckpt_key"][len("cond_stage_model."):-len(".weight")], module(m["ckpt_key"])) for m in modules if m["ckpt_key"].startswith("cond_stage_model.")]
    assert len(unet) + len(te) == 264
    results = {}
    for kind, path in loras.items():
        sd_model = SimpleNamespace(is_sdxl=False, is_sd2=False, is_sd3=False, is_ssd=False,
                                   model=SimpleNamespace(named_modules=lambda: iter(unet)),
                                   cond_stage_model=SimpleNamespace(wrapped=SimpleNamespace(named_modules=lambda: iter(te))))

        class NetworkWeights:
            def __init__(self, network_key, sd_key, w, sd_module):
                self.network_key, self.sd_key, self.w, self.sd_module = network_key, sd_key, w, sd_module

        class Network:
            def __init__(self, name, network_on_disk):
                self.name, self.network_on_disk, self.modules, self.bundle_embeddings, self.mtime = name, network_on_disk, {}, {}, None

        class ModuleTypeLora:  # as network_lora.ModuleTypeLora.create_module decides
            def create_module(self, net, weights):
                return weights if all(x in weights.w for x in ("lora_up.weight", "lora_down.weight")) else None

        st = read_safetensors(path)
        printed = []
        ns = {
            "os": os, "re": re, "logging": SimpleNamespace(debug=printed.append, info=printed.append, warning=printed.append),
            "print": printed.append, "network": SimpleNamespace(Network=Network, NetworkWeights=NetworkWeights),
            "module_types": [ModuleTypeLora()], "shared": SimpleNamespace(sd_model=sd_model),
            "sd_models": SimpleNamespace(read_state_dict=lambda f, st=st: {k: st.read(k) for k in st.tensors}),
        }
        _a1111_functions(networks_py, ns)
        net = ns["load_network"](path.stem, SimpleNamespace(filename=str(path)))
        matched = {w.network_key.split(".", 1)[0]: w for w in net.modules.values()}
        wrong = [n for n, w in matched.items() if w.sd_module.ckpt_key != next(m["ckpt_key"] for m in modules if m["name"] == n)]
        keys = sum(len(w.w) for w in net.modules.values())
        results[kind] = (len(net.modules), keys, len(st.keys()), wrong, printed)
        assert not printed, f"A1111 ({networks_py}) on the {kind} LoRA: {printed[:3]}"
        assert len(net.modules) == 264 and keys == len(st.keys()) == 3 * 264, f"{kind}: {len(net.modules)} modules, {keys}/{len(st.keys())} keys matched"
        assert not wrong, f"{kind}: A1111 puts {wrong[:3]} on another module than sd-scripts does"
        assert all(set(w.w) == {"lora_up.weight", "lora_down.weight", "alpha"} for w in net.modules.values())
    # the control: a key A1111 has no module for is reported and left out (so none left out above means none)
    control = read_safetensors(loras["diff"])
    control_sd = {k: control.read(k) for k in control.tensors}  # the file's tensors, plus one under a name no module has
    control_sd["lora_unet_no_such_block_to_q.lora_down.weight"] = control_sd["lora_unet_mid_block_attentions_0_proj_in.lora_down.weight"]
    printed = []
    ns = dict(ns, print=printed.append, logging=SimpleNamespace(debug=printed.append, info=printed.append, warning=printed.append),
              shared=SimpleNamespace(sd_model=SimpleNamespace(**{k: v for k, v in vars(sd_model).items() if k != "network_layer_mapping"})),
              sd_models=SimpleNamespace(read_state_dict=lambda f: control_sd))
    _a1111_functions(networks_py, ns)
    net = ns["load_network"]("control", SimpleNamespace(filename=str(loras["diff"])))
    assert len(net.modules) == 264 and len(printed) == 1 and "lora_unet_no_such_block_to_q.lora_down.weight" in str(printed[0]), printed
    root = networks_py.parents[2] if networks_py.parent.name == "Lora" else networks_py.parent
    commit = (root / "COMMIT").read_text(encoding="utf-8").strip() if (root / "COMMIT").is_file() else \
        subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip() or "unknown commit"
    for kind, (n, keys, total, _, _) in results.items():
        print(f"\n[A1111 {commit[:8]}, {networks_py}] {kind}: {n}/264 modules matched (each on sd-scripts' own module), {keys}/{total} keys, 0 unmatched")
