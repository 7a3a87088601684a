"""MATRIX on the tiny Wan2.1 I2V (the ``code`` preset's family): captured cross-attention (v2t) and self-attention
(v2v) equal attention recomputed by hand from the q and k the attention modules compute from their own inputs,
blockwise equals full, the widened 36 -> 56 projection with zero ID-map channels leaves the output unchanged, the ID
map reaches the model through the Wan sampler, and CAG/CMG at scale 0 are the plain Wan sampler bitwise."""
import math

import pytest
import torch

from interplay.models.backbones import wan
from interplay.models.backbones.widen import default_extra_channels, input_projection, widen_input
from interplay.models.conditions.latent_inputs import LatentInputs
from interplay.models.sampling.latent_inputs import encode
from interplay.models.control import matrix_capture as C
from interplay.models.control import matrix_guidance as G
from interplay.models.sampling import wan as S

S_PIX, F = 64, 9  # 64 x 64 pixels, 9 frames -> latent 3 x 8 x 8 -> token grid (3, 4, 4)


@pytest.fixture(scope="module")
def wbb(tiny_wan21):
    return wan.load_wan(tiny_wan21, dtype="fp32", device="cpu")


def _inputs(bb, seed=0, b=1):
    g = torch.Generator().manual_seed(seed)
    cfg = bb.denoiser.config
    return (torch.randn(b, cfg.in_channels, 3, 8, 8, generator=g), torch.tensor([600.0] * b),
            torch.randn(b, 512, cfg.text_dim, generator=g), torch.randn(b, 50, cfg.image_dim, generator=g))


def _targets():
    m1 = torch.zeros(S_PIX, S_PIX, dtype=torch.bool)
    m1[0:32, 0:32] = True  # 2 x 2 tokens at stride 16
    m2 = torch.zeros(S_PIX, S_PIX, dtype=torch.bool)
    m2[32:, 16:64] = True
    return C.MapTargets(v2t={"id1": [1, 2], "id2": [4], "verb1>2": [3, 5, 6]},
                        v2v={"id1": m1, "id2": m2, "verb1>2": m1 | m2})


class ModuleInputs:
    """Forward pre-hooks on a block's attention modules: the hidden states (and text context) they receive."""

    def __init__(self, block):
        self.seen = {}
        self.hooks = [block.attn1.register_forward_pre_hook(self._hook("attn1")),
                      block.attn2.register_forward_pre_hook(self._hook("attn2"))]

    def _hook(self, name):
        def fn(module, args):
            self.seen[name] = tuple(a.detach().clone() if isinstance(a, torch.Tensor) else a for a in args[:2])
        return fn

    def remove(self):
        for h in self.hooks:
            h.remove()


def _hand_probs(attn, hidden, context, rot=None):
    """Head-mean softmax(q k^T / sqrt(d)) [Nq, Nk] of one Wan attention module from its inputs: the projections,
    the RMS norms across heads, RoPE on self-attention; cross-attention keys are the last 512 (text) tokens."""
    ctx = hidden if context is None else context[:, -wan.TEXT_LENGTH:]
    q = attn.norm_q(attn.to_q(hidden)).unflatten(2, (attn.heads, -1))  # [B, N, H, d]
    k = attn.norm_k(attn.to_k(ctx)).unflatten(2, (attn.heads, -1))
    if rot is not None:
        q, k = wan._apply_rotary(q, *rot), wan._apply_rotary(k, *rot)
    q, k = q.transpose(1, 2), k.transpose(1, 2)
    return (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).softmax(-1).mean(1)[0]


