import math

import numpy as np
import pytest
import torch

from interplay.models.conditions.id_map import latent_mask_track
from interplay.models.control import matrix as X
from kit.peak_memory import PeakMemory

B, H, D, L = 2, 3, 8, 5
GRID = (3, 2, 4)  # T, h, w: 24 video tokens
NV = 24
SETS = [[0], [1, 3], [2, 3, 4]]


def qk(n_q, n_k, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, H, n_q, D, generator=g), torch.randn(B, H, n_k, D, generator=g)


def set_mean(x, sets):
    """x [..., L] -> [..., S]: the mean over each set's columns."""
    return torch.stack([x[..., s].mean(-1) for s in sets], -1)


def first_frame_masks():
    m = torch.zeros(2, 2, 4, dtype=torch.bool)
    m[0, 0, :2] = True  # tokens 0, 1 of frame 0
    m[1, 1, 1:] = True  # tokens 5, 6, 7
    return m


def ref_v2v(rows, masks):
    """rows [B, H, hw, Nv] of frame-0 queries -> [B, E, Nv] head-mean of the per-set query mean."""
    flat = masks.reshape(masks.shape[0], -1)
    return torch.stack([rows[:, :, m].mean(2) for m in flat], 1).mean(2)


@pytest.mark.parametrize("chunk", [1, 7, 1024])
def test_joint_layout_blockwise_equals_dense(chunk):
    lay = X.TokenLayout.cogvideox(GRID, text_len=L)
    q, k = qk(L + NV, L + NV)
    p = X.attention_probs(q, k)  # [B, H, 29, 29]
    logits = q @ k.transpose(-1, -2) / math.sqrt(D)
    for mode, full in (("softmax", p), ("logits", logits)):
        ref = set_mean(full[:, :, L:, :L], SETS).mean(1).permute(0, 2, 1).reshape(B, 3, *GRID)
        got = X.v2t_maps(q, k, lay, SETS, mode=mode, chunk=chunk)
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)
        rows = full[:, :, L:L + 8, L:]  # frame-0 queries, video keys
        ref = ref_v2v(rows, first_frame_masks()).reshape(B, 2, *GRID)
        got = X.v2v_maps(q, k, lay, first_frame_masks(), mode=mode, chunk=chunk)
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)


def test_softmax_slices_are_not_renormalised():
    lay = X.TokenLayout.cogvideox(GRID, text_len=L)
    q, k = qk(L + NV, L + NV, seed=1)
    one = torch.zeros(1, 2, 4, dtype=torch.bool)
    one[0, 0, 3] = True  # the single frame-0 query at token 3
    v2t = X.v2t_maps(q, k, lay, [[i] for i in range(L)], mode="softmax", chunk=5)  # [B, L, T, h, w]
    v2v = X.v2v_maps(q, k, lay, one, mode="softmax")  # [B, 1, T, h, w]
    total = v2t[:, :, 0, 0, 3].sum(1) + v2v[:, 0].sum((-3, -2, -1))
    torch.testing.assert_close(total, torch.ones(B), rtol=0, atol=1e-6)  # text mass + video mass = 1
    assert bool((v2v[:, 0].sum((-3, -2, -1)) < 0.999).all())  # the video slice alone does not sum to 1


def test_logit_maps_are_exact_means_and_head_reductions():
    lay = X.TokenLayout.cogvideox(GRID, text_len=L)
    q, k = qk(L + NV, L + NV, seed=2)
    m = first_frame_masks()
    # the query-mean trick: (mean_q q) . k / sqrt(d) equals the mean of the per-query logits
    per_query = (q[:, :, L:L + 8] @ k[:, :, L:].transpose(-1, -2)) / math.sqrt(D)  # [B, H, 8, Nv]
    torch.testing.assert_close(X.v2v_maps(q, k, lay, m).reshape(B, 2, NV), ref_v2v(per_query, m), rtol=0, atol=1e-5)
    mean = X.v2t_maps(q, k, lay, SETS)
    torch.testing.assert_close(X.v2t_maps(q, k, lay, SETS, head_reduce="sum"), H * mean, rtol=0, atol=1e-5)
    # full_dim: the public code's q.k over the full width / sqrt(width) on the heads concatenated
    qf = q.permute(0, 2, 1, 3).reshape(B, L + NV, H * D)
    kf = k.permute(0, 2, 1, 3).reshape(B, L + NV, H * D)
    full = (qf[:, L:] @ kf[:, :L].transpose(-1, -2)) / math.sqrt(H * D)  # [B, Nv, L]
    ref = set_mean(full, SETS).permute(0, 2, 1).reshape(B, 3, *GRID)
    torch.testing.assert_close(X.v2t_maps(q, k, lay, SETS, head_reduce="full_dim"), ref, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="full_dim"):
        X.v2t_maps(q, k, lay, SETS, mode="softmax", head_reduce="full_dim")


