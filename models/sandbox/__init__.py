"""Synthetic physical-interaction scenes: simulate (world), render (render), scene families (presets),
dataset files (dataset), CLI (cli). ``generate_scene`` is the entry point."""
