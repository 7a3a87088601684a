"""The MATRIX workflows (API twins of workflows/matrix_i2v.json and matrix_attention.json) run headlessly with the
tiny CogVideoX and a "trained" MATRIX file, only sizes, layers and file names changed."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from interplay.models import runtime
from interplay.models.backbones import cogvideox as cog
from interplay.nodes import NODE_CLASS_MAPPINGS, graph

ROOT = Path(__file__).resolve().parents[1]
S, F = 32, 9


@pytest.fixture(scope="module")
def setup(tiny_cogvideox, tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    for kind in ("diffusers", "interplay", "input"):
        (root / kind).mkdir()
    from kit.tiny import _link_or_copy  # hard links: a symlink out of the folder is refused by the path rule

    _link_or_copy(tiny_cogvideox, root / "diffusers" / "tiny_cogvideox")
    from kit.tiny import save_tiny_matrix_file

    bb = cog.load_cogvideox(tiny_cogvideox, dtype=torch.float32, device="cpu")
    save_tiny_matrix_file(bb, root / "interplay" / "matrix_test.safetensors")  # a "trained" file
    img = np.full((S, S, 3), 90, np.uint8)
    img[4:14, 4:14] = (220, 40, 40)
    img[18:30, 16:30] = (40, 40, 220)
    Image.fromarray(img).save(root / "input" / "matrix_input.png")
    idm = np.zeros((S, S, 3), np.uint8)
    idm[4:14, 4:14] = (255, 0, 0)  # id1
    idm[18:30, 16:30] = (0, 255, 0)  # id2
    Image.fromarray(idm).save(root / "input" / "matrix_id_map.png")
    Image.fromarray(np.zeros((S, S, 3), np.uint8)).save(root / "input" / "black.png")
    return root


@pytest.fixture(autouse=True)
def _reset_runtime():
    yield
    runtime.set_models_root(None)
    runtime.set_output_directory(None)


PROMPT = "[the red box](1) [pushes](1>2) [the blue box](2) to the right"


def _prompt(root, name, **over):
    runtime.set_models_root(root)
    prompt = graph.load_workflow(ROOT / "workflows" / "api" / f"{name}.json", NODE_CLASS_MAPPINGS)
    for node in prompt.values():
        ins, ct = node["inputs"], node["class_type"]
        if ct == "InterplayLoadVideo":
            ins["video"] = str(root / "input" / ins["video"])
        elif ct == "InterplayCogVideoXLoader":
            ins.update(model="diffusers/tiny_cogvideox", weight_dtype="fp32", offload="none", vae_tiling=False)
        elif ct == "InterplayMatrixLoader":
            ins["matrix"] = "interplay/matrix_test.safetensors"
        elif ct == "InterplayMatrixPrompt":
            ins["prompt"] = PROMPT
        elif ct == "InterplayCogVideoXSampler":
            ins.update(width=S, height=S, num_frames=F, steps=2)
        elif ct == "InterplayMatrixAttentionView":
            ins["layer"] = 1 if ins["map"].startswith("v2v") else 0
        ins.update(over.get(ct, {}))
    return prompt


def _run(prompt, out_dir):
    assert graph.validate(prompt, NODE_CLASS_MAPPINGS) == []
    runtime.set_output_directory(out_dir)
    return graph.execute(prompt, NODE_CLASS_MAPPINGS)


def _id(prompt, ct, k=0):
    return [n for n, v in prompt.items() if v["class_type"] == ct][k]


def test_matrix_i2v_workflow_runs_and_the_id_map_reaches_the_model(setup, tmp_path):
    p = _prompt(setup, "matrix_i2v")
    out = _run(p, tmp_path / "a")
    video = out[_id(p, "InterplayCogVideoXSampler")][0]
    assert video.shape == (F, S, S, 3) and 0 <= float(video.min()) and float(video.max()) <= 1
    assert list((tmp_path / "a").rglob("matrix*.mp4"))
    # a black ID map (allowed, reported) gives another video: the widened channels matter
    q = _prompt(setup, "matrix_i2v")
    q[_id(q, "InterplayLoadVideo", 1)]["inputs"]["video"] = str(setup / "input" / "black.png")
    black = _run(q, tmp_path / "b")
    assert float((black[_id(q, "InterplayCogVideoXSampler")][0] - video).abs().max()) > 1e-4


def test_matrix_attention_workflow_captures_and_overlays(setup, tmp_path):
    p = _prompt(setup, "matrix_attention")
    out = _run(p, tmp_path / "a")
    video = out[_id(p, "InterplayCogVideoXSampler")][0]
    views = [out[_id(p, "InterplayMatrixAttentionView", k)][0] for k in (0, 1)]
    for v in views:
        assert v.shape == video.shape and float((v - video).abs().max()) > 0.05  # the heat map is drawn
    report, best, best_aas = out[_id(p, "InterplayMatrixAAS")]
    rep = json.loads(report)
    assert set(rep["layers"]) == {"0", "1"} and set(rep["layers"]["0"]["v2t"]) == {"id1", "id2", "verb1>2"}
    assert best in (0, 1) and 0 < best_aas < 64  # attention mass of 16 x 3 masked-frame queries at most
    assert len(list((tmp_path / "a").rglob("matrix_v2*.webp"))) == 2
    # the capture observes: the sampler's video equals a run without it
    plain = _prompt(setup, "matrix_attention")
    plain[_id(plain, "InterplayCogVideoXSampler")]["inputs"].pop("controls")
    for n in [n for n, v in plain.items() if v["class_type"] in ("InterplayMatrixAttentionView", "InterplayMatrixAAS",
                                                                 "InterplayMatrixAttentionCapture")
              or (v["class_type"] == "InterplaySaveVideo" and n != _id(plain, "InterplaySaveVideo"))]:
        plain.pop(n)
    ref = _run(plain, tmp_path / "b")
    assert torch.equal(ref[_id(plain, "InterplayCogVideoXSampler")][0], video)


def test_matrix_workflows_keep_release_settings():
    wf = json.loads((ROOT / "workflows" / "api" / "matrix_i2v.json").read_text())
    s = next(v["inputs"] for v in wf.values() if v["class_type"] == "InterplayCogVideoXSampler")
    assert (s["width"], s["height"], s["num_frames"], s["steps"], s["cfg"]) == (720, 480, 49, 50, 6.0)
    m = next(v["inputs"] for v in wf.values() if v["class_type"] == "InterplayMatrixLoader")
    assert m["strength"] == -1.0  # the preset's strength
    wf = json.loads((ROOT / "workflows" / "api" / "matrix_attention.json").read_text())
    views = [v["inputs"] for v in wf.values() if v["class_type"] == "InterplayMatrixAttentionView"]
    assert [(v["map"], v["layer"]) for v in views] == [("v2t:id2", 11), ("v2v:id1", 12)]
