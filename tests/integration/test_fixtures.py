"""The fixtures load through sd-scripts' own code paths (run inside sd-scripts' Python)."""

from __future__ import annotations

import json

CAT_IDS = [49406, 320, 1125, 539, 320, 2368, 49407]

TOKENIZE = r"""
import json, sys
from library.strategy_sd import SdTokenizeStrategy
s = SdTokenizeStrategy(False, None, tokenizer_cache_dir=sys.argv[1])
tok = s.tokenizer
ids = tok("a photo of a cat").input_ids
padded = s.tokenize("a photo of a cat")[0].reshape(-1).tolist()  # shape (1, 1, 77)
print(json.dumps({"ids": ids, "padded": padded, "pad": tok.pad_token_id, "eos": tok.eos_token_id, "max": tok.model_max_length}))
"""

LOAD = r"""
import json, sys
from library import model_util
te, vae, unet = model_util.load_models_from_stable_diffusion_checkpoint(False, sys.argv[1])
print("RESULT", json.dumps({"te": sum(p.numel() for p in te.parameters()), "unet": sum(p.numel() for p in unet.parameters())}))
"""


def test_tokenizer_encodes_through_sd_scripts(run_sd, tokenizer_cache_dir):
    r = run_sd(TOKENIZE, str(tokenizer_cache_dir))
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["ids"] == CAT_IDS
    # sd-scripts pads v1 prompts with <|endoftext|> to 77 tokens (pad == eos for the openai tokenizer)
    assert out["pad"] == out["eos"] == 49407 and out["max"] == 77
    assert out["padded"][:7] == CAT_IDS and len(out["padded"]) == 77 and set(out["padded"][7:]) == {49407}
    assert "load tokenizer from cache" in r.stderr


def test_checkpoint_loads_with_all_keys_matched(run_sd, random_sd15):
    r = run_sd(LOAD, str(random_sd15))
    assert r.returncode == 0, r.stderr[-3000:]
    # u-net, vae and text encoder: "loading u-net: <All keys matched successfully>" (COLUMNS=200: no wrapping)
    assert r.stderr.count("All keys matched") == 3, r.stderr[-3000:]
    sizes = json.loads(r.stdout.split("RESULT", 1)[1])
    assert sizes["te"] > 100_000_000 and sizes["unet"] > 800_000_000
