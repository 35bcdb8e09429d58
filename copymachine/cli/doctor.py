"""`copymachine doctor`: is this machine ready for a run?

Checks, in order: sd-scripts (found, commit, pinned or not), its Python and the packages it
imports, torch and the GPU it sees, RAM and free disk against what a run needs, write access to
the run and cache folders, the tokenizer for offline use, copymachine's own numpy/OpenCV/scikit-image. One line per check; exit 0 when
nothing would stop a run (warnings allowed), else the exit code of the first blocking problem
(4: sd-scripts, its Python or too little RAM; 5: disk space or write access; 3: a bad --base).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import click

from copymachine import capabilities, heavy, preflight
from copymachine import engine as engine_mod
from copymachine.cli import cli
from copymachine.errors import EXIT_ENVIRONMENT, EXIT_OK, EXIT_OUTPUT, CopymachineError
from copymachine.files import free_bytes
from copymachine.models import SD1
from copymachine.progress import Reporter

OK, WARN, FAIL = "ok", "warn", "FAIL"


@dataclass
class Finding:
    status: str
    what: str
    text: str
    exit_code: int = EXIT_OK


class Doctor:
    def __init__(self) -> None:
        self.findings: list[Finding] = []

    def add(self, status: str, what: str, text: str, exit_code: int = EXIT_OK) -> None:
        finding = Finding(status, what, text, exit_code)
        self.findings.append(finding)
        click.echo(f"  {status:<5} {what:<13} {text}")

    @property
    def exit_code(self) -> int:
        for f in self.findings:
            if f.status == FAIL:
                return f.exit_code
        return EXIT_OK


def _engine(doc: Doctor, sd_scripts: Path | None, python: str | None):
    try:
        engine = engine_mod.locate(sd_scripts, python)
    except CopymachineError as e:
        doc.add(FAIL, "sd-scripts", e.message, EXIT_ENVIRONMENT)
        return None, None
    if engine.pinned:
        doc.add(OK, "sd-scripts", f"{engine.root} (commit {engine.commit[:8]}, the pinned one)")
    elif engine.commit:
        doc.add(WARN, "sd-scripts", f"{engine.root} at commit {engine.commit[:8]}, not the pinned {engine_mod.PINNED_COMMIT[:8]}: it may work; copymachine is tested against the pinned one")
    elif engine.identity in capabilities.RELEASE_TREES:
        doc.add(OK, "sd-scripts", f"{engine.root} (not a git checkout; its files are those of {capabilities.RELEASE_TREES[engine.identity]})")
    else:
        doc.add(WARN, "sd-scripts", f"{engine.root} is not a git checkout: its commit cannot be told (pinned: {engine_mod.PINNED_COMMIT[:8]})")
    try:
        probe = engine.probe()
    except CopymachineError as e:
        doc.add(FAIL, "python", e.message, EXIT_ENVIRONMENT)
        return engine, None
    doc.add(OK, "python", f"{engine.python} (Python {probe.python_version})")
    versions = ", ".join(f"{name} {version}" for name, version in probe.versions.items())
    try:
        engine.require(probe)
        doc.add(OK, "packages", f"everything sd-scripts imports is there ({versions or 'versions unknown'})")
    except CopymachineError as e:
        doc.add(FAIL, "packages", e.message, EXIT_ENVIRONMENT)
    if not any(f.status == FAIL for f in doc.findings):
        _capabilities(doc, engine)
    if probe.torch and not probe.torch_error:
        if probe.cuda:
            vram = ""
            if probe.vram_total:
                vram = f", {preflight.human(probe.vram_free or 0)} of {preflight.human(probe.vram_total)} VRAM free"
            precision = "bf16" if probe.bf16 else "fp16"
            doc.add(OK, "GPU", f"torch {probe.torch} sees {', '.join(probe.gpus) or 'a CUDA GPU'}{vram}; trains in {precision}")
        else:
            doc.add(WARN, "GPU", f"torch {probe.torch} sees no CUDA GPU: sd-scripts trains on the CPU (hours per stage at 512 px; fine for --resolution 64 tests)")
    return engine, probe


def _capabilities(doc: Doctor, engine) -> None:
    """The version and what it can do (each script's --help, learnt once per checkout)."""
    caps = capabilities.learn(engine)
    try:
        capabilities.require(engine, caps)
    except CopymachineError as e:
        doc.add(FAIL, "engine", e.message, EXIT_ENVIRONMENT)
        return
    if caps.known:
        status, tested = OK, ("; tested" if caps.version.removesuffix(" (extracted)") in capabilities.TESTED else "; not tested")
    else:
        status, tested = WARN, f"; copymachine is tested with {', '.join(capabilities.TESTED)}"
    doc.add(status, "engine", f"{caps.version_text()}: {caps.summary()}{tested}")


def _memory(doc: Doctor, family: str = SD1.name) -> None:
    """A default run keeps the copy model in memory: its RAM peak is a training's. The memo's file
    route (--copy-model file, also --absorb and the several-images merge route with it) merges
    into a checkpoint, which peaks higher: a warning, since a default run does not need it."""
    mem = preflight.memory_bytes()
    train = preflight.TRAINING_PEAK_RAM[family]
    merge = preflight.MERGE_PEAK_RAM[family]
    label = {"sd1": "SD1.5", "sd2": "SD2", "sdxl": "SDXL"}.get(family, family)
    total, available, swap = mem["total"], mem["available"], mem["swap"] or 0
    needs = f"training {label} with the copy model in memory peaks at ~{preflight.human(train)} on the CPU; --copy-model file merges into the checkpoint at float, ~{preflight.human(merge)}"
    if total is None:
        doc.add(WARN, "RAM", f"cannot tell how much RAM this machine has; {needs}")
        return
    text = f"{preflight.human(total)} ({preflight.human(available or 0)} available, swap {preflight.human(swap)}); {needs}"
    half = preflight.MERGE_PEAK_RAM_HALF.get(family)
    if total + swap < train:
        doc.add(FAIL, "RAM", text + ": not enough for training on the CPU (a GPU holds the model in VRAM and needs less)", EXIT_ENVIRONMENT)
    elif total + swap < merge and half and half <= total + swap:
        doc.add(WARN, "RAM", text + f": too little for --copy-model file at float; at fp16 it peaks at ~{preflight.human(half)} (--set merge.precision=fp16 --set merge.save_precision=fp16)")
    elif total + swap < merge:
        doc.add(WARN, "RAM", text + ": enough for the default route, not for --copy-model file (a merge into the checkpoint)")
    elif total < train or (available is not None and available < train):
        doc.add(WARN, "RAM", text + ": close other programs during training, or it will swap")
    else:
        doc.add(OK, "RAM", text)


def _base_family(base: Path | None) -> str:
    if base is None:
        return SD1.name
    try:
        return preflight.check_base_model(base, Reporter(), allow_pickle=True).family.name
    except CopymachineError:
        return SD1.name  # _folders reports the bad --base


def _folders(doc: Doctor, out: Path, cache: Path, base: Path | None) -> None:
    family = SD1.name
    label = "a one-image SD1.5 run"
    if base is not None:
        try:
            model = preflight.check_base_model(base, Reporter(), allow_pickle=True)
            family = model.family.name
            label = f"a one-image run on {base.name} ({model.family.label})"
        except CopymachineError as e:
            doc.add(FAIL, "base model", e.message, e.exit_code)
    # the cache holds the copy LoRA (the copy model stays in memory: the default route); the run
    # folder the effect LoRA, its resized copy and the final LoRA (see preflight.estimate_space)
    cache_need = preflight.lora_bytes(family, 64, "float") + 2 * preflight.SMALL_STAGE_BYTES
    run_need = 3 * preflight.lora_bytes(family, 64, "float") + 6 * preflight.SMALL_STAGE_BYTES
    needs: dict[int, list] = {}
    for what, folder, need in (("run folders", out, run_need), ("cache", cache, cache_need)):
        device = os.stat(preflight._existing_ancestor(folder)).st_dev
        needs.setdefault(device, []).append((what, folder, need))
    for items in needs.values():
        total = sum(n for _, _, n in items)
        names = " + ".join(f"{what} {folder}" for what, folder, _ in items)
        free = free_bytes(items[0][1])
        text = f"{names}: {preflight.human(free)} free; {label} writes ~{preflight.human(total)} there"
        if free < total:
            doc.add(FAIL, "disk", text, EXIT_OUTPUT)
        else:
            doc.add(OK, "disk", text)
    for what, folder in (("run folders", out), ("cache", cache)):
        try:
            preflight.check_writable({what: folder})
            where = folder if folder.exists() else f"{folder} (created by the first run under {preflight._existing_ancestor(folder)})"
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
            doc.add(FAIL, "copymachine", f"{name} fails to import in copymachine's Python ({sys.executable}): {message}; {heavy.import_fix(name, message)}", EXIT_ENVIRONMENT)
            return
    doc.add(OK, "copymachine", f"its own Python ({sys.executable}) imports {', '.join(OWN_MODULES)}")


def _tokenizer(doc: Doctor, tokenizer_cache_dir: Path | None) -> None:
    if tokenizer_cache_dir is not None:
        clip = Path(tokenizer_cache_dir) / "openai_clip-vit-large-patch14"
        if clip.is_dir():
            doc.add(OK, "tokenizer", f"{clip} (offline runs work with --tokenizer-cache-dir {tokenizer_cache_dir} --offline)")
        else:
            doc.add(WARN, "tokenizer", f"{tokenizer_cache_dir} has no openai_clip-vit-large-patch14 folder: sd-scripts will look for the CLIP tokenizer on the hub")
    elif os.environ.get("HF_HUB_OFFLINE") == "1":
        doc.add(WARN, "tokenizer", "HF_HUB_OFFLINE=1 without --tokenizer-cache-dir: sd-scripts finds the CLIP tokenizer only if the hub cache already holds it")
    else:
        doc.add(OK, "tokenizer", "sd-scripts fetches the CLIP tokenizer from the Hugging Face hub on first use (offline: --tokenizer-cache-dir DIR --offline)")


@cli.command()
@click.option("--sd-scripts", "sd_scripts", type=click.Path(file_okay=False, path_type=Path), help="sd-scripts checkout to check. Default: as train finds it.")
@click.option("--python", "python", help="The Python that runs sd-scripts. Default: as train finds it.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("runs"), show_default=True, help="Where run folders go.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), help="The shared cache. Default: $COPYMACHINE_CACHE, else <out>/_cache.")
@click.option("--base", type=click.Path(path_type=Path), help="Size the disk check for this base model (default: SD1.5).")
@click.option("--tokenizer-cache-dir", type=click.Path(file_okay=False, path_type=Path), help="Folder with the CLIP tokenizer(s), for offline runs.")
def doctor(sd_scripts, python, out, cache_dir, base, tokenizer_cache_dir):
    """Check that this machine can run copymachine: sd-scripts and its Python, torch and the
    GPU, RAM, disk space and write access. Exit 0 when nothing would stop a run."""
    cache = Path(cache_dir or os.environ.get("COPYMACHINE_CACHE") or Path(out) / "_cache")
    doc = Doctor()
    click.echo("copymachine doctor")
    _engine(doc, sd_scripts, python)
    _memory(doc, _base_family(base))
    _folders(doc, Path(out).absolute(), cache.absolute(), base)
    _tokenizer(doc, tokenizer_cache_dir)
    _own_modules(doc)
    if importlib.util.find_spec("lpips") is not None:
        doc.add(WARN, "lpips", "the lpips extra is installed: the copy check loads AlexNet weights with torch in copymachine's own process (a pickle; torchvision may download them)")
    failures = [f for f in doc.findings if f.status == FAIL]
    warnings = [f for f in doc.findings if f.status == WARN]
    if failures:
        click.echo(f"not ready: {len(failures)} problem(s) would stop a run ({', '.join(f.what for f in failures)})")
    else:
        click.echo("ready" + (f" ({len(warnings)} warning(s))" if warnings else ""))
    raise SystemExit(doc.exit_code)
