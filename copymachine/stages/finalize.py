"""The final LoRA with copymachine.* metadata beside sd-scripts' ss_* keys (method, effect, recipe, image
hashes, sign, copy-check scores), the tool outputs labelled alike, and the stages that run one sd-scripts
script: merge_lora.py, svd_merge_lora.py, extract_lora_from_models.py, resize_lora.py. Intermediates stay
byte for byte as sd-scripts wrote them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from copymachine import __version__
from copymachine.errors import EngineError
from copymachine.files import replace_file
from copymachine.lorafile import copy_with_metadata, read_safetensors, validate_lora, write_uniform_rank
from copymachine.models import BaseOptions, Family, detect_family
from copymachine.plan import COSMETIC, OPTIONAL, LoraTerm, StageParams, WeightedLora
from copymachine.stages import StageContext, StageKind, inputs_of
from copymachine.stages.leakage import stored

SIGN_TEXT = {
    "edit": "positive strength = more of the edit",
    "memo": "positive strength = less of the edit (the memo's orientation)",
}
INPUT_KEYS = ("copymachine.method", "copymachine.effect", "copymachine.sign", "copymachine.tool")


@dataclass(frozen=True)
class ToolLabel:
    """In a tool stage's parameters: its output is a product for the user, labelled with the tool."""

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
    # written as sd-scripts' own ss_* / modelspec keys, which a combined or merged LoRA would otherwise lack
    model: BaseOptions | None = field(default=None, metadata=OPTIONAL)


class Finalize(StageKind):
    kind = "finalize"
    version = 2  # 2: every module at the LoRA's rank (zero-padded)

    def execute(self, stage, ctx: StageContext) -> None:
        if ctx.dry_run:
            return
        p = stage.spec
        metadata = {
            "copymachine.version": __version__, "copymachine.method": p.method, "copymachine.effect": p.effect,
            "copymachine.effect_params": json.dumps(p.effect_params, sort_keys=True),
            "copymachine.amount": str(p.amount), "copymachine.recipe": json.dumps(p.recipe, sort_keys=True),
            "copymachine.sign": SIGN_TEXT[p.sign], "copymachine.absorbed": json.dumps(p.absorbed),
            "copymachine.sd_scripts_commit": p.sd_scripts_commit or "unknown",
            **(lora_model_metadata(p.model) if p.model is not None else {}),
        }  # fmt: skip
        for kind in ("original", "edited"):
            metadata[f"copymachine.{kind}_sha256"] = ",".join(map(ctx.hashes.sha256, inputs_of(stage, kind)))
        checks = [_json(path) for path in inputs_of(stage, "copycheck")]
        if checks:
            kept = ("mean_ssim", "min_ssim", "size", "steps")
            metadata["copymachine.copy_check"] = json.dumps([{k: c[k] for k in kept} for c in checks])
        if "leakage" in stage.inputs:
            metadata["copymachine.leakage"] = stored(_json(stage.input("leakage")))
        # one rank for every module (resize gives a module without gradient rank 1): see write_uniform_rank
        padded = write_uniform_rank(stage.input("lora"), ctx.scratch_output("lora"), metadata)
        if padded:
            ctx.reporter.info(f"      {padded} module(s) of a lower rank (no gradient: delta zero) padded with zeros "
                              "to the LoRA's rank")

    def validate(self, stage, name, path, ctx):
        return validate_lora(path, "final LoRA").facts()


def _json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def lora_model_metadata(model: BaseOptions) -> dict[str, str]:
    """sd-scripts' metadata keys (train_network.py writes them so) for the base model's options."""
    metadata = {"ss_clip_skip": str(model.clip_skip)}
    if model.v_parameterization:
        metadata["modelspec.prediction_type"] = "v"
    if model.zero_terminal_snr:
        metadata["ss_zero_terminal_snr"] = "True"
    return metadata


def add_metadata(path: Path, metadata: dict[str, str]) -> None:
    """Add keys to a LoRA's safetensors metadata in place; the tensor bytes are copied as they are."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    copy_with_metadata(path, tmp, metadata)
    replace_file(tmp, path)


def label_tool_output(stage, ctx: StageContext, path: Path) -> None:
    """Add copymachine.* keys to a tool's output LoRA in its scratch place (stages whose params carry a ToolLabel)."""
    label = getattr(stage.spec, "label", None)
    if ctx.dry_run or label is None:
        return
    inputs = []
    ratios = getattr(stage.spec, "ratios", None) or []
    for name in sorted(stage.inputs):
        ref = stage.input(name)
        entry: dict = {"input": name, "file": ref.name, "sha256": ctx.hashes.sha256(ref)}
        if name.startswith("lora") and name[4:].isdigit() and int(name[4:]) < len(ratios):
            entry["ratio"] = ratios[int(name[4:])]
        if ref.suffix == ".safetensors" and name.startswith("lora"):
            md = read_safetensors(ref).metadata
            entry.update({k.split(".", 1)[1]: md[k] for k in INPUT_KEYS if k in md})
        inputs.append(entry)
    params = {k: v for k, v in stage.spec.record().items() if k not in ("label", "family")}
    add_metadata(path, {
        "copymachine.version": __version__, "copymachine.tool": label.tool,
        "copymachine.tool_params": json.dumps(params, sort_keys=True),
        "copymachine.inputs": json.dumps(inputs, ensure_ascii=False),
        "copymachine.sd_scripts_commit": (ctx.settings.engine.commit if ctx.settings.engine else None) or "unknown",
    })  # fmt: skip


@dataclass(frozen=True)
class MergeParams(StageParams):
    family: Family
    ratios: list[float]  # of the LoRA inputs lora000, lora001, ... in order
    precision: str
    save_precision: str


