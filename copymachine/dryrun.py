"""`--dry-run`: write the configs and print every command of the stages not done; run nothing."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

from copymachine.files import HashCache
from copymachine.plan import Plan
from copymachine.progress import Reporter
from copymachine.runner import command_line
from copymachine.stages import Settings, StageContext, StageKind
from copymachine.stages import kinds as all_kinds
from copymachine.stamps import done_stamp


def print_dry_run(plan: Plan, settings: Settings, reporter: Reporter, hashes: HashCache, out: TextIO | None = None,
                  kinds: Mapping[str, StageKind] | None = None) -> None:
    """The training size of each source, then per stage a `# [i/n]` line, its configs and commands, copy-pasteable."""
    out = out or sys.stdout
    for source, choice in (plan.info.training_size or {}).items():
        picture = "x".join(str(v) for v in choice["picture"])
        size = "x".join(str(v) for v in choice["size"])
        out.write(f"# training size of {source}: {size} (picture {picture} px; {choice['why']})\n")
    total = len(plan.stages)
    for index, stage in enumerate(plan.stages, 1):
        kind = (kinds if kinds is not None else all_kinds())[stage.kind]
        stamp = done_stamp(stage, hashes, check_inputs=all(r.path.is_file() for r in stage.inputs.values()))
        if stamp:
            out.write(f"# [{index}/{total}] {stage.title}: up to date ({stage.workdir})\n")
            continue
        ctx = StageContext(plan=plan, stage=stage, settings=settings, reporter=reporter, hashes=hashes, log_path=Path(),
                           dry_run=True)
        kind.execute(stage, ctx)
        out.write(f"# [{index}/{total}] {kind.describe(stage)}\n")
        configs = sorted((stage.workdir / "config").glob(f"{stage.slug}-*"))
        for config in configs:
            out.write(f"#   config: {config}\n")
        for argv in ctx.commands:
            out.write(command_line(argv) + "\n")
        if not ctx.commands:
            out.write(f"#   (done by copymachine itself) -> {', '.join(str(p) for p in stage.outputs.values())}\n")
    out.flush()
