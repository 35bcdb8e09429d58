"""safetensors reading without torch, LoRA validation, and base-model family detection."""

import numpy as np
import pytest

from copymachine.errors import InputError
from copymachine.lorafile import copy_with_metadata, read_safetensors, summarize_lora, validate_lora, write_safetensors
from copymachine.models import detect_family, inspect_base_model


def lora_tensors(rank=4, modules=("lora_unet_down_blocks_0_attentions_0_proj_in", "lora_te_text_model_encoder_layers_0_mlp_fc1"), dtype=np.float16):
    rng = np.random.default_rng(0)
    t = {}
    for m in modules:
        t[f"{m}.lora_down.weight"] = rng.standard_normal((rank, 8)).astype(dtype)
        t[f"{m}.lora_up.weight"] = rng.standard_normal((8, rank)).astype(dtype)
        t[f"{m}.alpha"] = np.array(rank / 2, dtype=dtype)
    return t


def test_round_trip_and_metadata(tmp_path):
    path = tmp_path / "l.safetensors"
    t = lora_tensors()
    write_safetensors(path, t, {"ss_network_dim": "4"})
    st = read_safetensors(path)
    assert st.metadata == {"ss_network_dim": "4"}
    for k, v in t.items():
        np.testing.assert_array_equal(st.read(k), v)
    # the reference implementation reads our files
    from safetensors.numpy import load_file

    loaded = load_file(path)
    np.testing.assert_array_equal(loaded["lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight"], t["lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight"])


def test_bf16_is_widened(tmp_path):
    import json
    import struct

    values = np.array([1.0, -2.5, 3.140625], dtype=np.float32)
    bf16 = (values.view(np.uint32) >> 16).astype("<u2").tobytes()
    header = json.dumps({"x": {"dtype": "BF16", "shape": [3], "data_offsets": [0, len(bf16)]}}).encode()
    path = tmp_path / "b.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + bf16)
    np.testing.assert_array_equal(read_safetensors(path).read("x"), values)


def test_copy_with_metadata_keeps_tensors(tmp_path):
    src, dst = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    write_safetensors(src, lora_tensors(), {"ss_a": "1"})
    copy_with_metadata(src, dst, {"copymachine.effect": "outline"})
    a, b = read_safetensors(src), read_safetensors(dst)
    assert b.metadata == {"ss_a": "1", "copymachine.effect": "outline"}
    for k in a.tensors:
        np.testing.assert_array_equal(a.read(k), b.read(k))


def test_summary_ranks_and_counts(tmp_path):
    path = tmp_path / "l.safetensors"
    write_safetensors(path, lora_tensors(rank=8))
    s = summarize_lora(path)
    assert s.ranks == [8] and s.unet_modules == 1 and s.text_encoder_modules == 1
    assert s.modules["lora_unet_down_blocks_0_attentions_0_proj_in"]["alpha"] == 4.0
    validate_lora(path, expected_rank=8)
    with pytest.raises(InputError, match="rank 8"):
        validate_lora(path, expected_rank=4)


def test_nan_is_refused(tmp_path):
    t = lora_tensors()
    t["lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight"][0, 0] = np.nan
    path = tmp_path / "n.safetensors"
    write_safetensors(path, t)
    with pytest.raises(InputError, match="NaN"):
        validate_lora(path)


@pytest.mark.parametrize(
    "content, message",
    [(b"", "empty"), (b"abc", "too short"), (b"\xff" * 64, "no valid header"), (b"\x04\x00\x00\x00\x00\x00\x00\x00nope", "not JSON")],
)
def test_not_safetensors(tmp_path, content, message):
    path = tmp_path / "x.safetensors"
    path.write_bytes(content)
    with pytest.raises(InputError, match=message):
        read_safetensors(path, "base model")


def test_truncated_file_is_named(tmp_path):
    path = tmp_path / "l.safetensors"
    write_safetensors(path, lora_tensors())
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(InputError, match="truncated"):
        read_safetensors(path)


def test_not_a_lora(tmp_path):
    path = tmp_path / "m.safetensors"
    write_safetensors(path, {"model.diffusion_model.input_blocks.0.0.weight": np.zeros(2, np.float16)})
    with pytest.raises(InputError, match="not a kohya LoRA"):
        summarize_lora(path)


SD1_KEYS = ["model.diffusion_model.input_blocks.0.0.weight", "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight", "first_stage_model.encoder.conv_in.weight"]
SD2_KEYS = ["model.diffusion_model.input_blocks.0.0.weight", "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"]
SDXL_KEYS = ["model.diffusion_model.input_blocks.0.0.weight", "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight", "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight"]


