"""gen_img.py prompt files and command lines: one line per image with its own seed, strength and
file name; never --seed (crashes with a one-line prompt file), never --network_merge (disables
--am), always the family flag (gen_img.py otherwise guesses SDXL from the file size)."""

from pathlib import Path

import pytest

from copymachine.genimg import PromptLine, clean_prompt, format_multiplier, gen_img_args, render_prompt_file
from copymachine.models import SD1, SDXL
from copymachine.recipe import MEMO
from copymachine.stages.copy_check import CopyCheckParams
from copymachine.stages.copy_check import prompt_lines as check_lines
from copymachine.stages.preview import cells, planned_outputs, preview_params
from copymachine.stages.preview import prompt_lines as preview_lines


def test_prompt_line_carries_everything_per_image():
    line = PromptLine("1girl, smile", "a.png", 512, 768, seed=7, steps=20, scale=7.0, negative_prompt="lowres", multiplier=-0.5)
    assert line.render() == "1girl, smile --n lowres --w 512 --h 768 --d 7 --s 20 --l 7.0 --am -0.5 --f a.png"
    assert " --am " not in PromptLine("x", "b.png", 64, 64, 1, 2, 7.0).render()


def test_prompts_cannot_inject_options():
    assert clean_prompt("a --d 5 cat\nsecond line") == "a -d 5 cat second line"
    text = render_prompt_file([PromptLine("a --am 9 b", "x.png", 64, 64, 1, 2, 7.0, multiplier=1.0)])
    assert text.count(" --am ") == 1 and text.endswith(" --am 1 --f x.png\n")


@pytest.mark.parametrize("m, text", [(1.0, "1"), (-1, "-1"), (0.0, "0"), (-0.0, "0"), (0.25, "0.25"), (-0.5, "-0.5"), (1e-7, "0"), (2.5e-3, "0.0025")])
def test_multipliers_match_gen_img_pattern(m, text):
    assert format_multiplier(m) == text  # gen_img.py: --am ([\d.\-,]+), no exponent, no '+'


def test_file_names_are_checked():
    line = PromptLine("x", "a.png", 64, 64, 1, 2, 7.0)
    with pytest.raises(ValueError):
        render_prompt_file([line, line])
    with pytest.raises(ValueError):
        render_prompt_file([PromptLine("x", "a b.png", 64, 64, 1, 2, 7.0)])


def test_gen_img_args():
    args = gen_img_args(Path("/m o/model.safetensors"), "--v1", Path("/out"), Path("/p.txt"), "euler_a", "float", Path("/tok"), [Path("/l/a b.safetensors")])
    assert args[:3] == ["--ckpt", "/m o/model.safetensors", "--v1"]
    assert "--seed" not in args and "--network_merge" not in args and "--fp16" not in args
    assert args[args.index("--network_module") + 1] == "networks.lora"
    assert args[args.index("--network_weights") + 1] == "/l/a b.safetensors"
    assert args[args.index("--tokenizer_cache_dir") + 1] == "/tok"
    assert "--bf16" in gen_img_args(Path("m"), "--sdxl", Path("o"), Path("p"), "ddim", "bf16")


def test_preview_prompt_file_has_one_line_per_cell():
    p = preview_params(MEMO.preview, SD1, "float", strengths=[-1, 0, 1, 1], prompts=["a cat", "a dog"], seeds=[5, 6])
    assert p.strengths == [-1.0, 0.0, 1.0] and p.size == [512, 512] and p.family_flag == "--v1"
    lines = preview_lines(p)
    assert len(lines) == len(cells(p)) == 2 * 2 * 3
    text = render_prompt_file(lines).splitlines()
    assert text[0].startswith("a cat --n ") and text[0].endswith("--d 5 --s 28 --l 7.0 --am -1 --f prompt1-seed5-m-1.png")
    assert text[4].endswith("--d 6 --s 28 --l 7.0 --am 0 --f prompt1-seed6-m0.png")
    assert text[-1].startswith("a dog") and text[-1].endswith("--d 6 --s 28 --l 7.0 --am 1 --f prompt2-seed6-m1.png")
    outputs = planned_outputs(p, "my lora")
    assert outputs["sheet"] == "my lora-preview.png"
    assert outputs["cell-r03-c02"] == "my lora-preview/prompt2-seed6-m1.png"
    assert len({Path(v).name for v in outputs.values()}) == len(outputs)  # scratch names are unique
    assert preview_params(MEMO.preview, SDXL, "bf16").size == [1024, 1024]
    assert preview_params(MEMO.preview, SD1, "float").seeds == [1, 2]


def test_copy_check_prompt_file_uses_the_caption():
    p = CopyCheckParams(family_flag="--v1", prompts=["{caption}", "landscape"], seeds=[1, 2], negative_prompt="", size=[64, 128], steps=2, sampler="euler_a", scale=7.0, precision="float")
    text = render_prompt_file(check_lines(p, "1girl, red hair"))
    assert text == ("1girl, red hair --w 64 --h 128 --d 1 --s 2 --l 7.0 --f copy-1.png\n"
                    "landscape --w 64 --h 128 --d 2 --s 2 --l 7.0 --f copy-2.png\n")
