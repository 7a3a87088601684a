"""CogVideoX sampling: model_forward == transformer, bit-exact parity with the diffusers I2V pipeline (DDIM/DPM,
dynamic CFG, no-CFG), seeds, control weight and step range, interrupt, input errors."""
import pytest
import torch

from interplay.models import runtime
from interplay.models.backbones import cogvideox as cog
from interplay.models.control import kinemask as km
from interplay.models.control.base import ControlSignal
from interplay.models.sampling import cogvideox as S


@pytest.fixture(scope="module")
def bb(tiny_cogvideox):
    return cog.load_cogvideox(tiny_cogvideox, dtype=torch.float32, device="cpu")


@pytest.fixture(scope="module")
def embeds(bb):
    return cog.encode_prompt(bb, ["a red cube slides right"]), cog.encode_prompt(bb, [""])


@pytest.fixture(scope="module")
def image():
    return torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(5))


@pytest.fixture(scope="module")
def pipe(bb):
    from diffusers import CogVideoXDDIMScheduler, CogVideoXImageToVideoPipeline

    return CogVideoXImageToVideoPipeline(tokenizer=bb.tokenizer, text_encoder=bb.text_encoder, vae=bb.vae,
                                         transformer=bb.denoiser,
                                         scheduler=CogVideoXDDIMScheduler(**bb.scheduler_config))


def _random_branch(bb, seed=1):
    br = km.new_branch(bb.denoiser, num_layers=1, downscale=4)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for lin in br.module.out_projs:
            lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) * 0.5)
    br.module.requires_grad_(False)
    return br


def _control(value=0.9):
    v = torch.zeros(9, 32, 32, 3)
    v[0, 8:20, 8:20, 0] = value
    return ControlSignal(video=v, kind="velocity", weight=0.5)


def test_model_forward_equals_transformer(bb):
    g = torch.Generator().manual_seed(0)
    x, e = torch.randn(2, 3, 8, 8, 8, generator=g), torch.randn(2, 9, 32, generator=g)
    t = torch.tensor([999, 10])
    rot = cog.rotary_embeddings(bb.denoiser.config, 3, 8, 8)
    with torch.no_grad():
        ref = bb.denoiser(x, e, t, image_rotary_emb=rot).sample
        assert torch.equal(cog.forward(bb, x, t, e), ref)
        assert torch.equal(cog.forward(bb, x, t, e, image_rotary_emb=rot), ref)


@pytest.mark.parametrize("kind,dyn", [("ddim", False), ("ddim", True), ("dpm", False)])
def test_parity_with_diffusers_pipeline(bb, embeds, image, pipe, kind, dyn):
    from diffusers import CogVideoXDDIMScheduler, CogVideoXDPMScheduler

    cls = CogVideoXDDIMScheduler if kind == "ddim" else CogVideoXDPMScheduler
    pipe.scheduler = cls(**bb.scheduler_config)
    pos, neg = embeds
    ref = pipe(image=image.permute(0, 3, 1, 2), prompt_embeds=pos, negative_prompt_embeds=neg, height=32, width=32,
               num_frames=9, num_inference_steps=3, guidance_scale=6.0, use_dynamic_cfg=dyn,
               generator=torch.Generator().manual_seed(3), output_type="latent").frames
    got = S.sample_cogvideox(bb, image, pos, neg, num_frames=9, steps=3, cfg=6.0, dynamic_cfg=dyn, seed=3,
                             scheduler=kind)
    assert got.shape == (1, 3, 4, 8, 8)
    assert torch.equal(got, ref)


def test_cfg_one_is_the_single_forward_path(bb, embeds, image, pipe):
    from diffusers import CogVideoXDDIMScheduler

    pipe.scheduler = CogVideoXDDIMScheduler(**bb.scheduler_config)
    pos, _ = embeds
    ref = pipe(image=image.permute(0, 3, 1, 2), prompt_embeds=pos, height=32, width=32, num_frames=9,
               num_inference_steps=2, guidance_scale=1.0, generator=torch.Generator().manual_seed(4),
               output_type="latent").frames
    got = S.sample_cogvideox(bb, image, pos, None, num_frames=9, steps=2, cfg=1.0, seed=4)
    assert torch.equal(got, ref)


