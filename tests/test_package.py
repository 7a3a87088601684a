"""The pack as ComfyUI sees it: a cheap, offline import and node classes that follow the pack's conventions.

The convention check runs over every node in NODE_CLASS_MAPPINGS, so it covers each role module as it lands;
each failure names the node id and what to fix.
"""
import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import interplay
from interplay.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS, graph

ROOT = Path(interplay.__file__).resolve().parent
NODE_ID = re.compile(r"^Interplay[A-Z][A-Za-z0-9]*$")
TYPE_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")

IMPORT_PROBE = r"""
import json, socket, sys
net = []
def deny(*a, **k):
    net.append(repr(a[:2]))
    raise OSError("network disabled by test_package")
socket.socket.connect = deny
socket.create_connection = deny
import torch, safetensors, safetensors.torch
made, loaded = [], []
_init = torch.nn.Module.__init__
def init(self, *a, **k):
    made.append(type(self).__name__)
    _init(self, *a, **k)
torch.nn.Module.__init__ = init
def record(fn):
    def wrapped(*a, **k):
        loaded.append(str(a[:1]))
        return fn(*a, **k)
    return wrapped
safetensors.safe_open = record(safetensors.safe_open)
safetensors.torch.load_file = record(safetensors.torch.load_file)
torch.load = record(torch.load)
import interplay
print(json.dumps({"net": net, "modules": made, "loaded": loaded, "nodes": len(interplay.NODE_CLASS_MAPPINGS),
                  "heavy": sorted(m for m in ("diffusers", "transformers", "peft", "sam2") if m in sys.modules)}))
"""


