"""Rendered sd-scripts configs parse as TOML and carry hostile paths unchanged."""

import dataclasses
from pathlib import Path

import pytest
import tomllib

from copymachine.models import SD1, SDXL
from copymachine.recipe import MEMO
from copymachine.render import render, toml_value

HOSTILE = [
    r"G:\sd\models\lora\x.safetensors",
    'C:\\Users\\me\\"quoted"\\model.safetensors',
    "/home/me/my models/ベースモデル.safetensors",
    "/tmp/100% done/it's here/モデル.safetensors",
    "/tmp/line\nbreak/tab\there/x.safetensors",
    "\\\\server\\share\\a'b\"c.safetensors",
    'C:\\sd\\a "b" \'c\'\nd = 1\n[x]\n%s 日本語 """',  # a TOML line, a table and a closing triple quote
]

_Obj = dict  # Jinja reads a dict's keys as attributes (`training.network_dim`)


@pytest.mark.parametrize("text", HOSTILE)
def test_toml_value_round_trips(text):
    assert tomllib.loads(f"v = {toml_value(text)}")["v"] == text


def _training_context(base, dataset, out, family=SD1, max_steps=None):
    fam = dataclasses.asdict(family)
    return dict(
        stage="copy-lora",
        base_model=Path(base),
        family=_Obj(fam),
        tokenizer_cache_dir=Path("/tok dir/東京"),
        training=_Obj(dataclasses.asdict(MEMO.copy)),
        warmup_steps=500,
        dataset_config=Path(dataset),
        resolution_text="512,512",
        max_train_steps=max_steps,
        profile=_Obj({"mixed_precision": "no", "training_options": {"max_data_loader_n_workers": 0}}),
        output_dir=Path(out),
        output_name="copy-lora",
        comment="copymachine copy-lora",
    )


@pytest.mark.parametrize("path", HOSTILE)
def test_hostile_paths_round_trip_through_both_templates(path):
    training = _Obj(dataclasses.asdict(MEMO.copy))
    dataset = render("dataset.toml.j2", stage=path, training=training, caption_extension=".txt", resolution=[64, 64], enable_bucket=False, image_dir=Path(path))
    assert tomllib.loads(dataset)["datasets"][0]["subsets"][0]["image_dir"] == path
    context = _training_context(path, path + ".dataset.toml", path + "-out")
    # the stage name, the output name, the comment and a family's option key and value too
    family = dataclasses.asdict(SD1)
    family["training_options"] = {**family["training_options"], "no_half_vae": True, path: path}
    context.update(stage=path, output_name=path, comment=path, family=_Obj(family))
    data = tomllib.loads(render("training.toml.j2", **context))
    flat = {k: v for table in data.values() for k, v in table.items()}
    assert flat["pretrained_model_name_or_path"] == path
    assert flat["dataset_config"] == path + ".dataset.toml"
    assert flat["output_dir"] == path + "-out"
    assert flat["tokenizer_cache_dir"] == "/tok dir/東京"
    assert data["model"]["pretrained_model_name_or_path"] == path and data["model"][path] == path
    assert data["output"]["output_name"] == path and data["output"]["training_comment"] == path
    assert "d" not in data and "x" not in data  # nothing injected


def test_training_config_has_the_memo_values_with_sd_scripts_types():
    data = tomllib.loads(render("training.toml.j2", **_training_context("/m.safetensors", "/d.toml", "/o")))
    flat = {k: v for table in data.values() for k, v in table.items()}
    assert flat["network_module"] == "networks.lora"
    assert flat["network_dim"] == 64 and flat["network_alpha"] == 32.0
    assert flat["optimizer_type"] == "AdamW" and flat["learning_rate"] == 1e-4
    assert flat["lr_scheduler"] == "constant_with_warmup"
    assert flat["lr_warmup_steps"] == 500 and isinstance(flat["lr_warmup_steps"], int)  # a float >= 1 would be a ratio
    assert flat["resolution"] == "512,512"  # sd-scripts calls .split(",") on it: must be a string
    assert flat["max_train_epochs"] == 6 and "max_train_steps" not in flat
    assert flat["save_model_as"] == "safetensors"
    assert flat["console_log_simple"] is True
    # sd-scripts flattens tables into one namespace: a key must not appear twice
    keys = [k for table in data.values() for k in table]
    assert len(keys) == len(set(keys))


def test_max_steps_replaces_epochs():
    data = tomllib.loads(render("training.toml.j2", **_training_context("/m", "/d.toml", "/o", max_steps=3)))
    flat = {k: v for table in data.values() for k, v in table.items()}
    assert flat["max_train_steps"] == 3 and "max_train_epochs" not in flat


def test_dataset_config_only_uses_keys_sd_scripts_accepts():
    text = render(
        "dataset.toml.j2",
        stage="copy-lora",
        training=_Obj(dataclasses.asdict(MEMO.copy)),
        caption_extension=".txt",
        resolution=[512, 768],
        enable_bucket=False,
        image_dir=Path("C:\\data\\画像 dir"),
    )
    data = tomllib.loads(text)
    assert set(data) == {"general", "datasets"}
    assert data["general"] == {"shuffle_caption": True, "keep_tokens": 0, "caption_extension": ".txt"}
    ds = data["datasets"][0]
    assert ds["resolution"] == [512, 768] and ds["enable_bucket"] is False and ds["batch_size"] == 1
    assert ds["subsets"] == [{"image_dir": "C:\\data\\画像 dir", "num_repeats": 512}]
    # keys allowed by sd-scripts' dataset schema (library/config_util.py at the pinned commit)
    assert set(ds) <= {"resolution", "batch_size", "enable_bucket", "bucket_no_upscale", "bucket_reso_steps", "subsets"}


def test_sdxl_family_options_reach_the_training_config():
    fam = dataclasses.replace(SDXL, training_options={"no_half_vae": True})
    ctx = _training_context("/m", "/d.toml", "/o", family=fam)
    flat = {k: v for t in tomllib.loads(render("training.toml.j2", **ctx)).values() for k, v in t.items()}
    assert flat["no_half_vae"] is True
