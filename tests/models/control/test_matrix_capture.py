"""MATRIX attention capture on the tiny CogVideoX: the captured maps equal attention recomputed by hand from the
layer's own q and k, blockwise equals full, an observer changes nothing, step selection averages the right forwards,
and training captures keep their gradients."""
import math

import pytest
import torch

from interplay.models.backbones import base as B
from interplay.models.backbones import cogvideox as cog
from interplay.models.control import matrix as M
from interplay.models.control import matrix_capture as C
from interplay.models.sampling import cogvideox as S


@pytest.fixture(scope="module")
def cbb(tiny_cogvideox):
    return cog.load_cogvideox(tiny_cogvideox, dtype=torch.float32, device="cpu")


class Record(B.Attachment):
    """Keeps the streams entering block ``i + 1`` (after block i) and the time embedding."""

    def __init__(self, i):
        self.i, self.seen = i, None

    def after_block(self, ctx, i, hidden):
        if i == self.i:
            self.seen = (hidden.clone(), ctx.text.clone(), ctx.temb.clone())
        return hidden


def _inputs(seed=0, b=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, 3, 8, 8, 8, generator=g), torch.tensor([600] * b), torch.randn(b, 7, 32, generator=g))


def _targets():
    m1 = torch.zeros(32, 32, dtype=torch.bool)
    m1[0:16, 0:16] = True  # 2 x 2 tokens at stride 8
    m2 = torch.zeros(32, 32, dtype=torch.bool)
    m2[16:, 8:32] = True
    return C.MapTargets(v2t={"id1": [1, 2], "id2": [4], "verb1>2": [3, 5, 6]},
                        v2v={"id1": m1, "id2": m2, "verb1>2": m1 | m2})


def _hand_qk(cbb, hidden, text, temb, layer=1):
    """q, k of block ``layer`` recomputed from its input streams: adaLN, projections, QK-norm, RoPE on video."""
    from diffusers.models.embeddings import apply_rotary_emb

    tr = cbb.denoiser
    blk = tr.transformer_blocks[layer]
    nh, ne, _, _ = blk.norm1(hidden, text, temb)
    attn = blk.attn1
    x = torch.cat([ne, nh], 1)
    b, n, _ = x.shape
    q = attn.norm_q(attn.to_q(x).view(b, n, attn.heads, -1).transpose(1, 2))
    k = attn.norm_k(attn.to_k(x).view(b, n, attn.heads, -1).transpose(1, 2))
    rot = cog.rotary_embeddings(tr.config, 3, 8, 8)
    nt = text.shape[1]
    q = torch.cat([q[:, :, :nt], apply_rotary_emb(q[:, :, nt:], rot)], 2)
    k = torch.cat([k[:, :, :nt], apply_rotary_emb(k[:, :, nt:], rot)], 2)
    return q, k


def test_captured_attention_equals_attention_recomputed_by_hand(cbb):
    x, t, e = _inputs()
    tg = _targets()
    rec = Record(0)
    cap = C.MatrixCapture([cog.attention_layer(1)], [cog.attention_layer(1)], tg, mode="softmax", chunk=5)
    with torch.no_grad():
        plain = cog.forward(cbb, x, t, e)
        out = cog.forward(cbb, x, t, e, attachments=[rec, cap])
    assert torch.equal(out, plain)  # an observer changes nothing, bitwise
    with torch.no_grad():
        q, k = _hand_qk(cbb, *rec.seen)
    p = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).softmax(-1).mean(1)[0]  # head mean [N, N]
    nt = 7
    for name, toks in tg.v2t.items():
        want = p[nt:, toks].mean(-1).reshape(3, 4, 4)
        torch.testing.assert_close(cap.map(cog.attention_layer(1), "v2t", name), want, rtol=1e-5, atol=1e-7)
    for name, m in tg.v2v.items():
        qm = C.query_grid(m, (4, 4), 8).flatten()  # first-frame tokens in the mask
        want = p[nt:nt + 16][qm][:, nt:].mean(0).reshape(3, 4, 4)
        torch.testing.assert_close(cap.map(cog.attention_layer(1), "v2v", name), want, rtol=1e-5, atol=1e-7)
    assert C.query_grid(tg.v2v["id1"], (4, 4), 8).sum() == 4


