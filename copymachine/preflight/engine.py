"""Pre-flight of sd-scripts: its commit, and the CLIP tokenizer(s) it loads."""

from __future__ import annotations

from pathlib import Path

from copymachine import capabilities
from copymachine.engine import PINNED_COMMIT, Engine
from copymachine.errors import EnvironmentProblem
from copymachine.models import Family
from copymachine.progress import Reporter


def engine_warning(engine: Engine) -> str | None:
    """What to say of an sd-scripts not at the pinned commit or not a known release; None when it is fine."""
    if engine.commit and not engine.pinned:
        return (f"{engine.root} is at commit {engine.commit[:8]}, not the pinned {PINNED_COMMIT[:8]}; copymachine is "
                "tested against the pinned one")
    if engine.commit is None and engine.identity not in capabilities.RELEASE_TREES:
        return f"{engine.root} is not a git checkout; cannot tell its commit"
    return None


def tokenizer_problem(folder: Path | None, offline: bool, family: Family) -> tuple[bool, str] | None:
    """(whether it stops the run, what to say) when sd-scripts will not find the family's tokenizers; else None."""
    if not family.tokenizers:  # sd-scripts ships them (Anima: configs/qwen3_06b)
        return None
    if folder is None:
        return (False, "offline without --tokenizer-cache-dir: sd-scripts needs the tokenizer(s) "
                f"{', '.join(family.tokenizers)} in the Hugging Face cache, or it fails") if offline else None
    missing = [name for name in family.tokenizers if not (Path(folder) / name).is_dir()]
    if missing and offline:
        return True, (f"--tokenizer-cache-dir {folder} lacks {', '.join(missing)} ({family.label} needs "
                      f"{', '.join(family.tokenizers)}); offline, sd-scripts cannot fetch it")
    if missing:
        return False, (f"--tokenizer-cache-dir {folder} lacks {', '.join(missing)}: sd-scripts will download it there "
                       "from the hub")
    return None


def check_tokenizers(settings, family: Family, reporter: Reporter) -> None:
    """A missing tokenizer now, not the hub's error (offline: a misleading protobuf ImportError) minutes later."""
    problem = tokenizer_problem(settings.tokenizer_cache_dir, settings.offline, family)
    if problem is None:
        return
    fatal, text = problem
    if fatal:
        raise EnvironmentProblem(text)
    reporter.warn(text)


def check_family_scripts(settings, family: Family) -> None:
    """Refuse a family whose trainer or renderer this sd-scripts lacks (FLUX.1/SD3: v0.9.0; Anima after v0.10.1)."""
    engine = settings.engine
    if engine is None or family.renders_with_gen_img:
        return
    for script in (family.train_script, family.renderer):
        if not engine.script(script).is_file():
            raise EnvironmentProblem(f"{family.label} needs sd-scripts' {script}, which the sd-scripts at "
                                     f"{engine.root} lacks; use a newer sd-scripts (the pinned commit has it: "
                                     "`copymachine setup`)")
