"""Headless graph runner: `interplay run WORKFLOW.json` executes a ComfyUI workflow without ComfyUI.

Both of ComfyUI's formats are read:

- the API format, ``{id: {"class_type": ..., "inputs": {name: value | [src_id, output_index]}}}``;
- the UI format the frontend saves (``nodes`` with positional ``widgets_values``, ``links``), converted the
  way the frontend's ``graphToPrompt`` does: widgets are matched in INPUT_TYPES order (required, then
  optional), a seed widget is followed by its ``control_after_generate`` value, muted nodes (mode 2) are
  dropped, bypassed nodes (mode 4) pass a same-typed input through, Reroute and PrimitiveNode are resolved,
  Note/MarkdownNote and groups are ignored.

Validation mirrors ComfyUI's /prompt (``execution.validate_prompt``): errors are dicts with ``type``,
``message``, ``details`` and ``extra_info.input_name``, plus the ``node_id`` and ``class_type`` they belong to;
``prompt_response(errors)`` builds /prompt's ``{"error", "node_errors"}`` body. Only the nodes an output node
depends on are validated and run, in dependency order; nothing executes when validation fails.

Public API: load_workflow, ui_to_api, api_to_ui, validate, execute, format_errors, cli_main.
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

from ..models import runtime

WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
SEED_NAMES = ("seed", "noise_seed")  # INT inputs the frontend gives a control widget unless told not to
# Options that make the frontend (Comfy.UploadImage) append an upload button to a node whose *required* inputs
# include such a combo; the button's saved value is always "image", video uploads included.
UPLOAD_OPTIONS = ("image_upload", "video_upload", "animated_image_upload")
UPLOAD_WIDGET, UPLOAD_VALUE = "upload", "image"
IGNORED_UI_NODES = ("Note", "MarkdownNote")
VIRTUAL_UI_NODES = ("Reroute", "PrimitiveNode") + IGNORED_UI_NODES
MODE_MUTED, MODE_BYPASS = 2, 4


class WorkflowError(ValueError):
    """A workflow file that cannot be read or converted (bad JSON, unknown layout)."""


class ValidationFailed(ValueError):
    """Raised by execute() when the prompt does not validate; ``.errors`` holds the /prompt-shaped list."""

    def __init__(self, errors: list[dict]):
        self.errors = errors
        super().__init__(format_errors(errors))


class NodeExecutionError(RuntimeError):
    """A node raised while running; names the node id, class and the original exception."""

    def __init__(self, node_id: str, class_type: str, exc: BaseException):
        self.node_id, self.class_type, self.original = node_id, class_type, exc
        super().__init__(f"node {node_id} ({class_type}) failed: {type(exc).__name__}: {exc}")


class Outputs(dict):
    """execute()'s result: node id -> tuple of that node's outputs (a slot is a list when the node ran over
    a list or declares OUTPUT_IS_LIST); ``.ui`` maps output node ids to the ``ui`` dict they returned."""

    def __init__(self):
        super().__init__()
        self.ui: dict[str, dict] = {}


# ------------------------------------------------------------------------------------ input specs
def _default_classes() -> Mapping[str, type]:
    from . import NODE_CLASS_MAPPINGS

    return NODE_CLASS_MAPPINGS


def _input_types(cls: type) -> dict:
    spec = cls.INPUT_TYPES() or {}
    return {k: dict(spec.get(k) or {}) for k in ("required", "optional", "hidden")}


def _spec_type_options(spec: tuple | list) -> tuple[Any, dict]:
    typ = spec[0]
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if typ == "COMBO" and "options" in opts:  # newer string-typed combo declaration
        typ = list(opts["options"])
    return typ, opts


def _is_widget(spec) -> bool:
    typ, opts = _spec_type_options(spec)
    if opts.get("forceInput"):
        return False
    return isinstance(typ, (list, tuple)) or typ in WIDGET_TYPES


def _control_kind(name: str, spec) -> str | None:
    """What the frontend adds after this input's widget: "int" (a control_after_generate combo), "combo" (the
    combo and its filter-list text widget) or None. INT: the option, or by name (seed, noise_seed) when the
    option is absent (useIntWidget's ``control_after_generate ?? name in [...]``); COMBO: only the option."""
    typ, opts = _spec_type_options(spec)
    if isinstance(typ, (list, tuple)):
        return "combo" if opts.get("control_after_generate") else None
    if typ == "INT":
        flag = opts.get("control_after_generate")
        return "int" if (name in SEED_NAMES if flag is None else flag) else None
    return None


def _has_upload(cls: type) -> bool:
    """The frontend appends its upload button (Comfy.UploadImage) for the first required media combo."""
    for spec in _input_types(cls)["required"].values():
        raw = spec[0] if isinstance(spec, (tuple, list)) and spec else None
        opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
        if (isinstance(raw, (list, tuple)) or raw == "COMBO") and any(opts.get(k) is True for k in UPLOAD_OPTIONS):
            return True
    return False


def _widget_inputs(cls: type) -> list[tuple[str, tuple]]:
    """(name, spec) of every input the frontend draws as a widget, in the frontend's order."""
    it = _input_types(cls)
    return [(n, s) for cat in ("required", "optional") for n, s in it[cat].items() if _is_widget(s)]


def _widget_layout(cls: type) -> list[tuple[str, str, Any]]:
    """The frontend's ``node.widgets`` for a class, i.e. the slots of ``widgets_values``, in order:
    (kind, input name, spec) with kind "value" (an input's own widget), "control" (its control_after_generate
    combo), "filter" (a combo control's filter list) or "upload" (the upload button, after every input's
    widgets: it is not in the server's input_order, so getOrderedInputSpecs puts it last)."""
    layout = []
    for name, spec in _widget_inputs(cls):
        layout.append(("value", name, spec))
        kind = _control_kind(name, spec)
        if kind:
            layout.append(("control", name, spec))
        if kind == "combo":
            layout.append(("filter", name, spec))
    if _has_upload(cls):
        layout.append(("upload", UPLOAD_WIDGET, None))
    return layout


def _type_name(typ) -> str:
    return "COMBO" if isinstance(typ, (list, tuple)) else str(typ)


def _widget_default(spec):
    """The value a new widget starts with in the frontend: ``default`` (a combo's only when truthy, else its
    first choice, else none), else 0 / 0.0 / "" / False (the INT/FLOAT constructors ignore ``min``)."""
    typ, opts = _spec_type_options(spec)
    if isinstance(typ, (list, tuple)):
        return opts["default"] if opts.get("default") else (typ[0] if typ else None)
    if opts.get("default") is not None:
        return opts["default"]
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}.get(typ)


