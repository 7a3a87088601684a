"""The causal block sampler on tiny Wan models: every denoising prediction of a cached block-by-block rollout equals
one forward over the whole video with per-token timesteps (0 on the context) and the block-causal mask restricted
to sink + window; the cache never holds more than sink + window frames; the recache equals recomputing the window
with the new prompt; expert routing and forward counts; determinism."""
import pytest
import torch
from kit import tiny

from interplay.models.backbones import base as B
from interplay.models.backbones import wan
from interplay.models.sampling import causal as CS

S = 32  # 32 px -> 4x4 latent -> 2x2 = 4 tokens per latent frame


@pytest.fixture(scope="module")
def t2v():
    return wan.load_wan(tiny.tiny_wan_dir(variant="2.1-t2v"), dtype="fp32", device="cpu")


@pytest.fixture(scope="module")
def i2v():
    return wan.load_wan(tiny.tiny_wan_dir(variant="2.2"), dtype="fp32", device="cpu")


class Mask(B.Attachment):
    """Reference: self-attention under an explicit [N, N] boolean mask (True = may attend)."""

    def __init__(self, layers, allowed):
        self.layers, self.allowed = layers, allowed

    def attention_layers(self, ctx):
        return self.layers

    def attention(self, ctx, layer, q, k, v, call):
        return B.sdpa(q, k, v, self.allowed)


class Capture(B.Attachment):
    """Keeps the self-attention k, v of every layer (after the norms and RoPE)."""

    def __init__(self, layers):
        self.layers, self.kv = layers, {}

    def attention_layers(self, ctx):
        return self.layers

    def attention(self, ctx, layer, q, k, v, call):
        self.kv[layer] = (k, v)
        return call(q, k, v)


def allowed_frames(start, n, sink, window):
    """The latent frames block [start, start + n) attends to: the sink, the window before it, itself."""
    return set(range(min(sink, start))) | set(range(max(sink, start - window), start)) | set(range(start, start + n))


def block_causal_mask(total, n, sink, window, tpf):
    m = torch.zeros(total * tpf, total * tpf, dtype=torch.bool)
    for s in range(0, total, n):
        keys = allowed_frames(s, min(n, total - s), sink, window)
        for f in keys:
            m[s * tpf:(s + n) * tpf, f * tpf:(f + 1) * tpf] = True
    return m


def _rollout(bb, cfg, **kw):
    return CS.CausalRollout(bb, cfg, height=S, width=S, seed=kw.pop("seed", 0), **kw)


@pytest.mark.parametrize("schedule", ["few_step", "multi_step"])
def test_cached_blocks_equal_one_full_forward_with_the_block_causal_mask(t2v, schedule):
    bb = t2v
    n, sink, window, tpf = 2, 1, 3, 4
    cfg = CS.CausalConfig(block_latent_frames=n, sink_latent_frames=sink, window_latent_frames=window,
                          schedule=schedule, steps=3, cfg=1.0 if schedule == "few_step" else 3.0)
    r = _rollout(bb, cfg, negative="blurry")
    seen, clean = [], []
    for k in range(5):  # frames 0..9: eviction starts at block 2
        lat = r.generate_block(prompt="a red box slides",
                               observe=lambda kind, i, x, t, v, k=k: seen.append((k, i, x.clone(), float(t), v)))
        clean.append(lat)
        assert len(r.cache.frames) <= sink + window  # never more than sink + window latent frames
        for ec in r.cache.experts.values():
            for kk, vv in ec.kv.values():
                assert kk.shape[2] == vv.shape[2] == len(r.cache.frames) * tpf
    assert r.cache.frames == [0, 7, 8, 9]
    layers = [wan.attention_layer(i) for i in range(bb.denoiser.config.num_layers)]
    cond = r._text_rows("a red box slides")
    worst = 0.0
    for k, i, x, t, v in seen:
        a = k * n
        x_full = torch.cat(clean[:k] + [x], dim=2)
        total = a + n
        mask = block_causal_mask(total, n, sink, window, tpf)
        tok = torch.zeros(1, total * tpf)
        tok[:, a * tpf:] = t
        outs = []
        for row in r.guidance["high_noise"].rows:  # the rows one by one: the guidance combines them after
            outs.append(wan.forward(bb, x_full, tok, cond[row], attachments=[Mask(layers, mask)])[:, :, a:].float())
        g = r.guidance["high_noise"]
        ref = g.combine(torch.cat(outs))
        worst = max(worst, float((ref - v).abs().max()))
        torch.testing.assert_close(v, ref, rtol=1e-4, atol=1e-4)
    assert len(seen) == 5 * (4 if schedule == "few_step" else 3)
    assert worst < 1e-4


