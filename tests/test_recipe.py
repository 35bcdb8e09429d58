"""The recipe equals the memo's numbers, and overrides are checked."""

import json
import re

import pytest

from copymachine.errors import InputError
from copymachine.recipe import MEMO, apply_overrides, load_recipe_file, parse_set_options, render_recipe_toml
from tests.test_cli_fake import invoke


@pytest.fixture
def original(tmp_path, scene):
    path = tmp_path / "original.png"
    scene.image.resize((128, 128)).save(path)
    return path


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
    from copymachine.cli.recipe import SECTION_NOTES, header

    sections = [name for name, v in render_recipe_toml(MEMO).items() if isinstance(v, dict)]
    assert sorted(SECTION_NOTES) == sorted(sections)
    for name in sections:
        assert f"# [{name}] " in header(MEMO)


def test_booleans_follow_pydantics_rule_and_numbers_refuse_them():
    for spelling, value in (("yes", True), ("off", False), ("1", True), ("False", False)):
        r = apply_overrides(MEMO, parse_set_options([f"copy.shuffle_caption={spelling}"]), "--set")
        assert r.copy.shuffle_caption is value
    with pytest.raises(InputError, match=r"copy\.shuffle_caption must be true or false, not 'maybe'"):
        apply_overrides(MEMO, parse_set_options(["copy.shuffle_caption=maybe"]), "--set")
    with pytest.raises(InputError, match=r"copy\.network_dim must be a whole number, not True"):
        apply_overrides(MEMO, {"copy": {"network_dim": True}}, "x.toml")
    with pytest.raises(InputError, match=r"x.toml: recipe copy.network_dim must be a whole number, not 1.5"):
        apply_overrides(MEMO, {"copy": {"network_dim": 1.5}}, "x.toml")


def test_built_in_recipes_are_files_with_every_key():
    from copymachine.recipe import BUILT_IN, built_in_names

    assert built_in_names()[:2] == ["memo", "fast"]
    assert load_recipe_file("memo") == MEMO and MEMO.name == "memo"
    assert (BUILT_IN / "memo.toml").is_file() and (BUILT_IN / "fast.toml").is_file()
    # a jobs file's `recipe = "fast"` arrives as <the jobs file's folder>/fast: no such file, so the built-in
    assert load_recipe_file(__import__("pathlib").Path("/nowhere/jobs/fast")).name == "fast"
    with pytest.raises(InputError, match=r"recipe file not found: quick \(built-in recipes: memo, fast\)"):
        load_recipe_file(__import__("pathlib").Path("quick"))


def test_fast_recipe_follows_traintrains_difference_preset():
    fast = load_recipe_file("fast")
    c, e = fast.copy, fast.effect_training("outline")
    assert (c.steps, c.batch_size, c.network_dim, c.network_alpha, c.learning_rate) == (500, 2, 16, 16.0, 5e-4)
    assert (e.steps, e.batch_size, e.network_dim, e.network_alpha, e.learning_rate) == (500, 2, 4, 4.0, 1e-4)
    for t in (c, e, fast.diff):
        assert (t.lr_scheduler, t.min_snr_gamma, t.warmup_steps, t.optimizer) == ("cosine", 5.0, 0, "AdamW")
    assert fast.diff == c  # the difference method's A and B: the copy pass's numbers
    for retrained in ("flat", "jpeg"):  # the memo's retrain ratios (2x dim, 1.25x steps) on the effect pass
        assert (fast.effect_training(retrained).network_dim, fast.effect_training(retrained).steps) == (8, 625)
    assert max(c.steps + fast.effect_training(n).steps for n in ("outline", "flat", "jpeg")) <= 1200
    assert fast.resize.rank == 0 and fast.copy_check.min_ssim == MEMO.copy_check.min_ssim == 0.8
    assert MEMO.copy.min_snr_gamma is None and "min_snr_gamma" not in MEMO.copy.as_key()


