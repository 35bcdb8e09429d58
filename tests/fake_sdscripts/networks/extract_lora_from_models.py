# Fake of sd-scripts' networks/extract_lora_from_models.py for copymachine's fast tests (tests/fake_sdscripts/README.md). No torch.
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from _fake.lora_tools import main

if __name__ == "__main__":
    main("networks/extract_lora_from_models.py")
