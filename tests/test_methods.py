"""Planning the methods: which stages, what is shared and cached, ratios and signs, command lines
(taken from dry runs: no sd-scripts runs here)."""

from __future__ import annotations

import shlex
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from copymachine.engine import Engine
from copymachine.errors import InputError
from copymachine.files import HashCache
from copymachine.lorafile import write_safetensors
from copymachine.methods import COPY_MACHINE, DIFFERENCE, Request, make_sources, match_edits, plan, training_size
from copymachine.models import SD1, SDXL
from copymachine.pipeline import Pipeline
from copymachine.progress import Reporter
from copymachine.recipe import MEMO
from copymachine.request import StyleLora
from copymachine.stages import Settings
from copymachine.stages.train_lora import LAUNCHER

# The memo's route: the copy model written by merge_lora.py (--copy-model file)
FILE = replace(MEMO, merge=replace(MEMO.merge, copy_model="file"))

SD1_KEYS = [
    "model.diffusion_model.input_blocks.0.0.weight",
    "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
]


@pytest.fixture
def env(tmp_path):
    base = tmp_path / "base model.safetensors"
    write_safetensors(base, {k: np.zeros(2, np.float16) for k in SD1_KEYS})
    images = []
    for i, colour in enumerate([(200, 30, 30), (30, 200, 30)]):
        p = tmp_path / f"img{i}.png"
        Image.new("RGB", (512, 512), colour).save(p)
        images.append(p)
    sd = tmp_path / "sd-scripts"
    (sd / "networks").mkdir(parents=True)
    (sd / "train_network.py").write_text("")
    settings = Settings(engine=Engine(root=sd, python="python3", commit=None), probe=None)
    return {"tmp": tmp_path, "base": base, "images": images, "settings": settings}


def make(env, method=COPY_MACHINE, effects=("outline",), images=1, out="run", **kw):
    request = Request(
        method=method,
        base=env["base"],
        family=kw.pop("family", SD1),
        effects=list(effects),
        recipe=kw.pop("recipe", MEMO),
        sources=kw.pop("sources", None) or make_sources(env["images"][:images], []),
        out=env["tmp"] / out,
        cache_dir=env["tmp"] / "cache",
        **kw,
    )
    return plan(request, env["settings"], HashCache(None))


def names(p):
    return [s.name for s in p.stages]


def test_copy_machine_single_image(env):
    p = make(env)
    # the default (memory) route: no copy-model stage; the effect LoRA trains on the base model
    # with the copy LoRA merged in memory (--base_weights at the merge ratio)
    assert names(p) == ["original", "outline/edit", "captions", "copy-lora", "copy-check", "outline/effect-lora", "outline/resize", "outline/final"]
    cache = env["tmp"] / "cache"
    assert p.stage("copy-lora").workdir.parent == cache / "copy-lora"
    assert p.finals == {"outline": env["tmp"] / "run" / "run-outline.safetensors"}
    effect = p.stage("outline/effect-lora")
    assert effect.inputs["base"].external and effect.inputs["base"].path == env["base"].resolve()
    assert effect.inputs["weights000"].producer == "copy-lora" and effect.params["base_weights_multipliers"] == [1.0]
    check = p.stage("copy-check")
    assert check.inputs["model"].external and check.inputs["copy_lora"].producer == "copy-lora" and check.params["lora_multiplier"] == 1.0
    assert "base_weights_multipliers" not in p.stage("copy-lora").params  # nothing merged before the copy LoRA
    assert p.info.copy_model == "memory"
    # the memo's route: merge_lora.py writes the copy model, the effect LoRA trains on it
    f = make(env, recipe=FILE, out="file")
    assert names(f) == ["original", "outline/edit", "captions", "copy-lora", "copy-model", "copy-check", "outline/effect-lora", "outline/resize", "outline/final"]
    # each title carries the memo's step, the words `train --help` lists (the final LoRA is copymachine's own)
    assert [s.title for s in f.stages] == ["original image (memo step 1)", "outline: edited image (memo step 4)", "captions (memo step 2)",
                                           "copy LoRA (memo step 2)", "copy model (memo step 3)", "copy check (memo step 3)",
                                           "outline: effect LoRA (memo step 5)", "outline: resize to rank 8 (memo step 9)", "outline: final LoRA"]
    assert f.stage("copy-model").workdir.parent == cache / "copy-model"
    effect = f.stage("outline/effect-lora")
    assert effect.inputs["base"].producer == "copy-model"  # trained on the copy model
    assert not any(k.startswith("weights") for k in effect.inputs) and "base_weights_multipliers" not in effect.params
    # a copy LoRA is shared by both routes; the effect LoRAs and the checks differ
    assert f.stage("copy-lora").key == p.stage("copy-lora").key
    assert f.stage("outline/effect-lora").key != p.stage("outline/effect-lora").key
    assert f.stage("copy-check").key != p.stage("copy-check").key
    assert effect.inputs["image"].producer == "outline/edit"
    assert p.stage("copy-lora").inputs["caption"].output == "original" and effect.inputs["caption"].output == "edited"
    assert p.stage("copy-lora").params["training"]["epochs"] == 6
    assert effect.params["training"]["epochs"] == 8  # 4096 steps


