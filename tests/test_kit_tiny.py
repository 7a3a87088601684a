"""The tiny-model kit: every builder's files load through the user-facing classes with identical outputs to
the in-memory model, tokenizers load offline, and the on-disk cache is reused."""
import json
import os

import pytest
import torch
from safetensors.torch import load_file

from kit import tiny


def _same(a, b):
    assert a.shape == b.shape
    assert torch.equal(a, b), (a - b).abs().max()


def _owned(module):
    """Copy every weight into fresh (aligned) memory.

    from_pretrained leaves weights in the mmap'd safetensors buffer at arbitrary byte alignment, and CPU conv
    kernels then take another SIMD path: outputs differ from the in-memory model by ~1e-6 (SVD UNet: 7.7e-6)
    although every weight is bit-identical. Owned copies make the save->load identity exact.
    """
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            t.data = t.data.clone()
    return module


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        _same(sa[k], sb[k])


@pytest.fixture(scope="module")
def cog_mem():
    return tiny.new_cogvideox_modules(0)


def _cog_inputs():
    g = torch.Generator().manual_seed(0)
    lat = torch.randn(1, 3, 2 * tiny.LATENT_CHANNELS, 8, 8, generator=g)  # [B,f,2C,h,w]
    text = torch.randn(1, 7, tiny.T5_CONFIG["d_model"], generator=g)
    return lat, text


def _cog_forward(transformer, lat, text):
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    cfg = transformer.config
    rope = get_3d_rotary_pos_embed(cfg.attention_head_dim, crops_coords=((0, 0), (4, 4)), grid_size=(4, 4),
                                   temporal_size=lat.shape[1], device=lat.device)
    with torch.no_grad():
        return transformer(hidden_states=lat, encoder_hidden_states=text, timestep=torch.tensor([500]),
                           image_rotary_emb=rope, return_dict=False)[0]