def test_a_recipe_file_names_its_base_and_itself(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('base = "fast"\n[effect]\nnetwork_dim = 8\n', encoding="utf-8")
    r = load_recipe_file(path)
    assert r.name == "mine" and r.effect.network_dim == 8 and r.copy == load_recipe_file("fast").copy
    assert load_recipe_file(tmp_path / "mine.toml", MEMO).copy.steps == 500  # the file's base wins
    assert r.to_dict()["name"] == "mine"


def test_copy_stop_keeps_a_cosine_schedule_over_the_whole_training():
    fast = load_recipe_file("fast")
    assert fast.copy.segment_options(500) == {"lr_scheduler_type": "CosineAnnealingLR", "lr_scheduler_args": ["T_max=500"]}
    assert MEMO.copy.segment_options(3072) == {}  # constant_with_warmup depends on the warmup only


def test_recipe_list_and_show(tmp_path):
    from click.testing import CliRunner

    from copymachine.cli import cli

    listed = CliRunner().invoke(cli, ["recipe", "--list"])
    assert listed.exit_code == 0
    lines = listed.output.splitlines()
    assert lines[0].startswith("memo (default)") and lines[1].startswith("fast ") and "500" in lines[1]
    shown = CliRunner().invoke(cli, ["recipe", "fast"])
    assert shown.exit_code == 0 and 'base = "fast"' in shown.output and "min_snr_gamma = 5.0" in shown.output
    path = tmp_path / "fast-copy.toml"
    path.write_text(shown.output, encoding="utf-8")
    assert load_recipe_file(path) == load_recipe_file("fast")
    bad = CliRunner().invoke(cli, ["recipe", "slow"])
    assert bad.exit_code != 0 and "recipe file not found: slow (built-in recipes: memo, fast)" in bad.output


def _planned_steps(fake_engine, original, out, *extra: str) -> int:
    args = ["train", "--base", str(fake_engine.base), "--image", str(original), "--out", str(out),
            "--resolution", "64", "--dry-run", *fake_engine.engine_args, *extra]
    result = invoke(args)
    assert result.exit_code == 0, result.output
    return sum(int(m) for m in re.findall(r"train_network\.py, (\d+) steps", result.stdout))


def test_fast_plans_at_most_1200_steps_and_the_memo_7168(fake_engine, original, tmp_path):
    assert _planned_steps(fake_engine, original, tmp_path / "memo", "--effect", "outline") == 7168
    for effect in ("outline", "flat"):
        steps = _planned_steps(fake_engine, original, tmp_path / effect, "--effect", effect, "--recipe", "fast")
        assert steps <= 1200 and steps == {"outline": 1000, "flat": 1125}[effect]
    config = (tmp_path / "flat" / "flat" / "config" / "flat--effect-lora-training.toml").read_text(encoding="utf-8")
    assert 'lr_scheduler = "cosine"' in config and "min_snr_gamma = 5.0" in config
    dataset = (tmp_path / "flat" / "flat" / "config" / "flat--effect-lora-dataset.toml").read_text(encoding="utf-8")
    assert "batch_size = 2" in dataset and "num_repeats = 250" in dataset
    with_stop = _planned_steps(fake_engine, original, tmp_path / "stop", "--effect", "outline", "--recipe", "fast",
                               "--copy-stop-at", "0.8")
    assert with_stop == 1000


def test_fast_trains_on_the_fake_sd_scripts_with_copy_stop(fake_engine, original, tmp_path):
    """Every fast option passes the fake's check of the pinned scripts' options, copy stop's segments included."""
    out = tmp_path / "run"
    args = ["train", "--base", str(fake_engine.base), "--image", str(original), "--out", str(out),
            "--resolution", "64", "--effect", "contrast", "--recipe", "fast", "--copy-stop-at", "0.99", "--set", "copy_check.min_ssim=0",
            *fake_engine.engine_args]
    result = invoke(args)
    assert result.exit_code == 0, result.output
    configs = [c["config"] for c in fake_engine.calls() if c["script"].endswith("train_network.py")]
    assert all(c["min_snr_gamma"] == 5.0 and c["lr_scheduler"] == "cosine" for c in configs)
    segments = [c for c in configs if c.get("lr_scheduler_type")]
    assert segments and all(c["lr_scheduler_args"] == ["T_max=500"] for c in segments)
    meta = __import__("copymachine.lorafile", fromlist=["read_safetensors"]).read_safetensors(
        out / "run-contrast.safetensors").metadata
    assert json.loads(meta["copymachine.recipe"])["name"] == "fast"
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["run"]["recipe"]["name"] == "fast" and manifest["run"]["recipe"]["copy"]["batch_size"] == 2
