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
