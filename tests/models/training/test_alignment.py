import math

import pytest
import torch

from interplay.models.training import alignment as A

LN2 = math.log(2)


def sig(x):
    return 1 / (1 + math.exp(-x))


def hand_map():
    """logits [F=1, H=2, W=2] = 0, 2, -1, ln 3 against targets 1, 0, 0, 1."""
    x = torch.tensor([[[0.0, 2.0], [-1.0, math.log(3)]]])
    y = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    return x, y


def test_bce_dice_l2_hand_values():
    x, y = hand_map()
    terms = [LN2, math.log(1 + math.e ** 2), math.log(1 + math.e ** -1), math.log(4 / 3)]  # -log sigmoid / -log(1-s)
    bce = sum(terms) / 4
    p = [0.5, sig(2), sig(-1), 0.75]
    dice = (2 * (0.5 + 0.75) + 1e-6) / (sum(p) + 2 + 1e-6)
    l2 = ((0.5 - 1) ** 2 + p[1] ** 2 + p[2] ** 2 + (0.75 - 1) ** 2) / 4
    assert float(A.bce(x, y)) == pytest.approx(bce, abs=1e-6)
    assert float(A.dice(x, y)) == pytest.approx(dice, abs=1e-6)
    assert float(A.l2(x, y)) == pytest.approx(l2, abs=1e-6)
    assert float(A.mask_loss(x, y, A.PAPER)) == pytest.approx(bce + 1 - dice + l2, abs=1e-6)  # 1.577197
    assert bce + 1 - dice + l2 == pytest.approx(1.577197, abs=1e-6)
    weighted = A.PAPER.replace(beta_bce=2.0, beta_dice=0.5, beta_l2=0.0)
    assert float(A.mask_loss(x, y, weighted)) == pytest.approx(2 * bce + 0.5 * (1 - dice), abs=1e-6)


def test_code_bce_capped_pos_weight_hand_values():
    x, _ = hand_map()
    y = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])  # 1 positive, 3 negatives: pos_weight 3
    assert float(A.pos_weight(y)) == 3.0
    expect = (3 * LN2 + math.log(1 + math.e ** 2) + math.log(1 + math.e ** -1) + math.log(4)) / 4
    assert float(A.mask_loss(x, y, A.CODE)) == pytest.approx(expect, abs=1e-6)
    sparse = torch.zeros(40)
    sparse[0] = 1
    assert float(A.pos_weight(sparse)) == 10.0 and float(A.pos_weight(sparse, cap=None)) == 39.0
    assert float(A.pos_weight(torch.zeros(7))) == 7.0 and float(A.pos_weight(torch.zeros(70))) == 10.0


def zero_logit_loss(n, p):
    """ell of all-zero logits (sigmoid 0.5) on a map of n elements with p positives (paper preset)."""
    return LN2 + 1 - (p + 1e-6) / (n / 2 + p + 1e-6) + 0.25


def test_alignment_loss_groups_roles_and_present():
    # 2 groups x 3 roles, each map F=1 x 2 x 4 (8 elements); positives per map chosen by hand
    y = torch.zeros(2, 3, 1, 2, 4)
    y[0, 0, 0, 0, :2] = 1  # 2 positives
    y[0, 1, 0, 1, :1] = 1  # 1
    y[0, 2] = y[0, 0] + y[0, 1]  # union: 3
    y[1, 0, 0, 0, :] = 1  # 4
    y[1, 1, 0, 1, :4] = 1  # 4
    y[1, 2] = 1  # 8
    x = torch.zeros_like(y)
    g0 = zero_logit_loss(8, 2) + zero_logit_loss(8, 1) + zero_logit_loss(8, 3)
    g1 = zero_logit_loss(8, 4) + zero_logit_loss(8, 4) + zero_logit_loss(8, 8)
    assert float(A.alignment_loss(x, y, A.PAPER)) == pytest.approx((g0 + g1) / 2, abs=1e-6)
    assert float(A.alignment_loss(x, y, A.PAPER, present=[True, False])) == pytest.approx(g0, abs=1e-6)
    # code preset: one pooled BCE over the present maps with one pos_weight
    c = y[:, :1]  # [G=2, R=1, ...]: 2 + 4 positives of 16 elements
    w = (16 - 6) / 6
    assert float(A.alignment_loss(x[:, :1], c, A.CODE)) == pytest.approx(LN2 * (w * 6 + 10) / 16, abs=1e-6)
    assert float(A.alignment_loss(x[:, :1], c, A.CODE, present=[False, True])) == pytest.approx(LN2, abs=1e-6)
    none = A.alignment_loss(x.requires_grad_(), y, A.PAPER, present=[False, False])
    assert float(none.detach()) == 0.0 and none.requires_grad
    with pytest.raises(ValueError, match="one shape"):
        A.alignment_loss(x[:, :2], y, A.PAPER)


