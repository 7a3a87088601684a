"""workflows/sandbox_compose.json: two Arrow Painters chained by Apply Control into one sampler (controls compose).
Run headlessly with the embedded demo model, its sampler output equals the engine sampling both controls at once
and differs from either control alone."""
import json
from pathlib import Path

import torch

from interplay.models import runtime
from interplay.models.backbones import cogvideox as cog
from interplay.models.sampling import cogvideox as S
from interplay.nodes import graph

ROOT = Path(__file__).resolve().parents[1]


def test_two_chained_controls_run_as_one_sample(tmp_path):
    prompt = graph.load_workflow(ROOT / "workflows" / "sandbox_compose.json")
    api = json.loads((ROOT / "workflows" / "api" / "sandbox_compose.json").read_text())
    assert {k: v["class_type"] for k, v in prompt.items()} == {k: v["class_type"] for k, v in api.items()}
    sampler = next(k for k, v in prompt.items() if v["class_type"] == "InterplayCogVideoXSampler")
    prompt[sampler]["inputs"]["steps"] = 4  # the saved 25 steps, shortened: the check is the composition
    runtime.set_output_directory(tmp_path)
    out = graph.execute(prompt)
    lat = out[sampler][1]["samples"].permute(0, 2, 1, 3, 4)
    stack = out[next(k for k, v in prompt.items() if v["inputs"].get("controls") and
                     v["class_type"] == "InterplayApplyControl")][0]
    assert len(stack.items) == 2 and stack.items[0].branch.module is stack.items[1].branch.module
    bb = out[next(k for k, v in prompt.items() if v["class_type"] == "InterplayDemoModelLoader")][0]
    image = out[prompt[sampler]["inputs"]["image"][0]][0]
    inp = prompt[sampler]["inputs"]
    pos = cog.encode_prompt(bb, [out[inp["prompt"][0]][0]])
    kw = dict(num_frames=inp["num_frames"], steps=4, cfg=inp["cfg"], seed=inp["seed"])
    w = inp["control_weight"]
    both = S.sample_cogvideox(bb, image[:1], pos, None, controls=[b.replace(weight=b.weight * w) for b in stack.items],
                              **kw)
    assert torch.equal(lat, both.float())
    for one in stack.items:
        alone = S.sample_cogvideox(bb, image[:1], pos, None, controls=[one.replace(weight=one.weight * w)], **kw)
        assert (alone - both).abs().max() > 1e-3
