"""Fake finetune/tag_images_by_wd14_tagger.py: writes one caption file per image, offline.

(code: finetune/tag_images_by_wd14_tagger.py) the model is read from <model_dir>/<repo_id with "/"
-> "_"> and downloaded only when that folder is missing; offline the download fails. Captions are
"tag, tag, ..." joined by --caption_separator into <image stem><caption_extension> (default .txt).
The tags here are made up from the image's mean colour, deterministically.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from . import common
from .common import Console, FakeRun, crash
from .train import IMAGE_EXTENSIONS


def main(script: str) -> None:
    common.run_main(script, lambda run, args: _main(run, args, script))


def _main(run: FakeRun, args, script: str) -> None:
    con = Console()
    model_location = os.path.join(args.model_dir, args.repo_id.replace("/", "_"))
    if not os.path.exists(model_location) or args.force_download:
        crash(run, f"huggingface_hub.errors.LocalEntryNotFoundError: cannot download {args.repo_id} (copymachine fake: offline; put the model files in {model_location})")
    root = Path(args.train_data_dir)
    paths = sorted(p for p in (root.rglob("*") if args.recursive else root.glob("*")) if p.suffix in IMAGE_EXTENSIONS)
    con.info(f"found {len(paths)} images.", "tag_images_by_wd14_tagger.py")
    from PIL import Image

    for p in paths:
        with Image.open(p) as im:
            mean = np.asarray(im.convert("RGB"), dtype=np.float32).mean(axis=(0, 1))
        tags = ["solo", ["red", "green", "blue"][int(np.argmax(mean))] + "_theme", "bright" if mean.mean() > 127 else "dark"]
        if args.remove_underscore:
            tags = [t.replace("_", " ") if len(t) > 3 else t for t in tags]
        cap = p.with_suffix(args.caption_extension)
        text = args.caption_separator.join(tags)
        if args.append_tags and cap.exists():
            text = cap.read_text(encoding="utf-8").strip() + args.caption_separator + text
        run.save_bytes(cap, (text + "\n").encode("utf-8"))
    con.info("done!", "tag_images_by_wd14_tagger.py")
    run.exit(0)
