"""The speed inputs of the sampler nodes: the same optional inputs, last, on every sampler (CogVideoX and Wan also
`parallel`), tooltips, defaults that give the old output bitwise, and named errors."""
import pytest
import torch

from interplay.models.backbones import cogvideox as cog
from interplay.nodes import cogvideox as nc
from interplay.nodes import svd as ns
from interplay.nodes import wan as nw
from interplay.nodes._speed import PARALLEL_INPUT, SPEED_INPUTS, speed_settings

SAMPLERS = {nc.InterplayCogVideoXSampler: True, ns.InterplayInterDynSampler: False, nw.InterplayWanSampler: True}


@pytest.mark.parametrize("cls", list(SAMPLERS))
def test_every_sampler_ends_with_the_speed_inputs(cls):
    opt = cls.INPUT_TYPES()["optional"]
    tail = list(SPEED_INPUTS) + (list(PARALLEL_INPUT) if SAMPLERS[cls] else [])
    assert list(opt)[-len(tail):] == tail
    assert all(opt[k][1].get("tooltip") for k in tail)
    assert [opt[k][1]["default"] for k in tail[:5]] == [False, 0.2, False, "off", "auto"]


def test_cogvideox_node_defaults_bitwise_and_the_cache_on(tiny_cogvideox):
    bb = cog.load_cogvideox(tiny_cogvideox, dtype=torch.float32, device="cpu")
    args = dict(backbone=bb, image=torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(0)),
                prompt="a red cube slides right", negative="", width=32, height=32, num_frames=9, steps=8, cfg=6.0,
                dynamic_cfg=False, scheduler="ddim", seed=3, decode=False)
    node = nc.InterplayCogVideoXSampler()
    old = node.sample(**args)[1]["samples"]
    same = node.sample(**args, step_cache=False, cache_threshold=0.2, compile=False, fp8="off", attention="auto",
                       parallel="auto")[1]["samples"]
    assert torch.equal(same, old)
    cached = node.sample(**args, step_cache=True, cache_threshold=0.5)[1]["samples"]
    assert not torch.equal(cached, old) and float((cached - old).abs().mean()) < 0.1 * float(old.abs().mean())
    with pytest.raises(ValueError, match="CogVideoX Sampler: step cache: threshold must be >= 0"):
        speed_settings("CogVideoX Sampler", True, -0.5)
    with pytest.raises(ValueError, match="CogVideoX Sampler: speed: fp8 must be one of"):
        speed_settings("CogVideoX Sampler", fp8="int4")
    with pytest.raises(ValueError, match="parallel must be one of"):
        node.sample(**args, parallel="tensor")
