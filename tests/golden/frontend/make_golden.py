#!/usr/bin/env python
"""Write the golden files of this folder with a real ComfyUI and its frontend in headless Chromium (not CI).

    python tests/golden/frontend/make_golden.py /path/to/ComfyUI     # or COMFYUI_DIR=...

Same requirements as scripts/check_frontend.py (whose server and browser helpers it uses). ComfyUI runs with the
pack and the test-only nodes of nodes/ in a temporary base directory. For each graph below the frontend itself
builds the graph and serialises it; this script only stores what the page returns:

- ``<name>.twin.json``: the API prompt handed to the frontend (``app.loadApiJson``, the frontend's own importer:
  LiteGraph.createNode, widget values by name, connect); for the shipped workflows a copy of workflows/api/;
- ``<name>.ui.json``: ``app.graph.serialize()``, what the frontend's Save writes, after the one user action the
  script takes: every control_after_generate widget set to "fixed" (loadApiJson leaves "randomize");
- ``<name>.export.json`` and ``<name>.api.json``: ``app.graphToPrompt()``'s ``workflow`` (what Export writes: the
  unlinked widget slots dropped) and ``output`` (the prompt the frontend queues);
- ``golden_virtual.*``: a graph built in the page with the frontend's API (createNode, widget values, connect)
  holding a PrimitiveNode, a legacy Reroute, a bypassed and a muted node (no twin: it has no API form);
- ``object_info.json``: the server's definitions of every node class used, so the test reads the files with the
  definitions the frontend saw, whatever the nodes become later;
- ``versions.json``: ComfyUI, frontend and Python versions.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]

# Test-only nodes through loadApiJson: every widget layout the shipped workflows do not have (combo control and
# filter list, a seed control turned off, the image upload button, COMBO-typed options, links into widgets).
GOLDEN_NODES = {
    "1": {"class_type": "GoldenControls", "_meta": {"title": "Controls"},
          "inputs": {"noise_seed": 123, "count": 5, "choice": "gamma", "ratio": 0.25, "text": "a\nb", "flag": False,
                     "seed": 99, "mode": "x"}},
    "2": {"class_type": "GoldenText", "inputs": {"value": "from text"}},
    "3": {"class_type": "GoldenMedia", "inputs": {"golden": ["1", 1], "image": "b.png", "scale": 2.5,
                                                  "steps": ["1", 0]}},
    "4": {"class_type": "GoldenSink", "inputs": {"golden": ["3", 0], "label": ["2", 0], "n": ["1", 0],
                                                 "note": "end"}},
}

FIX_CONTROLS_JS = """() => {
  for (const node of app.graph.nodes)
    for (const w of node.widgets || [])
      if (w.linkedWidgets?.length) w.linkedWidgets[0].value = "fixed";
}"""

# As text, the way Save, Export and the queue request write them (JSON.stringify drops undefined fields).
SAVE_JS = """async () => {
  const p = await app.graphToPrompt();
  return {ui: JSON.stringify(app.graph.serialize()), export: JSON.stringify(p.workflow),
          api: JSON.stringify(p.output)};
}"""

VIRTUAL_JS = """() => {
  const g = app.graph; g.clear();
  const add = (type, id, mode) => { const n = LiteGraph.createNode(type); n.id = id; g.add(n);
                                     if (mode) n.mode = mode; return n; };
  const w = (n, name) => n.widgets.find(x => x.name === name);
  const slot = (n, name) => n.inputs.findIndex(i => i.name === name);
  const c = add("GoldenControls", 1), t = add("GoldenText", 2), m = add("GoldenMedia", 3);
  const s = add("GoldenSink", 5), p = add("PrimitiveNode", 6), r = add("Reroute", 7);
  const b = add("GoldenMedia", 8, 4 /* bypass */), u = add("GoldenSink", 9, 2 /* mute */);
  m.title = "Media (titled)";
  w(c, "noise_seed").value = 77; w(c, "choice").value = "alpha"; w(c, "text").value = "one";
  w(m, "image").value = "a.png"; w(m, "label").value = "media label";
  w(t, "value").value = "text out";
  c.connect(1, m, slot(m, "golden"));
  m.connect(0, r, 0); r.connect(0, s, slot(s, "golden"));
  t.connect(0, s, slot(s, "label"));
  c.connect(0, s, slot(s, "n"));
  p.connect(0, m, slot(m, "steps"));
  p.widgets[0].value = 9;
  m.connect(0, b, slot(b, "golden")); b.connect(0, s, slot(s, "more"));
  m.connect(0, u, slot(u, "golden")); t.connect(0, u, slot(u, "label"));
  for (const node of g.nodes)
    for (const x of node.widgets || [])
      if (x.linkedWidgets?.length) x.linkedWidgets[0].value = "fixed";
}"""


def _harness():
    spec = importlib.util.spec_from_file_location("check_frontend", ROOT / "scripts" / "check_frontend.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _write(name: str, data) -> None:
    (HERE / name).write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("comfyui", nargs="?", default=os.environ.get("COMFYUI_DIR"))
    ap.add_argument("--python", default=sys.executable, help="Python that runs ComfyUI (default: this one)")
    ap.add_argument("--chromium", default=os.environ.get("CHROMIUM", "/usr/bin/chromium"))
    args = ap.parse_args(argv)
    if not args.comfyui or not (Path(args.comfyui) / "main.py").is_file():
        ap.error("give the ComfyUI folder (holding main.py) as an argument or in COMFYUI_DIR")
    cf = _harness()
    work = Path(tempfile.mkdtemp(prefix="interplay-golden-"))
    base = work / "base"
    # No input files: with the driving video present the frontend adds a "video-preview" widget once the video
    # has loaded in the page, and graphToPrompt then sends it (ComfyUI ignores it) depending on timing.
    graphs = {p.stem: json.loads(p.read_text()) for p in sorted((ROOT / "workflows" / "api").glob("*.json"))}
    graphs["golden_nodes"] = GOLDEN_NODES
    used: set[str] = set()
    with cf.comfyui(Path(args.comfyui).resolve(), base, args.python, cf.free_port(),
                    extra_nodes={"interplay_golden_nodes": HERE / "nodes"}) as url:
        with cf.frontend(url, args.chromium, work / "chromium") as page:
            for name, twin in graphs.items():
                page.evaluate("([api, name]) => app.loadApiJson(api, name)", [twin, f"{name}.json"])
                page.evaluate(FIX_CONTROLS_JS)
                saved = {k: json.loads(v) for k, v in page.evaluate(SAVE_JS).items()}
                _write(f"{name}.twin.json", twin)
                for kind in ("ui", "export", "api"):
                    _write(f"{name}.{kind}.json", saved[kind])
                used |= {n["type"] for n in saved["ui"]["nodes"]}
                print(f"wrote {name}.{{twin,ui,export,api}}.json")
            page.evaluate(VIRTUAL_JS)
            saved = {k: json.loads(v) for k, v in page.evaluate(SAVE_JS).items()}
            for kind in ("ui", "export", "api"):
                _write(f"golden_virtual.{kind}.json", saved[kind])
            used |= {n["type"] for n in saved["ui"]["nodes"]}
            print("wrote golden_virtual.{ui,export,api}.json")
            info = cf.http_json(f"{url}/object_info", timeout=60)
            _write("object_info.json", {k: info[k] for k in sorted(used) if k in info})
            stats = cf.http_json(f"{url}/system_stats")["system"]
            _write("versions.json", {"comfyui": stats.get("comfyui_version"),
                                     "frontend": page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__"),
                                     "python": stats.get("python_version", "").split()[0]})
            if page.console_errors:  # 1.27.10 logs one from its settings store while starting
                print("page errors: " + "; ".join(page.console_errors))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
