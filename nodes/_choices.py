"""Dropdown choices shared by the loader nodes: diffusers pipeline folders of one family, control branches."""
from __future__ import annotations

import json

from ..models import runtime

DIFFUSERS_PREFIX = "diffusers/"


def pipeline_class(name: str) -> str | None:
    """The ``_class_name`` in diffusers/<name>/model_index.json, or None when there is none to read."""
    try:
        path = runtime.model_path("diffusers", f"{name}/model_index.json")
        return str(json.loads(path.read_text()).get("_class_name") or "") or None
    except (OSError, ValueError):
        return None


def diffusers_pipelines(*class_prefixes: str, name_hints: tuple[str, ...] = ()) -> list[str]:
    """``diffusers/<folder>`` for every folder whose pipeline class starts with one of ``class_prefixes``; a
    folder without a readable model_index.json is offered when its name contains one of ``name_hints``."""
    out = []
    for d in runtime.list_models("diffusers", folders_only=True):
        cls = pipeline_class(d)
        if cls is not None:
            ok = cls.startswith(class_prefixes)
        else:
            ok = any(h in d.lower() for h in name_hints)
        if ok:
            out.append(DIFFUSERS_PREFIX + d)
    return out


def header_metadata(kind_folder: str, name: str) -> dict:
    """The safetensors header metadata of a model-folder file (only the header is read, nothing is unpickled); {}
    for a folder or a file that is not readable safetensors (such entries are still listed, and the loader reports
    the problem by name)."""
    from ..models.weights import read_metadata

    try:
        return read_metadata(runtime.model_path(kind_folder, name))
    except Exception:
        return {}


def branch_kind(kind_folder: str, name: str) -> str | None:
    """The branch kind a controlnet/ or interplay/ entry declares, as the branch registry reads it: a folder's
    config.json class, or a file's safetensors header (its ``kind``/``interplay_kind`` metadata, else a kind's key
    detector; only the header is read). None when it declares nothing (such entries are offered to every
    loader)."""
    from ..models.control import registry

    try:
        return registry.detect_path(runtime.model_path(kind_folder, name))
    except Exception:  # unreadable or corrupt: list it and let the loader report the problem by name
        return None


def branch_choices(new_branch: str, kind: str | None = None) -> list[str]:
    """[new] + branch folders in controlnet/ + files in controlnet/ and interplay/, without listing a folder's
    own weights file a second time, nor entries that declare another branch kind than ``kind``."""
    folders = runtime.list_models("controlnet", folders_only=True)
    files = [("controlnet", f) for f in runtime.list_models("controlnet")
             if not (f.count("/") == 1 and f.split("/")[0] in folders
                     and f.split("/")[1].startswith("diffusion_pytorch_model"))]
    files += [("interplay", f) for f in runtime.list_models("interplay")]

    def ok(folder, name):
        k = branch_kind(folder, name) if kind else None
        return k is None or k == kind

    out = [d for d in folders if ok("controlnet", d)]
    out += [(f if folder == "controlnet" else "interplay/" + f) for folder, f in files if ok(folder, f)]
    return [new_branch] + out