@dataclass(frozen=True)
class SvdMergeParams(StageParams):
    ratios: list[float]  # of the LoRA inputs lora000, lora001, ... in order; negative subtracts
    labels: list[str] = field(metadata=COSMETIC)  # each term's name, for the plan listing
    rank: int = 8
    precision: str = "float"
    save_precision: str = "fp16"
    device: str = "cpu"
    label: ToolLabel | None = field(default=None, metadata=OPTIONAL)


@dataclass(frozen=True)
class ExtractParams(StageParams):
    family: Family
    dim: int
    min_diff: float
    precision: str  # to load and to save in
    device: str
    label: ToolLabel | None = field(default=None, metadata=OPTIONAL)


@dataclass(frozen=True)
class ResizeParams(StageParams):
    rank: int
    save_precision: str
    device: str = "cpu"  # on CUDA resize_lora.py has written corrupt files (sd-scripts issue #904)
    label: ToolLabel | None = field(default=None, metadata=OPTIONAL)


def lora_input_name(i: int) -> str:
    return f"lora{i:03d}"


def numbers(ratios: Sequence[float]) -> list[str]:
    return [repr(float(r)) for r in ratios]


def merge_plan(family: Family, base: Any, loras: Sequence[WeightedLora], precision: str,
               save_precision: str) -> tuple[dict[str, Any], MergeParams]:
    """The merge stage's inputs (the model `base`, then each LoRA) and parameters."""
    inputs = {"base": base, **{lora_input_name(i): w.lora for i, w in enumerate(loras)}}
    ratios = [w.ratio for w in loras]
    return inputs, MergeParams(family=family, ratios=ratios, precision=precision, save_precision=save_precision)


def svd_merge_plan(terms: Sequence[LoraTerm], rank: int, precision: str, save_precision: str, device: str,
                   tool: str | None = None) -> tuple[dict[str, Any], SvdMergeParams]:
    """The svd merge stage's inputs (each term's LoRA, in order) and parameters."""
    inputs = {lora_input_name(i): t.lora for i, t in enumerate(terms)}
    params = SvdMergeParams(ratios=[t.ratio for t in terms], labels=[t.label for t in terms], rank=rank,
                            precision=precision, save_precision=save_precision, device=device,
                            label=ToolLabel(tool) if tool else None)
    return inputs, params


class ScriptStage(StageKind):
    """Runs one sd-scripts script (`command`) into `output`, labels a tool's LoRA, checks it at `rank_field`."""

    needs_engine = True
    output = "lora"
    what = ""  # the output, in validation messages
    rank_field = "rank"

    def command(self, stage, out: Path) -> tuple[str, list[str]]:
        raise NotImplementedError

    def execute(self, stage, ctx: StageContext) -> None:
        out = ctx.scratch_output(self.output)
        script, args = self.command(stage, out)
        ctx.run(ctx.engine.run_script(script, args), Path(script).name, expected=[out])
        label_tool_output(stage, ctx, out)

    def validate(self, stage, name, path, ctx):
        return validate_lora(path, self.what, expected_rank=getattr(stage.spec, self.rank_field)).facts()


class MergeModel(ScriptStage):
    kind = "merge_model"
    output = "model"

    def command(self, stage, out):
        p = stage.spec
        return p.family.merge_script, [
            "--sd_model", str(stage.input("base")), "--models", *map(str, inputs_of(stage, "lora")),
            "--ratios", *numbers(p.ratios), "--precision", p.precision, "--save_precision", p.save_precision,
            "--save_to", str(out), *p.family.merge_options,
        ]

    def validate(self, stage, name, path, ctx):
        st = read_safetensors(path, "merged model")
        family, what = detect_family(st.keys())
        if family is None or family.name != stage.spec.family.name:
            label = stage.spec.family.label
            raise EngineError(f"the merged model at {path} is not a {label} checkpoint (found {what})")
        return {"tensors": len(st.tensors)}


class SvdMerge(ScriptStage):
    kind = "svd_merge"
    what = "merged LoRA"

    def command(self, stage, out):
        p = stage.spec
        return "networks/svd_merge_lora.py", [
            "--models", *map(str, inputs_of(stage, "lora")), "--ratios", *numbers(p.ratios), "--new_rank", str(p.rank),
            "--precision", p.precision, "--save_precision", p.save_precision, "--device", p.device,
            "--save_to", str(out),
        ]

    def describe(self, stage) -> str:
        terms = " ".join(f"{r:+g}x{n}" for r, n in zip(stage.spec.ratios, stage.spec.labels))
        return f"{stage.title}: svd_merge_lora.py {terms}, rank {stage.spec.rank}"


class ExtractLora(ScriptStage):
    kind = "extract_lora"
    what = "extracted LoRA"
    rank_field = "dim"

    def command(self, stage, out):
        p = stage.spec
        return "networks/extract_lora_from_models.py", [
            "--model_org", str(stage.input("original")), "--model_tuned", str(stage.input("tuned")),
            "--save_to", str(out), "--dim", str(p.dim), "--min_diff", repr(float(p.min_diff)),
            "--load_precision", p.precision, "--save_precision", p.precision, "--device", p.device,
            *p.family.extract_options,
        ]  # fmt: skip


class ResizeLora(ScriptStage):
    kind = "resize_lora"
    what = "resized LoRA"

    def command(self, stage, out):
        p = stage.spec
        return "networks/resize_lora.py", [
            "--model", str(stage.input("lora")), "--save_to", str(out), "--new_rank", str(p.rank),
            "--save_precision", p.save_precision, "--device", p.device,
        ]


KINDS = (Finalize(), MergeModel(), SvdMerge(), ExtractLora(), ResizeLora())
