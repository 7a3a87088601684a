"""Wan backbones: one loader for diffusers folders and ComfyUI single files, detection, refusals, fp8, memory modes
and the encoders/conditioning, on the tiny kit models (real classes, real key names)."""
import json

import pytest
import torch
from kit import tiny
from safetensors.torch import load_file, save_file

from interplay.models.backbones import wan, wan_convert

EXPERTS = {"2.2": ("transformer", "transformer_2"), "2.1": ("transformer",), "2.1-t2v": ("transformer",),
           "2.2-ti2v": ("transformer",)}
NAMES = {"2.2": "wan2.2-i2v-a14b-d32x2", "2.1": "wan2.1-i2v-d32x2", "2.1-t2v": "wan2.1-t2v-d32x2",
         "2.2-ti2v": "wan2.2-ti2v-d32x2"}


def comfy_source(variant, transformer_suffix=""):
    f = tiny.tiny_wan_comfy_files(variant=variant)
    src = {k: f[k] for k in ("vae", "text_encoder", "clip_vision") if k in f}
    for role in EXPERTS[variant]:
        src[role] = f[role + transformer_suffix]
    return src


@pytest.fixture(scope="module")
def loaded():
    """{variant: (from the diffusers folder, from ComfyUI single files)}, float32 on the CPU."""
    return {v: (wan.load_wan(tiny.tiny_wan_dir(variant=v), dtype="fp32", device="cpu"),
                wan.load_wan(comfy_source(v), dtype="fp32", device="cpu")) for v in tiny.WAN_VARIANTS}


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys(), sorted(set(sa) ^ set(sb))[:6]
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


def _step(model, variant, seed=0):
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, cfg.in_channels, 2, 4, 4, generator=g)
    text = torch.randn(1, 512, cfg.text_dim, generator=g)
    img = torch.randn(1, 50, cfg.image_dim, generator=g) if cfg.image_dim else None
    dt = model.patch_embedding.weight.dtype  # the compute dtype (fp8 storage leaves this layer as is)
    with torch.no_grad():
        return model(x.to(dt), torch.tensor([700]), text.to(dt), return_dict=False,
                     encoder_hidden_states_image=None if img is None else img.to(dt))[0]


# --------------------------------------------------------------------------------------------- loading
@pytest.mark.parametrize("variant", tiny.WAN_VARIANTS)
def test_single_files_and_folder_load_the_same_model(variant, loaded):
    a, b = loaded[variant]
    assert a.variant == b.variant == NAMES[variant] and a.family == b.family == "wan"
    assert a.extra["kind"] == b.extra["kind"]
    ea, eb = wan.expert_modules(a), wan.expert_modules(b)
    assert list(ea) == list(eb) == (["high_noise", "low_noise"] if variant == "2.2" else ["high_noise"])
    for name in ea:
        _same_weights(ea[name], eb[name])
        assert torch.equal(_step(ea[name], variant), _step(eb[name], variant))  # bitwise, CPU float32
    _same_weights(a.vae, b.vae)
    _same_weights(a.text_encoder, b.text_encoder)
    if variant == "2.1":  # folder: CLIPVisionModel; file: clip_vision_h layout (+ visual_projection)
        va = {k.removeprefix("vision_model."): v for k, v in a.image_encoder.state_dict().items()}
        vb = {k.removeprefix("vision_model."): v for k, v in b.image_encoder.state_dict().items()
              if not k.startswith("visual_projection")}
        assert va.keys() == vb.keys() and all(torch.equal(va[k], vb[k]) for k in va)
    else:
        assert a.image_encoder is None and b.image_encoder is None
    # the umT5 tokenizer of the folder (HF T5TokenizerFast) and of the file (its spiece_model): the same ids
    assert isinstance(b.tokenizer, wan.SentencePieceTokenizer)
    prompts = ["a red box pushes the blue cylinder to the left", "Camera turns right, then it stops."]
    ia, ma = wan.tokenize(a.tokenizer, prompts)
    ib, mb = wan.tokenize(b.tokenizer, prompts)
    assert torch.equal(ia, ib) and torch.equal(ma, mb) and ia.shape == (2, 512)
    assert torch.equal(wan.encode_prompt(a, prompts), wan.encode_prompt(b, prompts))


