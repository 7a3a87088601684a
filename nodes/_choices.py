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


def branch_choices(new_branch: str) -> list[str]:
    """[new] + branch folders in controlnet/ + files in controlnet/ and interplay/, without listing a folder's
    own weights file a second time."""
    folders = runtime.list_models("controlnet", folders_only=True)
    files = [f for f in runtime.list_models("controlnet")
             if not (f.count("/") == 1 and f.split("/")[0] in folders
                     and f.split("/")[1].startswith("diffusion_pytorch_model"))]
    files += ["interplay/" + f for f in runtime.list_models("interplay")]
    return [new_branch] + folders + files
