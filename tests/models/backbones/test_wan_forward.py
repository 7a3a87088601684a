"""The Wan family forward on the model-forward contract: equal to diffusers' WanTransformer3DModel bitwise (CPU
float32) with no attachments and with observers in every attention slot, and the five capabilities GameCraft's
causal sampler builds on, each with a toy attachment: (a) add to the video tokens after embedding, (b) a
self-attention KV cache, (c) per-token timesteps, (d) RoPE at absolute frame positions, (e) cross-attention with
cached text k/v."""
import pytest
import torch
from kit import tiny

from interplay.models.backbones import base as B
from interplay.models.backbones import wan


@pytest.fixture(scope="module")
def bbs():
    return {v: wan.load_wan(tiny.tiny_wan_dir(variant=v), dtype="fp32", device="cpu")
            for v in ("2.2", "2.1", "2.1-t2v", "2.2-ti2v")}


def _inputs(model, f=3, h=4, w=6, batch=2, seed=0):
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cfg.in_channels, f, h, w, generator=g)
    e = torch.randn(batch, 512, cfg.text_dim, generator=g)
    img = torch.randn(batch, 50, cfg.image_dim, generator=g) if cfg.image_dim else None
    return x, e, img


class Observer(B.Attachment):
    """Looks at q, k, v of every attention layer and changes nothing."""

    def __init__(self, layers):
        self.layers, self.seen = list(layers), []

    def attention_layers(self, ctx):
        return self.layers

    def attention(self, ctx, layer, q, k, v, call):
        self.seen.append((layer, tuple(q.shape), tuple(k.shape)))
        return call(q, k, v)


@pytest.mark.parametrize("variant", ["2.2", "2.1", "2.2-ti2v"])
def test_forward_is_the_diffusers_transformer_bitwise(variant, bbs):
    bb = bbs[variant]
    for name, model in wan.expert_modules(bb).items():
        x, e, img = _inputs(model)
        t = torch.tensor([700, 700])
        tok = torch.rand(2, 3 * 2 * 3, generator=torch.Generator().manual_seed(1)) * 1000  # per-token [B, N]
        obs = Observer(wan.attention_layers(bb, name))
        with torch.no_grad():
            for tt in (t, tok):
                ref = model(x, tt, e, encoder_hidden_states_image=img, return_dict=False)[0]
                assert torch.equal(wan.forward(bb, x, tt, e, image_embeds=img, expert=name), ref)
                assert torch.equal(wan.forward(bb, x, tt, e, image_embeds=img, expert=model, attachments=[obs]), ref)
    # q, k, v in the contract's [B, heads, N, d]: self-attention over 18 video tokens, cross to the 512 text tokens
    assert obs.seen[0] == ("blocks.0.attn1", (2, 2, 18, 16), (2, 2, 18, 16))
    assert obs.seen[1] == ("blocks.0.attn2", (2, 2, 18, 16), (2, 2, 512, 16))
    assert len(obs.seen) == 2 * 2 * model.config.num_layers


def test_expert_selection_and_named_errors(bbs):
    bb = bbs["2.2"]
    x, e, _ = _inputs(bb.denoiser)
    t = torch.tensor([300, 300])
    with torch.no_grad():
        low = bb.experts["low_noise"](x, t, e, return_dict=False)[0]
        assert torch.equal(wan.forward(bb, x, t, e, expert="low_noise"), low)
        assert not torch.equal(wan.forward(bb, x, t, e), low)  # default: the high-noise expert
        with pytest.raises(ValueError, match="no expert 'mid'"):
            wan.forward(bb, x, t, e, expert="mid")
        with pytest.raises(ValueError, match=r"per-token \[B, N\] with B=2, N=18"):
            wan.forward(bb, x, torch.zeros(2, 17), e)
        with pytest.raises(ValueError, match="36 \\(input layout \\('noise', 'mask', 'image'\\)\\)"):
            wan.forward(bb, x[:, :16], t, e)
        with pytest.raises(ValueError, match="rope_offset 1022"):
            wan.forward(bb, x, t, e, rope_offset=1022)