def test_the_copy_machine_is_shared_by_effects_and_runs(env):
    a = make(env, effects=("outline",), out="a", recipe=FILE)
    b = make(env, effects=("flat", "contrast"), out="b", recipe=FILE)
    assert a.stage("copy-lora").key == b.stage("copy-lora").key
    assert a.stage("copy-model").outputs == b.stage("copy-model").outputs
    assert names(b).count("copy-lora") == 1
    assert b.stage("flat/effect-lora").params["training"]["network_dim"] == 128  # the memo's retrain
    assert b.stage("contrast/effect-lora").params["training"]["network_dim"] == 64
    # the caption is part of the copy LoRA's identity
    c = make(env, out="c", recipe=replace(MEMO, caption=replace(MEMO.caption, text="a cat")))
    assert c.stage("copy-lora").key != a.stage("copy-lora").key


def test_rank_zero_keeps_the_trained_rank(env):
    from dataclasses import replace

    p = make(env, recipe=replace(MEMO, resize=replace(MEMO.resize, rank=0)))
    assert "outline/resize" not in names(p)
    assert p.stage("outline/final").inputs["lora"].producer == "outline/effect-lora"


def test_max_steps_and_resolution(env):
    p = make(env, resolution=64, max_steps=3)
    params = p.stage("copy-lora").params
    assert params["size"] == [64, 64] and params["max_train_steps"] == 3
    assert params["warmup_steps"] == 0  # 500/3072 of 3 steps
    assert p.info.training_size["original"]["why"].startswith("--resolution 64: about 64x64 px")
    assert p.notes == []  # the user chose the size: no note


def test_training_size_is_the_bucket_rule_at_an_area():
    """Of the sizes with sides multiples of 64 and an area of at most N², the one closest to the
    picture's aspect ratio (sd-scripts' bucket rule)."""
    assert training_size(2048, 1536, 512) == (576, 448)
    assert training_size(1536, 2048, 512) == (448, 576)
    assert training_size(2048, 1536, 1024) == (1152, 896)
    assert training_size(1920, 1080, 1024) == (1344, 768)  # an SDXL bucket
    assert training_size(512, 768, 512) == (384, 640)
    assert training_size(512, 512, 512) == (512, 512)
    assert training_size(500, 300, 512) == (640, 384)
    assert training_size(128, 64, 64) == (64, 64)  # nothing else fits 64²
    assert training_size(32, 32, 512) == (512, 512)
    for w, h, n in [(2048, 1536, 512), (4160, 64, 512), (300, 7000, 1024), (97, 1013, 4096)]:
        tw, th = training_size(w, h, n)
        assert tw % 64 == 0 and th % 64 == 0 and tw * th <= n * n


def test_a_large_picture_trains_at_the_native_area_with_one_note(env):
    """A 2048x1536 download trains SD1.5 at 576x448 (about 512²) by default, not at 2048x1536;
    one note says so and how to change it; the manifest's info says why."""
    big = env["tmp"] / "download.png"
    Image.new("RGB", (2048, 1536), (90, 60, 30)).save(big)
    p = make(env, sources=make_sources([big], []))
    for stage in ("copy-lora", "outline/effect-lora"):
        assert p.stage(stage).params["size"] == [576, 448]
    assert p.stage("copy-check").params["size"] == [576, 448]
    assert p.info.training_sizes == {"original": [576, 448]}
    info = p.info.training_size["original"]
    assert info["picture"] == [2048, 1536] and "native 512x512 px area of Stable Diffusion 1.x" in info["why"]
    assert len(p.notes) == 1
    assert p.notes[0].startswith("download.png is 2048x1536 px, far from the native 512x512 px area of Stable Diffusion 1.x: it trains on a copy resized to 576x448")
    assert "--resolution N" in p.notes[0]
    assert make(env, out="sdxl", sources=make_sources([big], []), family=SDXL).stage("copy-lora").params["size"] == [1152, 896]
    # --resolution is the training size
    assert make(env, out="r768", sources=make_sources([big], []), resolution=768).stage("copy-lora").params["size"] == [896, 640]