def test_seed_reproducible(bb, embeds, image):
    pos, neg = embeds
    a = S.sample_cogvideox(bb, image, pos, neg, num_frames=9, steps=2, seed=7)
    b = S.sample_cogvideox(bb, image, pos, neg, num_frames=9, steps=2, seed=7)
    c = S.sample_cogvideox(bb, image, pos, neg, num_frames=9, steps=2, seed=8)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_dynamic_guidance_hand_value():
    # steps 50, t 25: ((50-25)/50)^5 = 1/32; 1 + 6 * (1 - cos(pi/32)) / 2
    assert S.dynamic_guidance(6.0, 25, 50) == pytest.approx(1.0144458, abs=1e-6)
    assert S.dynamic_guidance(6.0, 50, 50) == 1.0


def test_control_weight_and_step_range(bb, embeds, image):
    pos, neg = embeds
    kw = dict(num_frames=9, steps=3, seed=2)
    bare = S.sample_cogvideox(bb, image, pos, neg, **kw)
    br = _random_branch(bb)
    on = S.sample_cogvideox(bb, image, pos, neg, controls=[_control()], branch=br, **kw)
    assert (on - bare).abs().max() > 1e-3
    zero_w = S.sample_cogvideox(bb, image, pos, neg, controls=[_control().replace(weight=0.0)], branch=br, **kw)
    assert torch.equal(zero_w, bare)
    # steps at fractions 0, 1/3, 2/3: a range [0.9, 1) is never active
    late = S.sample_cogvideox(bb, image, pos, neg, controls=[_control().replace(start=0.9)], branch=br, **kw)
    assert torch.equal(late, bare)
    # zero-init (untrained) branch == no control
    fresh = km.new_branch(bb.denoiser, num_layers=1, downscale=4)
    assert torch.equal(S.sample_cogvideox(bb, image, pos, neg, controls=[_control()], branch=fresh, **kw), bare)
    # only the last step controlled differs from both
    last = S.sample_cogvideox(bb, image, pos, neg, controls=[_control().replace(start=0.6)], branch=br, **kw)
    assert not torch.equal(last, bare) and not torch.equal(last, on)


def test_control_guidance_extrapolates_from_the_zeroed_control(bb, embeds, image):
    # one DDIM step (eta 0) is affine in the model output, so the guided result is the same combination of the
    # separately sampled results: cond + (g_c - 1)(cond - zeroed control), plus text CFG on top
    pos, neg = embeds
    br = _random_branch(bb)
    with torch.no_grad():  # a new branch reads nothing of the control until trained: give it a control filter
        w = br.module.patch_embed.proj.weight
        w[:, 4:] = torch.randn(w[:, 4:].shape, generator=torch.Generator().manual_seed(4)) * 0.5
    kw = dict(num_frames=9, steps=1, seed=3, branch=br)
    zeroed = _control(0.0)
    cond = S.sample_cogvideox(bb, image, pos, neg, controls=[_control()], cfg=1.0, **kw)
    free = S.sample_cogvideox(bb, image, pos, neg, controls=[zeroed], cfg=1.0, **kw)
    assert (cond - free).abs().max() > 1e-3
    guided = S.sample_cogvideox(bb, image, pos, neg, controls=[_control()], cfg=1.0, control_cfg=3.0, **kw)
    torch.testing.assert_close(guided, cond + 2.0 * (cond - free), rtol=1e-4, atol=1e-4)
    text = S.sample_cogvideox(bb, image, pos, neg, controls=[_control()], cfg=2.0, **kw)
    both = S.sample_cogvideox(bb, image, pos, neg, controls=[_control()], cfg=2.0, control_cfg=3.0, **kw)
    torch.testing.assert_close(both, text + 2.0 * (cond - free), rtol=1e-4, atol=1e-4)
    # steps where no control runs skip the zeroed row: a control never active gives the plain result
    never = _control().replace(start=0.9)
    plain = S.sample_cogvideox(bb, image, pos, neg, cfg=2.0, num_frames=9, steps=3, seed=3)
    assert torch.equal(S.sample_cogvideox(bb, image, pos, neg, controls=[never], cfg=2.0, control_cfg=3.0,
                                          num_frames=9, steps=3, seed=3, branch=br), plain)
    # a zero-initialised branch gives the same output with or without guidance (cond == zeroed control)
    fresh = km.new_branch(bb.denoiser, num_layers=1, downscale=4)
    bare = S.sample_cogvideox(bb, image, pos, neg, cfg=1.0, num_frames=9, steps=2, seed=3)
    torch.testing.assert_close(S.sample_cogvideox(bb, image, pos, neg, controls=[_control()], branch=fresh, cfg=1.0,
                                                  num_frames=9, steps=2, seed=3, control_cfg=4.0), bare)


