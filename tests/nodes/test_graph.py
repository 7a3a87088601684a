"""Headless graph runner: UI->API conversion like the frontend's graphToPrompt, API->UI layout, /prompt-style
validation, dependency-ordered execution and the `interplay run` CLI, on small fake node classes."""
import copy
import json
from pathlib import Path

import pytest

from interplay.models import runtime
from interplay.nodes import graph

CALLS: list[str] = []


class FakeSource:
    CATEGORY, FUNCTION, DESCRIPTION = "Interplay/test", "make", "source"
    RETURN_TYPES = ("FAKE_NUM",)
    RETURN_NAMES = ("number",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "value": ("INT", {"default": 1, "min": 0, "max": 100}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 2**32 - 1}),
            "mode": (["a", "b"], {"default": "a"}),
            "text": ("STRING", {"default": "", "multiline": True}),
        }}

    def make(self, value, seed, mode, text):
        CALLS.append("source")
        return (value + seed + (1000000 if mode == "a" else 0),)


class FakeScale:
    CATEGORY, FUNCTION, DESCRIPTION = "Interplay/test", "scale", "scale"
    RETURN_TYPES = ("FAKE_NUM",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"x": ("FAKE_NUM",),
                             "factor": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.5})},
                "optional": {"offset": ("INT", {"default": 0, "min": -10, "max": 10})}}

    def scale(self, x, factor, offset=0):
        CALLS.append("scale")
        return (x * factor + offset,)


class FakeFilter:  # bypassed in the UI fixture: FAKE_NUM passes straight through
    CATEGORY, FUNCTION, DESCRIPTION = "Interplay/test", "filter", "filter"
    RETURN_TYPES = ("FAKE_NUM",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"x": ("FAKE_NUM",), "amount": ("INT", {"default": 0, "min": 0, "max": 9})}}

    def filter(self, x, amount):
        CALLS.append("filter")
        return (x - amount,)


class FakeSave:
    CATEGORY, FUNCTION, DESCRIPTION = "Interplay/test", "save", "save"
    RETURN_TYPES = ()
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"x": ("FAKE_NUM",), "filename_prefix": ("STRING", {"default": "num"})},
                "hidden": {"unique_id": "UNIQUE_ID"}}

    def save(self, x, filename_prefix, unique_id=None):
        CALLS.append(f"save{unique_id}")
        path = runtime.output_directory() / f"{filename_prefix}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(repr(x))
        return {"ui": {"texts": [path.name]}, "result": ()}


class FakeModel:
    CATEGORY, FUNCTION, DESCRIPTION = "Interplay/test", "load", "loader"
    RETURN_TYPES = ("FAKE_NUM", "FAKE_TEXT")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": (runtime.list_models("diffusion_models"),
                                       {"model_folder": "diffusion_models"})}}

    def load(self, model):
        CALLS.append("model")
        return (len(model), model)


class FakeBoom:
    CATEGORY, FUNCTION, DESCRIPTION = "Interplay/test", "boom", "raises"
    RETURN_TYPES = ("FAKE_NUM",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"x": ("FAKE_NUM",)}}

    def boom(self, x):
        raise ValueError("FakeBoom: input 'x' must be positive")


class FakeEven:  # VALIDATE_INPUTS replaces the built-in checks for the inputs it names
    CATEGORY, FUNCTION, DESCRIPTION = "Interplay/test", "run", "even"
    RETURN_TYPES = ("FAKE_NUM",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"n": ("INT", {"default": 0, "min": 0, "max": 10})}}

    @classmethod
    def VALIDATE_INPUTS(cls, n):
        return True if n % 2 == 0 else f"n must be even, got {n}"

    def run(self, n):
        return (n,)


class FakeSplit:  # OUTPUT_IS_LIST: the consumer runs once per item
    CATEGORY, FUNCTION, DESCRIPTION = "Interplay/test", "split", "split"
    RETURN_TYPES = ("FAKE_NUM",)
    OUTPUT_IS_LIST = (True,)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"n": ("INT", {"default": 3, "min": 1, "max": 10})}}

    def split(self, n):
        return (list(range(n)),)


class FakeSum:
    CATEGORY, FUNCTION, DESCRIPTION = "Interplay/test", "sum", "sum"
    RETURN_TYPES = ("FAKE_NUM",)
    INPUT_IS_LIST = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"x": ("FAKE_NUM",)}}

    def sum(self, x):
        return (sum(x),)


CLASSES = {c.__name__: c for c in (FakeSource, FakeScale, FakeFilter, FakeSave, FakeModel, FakeBoom, FakeEven,
                                    FakeSplit, FakeSum)}


@pytest.fixture(autouse=True)
def _reset_calls():
    CALLS.clear()