def test_cogvideox_folder_is_the_in_memory_model(tiny_cogvideox, cog_mem):
    from diffusers import CogVideoXImageToVideoPipeline

    pipe = CogVideoXImageToVideoPipeline.from_pretrained(tiny_cogvideox)
    for name in ("transformer", "vae", "text_encoder"):
        _same_weights(getattr(pipe, name), cog_mem[name])
        _owned(getattr(pipe, name))
    assert json.loads((tiny_cogvideox / "model_index.json").read_text())["_class_name"] == \
        "CogVideoXImageToVideoPipeline"
    lat, text = _cog_inputs()
    out = _cog_forward(pipe.transformer, lat, text)
    assert out.shape == (1, 3, tiny.LATENT_CHANNELS, 8, 8)
    _same(out, _cog_forward(cog_mem["transformer"], lat, text))
    # VAE: 9 frames of 32 px -> 3 latent frames of 8x8 -> 9 frames back
    x = torch.rand(1, 3, 9, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        z = pipe.vae.encode(x).latent_dist.mean
        _same(z, cog_mem["vae"].encode(x).latent_dist.mean)
        assert z.shape == (1, tiny.LATENT_CHANNELS, 3, 8, 8)
        assert pipe.vae.decode(z).sample.shape == (1, 3, 9, 32, 32)
    sc = pipe.scheduler.config
    assert (sc.prediction_type, sc.timestep_spacing, sc.snr_shift_scale, sc.rescale_betas_zero_snr) == \
        ("v_prediction", "trailing", 1.0, True)
    assert pipe.vae.config.scaling_factor == 0.7
    # the release pipeline runs end to end on the tiny folder (local tokenizer, 9 frames of 32 px, 2 DDIM steps)
    from PIL import Image

    frames = pipe(image=Image.new("RGB", (32, 32), (200, 10, 10)), prompt="a red box pushes a cube",
                  height=32, width=32, num_frames=9, num_inference_steps=2, max_sequence_length=16,
                  output_type="pt", generator=torch.Generator().manual_seed(0)).frames
    assert frames.shape == (1, 9, 3, 32, 32) and torch.isfinite(frames).all()


def test_cogvideox_tokenizer_and_t5_load_offline(tiny_cogvideox, cog_mem, monkeypatch):
    from transformers import AutoTokenizer, T5EncoderModel, T5TokenizerFast

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tok = AutoTokenizer.from_pretrained(tiny_cogvideox / "tokenizer")
    assert isinstance(tok, T5TokenizerFast)
    ids = tok(["A red box pushes the cube"], padding="max_length", max_length=16, return_tensors="pt").input_ids
    assert ids.shape == (1, 16)
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert 1 in ids[0].tolist() and ids[0, -1] == 0  # eos appended, padded with pad
    te = T5EncoderModel.from_pretrained(tiny_cogvideox / "text_encoder")
    with torch.no_grad():
        _same(te(ids).last_hidden_state, cog_mem["text_encoder"](ids).last_hidden_state)


def test_cogvideox_single_files_hold_the_folder_weights(tiny_cogvideox, tiny_cogvideox_files, cog_mem):
    from diffusers import AutoencoderKLCogVideoX, CogVideoXTransformer3DModel
    from transformers import T5Config, T5EncoderModel, T5TokenizerFast

    f = tiny_cogvideox_files
    root = f["root"]
    assert f["transformer"] == root / "diffusion_models" / "tiny_cogvideox_transformer.safetensors"
    assert f["vae"] == root / "vae" / "tiny_cogvideox_vae.safetensors"
    assert f["text_encoder"] == root / "text_encoders" / "tiny_t5.safetensors"
    sd = load_file(f["transformer"])
    # the shape facts the module docstring promises a config-inferring loader
    assert sd["patch_embed.proj.weight"].shape == (32, 2 * tiny.LATENT_CHANNELS, 2, 2)
    assert sd["patch_embed.text_proj.weight"].shape == (32, 32)
    assert sd["transformer_blocks.0.attn1.norm_q.weight"].shape == (16,)
    assert sd["proj_out.weight"].shape == (2 * 2 * tiny.LATENT_CHANNELS, 32)
    assert "patch_embed.pos_embedding" not in sd and not any(k.startswith("ofs_") for k in sd)
    tr = CogVideoXTransformer3DModel(**tiny.COGVIDEOX_TRANSFORMER)
    tr.load_state_dict(sd, strict=True)
    lat, text = _cog_inputs()
    _same(_cog_forward(tr.eval(), lat, text), _cog_forward(cog_mem["transformer"], lat, text))

    vsd = load_file(f["vae"])
    assert vsd["encoder.conv_out.conv.weight"].shape[0] == 2 * tiny.LATENT_CHANNELS
    vae = AutoencoderKLCogVideoX(**tiny.COGVIDEOX_VAE)
    vae.load_state_dict(vsd, strict=True)
    for k, v in cog_mem["vae"].state_dict().items():
        _same(vsd[k], v)

    tsd = load_file(f["text_encoder"])
    assert "shared.weight" in tsd and "encoder.embed_tokens.weight" not in tsd  # tied, stored once
    tok = T5TokenizerFast.from_pretrained(f["tokenizer"])
    te = T5EncoderModel(T5Config(vocab_size=tsd["shared.weight"].shape[0], **tiny.T5_CONFIG))
    missing, unexpected = te.load_state_dict(tsd, strict=False)
    assert missing == [] or set(missing) == {"encoder.embed_tokens.weight"}
    assert unexpected == []
    ids = tok(["a box"], return_tensors="pt").input_ids
    with torch.no_grad():
        _same(te.eval()(ids).last_hidden_state, cog_mem["text_encoder"](ids).last_hidden_state)


def test_cache_is_reused_and_keyed_by_config(tmp_path, monkeypatch):
    monkeypatch.setenv("INTERPLAY_TINY_MODELS", str(tmp_path))
    calls = []

    def build(d):
        calls.append(d)
        (d / "w.txt").write_text("x")

    a = tiny.cached("thing", {"k": 1}, build)
    mtime = (a / "w.txt").stat().st_mtime_ns
    assert tiny.cached("thing", {"k": 1}, build) == a and len(calls) == 1
    assert (a / "w.txt").stat().st_mtime_ns == mtime
    b = tiny.cached("thing", {"k": 2}, build)
    assert b != a and len(calls) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([a.name, b.name])  # no temp dirs left

    def boom(d):
        (d / "half").write_text("x")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        tiny.cached("thing", {"k": 3}, boom)
    assert len(list(tmp_path.iterdir())) == 2  # a failed build publishes nothing


def test_cogvideox_cache_not_rebuilt(tiny_cogvideox):
    stamp = (tiny_cogvideox / tiny.COMPLETE).stat().st_mtime_ns
    w = next((tiny_cogvideox / "transformer").glob("*.safetensors")).stat().st_mtime_ns
    assert tiny.tiny_cogvideox_dir() == tiny_cogvideox
    assert (tiny_cogvideox / tiny.COMPLETE).stat().st_mtime_ns == stamp
    assert next((tiny_cogvideox / "transformer").glob("*.safetensors")).stat().st_mtime_ns == w


# ------------------------------------------------------------------------------------------------- SVD
@pytest.fixture(scope="module")
def svd_mem():
    return tiny.new_svd_modules(0)


def _svd_unet_out(unet):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 8, 8, 8, generator=g)  # [B,F,2C,h,w]
    emb = torch.randn(1, 1, tiny.SVD_UNET["cross_attention_dim"], generator=g)
    ids = torch.tensor([[6.0, 127.0, 0.02]])
    with torch.no_grad():
        return unet(x, torch.tensor([0.5]), emb, added_time_ids=ids, return_dict=False)[0]


