# Fake of sd-scripts' finetune/tag_images_by_wd14_tagger.py for copymachine's fast tests (tests/fake_sdscripts/README.md). No torch.
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from _fake.tagger import main

if __name__ == "__main__":
    main("finetune/tag_images_by_wd14_tagger.py")