# ------------------------------------------------------------------------------------ loading
def _read_json(path: str | os.PathLike) -> Any:
    """A workflow file's JSON; a PNG saved by ComfyUI yields the workflow embedded in its metadata. Anything
    unreadable (not UTF-8, not JSON, nested too deep, a broken PNG) is a WorkflowError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"workflow file {str(path)!r} not found")
    if path.suffix.lower() == ".png":
        from PIL import Image

        try:
            with Image.open(path) as img:
                info = dict(img.info)
        except Exception as e:  # PIL raises several types for a broken image
            raise WorkflowError(f"{path}: not a readable PNG ({type(e).__name__}: {e})") from None
        text = info.get("workflow") or info.get("prompt")
        if not isinstance(text, str):
            raise WorkflowError(f"{path}: this PNG carries no ComfyUI workflow (no 'workflow' or 'prompt' text)")
    else:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise WorkflowError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); save the workflow again "
                                "from ComfyUI") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise WorkflowError(f"{path}: not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:
        raise WorkflowError(f"{path}: the JSON is nested too deeply to be a workflow") from None


def is_ui_workflow(data: Any) -> bool:
    return isinstance(data, dict) and isinstance(data.get("nodes"), list)


def load_workflow(path: str | os.PathLike, node_classes: Mapping[str, type] | None = None) -> dict:
    """Read a workflow file in either format and return the API prompt ``{id: {class_type, inputs}}``."""
    data = _read_json(path)
    return to_api(data, node_classes, source=str(path))


def to_api(data: Any, node_classes: Mapping[str, type] | None = None, source: str = "workflow") -> dict:
    if is_ui_workflow(data):
        return ui_to_api(data, node_classes)
    if isinstance(data, dict) and isinstance(data.get("prompt"), dict) and "nodes" not in data:
        data = data["prompt"]  # a saved /prompt request body
    if isinstance(data, dict) and data and all(isinstance(v, dict) for v in data.values()):
        for k, v in data.items():  # named errors with the JSON path, not a TypeError further down
            if not isinstance(v.get("class_type"), str):
                raise WorkflowError(f"{source}: [{str(k)!r}].class_type must be a node type name; got "
                                    f"{v.get('class_type')!r}")
            if not isinstance(v.get("inputs") or {}, dict):
                raise WorkflowError(f"{source}: [{str(k)!r}].inputs must be an object of input values; got "
                                    f"{type(v['inputs']).__name__} {_short(v['inputs'])}")
        return {str(k): dict(v, inputs=dict(v.get("inputs") or {})) for k, v in data.items()}
    raise WorkflowError(f"{source}: neither a UI workflow (a 'nodes' list) nor an API prompt "
                        "({id: {class_type, inputs}}); save it from ComfyUI with Save or Export (API)")


# ------------------------------------------------------------------------------------ UI -> API
def _short(value, n: int = 60) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


LINK_FIELDS = ("id", "origin_id", "origin_slot", "target_id", "target_slot", "type")


def _check_ui_structure(ui: dict) -> None:
    """Refuse a UI workflow whose shape the converter cannot read, with the JSON path of the first problem
    (``nodes[3].inputs``, ``links[2]``), so a malformed file is a WorkflowError and never a traceback."""
    def bad(where: str, expected: str, got) -> WorkflowError:
        return WorkflowError(f"{where} must be {expected}; got {type(got).__name__} {_short(got)}")

    if not isinstance(ui.get("definitions") or {}, dict):
        raise bad("definitions", "an object", ui["definitions"])
    id_types = set()
    for i, node in enumerate(ui["nodes"]):
        w = f"nodes[{i}]"
        if not isinstance(node, dict):
            raise bad(w, "an object", node)
        if "id" not in node:
            raise WorkflowError(f"{w} has no id; every node needs one (save the workflow again from ComfyUI)")
        if not isinstance(node["id"], (int, str)) or isinstance(node["id"], bool):
            raise bad(f"{w}.id", "a number", node["id"])
        id_types.add(type(node["id"]))
        if not isinstance(node.get("type"), str):
            raise bad(f"{w}.type", "a node type name", node.get("type"))
        for key, default in (("order", 0), ("mode", None)):  # order sorts the nodes; a null mode means 0
            v = node.get(key, default)
            if v is not default and (not isinstance(v, (int, float)) or isinstance(v, bool)):
                raise bad(f"{w}.{key}", "a number", v)
        if not isinstance(node.get("inputs") or [], list):
            raise bad(f"{w}.inputs", "a list of input sockets", node["inputs"])
        for k, inp in enumerate(node.get("inputs") or []):
            if not isinstance(inp, dict):
                raise bad(f"{w}.inputs[{k}]", "an object", inp)
            link = inp.get("link")
            if link is not None and (not isinstance(link, int) or isinstance(link, bool)):
                raise bad(f"{w}.inputs[{k}].link", "a link id (a number) or null", link)
            if not isinstance(inp.get("widget") or {}, dict):
                raise bad(f"{w}.inputs[{k}].widget", "an object", inp["widget"])
        values = node.get("widgets_values")
        if values is not None and not isinstance(values, (list, dict)) or \
                (node["type"] == "PrimitiveNode" and not isinstance(values or [], list)):
            raise bad(f"{w}.widgets_values", "a list of widget values", values)
    if len(id_types) > 1:
        raise WorkflowError("nodes[].id mixes numbers and strings; save the workflow again from ComfyUI")
    links = ui.get("links") or []
    if not isinstance(links, list):
        raise bad("links", "a list", links)
    for i, link in enumerate(links):
        w = f"links[{i}]"
        if isinstance(link, dict):
            vals = [link.get(k) for k in LINK_FIELDS[:5]]
        elif isinstance(link, list) and len(link) >= 5:
            vals = link[:5]
        else:
            raise bad(w, "[id, origin_id, origin_slot, target_id, target_slot, type] or an object with those keys",
                      link)
        for name, v in zip(LINK_FIELDS, vals):
            ok = isinstance(v, int) and not isinstance(v, bool) or (name in ("origin_id", "target_id")
                                                                     and isinstance(v, str))
            if not ok:
                raise bad(f"{w}.{name}", "a number", v)


def _ui_links(ui: dict) -> dict[int, dict]:
    links = {}
    for link in ui.get("links") or []:
        if isinstance(link, dict):  # schema 1 objects
            entry = {k: link.get(k) for k in ("id", "origin_id", "origin_slot", "target_id", "target_slot", "type")}
        else:  # schema 0.4 arrays [id, origin_id, origin_slot, target_id, target_slot, type]
            entry = dict(zip(("id", "origin_id", "origin_slot", "target_id", "target_slot", "type"), link))
        links[entry["id"]] = entry
    return links


def _assign_widgets(values: list, layout: list[tuple[str, str, Any]]) -> dict:
    """Give ``widgets_values`` to the layout's widgets by position, as the frontend's LGraphNode.configure does;
    only the inputs' own widgets become inputs (controls, filter lists and the upload button are client-only).
    Missing trailing values leave their widgets out; values past the layout are ignored."""
    return {name: v for (kind, name, _), v in zip(layout, values) if kind == "value"}


def _migrate_force_input(values: list, cls: type, layout: list[tuple[str, str, Any]]) -> list:
    """The frontend's migrateWidgetsValues: files saved when forceInput inputs still had widgets carry one value
    per such input; when the count says so, those values are dropped. The count and the pairing are the
    frontend's own (inputs in definition order, the upload button after the required ones, 2 per seed-like
    input, values paired with inputs one to one), quirks included, so a file reads as it loads there."""
    it = _input_types(cls)
    names = {name for _, name, _ in layout}
    defs = [(n, s) for n, s in it["required"].items()]
    if _has_upload(cls):
        defs.append((UPLOAD_WIDGET, ("IMAGEUPLOAD", {})))
    defs += list(it["optional"].items())
    force = [bool(_spec_type_options(s)[1].get("forceInput")) for _, s in defs]
    original = [(n, s, f) for (n, s), f in zip(defs, force) if n in names or f]
    if not any(force):
        return values
    count = sum(2 if (_spec_type_options(s)[1].get("control_after_generate") or n in SEED_NAMES) else 1
                for n, s, _ in original)
    if count != len(values):
        return values
    return [v for k, v in enumerate(values) if not (k < len(original) and original[k][2])]


def _widget_values(node: dict, cls: type) -> dict:
    values = node.get("widgets_values")
    layout = _widget_layout(cls)
    if isinstance(values, dict):  # some nodes save widgets by name
        return {name: values[name] for kind, name, _ in layout if kind == "value" and name in values}
    values = _migrate_force_input(list(values or []), cls, layout)
    # The frontend keeps a widget (and its value) when the widget is driven by a link, so values cover every
    # widget. Files written by tools that drop linked widgets (with their controls) are accepted only when
    # the positional reading does not fit the widgets' types and that one does.
    full = _assign_widgets(values, layout)
    if _plausible(full, layout):
        return full
    linked = {inp.get("name") for inp in node.get("inputs") or [] if inp.get("link") is not None}
    sparse = [slot for slot in layout if not (slot[0] in ("value", "control", "filter") and slot[1] in linked)]
    alt = _assign_widgets(values, sparse)
    if len(sparse) < len(layout) and len(values) == len(sparse) and _plausible(alt, sparse):
        return alt
    return full


def _plausible(assigned: dict, layout: list[tuple[str, str, Any]]) -> bool:
    """Every assigned value has its widget's JSON type (a combo takes any string)."""
    for kind, name, spec in layout:
        if kind != "value" or name not in assigned:
            continue
        v = assigned[name]
        typ, _ = _spec_type_options(spec)
        number = isinstance(v, (int, float)) and not isinstance(v, bool)
        if isinstance(typ, (list, tuple)):
            ok = v in typ or isinstance(v, str)
        else:
            ok = {"INT": number, "FLOAT": number, "BOOLEAN": isinstance(v, bool),
                  "STRING": isinstance(v, str)}.get(typ, True)
        if not ok:
            return False
    return True


