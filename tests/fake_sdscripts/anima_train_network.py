# Fake of sd-scripts' anima_train_network.py for copymachine's fast tests (tests/fake_sdscripts/README.md). No torch.
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _fake.dit import main

if __name__ == "__main__":
    main("anima_train_network.py")