# A UI workflow written the way the ComfyUI frontend saves one (schema 0.4): the seed widget is converted to an
# input driven by a PrimitiveNode (its own value 42 stays in widgets_values, followed by the control value), a
# Reroute, a bypassed FakeFilter, a muted FakeSave, a Note, a group.
UI = {
    "last_node_id": 8, "last_link_id": 7,
    "nodes": [
        {"id": 1, "type": "FakeSource", "pos": [0, 0], "size": [315, 200], "flags": {}, "order": 1, "mode": 0,
         "inputs": [{"name": "seed", "type": "INT", "link": 7, "widget": {"name": "seed"}}],
         "outputs": [{"name": "number", "type": "FAKE_NUM", "links": [1], "slot_index": 0}],
         "properties": {"Node name for S&R": "FakeSource"},
         "widgets_values": [3, 42, "randomize", "b", "hello\nworld"]},
        {"id": 7, "type": "PrimitiveNode", "pos": [-300, 0], "size": [210, 80], "flags": {}, "order": 0, "mode": 0,
         "outputs": [{"name": "INT", "type": "INT", "links": [7], "widget": {"name": "seed"}, "slot_index": 0}],
         "title": "seed", "properties": {"Run widget replace on values": False},
         "widgets_values": [1234, "fixed"]},
        {"id": 2, "type": "Reroute", "pos": [400, 0], "size": [75, 26], "flags": {}, "order": 2, "mode": 0,
         "inputs": [{"name": "", "type": "*", "link": 1}],
         "outputs": [{"name": "", "type": "FAKE_NUM", "links": [2], "slot_index": 0}],
         "properties": {"showOutputText": False, "horizontal": False}},
        {"id": 3, "type": "FakeFilter", "pos": [500, 0], "size": [315, 60], "flags": {}, "order": 3, "mode": 4,
         "inputs": [{"name": "x", "type": "FAKE_NUM", "link": 2}],
         "outputs": [{"name": "FAKE_NUM", "type": "FAKE_NUM", "links": [3], "slot_index": 0}],
         "properties": {"Node name for S&R": "FakeFilter"}, "widgets_values": [5]},
        {"id": 4, "type": "FakeScale", "pos": [900, 0], "size": [315, 80], "flags": {}, "order": 4, "mode": 0,
         "title": "Scale it",
         "inputs": [{"name": "x", "type": "FAKE_NUM", "link": 3}],
         "outputs": [{"name": "FAKE_NUM", "type": "FAKE_NUM", "links": [4, 5], "slot_index": 0}],
         "properties": {"Node name for S&R": "FakeScale"}, "widgets_values": [2.5, 1]},
        {"id": 5, "type": "FakeSave", "pos": [1300, 0], "size": [315, 60], "flags": {}, "order": 5, "mode": 0,
         "inputs": [{"name": "x", "type": "FAKE_NUM", "link": 4}], "outputs": [],
         "properties": {"Node name for S&R": "FakeSave"}, "widgets_values": ["run/result"]},
        {"id": 6, "type": "FakeSave", "pos": [1300, 200], "size": [315, 60], "flags": {}, "order": 6, "mode": 2,
         "inputs": [{"name": "x", "type": "FAKE_NUM", "link": 5}], "outputs": [],
         "properties": {"Node name for S&R": "FakeSave"}, "widgets_values": ["muted"]},
        {"id": 8, "type": "Note", "pos": [0, 400], "size": [300, 100], "flags": {}, "order": 7, "mode": 0,
         "properties": {"text": ""}, "widgets_values": ["the seed comes from the primitive"]},
    ],
    "links": [[1, 1, 0, 2, 0, "*"], [2, 2, 0, 3, 0, "FAKE_NUM"], [3, 3, 0, 4, 0, "FAKE_NUM"],
              [4, 4, 0, 5, 0, "FAKE_NUM"], [5, 4, 0, 6, 0, "FAKE_NUM"], [7, 7, 0, 1, 0, "INT"]],
    "groups": [{"title": "Group", "bounding": [0, 0, 500, 300], "color": "#3f789e", "font_size": 24}],
    "config": {}, "extra": {"ds": {"scale": 1.0, "offset": [0, 0]}}, "version": 0.4,
}

UI_AS_API = {
    "1": {"class_type": "FakeSource", "inputs": {"value": 3, "seed": 1234, "mode": "b", "text": "hello\nworld"}},
    "4": {"class_type": "FakeScale", "inputs": {"factor": 2.5, "offset": 1, "x": ["1", 0]}},
    "5": {"class_type": "FakeSave", "inputs": {"filename_prefix": "run/result", "x": ["4", 0]}},
}


def _strip_meta(prompt):
    return {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in prompt.items()}


def test_ui_to_api_like_graph_to_prompt():
    api = graph.ui_to_api(copy.deepcopy(UI), CLASSES)
    assert _strip_meta(api) == UI_AS_API
    assert api["4"]["_meta"] == {"title": "Scale it"}


def test_ui_widgets_without_linked_values_are_accepted():
    # Some tools drop a linked widget's value; the remaining values still line up.
    ui = copy.deepcopy(UI)
    ui["nodes"][0]["widgets_values"] = [3, "b", "hello\nworld"]
    assert _strip_meta(graph.ui_to_api(ui, CLASSES))["1"] == UI_AS_API["1"]


