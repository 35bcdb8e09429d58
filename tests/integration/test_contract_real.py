"""The contract between the recording fake (tests/fake_sdscripts) and the real sd-scripts.

One tiny command, planned by copymachine and run by its own pipeline and runner through each
engine: the copy LoRA (train_network.py under `accelerate launch`, 64 px, 2 steps). Then the two
are compared where the fast suite relies on the fake standing in for the real scripts:

- option sets: what copymachine learns from each engine's `--help` (every script it calls; of
  gen_img.py's per-prompt options, the fake has those copymachine writes), and the options and
  training-TOML keys the command passed, known to both;
- output keys: the LoRA's tensor names, dtypes and ranks;
- metadata: the `ss_*` keys (and `modelspec.*`, `sshs_*`), and the values that do not depend on the
  machine or the weights;
- the log: what copymachine's stream watcher reads from each stage log (the last progress bar:
  step, total, its name, a rate and a finite loss; no NaN, no out-of-memory, no traceback).

Cost: one real training of 2 steps at 64 px on the random SD1.5 fixture, plus learning the real
engine's options once per session (8 `--help` starts).
"""

from __future__ import annotations

import io
import json
import math
import re
import sys
from pathlib import Path

import pytest
import tomllib
from realkit import draw_original

from copymachine.capabilities import option_names
from copymachine.cli.common import make_settings
from copymachine.files import HashCache
from copymachine.lorafile import read_safetensors
from copymachine.methods import COPY_MACHINE, Request, make_sources, plan
from copymachine.models import SD1
from copymachine.pipeline import Pipeline
from copymachine.progress import Reporter
from copymachine.recipe import MEMO
from copymachine.runner import StreamWatcher

pytestmark = pytest.mark.integration

FAKE = Path(__file__).resolve().parents[1] / "fake_sdscripts"
STAGE = "copy-lora"
STEPS = 2
# ss_* values that depend neither on the machine, the time, the weights nor the file paths
SAME_VALUES = (
    "ss_network_module", "ss_network_dim", "ss_network_alpha", "ss_base_model_version", "ss_v2",
    "ss_training_comment", "ss_max_train_steps", "ss_num_train_images", "ss_num_reg_images",
    "ss_num_epochs", "ss_epoch", "ss_steps", "ss_resolution", "ss_learning_rate", "ss_lr_scheduler",
    "ss_lr_warmup_steps", "ss_mixed_precision", "ss_full_fp16", "ss_gradient_accumulation_steps",
    "ss_seed", "ss_keep_tokens", "ss_shuffle_caption", "ss_cache_latents", "ss_enable_bucket",
    "ss_clip_skip", "ss_noise_offset", "ss_caption_dropout_rate", "ss_max_grad_norm",
    "ss_network_dropout", "ss_output_name",
)  # fmt: skip


def _closure(the_plan, name: str) -> set[str]:
    """`name` and every stage it needs."""
    needed, todo = set(), [name]
    while todo:
        stage = the_plan.stage(todo.pop())
        if stage.name not in needed:
            needed.add(stage.name)
            todo += [ref.producer for ref in stage.inputs.values() if ref.producer]
    return needed


def _copy_lora(root: Path, sd_scripts: Path, python: str, base: Path, tokenizers: Path) -> dict:
    """Plan a run, keep the copy LoRA and what it needs, run them; what came out."""
    root.mkdir(parents=True)
    image = draw_original(root / "original.png", size=64)
    reporter = Reporter(stream=io.StringIO(), live=False)
    settings = make_settings(sd_scripts, python, "cpu", tokenizers, True, reporter)
    request = Request(
        method=COPY_MACHINE, base=base, family=SD1, effects=["contrast"], recipe=MEMO, sources=make_sources([image], []),
        out=root / "run", cache_dir=root / "cache", resolution=64, max_steps=STEPS, copy_check=False,
    )  # fmt: skip
    the_plan = plan(request, settings, HashCache(None))
    needed = _closure(the_plan, STAGE)
    the_plan.stages = [s for s in the_plan.stages if s.name in needed]
    Pipeline(the_plan, settings, reporter, HashCache(None), argv=["contract"]).run()
    manifest = json.loads(the_plan.manifest_path.read_text(encoding="utf-8"))
    (record,) = [s for s in manifest["stages"] if s["name"] == STAGE]
    lora = read_safetensors(Path(record["outputs"]["lora"]["path"]))
    (argv,) = record["argv"]
    training = next(Path(c) for c in record["configs"] if c.endswith("-training.toml"))
    toml_keys = sorted(k for table in tomllib.loads(training.read_text(encoding="utf-8")).values() for k in table)
    return {
        "capabilities": settings.capabilities,
        "options": option_names(argv),
        "toml_keys": toml_keys,
        "tensors": {k: (v["dtype"], v["shape"][0] if k.endswith(".lora_down.weight") else None) for k, v in lora.tensors.items()},
        "metadata": lora.metadata,
        "watched": _watch(Path(record["log"])),
    }