def test_import_is_offline_and_builds_no_model(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", IMPORT_PROBE], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["net"] == [], f"importing interplay opened network connections: {report['net']}"
    assert report["modules"] == [], f"importing interplay built torch modules: {report['modules'][:10]}"
    assert report["loaded"] == [], f"importing interplay read weights: {report['loaded']}"
    assert report["nodes"] == len(NODE_CLASS_MAPPINGS)
    assert not any(tmp_path.iterdir()), "importing interplay wrote files into the working directory"


def test_package_face():
    assert interplay.NODE_CLASS_MAPPINGS is NODE_CLASS_MAPPINGS
    assert interplay.NODE_DISPLAY_NAME_MAPPINGS is NODE_DISPLAY_NAME_MAPPINGS
    assert interplay.WEB_DIRECTORY == "./web"  # the folder ComfyUI serves the pack's JS from
    assert set(interplay.__all__) == {"NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"}


def _check_number(name, typ, opts):
    problems = []
    lo, hi, default = opts.get("min"), opts.get("max"), opts.get("default")
    if lo is not None and hi is not None and lo > hi:
        problems.append(f"input {name!r}: min {lo} > max {hi}")
    if default is not None:
        if (lo is not None and default < lo) or (hi is not None and default > hi):
            problems.append(f"input {name!r}: default {default} outside [{lo}, {hi}]")
        if typ == "INT" and not isinstance(default, int):
            problems.append(f"input {name!r}: INT default {default!r} is not an int")
    return problems


def node_problems(node_id: str, cls: type, display_names: dict) -> list[str]:
    """Everything about one node class that breaks the pack's conventions (empty when it follows them)."""
    p = []
    if not NODE_ID.match(node_id):
        p.append("id must be 'Interplay' + PascalCase")
    shown = display_names.get(node_id)
    if not isinstance(shown, str) or not shown.endswith(" (Interplay)"):
        p.append(f"display name {shown!r} must exist in NODE_DISPLAY_NAME_MAPPINGS and end with ' (Interplay)'")
    category = getattr(cls, "CATEGORY", None)
    if not isinstance(category, str) or not category.startswith("Interplay/") or category == "Interplay/":
        p.append(f"CATEGORY {category!r} must be 'Interplay/<role>'")
    desc = getattr(cls, "DESCRIPTION", None)
    if not isinstance(desc, str) or not desc.strip():
        p.append("DESCRIPTION missing or empty")
    func = getattr(cls, "FUNCTION", None)
    if not isinstance(func, str) or not callable(getattr(cls, func, None)):
        p.append(f"FUNCTION {func!r} does not name a method of the class")
        func = None
    rtypes = getattr(cls, "RETURN_TYPES", None)
    if not isinstance(rtypes, tuple):
        p.append(f"RETURN_TYPES must be a tuple, got {rtypes!r}")
        rtypes = ()
    for t in rtypes:
        if not (isinstance(t, (list, tuple)) or (isinstance(t, str) and (t == "*" or TYPE_NAME.match(t)))):
            p.append(f"return type {t!r} is not an upper-case type name")
    for attr in ("RETURN_NAMES", "OUTPUT_TOOLTIPS", "OUTPUT_IS_LIST"):
        val = getattr(cls, attr, None)
        if val is not None and len(val) != len(rtypes):
            p.append(f"{attr} has {len(val)} entries, RETURN_TYPES {len(rtypes)}")
    if not rtypes and getattr(cls, "OUTPUT_NODE", False) is not True:
        p.append("no RETURN_TYPES and not an OUTPUT_NODE: the node could never run")
    try:
        spec = cls.INPUT_TYPES()
    except Exception as ex:  # noqa: BLE001 - report, don't crash the whole check
        return p + [f"INPUT_TYPES() raised {type(ex).__name__}: {ex}"]
    params = None
    if func is not None:
        sig = inspect.signature(getattr(cls, func))
        if not any(v.kind is v.VAR_KEYWORD for v in sig.parameters.values()):
            params = set(sig.parameters)
    for cat in ("required", "optional"):
        for name, s in (spec.get(cat) or {}).items():
            typ, opts = graph._spec_type_options(s)
            if not str(opts.get("tooltip", "")).strip():
                p.append(f"input {name!r} has no tooltip")
            if params is not None and name not in params:
                p.append(f"input {name!r} is not a parameter of {func}()")
            if typ in ("INT", "FLOAT"):
                p += _check_number(name, typ, opts)
            if isinstance(typ, (list, tuple)) and typ and "default" in opts and opts["default"] not in typ:
                p.append(f"input {name!r}: default {opts['default']!r} is not one of its choices")
            if isinstance(typ, str) and not (typ == "*" or TYPE_NAME.match(typ) or "," in typ):
                p.append(f"input {name!r}: type {typ!r} is not an upper-case type name")
    if params is not None:
        required = {n for n in spec.get("required") or {}}
        extra = {n for n, v in inspect.signature(getattr(cls, func)).parameters.items()
                 if n != "self" and v.default is inspect.Parameter.empty and v.kind is not v.VAR_POSITIONAL}
        hidden = set(spec.get("hidden") or {})
        if extra - required - hidden:
            p.append(f"{func}() requires {sorted(extra - required - hidden)}, which are not required inputs")
    return p


def _ui_round_trip_problems(node_id: str, cls: type) -> list[str]:
    """The node survives api_to_ui -> ui_to_api with its widget defaults (the frontend layout of its widgets)."""
    widgets = {n: graph._widget_default(s) for n, s in graph._widget_inputs(cls)}
    prompt = {"1": {"class_type": node_id, "inputs": dict(widgets)}}
    try:
        back = graph.ui_to_api(json.loads(json.dumps(graph.api_to_ui(prompt, {node_id: cls}))), {node_id: cls})
    except Exception as ex:  # noqa: BLE001
        return [f"UI conversion raised {type(ex).__name__}: {ex}"]
    if back["1"]["inputs"] != widgets:
        return [f"widgets do not survive the UI round trip: {widgets} -> {back['1']['inputs']}"]
    return []


def test_every_node_follows_conventions():
    problems = []
    for node_id, cls in sorted(NODE_CLASS_MAPPINGS.items()):
        for msg in node_problems(node_id, cls, NODE_DISPLAY_NAME_MAPPINGS) + _ui_round_trip_problems(node_id, cls):
            problems.append(f"{node_id} ({cls.__module__}): {msg}")
    stray = set(NODE_DISPLAY_NAME_MAPPINGS) - set(NODE_CLASS_MAPPINGS)
    problems += [f"{k}: display name without a node class" for k in sorted(stray)]
    assert not problems, "\n".join(problems)


class _GoodNode:
    CATEGORY, FUNCTION, DESCRIPTION = "Interplay/video", "run", "Does one thing."
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("frames",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"frames": ("IMAGE", {"tooltip": "video frames"}),
                             "seed": ("INT", {"default": 0, "min": 0, "max": 2**32 - 1, "tooltip": "noise seed"}),
                             "mode": (["a", "b"], {"default": "b", "tooltip": "mode"})},
                "optional": {"strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0, "tooltip": "how much"})},
                "hidden": {"unique_id": "UNIQUE_ID"}}

    def run(self, frames, seed, mode, strength=1.0, unique_id=None):
        return (frames,)


class _BadNode:
    CATEGORY, FUNCTION = "video", "go"
    RETURN_TYPES = ("IMAGE", "mask")
    RETURN_NAMES = ("frames",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"frames": ("IMAGE",),
                             "steps": ("INT", {"default": 0, "min": 1, "max": 10, "tooltip": "steps"}),
                             "mode": (["a", "b"], {"default": "c", "tooltip": "mode"})}}

    def go(self, frames, steps, mode, other):
        return (frames, None)


