"""The engine: importable and testable with no ComfyUI present. Only runtime.py talks to ComfyUI."""