def test_a_native_picture_trains_as_it_is_without_a_note(env):
    p = make(env)  # 512x512
    assert p.stage("copy-lora").params["size"] == [512, 512] and p.notes == []


def test_an_exif_rotated_photo_trains_upright(env):
    """A phone photo stored 2048x1536 with EXIF orientation 6 is 1536x2048 upright: it trains at
    448x576, not at the stored size's 576x448 (squashed)."""
    photo = env["tmp"] / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (2048, 1536), (90, 60, 30)).save(photo, exif=exif)
    p = make(env, sources=make_sources([photo], []))
    assert p.stage("copy-lora").params["size"] == [448, 576]
    assert p.info.training_size["original"]["picture"] == [1536, 2048]


def test_a_generated_original_keeps_its_size(env):
    from dataclasses import replace

    recipe = replace(MEMO, generate=replace(MEMO.generate, width=512, height=768))
    p = make(env, sources=make_sources([], []), recipe=recipe)
    assert p.stage("copy-lora").params["size"] == [512, 768] and p.notes == []
    assert "generated original's own size" in p.info.training_size["original"]["why"]


def test_two_images_memo_route(env):
    p = make(env, images=2)
    n = names(p)
    assert n.count("img0/copy-lora") == 1 and n.count("img1/copy-lora") == 1
    assert "outline/processed-model" in n and "outline/extract" in n and "outline/resize" in n
    merge = p.stage("outline/processed-model")
    assert merge.params["ratios"] == [0.5, 0.5]  # each image weighted 1/n
    assert [merge.inputs[k].producer for k in sorted(merge.inputs) if k.startswith("lora")] == ["img0/outline/effect-lora", "img1/outline/effect-lora"]
    assert merge.inputs["base"].external  # merged into the base model (step 7)
    extract = p.stage("outline/extract")
    assert extract.inputs["original"].external and extract.inputs["tuned"].producer == "outline/processed-model"
    assert p.stage("outline/resize").inputs["lora"].producer == "outline/extract"
    assert p.stage("img0/original").workdir == env["tmp"] / "run" / "img0"


def test_two_images_svd_route(env):
    p = make(env, images=2, combine="svd")
    assert "outline/processed-model" not in names(p)
    svd = p.stage("outline/svd-merge")
    assert svd.params["ratios"] == [0.5, 0.5] and svd.params["rank"] == 8
    assert "outline/resize" not in names(p)  # already at rank 8


def test_difference_extraction_signs(env):
    p = make(env, method=DIFFERENCE, effects=("outline", "flat"))
    n = names(p)
    assert "lora-a" in n and "outline/lora-b" in n and "flat/lora-b" in n and "copy-model" not in n
    assert p.stage("lora-a").workdir.parent == env["tmp"] / "cache" / "copy-lora"  # shared by every effect
    assert p.stage("lora-a").params["training"]["epochs"] == 8  # 4096 steps
    assert p.stage("outline/lora-b").inputs["base"].external  # B trains on the base model too
    svd = p.stage("outline/svd-merge")
    models = [svd.inputs[k].producer for k in sorted(svd.inputs)]
    assert models == ["lora-a", "outline/lora-b"]
    assert svd.params["ratios"] == [-1.0, 1.0]  # B - A: positive = more of the edit
    memo = make(env, method=DIFFERENCE, sign="memo", out="memo")
    assert memo.stage("outline/svd-merge").params["ratios"] == [1.0, -1.0]  # the memo's --ratios 1 -1
    assert memo.stage("lora-a").key == p.stage("lora-a").key
    assert p.stage("outline/svd-merge").params["rank"] == 8
    # the difference extraction's own steps (the memo numbers them apart), as `diff --help` lists them
    assert [s.title for s in p.stages if s.name.startswith(("lora-a", "outline/"))] == [
        "outline: edited image (memo step 3)", "LoRA A of the original (memo step 2)", "outline: LoRA B of the edited image (memo step 4)",
        "outline: difference B - A (memo step 5)", "outline: final LoRA"]
    assert memo.stage("outline/svd-merge").title == "outline: difference A - B, the memo's sign (memo step 5)"