def ui_to_api(ui: dict, node_classes: Mapping[str, type] | None = None) -> dict:
    """Convert a UI workflow (what the frontend saves) to an API prompt, like the frontend's graphToPrompt."""
    node_classes = _default_classes() if node_classes is None else node_classes
    _check_ui_structure(ui)
    if ui.get("definitions", {}).get("subgraphs"):
        raise WorkflowError("workflow uses subgraphs, which the headless runner does not expand; "
                            "unpack them in ComfyUI (right-click > Unpack Subgraph) and save again")
    nodes = {n["id"]: n for n in ui["nodes"]}
    links = _ui_links(ui)

    def input_link(node: dict, slot: int | str):
        inputs = node.get("inputs") or []
        slot = int(slot)
        if slot < 0 or slot >= len(inputs):
            return None
        lid = inputs[slot].get("link")
        return links.get(lid) if lid is not None else None

    def resolve(link: dict | None, want_type: str | None) -> tuple[str, Any]:
        """Follow a link upstream through Reroutes and bypassed nodes. Returns ("link", link),
        ("primitive", node), ("drop", None) when the source is removed (muted, or bypassed with no input of
        the wanted type: the input goes missing, as in the frontend) or ("none", None) for a dangling reroute."""
        seen = set()
        while link is not None:
            parent = nodes.get(link["origin_id"])
            if parent is None:
                return "link", link  # dangling: validation names the missing node
            if parent["id"] in seen:
                return "drop", None
            seen.add(parent["id"])
            ptype = parent.get("type")
            if ptype == "PrimitiveNode":
                return "primitive", parent
            if ptype in IGNORED_UI_NODES:
                return "drop", None
            if ptype == "Reroute":
                link = input_link(parent, 0)
                continue
            mode = parent.get("mode", 0)
            if mode == MODE_BYPASS:
                pinputs = parent.get("inputs") or []
                order = [int(link.get("origin_slot") or 0)] + list(range(len(pinputs)))
                k = next((k for k in order if k < len(pinputs) and want_type is not None
                          and pinputs[k].get("type") == want_type), None)
                if k is None:
                    return "drop", None
                link = input_link(parent, k)
                if link is None:
                    return "drop", None
                continue
            if mode == MODE_MUTED:
                return "drop", None
            return "link", link
        return "none", None

    prompt: dict[str, dict] = {}
    for node in sorted(ui["nodes"], key=lambda n: (n.get("order", 0), n["id"])):
        ntype = node.get("type")
        if ntype in VIRTUAL_UI_NODES or node.get("mode", 0) in (MODE_MUTED, MODE_BYPASS):
            continue
        cls = node_classes.get(ntype)
        inputs: dict[str, Any] = {}
        if cls is not None:
            # List values are wrapped, as the frontend does, so they are never read as links.
            inputs.update({k: {"__value__": v} if isinstance(v, list) else v
                           for k, v in _widget_values(node, cls).items()})
        for inp in node.get("inputs") or []:
            if inp.get("link") is None:
                continue
            name = inp.get("name") or (inp.get("widget") or {}).get("name")
            want = inp.get("type")
            kind, got = resolve(links.get(inp["link"]), want)
            if kind == "drop":
                inputs.pop(name, None)
            elif kind == "primitive":
                # The frontend copies a PrimitiveNode's value into the widget it drives before queueing.
                pvals = got.get("widgets_values") or []
                if pvals:
                    inputs[name] = pvals[0]
            elif kind == "link":
                inputs[name] = [str(got["origin_id"]), int(got.get("origin_slot") or 0)]
        entry = {"class_type": ntype, "inputs": inputs}
        title = node.get("title")
        entry["_meta"] = {"title": title if title else ntype}
        prompt[str(node["id"])] = entry
    return prompt


