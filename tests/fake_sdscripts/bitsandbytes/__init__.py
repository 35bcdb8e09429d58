"""Stand-in for bitsandbytes in the fake sd-scripts tree: copymachine's pre-flight imports it when a
training uses an 8-bit optimizer (--low-vram's AdamW8bit); the fake scripts never import it.
A test removes it (FakeEngine.tree_copy(without="bitsandbytes")) to see the run refused."""

__version__ = "0.0+fake"