def test_bundle_declares_what_the_sampler_needs(loaded):
    e = {v: loaded[v][1].extra for v in tiny.WAN_VARIANTS}
    assert e["2.2"]["boundary"] == 0.9 and e["2.2"]["expert_cfg"] == {"high_noise": 3.5, "low_noise": 3.5}
    assert loaded["2.2"][1].experts.keys() == {"low_noise"}
    assert [x["i2v"] for x in e.values()] == [True, True, False, False]
    assert [x["ti2v"] for x in e.values()] == [False, False, False, True]
    assert [x["clip"] for x in e.values()] == [False, True, False, False]
    assert loaded["2.2"][1].layout.parts == (("noise", 16), ("mask", 4), ("image", 16))
    assert loaded["2.2-ti2v"][1].layout.parts == (("noise", 48),)
    assert (e["2.2-ti2v"]["latent_channels"], e["2.2-ti2v"]["vae_scale_factor_spatial"]) == (48, 16)
    assert (e["2.1"]["latent_channels"], e["2.1"]["vae_scale_factor_spatial"], e["2.1"]["vae_scale_factor_temporal"]) \
        == (16, 8, 4)
    assert e["2.1"]["latents_mean"] == wan.WAN21_LATENTS_MEAN and e["2.2-ti2v"]["latents_std"] == wan.WAN22_LATENTS_STD
    assert e["2.1"]["resolution"] == "480p" and e["2.1"]["flow_shift"] == 3.0  # Wan2.1 generate.py at 480p
    assert loaded["2.2"][0].extra["flow_shift"] == 5.0  # the folder's scheduler_config
    assert wan.release_size("wan2.1-i2v", "720p") == (720, 1280) and wan.default_shift("wan2.1-i2v", 720, 1280) == 5.0
    assert wan.default_shift("wan2.2-i2v-a14b", 480, 832) == 5.0 and wan.default_shift("wan2.2-t2v-a14b") == 12.0
    text = loaded["2.2"][1].describe()
    assert "wan2.2-i2v-a14b" in text and "t >= 900" in text and "two experts" in text


def test_diffusers_layout_single_files_load_the_folder_weights(loaded):
    f = tiny.tiny_wan_files()
    b = wan.load_wan({k: f[k] for k in ("transformer", "transformer_2", "vae", "text_encoder")}, dtype="fp32",
                     device="cpu")
    a = loaded["2.2"][0]
    for name in ("high_noise", "low_noise"):
        _same_weights(wan.expert_modules(a)[name], wan.expert_modules(b)[name])
    _same_weights(a.vae, b.vae)
    assert not isinstance(b.tokenizer, wan.SentencePieceTokenizer)  # the tokenizer folder beside the file


def _release_shapes(cfg) -> dict:
    from diffusers import WanTransformer3DModel

    with torch.device("meta"):
        m = WanTransformer3DModel(**cfg)
    return {k: tuple(v.shape) for k, v in m.state_dict().items()}


def test_release_sizes_are_recognised_from_shapes_alone():
    """Comfy-Org files carry no config: the release is read from shapes (head width 128), no weights needed."""
    expect = {"wan2.1-t2v-1.3b": ("wan2.1-t2v", 1), "wan2.1-t2v-14b": ("wan2.1-t2v", 1),
              "wan2.1-i2v-14b": ("wan2.1-i2v", 1), "wan2.2-i2v-a14b": ("wan2.2-i2v-a14b", 2),
              "wan2.2-t2v-a14b": ("wan2.2-t2v-a14b", 2), "wan2.2-ti2v-5b": ("wan2.2-ti2v", 1)}
    for name, (kind, experts) in expect.items():
        rel = wan.RELEASE_TRANSFORMERS[name]
        cfg = wan.transformer_config(_release_shapes(rel))
        assert cfg["num_attention_heads"] == rel["num_attention_heads"] and cfg["image_dim"] == rel["image_dim"]
        assert wan.detect_kind(cfg, experts) == kind
        assert wan.variant_name(kind, cfg) == name
    # a Wan2.2 A14B expert is not taken for Wan2.1 I2V (no CLIP branch), nor the 5B for anything 14B
    cfg = wan.transformer_config(_release_shapes(wan.RELEASE_TRANSFORMERS["wan2.2-i2v-a14b"]))
    assert wan.detect_kind(cfg, 1) == "wan2.2-i2v-a14b" and cfg["image_dim"] is None
    # one 14B T2V file is Wan2.1 T2V; two are Wan2.2 T2V-A14B's experts
    cfg = wan.transformer_config(_release_shapes(wan.RELEASE_TRANSFORMERS["wan2.1-t2v-14b"]))
    assert (wan.detect_kind(cfg, 1), wan.detect_kind(cfg, 2)) == ("wan2.1-t2v", "wan2.2-t2v-a14b")