def test_wan_captured_attention_equals_attention_recomputed_by_hand(wbb):
    x, t, e, img = _inputs(wbb)
    tg = _targets()
    layer = 1
    v2t, v2v = wan.attention_layer(layer, "cross"), wan.attention_layer(layer, "self")
    assert C.layer_names(wbb, [layer], "v2t") == [v2t] and C.layer_names(wbb, [layer], "v2v") == [v2v]
    cap = C.MatrixCapture([v2t], [v2v], tg, mode="softmax", chunk=5)
    hook = ModuleInputs(wbb.denoiser.blocks[layer])
    try:
        with torch.no_grad():
            plain = wan.forward(wbb, x, t, e, image_embeds=img)
            out = wan.forward(wbb, x, t, e, image_embeds=img, attachments=[cap])
    finally:
        hook.remove()
    assert torch.equal(out, plain)  # an observer changes nothing, bitwise
    assert cap.grid == (3, 4, 4)
    blk = wbb.denoiser.blocks[layer]
    with torch.no_grad():
        hs, ctx = hook.seen["attn2"]
        p_cross = _hand_probs(blk.attn2, hs, ctx)  # [48, 512]: one softmax over the text keys alone
        hs, _ = hook.seen["attn1"]
        p_self = _hand_probs(blk.attn1, hs, None, wan.rotary(wbb.denoiser, 3, 8, 8))  # [48, 48]
    torch.testing.assert_close(p_cross.sum(-1), torch.ones(48))
    for name, toks in tg.v2t.items():
        want = p_cross[:, toks].mean(-1).reshape(3, 4, 4)
        torch.testing.assert_close(cap.map(v2t, "v2t", name), want, rtol=1e-5, atol=1e-7)
    for name, m in tg.v2v.items():
        qm = C.query_grid(m, (4, 4), 16).flatten()  # first-frame tokens in the mask
        want = p_self[:16][qm].mean(0).reshape(3, 4, 4)
        torch.testing.assert_close(cap.map(v2v, "v2v", name), want, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(cap.map(v2v, "v2v", name).sum(), torch.tensor(1.0))  # self rows: video keys only
    assert int(C.query_grid(tg.v2v["id1"], (4, 4), 16).sum()) == 4


@pytest.mark.parametrize("mode", ["softmax", "logits"])
def test_wan_blockwise_capture_equals_full_capture(wbb, mode):
    x, t, e, img = _inputs(wbb, 1, b=2)
    v2t = C.layer_names(wbb, [0, 1], "v2t")
    v2v = C.layer_names(wbb, [0, 1], "v2v")
    caps = [C.MatrixCapture(v2t, v2v, [_targets(), _targets()], mode=mode, chunk=c) for c in (3, 10 ** 6)]
    with torch.no_grad():
        wan.forward(wbb, x, t, e, image_embeds=img, attachments=caps)
    small, full = caps
    assert set(small.acc.keys()) == set(full.acc.keys()) and len(full.acc.keys()) == 2 * (3 + 3) * 2
    for key in full.acc.keys():
        torch.testing.assert_close(small.acc.mean(key), full.acc.mean(key), rtol=1e-5, atol=1e-6)


def test_wan_widened_projection_36_to_56_with_zero_channels_leaves_the_output_unchanged(wbb):
    wide = widen_input(wbb, "id_map")
    assert default_extra_channels(wbb) == 20  # 16 latent + the 4-channel first-frame mask, the public code's
    assert wbb.denoiser.config.in_channels == 36 and wide.denoiser.config.in_channels == 56
    old, new = input_projection(wbb), input_projection(wide)
    assert tuple(new.weight.shape)[:2] == (old.weight.shape[0], 56)
    assert torch.equal(new.weight[:, :36], old.weight) and float(new.weight[:, 36:].abs().max()) == 0.0
    assert torch.equal(new.bias, old.bias)
    x, t, e, img = _inputs(wbb, 2, b=2)
    idm = torch.randn(2, 20, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        plain = wan.forward(wbb, x, t, e, image_embeds=img)
        zero_in = wan.forward(wide, wide.layout.assemble({"noise": x[:, :16], "mask": x[:, 16:20],
                                                          "image": x[:, 20:]}, dim=1), t, e, image_embeds=img)
        any_in = wan.forward(wide, torch.cat([x, idm], 1), t, e, image_embeds=img)
    assert torch.equal(zero_in, plain) and torch.equal(any_in, plain)
    with torch.no_grad():
        new.weight[:, 36:].normal_(generator=torch.Generator().manual_seed(4))
        changed = wan.forward(wide, torch.cat([x, idm], 1), t, e, image_embeds=img)
    assert (changed - plain).abs().max() > 1e-3


SP, FS = 32, 5  # the sampler tests: 32 x 32 pixels, 5 frames (the tiny VAE's encode dominates their time)


def _img(seed=5):
    return torch.rand(1, SP, SP, 3, generator=torch.Generator().manual_seed(seed))


def test_wan_id_map_input_is_the_i2v_condition_of_the_picture_and_reaches_the_sampler(wbb):
    wide = widen_input(wbb, "id_map")
    with torch.no_grad():
        input_projection(wide).weight[:, 36:].normal_(0, 0.5, generator=torch.Generator().manual_seed(6))
    idm = torch.zeros(1, 16, 16, 3)
    idm[:, 2:10, 2:10, 0] = 1.0  # id1 red, upscaled NEAREST to 32 x 32
    lat = encode(wide, LatentInputs().then("id_map", idm), SP, SP, 0, num_frames=FS)["id_map"]
    pic = torch.nn.functional.interpolate(idm.permute(0, 3, 1, 2), size=(SP, SP), mode="nearest")
    want = wan.i2v_condition(wbb.replace(extra={**wbb.extra, "clip": False}), pic.permute(0, 2, 3, 1), FS, SP,
                             SP).condition
    assert tuple(lat.shape) == (1, 20, 2, 4, 4)
    torch.testing.assert_close(lat, want)
    assert torch.equal(lat[:, :4, 0], torch.ones(1, 4, 4, 4)) and float(lat[:, :4, 1:].abs().max()) == 0.0
    pos, neg = wan.encode_prompt(wbb, ["a red box"]), wan.encode_prompt(wbb, [""])
    kw = dict(num_frames=FS, steps=2, cfg=3.0, seed=1)
    with_map = S.sample_wan(wide, _img(), pos, neg, inputs={"id_map": lat}, **kw)
    without = S.sample_wan(wide, _img(), pos, neg, **kw)  # zeros in the ID-map channels
    plain = S.sample_wan(wbb, _img(), pos, neg, **kw)
    assert torch.equal(without, plain)  # the widened model with no ID map is the plain model
    assert (with_map - plain).abs().max() > 1e-4
    with pytest.raises(ValueError, match="takes no extra inputs"):
        encode(wbb, LatentInputs().then("id_map", idm), SP, SP, 0, num_frames=FS)


def test_wan_cag_cmg_scale_zero_is_the_plain_sampler_bitwise(wbb):
    pos, neg = wan.encode_prompt(wbb, ["a red box pushes a cube"]), wan.encode_prompt(wbb, [""])
    kw = dict(num_frames=FS, steps=2, cfg=3.0, seed=2)
    plain = S.sample_wan(wbb, _img(), pos, neg, **kw)
    for mode in ("cag", "cmg"):
        layers = C.layer_names(wbb, G.default_layers("wan", mode, 2), "v2v" if mode == "cag" else "v2t")
        zero = S.sample_wan(wbb, _img(), pos, neg, attachments=[G.PerturbedAttention(layers, mode, 0.0)], **kw)
        assert torch.equal(zero, plain)
        on = G.PerturbedAttention(layers, mode, 2.0)
        guided = S.sample_wan(wbb, _img(), pos, neg, attachments=[on], **kw)
        assert (guided - plain).abs().max() > 1e-4
    # one row at a time equals batched: the perturbed row runs with the prompt, as the cond row does
    single = S.sample_wan(wbb, _img(), pos, neg, attachments=[on], batched_cfg=False, **kw)
    torch.testing.assert_close(single, guided, rtol=1e-4, atol=1e-5)


def test_wan_perturbed_attention_blocks():
    """CAG on a Wan self-attention layout zeroes only cross-frame weights; CMG on cross-attention zeroes the text
    attention (no renormalisation), against the dense softmax."""
    g = torch.Generator().manual_seed(7)
    grid = (3, 2, 2)
    q, k, v = (torch.randn(1, 2, 12, 8, generator=g) for _ in range(3))
    p = (q @ k.transpose(-1, -2) / math.sqrt(8)).softmax(-1)
    frame = torch.arange(12) // 4
    keep = (frame[:, None] == frame[None, :]).float()
    from interplay.models.control.matrix import TokenLayout

    torch.testing.assert_close(G.perturbed_attention(q, k, v, TokenLayout.wan_self(grid), "cag", 5), (p * keep) @ v)
    kt = torch.randn(1, 2, 6, 8, generator=g)
    assert float(G.perturbed_attention(q, kt, kt, TokenLayout.wan_cross(grid, 6), "cmg", 5).abs().max()) == 0.0