def test_bypass_without_matching_type_drops_the_input():
    ui = copy.deepcopy(UI)
    ui["nodes"][3]["inputs"][0]["type"] = "OTHER"  # nothing of type FAKE_NUM to pass through
    api = graph.ui_to_api(ui, CLASSES)
    assert "x" not in api["4"]["inputs"]
    errors = graph.validate(api, CLASSES)
    assert [(e["node_id"], e["type"], e["extra_info"]["input_name"]) for e in errors] == \
        [("4", "required_input_missing", "x")]


def test_ui_schema1_object_links():
    ui = copy.deepcopy(UI)
    keys = ("id", "origin_id", "origin_slot", "target_id", "target_slot", "type")
    ui["links"] = [dict(zip(keys, link)) for link in ui["links"]]
    assert _strip_meta(graph.ui_to_api(ui, CLASSES)) == UI_AS_API


def test_run_ui_workflow_writes_result(tmp_path):
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(UI))
    out = tmp_path / "out"
    assert graph.cli_main([str(path), "--out", str(out)], node_classes=CLASSES) == 0
    # value 3 + primitive seed 1234 (mode b adds nothing), scaled by 2.5, plus offset 1; filter bypassed
    assert (out / "run" / "result.txt").read_text() == repr((3 + 1234) * 2.5 + 1)
    assert CALLS == ["source", "scale", "save5"]
    assert not (out / "muted.txt").exists()


API = {
    "10": {"class_type": "FakeSave", "inputs": {"x": ["7", 0], "filename_prefix": "a"}},
    "7": {"class_type": "FakeScale", "inputs": {"x": ["3", 0], "factor": 2.0, "offset": -1}},
    "3": {"class_type": "FakeFilter", "inputs": {"x": ["1", 0], "amount": 4}},
    "1": {"class_type": "FakeSource", "inputs": {"value": 5, "seed": 10, "mode": "b", "text": "t"}},
    "12": {"class_type": "FakeSave", "inputs": {"x": ["1", 0], "filename_prefix": "b"}},
    "20": {"class_type": "FakeScale", "inputs": {"x": ["1", 0], "factor": 99.0}},  # feeds no output: never runs
}


def test_execute_in_dependency_order_only_needed_nodes():
    outputs = graph.execute(copy.deepcopy(API), CLASSES)
    assert CALLS == ["source", "filter", "scale", "save10", "save12"]
    assert outputs["1"] == (15,)
    assert outputs["3"] == (11,)
    assert outputs["7"] == (21.0,)
    assert "20" not in outputs
    assert outputs.ui == {"10": {"texts": ["a.txt"]}, "12": {"texts": ["b.txt"]}}
    assert (runtime.output_directory() / "a.txt").read_text() == "21.0"


def test_api_to_ui_layout_and_round_trip():
    api = copy.deepcopy(API)
    ui = graph.api_to_ui(api, CLASSES)
    assert ui["version"] == 0.4
    assert ui["last_node_id"] == 20 and ui["last_link_id"] == 5 and len(ui["links"]) == 5
    nodes = {n["id"]: n for n in ui["nodes"]}
    # columns by dependency depth: 1 -> 3 -> 7 -> 10; 12 and 20 sit one column right of 1
    assert [nodes[i]["pos"][0] for i in (1, 3, 7, 10, 12, 20)] == [50, 450, 850, 1250, 450, 450]
    assert nodes[1]["widgets_values"] == [5, 10, "fixed", "b", "t"]  # control value after the seed
    assert nodes[20]["widgets_values"] == [99.0, 0]  # unset optional widget: its default
    assert nodes[7]["properties"] == {"Node name for S&R": "FakeScale"}
    # links numbered in layout order: targets 3, 12, 20 (depth 1), then 7, then 10
    assert nodes[7]["inputs"] == [  # the frontend's slot model: sockets, then one slot per widget
        {"name": "x", "type": "FAKE_NUM", "link": 4},
        {"name": "factor", "type": "FLOAT", "link": None, "widget": {"name": "factor"}},
        {"name": "offset", "type": "INT", "link": None, "shape": 7, "widget": {"name": "offset"}}]
    assert ui["links"][3] == [4, 3, 0, 7, 0, "FAKE_NUM"]
    assert nodes[3]["outputs"] == [{"name": "FAKE_NUM", "type": "FAKE_NUM", "links": [4], "slot_index": 0}]
    assert nodes[1]["outputs"][0]["links"] == sorted(nodes[1]["outputs"][0]["links"]) and \
        len(nodes[1]["outputs"][0]["links"]) == 3
    back = _strip_meta(graph.ui_to_api(json.loads(json.dumps(ui)), CLASSES))
    expected = copy.deepcopy(API)
    expected["20"]["inputs"]["offset"] = 0
    assert back == expected