# ------------------------------------------------------------------------------------ API -> UI
def _depths(prompt: dict) -> dict[str, int]:
    depth: dict[str, int] = {}

    def visit(nid: str, stack: set) -> int:
        if nid in depth:
            return depth[nid]
        if nid in stack or nid not in prompt:
            return -1
        stack.add(nid)
        ups = [visit(str(v[0]), stack) for v in prompt[nid]["inputs"].values() if _is_link(v)]
        stack.discard(nid)
        depth[nid] = 1 + max(ups, default=-1)
        return depth[nid]

    for nid in prompt:
        visit(nid, set())
    return depth


def _node_size(n_sockets: int, layout: list[tuple[str, str, Any]]) -> list[int]:
    h = 26 + 22 * n_sockets
    for kind, _, spec in layout:
        multiline = kind == "value" and _spec_type_options(spec)[0] == "STRING" and \
            _spec_type_options(spec)[1].get("multiline")
        h += 90 if multiline else 26
    return [340, max(h, 60)]


def api_to_ui(prompt: dict, node_classes: Mapping[str, type] | None = None) -> dict:
    """Lay an API prompt out as a UI workflow the way the ComfyUI frontend (1.27) saves one (schema 0.4): every
    widget has an input slot, ``widgets_values`` follows the frontend's widget list (_widget_layout) with each
    control_after_generate at "fixed" so reruns reproduce; one column per dependency depth."""
    node_classes = _default_classes() if node_classes is None else node_classes
    ids = list(prompt)
    numeric = all(str(i).isdigit() for i in ids)
    uid = {nid: (int(nid) if numeric else k + 1) for k, nid in enumerate(ids)}
    depth = _depths(prompt)
    order = sorted(ids, key=lambda n: (depth.get(n, 0), uid[n]))
    col_y: dict[int, float] = {}
    ui_nodes, ui_links = [], []
    node_by_id: dict[str, dict] = {}

    for idx, nid in enumerate(order):
        entry = prompt[nid]
        ctype = entry["class_type"]
        cls = node_classes.get(ctype)
        if cls is None:
            raise WorkflowError(f"node {nid}: class_type {ctype!r} is not a node of this pack")
        it = _input_types(cls)
        layout = _widget_layout(cls)
        inputs = entry.get("inputs") or {}
        # Input slots as the frontend makes them: sockets first, then one slot per widget (the upload button
        # included), each in definition order; links point at these indices.
        sockets, widget_slots = [], []
        for cat in ("required", "optional"):
            for name, spec in it[cat].items():
                slot = {"name": name, "type": _type_name(_spec_type_options(spec)[0]), "link": None}
                if cat == "optional":
                    slot["shape"] = 7  # the frontend's hollow circle for optional inputs
                if _is_widget(spec):
                    widget_slots.append(dict(slot, widget={"name": name}))
                else:
                    sockets.append(slot)
        if _has_upload(cls):
            widget_slots.append({"name": UPLOAD_WIDGET, "type": "IMAGEUPLOAD", "link": None,
                                 "widget": {"name": UPLOAD_WIDGET}})
        ui_inputs = sockets + widget_slots
        values = []
        for kind, name, spec in layout:
            if kind == "value":
                val = inputs.get(name)
                if name not in inputs or _is_link(val):  # a linked widget keeps its own (default) value
                    val = _widget_default(spec)
                elif isinstance(val, dict) and "__value__" in val:
                    val = val["__value__"]
                values.append(val)
            else:  # "fixed": reruns reproduce; an empty filter list; the upload button's constant value
                values.append({"control": "fixed", "filter": "", "upload": UPLOAD_VALUE}[kind])
        rtypes = list(getattr(cls, "RETURN_TYPES", ()))
        rnames = list(getattr(cls, "RETURN_NAMES", None) or rtypes)
        is_list = list(getattr(cls, "OUTPUT_IS_LIST", None) or [False] * len(rtypes))
        ui_outputs = []
        for k, t in enumerate(rtypes):
            out = {"name": rnames[k], "type": _type_name(t), "links": None, "slot_index": k}
            if k < len(is_list) and is_list[k]:
                out["shape"] = 6
            ui_outputs.append(out)
        d = depth.get(nid, 0)
        size = _node_size(max(len(sockets), len(ui_outputs)), layout)
        y = col_y.get(d, 50.0)
        col_y[d] = y + size[1] + 60
        node = {"id": uid[nid], "type": ctype, "pos": [50 + 400 * d, y], "size": size, "flags": {},
                "order": idx, "mode": 0, "inputs": ui_inputs, "outputs": ui_outputs,
                "properties": {"Node name for S&R": ctype}, "widgets_values": values}
        title = (entry.get("_meta") or {}).get("title")
        if title and title != ctype:
            node["title"] = title
        node_by_id[nid] = node
        ui_nodes.append(node)

    link_id = 0
    for nid in order:
        node = node_by_id[nid]
        for inp in node["inputs"]:
            val = (prompt[nid].get("inputs") or {}).get(inp["name"])
            if not _is_link(val):
                continue
            src = node_by_id.get(str(val[0]))
            if src is None:
                raise WorkflowError(f"node {nid} input {inp['name']!r} links to node {val[0]}, "
                                    "which is not in the prompt")
            slot = int(val[1])
            if slot >= len(src["outputs"]):
                raise WorkflowError(f"node {nid} input {inp['name']!r} links to output {slot} of node "
                                    f"{val[0]}, which has {len(src['outputs'])} outputs")
            link_id += 1
            ltype = src["outputs"][slot]["type"]
            ui_links.append([link_id, src["id"], slot, node["id"], node["inputs"].index(inp), ltype])
            inp["link"] = link_id
            src["outputs"][slot]["links"] = (src["outputs"][slot]["links"] or []) + [link_id]
    ui_nodes.sort(key=lambda n: n["id"])
    return {"last_node_id": max((n["id"] for n in ui_nodes), default=0), "last_link_id": link_id,
            "nodes": ui_nodes, "links": ui_links, "groups": [], "config": {},
            "extra": {"ds": {"scale": 1.0, "offset": [0, 0]}}, "version": 0.4}