def test_rope_offset_is_the_longer_clips_rope_rows(bbs):
    """(d) A block of f frames at offset k gets exactly rows k..k+f of a longer clip's RoPE."""
    tr = bbs["2.1-t2v"].denoiser
    x = torch.zeros(1, 16, 7, 4, 6)
    cos, sin = tr.rope(x)
    assert torch.equal(wan.rotary(tr, 7, 4, 6)[0], cos) and torch.equal(wan.rotary(tr, 7, 4, 6)[1], sin)
    per_frame = 2 * 3
    for k in (1, 4):
        c, s = wan.rotary(tr, 3, 4, 6, offset=k)
        assert torch.equal(c, cos[:, k * per_frame:(k + 3) * per_frame])
        assert torch.equal(s, sin[:, k * per_frame:(k + 3) * per_frame])
    # RoPE is relative: shifting every token by the same offset changes the output only by rounding
    x, e, _ = _inputs(tr)
    with torch.no_grad():
        a = wan.forward(bbs["2.1-t2v"], x, torch.tensor([500]), e)
        b = wan.forward(bbs["2.1-t2v"], x, torch.tensor([500]), e, rope_offset=5)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


class CameraTokens(B.Attachment):
    """(a) A toy camera encoder: adds a fixed vector per video token after the patch embedding."""

    def __init__(self, delta):
        self.delta = delta  # [B, N, D]

    def after_embed(self, ctx, hidden):
        return hidden + self.delta


def test_a_tokens_added_after_the_embedding_are_the_patch_embeddings_plus_them(bbs):
    bb = bbs["2.2"]
    tr = bb.denoiser
    x, e, _ = _inputs(tr)
    d = tr.config.num_attention_heads * tr.config.attention_head_dim
    delta = torch.randn(2, 18, d, generator=torch.Generator().manual_seed(5))
    t = torch.tensor([800, 800])

    def add(mod, args, out):  # the same sum inside diffusers' own forward: [B, D, f, h, w] before flattening
        return out + delta.transpose(1, 2).reshape(out.shape)
    h = tr.patch_embedding.register_forward_hook(add)
    try:
        with torch.no_grad():
            ref = tr(x, t, e, return_dict=False)[0]
    finally:
        h.remove()
    with torch.no_grad():
        got = wan.forward(bb, x, t, e, attachments=[CameraTokens(delta)])
        plain = wan.forward(bb, x, t, e)
    assert torch.equal(got, ref) and not torch.equal(got, plain)

    class Grow(B.Attachment):
        def after_embed(self, ctx, hidden):
            return torch.cat([hidden, hidden[:, :1]], dim=1)
    with pytest.raises(ValueError, match="changed the token count from 18 to 19"):
        wan.forward(bb, x, t, e, attachments=[Grow()])


class BlockCausalMask(B.Attachment):
    """Reference: self-attention with a block-causal mask (a token sees its own block and the earlier ones)."""

    def __init__(self, layers, block_of_token):
        self.layers, self.blk = layers, block_of_token

    def attention_layers(self, ctx):
        return self.layers

    def attention(self, ctx, layer, q, k, v, call):
        return B.sdpa(q, k, v, self.blk[None, :] <= self.blk[:, None])


class SelfKVCache(B.Attachment):
    """(b) A toy KV cache: "write" keeps each self-attention layer's k, v (after norm and RoPE); "read" attends over
    cached ++ current k, v (what a causal block sampler does with the first-frame sink and its window)."""

    def __init__(self, layers):
        self.layers, self.cache, self.mode = layers, {}, "write"

    def attention_layers(self, ctx):
        return self.layers

    def attention(self, ctx, layer, q, k, v, call):
        if self.mode == "write":
            self.cache[layer] = (k, v)
            return call(q, k, v)
        ck, cv = self.cache[layer]
        return call(q, torch.cat([ck, k], dim=2), torch.cat([cv, v], dim=2))


