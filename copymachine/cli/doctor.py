"""`copymachine doctor`: is this machine ready for a run? One line per check; exit 0 when nothing would stop
a run (warnings allowed), else the exit code of the first blocking problem."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path

import click

from copymachine import capabilities, heavy, preflight, profiles, vram
from copymachine import engine as engine_mod
from copymachine.cli import cli
from copymachine.errors import EXIT_ENVIRONMENT, EXIT_OK, EXIT_OUTPUT, CopymachineError
from copymachine.families import parse_model_files, with_files
from copymachine.files import free_bytes
from copymachine.methods import default_cache, training_size
from copymachine.models import SD1, Family, ModelInfo, choose_prediction
from copymachine.progress import Reporter
from copymachine.recipe import MEMO

OK, WARN, FAIL = "ok", "warn", "FAIL"
human = preflight.human


class Doctor:
    def __init__(self) -> None:
        self.findings: list[tuple[str, str, int]] = []  # (status, what, exit code)

    def add(self, status: str, what: str, text: str, exit_code: int = EXIT_OK) -> None:
        self.findings.append((status, what, exit_code))
        click.echo(f"  {status:<5} {what:<13} {text}")

    def named(self, status: str) -> list[str]:
        return [what for s, what, _ in self.findings if s == status]

    @property
    def exit_code(self) -> int:
        return next((code for status, _, code in self.findings if status == FAIL), EXIT_OK)


def _engine(doc: Doctor, sd_scripts: Path | None, python: str | None):
    try:
        engine = engine_mod.locate(sd_scripts, python)
    except CopymachineError as e:
        doc.add(FAIL, "sd-scripts", e.message, EXIT_ENVIRONMENT)
        return None
    warning = preflight.engine_warning(engine)  # what train says about it
    if warning:
        pinned = f" (pinned: {engine_mod.PINNED_COMMIT[:8]})" if engine.commit is None else ""
        doc.add(WARN, "sd-scripts", warning + pinned)
    elif engine.pinned:
        doc.add(OK, "sd-scripts", f"{engine.root} (commit {(engine.commit or '')[:8]}, the pinned one)")
    else:
        doc.add(OK, "sd-scripts", f"{engine.root} (not a git checkout; its files are those of "
                                  f"{capabilities.RELEASE_TREES[engine.identity]})")
    try:
        probe = engine.probe()
    except CopymachineError as e:
        doc.add(FAIL, "python", e.message, EXIT_ENVIRONMENT)
        return None
    doc.add(OK, "python", f"{engine.python} (Python {probe.python_version}; {engine.python_reason})")
    versions = ", ".join(f"{name} {version}" for name, version in probe.versions.items())
    try:
        engine.require(probe)
        doc.add(OK, "packages", f"everything sd-scripts imports is there ({versions or 'versions unknown'})")
    except CopymachineError as e:
        doc.add(FAIL, "packages", e.message, EXIT_ENVIRONMENT)
    if not doc.named(FAIL):
        _capabilities(doc, engine)
    if probe.torch and not probe.torch_error:
        _gpu(doc, probe)
    return probe


def _gpu(doc: Doctor, probe: engine_mod.Probe) -> None:
    if not probe.cuda:
        doc.add(WARN, "GPU", f"torch {probe.torch} sees no CUDA GPU: sd-scripts trains on the CPU (hours per stage at "
                             "512 px; fine for --resolution 64 tests)")
        return
    free = f", {human(probe.vram_free or 0)} of {human(probe.vram_total)} VRAM free" if probe.vram_total else ""
    precision, why = profiles.choose_precision(probe.compute, probe.bf16)
    caveat = profiles.precision_caveat(probe.gpus, precision)
    doc.add(WARN if caveat else OK, "GPU", f"torch {probe.torch} sees {', '.join(probe.gpus) or 'a CUDA GPU'}{free}; "
                                           f"trains in {precision} ({why})" + (f"; {caveat}" if caveat else ""))


def _vram(doc: Doctor, probe, family: Family) -> None:
    """VRAM for a one-image run's largest training (vram.py: native size, the memo's largest dim), with --low-vram."""
    if not (probe and probe.cuda and probe.vram):
        return
    precision, _ = profiles.choose_precision(probe.compute, probe.bf16)
    side = family.default_size
    dim = max(t.network_dim for t in [MEMO.copy, MEMO.effect, *MEMO.effect_overrides.values()])
    dit = bool(family.training_options.get("network_train_unet_only"))  # FLUX.1, SD3, Anima: the transformer alone
    fp8 = bool(profiles.DIT_OPTIONS.get(family.name, {}).get("fp8_base"))
    need = vram.training(family.name, (side, side), dim, precision, unet_only=dit, fp8_base=fp8).total
    low = vram.training(family.name, (side, side), dim, precision, "AdamW8bit", gradient_checkpointing=True,
                        unet_only=dit or family.name == "sdxl", fp8_base=fp8).total
    free = min(f for f, _ in probe.vram)
    text = (f"training {family.label} at {side}x{side}, dim {dim}, needs ~{human(need)} by copymachine's "
            f"estimate (--low-vram: ~{human(low)}); {human(free)} free")
    if need <= free:
        doc.add(OK, "VRAM", f"{text}: fits" + (f", {int(free // need)} side by side" if free // need > 1 else ""))
    elif low <= free:
        lacks = "; it needs bitsandbytes, which the Python for sd-scripts lacks"
        bnb = "" if "bitsandbytes" in probe.versions else lacks
        doc.add(WARN, "VRAM", f"{text}: will likely run out of memory; use --low-vram ({preflight.LOW_VRAM_TEXT}){bnb}")
    else:
        doc.add(WARN, "VRAM", f"{text}: will likely not fit even with --low-vram; lower --resolution or the network "
                              "dim (--set effect.network_dim=N)")


def _capabilities(doc: Doctor, engine) -> None:
    """The version and what it can do (each script's --help, learnt once per checkout)."""
    reporter = Reporter()  # the count goes to stderr; doctor's rows stay on stdout
    caps = capabilities.learn(engine, on_progress=lambda done, total: reporter.counting(
        "capabilities", capabilities.progress_text(done, total), done, total))
    try:
        capabilities.require(engine, caps)
    except CopymachineError as e:
        doc.add(FAIL, "engine", e.message, EXIT_ENVIRONMENT)
        return
    if caps.known:
        tested_one = caps.version.removesuffix(" (extracted)") in capabilities.TESTED
        status, tested = OK, ("; tested" if tested_one else "; not tested")
    else:
        status, tested = WARN, f"; copymachine is tested with {', '.join(capabilities.TESTED)}"
    doc.add(status, "engine", f"{caps.version_text()}: {caps.summary()}{tested}")


def _memory(doc: Doctor, family: str = SD1.name) -> None:
    """RAM for a training (a default run keeps the copy model in memory); the file route (--copy-model file)
    merges into a checkpoint and peaks higher: only a warning, since a default run does not need it."""
    mem = preflight.memory.memory_bytes()
    if family not in preflight.memory.MERGE_PEAK_RAM:  # the DiT families: no file route
        train = preflight.TRAINING_PEAK_RAM[family]
        ok = preflight.ram_and_swap(mem) >= train
        doc.add(OK if ok else WARN, "RAM", f"{human(mem['total'])}; training {family} peaks at ~{human(train)} on "
                                           "the CPU (less with a GPU, which holds the model)")
        return
    train, merge = preflight.TRAINING_PEAK_RAM[family], preflight.merge_ram(family)
    label = {"sd1": "SD1.5", "sd2": "SD2", "sdxl": "SDXL"}.get(family, family)
    total, available = mem["total"], mem["available"]
    text = (f"{human(total)} ({human(available)} available, swap {human(mem['swap'])}); training {label} with the copy "
            f"model in memory peaks at ~{human(train)} on the CPU; --copy-model file merges into the checkpoint at "
            f"float, ~{human(merge)}")
    have = preflight.ram_and_swap(mem)
    fp16 = preflight.fp16_merge_fits(family, have)
    if have < train:
        doc.add(FAIL, "RAM", text + ": not enough for training on the CPU (a GPU holds the model in VRAM and needs "
                                    "less)", EXIT_ENVIRONMENT)
    elif have < merge and fp16:
        doc.add(WARN, "RAM", text + f": too little for --copy-model file at float; at fp16 it peaks at ~{human(fp16)} "
                                    f"({preflight.FP16_MERGE})")
    elif have < merge:
        doc.add(WARN, "RAM", text + ": enough for the default route, not for --copy-model file (a merge into the "
                                    "checkpoint)")
    elif total < train or available < train:
        doc.add(WARN, "RAM", text + ": close other programs during training, or it will swap")
    else:
        doc.add(OK, "RAM", text)


def _training_size(doc: Doctor, family: Family) -> None:
    """The size train plans for this family (methods.choose_training_size)."""
    n = family.default_size
    example = "x".join(str(v) for v in training_size(2048, 1536, n))
    doc.add(OK, "training size", f"{family.label} trains at about {n}x{n} px by default (its native size; e.g. a "
                                 f"2048x1536 picture at {example}), the picture's aspect kept, sides multiples of 64; "
                                 "a generated original at its own size; --resolution N trains at about NxN px")


def _base_model(doc: Doctor, base: Path | None) -> tuple[ModelInfo | None, CopymachineError | None]:
    """--base as train checks it (a pickle accepted: doctor only sizes its checks), its prediction and clip skip."""
    if base is None:
        return None, None
    try:
        model = preflight.check_base_model(base, Reporter(), allow_pickle=True)
    except CopymachineError as e:
        return None, e
    try:
        prediction = choose_prediction(model)
    except CopymachineError as e:
        doc.add(WARN, "base model", f"{e.message} (train/diff refuse it without --v-pred)")
        return model, None
    clip = (f"clip skip: none to choose ({model.family.label})" if not model.family.has_clip_skip
            else "clip skip: the recipe's model.clip_skip (1; --clip-skip 2 for NovelAI-derived anime models)")
    hint = "" if prediction.v_parameterization else ("; --v-pred / --zero-terminal-snr for a v-prediction file without "
                                                     "the keys")
    doc.add(OK, "base model", f"{model.path.name}: {model.family.label}, {prediction.text()}{hint}; {clip}")
    return model, None


def _model_files(doc: Doctor, model: ModelInfo, given: tuple[str, ...]) -> Family:
    """The family's other files, checked as train checks them (copymachine.families.with_files)."""
    try:
        family = with_files(model.family, parse_model_files(given), model.embedded)
    except CopymachineError as e:
        doc.add(FAIL, "model files", e.message, e.exit_code)
        return model.family
    if family.needs:
        held = [m.name for m in family.needs if m.name in model.embedded]
        doc.add(OK, "model files", ", ".join([*(f"{n} {Path(p).name}" for n, p in family.files),
                                              *(f"{n} in the checkpoint" for n in held)]))
    return family


def _folders(doc: Doctor, out: Path, cache: Path, model: ModelInfo | None, base_error: CopymachineError | None) -> None:
    family = model.family.name if model else SD1.name
    label = f"a one-image run on {model.path.name} ({model.family.label})" if model else "a one-image SD1.5 run"
    if base_error is not None:
        doc.add(FAIL, "base model", base_error.message, base_error.exit_code)
    for items in preflight.by_disk(preflight.one_image_run_needs(family, out, cache)):
        total = sum(n.bytes for n in items)
        names = " + ".join(f"{n.what} {n.folder}" for n in items)
        free = free_bytes(items[0].folder)
        text = f"{names}: {human(free)} free; {label} writes ~{human(total)} there"
        short = free < total
        doc.add(FAIL if short else OK, "disk", text, EXIT_OUTPUT if short else EXIT_OK)
    for what, folder in (("run folders", out), ("cache", cache)):
        try:
            preflight.check_writable({what: folder})
            where = folder if folder.exists() else (f"{folder} (created by the first run under "
                                                    f"{preflight.existing_ancestor(folder)})")
            doc.add(OK, "write access", f"{what}: {where}")
        except CopymachineError as e:
            doc.add(FAIL, "write access", e.message, e.exit_code)


# copymachine's own compiled modules: the pair check and the built-in effects need them (imported
# when used, copymachine.heavy, so that doctor itself starts where one is broken)
OWN_MODULES = ("numpy", "cv2", "skimage")


def _own_modules(doc: Doctor) -> None:
    for name in OWN_MODULES:
        try:
            importlib.import_module(name)
        except Exception as e:  # a broken binary raises more than ImportError
            message = f"{type(e).__name__}: {e}".splitlines()[0]
            doc.add(FAIL, "copymachine", f"{name} fails to import in copymachine's Python ({sys.executable}): "
                                         f"{message}; {heavy.import_fix(name, message)}", EXIT_ENVIRONMENT)
            break
    else:
        doc.add(OK, "copymachine", f"its own Python ({sys.executable}) imports {', '.join(OWN_MODULES)}")
    if importlib.util.find_spec("lpips") is not None:
        doc.add(WARN, "lpips", "the lpips extra is installed: the copy check loads AlexNet weights with torch in "
                               "copymachine's own process (a pickle; torchvision may download them)")


def _tokenizer(doc: Doctor, tokenizer_cache_dir: Path | None, family: Family) -> None:
    """The tokenizer check train makes (offline when HF_HUB_OFFLINE=1, as doctor has no --offline)."""
    problem = preflight.tokenizer_problem(tokenizer_cache_dir, os.environ.get("HF_HUB_OFFLINE") == "1", family)
    if problem is not None:
        fatal, text = problem
        doc.add(FAIL if fatal else WARN, "tokenizer", text, EXIT_ENVIRONMENT if fatal else EXIT_OK)
    elif tokenizer_cache_dir is not None:
        doc.add(OK, "tokenizer", f"{tokenizer_cache_dir} has {', '.join(family.tokenizers)} (offline runs work with "
                                 f"--tokenizer-cache-dir {tokenizer_cache_dir} --offline)")
    else:
        doc.add(OK, "tokenizer", "sd-scripts fetches the CLIP tokenizer(s) from the Hugging Face hub on first use "
                                 "(offline: --tokenizer-cache-dir DIR --offline)")


@cli.command()
@click.option("--sd-scripts", "sd_scripts", type=click.Path(file_okay=False, path_type=Path),
              help="sd-scripts checkout to check. Default: as train finds it.")
@click.option("--python", "python", help="The Python that runs sd-scripts. Default: as train finds it.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("runs"), show_default=True,
              help="Where run folders go.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path),
              help="The shared cache. Default: $COPYMACHINE_CACHE, else <out>/_cache.")
@click.option("--base", type=click.Path(path_type=Path),
              help="Size the disk check for this base model (default: SD1.5).")
@click.option("--tokenizer-cache-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Folder with the CLIP tokenizer(s), for offline runs.")
@click.option("--model-file", "model_files", multiple=True, metavar="NAME=FILE",
              help="The other files --base's family needs (FLUX.1: clip_l, t5xxl, ae; Anima: qwen3, vae), as train "
                   "takes them.")
def doctor(sd_scripts, python, out, cache_dir, base, tokenizer_cache_dir, model_files):
    """Check that this machine can run copymachine: sd-scripts and its Python, torch and the
    GPU, RAM, disk space and write access. Exit 0 when nothing would stop a run."""
    cache = default_cache(Path(out) / "run", cache_dir)  # the cache of a run folder under --out
    doc = Doctor()
    click.echo("copymachine doctor")
    probe = _engine(doc, sd_scripts, python)
    model, base_error = _base_model(doc, base)
    family = _model_files(doc, model, model_files) if model else SD1
    _vram(doc, probe, family)
    _memory(doc, family.name)
    _training_size(doc, family)
    _folders(doc, Path(out).absolute(), cache.absolute(), model, base_error)
    _tokenizer(doc, tokenizer_cache_dir, family)
    _own_modules(doc)
    failures, warnings = doc.named(FAIL), doc.named(WARN)
    if failures:
        click.echo(f"not ready: {len(failures)} problem(s) would stop a run ({', '.join(failures)})")
    else:
        click.echo("ready" + (f" ({len(warnings)} warning(s))" if warnings else ""))
    raise SystemExit(doc.exit_code)