def test_api_to_ui_linked_widget_round_trip():
    api = {"1": {"class_type": "FakeEven", "inputs": {"n": 4}},
           "2": {"class_type": "FakeSource", "inputs": {"value": ["1", 0], "seed": 7, "mode": "a", "text": ""}},
           "3": {"class_type": "FakeSave", "inputs": {"x": ["2", 0], "filename_prefix": "p"}}}
    ui = graph.api_to_ui(copy.deepcopy(api), CLASSES)
    src = next(n for n in ui["nodes"] if n["id"] == 2)
    assert [(i["name"], i["link"]) for i in src["inputs"]] == [("value", 1), ("seed", None), ("mode", None),
                                                                ("text", None)]
    assert ui["links"] == [[1, 1, 0, 2, 0, "FAKE_NUM"], [2, 2, 0, 3, 0, "FAKE_NUM"]]
    assert src["widgets_values"] == [1, 7, "fixed", "a", ""]  # the converted widget keeps a value
    assert _strip_meta(graph.ui_to_api(ui, CLASSES)) == api


def _write(tmp_path, prompt, name="wf.json"):
    path = tmp_path / name
    path.write_text(prompt if isinstance(prompt, str) else json.dumps(prompt))
    return path


def _broken(**changes):
    api = copy.deepcopy(API)
    for nid, inputs in changes.items():
        api[nid]["inputs"].update(inputs)
    return api