def test_video_last_and_wan_layouts():
    q, k = qk(NV + L, NV + L, seed=3)
    last = X.TokenLayout("joint", GRID, L, text_first=False)
    p = X.attention_probs(q, k)
    ref = set_mean(p[:, :, :NV, NV:], SETS).mean(1).permute(0, 2, 1).reshape(B, 3, *GRID)
    torch.testing.assert_close(X.v2t_maps(q, k, last, SETS, mode="softmax", chunk=5), ref, rtol=0, atol=1e-6)
    # Wan cross-attention: the softmax runs over the text keys alone
    qv, kt = qk(NV, L, seed=4)
    cross = X.TokenLayout.wan_cross(GRID, text_len=L)
    ref = set_mean(X.attention_probs(qv, kt), SETS).mean(1).permute(0, 2, 1).reshape(B, 3, *GRID)
    got = X.v2t_maps(qv, kt, cross, SETS, mode="softmax", chunk=4)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(got.sum(1), set_mean(X.attention_probs(qv, kt), SETS).mean(1).sum(-1)
                               .reshape(B, *GRID), rtol=0, atol=1e-6)
    # Wan self-attention: video keys only
    qv, kv = qk(NV, NV, seed=5)
    selfl = X.TokenLayout.wan_self(GRID)
    ref = ref_v2v(X.attention_probs(qv, kv)[:, :, :8], first_frame_masks()).reshape(B, 2, *GRID)
    torch.testing.assert_close(X.v2v_maps(qv, kv, selfl, first_frame_masks(), mode="softmax", chunk=2), ref,
                               rtol=0, atol=1e-6)
    # per batch-row masks and another query frame
    per_row = torch.stack([first_frame_masks(), first_frame_masks().flip(0)])
    got = X.v2v_maps(qv, kv, selfl, per_row, mode="softmax", query_frame=1)
    rows = X.attention_probs(qv, kv)[:, :, 8:16]
    torch.testing.assert_close(got[1, 0].reshape(-1), ref_v2v(rows[1:], first_frame_masks()[1:])[0, 0],
                               rtol=0, atol=1e-6)


def test_layout_and_input_errors():
    lay = X.TokenLayout.cogvideox(GRID, text_len=L)
    q, k = qk(L + NV, L + NV)
    with pytest.raises(ValueError, match="expects 29 queries and 29 keys"):
        X.v2t_maps(q[:, :, :-1], k, lay, SETS)
    with pytest.raises(ValueError, match="token set 1 is empty"):
        X.v2t_maps(q, k, lay, [[0], []])
    with pytest.raises(ValueError, match="outside 0..4"):
        X.v2t_maps(q, k, lay, [[5]])
    with pytest.raises(ValueError, match="query mask 0 is empty"):
        X.v2v_maps(q, k, lay, torch.zeros(1, 2, 4))
    with pytest.raises(ValueError, match="token grid"):
        X.v2v_maps(q, k, lay, torch.ones(1, 4, 4))
    with pytest.raises(ValueError, match="no text keys"):
        X.v2t_maps(*qk(NV, NV), X.TokenLayout.wan_self(GRID), SETS)
    with pytest.raises(ValueError, match="text_len"):
        X.TokenLayout("cross", GRID)


