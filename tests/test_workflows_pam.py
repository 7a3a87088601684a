"""workflows/pam_hoi.json (trajectory -> HOI render -> PAM Control -> CogVideoX Sampler) and its API twin run
headlessly with the tiny CogVideoX and a tiny PAM checkpoint in the released layout, only sizes, steps and file
names changed; a trajectory of another frame count than the sampler's is resampled, or refused by name."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from interplay.models import runtime
from interplay.models.control import pam as P
from interplay.nodes import NODE_CLASS_MAPPINGS, graph
from kit import tiny

ROOT = Path(__file__).resolve().parents[1]
API, UI = ROOT / "workflows" / "api" / "pam_hoi.json", ROOT / "workflows" / "pam_hoi.json"
S, F = 32, 9
HAND = torch.tensor([92, 0, 255])  # the hand's ADE20K colour in PAM's DexYCB coding


@pytest.fixture(scope="module")
def root(tiny_cogvideox, tmp_path_factory):
    r = tmp_path_factory.mktemp("models")
    for kind in ("diffusers", "controlnet", "input"):
        (r / kind).mkdir()
    # hard-linked copies: the path rule refuses symlinks out of the models folders
    tiny._link_or_copy(tiny_cogvideox, r / "diffusers" / "tiny_cogvideox")
    tiny._link_or_copy(tiny.tiny_pam_released_dir(), r / "controlnet" / "pam_dexycb_all_cond")
    img = np.full((S, S, 3), 120, np.uint8)
    img[18:26, 12:20] = (200, 60, 40)
    Image.fromarray(img).save(r / "input" / "pam_first_frame.png")
    return r


@pytest.fixture(autouse=True)
def _reset_runtime():
    yield
    runtime.set_models_root(None)
    runtime.set_output_directory(None)
    runtime.set_input_directory(None)


def _shrink(prompt: dict, root: Path, **render) -> dict:
    runtime.set_models_root(root)
    runtime.set_input_directory(root / "input")
    for node in prompt.values():
        ins, ct = node["inputs"], node["class_type"]
        if ct == "InterplayLoadVideo":
            ins.update(force_width=S, force_height=S)
        elif ct == "InterplayHOIRenderConditions":
            ins.update(dict(width=S, height=S, frames=F, points=3000, splat_radius=0, min_area=1), **render)
        elif ct == "InterplayCogVideoXLoader":
            ins.update(model="diffusers/tiny_cogvideox", weight_dtype="fp32", offload="none", vae_tiling=False)
        elif ct == "InterplayPAMControl":
            ins["num_frames"] = F
        elif ct == "InterplayCogVideoXSampler":
            ins.update(width=S, height=S, num_frames=F, steps=2)
    return prompt


def _ids(prompt):
    return {v["class_type"]: k for k, v in prompt.items() if v["class_type"] != "InterplaySaveVideo"}


def _run(prompt, out_dir, targets=None):
    assert graph.validate(prompt, NODE_CLASS_MAPPINGS, targets) == []
    runtime.set_output_directory(out_dir)
    return graph.execute(prompt, NODE_CLASS_MAPPINGS, targets=targets)


def test_pam_workflow_and_its_twin_run_and_the_conditions_drive_the_video(root, tmp_path):
    api = _shrink(graph.load_workflow(API, NODE_CLASS_MAPPINGS), root)
    ui = _shrink(graph.load_workflow(UI, NODE_CLASS_MAPPINGS), root)
    assert {k: v["class_type"] for k, v in ui.items()} == {k: v["class_type"] for k, v in api.items()}
    for k, v in api.items():  # the UI file also spells out the optional widgets' defaults
        assert {n: ui[k]["inputs"][n] for n in v["inputs"]} == v["inputs"], v["class_type"]
    ids = _ids(api)
    out = _run(api, tmp_path / "api")
    seq = out[ids["InterplayHOITrajectory"]][0]
    cond, depth, seg, hand, d0, s0, k0, mask, fps = out[ids["InterplayHOIRenderConditions"]]
    assert seq.num_frames == 49 and cond.num_frames == F  # the 49-frame trajectory resampled to the sampler's 9
    assert fps == pytest.approx(15.0 * (F - 1) / 48)  # the same time span
    for v in (depth, seg, hand):
        assert v.shape == (F, S, S, 3)
    assert torch.equal(s0, seg[:1]) and torch.equal(d0, depth[:1]) and torch.equal(k0, hand[:1])  # plain IMAGEs
    assert int(((seg * 255).round().long() == HAND).all(-1).sum()) > 10
    (sig,) = out[ids["InterplayPAMControl"]]
    assert sig.video.shape == (F, S, S, 15) and sig.meta["enabled"] == [False, False, True, True, True]
    br, layout = out[ids["InterplayPAMBranchLoader"]]
    assert layout.startswith("released PAM transformer") and br.config["num_blocks"] == tiny.PAM_BLOCKS
    assert out[ids["InterplayInteractionPrompt"]] == ("A man is in a lab trying to grasp something.",)
    video = out[ids["InterplayCogVideoXSampler"]][0]
    assert video.shape == (F, S, S, 3) and 0 <= float(video.min()) and float(video.max()) <= 1
    saved = sorted(p.name for p in (tmp_path / "api").rglob("*.mp4"))
    assert len(saved) == 2 and any(n.startswith("pam_seg") for n in saved)
    # the UI file, run with the control weight at 0: the same graph, and the conditions changed the video
    ui[ids["InterplayCogVideoXSampler"]]["inputs"]["control_weight"] = 0.0
    off = _run(ui, tmp_path / "ui")[ids["InterplayCogVideoXSampler"]][0]
    assert off.shape == video.shape and float((video - off).abs().max()) > 1e-3


def test_a_trajectory_of_another_length_is_refused_by_name(root, tmp_path):
    prompt = _shrink(graph.load_workflow(API, NODE_CLASS_MAPPINGS), root, frame_mismatch="error")
    control = [_ids(prompt)["InterplayPAMControl"]]  # up to the control: no model is needed to see the refusal
    with pytest.raises(graph.NodeExecutionError, match="has 49 frames, HOI Render Conditions 'frames' needs 9"):
        _run(prompt, tmp_path, control)
    # frames 0 keeps the trajectory's 49: PAM Control refuses them for the sampler's 9 before any sampling
    prompt = _shrink(graph.load_workflow(API, NODE_CLASS_MAPPINGS), root, frames=0)
    with pytest.raises(graph.NodeExecutionError, match="the conditions have 49 frames but 'num_frames' is 9"):
        _run(prompt, tmp_path, control)


def test_pam_workflow_keeps_the_release_settings():
    wf = json.loads(API.read_text())
    by = {v["class_type"]: v["inputs"] for v in wf.values()}
    s = by["InterplayCogVideoXSampler"]
    for k, v in P.SAMPLER_SETTINGS.items():
        assert s[k] == v, k
    assert s["prompt"] == ["7", 0] and wf["7"]["inputs"]["template"] == "free text"
    assert wf["7"]["inputs"]["extra"] == "A man is in a lab trying to grasp something."  # the release's sim demo
    r = by["InterplayHOIRenderConditions"]
    assert (r["width"], r["height"], r["frames"], r["points"], r["splat_radius"], r["min_area"], r["style"]) == \
        (720, 480, 49, 25000, 2, 50, "dexycb")
    assert by["InterplayHOITrajectory"]["frames"] == by["InterplayPAMControl"]["num_frames"] == 49
    assert by["InterplayPAMBranchLoader"]["num_blocks"] == 12