def test_window_recache_equals_recomputing_the_window_with_the_new_prompt(t2v):
    """Three blocks of 2 frames (0..5, nothing evicted yet with window 9): after a switch, every cached k, v equals
    the one forward over frames 0..5 at t = 0 with the new prompt and the block-causal mask."""
    bb = t2v
    cfg = CS.CausalConfig(block_latent_frames=2, sink_latent_frames=1, window_latent_frames=9,
                          recache_scope="window")
    r = _rollout(bb, cfg)
    for _ in range(3):
        r.generate_block(prompt="a quiet street")
    before = {l: kv[0].clone() for l, kv in r.cache.experts["high_noise"].kv.items()}
    forwards = r.forwards
    assert r.set_prompt("a dragon appears") == "window"
    assert r.forwards - forwards == 3  # one clean pass per original block
    layers = [wan.attention_layer(i) for i in range(bb.denoiser.config.num_layers)]
    x = torch.cat([r.held[f] for f in range(6)], dim=2)
    cap = Capture(layers)
    wan.forward(bb, x, torch.zeros(1), r._text_rows("a dragon appears")["cond"],
                attachments=[cap, Mask(layers, block_causal_mask(6, 2, 1, 9, 4))])
    for layer in layers:
        k, v = r.cache.experts["high_noise"].kv[layer]
        torch.testing.assert_close(k, cap.kv[layer][0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(v, cap.kv[layer][1], rtol=1e-5, atol=1e-5)
        # block 0's self-attention comes before any cross-attention, so only later layers see the prompt
        changed = float((k - before[layer]).abs().max())
        assert changed == 0.0 if layer == layers[0] else changed > 1e-4
    assert r.cache.frames == list(range(6))
    # the cross-attention cache holds the new prompt's projections (as a plain forward computes them)
    cross = [wan.attention_layer(i, "cross") for i in range(bb.denoiser.config.num_layers)]
    cap2 = Capture(cross)
    wan.forward(bb, x[:, :, :2], torch.zeros(1), r._text_rows("a dragon appears")["cond"], attachments=[cap2])
    for layer in cross:
        assert torch.equal(r.cache.experts["high_noise"].text[layer][0], cap2.kv[layer][0])


def test_last_block_recache_changes_only_the_last_block(t2v):
    cfg = CS.CausalConfig(block_latent_frames=2, sink_latent_frames=1, window_latent_frames=3)
    r = _rollout(t2v, cfg)
    for _ in range(4):
        r.generate_block(prompt="a quiet street")
    assert r.cache.frames == [0, 5, 6, 7] and r.cache.groups == [0, 2, 3, 3]
    before = {l: kv[0].clone() for l, kv in r.cache.experts["high_noise"].kv.items()}
    f0 = r.forwards
    r.generate_block(prompt="it starts to snow")  # the switch recaches block 3 (frames 6, 7) first
    rec = r.records[-1]
    assert rec.switched and rec.recache == "last_block" and rec.forwards == 4 + 1
    assert r.forwards - f0 == 1 + 4 + 1  # recache pass + 4 steps + clean pass
    # replay the recache alone on a copy to see its entries before the new block was written
    r2 = _rollout(t2v, cfg)
    for _ in range(4):
        r2.generate_block(prompt="a quiet street")
    r2.set_prompt("it starts to snow")
    for l, (k, _) in r2.cache.experts["high_noise"].kv.items():
        assert torch.equal(k[:, :, :2 * 4], before[l][:, :, :2 * 4])      # the sink and block 2's frame unchanged
        if l != "blocks.0.attn1":  # (layer 0 comes before any cross-attention)
            assert float((k[:, :, 2 * 4:] - before[l][:, :, 2 * 4:]).abs().max()) > 1e-4  # block 3 recomputed
    # no switch: nothing is recomputed
    f1 = r2.forwards
    r2.generate_block(prompt="it starts to snow")
    assert r2.forwards - f1 == 5 and r2.records[-1].recache is None


def test_none_recache_keeps_the_self_attention_cache_and_drops_the_text(t2v):
    cfg = CS.CausalConfig(block_latent_frames=2, window_latent_frames=3, recache_scope="none")
    r = _rollout(t2v, cfg)
    r.generate_block(prompt="a")
    k0 = {l: kv[0].clone() for l, kv in r.cache.experts["high_noise"].kv.items()}
    assert r.cache.experts["high_noise"].text
    assert r.set_prompt("b") == "none"
    assert r.cache.experts["high_noise"].text == {}
    assert all(torch.equal(r.cache.experts["high_noise"].kv[l][0], k0[l]) for l in k0)


def test_two_experts_route_two_steps_each_and_each_writes_its_own_cache(i2v):
    img = torch.rand(1, S, S, 3, generator=torch.Generator().manual_seed(1))
    r = _rollout(i2v, CS.CausalConfig(), image=img)
    assert [round(t, 2) for t in CS.DEFAULT_TIMESTEPS] == [1000.0, 937.5, 833.33, 625.0]
    lat = r.generate_block(prompt="a street")
    rec = r.records[0]
    assert rec.experts == ["high_noise", "high_noise", "low_noise", "low_noise"]
    assert rec.forwards == 4 + 2 and r.forwards_per_block() == 6  # no CFG: batch 1, plus one clean pass each
    assert set(r.cache.experts) == {"high_noise", "low_noise"}
    hi, lo = (r.cache.experts[e].kv["blocks.0.attn1"][0] for e in ("high_noise", "low_noise"))
    assert hi.shape == lo.shape == (1, 2, 3 * 4, 16) and not torch.equal(hi, lo)
    assert lat.shape == (1, 16, 3, 4, 4)
    r2 = _rollout(i2v, CS.CausalConfig(boundary=0.95), image=img)
    r2.generate_block(prompt="a street")
    assert r2.records[0].experts == ["high_noise", "low_noise", "low_noise", "low_noise"]


def test_i2v_condition_of_any_block_is_the_long_clips(i2v):
    """The image condition grows with the rollout until its tail stops changing (about 30 latent frames for the
    random tiny VAE); the conditions of any block equal those of encoding one long clip."""
    from interplay.models.sampling.wan import prepare_conds

    img = torch.rand(1, S, S, 3, generator=torch.Generator().manual_seed(2))
    r = _rollout(i2v, CS.CausalConfig(), image=img)
    r.set_prompt("p")
    emb = r._text_rows("p")["cond"]
    long = prepare_conds(i2v, img, emb, None, 1 + 4 * 66, S, S)
    assert r.conds(0, 3).parts["image"].shape[2] == 3 and r._ref == 10
    for a in (12, 30, 63):
        got = r.conds(a, a + 3)
        for k in got.parts:
            assert torch.equal(got.parts[k], long.parts[k][:, :, a:a + 3]), (a, k)
    assert r._stationary and r._ref < 66


def test_same_seed_same_video_and_reset_to_sink(t2v):
    cfg = CS.CausalConfig(block_latent_frames=2, window_latent_frames=3)
    a, b, c = (_rollout(t2v, cfg, seed=s) for s in (3, 3, 4))
    la = torch.cat([a.generate_block(prompt="p") for _ in range(3)], 2)
    lb = b.generate(3, prompts=["p"] * 3)
    lc = c.generate(3, prompts=["p"] * 3)
    assert torch.equal(la, lb) and not torch.equal(la, lc)
    a.reset_to_sink()
    assert a.cache.frames == [0] and sorted(a.held) == [0]
    assert a.cache.experts["high_noise"].kv["blocks.0.attn1"][0].shape[2] == 4


def test_named_errors(t2v, i2v):
    with pytest.raises(ValueError, match="recache_scope must be one of"):
        CS.CausalConfig(recache_scope="all")
    with pytest.raises(ValueError, match="timesteps must be decreasing"):
        CS.CausalConfig(timesteps=(500, 900))
    with pytest.raises(ValueError, match="image-to-video model"):
        _rollout(i2v, CS.CausalConfig())
    with pytest.raises(ValueError, match="text-to-video and takes no image"):
        _rollout(t2v, CS.CausalConfig(), image=torch.zeros(1, S, S, 3))
    with pytest.raises(ValueError, match="cache_update_pass off"):
        _rollout(i2v, CS.CausalConfig(cache_update_pass=False), image=torch.zeros(1, S, S, 3))