def test_two_controls_sum(bb, embeds, image):
    pos, neg = embeds
    br = _random_branch(bb)
    kw = dict(num_frames=9, steps=2, seed=2, branch=br)
    one = S.sample_cogvideox(bb, image, pos, neg, controls=[_control().replace(weight=1.0)], **kw)
    two = S.sample_cogvideox(bb, image, pos, neg, controls=[_control(), _control()], **kw)
    torch.testing.assert_close(one, two, rtol=1e-5, atol=1e-5)


def test_input_errors(bb, embeds, image):
    pos, neg = embeds
    with pytest.raises(ValueError, match=r"num_frames must be one of \[1, 9, 17.*got 13"):
        S.sample_cogvideox(bb, image, pos, neg, num_frames=13, steps=1)
    with pytest.raises(ValueError, match="no branch"):
        S.sample_cogvideox(bb, image, pos, neg, num_frames=9, steps=1, controls=[_control()])
    bad = ControlSignal(video=torch.zeros(17, 32, 32, 3), kind="velocity")
    with pytest.raises(ValueError, match="control is 17 frames of 32x32 but the generation is 9 frames"):
        S.sample_cogvideox(bb, image, pos, neg, num_frames=9, steps=1, controls=[bad], branch=_random_branch(bb))
    with pytest.raises(ValueError, match="scheduler must be one of"):
        S.sample_cogvideox(bb, image, pos, neg, num_frames=9, steps=1, scheduler="euler")
    br8 = km.new_branch(bb.denoiser, num_layers=1, downscale=8)
    with pytest.raises(ValueError, match="downscales by 8 but the VAE by 4"):
        S.sample_cogvideox(bb, image, pos, neg, num_frames=9, steps=1, controls=[_control()], branch=br8)


def test_interrupt(bb, embeds, image):
    pos, neg = embeds
    runtime.request_interrupt()
    with pytest.raises(runtime.Interrupted):
        S.sample_cogvideox(bb, image, pos, neg, num_frames=9, steps=2)


def test_model_forward_trains_branch_only(bb):
    """Gradients reach the branch through the frozen backbone (the trainer's path)."""
    br = _random_branch(bb).module.requires_grad_(True)
    g = torch.Generator().manual_seed(0)
    x, e = torch.randn(1, 3, 8, 8, 8, generator=g), torch.randn(1, 5, 32, generator=g)
    att = km.KineMaskAttachment(br, [(torch.rand(1, 9, 3, 32, 32), 0.5, 0.0, 1.0)], reuse=False)
    out = cog.forward(bb, x, torch.tensor([400]), e, attachments=[att])
    out.square().mean().backward()
    assert br.out_projs[0].weight.grad is not None and br.out_projs[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in bb.denoiser.parameters())


def test_fp8_linear_cpu_fallback_and_swap_count(bb):
    lin = torch.nn.Linear(32, 48)
    q = S.FP8Linear(lin)
    x = torch.randn(3, 5, 32, generator=torch.Generator().manual_seed(0))
    ref = lin(x)
    out = q(x)
    assert out.shape == ref.shape and q.weight_fp8.dtype == torch.float8_e4m3fn
    assert ((out - ref).norm() / ref.norm()).item() < 0.05
    import copy

    blocks = copy.deepcopy(bb.denoiser.transformer_blocks)
    assert S.enable_fp8_linears(blocks) == 2 * 6  # q, k, v, out, ff up, ff down per block
    assert isinstance(blocks[0].norm1.linear, torch.nn.Linear)  # adaLN stays
