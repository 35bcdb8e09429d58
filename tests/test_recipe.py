"""The recipe equals the memo's numbers, and overrides are checked."""

import pytest

from copymachine.errors import InputError
from copymachine.recipe import MEMO, apply_overrides, load_recipe_file, parse_set_options, render_recipe_toml


def test_copy_lora_numbers_are_the_memos():
    c = MEMO.copy
    assert (c.network_module, c.network_dim, c.network_alpha, c.optimizer) == ("networks.lora", 64, 32.0, "AdamW")
    assert c.learning_rate == 1e-4
    assert (c.repeats, c.epochs, c.steps) == (512, 6, 3072)
    assert c.warmup_steps == 500
    assert c.lr_scheduler == "constant_with_warmup"  # 'constant' rejects warmup in sd-scripts
    assert (c.shuffle_caption, c.keep_tokens) == (True, 0)


def test_effect_lora_numbers_are_the_memos():
    e = MEMO.effect_training("outline")
    assert (e.network_dim, e.network_alpha, e.steps) == (64, 32.0, 4096)
    for retrained in ("flat", "jpeg"):
        r = MEMO.effect_training(retrained)
        assert (r.network_dim, r.network_alpha, r.steps) == (128, 64.0, 5120)
    # all else as the copy LoRA
    assert e.learning_rate == MEMO.copy.learning_rate and e.warmup_steps == MEMO.copy.warmup_steps


def test_merge_and_resize_numbers_are_the_memos():
    assert (MEMO.merge.ratio, MEMO.merge.precision, MEMO.merge.save_precision) == (1.0, "float", "float")
    assert (MEMO.resize.rank, MEMO.resize.save_precision) == (8, "fp16")
    assert MEMO.generate.size(512) == (512, 512)  # the base model's own size: 512 for SD1.x


def test_set_options_convert_types():
    r = apply_overrides(MEMO, parse_set_options(["copy.network_dim=32", "effect.flat.epochs=2", "copy.shuffle_caption=false"]), "--set")
    assert r.copy.network_dim == 32 and isinstance(r.copy.network_dim, int)
    assert r.copy.shuffle_caption is False
    assert r.effect_training("flat").epochs == 2
    assert r.effect_training("flat").network_dim == 128  # the rest of the override stays
    assert MEMO.copy.network_dim == 64  # the memo itself is untouched


def test_unknown_key_names_the_valid_ones():
    with pytest.raises(InputError) as e:
        apply_overrides(MEMO, {"copy": {"network_dimm": 3}}, "my.toml")
    assert "copy.network_dimm" in e.value.message and "network_dim" in e.value.message and "my.toml" in e.value.message


def test_unknown_section_and_bad_values():
    with pytest.raises(InputError, match="unknown recipe section"):
        apply_overrides(MEMO, {"copi": {"network_dim": 3}}, "x")
    with pytest.raises(InputError, match="whole number"):
        apply_overrides(MEMO, {"copy": {"network_dim": "many"}}, "x")
    with pytest.raises(InputError, match="rejects warmup"):
        apply_overrides(MEMO, {"copy": {"lr_scheduler": "constant"}}, "x")
    with pytest.raises(InputError, match=r"section.key=value"):
        parse_set_options(["network_dim=3"])


def test_recipe_file_round_trip(tmp_path):
    import tomli_w

    data = render_recipe_toml(MEMO)
    path = tmp_path / "r.toml"
    path.write_text(tomli_w.dumps(data), encoding="utf-8")
    assert load_recipe_file(path) == MEMO
    path.write_text('[effect.outline]\nepochs = 1\n[resize]\nrank = 4\n', encoding="utf-8")
    r = load_recipe_file(path)
    assert r.effect_training("outline").steps == 512 and r.resize.rank == 4
    path.write_text("[copy]\nnetwork_dim = \n", encoding="utf-8")
    with pytest.raises(InputError, match="not valid TOML"):
        load_recipe_file(path)


def test_difference_extraction_numbers_are_the_memos():
    assert MEMO.diff.steps == 4096 and MEMO.diff.keep_tokens == 0
    assert (MEMO.diff.network_dim, MEMO.diff.network_alpha) == (64, 32.0)
    assert (MEMO.svd.rank, MEMO.svd.precision, MEMO.svd.save_precision) == (8, "float", "fp16")


def test_the_recipe_header_names_every_section():
    from copymachine.cli.recipe import HEADER, SECTION_NOTES

    sections = [name for name in render_recipe_toml(MEMO) if not name.startswith("effect.")]
    assert sorted(SECTION_NOTES) == sorted(sections)
    for name in sections:
        assert f"# [{name}] " in HEADER