# ------------------------------------------------------------------------------------ validation
def _is_link(value: Any) -> bool:
    return (isinstance(value, list) and len(value) == 2 and isinstance(value[0], (str, int))
            and not isinstance(value[0], bool) and isinstance(value[1], int) and not isinstance(value[1], bool))


def types_match(received: str, expected: str) -> bool:
    """Output type vs input type: equal, either "*", or overlapping comma-separated unions."""
    if received == expected or received == "*" or expected == "*":
        return True
    if not isinstance(received, str) or not isinstance(expected, str):
        return False
    a = {t.strip() for t in received.split(",")}
    b = {t.strip() for t in expected.split(",")}
    return bool(a & b) or "*" in a or "*" in b


def _err(kind: str, message: str, details: str, node_id=None, class_type=None, **extra) -> dict:
    return {"type": kind, "message": message, "details": details, "extra_info": extra,
            "node_id": None if node_id is None else str(node_id), "class_type": class_type}


def output_nodes(prompt: dict, node_classes: Mapping[str, type]) -> list[str]:
    return [nid for nid, e in prompt.items()
            if getattr(node_classes.get(e.get("class_type")), "OUTPUT_NODE", False) is True]


def _needed(prompt: dict, outputs: Iterable[str]) -> list[str]:
    """Node ids the outputs depend on (outputs included), in a stable dependency order; cycles left out."""
    state: dict[str, int] = {}
    order: list[str] = []

    def key(n):
        return (0, int(n), "") if str(n).isdigit() else (1, 0, str(n))

    def visit(nid: str):
        if state.get(nid) == 2 or nid not in prompt:
            return
        if state.get(nid) == 1:
            raise _Cycle(nid)
        state[nid] = 1
        ups = sorted({str(v[0]) for v in prompt[nid]["inputs"].values() if _is_link(v)}, key=key)
        for up in ups:
            visit(up)
        state[nid] = 2
        order.append(nid)

    for o in sorted(outputs, key=key):
        visit(o)
    return order


class _Cycle(Exception):
    pass


def _model_folder_hint(name: str, opts: dict) -> str:
    """Where an empty model combo's files go: its ``model_folder`` (one kind, or a list of kinds), full paths."""
    kinds = opts.get("model_folder") or opts.get("folder")
    if kinds:
        kinds = [kinds] if isinstance(kinds, str) else list(kinds)
        parts = []
        for kind in kinds:
            try:
                where = ", ".join(str(p) for p in runtime.model_folders(kind))
            except ValueError:
                where = kind
            parts.append(f"the {kind} model folder ({where})")
        return f"; the choices are the files in {' and '.join(parts)}: put the file there"
    return (f"; if this is a model file, put it in the model folder this input lists (models root "
            f"{runtime.models_root()}, set with --models-dir)")


def _coerce(typ, value):
    if typ == "INT":
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"{value} is not a whole number")
        return int(value)
    if typ == "FLOAT":
        return float(value)
    if typ == "STRING":
        return str(value)
    if typ == "BOOLEAN":
        if isinstance(value, str):
            if value.lower() in ("true", "1", "yes"):
                return True
            if value.lower() in ("false", "0", "no"):
                return False
            raise ValueError(f"{value!r} is not true/false")
        return bool(value)
    return value


def _finite(value) -> bool:
    """False for NaN and +-inf, also when given as text ("nan", "inf"); other values are left to _coerce."""
    import math

    try:
        return math.isfinite(float(value)) if isinstance(value, (int, float, str)) else True
    except (ValueError, OverflowError):
        return True


