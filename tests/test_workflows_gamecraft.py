"""The GameCraft play workflow (API twin of workflows/gamecraft_play.json) runs headlessly, only sizes, steps and file
names changed: with the tiny two-expert Wan2.2 I2V and an untrained encoder it runs the labelled chunked
continuation; with a tiny causal student (a Self-Forcing-layout checkpoint converted here) it runs causally, and
three queue runs continuing the session equal one run of three blocks."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from interplay.models import runtime
from interplay.nodes import NODE_CLASS_MAPPINGS, graph

ROOT = Path(__file__).resolve().parents[1]
WF = ROOT / "workflows" / "api" / "gamecraft_play.json"
S = 32


@pytest.fixture(autouse=True)
def _reset_runtime():
    yield
    runtime.set_models_root(None)
    runtime.set_output_directory(None)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    from kit.tiny import models_root
    from safetensors.torch import load_file

    from interplay.models.backbones.wan_causal import convert_causal_checkpoint

    tmp = tmp_path_factory.mktemp("gc")
    root = models_root(tmp / "models")
    (root / "input").mkdir()
    img = np.full((40, 48, 3), 120, np.uint8)
    img[10:20, 8:18] = (30, 200, 60)
    Image.fromarray(img).save(root / "input" / "gamecraft_start.png")
    sd = load_file(root / "diffusion_models" / "tiny_wan2.1_t2v_1.3B.safetensors")
    torch.save({"generator_ema": {"model." + k: v for k, v in sd.items()}}, tmp / "self_forcing_dmd.pt")
    convert_causal_checkpoint(tmp / "self_forcing_dmd.pt", root / "diffusion_models" / "tiny_self_forcing.safetensors",
                              head_dim=16)
    return root


def _prompt(root, tmp_path, causal: bool, **sampler):
    runtime.set_models_root(root)
    runtime.set_output_directory(tmp_path / "out")
    prompt = graph.load_workflow(WF, NODE_CLASS_MAPPINGS)
    for node in prompt.values():
        ins, ct = node["inputs"], node["class_type"]
        if ct == "InterplayLoadVideo":
            ins["video"] = str(root / "input" / "gamecraft_start.png")
        elif ct == "InterplayWanLoader":
            if causal:
                ins.update(transformer="tiny_self_forcing.safetensors", transformer_2="(none)")
            else:
                ins.update(transformer="tiny_wan2.2_i2v_high_noise_14B.safetensors",
                           transformer_2="tiny_wan2.2_i2v_low_noise_14B.safetensors")
            ins.update(vae="tiny_wan_2.1_vae.safetensors", text_encoder="tiny_umt5_xxl.safetensors",
                       weight_dtype="fp32", vae_tiling=False)
        elif ct == "InterplayGameCraftSampler":
            ins.update(width=S, height=S, chunk_steps=2, **sampler)
    return prompt


def _sampler(prompt):
    return next(n for n, v in prompt.items() if v["class_type"] == "InterplayGameCraftSampler")


def test_shipped_settings_are_the_papers_defaults():
    wf = json.loads(WF.read_text())
    s = wf[_sampler(wf)]["inputs"]
    assert (s["block_latent_frames"], s["sink_latent_frames"], s["window_latent_frames"], s["schedule"], s["cfg"],
            s["cache_update_pass"], s["recache_scope"], s["mode"]) == (3, 1, 9, "few_step", 1.0, True, "last_block",
                                                                        "auto")
    assert [float(t) for t in s["timesteps"].split(",")] == [1000.0, 937.5, 833.33, 625.0]


def test_two_expert_i2v_runs_the_labelled_chunked_continuation(root, tmp_path):
    prompt = _prompt(root, tmp_path, causal=False)
    assert graph.validate(prompt, NODE_CLASS_MAPPINGS) == []
    out = graph.execute(prompt, NODE_CLASS_MAPPINGS)
    sid_node = _sampler(prompt)
    frames, latent, sid, info, fps = out[sid_node]
    info = json.loads(info)
    assert frames.shape == (9, S, S, 3) and latent["samples"].shape == (1, 16, 3, 4, 4) and fps == 16.0
    assert info["mode"] == "chunked" and "chunked continuation" in info["label"]
    assert "no causal student" in info["mode_reason"]
    assert out.ui[sid_node]["interplay_play"][0]["session"] == sid
    assert (tmp_path / "out" / "temp" / "interplay_play" / f"{sid}_00000.webp").is_file()


def test_causal_student_three_queue_runs_equal_one_run_of_three_blocks(root, tmp_path):
    first = _prompt(root, tmp_path, causal=True, keys="W", instruction="a cat crosses")
    out = graph.execute(first, NODE_CLASS_MAPPINGS)
    node = _sampler(first)
    frames0, lat0, sid, info, _ = out[node]
    info = json.loads(info)
    assert info["mode"] == "causal" and info["label"] == "" and "causal student" in info["mode_reason"]
    assert "'image' ignored" in info["mode_reason"]
    parts, lats = [frames0], [lat0["samples"]]
    for keys in ("W+LEFT", "D"):
        nxt = _prompt(root, tmp_path, causal=True, keys=keys, instruction="a cat crosses", session=sid)
        f, l, sid2, info2, _ = graph.execute(nxt, NODE_CLASS_MAPPINGS)[node]
        assert sid2 == sid
        parts.append(f)
        lats.append(l["samples"])
    info2 = json.loads(info2)
    assert info2["blocks"] == 3 and info2["cache"]["frames"] == list(range(9))
    assert [r["forwards"] for r in info2["records"]] == [5]
    one = _prompt(root, tmp_path, causal=True, keys="W, W+LEFT, D", instruction="a cat crosses", num_blocks=3)
    f3, l3, _, _, _ = graph.execute(one, NODE_CLASS_MAPPINGS)[node]
    assert torch.equal(torch.cat(lats, 2), l3["samples"]) and torch.equal(torch.cat(parts), f3)
    assert f3.shape == (1 + 4 * 8, S, S, 3)
    gone = _prompt(root, tmp_path, causal=True, session="gc-unknown")
    with pytest.raises(graph.NodeExecutionError, match="no session 'gc-unknown'"):
        graph.execute(gone, NODE_CLASS_MAPPINGS)
