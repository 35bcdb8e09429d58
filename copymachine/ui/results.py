"""The Results page of `copymachine ui`: each final LoRA of a finished job with its sheets (from the
stamps its run's stages wrote), `inspect`'s report, a download link and the usage lines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from copymachine.errors import CopymachineError
from copymachine.lorafile import read_safetensors
from copymachine.lorainfo import format_report, lora_report
from copymachine.plan import stage_name
from copymachine.ui.files import RunsFiles


def results(jobs: list[dict[str, Any]], files: RunsFiles) -> list[dict[str, Any]]:
    """One entry per final LoRA, with the jobs that made it (jobs sharing a run folder may make the same)."""
    made: dict[str, list[dict[str, Any]]] = {}
    for job in (j for j in jobs if j.get("status") == "done"):
        for final in job.get("finals") or []:
            made.setdefault(final, []).append(job)
    return [{**_result(by[-1], Path(final), files), "jobs": [j["id"] for j in by]}
            for final, by in made.items() if Path(final).is_file()]


def _result(job: dict[str, Any], path: Path, files: RunsFiles) -> dict[str, Any]:
    try:
        report = format_report(lora_report(path))
        md = read_safetensors(path).metadata
    except CopymachineError as e:
        report, md = e.message, {}
    memo = md.get("copymachine.sign", "").startswith("positive strength = less")
    name = path.stem
    more, less = ("-1", "1") if memo else ("1", "-1")
    signs = ("negative", "positive") if memo else ("positive", "negative")
    comfyui = (f"LoraLoader with lora_name {path.name}: strength_model and strength_clip "
               f"{signs[0]} for more of the edit, {signs[1]} for less")
    return {"job": job["id"], "label": job.get("label"), "name": name, "path": str(path),
            "download": files.url(path, download=True), "effect": md.get("copymachine.effect"),
            "method": md.get("copymachine.method"), "sign": md.get("copymachine.sign", ""),
            "usage": {"a1111": f"<lora:{name}:{more}>", "a1111_less": f"<lora:{name}:{less}>", "comfyui": comfyui},
            "sheets": _sheets(path.parent, path, md.get("copymachine.effect"), files), "inspect": report}


def _sheets(run_dir: Path, final: Path, effect: str | None, files: RunsFiles) -> list[dict[str, str]]:
    """A final LoRA's sheets from its run's stamps (the manifest holds the latest command only, and jobs of
    other effects share the run folder): the edit's compare sheet, the copy check, the strength sweep."""
    sheets = []
    edit = stage_name("edit", effect) if effect else None
    for path in sorted(run_dir.rglob(".stages/*.json")):
        try:
            stamp = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        outputs, kind, name = stamp.get("outputs", {}), stamp.get("kind"), stamp.get("name", "")
        lora = Path(stamp.get("inputs", {}).get("lora", {}).get("path", ""))
        if kind == "edit_image" and edit and (name == edit or name.endswith("/" + edit)) and "compare" in outputs:
            sheets.append((0, "edit", name.rsplit("/edit", 1)[0] + ": edit", outputs["compare"]["path"]))
        elif kind == "copy_check" and "sheet" in outputs:
            sheets.append((1, "copy check", name, outputs["sheet"]["path"]))
        elif kind == "preview" and "sheet" in outputs and lora == final:
            sheets.append((2, "strength sweep", f"strength sweep of {final.name}", outputs["sheet"]["path"]))
    return [{"kind": k, "title": t, "url": files.url(Path(p))} for _, k, t, p in sorted(sheets) if Path(p).is_file()]
