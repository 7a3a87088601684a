"""nodes/graph.py against files the real ComfyUI frontend (1.27.10) wrote: tests/golden/frontend/ (see its README).

The reader (ui_to_api) must turn each frontend-saved UI file, as Save and as Export write it, into the prompt the
frontend itself queues (graphToPrompt); the writer (api_to_ui) must lay each API twin out as the frontend saved the
same graph: equal widgets_values, the same input slots and the same links up to link ids. Node classes are rebuilt
from the object_info recorded with the files, so the definitions are the ones the frontend saw."""
import json
from pathlib import Path

import pytest

from interplay.nodes import graph

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "frontend"
OBJECT_INFO = json.loads((GOLDEN / "object_info.json").read_text())
WITH_TWIN = sorted(p.name[: -len(".twin.json")] for p in GOLDEN.glob("*.twin.json"))
ALL = sorted(p.name[: -len(".ui.json")] for p in GOLDEN.glob("*.ui.json"))


def _recorded_class(name: str, info: dict) -> type:
    spec = {cat: {k: tuple(v) for k, v in (info["input"].get(cat) or {}).items()}
            for cat in ("required", "optional")}
    order = info.get("input_order") or {}
    for cat in spec:  # the server's input_order is the definition order the frontend follows
        spec[cat] = {k: spec[cat][k] for k in order.get(cat, spec[cat])}
    outs = info.get("output") or []
    return type(name, (), {
        "INPUT_TYPES": classmethod(lambda cls: spec), "FUNCTION": "run", "CATEGORY": info.get("category"),
        "RETURN_TYPES": tuple(o if isinstance(o, str) else "COMBO" for o in outs),
        "RETURN_NAMES": tuple(info.get("output_name") or outs),
        "OUTPUT_IS_LIST": tuple(info.get("output_is_list") or [False] * len(outs)),
        "OUTPUT_NODE": bool(info.get("output_node"))})


CLASSES = {k: _recorded_class(k, v) for k, v in OBJECT_INFO.items()}


def _load(name: str):
    return json.loads((GOLDEN / name).read_text())


def _inputs(prompt: dict) -> dict:
    return {nid: (n["class_type"], n["inputs"]) for nid, n in prompt.items()}


def test_golden_files_come_from_the_real_frontend():
    versions = _load("versions.json")
    assert versions["frontend"] == "1.27.10" and versions["comfyui"] == "0.3.64"
    assert {"interdyn_hand", "interdyn_counterfactual", "kinemask_i2v", "sandbox_push"} <= set(WITH_TWIN)
    for name in ALL:  # graphToPrompt stamps the workflow it returns
        assert _load(f"{name}.export.json")["extra"]["frontendVersion"] == "1.27.10"


@pytest.mark.parametrize("form", ["ui", "export"])
@pytest.mark.parametrize("name", ALL)
def test_reader_gives_the_frontends_prompt(name, form):
    ui = _load(f"{name}.{form}.json")
    want = _load(f"{name}.api.json")
    got = graph.ui_to_api(ui, CLASSES)
    assert _inputs(got) == _inputs(want)
    titled = {str(n["id"]) for n in ui["nodes"] if n.get("title")}
    assert {n: got[n]["_meta"]["title"] for n in titled & set(got)} == \
        {n: want[n]["_meta"]["title"] for n in titled & set(want)}


def _links(ui: dict) -> set:
    return {tuple(link[1:]) for link in ui["links"]}  # (origin id, origin slot, target id, target slot, type)


@pytest.mark.parametrize("name", WITH_TWIN)
def test_writer_lays_out_the_twin_as_the_frontend_saves_it(name):
    want = {n["id"]: n for n in _load(f"{name}.ui.json")["nodes"]}
    ui = json.loads(json.dumps(graph.api_to_ui(_load(f"{name}.twin.json"), CLASSES)))
    got = {n["id"]: n for n in ui["nodes"]}
    assert set(got) == set(want)
    for nid, node in got.items():
        assert node["widgets_values"] == want[nid]["widgets_values"], f"node {nid} ({node['type']})"
        slots = lambda n: [(i["name"], i["type"], (i.get("widget") or {}).get("name")) for i in n["inputs"]]  # noqa: E731
        assert slots(node) == slots(want[nid]), f"node {nid} ({node['type']})"
        assert [(o["name"], o["type"]) for o in node["outputs"]] == \
            [(o["name"], o["type"]) for o in want[nid]["outputs"]]
        assert node.get("title") == want[nid].get("title")
    assert _links(ui) == _links(_load(f"{name}.ui.json"))
    # and the frontend-saved file reads back to the twin's prompt (the frontend adds the unset widgets' defaults)
    back = graph.ui_to_api(_load(f"{name}.ui.json"), CLASSES)
    for nid, node in _load(f"{name}.twin.json").items():
        assert {k: back[nid]["inputs"][k] for k in node["inputs"]} == node["inputs"]


def test_control_values_are_read_by_position_not_by_value():
    # The frontend restores widgets_values by position; a control set to another mode, or a filter list holding
    # any text, must not shift the values after it.
    ui = _load("golden_nodes.ui.json")
    node = next(n for n in ui["nodes"] if n["type"] == "GoldenControls")
    assert node["widgets_values"][:7] == [123, "fixed", 5, "fixed", "gamma", "fixed", ""]
    node["widgets_values"][1:7] = ["randomize", 5, "increment-wrap", "gamma", "decrement", "/alp|gam/"]
    assert _inputs(graph.ui_to_api(ui, CLASSES)) == _inputs(_load("golden_nodes.api.json"))


def test_upload_value_is_the_last_widget():
    # Load Video's saved values: the file, every other widget, then the upload button's constant "image"
    ui = _load("interdyn_hand.ui.json")
    node = next(n for n in ui["nodes"] if n["type"] == "InterplayLoadVideo")
    assert node["widgets_values"] == ["interdyn_driving.mp4", 0, 0, 1, 0, 0, "", "image"]
    assert [i["name"] for i in node["inputs"]][-1] == "upload"


def test_a_file_with_the_upload_value_after_the_combo_reads_as_the_frontend_reads_it():
    # What the pack's writer used to save: the frontend puts "video" into frame_cap and shifts the rest, and so
    # must the reader, so validation reports what ComfyUI reports instead of hiding it.
    ui = _load("interdyn_hand.ui.json")
    node = next(n for n in ui["nodes"] if n["type"] == "InterplayLoadVideo")
    node["widgets_values"] = ["interdyn_driving.mp4", "video", 0, 0, 1, 0, 0, ""]
    inputs = graph.ui_to_api(ui, CLASSES)[str(node["id"])]["inputs"]
    assert (inputs["frame_cap"], inputs["every_nth"], inputs["path"]) == ("video", 0, 0)
