"""CogVideoX backbone: folder and single-file loading (inferred configs, sidecars, errors), encoders, frame rules,
the shared rotary embeddings."""
import json
import shutil

import pytest
import torch

from interplay.models.backbones import cogvideox as cog


@pytest.fixture(scope="module")
def bb(tiny_cogvideox):
    return cog.load_cogvideox(tiny_cogvideox, dtype=torch.float32, device="cpu")


def _sd_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k].to(sa[k].dtype)) for k in sa)


def test_load_folder(bb):
    assert bb.family == "cogvideox" and bb.variant == "tiny" and bb.source["kind"] == "diffusers"
    assert bb.extra["i2v"] and bb.extra["vae_scale_factor_spatial"] == 4 and bb.extra["vae_scale_factor_temporal"] == 4
    assert bb.extra["scaling_factor"] == 0.7 and bb.extra["latent_channels"] == 4
    assert bb.scheduler_config["timestep_spacing"] == "trailing"
    assert bb.scheduler_config["prediction_type"] == "v_prediction" and bb.scheduler_config["snr_shift_scale"] == 1.0
    assert not any(p.requires_grad for p in bb.denoiser.parameters())


def test_single_files_inferred_configs(bb, tiny_cogvideox_files):
    files = {k: tiny_cogvideox_files[k] for k in ("transformer", "vae", "text_encoder", "tokenizer")}
    got = cog.load_cogvideox(files, dtype=torch.float32, device="cpu")
    assert got.source["kind"] == "single_files"
    c, r = got.denoiser.config, bb.denoiser.config
    for k in ("num_attention_heads", "attention_head_dim", "in_channels", "out_channels", "time_embed_dim",
              "text_embed_dim", "num_layers", "patch_size", "use_rotary_positional_embeddings",
              "use_learned_positional_embeddings"):
        assert c[k] == r[k], k
    assert _sd_equal(bb.denoiser, got.denoiser) and _sd_equal(bb.vae, got.vae)
    assert tuple(got.vae.config.block_out_channels) == (8, 16, 16) and got.vae.config.latent_channels == 4
    # T5 config (incl. relative_attention_max_distance, not in the weights) is recovered exactly
    torch.testing.assert_close(cog.encode_prompt(got, ["a red cube"]), cog.encode_prompt(bb, ["a red cube"]),
                               rtol=0, atol=0)


def test_single_files_with_sidecar_configs_equal_folder(bb, tiny_cogvideox, tiny_cogvideox_files, tmp_path):
    files = {}
    for role, sub in (("transformer", "transformer"), ("vae", "vae"), ("text_encoder", None)):
        dst = tmp_path / tiny_cogvideox_files[role].name
        shutil.copy(tiny_cogvideox_files[role], dst)
        if sub:
            cfg = json.loads((tiny_cogvideox / sub / "config.json").read_text())
            dst.with_suffix(".json").write_text(json.dumps({k: v for k, v in cfg.items() if not k.startswith("_")}))
        files[role] = dst
    files["tokenizer"] = tiny_cogvideox_files["tokenizer"]
    got = cog.load_cogvideox(files, dtype=torch.float32, device="cpu")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, 8, 8, 8, generator=g)
    e = torch.randn(1, 6, 32, generator=g)
    t = torch.tensor([700])
    rot = cog.rotary_embeddings(bb.denoiser.config, 3, 8, 8)
    torch.testing.assert_close(got.denoiser(x, e, t, image_rotary_emb=rot).sample,
                               bb.denoiser(x, e, t, image_rotary_emb=rot).sample, rtol=0, atol=0)
    lat = torch.randn(1, 3, 4, 8, 8, generator=g)
    torch.testing.assert_close(cog.decode_latents(got, lat), cog.decode_latents(bb, lat), rtol=0, atol=0)


def test_missing_file_names_file_and_folders(tiny_cogvideox_files, tmp_path):
    files = dict(transformer=tmp_path / "nope.safetensors", vae=tiny_cogvideox_files["vae"],
                 text_encoder=tiny_cogvideox_files["text_encoder"])
    with pytest.raises(FileNotFoundError, match=r"transformer file .*nope\.safetensors.*diffusion_models"):
        cog.load_cogvideox(files, device="cpu")
    with pytest.raises(FileNotFoundError, match="transformer/, vae/"):
        cog.load_cogvideox(tmp_path, device="cpu")


def test_mismatched_file_names_key_expected_shape_and_fix(tiny_cogvideox_files, tmp_path):
    from safetensors.torch import load_file, save_file

    sd = load_file(str(tiny_cogvideox_files["transformer"]))
    key = "transformer_blocks.1.ff.net.0.proj.weight"
    want = tuple(sd[key].shape)
    sd[key] = torch.zeros(want[0] + 3, want[1])
    bad = tmp_path / "bad_transformer.safetensors"
    save_file(sd, str(bad))
    files = dict(transformer=bad, vae=tiny_cogvideox_files["vae"], text_encoder=tiny_cogvideox_files["text_encoder"],
                 tokenizer=tiny_cogvideox_files["tokenizer"])
    with pytest.raises(ValueError) as e:
        cog.load_cogvideox(files, device="cpu")
    msg = str(e.value)
    assert "bad_transformer.safetensors" in msg and key in msg and str(want) in msg and "Fix:" in msg
    # a VAE file given as the transformer: says what it expected
    files["transformer"] = tiny_cogvideox_files["vae"]
    with pytest.raises(ValueError, match="patch_embed.proj.weight"):
        cog.load_cogvideox(files, device="cpu")