def test_perfect_prediction_minimises():
    _, y = hand_map()
    perfect = (y * 2 - 1) * 30
    for preset in (A.PAPER, A.CODE):
        best = float(A.mask_loss(perfect, y, preset))
        assert best < 1e-6
        for seed in range(3):
            other = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed)) * 3
            assert float(A.mask_loss(other, y, preset)) > best


def test_total_loss_weights():
    assert float(A.total_loss(torch.tensor(1.0), 2.0, 4.0, A.CODE, timestep_weight=0.5)) == \
        pytest.approx(1 + 0.5 * (0.01 * 2 + 0.005 * 4))
    assert float(A.total_loss(torch.tensor(1.0), 2.0, 4.0, A.PAPER, timestep_weight=0.5)) == \
        pytest.approx(1 + 0.01 * 2 + 0.005 * 4)
    maps = [torch.full((2, 3), 1.0), torch.full((2, 3), 3.0)]
    assert torch.equal(A.combine_layers(maps), torch.full((2, 3), 2.0))


def test_role_targets():
    tr = torch.zeros(3, 2, 4, 4, dtype=torch.bool)
    tr[0, :, :2, :2] = True
    tr[1, :, 2:, 2:] = True
    tr[2, 1, 0, 3] = True  # ID 3 only appears in frame 1
    t, groups, present = A.role_targets(tr, A.PAPER, "sga", [(1, 2), (2, 1)])
    assert t.shape == (2, 3, 2, 4, 4) and groups == [[(1,), (2,), (1, 2)], [(2,), (1,), (2, 1)]]
    assert torch.equal(t[0, 2], tr[0] | tr[1]) and torch.equal(t[1, 0], tr[1]) and present.all()
    t, groups, _ = A.role_targets(tr, A.PAPER, "spa", [(1, 2)])
    assert t.shape == (1, 2, 2, 4, 4) and groups == [[(1,), (2,)]]
    t, groups, present = A.role_targets(tr, A.CODE, "sga")
    assert t.shape == (3, 1, 2, 4, 4) and groups == [[(1,)], [(2,)], [(3,)]] and present.tolist() == [True] * 3
    assert A.role_targets(tr, A.CODE, "spa")[2].tolist() == [True, True, False]  # no first-frame queries for ID 3
    with pytest.raises(ValueError, match="names ID 4"):
        A.role_targets(tr, A.PAPER, "sga", [(1, 4)])
    with pytest.raises(ValueError, match="interactions"):
        A.role_targets(tr, A.PAPER, "sga")
    assert A.pixel_targets(torch.ones(2, 3, 8, 12), 0.5).shape == (2, 3, 4, 6)
    with pytest.raises(ValueError, match="whole pixels"):
        A.pixel_targets(torch.ones(1, 1, 6, 6), 0.25)


