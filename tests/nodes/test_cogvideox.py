"""CogVideoX/KineMask nodes: loaders from model folders, the prompt template, the sampler (seeds, cfg=1, control
weight 0, input errors), decode, the image/control fit."""
import pytest
import torch

from interplay.models import runtime
from interplay.models.backbones import cogvideox as cog
from interplay.models.control import kinemask as km
from interplay.models.control.base import ControlSignal
from interplay.models.sampling.cogvideox import sample_cogvideox
from interplay.nodes import cogvideox as nd
from interplay.nodes import kinemask as kn


@pytest.fixture(scope="module")
def root(tiny_cogvideox, tiny_cogvideox_files, tmp_path_factory):
    r = tmp_path_factory.mktemp("models")
    for kind in ("diffusers", "diffusion_models", "vae", "text_encoders", "controlnet", "interplay"):
        (r / kind).mkdir()
    from kit.tiny import _link_or_copy  # hard links: a symlink out of the folder is refused by the path rule

    _link_or_copy(tiny_cogvideox, r / "diffusers" / "tiny_cogvideox")
    for role in ("transformer", "vae", "text_encoder", "tokenizer"):
        p = tiny_cogvideox_files[role]
        _link_or_copy(p, r / p.parent.name / p.name)
    return r


@pytest.fixture(scope="module")
def bb(tiny_cogvideox):
    return cog.load_cogvideox(tiny_cogvideox, dtype=torch.float32, device="cpu")


def _sampler(bb, **kw):
    args = dict(backbone=bb, image=torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(0)),
                prompt="a red cube slides right", negative="", width=32, height=32, num_frames=9, steps=2, cfg=6.0,
                dynamic_cfg=False, scheduler="ddim", seed=3, decode=True)
    args.update(kw)
    return nd.InterplayCogVideoXSampler().sample(**args)


def _control(value=0.9, frames=9, size=32):
    v = torch.zeros(frames, size, size, 3)
    v[0, 8:20, 8:20, 0] = value
    return ControlSignal(video=v, kind="velocity")


def _trained_branch(bb):
    br = km.new_branch(bb.denoiser, num_layers=1, downscale=4)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for lin in br.module.out_projs:
            lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) * 0.5)
    br.module.requires_grad_(False)
    return br


def test_loader_folder_and_single_files(root, bb):
    runtime.set_models_root(root)
    req = nd.InterplayCogVideoXLoader.INPUT_TYPES()["required"]
    assert req["model"][0] == ["diffusers/tiny_cogvideox", nd.SINGLE_FILES]
    assert "tiny_cogvideox_transformer.safetensors" in req["transformer"][0]
    (a,) = nd.InterplayCogVideoXLoader().load("diffusers/tiny_cogvideox", nd.NONE, nd.NONE, nd.NONE, "fp32", "none",
                                              True)
    assert a.vae_tiling and a.dtype == torch.float32
    (b,) = nd.InterplayCogVideoXLoader().load(nd.SINGLE_FILES, "tiny_cogvideox_transformer.safetensors",
                                              "tiny_cogvideox_vae.safetensors", "tiny_t5.safetensors", "fp32",
                                              "model", False)
    assert b.offload == "model" and b.source["kind"] == "single_files"
    sa, sb = a.denoiser.state_dict(), b.denoiser.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    with pytest.raises(ValueError, match="single-files mode needs vae, text_encoder"):
        nd.InterplayCogVideoXLoader().load(nd.SINGLE_FILES, "tiny_cogvideox_transformer.safetensors", nd.NONE,
                                           nd.NONE, "fp32", "none", False)


def test_branch_loader_new_and_saved(root, bb):
    runtime.set_models_root(root)
    with pytest.raises(ValueError, match="connect 'backbone'"):
        kn.InterplayKineMaskBranchLoader().load(kn.NEW_BRANCH, 1)
    (new,) = kn.InterplayKineMaskBranchLoader().load(kn.NEW_BRANCH, 2, backbone=bb)
    assert new.kind == "kinemask" and new.module.config.downscale_coef == 4 and new.module.config.num_layers == 2
    with pytest.raises(ValueError, match="'num_layers' 3 exceeds the backbone's 2 blocks"):
        kn.InterplayKineMaskBranchLoader().load(kn.NEW_BRANCH, 3, backbone=bb)
    trained = _trained_branch(bb)
    km.save_branch(trained, root / "interplay" / "kinemask_tiny.safetensors")
    assert "interplay/kinemask_tiny.safetensors" in kn.InterplayKineMaskBranchLoader.INPUT_TYPES()["required"][
        "branch"][0]
    (got,) = kn.InterplayKineMaskBranchLoader().load("interplay/kinemask_tiny.safetensors", 8, backbone=bb)
    sa, sb = trained.module.state_dict(), got.module.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_interaction_prompt_template():
    (p,) = kn.InterplayInteractionPrompt().build("interaction", "the red cube", "a wooden floor", "right", 0.0,
                                                 "collides", "")
    assert p == ("On a wooden floor there is the red cube. The red cube moves to the right. It collides with the "
                 "objects in its path, which are pushed and then come to rest.")
    (p,) = kn.InterplayInteractionPrompt().build("simple motion", "a blue cylinder", "grass", "left", 1.2, "none",
                                                 "Shadows stay sharp.")
    assert p == "A blue cylinder on grass moves to the left at 1.2 m/s. Shadows stay sharp."
    (p,) = kn.InterplayInteractionPrompt().build("c0 (ablation)", "x", "y", "z", 0, "none", "")
    assert p == "An object moving on a surface"
    with pytest.raises(ValueError, match="prompt is empty"):
        kn.InterplayInteractionPrompt().build("free text", "x", "y", "z", 0, "none", "  ")