# -------------------------------------------------------------------------------------------- refusals
def _refused(src, *words):
    with pytest.raises(ValueError) as ex:
        wan.load_wan(src, dtype="fp32", device="cpu")
    for w in words:
        assert w in str(ex.value), (w, str(ex.value))
    return str(ex.value)


def _save_like(sd, path, like):
    """Save ``sd`` with the safetensors metadata of file ``like`` (the kit records the tiny head width there)."""
    from interplay.models.weights import read_metadata

    save_file(sd, str(path), metadata=read_metadata(like))
    return path


def test_other_models_and_misplaced_files_are_refused_by_name(tiny_models_root, tiny_cogvideox_files, tmp_path):
    good = comfy_source("2.2")
    _refused(good | {"transformer": tiny_cogvideox_files["transformer"]}, "looks like a CogVideoX transformer")
    _refused(good | {"transformer": tiny_models_root / tiny.SVD_CHECKPOINT}, "Stable Video Diffusion checkpoint")
    _refused(good | {"vae": tiny_cogvideox_files["vae"]}, "looks like a CogVideoX VAE")
    msg = _refused(good | {"transformer": good["vae"]}, "looks like the Wan2.1 VAE", "Put it in vae")
    assert "models/vae/" in msg
    _refused(good | {"text_encoder": good["transformer"]}, "text_encoder file", "Wan transformer")
    # one file holding two models
    mixed = tmp_path / "mixed.safetensors"
    save_file(load_file(str(good["transformer"])) | load_file(str(good["vae"])), str(mixed))
    _refused(good | {"transformer": mixed}, "mixes models", "Wan transformer", "Wan2.1 VAE")
    # a Wan variant the pack does not run (VACE adds vace_blocks)
    sd = load_file(str(good["transformer"]))
    vace = _save_like(sd | {"vace_blocks.0.after_proj.weight": torch.zeros(32, 32)}, tmp_path / "vace.safetensors",
                      good["transformer"])
    _refused(good | {"transformer": vace}, "VACE")
    # an unknown key in an otherwise Wan file is named, never dropped
    odd = _save_like(sd | {"blocks.0.self_attn.extra.weight": torch.zeros(2)}, tmp_path / "odd.safetensors",
                     good["transformer"])
    _refused(good | {"transformer": odd}, "blocks.0.self_attn.extra.weight")
    # a shape that does not fit the architecture its other shapes describe
    bad = _save_like(sd | {"blocks.1.ffn.0.weight": torch.zeros(63, 32)}, tmp_path / "bad.safetensors",
                     good["transformer"])
    _refused(good | {"transformer": bad}, "blocks.1.ffn.net.0.proj.weight", "(63, 32) -> (64, 32)")


def test_mismatched_parts_are_refused_with_the_fix():
    ti2v, i2v21 = comfy_source("2.2-ti2v"), comfy_source("2.1")
    _refused(ti2v | {"vae": comfy_source("2.2")["vae"]}, "needs wan2.2_vae", "wan2.2_vae.safetensors")
    _refused(comfy_source("2.2") | {"vae": ti2v["vae"]}, "Wan2.2 VAE (48 channels)", "wan_2.1_vae")
    _refused({k: v for k, v in i2v21.items() if k != "clip_vision"}, "clip_vision_h")
    _refused(comfy_source("2.2") | {"transformer_2": ti2v["transformer"]}, "different architectures")
    _refused(i2v21 | {"transformer_2": i2v21["transformer"]}, "one-model release")