def test_blockwise_peak_memory_is_bounded_by_one_block():
    """v2t/v2v in softmax mode keep one [B, H, chunk, N_keys] float32 block (plus its head mean over the video keys
    and the output) where the dense computation holds B*H*N*N; measured with kit.peak_memory on CPU. At this size
    (4 heads, 1088 tokens): dense 37.9 MB, chunk 128: v2t 2.30 MB, v2v 2.77 MB; logit maps 0.07-0.43 MB."""
    t, h, w, text = 4, 16, 16, 64  # 1024 video tokens + 64 text tokens
    lay = X.TokenLayout.cogvideox((t, h, w), text_len=text)
    n, nv = text + t * h * w, t * h * w
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 4, n, 16, generator=g), torch.randn(1, 4, n, 16, generator=g)
    sets = [[i] for i in range(0, 8)]
    masks = torch.zeros(2, h, w, dtype=torch.bool)
    masks[0, :8] = masks[1, 8:] = True  # all 256 frame-0 tokens are queries
    with PeakMemory() as dense:
        X.attention_probs(q, k)
    assert dense.peak >= 4 * n * n * 4  # 4 heads x n x n float32 = 18.9 MB (the reference holds two)
    small = 64 * 1024  # row maxima and sums, the set matrix, the query weights
    for chunk in (32, 128):
        block = 4 * chunk * n * 4  # 0.56 MB, 2.2 MB
        with PeakMemory() as v2t:
            X.v2t_maps(q, k, lay, sets, mode="softmax", chunk=chunk)
        with PeakMemory() as v2v:
            X.v2v_maps(q, k, lay, masks, mode="softmax", chunk=chunk)
        assert block <= v2t.peak <= block + nv * len(sets) * 4 + small, (chunk, v2t.peak)
        assert block <= v2v.peak <= block + 2 * chunk * nv * 4 + 2 * nv * 4 + small, (chunk, v2v.peak)
        assert dense.peak / v2t.peak > 4 * 128 / chunk
    with PeakMemory() as logit:
        X.v2v_maps(q, k, lay, masks, mode="logits")
    assert logit.peak <= 2 * nv * 4 * 2 + small  # no block over keys: only the two mean queries and the output


def test_aas_values():
    m = torch.zeros(3, 2, 4, dtype=torch.bool)
    m[0, 0, :2] = m[2, 1, 3] = True
    a = m.float() / m.sum()
    assert float(X.aas(a, m)) == pytest.approx(1.0)
    assert float(X.aas(a, ~m)) == 0.0
    maps = torch.arange(24.0).reshape(3, 2, 4)
    assert float(X.aas(maps, m)) == 0 + 1 + 23
    q, k = qk(L + NV, L + NV, seed=6)
    lay = X.TokenLayout.cogvideox(GRID, text_len=L)
    s = X.aas(X.v2t_maps(q, k, lay, SETS, mode="softmax", head_reduce="sum"), m)
    torch.testing.assert_close(s, H * X.aas(X.v2t_maps(q, k, lay, SETS, mode="softmax"), m), rtol=1e-6, atol=1e-6)
    assert X.aas(torch.ones(2, 5, 3, 2, 4), m).shape == (2, 5)
    assert torch.equal(X.union_track(m[:1], m[2:]), m[:1] | m[2:])
    with pytest.raises(ValueError, match="grid"):
        X.aas(maps, torch.ones(3, 2, 2))


def test_rank_layers_hand_table():
    # 4 videos x 5 layers, top-2 per video
    a = np.array([[5.0, 4, 1, 0, 0],
                  [5.0, 1, 4, 0, 0],
                  [0.0, 4, 5, 1, 0],
                  [1.0, 5, 0, 4, 0]])
    r = X.rank_layers(a, top_k=2, n_influential=3, layer_ids=[10, 11, 12, 13, 14])
    assert r.frequency.tolist() == [2, 3, 2, 1, 0]
    assert r.magnitude.tolist() == [2.75, 3.5, 2.5, 1.25, 0.0]
    assert r.rank_frequency.tolist() == [2.5, 1, 2.5, 4, 5] and r.rank_magnitude.tolist() == [2, 1, 3, 4, 5]
    assert r.rank_sum.tolist() == [4.5, 2, 5.5, 8, 10]
    assert r.influential == [11, 10, 12]
    # videos 0, 1 succeed; 2, 3 fail
    r = X.rank_layers(a, [True, True, False, False], top_k=2, n_influential=3, layer_ids=[10, 11, 12, 13, 14])
    assert r.mu_success[10] == 5.0 and r.mu_failure[10] == 0.5 and r.mu_all[10] == 2.75
    assert r.success_gap[10] == 2.25 and r.failure_gap[10] == -2.25 and r.separation[10] == 4.5
    for layer in r.influential:  # equal-size sets: success gap = -failure gap
        assert r.success_gap[layer] == pytest.approx(-r.failure_gap[layer])
    assert r.separation == {10: 4.5, 11: -2.0, 12: 0.0}
    assert r.by_separation == [10, 12, 11] and r.dominant == [10]
    d = r.as_dict()
    assert d["dominant"] == [10] and d["layers"]["10"]["separation"] == 4.5 and d["layers"]["14"]["frequency"] == 0
    steps = np.stack([a - 1, a + 1], 1)  # [V, S, L]: averaged over steps
    assert X.rank_layers(steps, top_k=2, n_influential=3).magnitude.tolist() == [2.75, 3.5, 2.5, 1.25, 0.0]
    with pytest.raises(ValueError, match="both successes and failures"):
        X.rank_layers(a, [True] * 4)
    with pytest.raises(ValueError, match="NaN"):
        X.rank_layers(np.array([[np.nan, 1.0]]))


