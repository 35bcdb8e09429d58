"""Fake accelerate: only `python -m accelerate.commands.launch` (PYTHONPATH = the fake root first)."""
