"""Marker: the real sd-scripts installs its library package (pip install -e .); the fake has nothing in it."""
