"""WD14 tagging with a tiny stand-in ONNX model of the real signature (input [N,448,448,3] BGR
0-255 -> [N, n_tags] probabilities) built here with the onnx helper API: never a download."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from copymachine.errors import EnvironmentProblem, InputError
from copymachine.tagger import Tag, preprocess, select_tags, tag_text, tagger_files

TAGS = [
    ("general", 9), ("sensitive", 9), ("questionable", 9), ("explicit", 9),
    ("red_hair", 0), ("simple_background", 0), ("solo", 0), ("^_^", 0), ("blue_sky", 0), ("flat_color", 0), ("outline", 0), ("smile", 0),
    ("hatsune_miku", 4), ("other_character", 4), ("third_character", 4), ("fourth_character", 4),
]  # fmt: skip
BIAS = -6.0
# probability of each tag for a pure red image (BGR channel means 0, 0, 1); blue gives ~0 except rating general
RED = {"general": 0.99, "red_hair": 0.9, "simple_background": 0.5, "solo": 0.34, "^_^": 0.6, "flat_color": 0.36, "hatsune_miku": 0.9, "other_character": 0.8}


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def build_tagger(folder: Path, side: int = 448) -> Path:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    n = len(TAGS)
    weights = np.zeros((3, n), np.float32)
    bias = np.full(n, BIAS, np.float32)
    bias[0] = 6.0  # rating "general" for any image
    for j, (name, _) in enumerate(TAGS):
        if name in RED:
            weights[2, j] = _logit(RED[name]) - bias[j]
    nodes = [
        helper.make_node("ReduceMean", ["input_1"], ["mean"], axes=[1, 2], keepdims=0),
        helper.make_node("Div", ["mean", "scale"], ["unit"]),
        helper.make_node("MatMul", ["unit", "w"], ["logits0"]),
        helper.make_node("Add", ["logits0", "b"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["predictions_sigmoid"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny-wd14",
        [helper.make_tensor_value_info("input_1", TensorProto.FLOAT, ["N", side, side, 3])],
        [helper.make_tensor_value_info("predictions_sigmoid", TensorProto.FLOAT, ["N", n])],
        initializer=[numpy_helper.from_array(np.array(255.0, np.float32), "scale"), numpy_helper.from_array(weights, "w"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / "model.onnx"))
    rows = ["tag_id,name,category,count"] + [f"{i},{name},{cat},{1000 - i}" for i, (name, cat) in enumerate(TAGS)]
    (folder / "selected_tags.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder


def test_preprocess_pads_white_resizes_and_swaps_to_bgr():
    image = Image.new("RGB", (200, 100), (255, 0, 0))
    batch = preprocess(image, 448)
    assert batch.shape == (1, 448, 448, 3) and batch.dtype == np.float32
    assert batch[0, 224, 224].tolist() == [0.0, 0.0, 255.0]  # red, as BGR, 0-255
    assert batch[0, 5, 224].tolist() == [255.0, 255.0, 255.0]  # white padding above
    assert batch[0, 442, 224].tolist() == [255.0, 255.0, 255.0]  # and below (centred)
    rgba = Image.new("RGBA", (10, 10), (0, 0, 255, 0))  # transparent -> white
    assert preprocess(rgba, 32)[0, 16, 16].tolist() == [255.0, 255.0, 255.0]
    assert preprocess(image, 32, channels_last=False).shape == (1, 3, 32, 32)


def test_select_tags_thresholds_order_and_names():
    tags = [Tag(n, c) for n, c in TAGS]
    probs = np.zeros(len(TAGS))
    for j, (name, _) in enumerate(TAGS):
        probs[j] = RED.get(name, 0.0)
    out = select_tags(probs, tags, 0.35, 0.85)
    # character tags first, then general ones by falling probability; no rating; _ -> space but not in ^_^
    assert out == ["hatsune miku", "red hair", "^_^", "simple background", "flat color"]
    assert select_tags(probs, tags, 0.55, 0.75) == ["hatsune miku", "other character", "red hair", "^_^"]
    assert "flat color" not in select_tags(probs, tags, 0.35, 0.85, exclude=("flat_color",))
    assert tag_text("o_o") == "o_o" and tag_text("long_hair") == "long hair"
    with pytest.raises(InputError, match="do not belong together"):
        select_tags(probs[:5], tags)


def test_tiny_onnx_tagger_end_to_end(tmp_path):
    pytest.importorskip("onnxruntime")
    from copymachine.tagger import Tagger

    folder = build_tagger(tmp_path / "wd tagger ä")
    tagger = Tagger(folder)
    assert tagger.side == 448 and tagger.channels_last and len(tagger.tags) == 16
    probs = tagger.probabilities(Image.new("RGB", (64, 64), (255, 0, 0)))
    assert probs[4] == pytest.approx(0.9, abs=0.01)  # red_hair
    assert tagger(Image.new("RGB", (64, 64), (255, 0, 0))) == ["hatsune miku", "red hair", "^_^", "simple background", "flat color"]
    assert tagger(Image.new("RGB", (64, 64), (0, 0, 255))) == []
    # a blue strip is padded to a square with white, whose red channel is full: tags appear
    assert "red hair" in tagger(Image.new("RGB", (400, 40), (0, 0, 255)))


def test_incomplete_folder_names_both_files(tmp_path):
    with pytest.raises(InputError, match=r"model.onnx and selected_tags.csv"):
        tagger_files(tmp_path)
    (tmp_path / "model.onnx").write_bytes(b"x")
    with pytest.raises(InputError, match=r"lacks selected_tags.csv"):
        tagger_files(tmp_path)
    with pytest.raises(InputError, match="not a folder"):
        tagger_files(tmp_path / "nope")


def test_missing_onnxruntime_names_the_extra(tmp_path, monkeypatch):
    from copymachine.tagger import Tagger

    (tmp_path / "model.onnx").write_bytes(b"x")
    (tmp_path / "selected_tags.csv").write_text("tag_id,name,category,count\n0,a,0,1\n")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(EnvironmentProblem, match=r"copymachine\[tagger\]"):
        Tagger(tmp_path)


def test_caption_stage_tags_the_original_only(tmp_path, monkeypatch):
    """Tags come from the original image and are written verbatim for the edited one; the
    tagger's files are inputs, so another model re-tags."""
    pytest.importorskip("onnxruntime")
    from copymachine.files import HashCache
    from copymachine.methods import COPY_MACHINE, Request, make_sources, plan
    from copymachine.models import SD1
    from copymachine.pipeline import Pipeline
    from copymachine.progress import Reporter
    from copymachine.recipe import MEMO, apply_overrides
    from copymachine.stages import Settings

    folder = build_tagger(tmp_path / "tagger")
    image = tmp_path / "red.png"
    picture = Image.new("RGB", (64, 64), (250, 10, 10))
    picture.paste((128, 128, 128), (20, 20, 30, 30))  # something for the contrast edit to change
    picture.save(image)
    base = tmp_path / "base.safetensors"
    base.write_bytes(b"not read by planning")
    recipe = apply_overrides(MEMO, {"caption": {"method": "wd14", "prefix": "mytoken"}}, "test")

    def run():
        request = Request(method=COPY_MACHINE, base=base, family=SD1, effects=["contrast"], recipe=recipe, sources=make_sources([image], []), out=tmp_path / "run", tagger_dir=folder)
        hashes = HashCache(None)
        the_plan = plan(request, Settings(engine=None, probe=None), hashes)
        the_plan.stages = [s for s in the_plan.stages if s.kind in ("import_image", "edit_image", "captions")]
        Pipeline(the_plan, Settings(engine=None, probe=None), Reporter(live=False), hashes, argv=["test"]).run()
        return the_plan.stage("captions")

    stage = run()
    assert stage.params["method"] == "wd14" and {"image", "tagger_model", "tagger_tags"} <= set(stage.inputs)
    from copymachine.images import load_rgb
    from copymachine.tagger import Tagger

    original = stage.outputs["original"].read_text(encoding="utf-8")
    tags = Tagger(folder)(load_rgb(image))
    assert "red hair" in tags and original == ", ".join(["mytoken"] + tags) + "\n"
    assert stage.outputs["edited"].read_text(encoding="utf-8") == original  # not the edit's own tags
    key = stage.key
    (folder / "selected_tags.csv").write_text((folder / "selected_tags.csv").read_text().replace("red_hair", "crimson_hair"))
    stage = run()
    assert stage.key != key and "crimson hair" in stage.outputs["original"].read_text(encoding="utf-8")


def test_wd14_without_a_tagger_dir_is_refused(tmp_path):
    from click.testing import CliRunner

    from copymachine.cli import cli

    image = tmp_path / "a.png"
    Image.new("RGB", (64, 64)).save(image)
    r = CliRunner().invoke(cli, ["train", "--effect", "contrast", "--base", str(image), "--image", str(image), "--caption-with", "wd14", "--dry-run"])
    assert r.exit_code != 0
