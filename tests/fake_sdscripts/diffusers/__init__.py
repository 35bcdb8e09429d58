"""Stand-in for diffusers in the fake sd-scripts tree: copymachine's pre-flight only asks whether it
is importable (importlib.util.find_spec); the fake scripts never import it."""