MALFORMED = {
    "link to missing node": (_broken(**{"7": {"x": ["99", 0]}}), ["node 7 (FakeScale)", "'x'", "99"]),
    "output index out of range": (_broken(**{"7": {"x": ["3", 2]}}), ["node 7", "'x'", "output 2", "1 output"]),
    "wrong type on a link": (dict(_broken(**{"7": {"x": ["30", 1]}}),
                                  **{"30": {"class_type": "FakeModel", "inputs": {"model": "m.safetensors"}}}),
                             ["node 7 (FakeScale)", "'x'", "FAKE_TEXT", "FAKE_NUM"]),
    "out-of-range widget": (_broken(**{"3": {"amount": 12}}), ["node 3 (FakeFilter)", "'amount'", "12", "9"]),
    "missing required input": ({k: v for k, v in _broken().items() if k != "3"} | {
        "3": {"class_type": "FakeFilter", "inputs": {"x": ["1", 0]}}}, ["node 3", "'amount'", "INT"]),
    "combo value not in list": (_broken(**{"1": {"mode": "c"}}), ["node 1 (FakeSource)", "'mode'", "'c'"]),
    "bad INT": (_broken(**{"1": {"value": "many"}}), ["node 1", "'value'", "INT"]),
    "unknown node type": (dict(_broken(), **{"40": {"class_type": "KSampler", "inputs": {}}}),
                          ["KSampler", "40", "does not exist"]),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_workflow_fails_naming_node_and_input(case, tmp_path, capsys):
    prompt, needles = MALFORMED[case]
    out = tmp_path / "out"
    rc = graph.cli_main([str(_write(tmp_path, prompt)), "--out", str(out)], node_classes=CLASSES)
    err = capsys.readouterr().err
    assert rc == 2
    for needle in needles:
        assert needle in err, (needle, err)
    assert not out.exists() and CALLS == []


def test_empty_model_combo_reports_folder(tmp_path):
    runtime.set_models_root(tmp_path / "models")
    prompt = {"1": {"class_type": "FakeModel", "inputs": {"model": "tiny.safetensors"}},
              "2": {"class_type": "FakeSave", "inputs": {"x": ["1", 0], "filename_prefix": "m"}}}
    errors = graph.validate(prompt, CLASSES)
    assert len(errors) == 1 and errors[0]["type"] == "value_not_in_list"
    assert "tiny.safetensors" in errors[0]["details"]
    assert str(tmp_path / "models" / "diffusion_models") in errors[0]["details"]
    # once the file is there the same prompt validates and runs
    (tmp_path / "models" / "diffusion_models").mkdir(parents=True)
    (tmp_path / "models" / "diffusion_models" / "tiny.safetensors").write_bytes(b"")
    assert graph.validate(prompt, CLASSES) == []
    assert graph.execute(prompt, CLASSES)["1"] == (len("tiny.safetensors"), "tiny.safetensors")


def test_validation_error_shape_like_prompt_endpoint():
    errors = graph.validate(_broken(**{"3": {"amount": 12}}), CLASSES)
    assert errors == [{"type": "value_bigger_than_max", "message": "Value 12 bigger than max of 9",
                       "details": "amount: expected INT in [0, 9], got 12",
                       "extra_info": {"input_name": "amount", "received_value": 12},
                       "node_id": "3", "class_type": "FakeFilter"}]
    body = graph.prompt_response(errors)
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    assert body["node_errors"]["3"]["class_type"] == "FakeFilter"
    assert body["node_errors"]["3"]["errors"][0]["extra_info"]["input_name"] == "amount"


def test_validation_converts_and_checks_values():
    prompt = _broken(**{"1": {"value": "7"}, "7": {"factor": 3}})
    assert graph.validate(prompt, CLASSES) == []
    assert prompt["1"]["inputs"]["value"] == 7 and isinstance(prompt["7"]["inputs"]["factor"], float)
    assert graph.validate({"1": {"class_type": "FakeSource", "inputs": {}}}, CLASSES)[0]["type"] == \
        "prompt_no_outputs"
    cyc = {"1": {"class_type": "FakeScale", "inputs": {"x": ["2", 0], "factor": 1.0}},
           "2": {"class_type": "FakeSave", "inputs": {"x": ["1", 0], "filename_prefix": "c"}},
           "3": {"class_type": "FakeScale", "inputs": {"x": ["1", 0], "factor": 1.0}}}
    cyc["1"]["inputs"]["x"] = ["3", 0]
    assert graph.validate(cyc, CLASSES)[0]["type"] == "dependency_cycle"


def test_invalid_node_not_feeding_an_output_is_ignored():
    prompt = _broken(**{"20": {"factor": 1000.0}})  # out of range, but node 20 feeds no output
    assert graph.validate(prompt, CLASSES) == []


def test_validate_inputs_hook():
    prompt = {"1": {"class_type": "FakeEven", "inputs": {"n": 3}},
              "2": {"class_type": "FakeSave", "inputs": {"x": ["1", 0], "filename_prefix": "e"}}}
    errors = graph.validate(prompt, CLASSES)
    assert [(e["node_id"], e["type"]) for e in errors] == [("1", "custom_validation_failed")]
    assert "n must be even, got 3" in errors[0]["details"]
    prompt["1"]["inputs"]["n"] = 40  # above max: VALIDATE_INPUTS owns the check for n, as in ComfyUI
    assert graph.validate(prompt, CLASSES) == []


def test_output_is_list_maps_consumer():
    prompt = {"1": {"class_type": "FakeSplit", "inputs": {"n": 4}},
              "2": {"class_type": "FakeScale", "inputs": {"x": ["1", 0], "factor": 2.0}},
              "3": {"class_type": "FakeSum", "inputs": {"x": ["2", 0]}},
              "4": {"class_type": "FakeSave", "inputs": {"x": ["3", 0], "filename_prefix": "s"}}}
    outputs = graph.execute(prompt, CLASSES)
    assert outputs["1"] == ([0, 1, 2, 3],)
    assert outputs["2"] == ([0.0, 2.0, 4.0, 6.0],)
    assert outputs["3"] == (12.0,)


def test_set_overrides_are_typed(tmp_path, capsys):
    path = _write(tmp_path, API)
    out = tmp_path / "out"
    rc = graph.cli_main([str(path), "--out", str(out), "--set", "1.value=6", "--set", "7.factor=0.5",
                         "--set", "10.filename_prefix=renamed"], node_classes=CLASSES)
    assert rc == 0
    assert (out / "renamed.txt").read_text() == repr((6 + 10 - 4) * 0.5 - 1)
    assert "renamed.txt" in capsys.readouterr().out  # the summary lists files written
    for bad, needle in [("1.value=abc", "expects INT"), ("99.value=1", "no node 99"),
                        ("1.nope=1", "no input 'nope'"), ("1value", "NODE_ID.INPUT=VALUE"),
                        ("1.value=101", "bigger than max")]:
        out2 = tmp_path / "out2"
        assert graph.cli_main([str(path), "--out", str(out2), "--set", bad], node_classes=CLASSES) == 2
        assert needle in capsys.readouterr().err
        assert not out2.exists()


def test_node_exception_names_node(tmp_path, capsys):
    prompt = {"1": {"class_type": "FakeSource", "inputs": {"value": 1, "seed": 0, "mode": "a", "text": ""}},
              "2": {"class_type": "FakeBoom", "inputs": {"x": ["1", 0]}},
              "3": {"class_type": "FakeSave", "inputs": {"x": ["2", 0], "filename_prefix": "z"}}}
    assert graph.cli_main([str(_write(tmp_path, prompt)), "--out", str(tmp_path / "o")],
                          node_classes=CLASSES) == 1
    err = capsys.readouterr().err
    assert "node 2 (FakeBoom) failed: ValueError: FakeBoom: input 'x' must be positive" in err
    with pytest.raises(graph.NodeExecutionError) as ei:
        graph.execute(prompt, CLASSES)
    assert ei.value.node_id == "2" and ei.value.class_type == "FakeBoom"


def test_bad_json_and_unknown_layout(tmp_path, capsys):
    assert graph.cli_main([str(_write(tmp_path, '{"1": {"class_type": '))], node_classes=CLASSES) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert graph.cli_main([str(_write(tmp_path, "[1, 2]"))], node_classes=CLASSES) == 2
    assert "neither a UI workflow" in capsys.readouterr().err
    assert graph.cli_main([str(tmp_path / "missing.json")], node_classes=CLASSES) == 1
    assert "not found" in capsys.readouterr().err


def test_unknown_ui_node_type_is_named():
    ui = copy.deepcopy(UI)
    ui["nodes"][2] = dict(ui["nodes"][2], type="VHS_VideoCombine")
    errors = graph.validate(graph.ui_to_api(ui, CLASSES), CLASSES)
    assert "VHS_VideoCombine" in graph.format_errors(errors) and errors[0]["node_id"] == "2"


def test_load_workflow_reads_both_formats(tmp_path):
    api = graph.load_workflow(_write(tmp_path, UI, "ui.json"), CLASSES)
    assert _strip_meta(api) == UI_AS_API
    assert graph.load_workflow(_write(tmp_path, UI_AS_API, "api.json"), CLASSES) == UI_AS_API


def test_default_node_classes_are_the_pack():
    from interplay.nodes import NODE_CLASS_MAPPINGS

    assert graph._default_classes() is NODE_CLASS_MAPPINGS


# ------------------------------------------------------------------------------ scripts/build_workflows.py
def _build_script():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "scripts" / "build_workflows.py"
    spec = importlib.util.spec_from_file_location("build_workflows", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_build_workflows_writes_and_checks(tmp_path, capsys):
    bw = _build_script()
    (tmp_path / "api").mkdir()
    _write(tmp_path / "api", API, "demo.json")
    args = ["--workflows", str(tmp_path)]
    assert bw.main(args + ["--check"], node_classes=CLASSES) == 1
    assert "demo.json is missing" in capsys.readouterr().out
    assert bw.main(args, node_classes=CLASSES) == 0
    ui = json.loads((tmp_path / "demo.json").read_text())
    assert ui["version"] == 0.4 and len(ui["nodes"]) == len(API)
    expected = copy.deepcopy(API)
    expected["20"]["inputs"]["offset"] = 0
    assert _strip_meta(graph.ui_to_api(ui, CLASSES)) == expected
    assert bw.main(args + ["--check"], node_classes=CLASSES) == 0
    _write(tmp_path / "api", _broken(**{"3": {"amount": 2}}), "demo.json")
    assert bw.main(args + ["--check"], node_classes=CLASSES) == 1
    assert "demo.json is stale" in capsys.readouterr().out
    _write(tmp_path / "api", {"1": {"class_type": "KSampler", "inputs": {}}}, "bad.json")
    assert bw.main(args, node_classes=CLASSES) == 2
    assert "KSampler" in capsys.readouterr().err


def test_repo_workflows_are_up_to_date():
    """workflows/<name>.json must be what build_workflows.py makes from workflows/api/<name>.json."""
    bw = _build_script()
    api_files = sorted((bw.ROOT / "workflows" / "api").glob("*.json"))
    if not api_files:  # nothing committed yet: the builder's own behaviour is covered above
        assert not (bw.ROOT / "workflows" / "api").exists() or api_files == []
        return
    assert bw.main(["--check"]) == 0, "run python scripts/build_workflows.py and commit workflows/*.json"


class FakeTrain:  # a long loop that saves a checkpoint when cancelled, like the trainer
    CATEGORY, FUNCTION, DESCRIPTION = "Interplay/test", "train", "train"
    RETURN_TYPES = ("FAKE_NUM",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"steps": ("INT", {"default": 100, "min": 1, "max": 1000, "step": 4})}}

    def train(self, steps):
        import os
        import signal

        bar = runtime.progress(steps, "train")
        try:
            for i in range(steps):
                if i == 3:
                    os.kill(os.getpid(), signal.SIGINT)  # the user's Ctrl-C
                bar.update()
        except runtime.Interrupted:
            (runtime.output_directory() / "checkpoint.txt").parent.mkdir(parents=True, exist_ok=True)
            (runtime.output_directory() / "checkpoint.txt").write_text(str(bar.value))
            raise
        return (steps,)


def test_ctrl_c_interrupts_at_next_step(tmp_path, capsys):
    classes = dict(CLASSES, FakeTrain=FakeTrain)
    prompt = {"1": {"class_type": "FakeTrain", "inputs": {"steps": 100}},
              "2": {"class_type": "FakeSave", "inputs": {"x": ["1", 0], "filename_prefix": "t"}}}
    out = tmp_path / "out"
    assert graph.cli_main([str(_write(tmp_path, prompt)), "--out", str(out)], node_classes=classes) == 1
    assert "interrupted" in capsys.readouterr().err
    assert (out / "checkpoint.txt").read_text() == "4"  # stopped at the first update after the signal
    assert not (out / "t.txt").exists()
    runtime.check_interrupt()  # the request does not leak into the next run


def test_int_step_grid():
    prompt = {"1": {"class_type": "FakeTrain", "inputs": {"steps": 9}},
              "2": {"class_type": "FakeSave", "inputs": {"x": ["1", 0], "filename_prefix": "t"}}}
    classes = dict(CLASSES, FakeTrain=FakeTrain)
    assert graph.validate(prompt, classes) == []  # 1 + 2 * 4: on the grid from min
    prompt["1"]["inputs"]["steps"] = 8
    assert graph.validate(prompt, classes) == []  # 2 * 4: on the grid from 0
    prompt["1"]["inputs"]["steps"] = 7
    errors = graph.validate(prompt, classes)
    assert [(e["type"], e["extra_info"]["input_name"]) for e in errors] == [("value_not_on_step", "steps")]


class FakeInt:
    CATEGORY, FUNCTION, DESCRIPTION = "Interplay/test", "make", "int"
    RETURN_TYPES = ("INT",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"n": ("INT", {"default": 0, "min": 0, "max": 10**6})}}

    def make(self, n):
        return (n * 2,)