def _validate_node(prompt: dict, nid: str, node_classes: Mapping[str, type]) -> list[dict]:
    entry = prompt[nid]
    ctype = entry["class_type"]
    cls = node_classes[ctype]
    it = _input_types(cls)
    inputs = entry["inputs"]
    errors = []
    E = lambda kind, msg, det, **kw: errors.append(_err(kind, msg, det, nid, ctype, **kw))  # noqa: E731
    vfunc = getattr(cls, "VALIDATE_INPUTS", None)
    vargs: list[str] = []
    vkw = False
    if vfunc is not None:
        spec = inspect.getfullargspec(vfunc)
        vargs, vkw = [a for a in spec.args if a not in ("cls", "self", "s")], spec.varkw is not None
    received_types = {}
    for cat in ("required", "optional"):
        for name, spec in it[cat].items():
            typ, opts = _spec_type_options(spec)
            expected = _type_name(typ)
            if name not in inputs:
                if cat == "required":
                    E("required_input_missing", "Required input is missing",
                      f"{name} (expected {expected}): connect it or give it a value", input_name=name)
                continue
            val = inputs[name]
            if isinstance(val, list) and not _is_link(val):
                E("bad_linked_input", "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                  f"{name}: got {val!r}", input_name=name, received_value=val)
                continue
            if _is_link(val):
                src_id, slot = str(val[0]), val[1]
                if src_id not in prompt:
                    E("bad_linked_input", "Input is linked to a node that is not in the workflow",
                      f"{name}: linked to node {src_id}, which does not exist (expected a {expected} output)",
                      input_name=name, linked_node=val)
                    continue
                src_cls = node_classes.get(prompt[src_id]["class_type"])
                rtypes = list(getattr(src_cls, "RETURN_TYPES", ()))
                if not 0 <= slot < len(rtypes):
                    E("bad_linked_input", "Input is linked to an output index that does not exist",
                      f"{name}: linked to output {slot} of node {src_id} "
                      f"({prompt[src_id]['class_type']}), which has {len(rtypes)} output(s); "
                      f"expected a {expected} output", input_name=name, linked_node=val)
                    continue
                received = _type_name(rtypes[slot])
                received_types[name] = received
                if "input_types" not in vargs and not types_match(received, expected):
                    E("return_type_mismatch", "Return type mismatch between linked nodes",
                      f"{name}, received_type({received}) mismatch input_type({expected}): node {src_id} "
                      f"output {slot} gives {received}, this input expects {expected}",
                      input_name=name, received_type=received, linked_node=val)
                continue
            wrapped = isinstance(val, dict) and "__value__" in val
            if wrapped:
                val = val["__value__"]
            if typ in ("INT", "FLOAT") and not _finite(val):  # NaN passes every min/max comparison
                E("value_not_finite", "Value is not a finite number",
                  f"{name}: got {val!r}; expected a finite {expected}", input_name=name, received_value=str(val))
                continue
            try:
                val = _coerce(typ, val)
            except (TypeError, ValueError) as ex:
                E("invalid_input_type", f"Failed to convert an input value to a {expected} value",
                  f"{name}, {val!r}, {ex}", input_name=name, received_value=val)
                continue
            if not wrapped:  # a wrapped list stays wrapped: a bare 2-list would read as a link
                inputs[name] = val
            if name in vargs or vkw:
                continue  # the node validates this input itself, as in ComfyUI
            if typ in ("INT", "FLOAT"):
                lo, hi = opts.get("min"), opts.get("max")
                if lo is not None and val < lo:
                    E("value_smaller_than_min", f"Value {val} smaller than min of {lo}",
                      f"{name}: expected {expected} in [{lo}, {hi if hi is not None else 'inf'}], got {val}",
                      input_name=name, received_value=val)
                    continue
                if hi is not None and val > hi:
                    E("value_bigger_than_max", f"Value {val} bigger than max of {hi}",
                      f"{name}: expected {expected} in [{lo if lo is not None else '-inf'}, {hi}], got {val}",
                      input_name=name, received_value=val)
                    continue
                step = opts.get("step")
                if typ == "INT" and isinstance(step, int) and step > 1:
                    # On the grid from min or from 0: frontends have snapped INT widgets both ways.
                    base = lo if lo is not None else 0
                    if (val - base) % step and val % step:
                        E("value_not_on_step", f"Value {val} is not on the step of {step}",
                          f"{name}: expected {base} + a multiple of {step}, got {val}",
                          input_name=name, received_value=val)
                        continue
            if isinstance(typ, (list, tuple)) and val not in typ:
                shown = str(list(typ)) if len(typ) <= 20 else f"(list of length {len(typ)})"
                if not typ:
                    det = f"{name}: {val!r} not in [] (no choices available{_model_folder_hint(name, opts)})"
                else:
                    det = f"{name}: {val!r} not in {shown}"
                E("value_not_in_list", "Value not in list", det, input_name=name, received_value=val)
    if errors or vfunc is None:
        return errors
    call = {k: v["__value__"] if isinstance(v, dict) and "__value__" in v else v
            for k, v in inputs.items() if (k in vargs or vkw) and not _is_link(v)}
    if "input_types" in vargs:
        call["input_types"] = received_types
    try:
        ret = vfunc(**call)  # ComfyUI calls it on the class: a classmethod, or a plain function without self
    except Exception as ex:  # a VALIDATE_INPUTS that raises is a validation failure, not a crash
        ret = f"{type(ex).__name__}: {ex}"
    if ret is not True:
        names = ", ".join(k for k in call if k != "input_types") or "inputs"
        E("custom_validation_failed", "Custom validation failed for node",
          names + ("" if ret is False else f" - {ret}"), input_name=names)
    return errors


def validate(prompt: dict, node_classes: Mapping[str, type] | None = None,
             targets: Iterable[str] | None = None) -> list[dict]:
    """Check a prompt like ComfyUI's /prompt; returns a list of errors (empty when valid).

    Each error: {type, message, details, extra_info: {input_name, ...}, node_id, class_type}. Widget
    values are converted to their declared type in place (INT/FLOAT/STRING/BOOLEAN), as ComfyUI does.
    ``targets`` (node ids) replaces the OUTPUT_NODE nodes as the ends of the graph (partial execution).
    """
    node_classes = _default_classes() if node_classes is None else node_classes
    if not isinstance(prompt, dict):
        return [_err("invalid_prompt", "Prompt must be an object of nodes", type(prompt).__name__)]
    errors: list[dict] = []
    for nid, entry in prompt.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("class_type"), str):
            errors.append(_err("invalid_prompt", "Cannot execute because a node is missing the class_type "
                               "property.", f"Node ID '#{nid}'", nid))
            continue
        if not isinstance(entry.get("inputs") or {}, dict):
            errors.append(_err("invalid_prompt", "Node inputs must be an object of input values",
                               f"Node ID '#{nid}': inputs is {_short(entry['inputs'])}", nid))
            continue
        entry.setdefault("inputs", {})
        if entry["class_type"] not in node_classes:
            errors.append(_err("invalid_prompt", f"Cannot execute because node {entry['class_type']} does "
                               "not exist.", f"Node ID '#{nid}': {entry['class_type']!r} is not a node of this "
                               "pack (a core ComfyUI node or another pack's node); the headless runner only "
                               "runs Interplay nodes", nid, entry["class_type"]))
    if errors:
        return errors
    outs = output_nodes(prompt, node_classes) if targets is None else [str(t) for t in targets]
    missing = [t for t in outs if t not in prompt]
    if missing:
        return [_err("invalid_prompt", "Target node not in prompt", f"no node {', '.join(missing)}")]
    if not outs:
        return [_err("prompt_no_outputs", "Prompt has no outputs",
                     "no output node (one that saves or previews) in the workflow")]
    try:
        needed = _needed(prompt, outs)
    except _Cycle as c:
        nid = c.args[0]
        return [_err("dependency_cycle", "Dependency cycle in prompt",
                     f"node {nid} depends on itself through its links", nid, prompt[nid]["class_type"])]
    for nid in needed:
        errors += _validate_node(prompt, nid, node_classes)
    return errors


