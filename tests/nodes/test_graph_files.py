"""Workflow files and numbers the headless runner must refuse by name: NaN and +-inf in number inputs, and
malformed files (bad UTF-8, absurd nesting, wrongly typed parts) as a WorkflowError with the JSON path, never a
traceback (nodes/graph.py: _read_json, to_api, _check_ui_structure, _validate_node)."""
import json
import math

import pytest

from interplay.nodes import graph


def _sandbox_prompt(**over):
    scene = {"preset": "push", "seed": 0, "width": 32, "height": 32, "frames": 3, "fps": 8.0, **over}
    return {"1": {"class_type": "InterplaySandboxScene", "inputs": scene},
            "2": {"class_type": "InterplayPreviewFrames", "inputs": {"images": ["1", 0], "fps": 8.0}}}


@pytest.mark.parametrize("name,value", [("fps", math.nan), ("fps", math.inf), ("fps", -math.inf), ("fps", "nan"),
                                        ("width", math.nan), ("seed", math.inf), ("frames", "-inf")])
def test_nan_and_inf_are_refused_by_name(name, value):
    errors = graph.validate(_sandbox_prompt(**{name: value}))
    assert [e["type"] for e in errors] == ["value_not_finite"]
    e = errors[0]
    assert e["extra_info"]["input_name"] == name and e["node_id"] == "1" and "finite" in e["details"]
    assert graph.validate(_sandbox_prompt()) == []


def test_nan_from_a_file_and_from_set(tmp_path, capsys):
    f = tmp_path / "wf.json"
    f.write_text(json.dumps(_sandbox_prompt()).replace('"fps": 8.0}', '"fps": NaN}', 1))
    assert graph.cli_main([str(f), "--validate-only"]) == 2
    assert "fps" in capsys.readouterr().err
    f.write_text(json.dumps(_sandbox_prompt()))
    assert graph.cli_main([str(f), "--validate-only", "--set", "1.fps=inf"]) == 2
    err = capsys.readouterr().err
    assert "input 'fps': Value is not a finite number" in err and "Traceback" not in err


def _ui(nodes, links=()):
    return {"nodes": nodes, "links": list(links), "version": 0.4}


NODE = {"id": 1, "type": "InterplaySandboxScene", "mode": 0, "inputs": [], "widgets_values": ["push", 0, "fixed"]}
MALFORMED = [
    ("bad utf-8", b'{"1": {"class_type": "X", "inputs": {"a": "\xff\xfe"}}}', "not UTF-8 text (byte"),
    ("deep", b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    ("api inputs a list", json.dumps({"3": {"class_type": "InterplaySandboxScene", "inputs": [1, 2]}}).encode(),
     "['3'].inputs must be an object of input values; got list [1, 2]"),
    ("api class_type", json.dumps({"3": {"class_type": ["x"], "inputs": {}}}).encode(), "['3'].class_type"),
    ("ui inputs a list of numbers", json.dumps(_ui([dict(NODE, inputs=[1, 2])])).encode(),
     "nodes[0].inputs[0] must be an object; got int 1"),
    ("ui link a number", json.dumps(_ui([NODE], [5])).encode(), "links[0] must be [id, origin_id"),
    ("ui link too short", json.dumps(_ui([NODE], [[1, 2]])).encode(), "links[0] must be [id, origin_id"),
    ("ui link field", json.dumps(_ui([NODE], [[1, 2, "a", 3, 0, "IMAGE"]])).encode(), "links[0].origin_slot"),
    ("ui node without id", json.dumps(_ui([{k: v for k, v in NODE.items() if k != "id"}])).encode(),
     "nodes[0] has no id"),
    ("ui node not an object", json.dumps(_ui([NODE, 7])).encode(), "nodes[1] must be an object"),
    ("ui input link a string", json.dumps(_ui([dict(NODE, inputs=[{"name": "x", "link": "4"}])])).encode(),
     "nodes[0].inputs[0].link must be a link id"),
    ("ui widgets a number", json.dumps(_ui([dict(NODE, widgets_values=3)])).encode(), "nodes[0].widgets_values"),
    ("ui order", json.dumps(_ui([dict(NODE, order="first")])).encode(), "nodes[0].order must be a number"),
    ("ui definitions", json.dumps(dict(_ui([NODE]), definitions=[1])).encode(), "definitions must be an object"),
]


@pytest.mark.parametrize("label,data,match", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_files_give_a_named_error(tmp_path, capsys, label, data, match):
    f = tmp_path / "wf.json"
    f.write_bytes(data)
    with pytest.raises(graph.WorkflowError) as ei:
        graph.load_workflow(f)
    assert match in str(ei.value)
    assert graph.cli_main([str(f), "--validate-only"]) == 2  # the CLI prints one line, no traceback
    err = capsys.readouterr().err
    assert err.startswith("error: ") and match in err and "Traceback" not in err


def test_broken_png_is_named(tmp_path):
    f = tmp_path / "wf.png"
    f.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(graph.WorkflowError, match="not a readable PNG"):
        graph.load_workflow(f)


def test_validate_refuses_wrongly_typed_entries_too():
    errors = graph.validate({"1": {"class_type": ["x"], "inputs": {}}, "2": {"class_type": "X", "inputs": [1]}})
    assert [e["type"] for e in errors] == ["invalid_prompt", "invalid_prompt"]
    assert "inputs is [1]" in errors[1]["details"]