def test_decoder_shapes_parameters_and_causality():
    torch.manual_seed(0)
    dec = A.MatrixAttnDecoder().eval()
    assert dec.num_parameters() == 459185 and dec.num_parameters() < 1_000_000
    x = torch.randn(2, 4, 2, 3)  # T=4 latent frames on a 2 x 3 token grid
    with torch.no_grad():
        y = dec(x)
    assert y.shape == (2, 1, 13, 32, 48) and dec.output_frames(13) == 49
    # causal: latent t covers pixel frames 4t-3 .. 4t; changing latent frames > t leaves frames <= 4t unchanged
    for t in range(3):
        x2 = x.clone()
        x2[:, t + 1:] = torch.randn(2, 3 - t, 2, 3)
        with torch.no_grad():
            y2 = dec(x2)
        assert torch.equal(y2[:, :, :4 * t + 1], y[:, :, :4 * t + 1])
        assert not torch.allclose(y2[:, :, 4 * t + 1], y[:, :, 4 * t + 1])
    half = A.MatrixAttnDecoder(A.CODE.replace(target_scale=0.5).decoder_config())
    assert half(torch.randn(1, 1, 3, 2, 2)).shape == (1, 1, 9, 16, 16) and half.num_parameters() < 1_000_000
    wan22 = A.DecoderConfig.for_factors(32, 4)
    assert wan22.spatial_stages == 5 and A.MatrixAttnDecoder(wan22).num_parameters() < 1_000_000
    with pytest.raises(ValueError, match="powers of two"):
        A.DecoderConfig.for_factors(16, 4, 0.3)
    # a per-sample affine change of the map leaves the output unchanged (per-frame standardisation)
    with torch.no_grad():
        torch.testing.assert_close(dec(3 * x + 5), y, rtol=1e-4, atol=1e-4)


def test_presets_numbers():
    p, c = A.get_preset("paper"), A.get_preset("code")
    assert (p.lora_rank, p.lora_alpha, p.lora_layers, p.patch_in, p.patch_out) == (128, 64.0, (7, 11, 12), 32, 48)
    assert (c.lora_rank, c.lora_alpha, c.patch_in, c.patch_out, c.inference_lora_strength) == (16, 16.0, 36, 56, 0.5)
    assert (c.lambda_sga, c.lambda_spa, c.pos_weight_cap, c.loss) == (0.01, 0.005, 10.0, "bce")
    assert (p.loss, p.pos_weight_cap, p.sga_roles, p.spa_roles) == ("bce_dice_l2", None, ("sub", "obj", "verb"),
                                                                   ("sub", "obj"))
    assert p.latent_grid == (13, 30, 45) and c.latent_grid == (21, 30, 52) and p.token_stride == c.token_stride == 16
    assert A.get_preset("paper", lora_rank=8).lora_rank == 8 and A.PAPER.lora_rank == 128
    with pytest.raises(ValueError, match="preset must be"):
        A.get_preset("wan")


def test_lora_targets_match_the_diffusers_classes():
    """Every named module exists in diffusers 0.42's CogVideoXTransformer3DModel / WanTransformer3DModel as an
    nn.Linear, and peft puts LoRA on exactly those."""
    from diffusers import CogVideoXTransformer3DModel, WanTransformer3DModel

    from interplay.models.training.lora import add_lora
    from kit.tiny import COGVIDEOX_TRANSFORMER, WAN21_TRANSFORMER

    for preset, model in ((A.PAPER, CogVideoXTransformer3DModel(**dict(COGVIDEOX_TRANSFORMER, num_layers=13))),
                          (A.CODE, WanTransformer3DModel(**dict(WAN21_TRANSFORMER, num_layers=25)))):
        names = preset.lora_target_modules()
        assert all(isinstance(model.get_submodule(n), torch.nn.Linear) for n in names)
        add_lora(model, preset.lora_rank, preset.lora_alpha, names)
        wrapped = sorted({n.rsplit(".lora_A", 1)[0] for n, _ in model.named_parameters() if ".lora_A." in n})
        assert wrapped == sorted(names)
    assert len(A.PAPER.lora_target_modules()) == 12 and len(A.CODE.lora_target_modules()) == 16
    assert "blocks.20.attn2.to_out.0" in A.CODE.lora_target_modules()
    assert "transformer_blocks.11.attn1.to_k" in A.PAPER.lora_target_modules()