def test_sampler_seed_and_values(bb):
    frames, latent = _sampler(bb)
    again, _ = _sampler(bb)
    other, _ = _sampler(bb, seed=4)
    assert frames.shape == (9, 32, 32, 3) and frames.dtype == torch.float32 and 0 <= frames.min() <= frames.max() <= 1
    assert torch.equal(frames, again) and not torch.equal(frames, other)
    assert latent["samples"].shape == (1, 4, 3, 8, 8)
    (dec,) = nd.InterplayCogVideoXDecode().decode(bb, latent)
    assert torch.equal(dec, frames)


def test_sampler_cfg_one_equals_engine_single_forward(bb):
    img = torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(0))
    _, latent = _sampler(bb, image=img, cfg=1.0, decode=False)
    pos = cog.encode_prompt(bb, ["a red cube slides right"])
    ref = sample_cogvideox(bb, img, pos, None, num_frames=9, steps=2, cfg=1.0, seed=3)
    assert torch.equal(latent["samples"], ref.permute(0, 2, 1, 3, 4))


def test_sampler_control_weight_zero_equals_no_control(bb):
    br = _trained_branch(bb)
    _, bare = _sampler(bb, decode=False)
    _, zero = _sampler(bb, decode=False, control=_control(), branch=br, control_weight=0.0)
    _, on = _sampler(bb, decode=False, control=_control(), branch=br, control_weight=0.5)
    assert torch.equal(zero["samples"], bare["samples"])
    assert (on["samples"] - bare["samples"]).abs().max() > 1e-3


def test_sampler_control_guidance_reaches_the_engine(bb):
    br = _trained_branch(bb)
    with torch.no_grad():  # let the branch read the control (a new branch's control filter is zero)
        w = br.module.patch_embed.proj.weight
        w[:, 4:] = torch.randn(w[:, 4:].shape, generator=torch.Generator().manual_seed(2)) * 0.5
    img = torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(0))
    _, off = _sampler(bb, image=img, cfg=1.0, decode=False, control=_control(), branch=br)
    _, on = _sampler(bb, image=img, cfg=1.0, decode=False, control=_control(), branch=br, control_guidance=3.0)
    pos = cog.encode_prompt(bb, ["a red cube slides right"])
    ctrl = _control().replace(weight=0.5)
    ref = sample_cogvideox(bb, img, pos, None, num_frames=9, steps=2, cfg=1.0, seed=3, controls=[ctrl], branch=br,
                           control_cfg=3.0)
    assert torch.equal(on["samples"], ref.permute(0, 2, 1, 3, 4))
    assert (on["samples"] - off["samples"]).abs().max() > 1e-3


def test_sampler_input_errors(bb):
    with pytest.raises(ValueError, match=r"'num_frames' must be one of \[1, 9, 17.*got 12"):
        _sampler(bb, num_frames=12)
    with pytest.raises(ValueError, match="'control' is connected but 'branch' is not"):
        _sampler(bb, control=_control())
    with pytest.raises(ValueError, match="'control' has 17 frames but num_frames is 9"):
        _sampler(bb, control=_control(frames=17), branch=_trained_branch(bb))
    with pytest.raises(ValueError, match="'control' is a 'hand_mask' signal"):
        _sampler(bb, control=_control().replace(kind="hand_mask"), branch=_trained_branch(bb))
    with pytest.raises(ValueError, match="'prompt' is empty"):
        _sampler(bb, prompt=" ")


def test_fit_image_crops_center_and_keeps_control_aligned():
    from interplay.models.video_io import fit_frames

    img = torch.arange(4 * 8, dtype=torch.float32).view(1, 4, 8, 1).expand(1, 4, 8, 3)
    out = fit_frames(img, 4, 4)
    assert torch.equal(out, img[:, :, 2:6])
    big = fit_frames(torch.ones(2, 8, 16, 3), 16, 16)  # upscale to cover, then crop
    assert big.shape == (2, 16, 16, 3) and torch.allclose(big, torch.ones_like(big))
