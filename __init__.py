"""ComfyUI-Interplay: controllable interaction video nodes.

Importing this package loads no model and touches no network: it only collects the node classes.
ComfyUI imports this folder under a path-derived name, so everything inside uses relative imports.
"""
from .models import runtime as _runtime
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

_runtime.register_model_folders()  # models/sam2 and models/interplay inside ComfyUI; no-op elsewhere

WEB_DIRECTORY = "./web"
__version__ = "0.1.0"
__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
