"""Security: no shell, no unpickling, configs written only by a TOML library, no network from
copymachine's own process, and HF_HUB_OFFLINE=1 handed to sd-scripts with --offline."""

from __future__ import annotations

import io
import re
import socket
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest
from click.testing import CliRunner

from copymachine.cli import cli

PACKAGE = Path(__file__).resolve().parents[1] / "copymachine"
TEMPLATES = Path(__file__).resolve().parents[1] / "templates"


def code_of(path: Path) -> str:
    """The file's code without comments and string literals (docstrings may say 'pickle')."""
    out = []
    for tok in tokenize.generate_tokens(io.StringIO(path.read_text(encoding="utf-8")).readline):
        if tok.type not in (tokenize.COMMENT, tokenize.STRING):
            out.append(tok.string)
    return " ".join(out)


FORBIDDEN = {
    "shell=True": r"shell\s*=\s*True",
    "os.system": r"\bos\s*\.\s*system\b",
    "os.popen": r"\bos\s*\.\s*popen\b",
    "subprocess.getoutput": r"\bgetstatusoutput\b|\bgetoutput\b",
    "pickle": r"\b(c?pickle|_pickle|dill|joblib|shelve|marshal)\b",
    "torch.load": r"\btorch\s*\.\s*load\b",
    "np.load with pickles": r"\bload\s*\([^)]*allow_pickle\s*=\s*True",
    "yaml.load": r"\byaml\s*\.\s*(unsafe_)?load\b",
    # urllib.parse only splits and quotes strings (the web UI's URLs); it opens no connection
    "urllib/requests/http": r"\b(urllib(?!\s*\.\s*parse\b)|requests|httpx|http\.client|urlopen)\b",
}


@pytest.mark.parametrize("what", list(FORBIDDEN))
def test_package_has_none_of(what):
    pattern = re.compile(FORBIDDEN[what])
    hits = [f"{p.relative_to(PACKAGE.parent)}" for p in sorted(PACKAGE.rglob("*.py")) if pattern.search(code_of(p))]
    assert hits == [], f"{what} in {hits}"


def called_builtins(path: Path) -> set[str]:
    """Names called as plain functions (`eval(...)`, not `model.eval()`)."""
    toks = [t for t in tokenize.generate_tokens(io.StringIO(path.read_text(encoding="utf-8")).readline) if t.type in (tokenize.NAME, tokenize.OP)]
    return {t.string for prev, t, nxt in zip([None] + toks, toks, toks[1:] + [None]) if t.type == tokenize.NAME and nxt is not None and nxt.string == "(" and (prev is None or prev.string != ".")}


def test_package_calls_no_eval_exec_or_compile():
    hits = {p.name: called_builtins(p) & {"eval", "exec", "compile", "__import__"} for p in PACKAGE.rglob("*.py")}
    assert {k: v for k, v in hits.items() if v} == {}


def test_copymachine_never_imports_torch(scene_path):
    """In its code, only the optional LPIPS score and the launcher (run by sd-scripts' Python)
    import torch; in a process, the CLI, the edits, the pair check, the scoring and the sheets
    import it neither directly nor through a dependency (skimage, PIL)."""
    hits = [p.name for p in sorted(PACKAGE.rglob("*.py")) if re.search(r"\bimport\s+torch\b|\bfrom\s+torch\b", code_of(p))]
    assert hits == ["base_weights_launcher.py", "similarity.py"]  # Lpips.distance (the lpips extra); the launcher runs in sd-scripts' Python
    code = f"""
import sys
sys.modules['lpips'] = None
import copymachine.cli, copymachine.effects, copymachine.check, copymachine.images
import copymachine.effects.flat as f
from skimage.segmentation import felzenszwalb
from copymachine.similarity import Lpips, ssim_score, reference_at
from copymachine.images import load_rgb
from copymachine.sheet import contact_sheet
im = load_rgb({str(scene_path)!r})
ssim_score(im, im); Lpips.load(); contact_sheet([[im]])
assert 'torch' not in sys.modules, 'torch was imported'
print('ok')
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_toml_is_written_by_tomli_w_only():
    writers = sorted(p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py") if re.search(r"\btomli_w\b", code_of(p)))
    assert writers == ["cli/recipe.py", "render.py", "ui/store.py"]  # configs, `recipe`, the UI's jobs files
    for p in PACKAGE.rglob("*.py"):
        assert not re.search(r"\bimport\s+toml\b|\bfrom\s+toml\s+import\b", code_of(p)), p  # the old `toml` writer


@pytest.mark.parametrize("template", sorted(p.name for p in TEMPLATES.glob("*.j2")))
def test_every_template_value_goes_through_the_toml_writer(template):
    text = (TEMPLATES / template).read_text(encoding="utf-8")
    expressions = re.findall(r"\{\{(.*?)\}\}", text)
    assert expressions
    for expr in expressions:
        assert re.search(r"\|\s*toml(_key)?\s*$", expr), f"{template}: {{{{{expr}}}}} is not written by tomli-w"


@pytest.mark.parametrize("offline", [True, False], ids=["--offline", "online"])
def test_offline_reaches_sd_scripts_and_copymachine_never_connects(fake_engine, small_lora, tmp_path, monkeypatch, offline):
    def no_network(*a, **k):
        raise AssertionError("copymachine's own process tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    engine = [a for a in fake_engine.engine_args if offline or a != "--offline"]
    lora = small_lora(tmp_path / "in.safetensors")
    result = CliRunner().invoke(cli, ["resize", str(lora), "--rank", "2", "--out", str(tmp_path / "out.safetensors"), *engine], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (call,) = fake_engine.calls()
    if offline:
        assert {k: v for k, v in call["env"].items() if "OFFLINE" in k} == {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    else:
        assert {k: v for k, v in call["env"].items() if "OFFLINE" in k} == {}