def test_svd_folder_is_the_in_memory_model(tiny_svd, svd_mem):
    from diffusers import StableVideoDiffusionPipeline
    from PIL import Image

    pipe = StableVideoDiffusionPipeline.from_pretrained(tiny_svd)
    for name in ("unet", "vae", "image_encoder"):
        _same_weights(getattr(pipe, name), svd_mem[name])
        _owned(getattr(pipe, name))
    out = _svd_unet_out(pipe.unet)
    assert out.shape == (1, 4, 4, 8, 8)
    _same(out, _svd_unet_out(svd_mem["unet"]))
    px = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        e = pipe.image_encoder(px).image_embeds
        _same(e, svd_mem["image_encoder"](px).image_embeds)
        assert e.shape == (1, tiny.SVD_UNET["cross_attention_dim"])  # cross_attention_dim == projection_dim
        x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3)) * 2 - 1
        z = pipe.vae.encode(x).latent_dist.mode()
        _same(z, svd_mem["vae"].encode(x).latent_dist.mode())
        assert z.shape == (2, 4, 8, 8)
        assert pipe.vae.decode(z, num_frames=2).sample.shape == (2, 3, 64, 64)
    sc = pipe.scheduler.config
    assert (sc.prediction_type, sc.use_karras_sigmas, sc.sigma_min, sc.sigma_max, sc.timestep_type) == \
        ("v_prediction", True, 0.002, 700.0, "continuous")
    fe = pipe.feature_extractor
    assert fe.crop_size == {"height": 224, "width": 224} and fe.image_mean[0] == 0.48145466
    # the whole release pipeline runs on the tiny folder (CLIP at 224, 64 px frames, 2 Euler steps)
    frames = pipe(Image.new("RGB", (64, 64), (200, 30, 30)), height=64, width=64, num_frames=4,
                  num_inference_steps=2, decode_chunk_size=4, output_type="pt",
                  generator=torch.Generator().manual_seed(0)).frames
    assert frames.shape == (1, 4, 3, 64, 64) and torch.isfinite(frames).all()