def test_convention_checker_names_each_problem():
    assert node_problems("InterplayGoodNode", _GoodNode, {"InterplayGoodNode": "Good Node (Interplay)"}) == []
    assert _ui_round_trip_problems("InterplayGoodNode", _GoodNode) == []
    found = node_problems("bad_node", _BadNode, {"bad_node": "Bad node"})
    expected = ["id must be 'Interplay' + PascalCase", "display name 'Bad node'", "CATEGORY 'video'",
                "DESCRIPTION missing", "return type 'mask'", "RETURN_NAMES has 1 entries, RETURN_TYPES 2",
                "input 'frames' has no tooltip", "input 'steps': default 0 outside [1, 10]",
                "input 'mode': default 'c' is not one of its choices", "go() requires ['other']"]
    assert [e for e in expected if not any(e in f for f in found)] == [], found
    assert len(found) == len(expected), found


def test_package_data_ships_the_demo_model_and_workflows():
    """A non-editable install (ComfyUI-Manager, pip install .) must carry every data file the pack reads: the
    demo model folder, the branch file, both workflow formats and the web widget."""
    import fnmatch
    import tomllib

    root = Path(interplay.__file__).parent
    st = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    cfg, packages = st["package-data"], set(st["packages"])
    wanted = [p for p in (root / "models" / "demo").rglob("*") if p.is_file() and p.suffix != ".py"
              and "__pycache__" not in p.parts]
    wanted += list((root / "workflows").rglob("*.json")) + [p for p in (root / "web").rglob("*") if p.is_file()]
    assert any(p.suffix == ".safetensors" for p in wanted)
    for p in wanted:
        parts = p.relative_to(root).parent.parts
        # the file belongs to the deepest listed package that contains it; its globs are relative to that folder
        k = next(k for k in range(len(parts), -1, -1) if ".".join(("interplay",) + parts[:k]) in packages)
        pkg = ".".join(("interplay",) + parts[:k])
        rel = p.relative_to(root.joinpath(*parts[:k])).as_posix()
        assert pkg in cfg, f"{rel}: package {pkg} has no package-data"
        assert any(fnmatch.fnmatch(rel, g) for g in cfg[pkg]), f"{rel} is not in {pkg} package-data {cfg[pkg]}"


def _combo_choices(models_root) -> dict:
    from interplay.models import runtime

    runtime.set_models_root(models_root)
    out = {}
    for node_id, cls in NODE_CLASS_MAPPINGS.items():
        it = cls.INPUT_TYPES()
        for cat in ("required", "optional"):
            for name, spec in (it.get(cat) or {}).items():
                if isinstance(spec[0], (list, tuple)):
                    out[(node_id, name)] = (list(spec[0]), spec[1] if len(spec) > 1 else {})
    return out


def test_every_model_combo_names_its_folder(tmp_path):
    # A combo whose choices come from a model folder (they change when a file appears there, and only there)
    # declares that folder, so an empty or wrong choice is reported with the folder's full path.
    from interplay.models import runtime

    empty = _combo_choices(tmp_path / "empty")
    found, problems = set(), []
    for kind in runtime.MODEL_FOLDERS:
        root = tmp_path / kind
        (root / kind / "probe_svd_cogvideox_tiny").mkdir(parents=True)  # folder entries (diffusers)
        for ext in (".safetensors", ".pt"):
            (root / kind / f"probe_svd{ext}").write_bytes(b"")
        for key, (choices, opts) in _combo_choices(root).items():
            if choices != empty[key][0]:
                found.add(key)
                declared = opts.get("model_folder")
                if kind not in ([declared] if isinstance(declared, str) else list(declared or [])):
                    problems.append(f"{key}: lists {kind}/ but declares model_folder={opts.get('model_folder')!r}")
    assert {("InterplaySam2Loader", "weights"), ("InterplaySVDLoader", "model")} <= found
    assert not problems, "\n".join(problems)
    # end to end: the SAM2 loader with nothing in models/sam2 names that folder by its full path
    runtime.set_models_root(tmp_path / "empty")
    prompt = {"1": {"class_type": "InterplaySam2Loader", "inputs": {"weights": "sam2.1_hiera_tiny.safetensors"}}}
    errors = [e for e in graph.validate(prompt, NODE_CLASS_MAPPINGS, targets=["1"])
              if e["extra_info"].get("input_name") == "weights"]
    assert errors and str(tmp_path / "empty" / "sam2") in errors[0]["details"]


def test_license_is_an_spdx_expression():
    # setuptools deprecates the TOML-table form (a warning on every install, an error from 2027-02); the string
    # form needs setuptools >= 77 (PEP 639)
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the test extra's tomli
        import tomli as tomllib

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["license"] == "Apache-2.0"
    assert "setuptools>=77" in meta["build-system"]["requires"]
