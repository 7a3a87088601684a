"""SVD backbone: diffusers-folder loading, encoders, decode in chunks, input checks."""
import pytest
import torch

from interplay.models.backbones import svd


@pytest.fixture(scope="module")
def bb():
    return svd.random_backbone("tiny", seed=0)


@pytest.fixture(scope="module")
def folder(bb, tmp_path_factory):
    return svd.save_diffusers_folder(bb, tmp_path_factory.mktemp("svd") / "tiny_svd")


def test_load_diffusers_folder_identity(bb, folder):
    got = svd.load_svd(folder, dtype=torch.float32, device="cpu")
    assert got.family == "svd" and got.variant == "tiny" and got.source["kind"] == "diffusers"
    for a, b in ((bb.denoiser, got.denoiser), (bb.vae, got.vae), (bb.image_encoder, got.image_encoder)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not any(p.requires_grad for p in got.denoiser.parameters())
    assert got.scheduler_config["prediction_type"] == "v_prediction" and got.scheduler_config["sigma_max"] == 700.0
    assert got.extra["vae_scale_factor"] == 8 and got.extra["clip_size"] == 32
    img = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(svd.encode_image_embeds(got, img), svd.encode_image_embeds(bb, img))


def test_load_bf16_keeps_vae_fp32(folder):
    got = svd.load_svd(folder, dtype="bf16", device="cpu")
    assert next(got.denoiser.parameters()).dtype == torch.bfloat16
    assert next(got.vae.parameters()).dtype == torch.float32  # force_upcast
    emb = svd.encode_image_embeds(got, torch.rand(1, 64, 64, 3))
    assert emb.shape == (1, 1, 16) and emb.dtype == torch.bfloat16


def test_offload_model_moves_back(folder):
    got = svd.load_svd(folder, dtype=torch.float32, device="cpu", offload="model")
    assert got.offload == "model"
    lat = svd.encode_image_latent(got, torch.rand(1, 64, 64, 3), noise_aug=0.0)
    assert lat.shape == (1, 4, 8, 8)


def test_missing_parts_named(tmp_path):
    (tmp_path / "unet").mkdir()
    with pytest.raises(FileNotFoundError, match="lacks vae, image_encoder"):
        svd.load_svd(tmp_path, device="cpu")
    with pytest.raises(FileNotFoundError, match="neither a diffusers folder nor a checkpoint"):
        svd.load_svd(tmp_path / "nope", device="cpu")


def test_image_latent_is_vae_mode_unscaled(bb):
    img = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(1))
    lat = svd.encode_image_latent(bb, img, noise_aug=0.0)
    ref = bb.vae.encode(img.permute(0, 3, 1, 2) * 2 - 1).latent_dist.mode()
    torch.testing.assert_close(lat, ref)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a = svd.encode_image_latent(bb, img, noise_aug=0.02, generator=g1)
    x = img.permute(0, 3, 1, 2) * 2 - 1 + 0.02 * torch.randn(1, 3, 64, 64, generator=g2)
    torch.testing.assert_close(a, bb.vae.encode(x).latent_dist.mode())


