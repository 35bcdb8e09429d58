"""Pre-flight of sd-scripts: its commit, and the CLIP tokenizer(s) it loads."""

from __future__ import annotations

from pathlib import Path

from copymachine import capabilities
from copymachine.engine import PINNED_COMMIT, Engine
from copymachine.errors import EnvironmentProblem
from copymachine.models import Family
from copymachine.progress import Reporter


def engine_warning(engine: Engine) -> str | None:
    """What to say about the sd-scripts checkout's commit (after "sd-scripts at "): not the
    pinned one, or not a git checkout and not a release copymachine knows; None when it is fine."""
    if engine.commit and not engine.pinned:
        return (f"{engine.root} is at commit {engine.commit[:8]}, not the pinned {PINNED_COMMIT[:8]}; copymachine is "
                "tested against the pinned one")
    if engine.commit is None and engine.identity not in capabilities.RELEASE_TREES:
        return f"{engine.root} is not a git checkout; cannot tell its commit"
    return None


def tokenizer_problem(folder: Path | None, offline: bool, family: Family) -> tuple[bool, str] | None:
    """sd-scripts loads the family's CLIP tokenizer(s) from --tokenizer-cache-dir, else from the
    hub. Returns (whether it stops the run, what to say), or None when they will be found."""
    if not family.tokenizers:  # sd-scripts ships them (Anima: configs/qwen3_06b)
        return None
    if folder is None:
        if offline:
            return False, ("offline without --tokenizer-cache-dir: sd-scripts needs the tokenizer(s) "
                           f"{', '.join(family.tokenizers)} in the Hugging Face cache, or it fails")
        return None
    missing = [name for name in family.tokenizers if not (Path(folder) / name).is_dir()]
    if missing and offline:
        return True, (f"--tokenizer-cache-dir {folder} lacks {', '.join(missing)} ({family.label} needs "
                      f"{', '.join(family.tokenizers)}); offline, sd-scripts cannot fetch it")
    if missing:
        return False, (f"--tokenizer-cache-dir {folder} lacks {', '.join(missing)}: sd-scripts will download it there "
                       "from the hub")
    return None


def check_tokenizers(settings, family: Family, reporter: Reporter) -> None:
    """Name a missing tokenizer now instead of letting the hub error (or, offline, a misleading
    protobuf ImportError) surface minutes later."""
    problem = tokenizer_problem(settings.tokenizer_cache_dir, settings.offline, family)
    if problem is None:
        return
    fatal, text = problem
    if fatal:
        raise EnvironmentProblem(text)
    reporter.warn(text)


def check_family_scripts(settings, family: Family) -> None:
    """Refuse, in one line, a family whose trainer or renderer this sd-scripts does not have (FLUX.1 and SD3 came
    with v0.9.0's sd3 branch, Anima after v0.10.1)."""
    engine = settings.engine
    if engine is None or family.renders_with_gen_img:
        return
    for script in (family.train_script, family.renderer):
        if not engine.script(script).is_file():
            raise EnvironmentProblem(f"{family.label} needs sd-scripts' {script}, which the sd-scripts at "
                                     f"{engine.root} lacks; use a newer sd-scripts (the pinned commit has it: "
                                     "`copymachine setup`)")