def test_difference_with_two_images_and_merge_route(env):
    p = make(env, method=DIFFERENCE, images=2, combine="merge")
    merge = p.stage("outline/processed-model")
    assert merge.params["ratios"] == [-0.5, 0.5, -0.5, 0.5]
    assert p.stage("outline/resize").params["rank"] == 8


def test_absorb(env):
    style = env["tmp"] / "style.safetensors"
    write_safetensors(style, {"lora_unet_a.lora_down.weight": np.zeros((4, 2), np.float16), "lora_unet_a.lora_up.weight": np.zeros((2, 4), np.float16)})
    p = make(env, absorb=[StyleLora(style, 0.7)], recipe=FILE)
    absorbed = p.stage("absorbed-model")
    assert absorbed.params["ratios"] == [0.7]
    assert absorbed.workdir.parent == env["tmp"] / "cache" / "absorbed-model"
    assert p.stage("copy-lora").inputs["base"].producer == "absorbed-model"
    assert p.stage("copy-model").inputs["base"].producer == "absorbed-model"
    plain = make(env, out="plain", recipe=FILE)
    assert plain.stage("copy-lora").key != p.stage("copy-lora").key
    # in memory: the style is every training's and render's first --base_weights, no model written
    m = make(env, absorb=[StyleLora(style, 0.7)], out="memory")
    assert "absorbed-model" not in names(m) and "copy-model" not in names(m)
    copy = m.stage("copy-lora")
    assert copy.inputs["base"].external and copy.inputs["weights000"].path == style.resolve() and copy.params["base_weights_multipliers"] == [0.7]
    effect = m.stage("outline/effect-lora")
    assert [effect.inputs[k].path if effect.inputs[k].external else effect.inputs[k].producer for k in ("weights000", "weights001")] == [style.resolve(), "copy-lora"]
    assert effect.params["base_weights_multipliers"] == [0.7, 1.0]
    check = m.stage("copy-check")
    assert check.inputs["weights000"].path == style.resolve() and check.params["base_weights_multipliers"] == [0.7]
    assert copy.key != make(env, out="plain-memory").stage("copy-lora").key
    # difference extraction: A and B on base + style, A checked on base + style
    d = make(env, method=DIFFERENCE, absorb=[StyleLora(style, 0.7)], out="diff")
    assert "absorbed-model" not in names(d)
    assert d.stage("outline/lora-b").params["base_weights_multipliers"] == [0.7] and d.stage("copy-check").inputs["lora"].producer == "lora-a"


def test_sources_and_edits(env, tmp_path):
    s = make_sources([Path("a/x.png"), Path("b/x.png"), Path("c/y z.png")], [])
    assert [x.id for x in s] == ["x", "x-2", "y_z"]
    assert make_sources([Path("a.png")], [])[0].id == ""
    with pytest.raises(InputError, match="one --edited per --image"):
        make_sources([Path("a.png"), Path("b.png")], [Path("e.png")])
    edits = tmp_path / "edits"
    edits.mkdir()
    (edits / "img0.jpg").write_bytes(b"x")
    assert match_edits([tmp_path / "img0.png"], edits) == [edits / "img0.jpg"]
    with pytest.raises(InputError, match=r"no edit named like img1.png"):
        match_edits([tmp_path / "img0.png", tmp_path / "img1.png"], edits)


def _printed_commands(p, settings, capsys) -> list[list[str]]:
    Pipeline(p, settings, Reporter(live=False), HashCache(None), argv=["t"]).run(dry_run=True)
    out = capsys.readouterr().out
    return [shlex.split(line) for line in out.splitlines() if line and not line.startswith("#")]


def _find(commands, script):
    found = [c for c in commands if any(a.endswith(script) for a in c)]
    assert found, f"no {script} command"
    return found


def test_dry_run_command_lines_of_copy_machine_in_memory(env, capsys):
    commands = _printed_commands(make(env), env["settings"], capsys)
    train = _find(commands, "train_network.py")
    assert len(train) == 2
    assert not [c for c in commands if any(a.endswith("merge_lora.py") for a in c)]  # nothing merged into a file
    # the copy LoRA: the training script itself; the effect LoRA: the launcher runs it
    assert train[0][-3:-2] == [str(env["settings"].engine.script("train_network.py"))]
    assert train[1][-4:-2] == [str(LAUNCHER), str(env["settings"].engine.script("train_network.py"))]
    import tomllib

    config = tomllib.loads(Path(train[1][-1]).read_text(encoding="utf-8"))
    copy_lora = make(env).stage("copy-lora").outputs["lora"]
    assert config["model"]["base_weights"] == [str(copy_lora)] and config["model"]["base_weights_multiplier"] == [1.0]
    assert config["model"]["pretrained_model_name_or_path"] == str(env["base"].resolve())
    assert "base_weights" not in tomllib.loads(Path(train[0][-1]).read_text(encoding="utf-8"))["model"]
    gen = _find(commands, "gen_img.py")[0]  # the copy check: base + copy LoRA, unmerged
    assert gen[gen.index("--ckpt") + 1] == str(env["base"].resolve())
    assert gen[gen.index("--network_weights") + 1] == str(copy_lora) and gen[gen.index("--network_mul") + 1] == "1.0"


