"""The KineMask image-to-video workflow (API twin of workflows/kinemask_i2v.json) runs headlessly with the tiny
CogVideoX, a saved "trained" branch and the tiny SAM2, only sizes and file names changed."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from interplay.models import runtime
from interplay.models.control import kinemask as km
from interplay.nodes import NODE_CLASS_MAPPINGS, graph

ROOT = Path(__file__).resolve().parents[1]
S, F = 32, 9
DRAWING = {"v": 1, "objects": [{"arrow": {"x0": 10, "y0": 16, "x1": 26, "y1": 16}, "speed": 1.2,
                                "points": [[10, 16, 1]]}]}


@pytest.fixture(scope="module")
def setup(tiny_cogvideox, tiny_sam2, tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    for kind in ("diffusers", "interplay", "sam2", "input"):
        (root / kind).mkdir()
    from kit.tiny import _link_or_copy  # hard links: a symlink out of the folder is refused by the path rule

    _link_or_copy(tiny_cogvideox, root / "diffusers" / "tiny_cogvideox")
    from interplay.models.backbones import cogvideox as cog

    bb = cog.load_cogvideox(tiny_cogvideox, dtype=torch.float32, device="cpu")
    br = km.new_branch(bb.denoiser, num_layers=1, downscale=bb.extra.get("vae_scale_factor_spatial", 8))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a "trained" branch: non-zero output projections so the control changes the video
        for lin in br.module.out_projs:
            lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) * 0.5)
    km.save_branch(br.module, root / "interplay" / "kinemask_test.safetensors")
    yaml, weights = tiny_sam2
    shutil.copy(yaml, root / "sam2" / Path(yaml).name)
    shutil.copy(weights, root / "sam2" / Path(weights).name)
    img = np.full((S, S, 3), 90, np.uint8)
    img[12:21, 6:15] = (220, 40, 40)  # the red cube under the arrow's tail
    Image.fromarray(img).save(root / "input" / "kinemask_input.png")
    return root, Path(yaml).name, Path(weights).name


@pytest.fixture(autouse=True)
def _reset_runtime():
    yield
    runtime.set_models_root(None)
    runtime.set_output_directory(None)
    runtime.set_input_directory(None)


def _prompt(setup, weight):
    root, yaml, weights = setup
    runtime.set_models_root(root)
    prompt = graph.load_workflow(ROOT / "workflows" / "api" / "kinemask_i2v.json", NODE_CLASS_MAPPINGS)
    for node in prompt.values():
        ins, ct = node["inputs"], node["class_type"]
        if ct == "InterplayLoadVideo":
            runtime.set_input_directory(root / "input")
            ins["video"] = "kinemask_input.png"
        elif ct == "InterplaySam2Loader":
            ins.update(weights=weights, config=yaml, device="cpu")
        elif ct == "InterplayArrowPainter":
            ins.update(drawing=json.dumps(DRAWING), num_frames=F)
        elif ct == "InterplayCogVideoXLoader":
            ins.update(model="diffusers/tiny_cogvideox", weight_dtype="fp32", offload="none", vae_tiling=False)
        elif ct == "InterplayKineMaskBranchLoader":
            ins["branch"] = "interplay/kinemask_test.safetensors"
        elif ct == "InterplayCogVideoXSampler":
            ins.update(width=S, height=S, num_frames=F, steps=2, control_weight=weight)
    return prompt


def _run(setup, weight, out_dir):
    prompt = _prompt(setup, weight)
    assert graph.validate(prompt, NODE_CLASS_MAPPINGS) == []
    runtime.set_output_directory(out_dir)
    out = graph.execute(prompt, NODE_CLASS_MAPPINGS)
    sampler = next(n for n, v in prompt.items() if v["class_type"] == "InterplayCogVideoXSampler")
    painter = next(n for n, v in prompt.items() if v["class_type"] == "InterplayArrowPainter")
    return out[sampler][0], out[painter]


def test_kinemask_workflow_runs_and_the_arrow_drives_the_video(setup, tmp_path):
    video, (control, masks, preview) = _run(setup, 0.5, tmp_path / "a")
    assert video.shape == (F, S, S, 3) and 0 <= float(video.min()) and float(video.max()) <= 1
    assert masks.shape[-2:] == (S, S) and float(masks.sum()) > 0  # SAM2 (tiny, random) returned an object
    v = control.video
    assert v.shape == (F, S, S, 3)
    assert float(v[1:].abs().max()) == 0  # inference control: frame 0 only
    inside = v[0][masks[0] > 0.5]
    assert torch.allclose(inside[:, 0], torch.full_like(inside[:, 0], 1.2 / 1.5))  # +x, speed / v_ref
    assert float(inside[:, 1:].abs().max()) == 0
    assert preview.shape == (1, S, S, 3)
    assert list((tmp_path / "a").rglob("kinemask*.mp4"))
    off, _ = _run(setup, 0.0, tmp_path / "b")  # the same graph with the control weight at 0
    assert float((video - off).abs().max()) > 1e-4


def test_kinemask_workflow_keeps_release_settings():
    wf = json.loads((ROOT / "workflows" / "api" / "kinemask_i2v.json").read_text())
    s = next(v["inputs"] for v in wf.values() if v["class_type"] == "InterplayCogVideoXSampler")
    assert (s["width"], s["height"], s["num_frames"], s["steps"], s["cfg"], s["control_weight"]) == \
        (720, 480, 49, 50, 6.0, 0.5)
    b = next(v["inputs"] for v in wf.values() if v["class_type"] == "InterplayKineMaskBranchLoader")
    assert b["num_layers"] == 8
