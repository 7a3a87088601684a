"""The Wan2.2 image-to-video workflow (API twin of workflows/wan_i2v.json) runs headlessly with the tiny two-expert
Wan from ComfyUI-style single files, only sizes, steps and file names changed; it equals the engine's sample."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from interplay.models import runtime
from interplay.nodes import NODE_CLASS_MAPPINGS, graph

ROOT = Path(__file__).resolve().parents[1]
S, F = 32, 5


@pytest.fixture(autouse=True)
def _reset_runtime():
    yield
    runtime.set_models_root(None)
    runtime.set_output_directory(None)


def _prompt(root):
    runtime.set_models_root(root)
    prompt = graph.load_workflow(ROOT / "workflows" / "api" / "wan_i2v.json", NODE_CLASS_MAPPINGS)
    for node in prompt.values():
        ins, ct = node["inputs"], node["class_type"]
        if ct == "InterplayLoadVideo":
            ins["video"] = str(root / "input" / "wan_input.png")
        elif ct == "InterplayWanLoader":
            ins.update(transformer="tiny_wan2.2_i2v_high_noise_14B.safetensors",
                       transformer_2="tiny_wan2.2_i2v_low_noise_14B.safetensors", vae="tiny_wan_2.1_vae.safetensors",
                       text_encoder="tiny_umt5_xxl.safetensors", weight_dtype="fp32", vae_tiling=False)
        elif ct == "InterplayWanSampler":
            ins.update(width=S, height=S, num_frames=F, steps=3)
    return prompt


def test_wan_i2v_workflow_runs_headlessly_and_is_the_engines_sample(tmp_path):
    from kit.tiny import models_root

    root = models_root(tmp_path / "models")
    (root / "input").mkdir()
    img = np.full((48, 40, 3), 90, np.uint8)
    img[12:21, 6:15] = (220, 40, 40)
    Image.fromarray(img).save(root / "input" / "wan_input.png")
    prompt = _prompt(root)
    assert graph.validate(prompt, NODE_CLASS_MAPPINGS) == []
    runtime.set_output_directory(tmp_path / "out")
    out = graph.execute(prompt, NODE_CLASS_MAPPINGS)
    sampler = next(n for n, v in prompt.items() if v["class_type"] == "InterplayWanSampler")
    frames, latent = out[sampler]
    assert frames.shape == (F, S, S, 3) and latent["samples"].shape == (1, 16, 2, 4, 4)
    assert list((tmp_path / "out").rglob("wan_i2v*.mp4"))

    from interplay.models.backbones import wan
    from interplay.models.sampling.wan import sample_wan
    from interplay.models.video_io import fit_frames, load_video

    from interplay.nodes.wan import InterplayWanLoader

    loader = next(v["inputs"] for v in prompt.values() if v["class_type"] == "InterplayWanLoader")
    bb = InterplayWanLoader().load(**loader)["result"][0]
    s = prompt[sampler]["inputs"]
    image = fit_frames(load_video(root / "input" / "wan_input.png")[0][:1].float(), S, S)
    lat = sample_wan(bb, image, wan.encode_prompt(bb, [s["prompt"]]), wan.encode_prompt(bb, [""]), num_frames=F,
                     steps=3, cfg=3.5, seed=s["seed"])
    assert torch.equal(latent["samples"], wan.raw_latents(bb, lat))


def test_wan_i2v_workflow_keeps_release_settings():
    wf = json.loads((ROOT / "workflows" / "api" / "wan_i2v.json").read_text())
    s = next(v["inputs"] for v in wf.values() if v["class_type"] == "InterplayWanSampler")
    assert (s["width"], s["height"], s["num_frames"], s["steps"], s["cfg"], s["scheduler"]) == \
        (832, 480, 81, 40, 3.5, "unipc")
    lo = next(v["inputs"] for v in wf.values() if v["class_type"] == "InterplayWanLoader")
    assert "high_noise" in lo["transformer"] and "low_noise" in lo["transformer_2"]