def test_dry_run_command_lines_of_copy_machine(env, capsys):
    commands = _printed_commands(make(env, recipe=FILE), env["settings"], capsys)
    train = _find(commands, "train_network.py")
    assert len(train) == 2
    assert train[0][:3] == ["python3", "-m", "accelerate.commands.launch"] and train[0][-2] == "--config_file"
    assert not any(str(LAUNCHER) in c for c in train)
    merge = _find(commands, "merge_lora.py")[0]
    assert merge[merge.index("--ratios") + 1] == "1.0"
    assert merge[merge.index("--precision") + 1] == "float" and merge[merge.index("--save_precision") + 1] == "float"
    assert merge[merge.index("--sd_model") + 1] == str(env["base"].resolve())
    resize = _find(commands, "resize_lora.py")[0]
    assert resize[resize.index("--new_rank") + 1] == "8" and resize[resize.index("--save_precision") + 1] == "fp16"
    assert resize[resize.index("--device") + 1] == "cpu"
    # the configs were written and name the real paths
    config = Path(train[0][-1])
    assert config.is_file() and str(env["base"].resolve()) in config.read_text(encoding="utf-8")


def test_dry_run_command_lines_of_difference(env, capsys):
    commands = _printed_commands(make(env, method=DIFFERENCE), env["settings"], capsys)
    svd = _find(commands, "svd_merge_lora.py")[0]
    i = svd.index("--models")
    assert svd[i + 1].endswith("lora-a.safetensors") and svd[i + 2].endswith("lora-b.safetensors")
    assert svd[svd.index("--ratios") + 1 : svd.index("--ratios") + 3] == ["-1.0", "1.0"]
    for option, value in (("--new_rank", "8"), ("--precision", "float"), ("--save_precision", "fp16"), ("--device", "cpu")):
        assert svd[svd.index(option) + 1] == value


def test_dry_run_command_lines_of_the_memo_route(env, capsys):
    commands = _printed_commands(make(env, images=2), env["settings"], capsys)
    extract = _find(commands, "extract_lora_from_models.py")[0]
    assert extract[extract.index("--dim") + 1] == "64"
    merges = _find(commands, "merge_lora.py")
    processed = next(m for m in merges if "processed-model.safetensors" in m[m.index("--save_to") + 1])
    assert processed[processed.index("--ratios") + 1 : processed.index("--ratios") + 3] == ["0.5", "0.5"]


def test_stage_keys_hold_what_changes_results_not_the_family_label(env):
    """A family's label (or its tokenizer folders) only names it: a new wording keeps every key;
    a field sd-scripts reads (the training script) changes the keys of the stages using it."""
    import dataclasses as dc

    p = make(env)
    relabelled = make(env, family=dc.replace(SD1, label="SD 1.x (renamed)", tokenizers=("elsewhere",)))
    assert [s.key for s in relabelled.stages] == [s.key for s in p.stages]
    other_script = make(env, family=dc.replace(SD1, train_script="other_train_network.py"))
    assert other_script.stage("copy-lora").key != p.stage("copy-lora").key
    assert other_script.stage("original").key == p.stage("original").key  # not a training: unchanged
    assert "label" not in p.stage("copy-lora").params["family"]


def test_the_plans_info_as_the_manifest_records_it(env, tmp_path):
    """Plan.info is typed; the manifest's "run" object holds what is known: a planned run's combine
    and copy model even when None, a plan made without a method (a tool's) nothing."""
    from copymachine.plan import RunInfo

    info = make(env, method=DIFFERENCE).info.as_dict()
    assert info["method"] == DIFFERENCE and info["combine"] is None and info["copy_model"] is None
    assert info["identity"]["method"] == DIFFERENCE and "preview_prediction" not in info and "vram" not in info
    assert RunInfo().as_dict() == {} and RunInfo(stage_bytes={"a": 1}).as_dict() == {"stage_bytes": {"a": 1}}
