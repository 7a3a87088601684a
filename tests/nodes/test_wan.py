"""Wan Loader node: single files and diffusers folders from a models root, the variant in its text, refusals."""
import pytest
import torch

from interplay.models import runtime
from interplay.nodes import wan as nd


def _load(**kw):
    args = dict(model=nd.SINGLE_FILES, transformer="tiny_wan2.2_i2v_high_noise_14B.safetensors",
                transformer_2="tiny_wan2.2_i2v_low_noise_14B.safetensors", vae="tiny_wan_2.1_vae.safetensors",
                text_encoder="tiny_umt5_xxl.safetensors", clip_vision=nd.NONE, weight_dtype="fp32", offload="none",
                gpu_budget_gb=0.0, vae_tiling=True, boundary=0.0)
    args.update(kw)
    return nd.InterplayWanLoader().load(**args)


def test_loads_single_files_and_folders_and_names_the_variant(tiny_models_root):
    runtime.set_models_root(tiny_models_root)
    spec = nd.InterplayWanLoader.INPUT_TYPES()["required"]
    assert {"diffusers/tiny_wan", "diffusers/tiny_wan21", "diffusers/tiny_wan22_ti2v"} <= set(spec["model"][0])
    assert "diffusers/tiny_cogvideox" not in spec["model"][0] and spec["model"][0][-1] == nd.SINGLE_FILES
    out = _load()
    bb = out["result"][0]
    assert bb.family == "wan" and bb.variant == "wan2.2-i2v-a14b-d32x2" and set(bb.experts) == {"low_noise"}
    assert bb.extra["boundary"] == 0.9 and bb.vae_tiling and bb.vae.use_tiling
    assert "wan2.2-i2v-a14b" in out["ui"]["text"][0] and "t >= 900" in out["ui"]["text"][0]
    assert _load(boundary=0.85)["result"][0].extra["boundary"] == 0.85
    blocks = _load(offload="blocks", gpu_budget_gb=1.0)["result"][0]
    assert blocks.extra["memory"]["offload"] == "blocks" and blocks.extra["memory"]["blocks_on_gpu"] is not None
    i2v = _load(model="diffusers/tiny_wan21")["result"][0]
    assert i2v.variant == "wan2.1-i2v-d32x2" and i2v.extra["clip"] and i2v.image_encoder is not None
    files21 = _load(transformer="tiny_wan2.1_i2v_480p_14B_fp8_e4m3fn_scaled.safetensors", transformer_2=nd.NONE,
                    clip_vision="tiny_clip_vision_h.safetensors", weight_dtype="auto")["result"][0]
    assert files21.denoiser.blocks[0].attn1.to_q.weight.dtype == torch.float8_e4m3fn
    assert "fp8_e4m3fn weights" in files21.describe()


def test_refuses_other_models_and_missing_parts_by_name(tiny_models_root):
    runtime.set_models_root(tiny_models_root)
    with pytest.raises(ValueError, match="looks like a CogVideoX transformer"):
        _load(transformer="tiny_cogvideox_transformer.safetensors", transformer_2=nd.NONE)
    with pytest.raises(ValueError, match="looks like a Stable Video Diffusion checkpoint"):
        _refuse_svd(tiny_models_root)
    with pytest.raises(ValueError, match="Wan Loader: single-files mode needs vae"):
        _load(vae=nd.NONE)
    with pytest.raises(ValueError, match="'offload' must be one of"):
        _load(offload="disk")


def _refuse_svd(root):
    """The kit keeps the SVD checkpoint in checkpoints/: hand it to the loader as a transformer file."""
    from interplay.models.backbones import wan

    src = dict(transformer=root / "checkpoints" / "tiny_svd.safetensors",
               vae=root / "vae" / "tiny_wan_2.1_vae.safetensors",
               text_encoder=root / "text_encoders" / "tiny_umt5_xxl.safetensors")
    wan.load_wan(src, device="cpu")


# ------------------------------------------------------------------------------------------ sampler
SAMPLER = dict(prompt="a red box slides right", negative="", width=32, height=32, num_frames=5, steps=3, cfg=3.5,
               cfg_low_noise=2.0, shift=0.0, scheduler="unipc", boundary=0.0, seed=5, decode=True)