def test_check_frames_names_input_and_allowed(bb):
    assert cog.allowed_frames(bb, 49) == [1, 9, 17, 25, 33, 41, 49]
    cog.check_frames(bb, 9, 32, 32)
    with pytest.raises(ValueError, match=r"num_frames must be one of \[1, 9, 17, 25, 33, 41, 49, 57\].*got 13.*Use 9"):
        cog.check_frames(bb, 13, 32, 32)
    with pytest.raises(ValueError, match="multiples of 8; got 36x32"):
        cog.check_frames(bb, 9, 36, 32)


def test_learned_positions_pin_resolution():
    from diffusers import CogVideoXTransformer3DModel

    with torch.device("meta"):
        tr = CogVideoXTransformer3DModel(**cog.COGVIDEOX_5B_I2V)
    assert tr.patch_embed.pos_embedding.shape == (1, 226 + 13 * 30 * 45, 3072)
    fake = cog.Backbone(family="cogvideox", variant="cogvideox-5b-i2v", denoiser=tr,
                        extra={"vae_scale_factor_spatial": 8, "vae_scale_factor_temporal": 4})
    cog.check_frames(fake, 49, 480, 720)
    with pytest.raises(ValueError, match="only takes 480x720"):
        cog.check_frames(fake, 49, 480, 848)
    assert cog.detect_variant(tr.config) == "cogvideox-5b-i2v"


def test_rotary_equals_pipeline(bb):
    from diffusers import CogVideoXImageToVideoPipeline, CogVideoXDDIMScheduler

    pipe = CogVideoXImageToVideoPipeline(tokenizer=bb.tokenizer, text_encoder=bb.text_encoder, vae=bb.vae,
                                         transformer=bb.denoiser, scheduler=CogVideoXDDIMScheduler())
    for h, w, f in ((32, 32, 3), (32, 48, 5), (48, 32, 2)):
        ref = pipe._prepare_rotary_positional_embeddings(h, w, f, torch.device("cpu"))
        got = cog.rotary_embeddings(bb.denoiser.config, f, h // 4, w // 4)
        assert torch.equal(ref[0], got[0]) and torch.equal(ref[1], got[1])


def test_image_condition_and_roundtrip(bb):
    img = torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(1))
    cond = cog.image_condition(bb, img, 3)
    assert cond.shape == (1, 3, 4, 8, 8)
    assert torch.equal(cond[:, 1:], torch.zeros_like(cond[:, 1:]))
    torch.testing.assert_close(cond[:, :1], cog.encode_frames(bb, img[:, None]))
    # the posterior mode times 0.7 (the 5B scaling factor)
    x = img.permute(0, 3, 1, 2)[:, :, None] * 2 - 1
    mode = bb.vae.encode(x).latent_dist.mode()[:, :, 0]
    torch.testing.assert_close(cond[:, 0], mode * 0.7)
    frames = cog.decode_latents(bb, cog.encode_frames(bb, torch.rand(1, 9, 32, 32, 3)))
    assert frames.shape == (1, 9, 32, 32, 3) and frames.dtype == torch.float32
    assert 0 <= frames.min() and frames.max() <= 1


def test_fp8_storage_upcasts(tiny_cogvideox, bb):
    got = cog.load_cogvideox(tiny_cogvideox, dtype="fp8_e4m3fn", device="cpu")
    assert got.storage_dtype == torch.float8_e4m3fn and got.dtype == torch.float32
    w = got.denoiser.transformer_blocks[0].attn1.to_q.weight
    assert w.dtype == torch.float8_e4m3fn
    g = torch.Generator().manual_seed(0)
    x, e, t = torch.randn(1, 3, 8, 8, 8, generator=g), torch.randn(1, 6, 32, generator=g), torch.tensor([500])
    rot = cog.rotary_embeddings(bb.denoiser.config, 3, 8, 8)
    ref = bb.denoiser(x, e, t, image_rotary_emb=rot).sample
    out = got.denoiser(x, e, t, image_rotary_emb=rot).sample
    assert out.dtype == torch.float32
    rel = ((out - ref).norm() / ref.norm()).item()
    assert 0 < rel < 0.15  # fp8 rounding of the weights, nothing worse


def test_vae_tiling_flag_and_small_geometry_fallback(tiny_cogvideox, bb):
    got = cog.load_cogvideox(tiny_cogvideox, dtype=torch.float32, device="cpu", vae_tiling=True)
    assert got.vae_tiling and got.vae.use_tiling
    lat = torch.randn(1, 3, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    # diffusers' tiles assume the release geometry; at 32 px they do not line up: redone untiled, same frames
    out = cog.decode_latents(got, lat)
    assert out.shape == (1, 9, 32, 32, 3) and torch.equal(out, cog.decode_latents(bb, lat))


def test_offload_model_parks_parts(tiny_cogvideox):
    got = cog.load_cogvideox(tiny_cogvideox, dtype=torch.float32, device="cpu", offload="model")
    assert got.offload == "model"
    emb = cog.encode_prompt(got, ["a cube", "two cubes"])
    assert emb.shape == (2, 226, 32)
    with pytest.raises(ValueError, match="offload must be 'none' or 'model'"):
        cog.load_cogvideox(tiny_cogvideox, device="cpu", offload="sequential")


def test_encode_prompt_pads_to_the_transformers_text_length():
    """A transformer trained with 8 text tokens (the demo model) gets 8 by default; an explicit length wins."""
    bb = cog.random_backbone("tiny", seed=0)
    assert cog.encode_prompt(bb, ["a cube"]).shape[1] == bb.denoiser.config.max_text_seq_length
    bb.denoiser.register_to_config(max_text_seq_length=8)
    assert cog.encode_prompt(bb, ["a cube"]).shape[1] == 8
    assert cog.encode_prompt(bb, ["a cube"], max_length=12).shape[1] == 12