def _socket(name, typ, link=None, widget=False):
    entry = {"localized_name": name, "name": name, "type": typ, "link": link}
    if widget:
        entry["widget"] = {"name": name}
    return entry


# The newer frontend's save: every widget also listed as an input socket (link null unless connected),
# localized names, output shapes, frontendVersion in extra.
UI_NEW = {
    "id": "3c0e1f0e-5b0b-4d55-9f55-2a9e7d6f4a10", "revision": 0, "last_node_id": 12, "last_link_id": 11,
    "nodes": [
        {"id": 9, "type": "FakeInt", "pos": [0, 0], "size": [270, 82], "flags": {}, "order": 0, "mode": 0,
         "inputs": [_socket("n", "INT", widget=True)],
         "outputs": [{"localized_name": "INT", "name": "INT", "type": "INT", "links": [10]}],
         "properties": {"Node name for S&R": "FakeInt", "cnr_id": "comfyui-interplay", "ver": "0.1.0"},
         "widgets_values": [500]},
        {"id": 10, "type": "FakeSource", "pos": [320, 0], "size": [400, 220], "flags": {}, "order": 1, "mode": 0,
         "inputs": [_socket("value", "INT", widget=True), _socket("seed", "INT", 10, widget=True),
                    _socket("mode", "COMBO", widget=True), _socket("text", "STRING", widget=True)],
         "outputs": [{"localized_name": "number", "name": "number", "type": "FAKE_NUM", "links": [11]}],
         "properties": {"Node name for S&R": "FakeSource"},
         "widgets_values": [3, 42, "increment", "a", "multi\nline"]},
        {"id": 12, "type": "FakeSave", "pos": [760, 0], "size": [300, 90], "flags": {}, "order": 2, "mode": 0,
         "inputs": [_socket("x", "FAKE_NUM", 11), _socket("filename_prefix", "STRING", widget=True)],
         "outputs": [], "properties": {"Node name for S&R": "FakeSave"}, "widgets_values": ["new/format"]},
    ],
    "links": [[10, 9, 0, 10, 1, "INT"], [11, 10, 0, 12, 0, "FAKE_NUM"]],
    "groups": [], "config": {},
    "extra": {"ds": {"scale": 0.9, "offset": [10.5, -3.25]}, "frontendVersion": "1.28.7"}, "version": 0.4,
}