def test_svd_clip_vision_single_file(tiny_svd_files, svd_mem):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    f = tiny_svd_files
    assert f["clip_vision"] == f["root"] / "clip_vision" / "tiny_svd_clip_vision.safetensors"
    sd = load_file(f["clip_vision"])
    assert sd["visual_projection.weight"].shape == (16, 32)
    assert sd["vision_model.embeddings.position_embedding.weight"].shape == ((224 // 32) ** 2 + 1, 32)
    m = CLIPVisionModelWithProjection(CLIPVisionConfig(**tiny.SVD_CLIP))
    m.load_state_dict(sd, strict=False)
    px = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        _same(m.eval()(px).image_embeds, svd_mem["image_encoder"](px).image_embeds)


# ------------------------------------------------------------------------------------------------ SAM2
def test_sam2_weights_load_into_the_package_builders(tiny_sam2):
    pytest.importorskip("sam2")
    from sam2.build_sam import build_sam2, build_sam2_video_predictor

    yaml, weights = tiny_sam2
    assert yaml.parent.name == "sam2" and weights.parent == yaml.parent and weights.suffix == ".safetensors"
    sd = load_file(weights)
    assert "image_encoder.trunk.patch_embed.proj.weight" in sd and "maskmem_tpos_enc" in sd
    assert sd["image_encoder.trunk.patch_embed.proj.weight"].shape[0] == 16
    mem = tiny.new_sam2_model(yaml, seed=0)
    x = torch.rand(1, 3, tiny.SAM2_IMAGE_SIZE, tiny.SAM2_IMAGE_SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = mem.forward_image(x)["vision_features"]
    assert ref.shape == (1, 32, tiny.SAM2_IMAGE_SIZE // 16, tiny.SAM2_IMAGE_SIZE // 16)
    with tiny.sam2_hydra_dir(yaml.parent):
        img = build_sam2(yaml.stem, ckpt_path=None, device="cpu")
        vid = build_sam2_video_predictor(yaml.stem, ckpt_path=None, device="cpu")
    for m in (img, vid):
        assert m.load_state_dict(sd, strict=True)
        _owned(m)
        with torch.no_grad():
            _same(m.eval().forward_image(x)["vision_features"], ref)
    # sam2's own search path is back: the release configs still resolve by name
    from hydra import compose

    assert compose(config_name=tiny.SAM2_BASE).model.image_size == 1024


# ------------------------------------------------------------------------------------------------- Wan
def _wan_out(tr, image_embeds=None):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, tr.config.in_channels, 2, 4, 4, generator=g)  # [B,2z+4,f,h,w]
    text = torch.randn(1, 6, tiny.UMT5_CONFIG["d_model"], generator=g)
    with torch.no_grad():
        return tr(x, torch.tensor([700]), text, encoder_hidden_states_image=image_embeds, return_dict=False)[0]


@pytest.mark.parametrize("variant", ["2.2", "2.1"])
def test_wan_folder_is_the_in_memory_model(variant, request, monkeypatch):
    from diffusers import WanImageToVideoPipeline
    from PIL import Image
    from transformers import AutoTokenizer, UMT5EncoderModel

    folder = request.getfixturevalue("tiny_wan" if variant == "2.2" else "tiny_wan21")
    mem = tiny.new_wan_modules(0, variant)
    pipe = WanImageToVideoPipeline.from_pretrained(folder)
    experts = ["transformer", "transformer_2"] if variant == "2.2" else ["transformer"]
    for name in experts + ["vae", "text_encoder"] + ([] if variant == "2.2" else ["image_encoder"]):
        _same_weights(getattr(pipe, name), mem[name])
        _owned(getattr(pipe, name))
    assert isinstance(pipe.text_encoder, UMT5EncoderModel)
    img = None
    if variant == "2.1":
        px = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(5))
        with torch.no_grad():
            img = pipe.image_encoder(px, output_hidden_states=True).hidden_states[-2]
            _same(img, mem["image_encoder"](px, output_hidden_states=True).hidden_states[-2])
        assert pipe.transformer_2 is None and pipe.config.boundary_ratio is None
    else:
        assert pipe.config.boundary_ratio == 0.9 and pipe.image_encoder is None
        # two distinct experts of one architecture
        assert not torch.equal(pipe.transformer.patch_embedding.weight, pipe.transformer_2.patch_embedding.weight)
    for name in experts:
        out = _wan_out(getattr(pipe, name), img)
        assert out.shape == (1, tiny.WAN_Z, 2, 4, 4)
        _same(out, _wan_out(mem[name], img))
    x = torch.rand(1, 3, 5, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        z = pipe.vae.encode(x).latent_dist.mode()
        _same(z, mem["vae"].encode(x).latent_dist.mode())
        assert z.shape == (1, tiny.WAN_Z, 2, 4, 4)
        assert pipe.vae.decode(z).sample.shape == (1, 3, 5, 32, 32)
    sc = pipe.scheduler.config
    assert (sc.prediction_type, sc.use_flow_sigmas, sc.flow_shift) == ("flow_prediction", True, 5.0)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tok = AutoTokenizer.from_pretrained(folder / "tokenizer")
    ids = tok(["a red box"], padding="max_length", max_length=8, return_tensors="pt").input_ids
    with torch.no_grad():
        _same(pipe.text_encoder(ids).last_hidden_state, mem["text_encoder"](ids).last_hidden_state)
    # the release pipeline runs end to end (prompt embeds given: its text cleaning needs the optional `ftfy`)
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(1, 8, 32, generator=g)
    frames = pipe(image=Image.new("RGB", (32, 32), (200, 10, 10)), prompt_embeds=emb, negative_prompt_embeds=emb,
                  height=32, width=32, num_frames=5, num_inference_steps=2, guidance_scale=2.0, output_type="pt",
                  generator=g).frames
    assert frames.shape == (1, 5, 3, 32, 32) and torch.isfinite(frames).all()


@pytest.mark.parametrize("variant", ["2.1-t2v", "2.2-ti2v"])
def test_wan_t2v_and_ti2v_folders_run_in_the_release_pipelines(variant):
    from diffusers import WanImageToVideoPipeline, WanPipeline
    from PIL import Image

    folder = tiny.tiny_wan_dir(variant=variant)
    mem = tiny.new_wan_modules(0, variant)
    cls = WanPipeline if variant == "2.1-t2v" else WanImageToVideoPipeline
    pipe = cls.from_pretrained(folder)
    for name in ("transformer", "vae", "text_encoder"):
        _same_weights(getattr(pipe, name), mem[name])
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(1, 8, 32, generator=g)
    kw = dict(prompt_embeds=emb, negative_prompt_embeds=emb, num_frames=5, num_inference_steps=2, guidance_scale=2.0,
              output_type="pt", generator=g)
    if variant == "2.1-t2v":
        assert pipe.transformer.config.in_channels == pipe.vae.config.z_dim == tiny.WAN_Z
        frames = pipe(height=32, width=32, **kw).frames
        assert frames.shape == (1, 5, 3, 32, 32)
    else:  # Wan2.2 TI2V-5B: 48-channel VAE (16x space), the image as latent frame 0 with per-token timesteps
        assert pipe.config.expand_timesteps and pipe.vae.config.z_dim == tiny.WAN22_Z == pipe.transformer.config.in_channels
        frames = pipe(image=Image.new("RGB", (64, 64), (200, 10, 10)), height=64, width=64, **kw).frames
        assert frames.shape == (1, 5, 3, 64, 64)
    assert torch.isfinite(frames).all()


# ------------------------------------------------------------------------------------------ models root
def test_models_root_resolves_through_runtime(tiny_models_root, tiny_cogvideox_files, tmp_path):
    from interplay.models import runtime

    runtime.set_models_root(tiny_models_root)
    assert set(tiny.ROOT_DIFFUSERS) <= set(runtime.list_models("diffusers", folders_only=True))
    p = runtime.model_path("diffusion_models", "tiny_cogvideox_transformer.safetensors")
    assert p.read_bytes() == tiny_cogvideox_files["transformer"].read_bytes()
    for kind, name in (("vae", "tiny_cogvideox_vae.safetensors"), ("vae", "tiny_wan_vae.safetensors"),
                       ("text_encoders", "tiny_t5.safetensors"), ("text_encoders", "tiny_umt5.safetensors"),
                       ("clip_vision", "tiny_svd_clip_vision.safetensors"), ("checkpoints", "tiny_svd.safetensors"),
                       ("diffusion_models", "tiny_wan22_i2v_low_noise_diffusers.safetensors"),
                       ("diffusion_models", "tiny_wan2.2_i2v_low_noise_14B.safetensors"),
                       ("diffusion_models", "tiny_wan2.1_i2v_480p_14B_fp8_e4m3fn_scaled.safetensors"),
                       ("vae", "tiny_wan2.2_vae.safetensors"), ("text_encoders", "tiny_umt5_xxl.safetensors"),
                       ("clip_vision", "tiny_clip_vision_h.safetensors")):
        assert name in runtime.list_models(kind), (kind, name)
    if (tiny_models_root / "sam2").exists() and any((tiny_models_root / "sam2").iterdir()):
        assert "sam2.1_hiera_tiny_test.safetensors" in runtime.list_models("sam2")
    # a private root: files a test adds stay out of the shared cache
    mine = tiny.models_root(tmp_path / "models")
    (mine / "loras" / "x.safetensors").write_bytes(b"")
    assert not (tiny.tiny_models_root() / "loras" / "x.safetensors").exists()
    assert (mine / "diffusers" / "tiny_svd" / "model_index.json").is_file()


def test_svd_checkpoint_in_root_is_the_folder_model(tiny_models_root, tiny_svd):
    from interplay.models.backbones import svd

    a = svd.load_svd(str(tiny_models_root / tiny.SVD_CHECKPOINT), dtype=torch.float32, device="cpu")
    b = svd.load_svd(str(tiny_svd), dtype=torch.float32, device="cpu")
    _same_weights(a.denoiser, b.denoiser)
    _same_weights(a.vae, b.vae)


def test_wan_single_files_hold_the_folder_weights(tiny_wan):
    from diffusers import WanTransformer3DModel

    f = tiny.tiny_wan_files()
    for k in ("transformer", "transformer_2"):
        sd = load_file(f[k])
        assert sd["patch_embedding.weight"].shape == (32, 2 * tiny.WAN_Z + 4, 1, 2, 2)
        ref = WanTransformer3DModel.from_pretrained(tiny_wan / k).state_dict()
        assert sd.keys() == ref.keys()
        for key in sd:
            _same(sd[key], ref[key])
