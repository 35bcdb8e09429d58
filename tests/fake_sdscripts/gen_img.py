# Fake of sd-scripts' gen_img.py for copymachine's fast tests (tests/fake_sdscripts/README.md). No torch.
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _fake.gen import main  # noqa: E402

if __name__ == "__main__":
    main("gen_img.py")