def test_new_frontend_save_runs(tmp_path):
    api = graph.ui_to_api(copy.deepcopy(UI_NEW), dict(CLASSES, FakeInt=FakeInt))
    assert _strip_meta(api) == {
        "9": {"class_type": "FakeInt", "inputs": {"n": 500}},
        "10": {"class_type": "FakeSource", "inputs": {"value": 3, "seed": ["9", 0], "mode": "a",
                                                      "text": "multi\nline"}},
        "12": {"class_type": "FakeSave", "inputs": {"filename_prefix": "new/format", "x": ["10", 0]}},
    }
    out = tmp_path / "out"
    rc = graph.cli_main([str(_write(tmp_path, UI_NEW)), "--out", str(out), "--set", "9.n=7"],
                        node_classes=dict(CLASSES, FakeInt=FakeInt))
    assert rc == 0
    assert (out / "new" / "format.txt").read_text() == repr(3 + 14 + 1000000)  # mode "a" adds 1e6


def test_execute_targets_runs_a_partial_graph():
    prompt = copy.deepcopy(API)
    prompt["20"]["inputs"]["factor"] = 1000.0  # invalid, but not a target's dependency
    outputs = graph.execute(prompt, CLASSES, targets=["3"])
    assert CALLS == ["source", "filter"] and set(outputs) == {"1", "3"} and outputs["3"] == (11,)
    with pytest.raises(graph.ValidationFailed) as ei:
        graph.execute(prompt, CLASSES, targets=[20])
    assert ei.value.errors[0]["node_id"] == "20" and "factor" in str(ei.value)
    assert graph.validate(prompt, CLASSES, targets=["99"])[0]["details"] == "no node 99"


def test_workflow_embedded_in_png(tmp_path):
    from PIL import Image, PngImagePlugin

    meta = PngImagePlugin.PngInfo()
    meta.add_text("prompt", json.dumps(UI_AS_API))
    meta.add_text("workflow", json.dumps(UI))
    Image.new("RGB", (4, 4)).save(tmp_path / "saved.png", pnginfo=meta)
    assert _strip_meta(graph.load_workflow(tmp_path / "saved.png", CLASSES)) == UI_AS_API
    Image.new("RGB", (4, 4)).save(tmp_path / "plain.png")
    with pytest.raises(graph.WorkflowError, match="no ComfyUI workflow"):
        graph.load_workflow(tmp_path / "plain.png", CLASSES)