def test_planted_aligned_layer_ranks_first():
    """Six random attention layers; in layer 4 the video queries inside the object's mask track share a direction
    with the object's text token's key. AAS of the real v2t maps over 6 videos puts layer 4 first."""
    T, h, w, text = 3, 4, 4, 6
    lay = X.TokenLayout.cogvideox((T, h, w), text_len=text)
    nv = T * h * w
    g = torch.Generator().manual_seed(0)
    table = []
    for video in range(6):
        pix = torch.zeros(1 + 4 * (T - 1), h * 16, w * 16, dtype=torch.bool)
        y, x = (video % 3) * 16, (video // 3) * 16 + 16
        pix[:, y:y + 32, x:x + 32] = True
        track = latent_mask_track(pix, 4, 16)  # [T, h, w]
        inside = track.reshape(-1)
        row = []
        for layer in range(6):
            q = torch.randn(1, 2, text + nv, 8, generator=g)
            k = torch.randn(1, 2, text + nv, 8, generator=g)
            if layer == 4:
                u = torch.randn(8, generator=g)
                u = 3 * u / u.norm()
                q[:, :, text:][:, :, inside] += u
                k[:, :, 2] += u  # text token 2 names the object
            row.append(float(X.aas(X.v2t_maps(q, k, lay, [[2]], mode="softmax"), track)[0, 0]))
        table.append(row)
    r = X.rank_layers(np.array(table), top_k=2, n_influential=3)
    assert r.influential[0] == 4 and r.frequency[4] == 6 and r.magnitude.argmax() == 4


@pytest.mark.parametrize("mode", ["logits", "softmax"])
def test_gradients_match_the_dense_computation(mode):
    """Training back-propagates through the maps into q and k (the LoRA's q/k projections): the blockwise maps'
    gradients equal those of the dense computation."""
    lay = X.TokenLayout.cogvideox(GRID, text_len=L)
    q0, k0 = qk(L + NV, L + NV, seed=7)
    w = torch.randn(B, 3, *GRID, generator=torch.Generator().manual_seed(8))
    wv = torch.randn(B, 2, *GRID, generator=torch.Generator().manual_seed(9))

    def grads(fn):
        q, k = q0.clone().requires_grad_(), k0.clone().requires_grad_()
        t, v = fn(q, k)
        ((t * w).sum() + (v * wv).sum()).backward()
        return q.grad, k.grad

    def blockwise(q, k):
        return (X.v2t_maps(q, k, lay, SETS, mode=mode, chunk=7),
                X.v2v_maps(q, k, lay, first_frame_masks(), mode=mode, chunk=3))

    def dense(q, k):
        full = X.attention_probs(q, k) if mode == "softmax" else q @ k.transpose(-1, -2) / math.sqrt(D)
        t = set_mean(full[:, :, L:, :L], SETS).mean(1).permute(0, 2, 1).reshape(B, 3, *GRID)
        return t, ref_v2v(full[:, :, L:L + 8, L:], first_frame_masks()).reshape(B, 2, *GRID)

    for got, ref in zip(grads(blockwise), grads(dense)):
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)
