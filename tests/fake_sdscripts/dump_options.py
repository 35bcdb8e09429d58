"""Dump the pinned sd-scripts' command-line options (and the dataset-TOML schema) as data.

Run with the sd-scripts Python, whose environment has torch, accelerate and sd-scripts' ``library``:

    vendor/sd-scripts/venv/bin/python tests/fake_sdscripts/dump_options.py --sd-scripts vendor/sd-scripts

or, to add scripts to the existing file without touching the others' entries (``--only`` with no names:
the scripts of SCRIPTS the file lacks):

    vendor/sd-scripts/venv/bin/python tests/fake_sdscripts/dump_options.py --sd-scripts vendor/sd-scripts --only

It imports each script as a module (its ``__main__`` block does not run), calls its own
``setup_parser()`` (the minimal-inference scripts, which have none, run up to their ``parse_args()``
call, which hands back the parser) and writes every option of the resulting argparse parser to
``tests/fake_sdscripts/options.json`` (or ``--out``). The JSON holds names of options and their
argparse attributes, no code. The recording fake (tests/fake_sdscripts/_fake) parses argv against it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Python put this folder first on sys.path; its fake accelerate/ and library/ would shadow the real ones.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]


def _fake_common():
    """The fake's shared module, loaded by path: putting HERE on sys.path would shadow the real accelerate."""
    spec = importlib.util.spec_from_file_location("copymachine_fake_common", HERE / "_fake" / "common.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


jsonable = _fake_common().jsonable

# script path (relative to the sd-scripts root) -> fake tree path; all expose setup_parser()
SCRIPTS = [
    "train_network.py",
    "sdxl_train_network.py",
    "gen_img.py",
    "networks/merge_lora.py",
    "networks/sdxl_merge_lora.py",
    "networks/svd_merge_lora.py",
    "networks/resize_lora.py",
    "networks/extract_lora_from_models.py",
    "flux_train_network.py",
    "sd3_train_network.py",
    "anima_train_network.py",
    "flux_minimal_inference.py",
    "sd3_minimal_inference.py",
    "anima_minimal_inference.py",
]
# scripts without setup_parser(): their parser is built in the __main__ block (flux_/sd3_minimal_inference.py)
# or in parse_args() (anima_minimal_inference.py); run_parser_of() runs that code up to parse_args()
NO_SETUP_PARSER = {"flux_minimal_inference.py", "sd3_minimal_inference.py", "anima_minimal_inference.py"}


def type_name(t) -> str | None:
    if t is None:
        return None
    return getattr(t, "__name__", None) or repr(t)


def describe_parser(parser: argparse.ArgumentParser) -> dict:
    options = {}
    positionals = []
    for a in parser._actions:
        kind = type(a).__name__
        info = {
            "dest": a.dest,
            "action": kind,
            # store_true/store_false/store_const/count/help/version take no value
            "takes_value": a.nargs != 0,
            "nargs": a.nargs,
            "choices": jsonable(list(a.choices)) if a.choices is not None else None,
            "default": jsonable(a.default) if a.default is not argparse.SUPPRESS else "==SUPPRESS==",
            "type": type_name(a.type),
            "required": bool(getattr(a, "required", False)),
            "const": jsonable(a.const),
        }
        if a.option_strings:
            for s in a.option_strings:
                options[s] = info
        else:
            positionals.append(info)
    groups = [[s for act in g._group_actions for s in act.option_strings] for g in parser._mutually_exclusive_groups]
    return {
        "prog_options": options,
        "positionals": positionals,
        "mutually_exclusive": groups,
        "allow_abbrev": parser.allow_abbrev,
        "prefix_chars": parser.prefix_chars,
    }


def load_script(sd: Path, rel: str):
    path = sd / rel
    # networks/*.py do "import lora"; the rest need the root for "library"
    for d in (str(path.parent), str(sd)):
        if d not in sys.path:
            sys.path.insert(0, d)
    name = "sdscripts_" + rel.replace("/", "_").removesuffix(".py")
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


class _Parsed(Exception):
    def __init__(self, parser):
        super().__init__("parser captured")
        self.parser = parser


def run_parser_of(sd: Path, rel: str) -> argparse.ArgumentParser:
    """The parser a script builds in its __main__ block / parse_args(): its code runs (as __main__) until
    it calls parse_args(), which hands the parser back instead of parsing."""
    import runpy

    for d in (str(sd / Path(rel).parent), str(sd)):
        if d not in sys.path:
            sys.path.insert(0, d)

    def capture(self, *a, **kw):
        raise _Parsed(self)

    original = argparse.ArgumentParser.parse_args
    argparse.ArgumentParser.parse_args = capture
    try:
        runpy.run_path(str(sd / rel), run_name="__main__")
    except _Parsed as p:
        return p.parser
    finally:
        argparse.ArgumentParser.parse_args = original
    raise RuntimeError(f"{rel} did not call parse_args()")


def dataset_schema(sd: Path) -> dict:
    """The keys ConfigSanitizer(True, True, False, True) allows, as train_network.py builds it."""
    from library import config_util

    CS = config_util.ConfigSanitizer

    def describe(schema: dict) -> dict:
        out = {}
        for k, v in schema.items():
            key = str(k)
            required = type(k).__name__ == "Required"
            if isinstance(v, list):
                t = "list"
            elif isinstance(v, type):
                t = v.__name__
            elif "twodim" in repr(v) and "scalar_or" in repr(v):
                t = "int_or_pair" if "int" in repr(v) else "float_or_pair"
            elif "twodim" in repr(v):
                t = "float_pair" if "float" in repr(v) else "int_pair"
            elif type(v).__name__ == "Any":
                t = "|".join(getattr(x, "__name__", repr(x)) for x in v.validators)
            else:
                t = repr(v)
            out[key] = {"type": t, "required": required}
        return out

    db_subset = {**CS.SUBSET_ASCENDABLE_SCHEMA, **CS.DB_SUBSET_DISTINCT_SCHEMA, **CS.DB_SUBSET_ASCENDABLE_SCHEMA, **CS.DO_SUBSET_ASCENDABLE_SCHEMA}
    db_dataset = {**CS.DATASET_ASCENDABLE_SCHEMA, **CS.SUBSET_ASCENDABLE_SCHEMA, **CS.DB_SUBSET_ASCENDABLE_SCHEMA, **CS.DO_SUBSET_ASCENDABLE_SCHEMA}
    general = dict(db_dataset)
    # sanity check against a real sanitizer: its general schema must have exactly these keys
    real = CS(True, True, False, True)
    assert {str(k) for k in real.general_schema} == {str(k) for k in general}, "config_util schema changed"
    return {
        "source": "library/config_util.py ConfigSanitizer(support_dreambooth=True, support_finetuning=True, support_controlnet=False, support_dropout=True) as train_network.py builds it",
        "top_level": ["general", "datasets"],
        "general": describe(general),
        "dataset": {**describe(db_dataset), "subsets": {"type": "list", "required": False}},
        "subset": describe(db_subset),
        "finetune_subset": describe({**CS.SUBSET_ASCENDABLE_SCHEMA, **CS.FT_SUBSET_DISTINCT_SCHEMA, **CS.DO_SUBSET_ASCENDABLE_SCHEMA}),
        "argparse_to_config": dict(CS.ARGPARSE_OPTNAME_TO_CONFIG_OPTNAME),
    }


def describe_script(sd: Path, rel: str) -> dict:
    if rel in NO_SETUP_PARSER:
        return describe_parser(run_parser_of(sd, rel))
    return describe_parser(load_script(sd, rel).setup_parser())


def dump_only(sd: Path, out: Path, scripts: list[str], commit: str | None) -> int:
    """Add or replace `scripts` in an existing options file; its commit must be the tree's (when known)."""
    result = json.loads(out.read_text(encoding="utf-8"))
    if commit and result.get("sd_scripts_commit") not in (None, commit):
        raise SystemExit(f"{out} is from sd-scripts {result['sd_scripts_commit']}, {sd} is at {commit}: dump all")
    scripts = scripts or [s for s in SCRIPTS if s not in result["scripts"]]
    for rel in scripts:
        result["scripts"][rel] = describe_script(sd, rel)
    out.write_text(json.dumps(result, indent=1, sort_keys=False, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {out}: " + str({k: len(result['scripts'][k]['prog_options']) for k in scripts}))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sd-scripts", required=True, type=Path)
    ap.add_argument("--out", type=Path, default=HERE / "options.json")
    ap.add_argument("--only", nargs="*", default=None, metavar="SCRIPT",
                    help="dump only these scripts (and keep every other entry of --out as it is)")
    args = ap.parse_args()
    sd = args.sd_scripts.resolve()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.chdir(sd)
    top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=sd, capture_output=True, text=True).stdout.strip()
    commit = None
    if top and Path(top).resolve() == sd:  # a checkout of its own (an extracted tree inside another repo is not)
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=sd, capture_output=True, text=True).stdout.strip() or None
    if args.only is not None:
        return dump_only(sd, args.out, args.only, commit)

    result = {
        "_about": "Options of the pinned kohya-ss sd-scripts scripts, dumped by tests/fake_sdscripts/dump_options.py from each script's own setup_parser(). Derived data; regenerate, do not edit.",
        "sd_scripts_commit": commit,
        "scripts": {},
    }
    for rel in SCRIPTS:
        result["scripts"][rel] = describe_script(sd, rel)

    import accelerate
    from accelerate.commands.launch import launch_command_parser

    result["scripts"]["accelerate/commands/launch.py"] = describe_parser(launch_command_parser())
    result["accelerate_version"] = accelerate.__version__
    result["dataset_schema"] = dataset_schema(sd)

    args.out.write_text(json.dumps(result, indent=1, sort_keys=False, ensure_ascii=False) + "\n", encoding="utf-8")
    n = {k: len(v["prog_options"]) for k, v in result["scripts"].items()}
    print(f"wrote {args.out}: {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