# ---------------------------------------------------------------------------------------------- fp8
def _rel_err(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


def test_fp8_files_stay_fp8_in_memory_and_compute_close_to_full_precision(loaded):
    ref = loaded["2.1"][1]
    src = comfy_source("2.1", "_fp8")
    fp8 = wan.load_wan(src, dtype="auto", device="cpu")
    file_sd = load_file(str(src["transformer"]))
    model = fp8.denoiser
    q = model.blocks[0].attn1.to_q.weight
    assert q.dtype == torch.float8_e4m3fn and fp8.storage_dtype == torch.float8_e4m3fn
    # the very tensors of the file, not a bf16 round trip
    assert torch.equal(q.view(torch.uint8), file_sd["blocks.0.self_attn.q.weight"].view(torch.uint8))
    n_fp8 = sum(p.dtype == torch.float8_e4m3fn for p in model.parameters())
    assert n_fp8 == sum(v.dtype == torch.float8_e4m3fn for v in file_sd.values()) > 0
    y, y_ref = _step(model, "2.1"), _step(ref.denoiser, "2.1")
    assert model.blocks[0].attn1.to_q.weight.dtype == torch.float8_e4m3fn  # back to fp8 after the forward
    assert _rel_err(y, y_ref) < 0.05  # measured 0.006 (fp8 e4m3: 3 mantissa bits on the block weights)
    # "scaled" fp8 (ComfyUI *_fp8_scaled): per-layer scales honoured
    sc = wan.load_wan(comfy_source("2.1", "_fp8_scaled"), dtype="auto", device="cpu")
    assert sc.denoiser.blocks[0].attn1.to_q.weight.dtype == torch.float8_e4m3fn
    assert _rel_err(_step(sc.denoiser, "2.1"), y_ref) < 0.05
    # asked for full precision, an fp8 file is dequantised (weight x scale)
    full = wan.load_wan(comfy_source("2.1", "_fp8_scaled"), dtype="fp32", device="cpu")
    w = full.denoiser.blocks[0].attn1.to_q.weight
    sf = load_file(str(comfy_source("2.1", "_fp8_scaled")["transformer"]))
    assert w.dtype == torch.float32
    assert torch.equal(w, sf["blocks.0.self_attn.q.weight"].float() * sf["blocks.0.self_attn.q.scale_weight"])
    # the fp8 scaled umT5 (ComfyUI's umt5_xxl_fp8_e4m3fn_scaled) encodes close to the full one
    te = wan.load_wan(comfy_source("2.1") | {"text_encoder": tiny.tiny_wan_comfy_files(variant="2.1")[
        "text_encoder_fp8"]}, dtype="fp32", device="cpu")
    assert _rel_err(wan.encode_prompt(te, ["a red box"]), wan.encode_prompt(ref, ["a red box"])) < 0.05


def test_fp8_storage_of_a_bf16_model_is_within_tolerance_of_bf16():
    folder = tiny.tiny_wan_dir(variant="2.2")
    bf16 = wan.load_wan(folder, dtype="bf16", device="cpu")
    fp8 = wan.load_wan(folder, dtype="fp8_e4m3fn", compute_dtype=torch.bfloat16, device="cpu")
    assert fp8.dtype == torch.bfloat16 and fp8.storage_dtype == torch.float8_e4m3fn
    for name, m in wan.expert_modules(fp8).items():
        kinds = {n: p.dtype for n, p in m.named_parameters()}
        assert kinds["blocks.0.ffn.net.0.proj.weight"] == torch.float8_e4m3fn
        assert kinds["blocks.0.ffn.net.0.proj.bias"] == torch.bfloat16  # biases and norms keep their dtype
        assert kinds["blocks.0.scale_shift_table"] == torch.float32  # diffusers' keep-in-fp32 modules
        assert kinds["patch_embedding.weight"] == torch.bfloat16
        err = _rel_err(_step(m, "2.2"), _step(wan.expert_modules(bf16)[name], "2.2"))
        assert err < 0.05, err  # measured ~0.01 on the tiny model


# -------------------------------------------------------------------------------------------- memory
def test_a_request_too_large_fails_before_allocating_and_names_the_mode_that_fits(monkeypatch):
    from interplay.models import weights

    def no_read(*a, **k):
        raise AssertionError("weights were read before the memory check")

    monkeypatch.setattr(weights, "read_safetensors", no_read)
    src = comfy_source("2.2")
    stats = wan.plan_single_files(src).stats
    req = dict(frames=81, height=480, width=832, cfg_batch=2)
    need = {(p.offload, p.storage): p.peak  # what load_wan checks: bf16 (2 bytes), VAE untiled (its default)
            for p in wan.memory_plans(stats, 10 ** 12, vae_tiling=False, compute_bytes=2, **req)}
    budget = (need[("model", "bf16")] + need[("none", "bf16")]) / 2  # fits model offload, not everything resident
    with pytest.raises(wan.WanMemoryError) as ex:
        wan.load_wan(src, dtype="bf16", device="cpu", memory_budget_gb=budget / wan.GB, request=req)
    msg = str(ex.value)
    assert "offload='none'" in msg and "Fix: use offload='model', weight_dtype=bf16" in msg
    assert f"{need[('none', 'bf16')] / wan.GB:.1f} GB" in msg
    with pytest.raises(wan.WanMemoryError, match="No mode fits"):
        wan.load_wan(src, device="cpu", memory_budget_gb=1e-6, request=req)
    monkeypatch.undo()
    bb = wan.load_wan(src, dtype="bf16", device="cpu", offload="model", memory_budget_gb=budget / wan.GB,
                      request=req)
    assert bb.extra["memory_estimate"].peak == need[("model", "bf16")] <= budget


def test_memory_estimate_of_the_release_sizes():
    """Weights from shapes alone; activations by the documented formula, here worked out by hand."""
    shapes = _release_shapes(wan.RELEASE_TRANSFORMERS["wan2.2-i2v-a14b"])
    n = sum(torch.Size(s).numel() for s in shapes.values())
    assert 14.2e9 < n < 14.4e9  # "A14B": 14B active parameters per expert
    blk = sum(torch.Size(s).numel() for k, s in shapes.items() if k.startswith("blocks.0."))
    fp8 = sum(torch.Size(s).numel() for k, s in shapes.items() if wan.fp8_selectable(k) and len(s) == 2)
    stats = wan.WeightStats(expert_params={"high_noise": n, "low_noise": n}, block_params={"high_noise": blk,
                            "low_noise": blk}, fp8_params={"high_noise": fp8, "low_noise": fp8}, num_blocks=40,
                            text_encoder_params=5_680_000_000, vae_params=127_000_000)
    # 81 x 480 x 832: 21 latent frames x 30 x 52 tokens after the 2x2 patch = 32760; B = 2 (CFG)
    L = 21 * 30 * 52
    assert wan.activation_bytes(stats, 81, 480, 832) == 2 * L * (5120 * 16 + 2 * 13824 * 2) + 2 * 769 * 5120 * 8
    e = wan.estimate_memory(stats, offload="none", storage="bf16")
    assert e.parts["high_noise_weights"] == 2 * n
    f8 = wan.estimate_memory(stats, offload="model", storage="fp8")
    assert f8.parts["expert_weights"] == 2 * n - fp8  # block Linear weights at 1 byte
    assert f8.peak < wan.estimate_memory(stats, offload="model", storage="bf16").peak < e.peak
    blocks = wan.estimate_memory(stats, offload="blocks", storage="bf16", blocks_on_gpu=10)
    assert blocks.parts["expert_weights"] == 2 * (n - 40 * blk) + 2 * blk * 11  # 10 resident + 1 streamed
    assert wan.estimate_memory(stats, offload="none", storage="bf16", attention="math").peak > 300 * wan.GB


# ------------------------------------------------------------------------------------- offload modes
def test_block_swap_streams_the_blocks_and_keeps_outputs():
    src = comfy_source("2.2")
    ref = wan.load_wan(src, dtype="fp32", device="cpu")
    bb = wan.load_wan(src, dtype="fp32", device="cpu", offload="blocks", blocks_on_gpu=1)
    assert bb.extra["memory"] == {"offload": "blocks", "storage": "float32", "blocks_on_gpu": 1}
    pl = bb.extra["placement"]
    for name in ("high_noise", "low_noise"):
        with wan.use_expert(bb, name) as model:
            y = _step(model, "2.2")
        assert torch.equal(y, _step(wan.expert_modules(ref)[name], "2.2"))
        c = pl.swaps[name].counters
        assert (c.moves_in, c.moves_out) == (1, 1)  # 2 blocks, 1 resident: block 1 in and out once per step
        assert pl.swaps[name].streamed == [1]
    assert [n for n, _ in pl.log] == ["high_noise", "low_noise"] and pl.resident == {"low_noise"}
    assert not pl.swaps["high_noise"].active  # parked: its hooks no longer move anything


def test_block_swap_with_a_copying_mover_is_exact():
    """A mover that copies every tensor (what a real device transfer does) leaves the outputs bitwise equal."""
    from interplay.models.backbones.offload import BlockSwap

    bb = wan.load_wan(comfy_source("2.1-t2v"), dtype="fp32", device="cpu")
    ref = _step(bb.denoiser, "2.1-t2v")

    def copying(module, device):
        for p in module.parameters():
            p.data = p.data.clone()
    swap = BlockSwap(bb.denoiser, bb.denoiser.blocks, 0, "cpu", "cpu", mover=copying)
    swap.activate()
    assert torch.equal(_step(bb.denoiser, "2.1-t2v"), ref)
    assert (swap.counters.moves_in, swap.counters.moves_out) == (2, 2)
    swap.remove()


def test_model_offload_parks_the_idle_expert_and_swaps_once_at_the_boundary():
    from interplay.models.sampling import flow

    bb = wan.load_wan(comfy_source("2.2"), dtype="fp32", device="cpu", offload="model")
    assert bb.offload == "model" and bb.extra["placement"].resident == set()
    sch = flow.make_scheduler("unipc", shift=5.0, steps=10)
    plan = flow.expert_plan(sch.timesteps, bb.extra["boundary"])
    used = []
    for name in plan:
        with wan.use_expert(bb, name) as m:
            used.append(m)
    log = bb.extra["placement"].log
    assert [n for n, _ in log] == ["high_noise", "low_noise"]  # activated once, switched once
    assert all(s >= 0 for _, s in log)
    assert used[0] is bb.denoiser and used[-1] is bb.experts["low_noise"]
    assert wan.park_experts(bb) >= 0 and bb.extra["placement"].resident == set()


# -------------------------------------------------------------------------------------------- encoders
def _pipe(variant, monkeypatch):
    import diffusers.pipelines.wan.pipeline_wan_i2v as pmod
    from diffusers import WanImageToVideoPipeline

    monkeypatch.setattr(pmod, "prompt_clean", lambda s: s)  # the pipeline's cleaner needs the optional ftfy
    return WanImageToVideoPipeline.from_pretrained(tiny.tiny_wan_dir(variant=variant))


def _image(h, w, seed=3):
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(h, w, 3, generator=g) * 255).round().to(torch.uint8)
    return Image.fromarray(x.numpy()), x.float()[None] / 255