def _watch(log: Path) -> dict:
    """Feed the stage log to a fresh StreamWatcher as the runner feeds the live output."""
    text = log.read_text(encoding="utf-8", errors="replace")
    body = "\n".join(line for line in text.split("\n") if not line.startswith(("$ ", "# cwd: ", "# started: ", "# exit code ")))
    watcher = StreamWatcher()
    for segment in re.split(r"[\r\n]", body):  # as the runner splits the stream
        watcher.feed(segment)
    p = watcher.last_progress
    return {
        "progress": None if p is None else (p.step, p.total, p.desc),
        "rate": bool(p and p.rate),
        "finite_loss": bool(p and p.loss is not None and math.isfinite(p.loss)),
        "nan": watcher.nan,
        "oom": watcher.oom,
        "tracebacks": [tb.exception for tb in watcher.tracebacks],
    }


def differences(fake: dict, real: dict) -> list[str]:
    """Where the two runs break the contract, one line each."""
    problems = []

    def same(what, a, b):
        if a != b:
            problems.append(f"{what}: fake {a!r} != real {b!r}")

    # option sets: learnt from each engine's --help, and what the command passed
    fake_caps, real_caps = fake["capabilities"], real["capabilities"]
    same("scripts learnt", sorted(fake_caps.options), sorted(real_caps.options))
    for script in sorted(set(fake_caps.options) & set(real_caps.options)):
        only_fake = sorted(set(fake_caps.options[script]) - set(real_caps.options[script]))
        only_real = sorted(set(real_caps.options[script]) - set(fake_caps.options[script]))
        same(f"{script} options (only in the fake, only in the real)", only_fake, only_real)
    # the fake parses the per-prompt options copymachine writes (the real one has many more)
    same("gen_img.py prompt options only the fake has", sorted(set(fake_caps.prompt_options) - set(real_caps.prompt_options)), [])
    same("gen_img.py per-prompt file names (--f)", fake_caps.file_names, real_caps.file_names)
    same("command options", fake["options"], real["options"])
    same("training TOML keys", fake["toml_keys"], real["toml_keys"])
    for name, run in (("fake", fake), ("real", real)):
        caps = run["capabilities"]
        lacking = caps.lacking("train_network.py", [f"--{k}" for k in run["toml_keys"]])
        if lacking:
            problems.append(f"{name}: train_network.py does not list {lacking}")
    # output keys: names, dtypes, ranks
    same("tensor names (only in the fake)", sorted(set(fake["tensors"]) - set(real["tensors"]))[:10], [])
    same("tensor names (only in the real)", sorted(set(real["tensors"]) - set(fake["tensors"]))[:10], [])
    same("tensor count", len(fake["tensors"]), len(real["tensors"]))
    for key in sorted(set(fake["tensors"]) & set(real["tensors"])):
        if fake["tensors"][key] != real["tensors"][key]:
            same(f"tensor {key} (dtype, rank)", fake["tensors"][key], real["tensors"][key])
            break
    # metadata keys, and the values that must agree
    for prefix in ("ss_", "modelspec.", "sshs_"):
        fk = {k for k in fake["metadata"] if k.startswith(prefix)}
        rk = {k for k in real["metadata"] if k.startswith(prefix)}
        same(f"{prefix}* keys (only in the fake, only in the real)", sorted(fk - rk), sorted(rk - fk))
    for key in SAME_VALUES:
        if key in fake["metadata"] or key in real["metadata"]:
            same(f"metadata {key}", fake["metadata"].get(key), real["metadata"].get(key))
    # what the stream watcher reads from each log
    same("stream watcher", fake["watched"], real["watched"])
    return problems


def test_the_fake_and_the_real_sd_scripts_keep_one_contract(tmp_path_factory, sd_scripts_dir, sd_python, random_sd15, tokenizer_cache_dir):
    sys.path.insert(0, str(FAKE))
    from make_checkpoint import make_checkpoint

    root = tmp_path_factory.mktemp("contract")
    fake_tokenizers = root / "fake tokenizers"
    (fake_tokenizers / "openai_clip-vit-large-patch14").mkdir(parents=True)
    fake_base = Path(make_checkpoint(root / "fake base.safetensors", family="sd15", seed=0))
    fake = _copy_lora(root / "fake", FAKE, sys.executable, fake_base, fake_tokenizers)
    real = _copy_lora(root / "real", sd_scripts_dir, str(sd_python), random_sd15, tokenizer_cache_dir)

    problems = differences(fake, real)
    assert real["watched"]["progress"] is not None and real["watched"]["progress"][:2] == (STEPS, STEPS), real["watched"]
    assert real["watched"]["rate"] and real["watched"]["finite_loss"] and not real["watched"]["nan"], real["watched"]
    assert not problems, "the fake and the real sd-scripts differ:\n  " + "\n  ".join(problems)
