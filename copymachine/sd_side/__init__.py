"""Files that sd-scripts' own Python runs (not copymachine's process): see each file."""
