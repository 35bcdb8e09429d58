"""The base-model families (copymachine/families/): detection from keys, the user's other files, what a
training and a render of each family is given (copymachine.minimal_render), and what each refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from copymachine import minimal_render
from copymachine.errors import InputError
from copymachine.families import FAMILIES, SD1, detect_family, lora_family, parse_model_files, with_files
from copymachine.families.anima import ANIMA
from copymachine.families.flux import CHROMA, FLUX_DEV
from copymachine.families.sd3 import SD35_LARGE
from copymachine.genimg import PromptLine
from copymachine.models import Prediction, base_options

FLUX_KEYS = {"double_blocks.0.img_attn.qkv.weight", "guidance_in.in_layer.bias", "single_blocks.0.linear1.weight"}
SD3 = "model.diffusion_model."


@pytest.mark.parametrize("keys, name", [
    (FLUX_KEYS, "flux-dev"),
    ({f"model.diffusion_model.{k}" for k in FLUX_KEYS}, "flux-dev"),
    (FLUX_KEYS - {"guidance_in.in_layer.bias"}, "flux-schnell"),
    ({*FLUX_KEYS, "distilled_guidance_layer.in_proj.weight"}, "chroma"),
    ({f"{SD3}joint_blocks.0.x_block.attn.qkv.weight"}, "sd3-medium"),
    ({f"{SD3}joint_blocks.0.x_block.attn.qkv.weight", f"{SD3}joint_blocks.0.context_block.attn.ln_k.weight"},
     "sd3-5-large"),
    ({f"{SD3}joint_blocks.0.x_block.attn.qkv.weight", f"{SD3}joint_blocks.0.context_block.attn.ln_k.weight",
      f"{SD3}joint_blocks.3.x_block.attn2.ln_k.weight"}, "sd3-5-medium"),
    ({"net.llm_adapter.out_proj.weight", "net.blocks.0.self_attn.q_proj.weight"}, "anima"),
])  # fmt: skip
def test_each_family_is_told_by_its_keys(keys, name):
    family, what = detect_family(keys)
    assert family is not None and family.name == name and what == family.label


def test_a_diffusers_flux_folder_file_is_named_not_trained():
    family, what = detect_family({"transformer_blocks.0.attn.to_q.weight", "single_transformer_blocks.0.proj_out.w"})
    assert family is None and "diffusers layout" in what


@pytest.mark.parametrize("keys, metadata, name", [
    (["lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight"], {}, "flux-dev"),
    (["lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight"], {"ss_model_type": "chroma"}, "chroma"),
    (["x"], {"ss_base_model_version": "5-large"}, "sd3-5-large"),
    (["lora_unet_joint_blocks_0_x_block_attn_qkv.lora_down.weight"], {}, "sd3-5-large"),
    (["lora_unet_blocks_0_self_attn_q_proj.lora_down.weight"], {}, "anima"),
    (["x"], {"ss_base_model_version": "anima"}, "anima"),
    (["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"], {}, "sd1"),
])  # fmt: skip
def test_a_loras_family(keys, metadata, name):
    assert lora_family(keys, metadata).name == name


def test_sd_keys_of_stages_are_unchanged_by_the_new_fields():
    """A stage key holds the family's as_key(): the fields added for the DiTs stay out of SD's, so caches of
    earlier runs stay valid."""
    assert set(SD1.as_key()) == {"name", "train_script", "merge_script", "gen_flag", "base_model_version", "v2",
                                 "training_options", "merge_options", "extract_options"}
    assert {"network_module", "renderer"} <= set(ANIMA.as_key())


def _files(tmp_path: Path, *names: str) -> dict[str, Path]:
    out = {}
    for name in names:
        out[name] = tmp_path / f"{name} ファイル.safetensors"
        out[name].write_bytes(b"x")
    return out


def test_the_other_files_are_asked_for_in_one_line(tmp_path):
    with pytest.raises(InputError) as e:
        with_files(FLUX_DEV, _files(tmp_path, "ae"))
    assert e.value.message.startswith("FLUX.1 dev needs its other files beside the checkpoint: give --model-file "
                                      "clip_l=FILE --model-file t5xxl=FILE (clip_l: the CLIP-L text encoder")
    family = with_files(FLUX_DEV, _files(tmp_path, "clip_l", "t5xxl", "ae"))
    assert [n for n, _ in family.files] == ["clip_l", "t5xxl", "ae"]
    assert family.file_options()["t5xxl"].endswith("t5xxl ファイル.safetensors")
    assert "clip_l" not in [m.name for m in CHROMA.needs]


def test_embedded_text_encoders_need_no_file_and_wrong_names_are_refused(tmp_path):
    assert with_files(SD35_LARGE, {}, frozenset({"clip_l", "clip_g", "t5xxl"})).files == ()
    with pytest.raises(InputError, match="Anima takes no t5xxl file"):
        with_files(ANIMA, _files(tmp_path, "t5xxl", "qwen3", "vae"))
    with pytest.raises(InputError, match="--model-file vae: no such file"):
        with_files(ANIMA, {"qwen3": _files(tmp_path, "qwen3")["qwen3"], "vae": tmp_path / "nope.safetensors"})
    with pytest.raises(InputError, match="give NAME=FILE"):
        parse_model_files(("t5xxl",))
    with pytest.raises(InputError, match="given twice"):
        parse_model_files(("vae=a", "VAE=b"))
    assert parse_model_files(("ae=C:\\m\\a=b.safetensors",)) == {"ae": Path("C:\\m\\a=b.safetensors")}


def test_flow_matching_families_have_no_prediction_or_clip_skip_to_choose():
    with pytest.raises(InputError, match="flow-matching model"):
        base_options(ANIMA, 1, Prediction(v_parameterization=True))
    with pytest.raises(InputError, match=r"clip skip 2: FLUX\.1 dev has no clip skip"):
        base_options(FLUX_DEV, 2, Prediction())
    assert all(f.network_module.startswith("networks.lora") for f in FAMILIES.values())


def _line(seed: int, multiplier: float | None = None, name: str = "a.png") -> PromptLine:
    return PromptLine("a cat", name, 64, 64, seed, 4, 3.5, "bad", multiplier)


def test_flux_renders_one_image_per_run_with_each_lora_at_its_multiplier(tmp_path):
    family = with_files(FLUX_DEV, _files(tmp_path, "clip_l", "t5xxl", "ae"))
    args = minimal_render.single_args(family, Path("/m/flux 1.safetensors"), _line(7, -1.0), Path("/o"), "bf16",
                                      [Path("/l/style.safetensors"), Path("/l/effect.safetensors")], [0.8, 1.0])
    assert args[:2] == ["--ckpt_path", "/m/flux 1.safetensors"] and "--clip_l" in args and "--ae" in args
    assert args[args.index("--dtype") + 1] == "bfloat16" and args[args.index("--seed") + 1] == "7"
    assert args[args.index("--lora_weights") + 1:] == ["/l/style.safetensors;0.8", "/l/effect.safetensors;-1.0"]
    assert "--cfg_scale" not in args  # FLUX.1 dev: its own guidance, no true CFG


def test_sd3_renders_with_cfg_and_its_precision_flag(tmp_path):
    args = minimal_render.single_args(SD35_LARGE, Path("/m.safetensors"), _line(1), Path("/o"), "fp16", [], [])
    assert "--fp16" in args and args[args.index("--cfg_scale") + 1] == "3.5" and "--lora_weights" not in args


def test_anima_runs_one_batch_per_multiplier_with_distinct_seeds():
    lines = [_line(1, 0.0, "a"), _line(2, 0.0, "b"), _line(1, 0.0, "c"), _line(1, 1.0, "d")]
    groups = minimal_render.batches(lines, [1.0])
    assert [[x.file_name for x in g] for g in groups] == [["a", "b"], ["c"], ["d"]]
    args = minimal_render.anima_args(ANIMA, Path("/dit"), Path("/p.txt"), Path("/o"), [Path("/l")], [0.0])
    assert args[-4:] == ["--lora_weight", "/l", "--lora_multiplier", "0.0"] and args[:2] == ["--dit", "/dit"]


def test_rendered_images_are_moved_to_their_planned_names(tmp_path):
    run_dir, out = tmp_path / "run", tmp_path / "out"
    run_dir.mkdir()
    (run_dir / "20261206-101010-123_5.png").write_bytes(b"png")
    minimal_render._take(run_dir, [_line(5, name="copy-1.png")], out, "anima_minimal_inference.py")
    assert (out / "copy-1.png").read_bytes() == b"png"
    (run_dir / "a.png").write_bytes(b"1")
    (run_dir / "b.png").write_bytes(b"2")
    with pytest.raises(Exception, match="wrote 2 images"):
        minimal_render._take(run_dir, [_line(5, name="x.png")], out, "flux_minimal_inference.py")


def test_a_jobs_files_model_files_are_relative_to_it():
    from copymachine.jobfile import _values
    from copymachine.options import job_keys

    values = _values({"model-file": ["vae=v.safetensors", "qwen3=/abs/q.safetensors"]}, job_keys("train"), {},
                     Path("/jobs"))
    assert values == {"model_files": [f"vae={Path('/jobs') / 'v.safetensors'}", "qwen3=/abs/q.safetensors"]}
