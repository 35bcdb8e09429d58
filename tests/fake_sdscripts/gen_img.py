# Fake of sd-scripts' gen_img.py for copymachine's fast tests (tests/fake_sdscripts/README.md). No torch.
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _fake.gen import main


def prompt_option(parg, opts, con, n_networks):
    """One " --x value" of a prompt line, matched as the real gen_img.py matches it (code: its
    prompt-line loop); copymachine reads the option names from these patterns. An unknown option
    is ignored, as the real one ignores it."""
    if mm := re.match(r"w (\d+)", parg, re.IGNORECASE):
        opts["w"] = int(mm.group(1))
        con.info(f"width: {opts['w']}", "gen_img.py:2799")
    elif mm := re.match(r"h (\d+)", parg, re.IGNORECASE):
        opts["h"] = int(mm.group(1))
        con.info(f"height: {opts['h']}", "gen_img.py:2805")
    elif mm := re.match(r"s (\d+)", parg, re.IGNORECASE):
        opts["steps"] = max(1, min(1000, int(mm.group(1))))
        con.info(f"steps: {opts['steps']}", "gen_img.py:2847")
    elif mm := re.match(r"d ([\d,]+)", parg, re.IGNORECASE):
        pass  # seeds are taken out of the line before (gen_img.py does both)
    elif mm := re.match(r"l ([\d\.]+)", parg, re.IGNORECASE):
        opts["scale"] = float(mm.group(1))
    elif mm := re.match(r"n (.+)", parg, re.IGNORECASE):
        opts["negative"] = mm.group(1)
        con.info(f"negative prompt: {opts['negative']}", "gen_img.py:2880")
    elif mm := re.match(r"am ([\d\.\-,]+)", parg, re.IGNORECASE):
        muls = [float(v) for v in mm.group(1).split(",")]
        while len(muls) < n_networks:
            muls.append(muls[-1])
        opts["muls"] = muls
        con.info(f"network mul: {muls}", "gen_img.py:2894")
    elif mm := re.match(r"f (.+)", parg, re.IGNORECASE):  # (code: commit 153764a6, v0.9.0 on)
        opts["filename"] = mm.group(1)
        con.info(f"filename: {opts['filename']}", "gen_img.py:2977")


if __name__ == "__main__":
    main("gen_img.py", prompt_option)