def test_list_widget_values_are_not_links():
    # ["1", 0] as a saved widget value must stay a value, not become a link to node 1
    ui = {"nodes": [
        {"id": 1, "type": "FakeEven", "mode": 0, "inputs": [], "outputs": [], "widgets_values": [2]},
        {"id": 2, "type": "FakeSave", "mode": 0, "inputs": [{"name": "x", "type": "FAKE_NUM", "link": 1}],
         "widgets_values": ["l"]},
        {"id": 3, "type": "FakeSplit", "mode": 0, "inputs": [], "widgets_values": [[5, 0]]}],
        "links": [[1, 1, 0, 2, 0, "FAKE_NUM"]]}
    api = graph.ui_to_api(ui, CLASSES)
    assert api["3"]["inputs"]["n"] == {"__value__": [5, 0]}
    assert graph.validate(api, CLASSES) == []  # node 3 feeds no output
    errors = graph.validate(api, CLASSES, targets=["3"])
    assert [e["type"] for e in errors] == ["invalid_input_type"] and errors[0]["node_id"] == "3"


def test_validate_only_and_print_prompt(tmp_path, capsys):
    path = _write(tmp_path, UI)
    out = tmp_path / "out"
    assert graph.cli_main([str(path), "--out", str(out), "--validate-only"], node_classes=CLASSES) == 0
    assert "valid (3 node(s))" in capsys.readouterr().out and CALLS == [] and not out.exists()
    assert graph.cli_main([str(path), "--print-prompt", "--set", "4.offset=2"], node_classes=CLASSES) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["4"]["inputs"] == {"factor": 2.5, "offset": 2, "x": ["1", 0]} and CALLS == []


def test_ui_workflow_saved_before_a_new_optional_widget_still_converts():
    # the shipped sandbox workflow, as saved before CogVideoX Sampler gained `control_guidance` and the speed
    # inputs after it (its last widgets): the missing trailing values mean the defaults, every other value keeps
    # its place
    from interplay.nodes import NODE_CLASS_MAPPINGS

    path = Path(__file__).resolve().parents[2] / "workflows" / "sandbox_push.json"
    ui = json.loads(path.read_text())
    now = graph.ui_to_api(ui, NODE_CLASS_MAPPINGS)
    later = ["control_guidance", "step_cache", "cache_threshold", "compile", "fp8", "attention", "parallel"]
    for node in ui["nodes"]:
        if node["type"] == "InterplayCogVideoXSampler":
            node["widgets_values"] = node["widgets_values"][:-len(later)]
    old = graph.ui_to_api(ui, NODE_CLASS_MAPPINGS)
    sampler = [k for k, v in now.items() if v["class_type"] == "InterplayCogVideoXSampler"]
    assert sampler and now[sampler[0]]["inputs"]["control_guidance"] == 1.0
    assert [now[sampler[0]]["inputs"][k] for k in later[1:]] == [False, 0.2, False, "off", "auto", "auto"]
    assert not set(later) & set(old[sampler[0]]["inputs"])
    for k in later:
        now[sampler[0]]["inputs"].pop(k)
    assert old == now
    assert graph.validate(old, NODE_CLASS_MAPPINGS) == []  # the sandbox graph needs no model files


def test_input_dir_and_a_missing_input_file_fail_validation_before_anything_runs(tmp_path, capsys):
    # `interplay run --input-dir`: names in the workflow refer to that folder, and a missing one is a validation
    # error (exit 2) naming the folder, reported before any node (the model loader here) runs
    import torch

    from interplay.models import video_io as vio
    from interplay.nodes.video import InterplayLoadVideo, InterplayPreviewFrames

    models = tmp_path / "models"
    (models / "diffusion_models").mkdir(parents=True)
    (models / "diffusion_models" / "m.safetensors").write_bytes(b"")
    runtime.set_models_root(models)
    classes = dict(CLASSES, InterplayLoadVideo=InterplayLoadVideo, InterplayPreviewFrames=InterplayPreviewFrames)
    prompt = {"1": {"class_type": "FakeModel", "inputs": {"model": "m.safetensors"}},
              "2": {"class_type": "FakeSave", "inputs": {"x": ["1", 0], "filename_prefix": "m"}},
              "3": {"class_type": "InterplayLoadVideo", "inputs": {"video": "clip.webp"}},
              "4": {"class_type": "InterplayPreviewFrames", "inputs": {"images": ["3", 0], "fps": 8.0}}}
    path = _write(tmp_path, prompt)
    inputs = tmp_path / "my_inputs"
    inputs.mkdir()
    rc = graph.cli_main([str(path), "--models-dir", str(models), "--input-dir", str(inputs),
                         "--out", str(tmp_path / "out")], node_classes=classes)
    err = capsys.readouterr().err
    assert rc == 2 and CALLS == []
    assert "node 3 (InterplayLoadVideo)" in err and "'clip.webp' not found" in err and str(inputs.resolve()) in err
    assert "--input-dir" in err
    vio.save_video(torch.full((3, 16, 16, 3), 0.5), inputs / "clip.webp", fps=8)
    rc = graph.cli_main([str(path), "--models-dir", str(models), "--input-dir", str(inputs),
                         "--out", str(tmp_path / "out")], node_classes=classes)
    assert rc == 0 and CALLS == ["model", "save2"]
    assert runtime.input_directory() == inputs.resolve()
