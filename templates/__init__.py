"""Jinja templates of the sd-scripts configs (shipped as the package data copymachine.templates)."""
