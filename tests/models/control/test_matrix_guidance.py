"""MATRIX training-free guidance (CAG, CMG): the perturbation zeroes exactly the spec's post-softmax blocks with no
renormalisation, the guided step is cond + s (cond - perturbed) on top of CFG, scale 0 is the plain sampler bitwise,
and the guidance runs through the sampler node's controls chain on a plain backbone."""
import math

import pytest
import torch

from interplay.models.backbones import cogvideox as cog
from interplay.models.control import matrix as M
from interplay.models.control import matrix_guidance as G
from interplay.models.sampling import cogvideox as S


@pytest.fixture(scope="module")
def cbb(tiny_cogvideox):
    return cog.load_cogvideox(tiny_cogvideox, dtype=torch.float32, device="cpu")


@pytest.mark.parametrize("mode", ["cag", "cmg"])
def test_perturbation_zeroes_only_the_spec_blocks(mode):
    g = torch.Generator().manual_seed(0)
    nt, grid = 5, (3, 2, 2)  # 5 text tokens, 3 frames of 4 video tokens
    n = nt + 12
    q, k, v = (torch.randn(1, 2, n, 8, generator=g) for _ in range(3))
    lay = M.TokenLayout.cogvideox(grid, nt)
    p = (q @ k.transpose(-1, -2) / math.sqrt(8)).softmax(-1)
    keep = torch.ones(n, n, dtype=torch.bool)
    frame = lambda i: (i - nt) // 4  # noqa: E731
    for i in range(n):
        for j in range(n):
            vi, vj = i >= nt, j >= nt
            if mode == "cag" and vi and vj and frame(i) != frame(j):
                keep[i, j] = False
            if mode == "cmg" and vi != vj:
                keep[i, j] = False
    want = (p * keep) @ v  # zeroed, not renormalised
    for chunk in (3, 100):
        torch.testing.assert_close(G.perturbed_attention(q, k, v, lay, mode, chunk), want, rtol=1e-5, atol=1e-6)
    assert (want - p @ v).abs().max() > 1e-3


class Everywhere(G.PerturbedAttention):
    """The perturbed model alone: every row perturbed, no guidance row."""

    def guidance_rows(self):
        return []

    def attention(self, ctx, layer, q, k, v, call):
        from interplay.models.control.matrix_capture import token_layout

        call(q, k, v)
        return G.perturbed_attention(q, k, v, token_layout(ctx, layer, q, k), self.mode)


@pytest.mark.parametrize("mode", ["cag", "cmg"])
def test_guided_step_is_cfg_plus_perturbation_and_scale_zero_is_plain(cbb, mode):
    img = torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(5))
    pos, neg = cog.encode_prompt(cbb, ["a red box pushes a cube"]), cog.encode_prompt(cbb, [""])
    layers = [cog.attention_layer(1)] if mode == "cag" else [cog.attention_layer(0), cog.attention_layer(1)]
    kw = dict(num_frames=9, steps=1, seed=2)
    cond = S.sample_cogvideox(cbb, img, pos, neg, cfg=1.0, **kw)
    pert = S.sample_cogvideox(cbb, img, pos, neg, cfg=1.0, attachments=[Everywhere(layers, mode)], **kw)
    assert (cond - pert).abs().max() > 1e-4
    got = S.sample_cogvideox(cbb, img, pos, neg, cfg=1.0, attachments=[G.PerturbedAttention(layers, mode, 1.5)], **kw)
    torch.testing.assert_close(got, cond + 1.5 * (cond - pert), rtol=1e-4, atol=1e-4)
    text = S.sample_cogvideox(cbb, img, pos, neg, cfg=4.0, **kw)
    both = S.sample_cogvideox(cbb, img, pos, neg, cfg=4.0, attachments=[G.PerturbedAttention(layers, mode, 1.5)],
                              **kw)
    torch.testing.assert_close(both, text + 1.5 * (cond - pert), rtol=1e-4, atol=1e-4)
    # scale 0: the plain sampler, bitwise, over several steps and with CFG
    for cfg in (1.0, 6.0):
        plain = S.sample_cogvideox(cbb, img, pos, neg, cfg=cfg, num_frames=9, steps=3, seed=4)
        zero = S.sample_cogvideox(cbb, img, pos, neg, cfg=cfg, num_frames=9, steps=3, seed=4,
                                  attachments=[G.PerturbedAttention(layers, mode, 0.0)])
        assert torch.equal(zero, plain)


def test_cag_and_cmg_together_and_step_range(cbb):
    img = torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(6))
    pos = cog.encode_prompt(cbb, ["a cube"])
    kw = dict(num_frames=9, steps=4, seed=3, cfg=1.0)
    l1 = [cog.attention_layer(1)]
    plain = S.sample_cogvideox(cbb, img, pos, None, **kw)
    two = S.sample_cogvideox(cbb, img, pos, None, attachments=[G.PerturbedAttention(l1, "cag", 1.0),
                                                                G.PerturbedAttention(l1, "cmg", 1.0)], **kw)
    assert (two - plain).abs().max() > 1e-4
    # active only from step 2 of 4: the first two steps are unguided, so the same as a run starting there later
    late = G.PerturbedAttention(l1, "cag", 1.0, start=0.5)
    assert not late.active((1, 4)) and late.active((2, 4)) and late.active(None)
    with pytest.raises(ValueError, match="declared twice"):
        S.sample_cogvideox(cbb, img, pos, None, attachments=[G.PerturbedAttention(l1, "cag", 1.0),
                                                             G.PerturbedAttention(l1, "cag", 2.0)], **kw)


def test_default_layers():
    assert G.default_layers("cogvideox", "cmg", 42) == (7, 11) and G.default_layers("cogvideox", "cag", 42) == (12,)
    assert G.default_layers("cogvideox", "cag", 2) == (1,)
    assert G.default_layers("wan", "cmg", 40) == (20, 24)