@pytest.fixture(scope="module")
def wan_bb(tiny_wan):
    from interplay.models.backbones import wan

    return wan.load_wan(tiny_wan, dtype="fp32", device="cpu")


def test_sampler_widgets_are_the_release_defaults():
    spec = nd.InterplayWanSampler.INPUT_TYPES()
    req, opt = spec["required"], spec["optional"]
    got = {k: req[k][1]["default"] for k in ("width", "height", "num_frames", "steps", "cfg", "scheduler")}
    assert got == dict(width=832, height=480, num_frames=81, steps=40, cfg=3.5, scheduler="unipc")
    assert {"image", "control", "branch", "controls"} <= set(opt)
    assert all("tooltip" in v[1] for v in list(req.values()) + list(opt.values()))
    assert nd.InterplayWanSampler.DESCRIPTION and nd.NODE_DISPLAY_NAME_MAPPINGS["InterplayWanSampler"] \
        == "Wan Sampler (Interplay)"


def test_sampler_node_is_the_engine_and_its_latent_is_the_vaes(wan_bb):
    from interplay.models.backbones import wan
    from interplay.models.sampling.wan import sample_wan

    img = torch.rand(1, 40, 48, 3, generator=torch.Generator().manual_seed(2))  # fitted to 32x32 like the engine's
    frames, latent = nd.InterplayWanSampler().sample(wan_bb, image=img, **SAMPLER)
    from interplay.models.video_io import fit_frames

    pos, neg = wan.encode_prompt(wan_bb, [SAMPLER["prompt"]]), wan.encode_prompt(wan_bb, [""])
    lat = sample_wan(wan_bb, fit_frames(img, 32, 32), pos, neg, num_frames=5, steps=3, cfg=3.5, cfg_low_noise=2.0,
                     seed=5)
    assert latent["interplay_family"] == "wan" and latent["samples"].shape == (1, 16, 2, 4, 4)
    mean = torch.tensor(wan.WAN21_LATENTS_MEAN).view(1, 16, 1, 1, 1)
    std = torch.tensor(wan.WAN21_LATENTS_STD).view(1, 16, 1, 1, 1)
    assert torch.equal(latent["samples"], lat / (1.0 / std) + mean)  # the VAE's space, as ComfyUI keeps Wan latents
    with torch.no_grad():
        ref = (wan_bb.vae.decode(latent["samples"]).sample / 2 + 0.5).clamp(0, 1)[0].permute(1, 2, 3, 0)
    assert frames.shape == (5, 32, 32, 3) and torch.equal(frames, ref)
    off = nd.InterplayWanSampler().sample(wan_bb, image=img, **(SAMPLER | dict(decode=False)))
    assert off[0].shape == (1, 32, 32, 3) and torch.equal(off[1]["samples"], latent["samples"])


def test_sampler_errors_name_the_input(wan_bb):
    s = nd.InterplayWanSampler()
    img = torch.rand(1, 32, 32, 3)
    with pytest.raises(ValueError, match="Wan Sampler: wan2.2-i2v-a14b-d32x2 generates from an image; connect 'image'"):
        s.sample(wan_bb, **SAMPLER)
    with pytest.raises(ValueError, match=r"Wan Sampler: 'num_frames' must be 4k\+1 .*got 6. Use 5"):
        s.sample(wan_bb, image=img, **(SAMPLER | dict(num_frames=6)))
    with pytest.raises(ValueError, match="Wan Sampler: 'height' and 'width' must be multiples of 16"):
        s.sample(wan_bb, image=img, **(SAMPLER | dict(width=40)))
    with pytest.raises(ValueError, match="Wan Sampler: 'prompt' is empty"):
        s.sample(wan_bb, image=img, **(SAMPLER | dict(prompt=" ")))
    with pytest.raises(ValueError, match="Wan Sampler: 'backbone' is cogvideox"):
        s.sample(wan_bb.replace(family="cogvideox"), image=img, **SAMPLER)
