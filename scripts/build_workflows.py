#!/usr/bin/env python
"""Build the drag-and-drop UI workflows from their hand-written API twins.

    python scripts/build_workflows.py           # workflows/api/<name>.json -> workflows/<name>.json
    python scripts/build_workflows.py --check   # exit 1 if a UI file is missing or stale (CI)

The API files are the source of truth (reviewed, diffable); the UI files are laid out by
``nodes.graph.api_to_ui`` with the pack's own NODE_CLASS_MAPPINGS and committed next to them.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Mapping

ROOT = Path(__file__).resolve().parent.parent


def render(api_path: Path, node_classes: Mapping[str, type]) -> str:
    """The UI workflow text for one API file (stable: same input, same bytes)."""
    from interplay.nodes import graph

    prompt = graph.to_api(graph._read_json(api_path), node_classes, source=str(api_path))
    ui = graph.api_to_ui(prompt, node_classes)
    return json.dumps(ui, indent=2, ensure_ascii=False) + "\n"


def build(workflows_dir: Path, node_classes: Mapping[str, type] | None = None, check: bool = False,
          out=sys.stdout, errors: list[str] | None = None) -> int:
    """Write (or, with check, compare) workflows_dir/<name>.json for every workflows_dir/api/<name>.json.
    Returns the number of UI files that were missing or stale (written, unless check) plus API files
    that could not be converted (always an error)."""
    if node_classes is None:
        from interplay.nodes import NODE_CLASS_MAPPINGS as node_classes  # noqa: N811
    api_dir = workflows_dir / "api"
    stale = 0
    for api_path in sorted(api_dir.glob("*.json")):
        ui_path = workflows_dir / api_path.name
        try:
            text = render(api_path, node_classes)
        except ValueError as ex:  # WorkflowError: unknown node, dangling link, bad JSON
            print(f"{api_path}: {ex}", file=sys.stderr)
            stale += 1
            if errors is not None:
                errors.append(f"{api_path}: {ex}")
            continue
        current = ui_path.read_text(encoding="utf-8") if ui_path.exists() else None
        if current == text:
            continue
        stale += 1
        if check:
            state = "missing" if current is None else "stale"
            print(f"{ui_path} is {state}; run python scripts/build_workflows.py", file=out)
        else:
            ui_path.write_text(text, encoding="utf-8")
            print(f"wrote {ui_path}", file=out)
    return stale


def main(argv: list[str] | None = None, node_classes: Mapping[str, type] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only report missing or stale UI files")
    ap.add_argument("--workflows", type=Path, default=ROOT / "workflows", help="folder holding api/")
    args = ap.parse_args(argv)
    errors: list[str] = []
    n = build(args.workflows, node_classes, check=args.check, errors=errors)
    if errors:
        return 2
    return 1 if (args.check and n) else 0


if __name__ == "__main__":
    sys.exit(main())
