"""`copymachine inspect` on LoRA files the tests write."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from copymachine.cli import cli
from copymachine.lorafile import write_safetensors
from copymachine.lorainfo import block_of, delta_norm, lora_report


@pytest.mark.parametrize(
    "module, block",
    [
        ("lora_te_text_model_encoder_layers_0_mlp_fc1", "TE"),
        ("lora_te1_text_model_encoder_layers_0_mlp_fc1", "TE1"),
        ("lora_te2_text_model_encoder_layers_31_self_attn_out_proj", "TE2"),
        ("lora_unet_down_blocks_0_attentions_0_proj_in", "IN01"),
        ("lora_unet_down_blocks_0_attentions_1_proj_in", "IN02"),
        ("lora_unet_down_blocks_0_downsamplers_0_conv", "IN03"),
        ("lora_unet_down_blocks_1_resnets_0_conv1", "IN04"),
        ("lora_unet_down_blocks_3_resnets_1_conv2", "IN11"),
        ("lora_unet_mid_block_attentions_0_proj_out", "MID"),
        ("lora_unet_up_blocks_0_resnets_2_conv1", "OUT02"),
        ("lora_unet_up_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q", "OUT03"),
        ("lora_unet_up_blocks_2_upsamplers_0_conv", "OUT08"),
        ("lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_ff_net_2", "OUT11"),
        ("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q", "IN04"),
        ("lora_unet_middle_block_1_transformer_blocks_9_ff_net_2", "MID"),
        ("lora_unet_output_blocks_0_1_proj_out", "OUT00"),
        ("lora_unet_conv_in", "other"),
    ],
)
def test_block_names(module, block):
    assert block_of(module) == block


def test_delta_norm_equals_the_norm_of_the_product():
    rng = np.random.default_rng(1)
    down, up = rng.standard_normal((4, 9)), rng.standard_normal((7, 4))
    assert delta_norm(down, up, 2.0) == pytest.approx(np.linalg.norm(0.5 * up @ down))
    conv_down, conv_up = rng.standard_normal((4, 3, 3, 3)), rng.standard_normal((5, 4, 1, 1))
    full = conv_up.reshape(5, 4) @ conv_down.reshape(4, -1)
    assert delta_norm(conv_down, conv_up, 4.0) == pytest.approx(np.linalg.norm(full))


def write_lora(path, metadata=None):
    t = {}
    modules = {
        "lora_te_text_model_encoder_layers_0_mlp_fc1": (4, 3.0),
        "lora_unet_down_blocks_0_attentions_0_proj_in": (4, 2.0),
        "lora_unet_down_blocks_0_attentions_1_proj_in": (8, 8.0),
        "lora_unet_up_blocks_3_attentions_2_proj_out": (8, 4.0),
    }
    for name, (rank, alpha) in modules.items():
        down = np.zeros((rank, 6), np.float16)
        up = np.zeros((5, rank), np.float16)
        down[0, 0], up[0, 0] = 1.0, 2.0  # up @ down has one entry: 2
        t[f"{name}.lora_down.weight"] = down
        t[f"{name}.lora_up.weight"] = up
        t[f"{name}.alpha"] = np.array(alpha, np.float16)
    write_safetensors(path, t, metadata)
    return path


def test_report(tmp_path):
    path = write_lora(tmp_path / "a.safetensors", {"ss_base_model_version": "sd_v1", "ss_network_dim": "8", "copymachine.effect": "outline", "modelspec.title": "x"})
    r = lora_report(path)
    assert (r["modules"], r["unet_modules"], r["text_encoder_modules"]) == (4, 3, 1)
    assert r["ranks"] == {"4": 2, "8": 2} and r["alphas"] == {"2": 1, "3": 1, "4": 1, "8": 1}
    assert r["base_model"] == {"version": "sd_v1", "family": "Stable Diffusion 1.x", "from": "metadata"}
    blocks = {b["block"]: b["norm"] for b in r["blocks"]}
    assert list(blocks) == ["TE", "IN01", "IN02", "OUT11"]  # in U-Net order
    assert blocks == {"TE": pytest.approx(2 * 3 / 4), "IN01": pytest.approx(2 * 2 / 4), "IN02": pytest.approx(2.0), "OUT11": pytest.approx(1.0)}
    assert r["copymachine"] == {"copymachine.effect": "outline"}
    assert r["ss"]["ss_network_dim"] == "8" and r["other_metadata"] == {"modelspec.title": "x"}


def test_inspect_command(tmp_path):
    tag_frequency = json.dumps({"img": {f"tag{i}": i for i in range(500)}})
    path = write_lora(tmp_path / "ロラ a.safetensors", {"ss_tag_frequency": tag_frequency, "copymachine.method": "copy-machine"})
    result = CliRunner().invoke(cli, ["inspect", str(path)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "base model  Stable Diffusion 1.x (from module names)" in out
    assert "modules     4: U-Net 3, text encoder 1" in out
    assert "rank        4 (2 modules), 8 (2 modules)" in out
    assert "copymachine.method = copy-machine" in out
    assert "ss_tag_frequency = (dict of 1; --json shows it whole)" in out
    assert "IN02" in out and "#" * 30 in out
    data = json.loads(CliRunner().invoke(cli, ["inspect", str(path), "--json"]).output)
    assert data["ss"]["ss_tag_frequency"] == tag_frequency and len(data["blocks"]) == 4


def test_inspect_refuses_what_is_not_a_lora(tmp_path):
    path = tmp_path / "m.safetensors"
    write_safetensors(path, {"model.diffusion_model.x": np.zeros(2, np.float32)})
    result = CliRunner().invoke(cli, ["inspect", str(path)])
    assert result.exit_code == 3 and "not a kohya LoRA" in result.output