@pytest.mark.parametrize("mode", ["softmax", "logits"])
def test_blockwise_capture_equals_full_capture(cbb, mode):
    x, t, e = _inputs(1, b=2)
    layers = [cog.attention_layer(0), cog.attention_layer(1)]
    caps = [C.MatrixCapture(layers, layers, [_targets(), _targets()], mode=mode, chunk=c) for c in (3, 10 ** 6)]
    with torch.no_grad():
        cog.forward(cbb, x, t, e, attachments=caps)
    small, full = caps
    assert set(small.acc.keys()) == set(full.acc.keys()) and len(full.acc.keys()) == 2 * 6 * 2
    for key in full.acc.keys():
        torch.testing.assert_close(small.acc.mean(key), full.acc.mean(key), rtol=1e-5, atol=1e-6)
    # softmax rows: each first-frame query's v2v row sums to its mass on video keys (< 1: text keys are not cut out)
    if mode == "softmax":
        s = full.map(layers[0], "v2v", "id1").sum()
        assert 0.5 < float(s) < 1.0


def test_step_selection_and_rows_in_the_sampler(cbb):
    img = torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(2))
    pos, neg = cog.encode_prompt(cbb, ["a red box pushes a cube"]), cog.encode_prompt(cbb, [""])
    layer = [cog.attention_layer(1)]
    both, first, last = (C.MatrixCapture(layer, layer, _targets(), steps=s) for s in ("0,2", [0], "2"))
    S.sample_cogvideox(cbb, img, pos, neg, num_frames=9, steps=3, cfg=6.0, seed=1, attachments=[both, first, last])
    assert both.steps_seen == [0, 2] and first.steps_seen == [0] and last.steps_seen == [2]
    for key in both.acc.keys():
        torch.testing.assert_close(both.acc.mean(key), (first.acc.mean(key) + last.acc.mean(key)) / 2)
    # the conditional half of a CFG batch is what a plain cfg-1 run sees at step 0 (same noise, same prompt)
    alone = C.MatrixCapture(layer, layer, _targets(), steps=[0])
    S.sample_cogvideox(cbb, img, pos, neg, num_frames=9, steps=3, cfg=1.0, seed=1, attachments=[alone])
    for key in alone.acc.keys():
        torch.testing.assert_close(first.acc.mean(key), alone.acc.mean(key), rtol=1e-4, atol=1e-6)
    uncond = C.MatrixCapture(layer, layer, _targets(), steps=[0], row="uncond")
    S.sample_cogvideox(cbb, img, pos, neg, num_frames=9, steps=3, cfg=6.0, seed=1, attachments=[uncond])
    key = (layer[0], "v2t", "id1", 0)
    assert (uncond.acc.mean(key) - first.acc.mean(key)).abs().max() > 1e-6


def test_training_capture_keeps_gradients_into_q_and_k(cbb):
    x, t, e = _inputs(3)
    layer = cog.attention_layer(1)
    cap = C.MatrixCapture([layer], [layer], _targets(), mode="logits", keep_grad=True)
    attn = cbb.denoiser.transformer_blocks[1].attn1
    params = [attn.to_q.weight, attn.to_k.weight, attn.to_v.weight, attn.to_out[0].weight,
              cbb.denoiser.transformer_blocks[0].attn1.to_v.weight]
    for p in params:
        p.requires_grad_(True)
    try:
        cog.forward(cbb, x, t, e, attachments=[cap])
        loss = cap.map(layer, "v2t", "id1").pow(2).sum() + cap.map(layer, "v2v", "id2").pow(2).sum()
        grads = torch.autograd.grad(loss, params, allow_unused=True)
    finally:
        for p in params:
            p.requires_grad_(False)
    assert grads[0].abs().sum() > 0 and grads[1].abs().sum() > 0  # q, k of the captured layer
    assert grads[2] is None and grads[3] is None  # its v and out: maps do not depend on them
    assert grads[4].abs().sum() > 0  # an earlier layer's v shapes this layer's input


def test_map_names_targets_and_layers(cbb):
    assert C.target_ids("id3") == (3,) and C.target_ids("verb1>2") == (1, 2) and C.target_ids("word:cup") is None
    with pytest.raises(ValueError, match="is not id<k>"):
        C.MapTargets(v2t={"sub": [1]})
    assert C.layer_names(cbb, [0, 1], "v2v") == ["transformer_blocks.0.attn1", "transformer_blocks.1.attn1"]
    assert C.parse_layers("all", cbb) == [0, 1] and C.parse_layers("1", cbb) == [1]
    with pytest.raises(ValueError, match="layers 0..1"):
        C.parse_layers("0-2", cbb)
    assert C.parse_steps("0-2,5") == frozenset({0, 1, 2, 5}) and C.parse_steps("all") is None
    with pytest.raises(ValueError, match="comma-separated"):
        C.parse_steps("first")