def prompt_response(errors: list[dict]) -> dict:
    """The body ComfyUI's /prompt returns for these errors: {"error": {...}, "node_errors": {...}}."""
    node_errors: dict[str, dict] = {}
    for e in errors:
        if e.get("node_id") is None:
            continue
        ne = node_errors.setdefault(e["node_id"], {"errors": [], "dependent_outputs": [],
                                                   "class_type": e.get("class_type")})
        ne["errors"].append({k: e[k] for k in ("type", "message", "details", "extra_info")})
    top = next((e for e in errors if e["type"] in ("invalid_prompt", "prompt_no_outputs")), None)
    if top is not None:
        error = {k: top[k] for k in ("type", "message", "details", "extra_info")}
    else:
        error = {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
                 "details": "\n".join(f"{e['message']}: {e['details']}" for e in errors), "extra_info": {}}
    return {"error": error, "node_errors": node_errors}


def format_errors(errors: list[dict]) -> str:
    lines = []
    for e in errors:
        where, details = "", str(e["details"])
        if e.get("node_id") is not None:
            where = f"node {e['node_id']} ({e.get('class_type')})"
            name = (e.get("extra_info") or {}).get("input_name")
            if name:
                where += f" input {name!r}"
                for sep in (": ", ", "):  # /prompt's details repeat the input name first
                    if details.startswith(f"{name}{sep}"):
                        details = details[len(name) + len(sep):]
                        break
            where += ": "
        lines.append(f"{where}{e['message']}: {details}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ execution
def _hidden_value(kind: str, nid: str, prompt: dict, extra: dict) -> Any:
    if kind == "UNIQUE_ID":
        return nid
    if kind == "PROMPT":
        return prompt
    if kind == "EXTRA_PNGINFO":
        return extra.get("extra_pnginfo")
    return None


def execute(prompt: dict, node_classes: Mapping[str, type] | None = None, *, targets: Iterable[str] | None = None,
            extra_pnginfo: dict | None = None, on_node=None) -> Outputs:
    """Validate, then run every node an output node (or a node in ``targets``) depends on, in dependency order.

    Raises ValidationFailed (``.errors``) before running anything, or NodeExecutionError naming the node.
    ``on_node(node_id, class_type)`` is called before each node runs.
    """
    node_classes = _default_classes() if node_classes is None else node_classes
    targets = None if targets is None else [str(t) for t in targets]
    errors = validate(prompt, node_classes, targets)
    if errors:
        raise ValidationFailed(errors)
    order = _needed(prompt, output_nodes(prompt, node_classes) if targets is None else targets)
    results: dict[str, list[list]] = {}  # node id -> per output slot, the list of values (ComfyUI's layout)
    outputs = Outputs()
    extra = {"extra_pnginfo": extra_pnginfo}
    for nid in order:
        runtime.check_interrupt()
        entry = prompt[nid]
        ctype = entry["class_type"]
        cls = node_classes[ctype]
        it = _input_types(cls)
        data: dict[str, list] = {}
        for name, val in entry["inputs"].items():
            if name not in it["required"] and name not in it["optional"]:
                continue
            if _is_link(val):
                data[name] = results[str(val[0])][val[1]]
            else:
                data[name] = [val["__value__"] if isinstance(val, dict) and "__value__" in val else val]
        for name, spec in it["hidden"].items():
            kind = spec if isinstance(spec, str) else spec[0]
            data[name] = [_hidden_value(kind, nid, prompt, extra)]
        if on_node is not None:
            on_node(nid, ctype)
        try:
            obj = cls()
            func = getattr(obj, cls.FUNCTION)
            if getattr(cls, "INPUT_IS_LIST", False):
                calls = [dict(data)]
            else:
                n = max((len(v) for v in data.values()), default=1)
                if any(len(v) == 0 for v in data.values()):
                    n = 0  # an empty list upstream: ComfyUI skips the node
                calls = [{k: v[min(i, len(v) - 1)] for k, v in data.items()} for i in range(n)]
            rets = [func(**kw) for kw in calls]
        except runtime.Interrupted:
            raise
        except Exception as ex:
            raise NodeExecutionError(nid, ctype, ex) from ex
        rtypes = list(getattr(cls, "RETURN_TYPES", ()))
        is_list = list(getattr(cls, "OUTPUT_IS_LIST", None) or [False] * len(rtypes))
        slots: list[list] = [[] for _ in rtypes]
        for r in rets:
            if isinstance(r, dict):
                if r.get("ui") is not None:
                    ui = outputs.ui.setdefault(nid, {})
                    for k, v in r["ui"].items():
                        ui.setdefault(k, []).extend(v if isinstance(v, list) else [v])
                r = r.get("result") or ()
            if r is None:
                r = ()
            if not isinstance(r, (tuple, list)):
                raise NodeExecutionError(nid, ctype, TypeError(f"{cls.FUNCTION} returned {type(r).__name__}, "
                                                               "expected a tuple"))
            if len(r) < len(rtypes):
                raise NodeExecutionError(nid, ctype, TypeError(
                    f"{cls.FUNCTION} returned {len(r)} value(s), RETURN_TYPES declares {len(rtypes)}"))
            for k in range(len(rtypes)):
                if k < len(is_list) and is_list[k]:
                    slots[k].extend(r[k])
                else:
                    slots[k].append(r[k])
        results[nid] = slots
        single = len(rets) == 1
        outputs[nid] = tuple(s[0] if single and not (k < len(is_list) and is_list[k]) and s else s
                             for k, s in enumerate(slots))
    return outputs


# ------------------------------------------------------------------------------------ --set
def apply_overrides(prompt: dict, sets: Iterable[str], node_classes: Mapping[str, type]) -> list[dict]:
    """Apply ``NODE_ID.INPUT=VALUE`` overrides, typed by the input's INPUT_TYPES; returns errors."""
    errors = []
    for item in sets:
        key, sep, raw = item.partition("=")
        nid, dot, name = key.partition(".")
        if not sep or not dot or not nid or not name:
            errors.append(_err("invalid_override", "Bad --set", f"{item!r}: expected NODE_ID.INPUT=VALUE"))
            continue
        if nid not in prompt:
            errors.append(_err("invalid_override", "Bad --set", f"{item!r}: no node {nid} in the workflow "
                               f"(nodes: {', '.join(prompt)})"))
            continue
        ctype = prompt[nid].get("class_type")
        cls = node_classes.get(ctype)
        if cls is None:
            errors.append(_err("invalid_override", "Bad --set", f"{item!r}: node type {ctype!r} is unknown",
                               nid, ctype))
            continue
        it = _input_types(cls)
        spec = it["required"].get(name) or it["optional"].get(name)
        if spec is None:
            names = ", ".join(list(it["required"]) + list(it["optional"]))
            errors.append(_err("invalid_override", "Bad --set", f"{item!r}: {ctype} has no input {name!r} "
                               f"(inputs: {names})", nid, ctype, input_name=name))
            continue
        typ, _ = _spec_type_options(spec)
        try:
            if typ == "INT":
                value = _coerce("INT", float(raw) if any(c in raw for c in ".eE") else int(raw))
            elif typ in ("FLOAT", "BOOLEAN"):
                value = _coerce(typ, raw)
            elif typ == "STRING" or isinstance(typ, (list, tuple)):
                value = raw
            else:
                value = json.loads(raw)
        except (ValueError, TypeError) as ex:
            errors.append(_err("invalid_override", "Bad --set", f"{item!r}: {name} expects "
                               f"{_type_name(typ)}: {ex}", nid, ctype, input_name=name))
            continue
        prompt[nid]["inputs"][name] = value
    return errors


# ------------------------------------------------------------------------------------ CLI
def _snapshot(folder: Path) -> dict[Path, float]:
    if not folder.is_dir():
        return {}
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def _install_sigint():
    """First Ctrl-C asks the running node to stop at its next progress step (so a trainer can save a
    checkpoint and raise runtime.Interrupted); a second one aborts at once. Returns the previous handler."""
    if threading.current_thread() is not threading.main_thread():
        return None
    count = [0]

    def handler(signum, frame):
        count[0] += 1
        if count[0] > 1:
            raise KeyboardInterrupt
        print("\ninterrupt requested: stopping at the next step (Ctrl-C again to abort now)", file=sys.stderr)
        runtime.request_interrupt()

    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, handler)
    return previous


