"""copymachine: one image and one edit of it in, a slider LoRA out (the copy-machine LoRA method)."""

__version__ = "0.1.0"