def test_detect_family():
    assert detect_family(SD1_KEYS)[0].name == "sd1"
    assert detect_family(SD2_KEYS)[0].name == "sd2"
    assert detect_family(SDXL_KEYS)[0].name == "sdxl"
    fam, what = detect_family(["double_blocks.0.img_attn.qkv.weight"])
    assert fam.name == "flux-schnell" and what == "FLUX.1 schnell"
    fam, what = detect_family(["transformer_blocks.0.attn.to_q.weight", "single_transformer_blocks.0.x"])
    assert fam is None and "FLUX.1 transformer in the diffusers layout" in what
    fam, what = detect_family(["lora_unet_x.lora_down.weight"])
    assert fam is None and "LoRA" in what
    fam, what = detect_family(["foo", "bar"])
    assert fam is None and "bar, foo" in what


def _checkpoint(tmp_path, keys, name="m.safetensors"):
    path = tmp_path / name
    write_safetensors(path, {k: np.zeros(2, np.float16) for k in keys})
    return path


def test_inspect_base_model(tmp_path):
    assert inspect_base_model(_checkpoint(tmp_path, SD1_KEYS)).family.name == "sd1"
    assert inspect_base_model(_checkpoint(tmp_path, SDXL_KEYS, "xl.safetensors")).family.name == "sdxl"
    with pytest.raises(InputError, match=r"Stable Diffusion 2.x, which this version of copymachine does not train yet"):
        inspect_base_model(_checkpoint(tmp_path, SD2_KEYS, "v2.safetensors"))
    assert inspect_base_model(tmp_path / "v2.safetensors", for_training=False).family.name == "sd2"
    with pytest.raises(InputError, match="a LoRA, not a base model"):
        inspect_base_model(_checkpoint(tmp_path, ["lora_unet_a.lora_down.weight"], "l.safetensors"))
    ckpt = tmp_path / "m.ckpt"
    ckpt.write_bytes(b"PK\x03\x04")
    with pytest.raises(InputError, match="pickle"):
        inspect_base_model(ckpt)
    with pytest.raises(InputError, match="not found"):
        inspect_base_model(tmp_path / "missing.safetensors")
    with pytest.raises(InputError, match="folder"):
        inspect_base_model(tmp_path)


def _delta(tensors, name):
    down, up = tensors[f"{name}.lora_down.weight"].astype(np.float64), tensors[f"{name}.lora_up.weight"].astype(np.float64)
    rank = down.shape[0]
    return float(tensors[f"{name}.alpha"]) / rank * (up.reshape(up.shape[0], -1) @ down.reshape(rank, -1))


def test_a_lora_of_mixed_ranks_is_padded_to_one(tmp_path):
    """resize_lora.py gives a module without gradient (delta zero) rank 1; the final LoRA gets one
    rank (diffusers 0.32 mis-scales a LoRA of mixed ranks) and the same delta in every module."""
    from copymachine.lorafile import summarize_lora, write_uniform_rank

    rng = np.random.default_rng(1)
    tensors = {
        "lora_unet_a.lora_down.weight": rng.standard_normal((8, 16)).astype(np.float16),
        "lora_unet_a.lora_up.weight": rng.standard_normal((12, 8)).astype(np.float16),
        "lora_unet_a.alpha": np.array(4.0, np.float16),
        "lora_unet_empty.lora_down.weight": np.zeros((1, 16), np.float16),
        "lora_unet_empty.lora_up.weight": np.zeros((12, 1), np.float16),
        "lora_unet_empty.alpha": np.array(0.5, np.float16),
        "lora_unet_conv.lora_down.weight": rng.standard_normal((2, 4, 3, 3)).astype(np.float16),
        "lora_unet_conv.lora_up.weight": rng.standard_normal((6, 2, 1, 1)).astype(np.float16),
        "lora_unet_conv.alpha": np.array(1.0, np.float16),
    }
    src, dst = tmp_path / "mixed.safetensors", tmp_path / "final.safetensors"
    write_safetensors(src, tensors, {"ss_network_dim": "8"})
    assert write_uniform_rank(src, dst, {"copymachine.x": "1"}) == 2
    out = read_safetensors(dst)
    padded = {k: out.read(k) for k in out.tensors}
    summary = summarize_lora(dst)
    assert summary.ranks == [8] and {m["alpha"] for m in summary.modules.values()} == {4.0}
    for name in ("lora_unet_a", "lora_unet_empty"):
        assert np.array_equal(_delta(padded, name), _delta(tensors, name))
    conv_before, conv_after = _delta(tensors, "lora_unet_conv"), _delta(padded, "lora_unet_conv")
    assert np.allclose(conv_after, conv_before, rtol=1e-3) and padded["lora_unet_conv.lora_down.weight"].shape == (8, 4, 3, 3)
    assert out.metadata == {"ss_network_dim": "8", "copymachine.x": "1"}
    # one rank already: copied byte for byte after the header
    again = tmp_path / "again.safetensors"
    assert write_uniform_rank(dst, again, {}) == 0
    assert again.read_bytes()[read_safetensors(again).data_start:] == dst.read_bytes()[out.data_start:]