@pytest.mark.parametrize("variant,size", [("2.2", 32), ("2.1", 32), ("2.2-ti2v", 64)])
def test_encoders_and_i2v_condition_are_the_pipelines(variant, size, loaded, monkeypatch):
    pipe = _pipe(variant, monkeypatch)
    bb = loaded[variant][1]  # loaded from the ComfyUI single files
    prompts = ["a red box pushes the blue cylinder", "the camera moves left"]
    with torch.no_grad():
        ref = pipe._get_t5_prompt_embeds(prompts, max_sequence_length=512, device="cpu", dtype=torch.float32)
    assert torch.equal(wan.encode_prompt(bb, prompts), ref)
    pil, img = _image(size, size)
    frames = 5
    cond = wan.i2v_condition(bb, img, frames, size, size)
    px = pipe.video_processor.preprocess(pil, height=size, width=size).to(torch.float32)
    with torch.no_grad():
        out = pipe.prepare_latents(px, 1, bb.extra["latent_channels"], size, size, frames, torch.float32, "cpu",
                                   torch.Generator().manual_seed(0))
    if variant == "2.2-ti2v":
        _, latent_condition, first_frame_mask = out
        assert cond.condition is None and torch.equal(cond.first_frame_latent, latent_condition)
        assert torch.equal(cond.first_frame_mask, first_frame_mask)
        # the pipeline's per-token timesteps: (first_frame_mask[0][0][:, ::2, ::2] * t).flatten()
        assert torch.equal(cond.token_mask[0] * 700, (first_frame_mask[0][0][:, ::2, ::2] * 700).flatten())
        assert cond.token_mask.shape == (1, 2 * 2 * 2) and cond.token_mask[0, :4].sum() == 0
    else:
        _, condition = out
        assert cond.condition.shape == (1, 20, 2, size // 8, size // 8)
        assert torch.equal(cond.condition, condition)
        assert cond.condition[0, :4, 0].min() == 1 and cond.condition[0, :4, 1].max() == 0
    if variant == "2.1":
        with torch.no_grad():
            clip = pipe.encode_image(pil, device="cpu")
        assert torch.equal(cond.image_embeds, clip) and clip.shape == (1, 50, 32)
    else:
        assert cond.image_embeds is None


def test_decode_is_the_pipelines_and_tiling_runs_diffusers_tiles(loaded):
    bb = loaded["2.2"][1]
    g = torch.Generator().manual_seed(4)
    lat = torch.randn(1, 16, 2, 4, 4, generator=g)
    out = wan.decode_latents(bb, lat)
    mean = torch.tensor(wan.WAN21_LATENTS_MEAN).view(1, 16, 1, 1, 1)
    std = torch.tensor(wan.WAN21_LATENTS_STD).view(1, 16, 1, 1, 1)
    with torch.no_grad():  # WanImageToVideoPipeline: latents / (1 / std) + mean, decode, x / 2 + 0.5 clamped
        ref = bb.vae.decode(lat / (1.0 / std) + mean).sample
    assert out.shape == (1, 5, 32, 32, 3)
    assert torch.equal(out, (ref / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 4, 1))
    # tiles of 32 px every 16 px over a 48 px frame: 2 x 2 tiles blended; the untiled decode differs only there
    lat = torch.randn(1, 16, 1, 6, 6, generator=g)
    full = wan.decode_latents(bb, lat)
    bb.vae.enable_tiling(tile_sample_min_height=32, tile_sample_min_width=32, tile_sample_stride_height=16,
                         tile_sample_stride_width=16)
    try:
        tiled = wan.decode_latents(bb.replace(vae_tiling=True), lat)
    finally:
        bb.vae.disable_tiling()
    assert tiled.shape == full.shape == (1, 1, 48, 48, 3) and not torch.equal(tiled, full)
    assert float((tiled - full).abs().mean()) < 0.1  # random weights: a sanity bound; the tiling is diffusers'


def test_frame_and_size_rules_are_named(loaded):
    bb, ti2v = loaded["2.2"][1], loaded["2.2-ti2v"][1]
    with pytest.raises(ValueError, match=r"num_frames must be 4k\+1.*got 80. Use 81"):
        wan.check_frames(bb, 80, 480, 832)
    with pytest.raises(ValueError, match="multiples of 16"):
        wan.check_frames(bb, 81, 480, 840)
    with pytest.raises(ValueError, match="multiples of 32"):
        wan.check_frames(ti2v, 121, 704, 1296)
    wan.check_frames(ti2v, 121, 704, 1280)
    assert wan.latent_shape(bb, 81, 480, 832) == (1, 16, 21, 60, 104)
    assert wan.latent_shape(ti2v, 121, 704, 1280) == (1, 48, 31, 44, 80)
    with pytest.raises(ValueError, match=r"'image' must be \[B, 32, 32, 3\]"):
        wan.i2v_condition(bb, torch.zeros(1, 16, 16, 3), 5, 32, 32)
    with pytest.raises(ValueError, match="text-to-video"):
        wan.i2v_condition(loaded["2.1-t2v"][1], torch.zeros(1, 32, 32, 3), 5, 32, 32)
    with pytest.raises(ValueError, match="no CLIP image branch"):
        wan.encode_image(bb, torch.zeros(1, 32, 32, 3))


def test_old_diffusers_is_refused_with_the_fix(monkeypatch):
    import diffusers

    monkeypatch.setattr(diffusers, "__version__", "0.34.0")
    with pytest.raises(ImportError, match=r"diffusers >= 0.35.*0.34.0.*pip install -U"):
        wan.load_wan(comfy_source("2.2"), device="cpu")


def test_kit_config_metadata_is_checked_against_shapes(tmp_path):
    src = comfy_source("2.1-t2v")
    sd = load_file(str(src["transformer"]))
    lie = tmp_path / "lie.safetensors"
    save_file(sd, str(lie), metadata={"config": json.dumps({"attention_head_dim": 16, "in_channels": 36})})
    _refused(src | {"transformer": lie}, "says in_channels=36", "weights have 16")
    assert wan_convert.transformer_key_to_diffusers("head.head.weight") == "proj_out.weight"