def test_b_c_d_block_by_block_with_a_kv_cache_equals_one_block_causal_forward(bbs):
    """Two blocks of two latent frames: block 0 clean (t = 0) written to the cache, block 1 at t = 700 reading it
    at rope_offset 2, equal the full forward with per-token timesteps (0 on block 0, 700 on block 1) and the
    block-causal mask."""
    bb = bbs["2.1-t2v"]
    tr = bb.denoiser
    x, e, _ = _inputs(tr, f=4, h=4, w=4, batch=1)
    per_frame = 2 * 2
    layers = [wan.attention_layer(i) for i in range(tr.config.num_layers)]
    block_of_token = torch.arange(4 * per_frame) // (2 * per_frame)
    tok_t = (block_of_token == 1).float()[None] * 700  # (c) per-token timesteps [1, N]
    with torch.no_grad():
        full = wan.forward(bb, x, tok_t, e, attachments=[BlockCausalMask(layers, block_of_token)])
        cache = SelfKVCache(layers)
        b0 = wan.forward(bb, x[:, :, :2], torch.tensor([0]), e, attachments=[cache])
        cache.mode = "read"
        b1 = wan.forward(bb, x[:, :, 2:], torch.tensor([700]), e, attachments=[cache], rope_offset=2)
        b1_no_offset = wan.forward(bb, x[:, :, 2:], torch.tensor([700]), e, attachments=[cache])
    assert cache.cache[layers[0]][0].shape == (1, 2, 2 * per_frame, 16)  # [B, heads, cached tokens, d]
    torch.testing.assert_close(b0, full[:, :, :2], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b1, full[:, :, 2:], rtol=1e-5, atol=1e-5)
    assert (b1_no_offset - full[:, :, 2:]).abs().max() > 1e-3  # (d) the absolute positions matter here
    # the clean block's tokens at t = 0 are not the same as at t = 700 (per-token timesteps do act)
    with torch.no_grad():
        same_t = wan.forward(bb, x, torch.tensor([700]), e, attachments=[BlockCausalMask(layers, block_of_token)])
    assert (same_t[:, :, :2] - full[:, :, :2]).abs().max() > 1e-3


class TextKVCache(B.Attachment):
    """(e) Cross-attention with cached text k/v: filled on the first call, supplied through ``cross_kv`` after."""

    def __init__(self, layers):
        self.layers, self.cache = layers, {}

    def attention_layers(self, ctx):
        return self.layers

    def cross_kv(self, ctx, layer):
        return self.cache.get(layer)

    def attention(self, ctx, layer, q, k, v, call):
        self.cache.setdefault(layer, (k, v))
        return call(q, k, v)


def test_e_cross_attention_with_cached_text_kv_skips_the_projections(bbs):
    bb = bbs["2.1"]  # with the CLIP image branch, which still runs beside the cached text
    tr = bb.denoiser
    x, e, img = _inputs(tr)
    layers = [wan.attention_layer(i, "cross") for i in range(tr.config.num_layers)]
    calls = []
    hooks = [blk.attn2.to_k.register_forward_hook(lambda *a: calls.append(1)) for blk in tr.blocks]
    att = TextKVCache(layers)
    try:
        with torch.no_grad():
            ref = tr(x, torch.tensor([600, 600]), e, encoder_hidden_states_image=img, return_dict=False)[0]
            n_ref = len(calls)
            first = wan.forward(bb, x, torch.tensor([600, 600]), e, image_embeds=img, attachments=[att])
            n_first = len(calls) - n_ref
            x2 = x + 0.1  # the next step: new latents, the same prompt
            ref2 = tr(x2, torch.tensor([500, 500]), e, encoder_hidden_states_image=img, return_dict=False)[0]
            n0 = len(calls)
            second = wan.forward(bb, x2, torch.tensor([500, 500]), e, image_embeds=img, attachments=[att])
            n_second = len(calls) - n0
    finally:
        for h in hooks:
            h.remove()
    assert torch.equal(first, ref) and torch.equal(second, ref2)
    assert (n_ref, n_first, n_second) == (2, 2, 0)  # to_k of the text ran on the first call only
    assert att.cache[layers[0]][0].shape == (2, 2, 512, 16)
