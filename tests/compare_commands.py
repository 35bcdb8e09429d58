"""Do two trees of copymachine call sd-scripts the same way? Twelve scenarios (train by both
copy-model routes, with the copy check and a preview, two images by svd and by merge, diff,
absorb by both routes, the resize/svd-merge/merge/extract tools) run against the recording fake;
every sd-scripts command line and every config and caption file goes into OUT, cache keys masked.

    python tests/compare_commands.py TREE OUT PYTHON    # once per tree, then: diff OUT1 OUT2

PYTHON is a Python with that tree's dependencies (its .venv). A refactor that keeps OUT identical
keeps what sd-scripts is asked to do
stage keys may differ (masked).
"""
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from PIL import Image, ImageEnhance

repo = Path(sys.argv[1])
out = Path(sys.argv[2])
py = os.path.abspath(sys.argv[3])  # not resolved: a venv's python is a link
work = Path(os.environ.get("COPYMACHINE_COMPARE_WORK", "/tmp/copymachine-compare"))  # the same path for both trees
MARK = work / ".copymachine-compare"
if work.exists() and any(work.iterdir()) and not MARK.exists():
    sys.exit(f"{work} is not empty and not this script's work folder; set COPYMACHINE_COMPARE_WORK")
shutil.rmtree(work, ignore_errors=True)
work.mkdir(parents=True)
MARK.touch()
fake = repo / "tests" / "fake_sdscripts"
spec = importlib.util.spec_from_file_location("mk", fake / "make_checkpoint.py")
m = importlib.util.module_from_spec(spec)
spec.loader.exec_module(m)
base = Path(m.make_checkpoint(work / "base model.safetensors", family="sd15", seed=0))
tok = work / "tokenizers"
(tok / "openai_clip-vit-large-patch14").mkdir(parents=True)
img = work / "girl.png"
im = Image.new("RGB", (128, 128))
px = im.load()
for y in range(128):
    for x in range(128):
        px[x, y] = ((x * 2) % 256, (y * 2) % 256, ((x + y) * 3) % 256)
im.save(img)
ImageEnhance.Contrast(im).enhance(1.5).save(work / "edit.png")
img2 = work / "boy.png"
im.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(img2)
style = work / "style.safetensors"
log = work / "calls.jsonl"
env = dict(os.environ, COPYMACHINE_FAKE_COPY=str(img), COPYMACHINE_FAKE_LOG=str(log), PYTHONPATH=str(repo), COPYMACHINE_FAKE_STEP_SECONDS="0", COPYMACHINE_ENGINE_CACHE=str(work / "ec"))
for k in ("SD_SCRIPTS", "SD_SCRIPTS_PYTHON", "COPYMACHINE_CACHE", "COPYMACHINE_FAKE_FAIL"):
    env.pop(k, None)
eng = ["--sd-scripts", str(fake), "--python", py, "--tokenizer-cache-dir", str(tok), "--offline"]
common = ["--base", str(base), "--resolution", "64", "--max-steps", "3", *eng]
def cli(name, *args):
    r = subprocess.run([py, "-m", "copymachine", *args], cwd=work, env=env, capture_output=True, text=True)
    print(name, r.returncode, r.stderr.strip().splitlines()[-1:] if r.returncode else "")
    return r
cli("train-mem", "train", "--effect", "custom", "--image", str(img), "--edited", str(work / "edit.png"), "--edit-in-place", "--out", str(work / "r1"), "--no-copy-check", *common)
cli("train-file", "train", "--effect", "custom", "--image", str(img), "--edited", str(work / "edit.png"), "--edit-in-place", "--out", str(work / "r2"), "--copy-model", "file", *common)
cli("train-contrast-check", "train", "--effect", "contrast", "--image", str(img), "--out", str(work / "r3"), "--preview-model", str(base), *common)
cli("train-2img", "train", "--effect", "contrast", "--image", str(img), "--image", str(img2), "--out", str(work / "r4"), "--no-copy-check", *common)
cli("train-2img-file-merge", "train", "--effect", "contrast", "--image", str(img), "--image", str(img2), "--out", str(work / "r4f"), "--no-copy-check", "--copy-model", "file", "--combine", "merge", *common)
cli("diff", "diff", "--effect", "custom", "--image", str(img), "--edited", str(work / "edit.png"), "--edit-in-place", "--out", str(work / "r5"), *common)
final = work / "r1" / "r1-custom.safetensors"
shutil.copy(final, style)
cli("train-absorb", "train", "--effect", "custom", "--image", str(img), "--edited", str(work / "edit.png"), "--edit-in-place", "--out", str(work / "r6"), "--no-copy-check", "--absorb", f"{style}:0.7", *common)
cli("train-absorb-file", "train", "--effect", "custom", "--image", str(img), "--edited", str(work / "edit.png"), "--edit-in-place", "--out", str(work / "r7"), "--no-copy-check", "--absorb", f"{style}:0.7", "--copy-model", "file", *common)
cli("resize", "resize", str(final), "--rank", "4", "--out", str(work / "t-resize.safetensors"), *eng)
cli("svd-merge", "svd-merge", "--lora", f"{final}:1", "--lora", f"{style}:-1", "--out", str(work / "t-svd.safetensors"), *eng)
cli("merge", "merge", "--base", str(base), "--lora", f"{final}:0.5", "--out", str(work / "t-merge.safetensors"), *eng)
cli("extract", "extract", "--base", str(base), "--tuned", str(work / "t-merge.safetensors"), "--out", str(work / "t-extract.safetensors"), *eng)
def masked(text: str) -> str:
    return re.sub(r"/[0-9a-f]{16}/", "/<key>/", text)


calls = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
files = sorted(f"== {masked(str(t.relative_to(work)))}\n{masked(t.read_text())}\n" for t in [*work.rglob("*.toml"), *work.rglob("*.txt")] if ".stages" not in t.parts)
with open(out, "w") as f:
    for c in calls:
        f.write(masked(json.dumps({"script": Path(c["script"]).name, "argv": c["argv"]})) + "\n")
    f.writelines(files)
print(len(calls), "sd-scripts calls,", len(files), "files")