def test_decode_chunks(bb):
    z = torch.randn(1, 4, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    full = svd.decode_latents(bb, z, chunk=4)
    ref = bb.vae.decode(z[0] / bb.vae.config.scaling_factor, num_frames=4).sample
    torch.testing.assert_close(full[0], ((ref + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1))
    parts = svd.decode_latents(bb, z, chunk=2)
    assert parts.shape == (1, 4, 64, 64, 3) and parts.dtype == torch.float32
    torch.testing.assert_close(parts[0, :2], svd.decode_latents(bb, z[:, :2], chunk=2)[0])


def test_check_frames_message(bb):
    with pytest.raises(ValueError, match="multiples of 64; got 60x64"):
        svd.check_frames(bb, 4, 60, 64)
    svd.check_frames(bb, 4, 64, 128)
    assert svd.added_time_ids(6, 40, 0.02, 2).tolist() == [[6.0, 40.0, pytest.approx(0.02)]] * 2


# ------------------------------------------------------------------------------- single-file checkpoints
from interplay.models.backbones import svd_convert  # noqa: E402


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def single_file(bb, tmp_path_factory):
    return svd_convert.save_single_file(bb, tmp_path_factory.mktemp("ckpt") / "checkpoints" / "svd.safetensors")


def test_single_file_layout_names(single_file):
    from safetensors import safe_open
    with safe_open(str(single_file), "pt") as f:
        keys = set(f.keys())
    for k in ("model.diffusion_model.input_blocks.0.0.weight", "model.diffusion_model.time_embed.0.weight",
              "model.diffusion_model.label_emb.0.2.bias", "model.diffusion_model.input_blocks.3.0.op.weight",
              "model.diffusion_model.input_blocks.1.0.time_stack.in_layers.2.weight",
              "model.diffusion_model.input_blocks.1.1.time_stack.0.ff_in.net.0.proj.weight",
              "model.diffusion_model.middle_block.2.time_mixer.mix_factor",
              "model.diffusion_model.output_blocks.2.1.conv.weight", "model.diffusion_model.output_blocks.5.2.conv.weight",
              "model.diffusion_model.out.2.weight", "first_stage_model.encoder.down.0.block.0.conv1.weight",
              "first_stage_model.decoder.up.3.block.0.time_stack.in_layers.2.weight",
              "first_stage_model.decoder.conv_out.time_mix_conv.weight", "first_stage_model.decoder.mid.attn_1.q.weight",
              "conditioner.embedders.0.open_clip.model.visual.transformer.resblocks.0.attn.in_proj_weight",
              "conditioner.embedders.0.open_clip.model.visual.proj"):
        assert k in keys, k


def test_single_file_loads_identical(bb, single_file):
    got = svd.load_svd(single_file, dtype=torch.float32, device="cpu")
    assert got.source["kind"] == "single_file"
    assert _same_weights(bb.denoiser, got.denoiser) and _same_weights(bb.vae, got.vae)
    assert _same_weights(bb.image_encoder, got.image_encoder)
    from interplay.models.sampling import edm
    img = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(4))
    a = edm.sample_svd(bb, img, num_frames=4, steps=2, seed=1)
    b = edm.sample_svd(got, img, num_frames=4, steps=2, seed=1)
    assert torch.equal(a, b)


def test_single_file_clip_vision_separate(bb, tmp_path):
    ckpt = svd_convert.save_single_file(bb, tmp_path / "svd_noclip.safetensors", include_clip=False)
    with pytest.raises(ValueError, match="holds no CLIP image encoder; pick a clip_vision file"):
        svd.load_svd(ckpt, device="cpu")
    hf = svd_convert.save_clip_vision_file(bb, tmp_path / "clip_vision_h.safetensors")
    got = svd.load_svd(ckpt, dtype=torch.float32, device="cpu", clip_vision=hf)
    assert _same_weights(bb.image_encoder, got.image_encoder)


def test_single_file_rejects_other_layouts(tmp_path):
    from safetensors.torch import save_file
    p = tmp_path / "unet.safetensors"
    save_file({"conv_in.weight": torch.zeros(1)}, str(p))
    with pytest.raises(ValueError, match="not an original-layout SVD checkpoint"):
        svd.load_svd(p, device="cpu")


def test_kit_folder_and_kit_clip_vision_file(tiny_svd, tiny_svd_files, tmp_path):
    """The shared kit's tiny SVD: loaded as a folder, exported to the original layout without CLIP, and
    loaded back with the kit's HF-layout clip_vision file (no config metadata: inferred from shapes)."""
    a = svd.load_svd(tiny_svd, dtype=torch.float32, device="cpu")
    assert a.extra["clip_size"] == 224
    ckpt = svd_convert.save_single_file(a, tmp_path / "svd.safetensors", include_clip=False)
    b = svd.load_svd(ckpt, dtype=torch.float32, device="cpu", clip_vision=tiny_svd_files["clip_vision"])
    assert _same_weights(a.denoiser, b.denoiser) and _same_weights(a.image_encoder, b.image_encoder)
    img = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(svd.encode_image_embeds(a, img), svd.encode_image_embeds(b, img))


def _diffusers_defaults(cls) -> dict:
    import inspect

    return {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items() if k != "self"}


def _norm(v):
    return list(v) if isinstance(v, (list, tuple)) else v


def test_full_unet_config_is_the_released_layout():
    # The real-size UNet (on the meta device: no memory) against diffusers' UNetSpatioTemporalConditionModel
    # defaults, which are SVD's layout; only sample_size (96 = 768 px / 8) and num_frames (the 14-frame model)
    # are set by the release itself.
    from diffusers import UNetSpatioTemporalConditionModel

    with torch.device("meta"):
        unet = UNetSpatioTemporalConditionModel(**svd.SVD_UNET_CONFIG)
    release = {"sample_size": 96, "num_frames": 14}
    for field, default in _diffusers_defaults(UNetSpatioTemporalConditionModel).items():
        assert _norm(unet.config[field]) == _norm(release.get(field, default)), field
    assert tuple(unet.config.num_attention_heads) == (5, 10, 20, 20)
    # every attention of the built model has 64-channel heads
    attns = [m for m in unet.modules() if type(m).__name__ == "Attention"]
    assert attns and {m.inner_dim // m.heads for m in attns} == {64}
    assert {m.heads for m in attns} == {5, 10, 20}