def _join_launch():
    """Under ``torchrun`` every process runs the whole graph (the samplers and trainers split the work between
    them); processes other than rank 0 write their outputs to a private temporary folder, removed at the end.
    Returns that folder, or None on rank 0 / outside a launch."""
    from ..models import distributed

    distributed.init()
    if distributed.is_main():
        return None
    import atexit
    import shutil
    import tempfile

    spare = Path(tempfile.mkdtemp(prefix=f"interplay-rank{distributed.rank()}-"))
    atexit.register(shutil.rmtree, spare, True)
    runtime.set_output_directory(spare)
    return spare


def cli_main(argv: list[str] | None = None, node_classes: Mapping[str, type] | None = None) -> int:
    """`interplay run`: 0 on success, 1 when a node fails or the file cannot be read, 2 on validation errors.
    ``node_classes`` defaults to the pack's NODE_CLASS_MAPPINGS (tests pass their own)."""
    ap = argparse.ArgumentParser(prog="interplay run", description="Execute a ComfyUI workflow (UI or API "
                                 "format) with the Interplay nodes, without ComfyUI.")
    ap.add_argument("workflow", help="workflow JSON saved from ComfyUI (Save, or Export (API))")
    ap.add_argument("--models-dir", help="models root laid out like ComfyUI's models/ folder")
    ap.add_argument("--input-dir", help="input folder the workflow's file names refer to, like ComfyUI's input/ "
                    "(default ./input, or $INTERPLAY_INPUT_DIR)")
    ap.add_argument("--out", help="output folder (default ./output)")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="NODE_ID.INPUT=VALUE",
                    help="override an input value; repeatable")
    ap.add_argument("--print-prompt", action="store_true", help="print the API prompt and exit")
    ap.add_argument("--validate-only", action="store_true", help="validate, run nothing (exit 0 or 2)")
    args = ap.parse_args(argv)

    if args.models_dir is not None:
        runtime.set_models_root(args.models_dir)
    if args.out is not None:
        runtime.set_output_directory(args.out)
    spare = _join_launch()
    if args.input_dir is not None:
        runtime.set_input_directory(args.input_dir)
    runtime.clear_interrupt()
    from .video import clear_previews

    clear_previews()  # as ComfyUI clears its temp folder when it starts: earlier runs' previews go
    node_classes = _default_classes() if node_classes is None else node_classes
    try:
        data = _read_json(args.workflow)
        prompt = to_api(data, node_classes, source=args.workflow)
    except (WorkflowError, FileNotFoundError) as ex:
        print(f"error: {ex}", file=sys.stderr)
        return 2 if isinstance(ex, WorkflowError) else 1
    errors = apply_overrides(prompt, args.sets, node_classes)
    if args.print_prompt and not errors:
        print(json.dumps(prompt, indent=2))
        return 0
    errors = errors or validate(prompt, node_classes)
    if errors:
        print(f"error: {args.workflow} failed validation:\n" + format_errors(errors), file=sys.stderr)
        return 2
    if args.validate_only:
        print(f"{args.workflow}: valid ({len(prompt)} node(s))")
        return 0
    out_dir = runtime.output_directory()
    before = _snapshot(out_dir)
    t0 = time.monotonic()
    previous_handler = _install_sigint()
    try:
        outputs = execute(prompt, node_classes, extra_pnginfo={"workflow": data} if is_ui_workflow(data) else None,
                          on_node=lambda nid, ct: print(f"[{nid}] {ct}", file=sys.stderr))
    except NodeExecutionError as ex:
        import traceback

        # Where in the node it failed (last frames), then the one line that names the node.
        tb = traceback.format_exception(ex.original)[-6:]
        print("".join(tb).rstrip(), file=sys.stderr)
        print(f"error: {ex}", file=sys.stderr)
        return 1
    except (runtime.Interrupted, KeyboardInterrupt):
        print("error: interrupted", file=sys.stderr)
        return 1
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGINT, previous_handler)
        runtime.clear_interrupt()
    if spare is not None:  # a launch's other ranks ran the same graph; rank 0 reports and keeps the files
        return 0
    written = sorted(p for p, m in _snapshot(out_dir).items() if before.get(p) != m)
    print(f"ran {len(outputs)} node(s) in {time.monotonic() - t0:.1f}s")
    for nid, ui in outputs.ui.items():
        items = [f"{k}: {len(v)}" for k, v in ui.items()]
        print(f"  output node {nid} ({prompt[nid]['class_type']}): {', '.join(items)}")
    if written:
        print(f"wrote {len(written)} file(s) under {out_dir}:")
        for p in written:
            print(f"  {p}")
    else:
        print("wrote no files")
    return 0
