"""EDM Euler for SVD: sigmas, preconditioning, guidance ramp, CFG plumbing, equality with diffusers."""
import math

import pytest
import torch

from interplay.models.backbones import svd
from interplay.models.control import interdyn
from interplay.models.control.base import ControlSignal
from interplay.models.sampling import edm


@pytest.fixture(scope="module")
def bb():
    return svd.random_backbone("tiny", seed=0)


def test_karras_sigmas_by_hand():
    s = edm.karras_sigmas(3, 0.002, 700.0, 7.0)
    mid = ((700 ** (1 / 7) + 0.002 ** (1 / 7)) / 2) ** 7
    assert s.tolist() == pytest.approx([700.0, mid, 0.002, 0.0], rel=1e-12)
    # by hand: 700^(1/7) = 2.5494, 0.002^(1/7) = 0.41156, mean 1.48048, ^7 = e^(7 * 0.39237) = 15.590
    assert mid == pytest.approx(15.590, rel=1e-4)


def test_karras_sigmas_match_diffusers_euler():
    from diffusers import EulerDiscreteScheduler
    sch = EulerDiscreteScheduler(prediction_type="v_prediction", use_karras_sigmas=True, sigma_min=0.002,
                                 sigma_max=700.0, timestep_type="continuous", timestep_spacing="leading",
                                 steps_offset=1, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    sch.set_timesteps(50)
    ours = edm.karras_sigmas(50)
    torch.testing.assert_close(ours.float(), sch.sigmas.float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sch.timesteps.double(), 0.25 * ours[:-1].log(), rtol=1e-5, atol=1e-5)
    assert float(sch.init_noise_sigma) == pytest.approx(math.sqrt(700.0 ** 2 + 1), rel=1e-6)


def test_precondition_and_weight():
    c_skip, c_out, c_in, c_noise = edm.precondition(2.0)
    assert float(c_skip) == pytest.approx(0.2)
    assert float(c_out) == pytest.approx(-2 / math.sqrt(5))
    assert float(c_in) == pytest.approx(1 / math.sqrt(5))
    assert float(c_noise) == pytest.approx(0.25 * math.log(2))
    assert float(edm.loss_weight(torch.tensor(2.0))) == pytest.approx(1.25)


def test_guidance_ramp():
    w = edm.guidance_ramp(14, 1.0, 3.0)
    assert w[0] == 1.0 and w[-1] == 3.0 and float(w[1]) == pytest.approx(1 + 2 / 13)
    assert torch.allclose(w[1:] - w[:-1], torch.full((13,), 2 / 13, dtype=torch.float64))


def test_sampler_equals_diffusers_euler_loop(bb, monkeypatch):
    """No CFG: our loop with a fake network equals diffusers' EulerDiscreteScheduler stepping the same one."""
    from diffusers import EulerDiscreteScheduler

    def fake(bb_, inp, c_noise, emb, tids, **kw):
        return 0.3 * inp[:, :, :4] + 0.1 * torch.as_tensor(c_noise).view(-1, 1, 1, 1, 1)

    monkeypatch.setattr(edm, "model_forward", fake)
    img = torch.rand(1, 64, 64, 3)
    emb, lat = torch.zeros(1, 1, 16), torch.randn(1, 4, 8, 8)
    out = edm.sample_svd(bb, img, num_frames=4, steps=6, max_cfg=1.0, seed=3, image_embeds=emb, image_latent=lat)
    sch = EulerDiscreteScheduler(prediction_type="v_prediction", use_karras_sigmas=True, sigma_min=0.002,
                                 sigma_max=700.0, timestep_type="continuous", timestep_spacing="leading",
                                 steps_offset=1, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    sch.set_timesteps(6)
    x = torch.randn(1, 4, 4, 8, 8, generator=torch.Generator().manual_seed(3)) * sch.init_noise_sigma
    cond = lat[:, None].expand(1, 4, 4, 8, 8)
    for t in sch.timesteps:
        inp = torch.cat([sch.scale_model_input(x, t), cond], dim=2)
        x = sch.step(fake(None, inp, t, None, None), t, x).prev_sample
    torch.testing.assert_close(out, x, rtol=1e-4, atol=1e-4)


def test_cfg_batching_and_uncond(bb, monkeypatch):
    calls = []
    real = edm.model_forward
    br = interdyn.new_branch(bb.denoiser)
    branch_fwd = br.module.forward

    def branch_spy(sample, timestep, ehs, tids, control, conditioning_scale=1.0):
        calls[-1].update(control=control.clone(), weight=conditioning_scale, branch=True)
        return branch_fwd(sample, timestep, ehs, tids, control, conditioning_scale=conditioning_scale)

    def spy(bb_, inp, c_noise, emb, tids, attachments=(), rows=None, step=None):
        calls.append(dict(inp=inp.clone(), emb=emb.clone(), tids=tids.clone(), control=None, branch=False,
                          weight=None))
        return real(bb_, inp, c_noise, emb, tids, attachments=attachments, rows=rows, step=step)

    monkeypatch.setattr(edm, "model_forward", spy)
    monkeypatch.setattr(br.module, "forward", branch_spy)
    ctrl = ControlSignal(torch.rand(4, 64, 64, 3) * 2 - 1, "hand_mask", weight=0.5, start=0.0, end=0.5)
    img = torch.rand(1, 64, 64, 3)
    edm.sample_svd(bb, img, control=ctrl, branch=br, num_frames=4, steps=4, seed=0)
    assert len(calls) == 4
    c = calls[0]
    assert c["inp"].shape == (2, 4, 8, 8, 8)
    assert float(c["emb"][0].abs().max()) == 0 and float(c["emb"][1].abs().max()) > 0  # uncond: zero embedding
    assert float(c["inp"][0, :, 4:].abs().max()) == 0 and float(c["inp"][1, :, 4:].abs().max()) > 0
    assert c["tids"].tolist() == [[6.0, 40.0, pytest.approx(0.02)]] * 2
    assert torch.equal(c["control"][0], c["control"][1])  # control kept in both halves
    assert c["weight"] == 0.5
    # step range [0, 0.5): steps 0,1 with the branch, 2,3 without
    assert [x["branch"] for x in calls] == [True, True, False, False]
    calls.clear()
    edm.sample_svd(bb, img, control=ctrl, branch=br, num_frames=4, steps=1, max_cfg=1.0, seed=0)
    assert calls[0]["inp"].shape[0] == 1 and calls[0]["control"].shape[0] == 1  # CFG off: no doubling


def test_seed_reproducible_and_zero_branch(bb):
    img = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    a = edm.sample_svd(bb, img, num_frames=4, steps=2, seed=11)
    b = edm.sample_svd(bb, img, num_frames=4, steps=2, seed=11)
    c = edm.sample_svd(bb, img, num_frames=4, steps=2, seed=12)
    assert torch.equal(a, b) and not torch.equal(a, c)
    br = interdyn.new_branch(bb.denoiser)
    d = edm.sample_svd(bb, img, control=torch.rand(4, 64, 64, 3) * 2 - 1, branch=br, num_frames=4, steps=2, seed=11)
    torch.testing.assert_close(d, a, rtol=0, atol=1e-5)  # zero-init branch == bare SVD


def test_control_rejected_with_named_input(bb):
    br = interdyn.new_branch(bb.denoiser)
    img = torch.rand(1, 64, 64, 3)
    with pytest.raises(ValueError, match="'control' has 5 frames but num_frames is 4"):
        edm.sample_svd(bb, img, control=torch.zeros(5, 64, 64, 3), branch=br, num_frames=4, steps=1)
    with pytest.raises(ValueError, match="'control' must have 3 channels; got 1"):
        edm.sample_svd(bb, img, control=torch.zeros(4, 64, 64, 1), branch=br, num_frames=4, steps=1)
    with pytest.raises(ValueError, match="'control' is 32x64 but the image is 64x64"):
        edm.sample_svd(bb, img, control=torch.zeros(4, 32, 64, 3), branch=br, num_frames=4, steps=1)
