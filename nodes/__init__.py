"""ComfyUI face of the pack: thin V1 node classes, one module per role.

Every module in this folder that defines NODE_CLASS_MAPPINGS is collected here, in sorted module order,
so adding a role means adding a file. Node ids carry the ``Interplay`` prefix and never change once
released; display names end with "(Interplay)".
"""
import importlib
import pkgutil

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}

_NOT_NODE_MODULES = {"cli", "graph"}

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.name.startswith("_") or _info.name in _NOT_NODE_MODULES:
        continue
    _mod = importlib.import_module(f".{_info.name}", __name__)
    for _id, _cls in getattr(_mod, "NODE_CLASS_MAPPINGS", {}).items():
        if _id in NODE_CLASS_MAPPINGS:
            raise RuntimeError(f"node id {_id} defined twice (nodes/{_info.name}.py)")
        NODE_CLASS_MAPPINGS[_id] = _cls
    NODE_DISPLAY_NAME_MAPPINGS.update(getattr(_mod, "NODE_DISPLAY_NAME_MAPPINGS", {}))
