"""Stage: the final LoRA at `<out>/<name>.safetensors`, carrying copymachine's own metadata
next to sd-scripts' ss_* keys (readable in A1111/ComfyUI metadata viewers).

Which LoRAs carry copymachine.* keys: every LoRA that is a product for the user — the final LoRA
of `train`/`diff` (method, effect and its parameters, recipe, image hashes, sign, copy-check
scores, versions) and the outputs of the `svd-merge`, `extract` and `resize` tools (the tool,
its parameters, each input's name, sha256, ratio and own copymachine method/effect, versions;
resize keeps its input's keys, as resize_lora.py does). Intermediates (copy LoRA, effect LoRA,
LoRA A/B, combined and unresized LoRAs) are left byte for byte as sd-scripts wrote them: they are
inputs of later stages, their provenance is in the manifest and their ss_training_comment names
the stage.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from copymachine import __version__
from copymachine.files import replace_file
from copymachine.lorafile import copy_with_metadata, read_safetensors, validate_lora, write_uniform_rank
from copymachine.models import BaseOptions
from copymachine.plan import OPTIONAL, StageParams
from copymachine.stages import StageContext, StageKind
from copymachine.stages.leakage import stored

SIGN_TEXT = {
    "edit": "positive strength = more of the edit",
    "memo": "positive strength = less of the edit (the memo's orientation)",
}


@dataclass(frozen=True)
class ToolLabel:
    """In a tool stage's parameters (`copymachine svd-merge`, ...): its output is a product for
    the user and carries copymachine.* keys naming the tool."""

    tool: str


@dataclass(frozen=True)
class FinalizeParams(StageParams):
    """What the final LoRA's copymachine.* metadata says (the edit's, the recipe's, ...)."""

    method: str
    effect: str
    effect_params: dict[str, Any]
    amount: float
    sign: str  # "edit" | "memo"
    recipe: dict[str, Any]  # the trainings' recipes, as recorded
    absorbed: list[list[Any]]  # [file name, ratio] of each absorbed style LoRA
    sd_scripts_commit: str | None
    # clip skip and prediction type the LoRA was trained with (None: the defaults), written as
    # sd-scripts' own ss_clip_skip / ss_zero_terminal_snr / modelspec.prediction_type, which a
    # combined or merged LoRA would otherwise lack
    model: BaseOptions | None = field(default=None, metadata=OPTIONAL)


class Finalize(StageKind):
    kind = "finalize"
    version = 2  # 2: every module at the LoRA's rank (zero-padded)

    def execute(self, stage, ctx: StageContext) -> None:
        if ctx.dry_run:
            return
        p = stage.spec
        metadata = {
            "copymachine.version": __version__,
            "copymachine.method": p.method,
            "copymachine.effect": p.effect,
            "copymachine.effect_params": json.dumps(p.effect_params, sort_keys=True),
            "copymachine.amount": str(p.amount),
            "copymachine.recipe": json.dumps(p.recipe, sort_keys=True),
            "copymachine.sign": SIGN_TEXT[p.sign],
            "copymachine.absorbed": json.dumps(p.absorbed),
            "copymachine.sd_scripts_commit": p.sd_scripts_commit or "unknown",
        }
        if p.model is not None:
            metadata.update(lora_model_metadata(p.model))
        for kind in ("original", "edited"):
            names = sorted(n for n in stage.inputs if n.startswith(kind))
            metadata[f"copymachine.{kind}_sha256"] = ",".join(ctx.hashes.sha256(stage.input(n)) for n in names)
        checks = [_json(stage, n) for n in sorted(stage.inputs) if n.startswith("copycheck")]
        if checks:
            kept = ("mean_ssim", "min_ssim", "size", "steps")
            metadata["copymachine.copy_check"] = json.dumps([{k: c[k] for k in kept} for c in checks])
        if "leakage" in stage.inputs:
            metadata["copymachine.leakage"] = stored(_json(stage, "leakage"))
        # one rank for every module (resize gives a module without gradient rank 1): see write_uniform_rank
        padded = write_uniform_rank(stage.input("lora"), ctx.scratch_output("lora"), metadata)
        if padded:
            ctx.reporter.info(f"      {padded} module(s) of a lower rank (no gradient: delta zero) padded with zeros "
                              "to the LoRA's rank")

    def validate(self, stage, name, path, ctx):
        return validate_lora(path, "final LoRA").facts()


def _json(stage, name: str) -> Any:
    return json.loads(stage.input(name).read_text(encoding="utf-8"))


def lora_model_metadata(model: BaseOptions) -> dict[str, str]:
    """sd-scripts' metadata keys (train_network.py writes them so) for the base model's options."""
    metadata = {"ss_clip_skip": str(model.clip_skip)}
    if model.v_parameterization:
        metadata["modelspec.prediction_type"] = "v"
    if model.zero_terminal_snr:
        metadata["ss_zero_terminal_snr"] = "True"
    return metadata


def label_tool_output(stage, ctx: StageContext, path: Path) -> None:
    """Add copymachine.* keys to a tool's output LoRA (in its scratch place, before the pipeline
    moves it): stages whose params carry a ToolLabel are products for the user."""
    label = getattr(stage.spec, "label", None)
    if ctx.dry_run or label is None:
        return
    inputs = []
    for name in sorted(stage.inputs):
        ref = stage.input(name)
        entry: dict = {"input": name, "file": ref.name, "sha256": ctx.hashes.sha256(ref)}
        ratios = getattr(stage.spec, "ratios", None)
        if name.startswith("lora") and ratios and name[4:].isdigit() and int(name[4:]) < len(ratios):
            entry["ratio"] = ratios[int(name[4:])]
        if ref.suffix == ".safetensors" and name.startswith("lora"):
            md = read_safetensors(ref).metadata
            keys = ("copymachine.method", "copymachine.effect", "copymachine.sign", "copymachine.tool")
            entry.update({k.split(".", 1)[1]: md[k] for k in keys if k in md})
        inputs.append(entry)
    params = {k: v for k, v in stage.spec.record().items() if k not in ("label", "family")}
    metadata = {
        "copymachine.version": __version__,
        "copymachine.tool": label.tool,
        "copymachine.tool_params": json.dumps(params, sort_keys=True),
        "copymachine.inputs": json.dumps(inputs, ensure_ascii=False),
        "copymachine.sd_scripts_commit": (ctx.settings.engine.commit if ctx.settings.engine else None) or "unknown",
    }
    labelled = path.with_name(path.name + ".labelled")
    copy_with_metadata(path, labelled, metadata)
    replace_file(labelled, path)


KIND = Finalize()
