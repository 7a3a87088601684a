"""CogVideoX backbone (5B-I2V first; T2V 2B/5B and 1.5 where the diffusers classes allow): loading, encoders,
frame rules and the rotary embeddings shared by the sampler, the trainer, the control branch and the benchmark.

Sources accepted by :func:`load_cogvideox`:
- a diffusers folder (``transformer/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``), e.g.
  ``models/diffusers/CogVideoX-5b-I2V``;
- single files ``dict(transformer=, vae=, text_encoder=, tokenizer=None)`` with diffusers/HF key names (the
  ComfyUI-CogVideoXWrapper and ComfyUI ``t5xxl`` layouts). Configs come, in this order, from the file's
  safetensors metadata (``config`` JSON), a sidecar ``<stem>.json``, else they are inferred from the tensor
  shapes (module notes in tests/kit/tiny.py) with the release values for what shapes cannot tell.

Text encoder choice: the pack loads its own T5 from ``text_encoders`` instead of taking ComfyUI's CLIP input,
because the engine must run headless (CLI, tests, trainer) and CogVideoX needs the exact pipeline behaviour
(padding to 226 tokens, no attention mask, no prompt weighting); ComfyUI's T5 wrapper differs in padding and
would tie the engine to comfy internals. The T5 is freed from the GPU after encoding when offload is "model".

Shapes: B batch, F pixel frames, f latent frames = (F-1)/4+1, C latent channels (16), h, w = H/8, W/8,
T text tokens (226), D text width (4096).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .. import runtime
from .base import (Backbone, ForwardContext, InputLayout, attention_slots, cast, heads_qkv, on_device,
                   run_after_block, run_after_embed, run_begin, run_end)

# The release configs (diffusers CogVideoXTransformer3DModel / AutoencoderKLCogVideoX of THUDM/CogVideoX-5b-I2V).
# The I2V release uses rotary AND learned positional embeddings (patch_embed.pos_embedding is in its weights),
# which pins its resolution to 480x720 (diffusers raises otherwise).
COGVIDEOX_5B_I2V = dict(
    num_attention_heads=48, attention_head_dim=64, in_channels=32, out_channels=16, flip_sin_to_cos=True,
    freq_shift=0, time_embed_dim=512, ofs_embed_dim=None, text_embed_dim=4096, num_layers=42, dropout=0.0,
    attention_bias=True, sample_width=90, sample_height=60, sample_frames=49, patch_size=2, patch_size_t=None,
    temporal_compression_ratio=4, max_text_seq_length=226, activation_fn="gelu-approximate",
    timestep_activation_fn="silu", norm_elementwise_affine=True, norm_eps=1e-5, spatial_interpolation_scale=1.875,
    temporal_interpolation_scale=1.0, use_rotary_positional_embeddings=True,
    use_learned_positional_embeddings=True,
)
COGVIDEOX_5B = dict(COGVIDEOX_5B_I2V, in_channels=16, use_learned_positional_embeddings=False)
COGVIDEOX_2B = dict(COGVIDEOX_5B, num_attention_heads=30, num_layers=30, use_rotary_positional_embeddings=False)
COGVIDEOX_VAE = dict(
    in_channels=3, out_channels=3,
    down_block_types=("CogVideoXDownBlock3D",) * 4, up_block_types=("CogVideoXUpBlock3D",) * 4,
    block_out_channels=(128, 256, 256, 512), latent_channels=16, layers_per_block=3, act_fn="silu",
    norm_eps=1e-6, norm_num_groups=32, temporal_compression_ratio=4, sample_height=480, sample_width=720,
    scaling_factor=0.7, invert_scale_latents=False,
)
# CogVideoXDDIMScheduler of the 5B(-I2V) release (2B: snr_shift_scale 3.0).
SCHEDULER_DEFAULTS = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, clip_sample_range=1.0,
    num_train_timesteps=1000, prediction_type="v_prediction", rescale_betas_zero_snr=True, sample_max_value=1.0,
    set_alpha_to_one=True, snr_shift_scale=1.0, steps_offset=0, timestep_spacing="trailing", trained_betas=None,
)
NEGATIVE_DEFAULT = ""

# Tiny configs for tests and the CPU benchmark run (same classes; head_dim 16 so 3-D RoPE splits 4/6/6).
TINY_TRANSFORMER = dict(
    num_attention_heads=2, attention_head_dim=16, in_channels=8, out_channels=4, time_embed_dim=16,
    text_embed_dim=32, num_layers=2, sample_width=8, sample_height=8, sample_frames=9, patch_size=2,
    use_rotary_positional_embeddings=True, use_learned_positional_embeddings=False,
)
TINY_VAE = dict(
    in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 3,
    up_block_types=("CogVideoXUpBlock3D",) * 3, block_out_channels=(8, 16, 16), latent_channels=4,
    layers_per_block=1, norm_num_groups=4, temporal_compression_ratio=4, sample_height=32, sample_width=32,
    scaling_factor=0.7,
)


# --------------------------------------------------------------------------------------------- loading
def _dtype_of(dtype, device):
    """Returns (compute dtype, storage dtype or None). "fp8_e4m3fn"/"fp8_e5m2" = fp8 storage, upcast compute."""
    if isinstance(dtype, str) and dtype.startswith("fp8"):
        storage = {"fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}.get(dtype)
        if storage is None:
            raise ValueError(f"CogVideoX loader: weight_dtype {dtype!r} unknown; use fp8_e4m3fn or fp8_e5m2")
        return runtime.default_dtype(device), storage
    if dtype is None:
        return runtime.default_dtype(device), None
    if isinstance(dtype, str):
        return runtime.parse_dtype(dtype, device), None
    if dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        return runtime.default_dtype(device), dtype
    return dtype, None


def load_cogvideox(source, *, dtype=None, device=None, offload: str = "none", vae_tiling: bool = False,
                   variant: str | None = None, transformer=None) -> Backbone:
    """Load CogVideoX as a frozen :class:`Backbone` (family "cogvideox").

    Args:
        source: a diffusers folder, or ``dict(transformer=, vae=, text_encoder=, tokenizer=None)`` of single files
            (the tokenizer: a folder; when None it is looked for beside the text encoder file).
        dtype: torch dtype or "auto"/"bf16"/"fp16"/"fp32"/"fp8_e4m3fn" (fp8: transformer weights stored in fp8,
            each layer upcast to the compute dtype when it runs; halves weight memory, no speedup).
        offload: "none" keeps everything on ``device``; "model" parks T5, transformer and VAE on the offload
            device and moves each in only for its stage (text encoding, denoising, decoding).
        vae_tiling: tile VAE encode/decode (bounded memory for 480x720 and up).
        transformer: a CogVideoXTransformer3DModel already built (e.g. the main weights of a released whole
            transformer folder that also holds a branch); the source's own transformer is then never read, and
            in single-files mode the transformer file may be omitted.
    """
    if offload not in ("none", "model"):
        raise ValueError(f"CogVideoX loader: offload must be 'none' or 'model'; got {offload!r}")
    device = torch.device(device) if device is not None else runtime.compute_device()
    compute, storage = _dtype_of(dtype, device)
    if isinstance(source, dict):
        parts = _load_single_files(source, transformer=transformer)
        src = {"kind": "single_files", **{k: str(v) for k, v in source.items() if v is not None}}
    else:
        path = Path(source)
        if not path.is_dir():
            raise FileNotFoundError(
                f"CogVideoX loader: {str(path)!r} is not a diffusers folder. Put the model under "
                f"{[str(p) for p in runtime.model_folders('diffusers')]} (folder with transformer/, vae/, "
                "text_encoder/, tokenizer/, scheduler/) or use the single-files mode.")
        parts = _load_diffusers_folder(path, transformer=transformer)
        src = {"kind": "diffusers", "path": str(path)}
    return assemble_backbone(*parts, dtype=compute, storage_dtype=storage, device=device, offload=offload,
                             vae_tiling=vae_tiling, variant=variant, source=src)


def _load_diffusers_folder(path: Path, transformer=None):
    from diffusers import AutoencoderKLCogVideoX, CogVideoXTransformer3DModel
    from transformers import AutoTokenizer, T5EncoderModel

    need = ("vae", "text_encoder", "tokenizer") if transformer is not None else (
        "transformer", "vae", "text_encoder", "tokenizer")
    missing = [p for p in need if not (path / p).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"CogVideoX loader: diffusers folder {path} lacks {', '.join(p + '/' for p in missing)} (expected "
            "transformer/, vae/, text_encoder/, tokenizer/, scheduler/ as in THUDM/CogVideoX-5b-I2V). Copy the "
            "whole release folder, or use the single-files mode.")
    from ..weights import from_pretrained

    if transformer is None:
        transformer = from_pretrained(CogVideoXTransformer3DModel, path / "transformer",
                                      "CogVideoX loader (transformer)")
    vae = from_pretrained(AutoencoderKLCogVideoX, path / "vae", "CogVideoX loader (vae)")
    text_encoder = from_pretrained(T5EncoderModel, path / "text_encoder", "CogVideoX loader (text_encoder)")
    tokenizer = AutoTokenizer.from_pretrained(path / "tokenizer")
    sched = dict(SCHEDULER_DEFAULTS)
    sc = path / "scheduler" / "scheduler_config.json"
    if sc.is_file():
        cfg = json.loads(sc.read_text())
        sched.update({k: v for k, v in cfg.items() if k in SCHEDULER_DEFAULTS})
    return transformer, vae, text_encoder, tokenizer, sched


# ----------------------------------------------------------------------------------------- single files
_KINDS = {"transformer": "diffusion_models", "vae": "vae", "text_encoder": "text_encoders"}
# Per part: config keys the weights' shapes pin down (a file's config must agree with them) and bounds for the
# rest, so a single file's metadata or sidecar cannot size a model (or a loop) the file does not hold.
SHAPE_KEYS = {
    "transformer": ("num_attention_heads", "attention_head_dim", "in_channels", "out_channels", "time_embed_dim",
                    "text_embed_dim", "num_layers", "patch_size", "patch_size_t", "use_learned_positional_embeddings"),
    "vae": ("block_out_channels", "latent_channels", "layers_per_block"),
    "text_encoder": ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads",
                     "relative_attention_num_buckets", "feed_forward_proj"),
}
CONFIG_BOUNDS = {
    "transformer": dict(num_attention_heads=(1, 256), attention_head_dim=(1, 1024), in_channels=(1, 1024),
                        out_channels=(1, 1024), time_embed_dim=(1, 1 << 16), text_embed_dim=(1, 1 << 16),
                        num_layers=(1, 256), patch_size=(1, 64), patch_size_t=(1, 64), ofs_embed_dim=(1, 1 << 16),
                        sample_width=(1, 4096), sample_height=(1, 4096), sample_frames=(1, 4096),
                        temporal_compression_ratio=(1, 16), max_text_seq_length=(1, 4096), dropout=(0, 1),
                        norm_eps=(0, 1), spatial_interpolation_scale=(0, 1e4), temporal_interpolation_scale=(0, 1e4),
                        freq_shift=(-1e4, 1e4)),
    "vae": dict(in_channels=(1, 64), out_channels=(1, 64), block_out_channels=(1, 8192), latent_channels=(1, 1024),
                layers_per_block=(1, 16), norm_num_groups=(1, 1024), temporal_compression_ratio=(1, 16),
                sample_height=(1, 8192), sample_width=(1, 8192), norm_eps=(0, 1), scaling_factor=(0, 1e3)),
    "text_encoder": dict(vocab_size=(1, 1 << 20), d_model=(1, 1 << 16), d_kv=(1, 4096), d_ff=(1, 1 << 18),
                         num_layers=(1, 256), num_heads=(1, 256), relative_attention_num_buckets=(1, 4096),
                         relative_attention_max_distance=(1, 1 << 16), dropout_rate=(0, 1)),
}


def _read_config(path, role: str):
    """(header as meta tensors, config or None) of a single file: only its header is read. The config comes from
    the ``config`` metadata, else a sidecar ``<stem>.json``; a bad one is named with the file."""
    from ..weights import metadata_json, read_header, read_json_config

    path = Path(path)
    if not path.is_file():
        kind = _KINDS[role]
        raise FileNotFoundError(f"CogVideoX loader: {role} file {str(path)!r} not found; searched "
                                f"{[str(p) for p in runtime.model_folders(kind)]}. Put it in models/{kind}/.")
    what = f"CogVideoX loader ({role})"
    header, meta = read_header(path, what)
    cfg = None
    if "config" in meta:
        cfg = metadata_json(meta, "config", path, what)
    else:
        side = path.with_suffix(".json")
        if side.is_file():
            cfg = read_json_config(side, what)
    return header, cfg


def _file_config(role: str, path, inferred: dict, cfg: dict | None) -> dict:
    """The inferred config with the file's own config over it: the file's may fill in what shapes cannot tell
    (within CONFIG_BOUNDS) but never contradict a shape (SHAPE_KEYS)."""
    from ..weights import check_config

    pinned = {k: inferred[k] for k in SHAPE_KEYS[role] if k in inferred}
    return check_config({**inferred, **(cfg or {})}, CONFIG_BOUNDS[role], path, f"CogVideoX loader ({role})",
                        inferred=pinned)


def _read_weights(path, role: str) -> dict:
    from ..weights import read_safetensors

    return read_safetensors(path, f"CogVideoX loader ({role})")[0]


def _strip_prefix(sd: dict, prefixes) -> dict:
    for p in prefixes:
        if sd and all(k.startswith(p) for k in sd):
            return {k[len(p):]: v for k, v in sd.items()}
    return sd


def _max_index(sd, prefix):
    idx = [int(k[len(prefix):].split(".")[0]) for k in sd if k.startswith(prefix)]
    return max(idx) + 1 if idx else 0


def infer_transformer_config(sd: dict, path="transformer") -> dict:
    """CogVideoXTransformer3DModel config from diffusers-named weights (release values for the rest)."""
    need = ("patch_embed.proj.weight", "patch_embed.text_proj.weight", "time_embedding.linear_1.weight",
            "proj_out.weight", "transformer_blocks.0.attn1.norm_q.weight")
    missing = [k for k in need if k not in sd]
    if missing:
        sat = any(k.startswith(("model.diffusion_model.", "mixins.", "transformer.layers.")) for k in sd)
        raise ValueError(
            f"CogVideoX loader: {path} is not a diffusers-layout CogVideoX transformer (missing {missing[:3]}). "
            + ("It looks like an original SAT checkpoint: convert it with diffusers' "
               "scripts/convert_cogvideox_to_diffusers.py first." if sat else
               "Expected keys like patch_embed.proj.weight [3072, 32, 2, 2] (5B I2V)."))
    pe = sd["patch_embed.proj.weight"]
    inner = pe.shape[0]
    head_dim = sd["transformer_blocks.0.attn1.norm_q.weight"].shape[0]
    patch_t = None
    if pe.ndim == 4:
        in_ch, p = pe.shape[1], pe.shape[2]
    else:  # CogVideoX 1.5: Linear over p_t*p*p*C (p_t = 2, p = 2 in the releases)
        p, patch_t = 2, 2
        in_ch = pe.shape[1] // (p * p * patch_t)
    out = sd["proj_out.weight"].shape[0] // (p * p * (patch_t or 1))
    learned = "patch_embed.pos_embedding" in sd
    cfg = dict(COGVIDEOX_5B_I2V if learned else COGVIDEOX_5B)
    cfg.update(num_attention_heads=inner // head_dim, attention_head_dim=head_dim, in_channels=in_ch,
               out_channels=out, time_embed_dim=sd["time_embedding.linear_1.weight"].shape[0],
               text_embed_dim=sd["patch_embed.text_proj.weight"].shape[1],
               num_layers=_max_index(sd, "transformer_blocks."), patch_size=p, patch_size_t=patch_t,
               use_learned_positional_embeddings=learned,
               # 2B (1920 wide) uses sin-cos positions; 5B, 1.5 and the pack's own models use RoPE
               use_rotary_positional_embeddings=inner != 1920 or patch_t is not None)
    if "ofs_embedding.linear_1.weight" in sd:
        cfg["ofs_embed_dim"] = sd["ofs_embedding.linear_1.weight"].shape[0]
    if patch_t is not None:
        cfg.update(patch_bias="patch_embed.proj.bias" in sd, sample_height=300, sample_width=170, sample_frames=81)
    return cfg


def infer_vae_config(sd: dict, path="vae") -> dict:
    if "encoder.conv_in.conv.weight" not in sd:
        raise ValueError(f"CogVideoX loader: {path} is not a diffusers-layout CogVideoX VAE (missing "
                         "encoder.conv_in.conv.weight [128, 3, 3, 3, 3]). Use the release vae/ file.")
    n = _max_index(sd, "encoder.down_blocks.")
    chans = tuple(sd[f"encoder.down_blocks.{i}.resnets.0.conv2.conv.weight"].shape[0] for i in range(n))
    cfg = dict(COGVIDEOX_VAE)
    cfg.update(down_block_types=("CogVideoXDownBlock3D",) * n, up_block_types=("CogVideoXUpBlock3D",) * n,
               block_out_channels=chans, latent_channels=sd["encoder.conv_out.conv.weight"].shape[0] // 2,
               layers_per_block=_max_index(sd, "encoder.down_blocks.0.resnets."))
    if any(c % 32 for c in chans):  # groups are not in the weights; release uses 32
        cfg["norm_num_groups"] = max(g for g in (16, 8, 4, 2, 1) if all(c % g == 0 for c in chans))
    return cfg


def infer_t5_config(sd: dict, path="text_encoder") -> dict:
    if "shared.weight" not in sd and "encoder.embed_tokens.weight" not in sd:
        raise ValueError(f"CogVideoX loader: {path} is not an HF T5 encoder file (missing shared.weight "
                         "[32128, 4096]). Use t5xxl_fp16.safetensors / t5xxl_fp8_e4m3fn.safetensors.")
    emb = sd.get("shared.weight", sd.get("encoder.embed_tokens.weight"))
    q = sd["encoder.block.0.layer.0.SelfAttention.q.weight"]
    rel = sd["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
    heads = rel.shape[1]
    gated = "encoder.block.0.layer.1.DenseReluDense.wi_0.weight" in sd
    wi = sd["encoder.block.0.layer.1.DenseReluDense.wi_0.weight" if gated else
            "encoder.block.0.layer.1.DenseReluDense.wi.weight"]
    buckets = rel.shape[0]
    return dict(vocab_size=emb.shape[0], d_model=emb.shape[1], d_kv=q.shape[0] // heads, d_ff=wi.shape[0],
                num_layers=_max_index(sd, "encoder.block."), num_heads=heads,
                relative_attention_num_buckets=buckets,
                # not in the weights: T5 v1.1 uses 128 for 32 buckets; small test models 2x buckets
                relative_attention_max_distance=128 if buckets == 32 else 2 * buckets,
                feed_forward_proj="gated-gelu" if gated else "relu", is_encoder_decoder=False, use_cache=False,
                dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)


def _load_checked(module, sd: dict, path, fix: str):
    """Strict load with a message naming the file, the first mismatches with expected shapes and the fix."""
    own = module.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    wrong = [(k, tuple(sd[k].shape), tuple(own[k].shape)) for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        lines = [f"CogVideoX loader: {path} does not match the model it describes."]
        if wrong:
            lines.append("shape mismatches (key: file -> expected): " + "; ".join(
                f"{k}: {a} -> {b}" for k, a, b in wrong[:4]))
        if missing:
            lines.append(f"missing {len(missing)} keys, e.g. " + ", ".join(
                f"{k} {tuple(own[k].shape)}" for k in missing[:4]))
        if unexpected:
            lines.append(f"{len(unexpected)} unexpected keys, e.g. {unexpected[:4]}")
        lines.append(fix)
        raise ValueError(" ".join(lines))
    # fp8 files are upcast here (compute never runs in fp8); assign keeps the file's tensors without a copy
    sd = {k: v.to(torch.bfloat16) if v.dtype in (torch.float8_e4m3fn, torch.float8_e5m2) else v
          for k, v in sd.items()}
    module.load_state_dict(sd, strict=True, assign=True)
    for name, b in module.named_buffers():
        if b.is_meta and not name.endswith("pos_embedding"):  # non-persistent buffers are not in files; only positional tables exist in these models
            raise RuntimeError(f"CogVideoX loader: buffer {name} was not restored from {path}")
    return module


def _find_tokenizer(text_encoder_path: Path, tokenizer):
    from transformers import AutoTokenizer

    cands = [Path(tokenizer)] if tokenizer else []
    te = Path(text_encoder_path)
    cands += [te.parent / f"{te.stem}_tokenizer", te.parent / "tokenizer", te.parent / "t5_tokenizer"]
    shipped = runtime.comfy_resource("text_encoders", "t5_tokenizer")  # ComfyUI ships T5's tokenizer files
    if shipped is not None:
        cands.append(shipped)
    for c in cands:
        if c.is_dir():
            return AutoTokenizer.from_pretrained(c)
    raise FileNotFoundError(f"CogVideoX loader: no T5 tokenizer found for {te.name}; searched "
                            f"{[str(c) for c in cands]}. Put the tokenizer/ folder of the CogVideoX release "
                            f"beside the text encoder as {te.stem}_tokenizer/.")


def _load_single_files(files: dict, transformer=None):
    """Each part: header first, config checked against the shapes and bounds, model built on the meta device and
    compared key by key (weights.build_checked), and only then the weights read and put in place."""
    from diffusers import AutoencoderKLCogVideoX, CogVideoXTransformer3DModel
    from transformers import T5Config, T5EncoderModel

    from ..weights import build_checked

    for role in ("vae", "text_encoder") if transformer is not None else ("transformer", "vae", "text_encoder"):
        if not files.get(role):
            raise ValueError(f"CogVideoX loader: single-files mode needs a {role} file; got none")
    t_pre, v_pre = ("model.diffusion_model.", "transformer."), ("vae.", "first_stage_model.")

    if transformer is None:  # else a prebuilt one (e.g. from a released PAM folder)
        path = files["transformer"]
        header, cfg = _read_config(path, "transformer")
        header = _strip_prefix(header, t_pre)
        cfg = _file_config("transformer", path, infer_transformer_config(header, path), cfg)
        fix = "Fix: pick the transformer of the same release (5B-I2V: 42 blocks, in_channels 32)."
        transformer = build_checked(lambda: CogVideoXTransformer3DModel(**cfg), header, path,
                                    "CogVideoX loader (transformer)", optional=("pos_embedding",), fix=fix)
        _load_checked(transformer, _strip_prefix(_read_weights(path, "transformer"), t_pre), path, fix)
        _fix_buffers(transformer)

    path = files["vae"]
    header, vcfg = _read_config(path, "vae")
    header = _strip_prefix(header, v_pre)
    vcfg = _file_config("vae", path, infer_vae_config(header, path), vcfg)
    fix = "Fix: use the CogVideoX VAE (16 latent channels, 4x time)."
    vae = build_checked(lambda: AutoencoderKLCogVideoX(**vcfg), header, path, "CogVideoX loader (vae)", fix=fix)
    _load_checked(vae, _strip_prefix(_read_weights(path, "vae"), v_pre), path, fix)

    path = files["text_encoder"]
    header, tcfg = _read_config(path, "text_encoder")

    def t5_keys(sd):
        sd = {k: v for k, v in sd.items() if not k.startswith("decoder.")}
        sd.setdefault("shared.weight", sd.get("encoder.embed_tokens.weight"))
        sd.setdefault("encoder.embed_tokens.weight", sd["shared.weight"])
        return sd

    header = {k: v for k, v in header.items() if not k.startswith("decoder.")}
    tcfg = _file_config("text_encoder", path, infer_t5_config(header, path), tcfg)
    header = t5_keys(header)
    fix = "Fix: use a T5-v1.1-XXL encoder (t5xxl_fp16.safetensors), 24 blocks of width 4096."
    te = build_checked(lambda: T5EncoderModel(T5Config(**tcfg)), header, path, "CogVideoX loader (text_encoder)",
                       fix=fix)
    _load_checked(te, t5_keys(_read_weights(path, "text_encoder")), path, fix)
    tok = _find_tokenizer(Path(files["text_encoder"]), files.get("tokenizer"))
    sched = dict(SCHEDULER_DEFAULTS)
    tc = transformer.config
    if tc.num_attention_heads * tc.attention_head_dim == 1920:
        sched["snr_shift_scale"] = 3.0
    return transformer, vae, te, tok, sched


def _fix_buffers(transformer, cfg=None):
    """Positional tables left on the meta device (2B's non-persistent sin-cos positions, or a file saved without
    its frozen table) are not in files; rebuild them, as at init, after a meta build."""
    pe = transformer.patch_embed
    b = getattr(pe, "pos_embedding", None)
    if isinstance(b, torch.Tensor) and b.is_meta:
        pe.pos_embedding = pe._get_positional_embeddings(pe.sample_height, pe.sample_width, pe.sample_frames)


def default_layout(in_channels: int, latent_channels: int) -> InputLayout:
    """The input layout of a released CogVideoX transformer: T2V (noise only) or I2V (noise ++ image latent). Any
    other width (a widened projection) must be declared by whoever widened it, never guessed."""
    if in_channels == latent_channels:
        return InputLayout((("noise", latent_channels),))
    if in_channels == 2 * latent_channels:
        return InputLayout((("noise", latent_channels), ("image", latent_channels)))
    raise ValueError(f"CogVideoX: the transformer takes {in_channels} input channels with a {latent_channels}-channel "
                     f"VAE, which is neither text-to-video ({latent_channels}) nor image-to-video "
                     f"({2 * latent_channels}); a widened projection must come with its input layout (e.g. the "
                     "file's interplay_layout metadata)")


def assemble_backbone(transformer, vae, text_encoder, tokenizer, scheduler_config=None, *, dtype,
                      storage_dtype=None, device, offload="none", vae_tiling=False, variant=None,
                      source=None, layout: InputLayout | None = None) -> Backbone:
    """Freeze, cast and place the parts; returns the bundle. The VAE runs in fp32 unless dtype is bf16/fp16
    on a GPU (the release decodes in bf16). ``layout`` defaults to :func:`default_layout`."""
    device = torch.device(device)
    for m in (transformer, vae, text_encoder):
        if m is not None:
            m.requires_grad_(False).eval()
    home = runtime.offload_device() if offload == "model" else device
    vae_dtype = dtype if device.type != "cpu" else torch.float32
    for m, dt in ((transformer, dtype), (vae, vae_dtype), (text_encoder, dtype)):
        if m is None:
            continue
        p = next(m.parameters())
        if p.dtype != dt:
            cast(m, dtype=dt)
        if p.device != home:
            m.to(home)
    if storage_dtype is not None:
        transformer.enable_layerwise_casting(storage_dtype=storage_dtype, compute_dtype=dtype)
    if vae_tiling:
        enable_vae_tiling(vae)
    cfg = transformer.config
    latent = int(vae.config.latent_channels)
    layout = layout or default_layout(int(cfg.in_channels), latent)
    if layout.channels != cfg.in_channels:
        raise ValueError(f"CogVideoX: input layout {layout.parts} has {layout.channels} channels; the transformer "
                         f"takes {cfg.in_channels}")
    if variant is None:
        variant = detect_variant(cfg, layout)
    n_down = len(vae.config.block_out_channels) - 1
    return Backbone(
        family="cogvideox", variant=variant, denoiser=transformer, vae=vae, text_encoder=text_encoder,
        tokenizer=tokenizer, scheduler_config=dict(scheduler_config or SCHEDULER_DEFAULTS), dtype=dtype,
        storage_dtype=storage_dtype, device=device, offload_device=runtime.offload_device(), offload=offload,
        vae_tiling=bool(vae_tiling), source=dict(source or {}),
        extra={"vae_scale_factor_spatial": 2 ** n_down,
               "vae_scale_factor_temporal": int(vae.config.temporal_compression_ratio),
               "scaling_factor": float(vae.config.scaling_factor),
               "invert_scale_latents": bool(getattr(vae.config, "invert_scale_latents", False)),
               "vae_dtype": vae_dtype, "i2v": layout.has("image"), "latent_channels": latent},
        layout=layout,
    )


def enable_vae_tiling(vae) -> None:
    """Turn on diffusers' tiled encode/decode (bounded memory at 480x720 and up). Its tile arithmetic assumes the
    release geometry; :func:`decode_latents`/:func:`encode_frames` check the output size and redo a call untiled
    where it does not line up (small test VAEs)."""
    vae.enable_tiling()


def detect_variant(cfg, layout: InputLayout | None = None) -> str:
    inner = cfg.num_attention_heads * cfg.attention_head_dim
    i2v = layout.has("image") if layout is not None else cfg.in_channels == 2 * cfg.out_channels
    if inner == 3072:
        name = "cogvideox1.5-5b" if cfg.patch_size_t else "cogvideox-5b"
    elif inner == 1920:
        name = "cogvideox-2b"
    else:
        name = "tiny"
    return name + ("-i2v" if i2v and name != "tiny" else "")


def random_backbone(size: str = "tiny", *, dtype=torch.float32, device="cpu", seed: int = 0,
                    with_text_encoder: bool = True) -> Backbone:
    """Random-weight CogVideoX of the real classes: "tiny" (tests) or "full" (real 5B-I2V transformer and VAE,
    tiny T5: step benchmarks). "full" is built on ``device`` directly (no CPU copy)."""
    from diffusers import AutoencoderKLCogVideoX, CogVideoXTransformer3DModel

    if size not in ("tiny", "full"):
        raise ValueError(f"random_backbone: size must be tiny or full; got {size!r}")
    device = torch.device(device)
    torch.manual_seed(seed)
    tcfg = TINY_TRANSFORMER if size == "tiny" else COGVIDEOX_5B_I2V
    vcfg = TINY_VAE if size == "tiny" else COGVIDEOX_VAE
    with torch.device(device):
        transformer = cast(CogVideoXTransformer3DModel(**tcfg), dtype)
        vae = cast(AutoencoderKLCogVideoX(**vcfg), dtype if device.type != "cpu" else torch.float32)
    te = tok = None
    if with_text_encoder:
        te, tok = _tiny_t5(tcfg["text_embed_dim"])
    return assemble_backbone(transformer, vae, te, tok, None, dtype=dtype, device=device,
                             variant="random-" + size, source={"kind": "random"})


def _tiny_t5(d_model: int):
    """A tiny T5 + the pack's local tokenizer (no download), for random backbones."""
    from transformers import T5Config, T5EncoderModel

    from ..tokenizer import build_tokenizer

    tok = build_tokenizer()
    cfg = T5Config(vocab_size=len(tok), d_model=d_model, d_kv=16, d_ff=2 * d_model, num_layers=1, num_heads=2,
                   relative_attention_num_buckets=8, relative_attention_max_distance=16, dropout_rate=0.0,
                   feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False)
    return T5EncoderModel(cfg).eval(), tok


# ------------------------------------------------------------------------------------------ frame rules
def latent_frames(bb: Backbone, num_frames: int) -> int:
    return (num_frames - 1) // bb.extra.get("vae_scale_factor_temporal", 4) + 1


def frame_count_ok(n: int, temporal: int = 4) -> bool:
    """The CogVideoX frame rule: F = t*k+1 whose latent count f = k+1 is odd (the causal VAE decodes
    f -> t(f-1)+1 only for odd f), i.e. 8k+1 at the released t = 4; for 1.5 (patch_size_t 2) the same rule."""
    return n >= 1 and (n - 1) % temporal == 0 and ((n - 1) // temporal + 1) % 2 == 1


def allowed_frames(bb: Backbone, upto: int = 81) -> list[int]:
    """Pixel frame counts the backbone takes (:func:`frame_count_ok` with its VAE's time compression)."""
    t = bb.extra.get("vae_scale_factor_temporal", 4)
    return [n for n in range(1, upto + 1) if frame_count_ok(n, t)]


def check_frames(bb: Backbone, num_frames: int, height: int, width: int, node: str = "CogVideoX") -> None:
    """Raise ValueError naming the input and the allowed values."""
    ok = allowed_frames(bb, max(81, num_frames))
    if num_frames not in ok:
        near = min(ok, key=lambda n: abs(n - num_frames))
        t = bb.extra.get("vae_scale_factor_temporal", 4)
        raise ValueError(f"{node}: num_frames must be one of {ok[:8]}... ({2 * t}k+1: the VAE compresses time {t}x "
                         f"and keeps frame 0 apart); got {num_frames}. Use {near}.")
    s = bb.extra.get("vae_scale_factor_spatial", 8) * bb.denoiser.config.patch_size
    if height % s or width % s:
        raise ValueError(f"{node}: height and width must be multiples of {s}; got {height}x{width}. Resize the "
                         f"image, e.g. to {max(s, round(height / s) * s)}x{max(s, round(width / s) * s)}.")
    cfg = bb.denoiser.config
    if cfg.use_learned_positional_embeddings:
        vs = bb.extra.get("vae_scale_factor_spatial", 8)
        hh, ww = cfg.sample_height * vs, cfg.sample_width * vs
        if (height, width) != (hh, ww):
            raise ValueError(f"{node}: this model ({bb.variant}) has learned positional embeddings and only takes "
                             f"{hh}x{ww} (HxW); got {height}x{width}. Resize/crop the image to {ww}x{hh} (WxH).")


# ------------------------------------------------------------------------------------------- rotary
def rotary_embeddings(config, grid_f: int, grid_h: int, grid_w: int, device=None):
    """3-D RoPE (cos, sin) [f*h/p*w/p, head_dim] exactly as the diffusers pipelines build it, for a latent grid
    of ``grid_f`` frames and ``grid_h`` x ``grid_w`` latent pixels; None when the model has no RoPE."""
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    if not config.use_rotary_positional_embeddings:
        return None
    p, p_t = config.patch_size, config.patch_size_t
    gh, gw = grid_h // p, grid_w // p
    base_w, base_h = config.sample_width // p, config.sample_height // p
    if p_t is None:
        th, tw = base_h, base_w
        r = gh / gw
        if r > th / tw:
            rh, rw = th, int(round(th / gh * gw))
        else:
            rw, rh = tw, int(round(tw / gw * gh))
        top, left = int(round((th - rh) / 2.0)), int(round((tw - rw) / 2.0))
        return get_3d_rotary_pos_embed(embed_dim=config.attention_head_dim,
                                       crops_coords=((top, left), (top + rh, left + rw)), grid_size=(gh, gw),
                                       temporal_size=grid_f, device=device)
    return get_3d_rotary_pos_embed(embed_dim=config.attention_head_dim, crops_coords=None, grid_size=(gh, gw),
                                   temporal_size=(grid_f + p_t - 1) // p_t, grid_type="slice",
                                   max_size=(base_h, base_w), device=device)


_ROPE_CACHE: dict = {}


def rotary_for(transformer, grid_f: int, grid_h: int, grid_w: int, device):
    """Cached :func:`rotary_embeddings` (the same tensors every step)."""
    cfg = transformer.config
    if not cfg.use_rotary_positional_embeddings:
        return None
    key = (cfg.attention_head_dim, cfg.patch_size, cfg.patch_size_t, cfg.sample_height, cfg.sample_width,
           grid_f, grid_h, grid_w, str(device))
    if key not in _ROPE_CACHE:
        if len(_ROPE_CACHE) > 16:
            _ROPE_CACHE.clear()
        _ROPE_CACHE[key] = rotary_embeddings(cfg, grid_f, grid_h, grid_w, device=device)
    return _ROPE_CACHE[key]


# ---------------------------------------------------------------------------------- the family forward
def attention_layers(bb_or_transformer) -> dict:
    """Attention layer name -> module: ``transformer_blocks.<i>.attn1`` (joint text+video attention, text first)."""
    tr = getattr(bb_or_transformer, "denoiser", bb_or_transformer)
    return {f"transformer_blocks.{i}.attn1": b.attn1 for i, b in enumerate(tr.transformer_blocks)}


def attention_layer(i: int) -> str:
    return f"transformer_blocks.{i}.attn1"


class SlotProcessor:
    """diffusers' CogVideoXAttnProcessor2_0 with the attention call handed to a chain (the contract's slot).

    The sequence is text first, then video; q and k get QK-norm per head and RoPE on the video part, exactly as
    diffusers; ``chain(mask)`` returns call(q, k, v) -> [B, heads, N, d]."""

    def __init__(self, chain):
        self.chain = chain

    def __call__(self, attn, hidden_states, encoder_hidden_states, attention_mask=None, image_rotary_emb=None):
        from diffusers.models.embeddings import apply_rotary_emb

        n_text = encoder_hidden_states.size(1)
        hidden_states = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        b, n, _ = hidden_states.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, n, b)
            attention_mask = attention_mask.view(b, attn.heads, -1, attention_mask.shape[-1])
        q, k, v = heads_qkv(attn, attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states))
        if image_rotary_emb is not None:
            q[:, :, n_text:] = apply_rotary_emb(q[:, :, n_text:], image_rotary_emb)
            if not attn.is_cross_attention:
                k[:, :, n_text:] = apply_rotary_emb(k[:, :, n_text:], image_rotary_emb)
        out = self.chain(attention_mask)(q, k, v)
        out = out.transpose(1, 2).flatten(2)
        out = attn.to_out[1](attn.to_out[0](out))
        enc, out = out.split([n_text, out.size(1) - n_text], dim=1)
        return out, enc


def forward(bb: Backbone, latent_in: torch.Tensor, timestep, prompt_embeds: torch.Tensor, *,
            attachments=(), rows: dict | None = None, image_rotary_emb=None, ofs: torch.Tensor | None = None,
            step: tuple[int, int] | None = None) -> torch.Tensor:
    """The CogVideoX denoiser forward with the contract's doors -> model output [B,f,C,h,w] (v-prediction).

    Runs the diffusers ``CogVideoXTransformer3DModel`` submodules in the order and with the ops of its own
    ``forward`` (equal to it with no attachments); doors: begin, after_embed (video tokens), after_block i (text
    stream in ``ctx.text``), attention slots on ``transformer_blocks.<i>.attn1``, end.

    Args:
        latent_in: [B,f,C_in,h,w] assembled by ``bb.layout`` (I2V: noisy latent ++ image latent).
        timestep: [B] (or a scalar) 0..999; CogVideoX blocks take one timestep per sample.
        prompt_embeds: [B|1,T,D].
        attachments: :class:`Attachment` objects (control branches, observers), applied in order.
        rows: batch row name -> slice (from the guided step), for attachments that act on some rows.
        image_rotary_emb: (cos, sin) from :func:`rotary_embeddings`; computed (and cached) when None.
        ofs: CogVideoX 1.5 I2V offset embedding input (the pipeline passes 2.0); defaulted for such models.
        step: (i, num_steps) of the sampler, so attachments with a step range know whether they run.
    Returns the output in the compute dtype (callers take ``.float()`` for the scheduler).
    """
    tr = bb.denoiser
    cfg = tr.config
    dtype = bb.dtype
    b, f, c, h, w = latent_in.shape
    x = latent_in.to(dtype)
    enc_in = prompt_embeds.to(dtype)
    if enc_in.shape[0] != b:
        enc_in = enc_in.expand(b, *enc_in.shape[1:])
    t = torch.as_tensor(timestep, device=x.device)
    if t.ndim == 0:
        t = t.expand(b)
    if t.ndim != 1:
        raise ValueError(f"CogVideoX forward: timestep must be [B] (one per sample: CogVideoX blocks have no "
                         f"per-token timesteps); got shape {tuple(t.shape)}")
    if image_rotary_emb is None:
        image_rotary_emb = rotary_for(tr, f, h, w, x.device)
    atts = list(attachments)
    p = cfg.patch_size
    ctx = ForwardContext(bb=bb, latent_in=x, timestep=t, text_in=enc_in, rotary=image_rotary_emb,
                         grid=(f if cfg.patch_size_t is None else (f + cfg.patch_size_t - 1) // cfg.patch_size_t,
                               h // p, w // p),
                         rows=dict(rows) if rows else {"all": slice(None)}, extra={"ofs": ofs, "step": step})
    run_begin(ctx, atts)

    # 1. time embedding (fp32 sinusoid cast to the compute dtype, as diffusers)
    emb = tr.time_embedding(tr.time_proj(t).to(dtype=dtype), None)
    if tr.ofs_embedding is not None:
        if ofs is None:
            ofs = x.new_full((1,), 2.0)
        emb = emb + tr.ofs_embedding(tr.ofs_proj(ofs).to(dtype=dtype))
    ctx.temb = emb
    # 2. patch embedding (text ++ video tokens)
    hs = tr.embedding_dropout(tr.patch_embed(enc_in, x))
    n_text = enc_in.shape[1]
    enc, hs = hs[:, :n_text], hs[:, n_text:]
    ctx.text = enc
    hs = run_after_embed(ctx, atts, hs)
    # 3. blocks, each followed by the after_block door
    grad_ckpt = torch.is_grad_enabled() and tr.gradient_checkpointing
    with attention_slots(ctx, atts, attention_layers(tr) if atts else {},
                         lambda name, chain: SlotProcessor(chain)) as slotted:
        for i, block in enumerate(tr.transformer_blocks):
            if grad_ckpt and attention_layer(i) not in slotted:  # a slotted block is not recomputed without its slot
                hs, enc = tr._gradient_checkpointing_func(block, hs, enc, emb, image_rotary_emb, None)
            else:
                hs, enc = block(hidden_states=hs, encoder_hidden_states=enc, temb=emb,
                                image_rotary_emb=image_rotary_emb)
            ctx.text = enc
            if atts:
                hs = run_after_block(ctx, atts, i, hs)
    hs = tr.norm_final(hs)
    # 4. output
    hs = tr.proj_out(tr.norm_out(hs, temb=emb))
    # 5. unpatchify
    p_t = cfg.patch_size_t
    if p_t is None:
        out = hs.reshape(b, f, h // p, w // p, -1, p, p)
        out = out.permute(0, 1, 4, 2, 5, 3, 6).flatten(5, 6).flatten(3, 4)
    else:
        out = hs.reshape(b, (f + p_t - 1) // p_t, h // p, w // p, -1, p_t, p, p)
        out = out.permute(0, 1, 5, 4, 2, 6, 3, 7).flatten(6, 7).flatten(4, 5).flatten(1, 2)
    return run_end(ctx, atts, out) if atts else out


def compile_blocks(bb: Backbone, attachments=(), **kw) -> None:
    """Regional compile: every CogVideoXBlock of the backbone (and of the attachments' modules) compiled in place
    (``nn.Module.compile``; one graph reused by all blocks of a shape). ``kw`` go to torch.compile."""
    from diffusers.models.transformers.cogvideox_transformer_3d import CogVideoXBlock

    kw.setdefault("dynamic", False)
    mods = list(bb.denoiser.transformer_blocks)
    for att in attachments:
        for m in att.modules():
            mods += [b for b in m.modules() if isinstance(b, CogVideoXBlock)]
    for m in mods:
        m.compile(**kw)


# -------------------------------------------------------------------------------------------- encoders
@torch.no_grad()
def encode_prompt(bb: Backbone, prompts: list[str], max_length: int | None = None) -> torch.Tensor:
    """T5 embeddings as the pipeline makes them (pad to ``max_length``, no mask): -> [B,T,D] on bb.device.
    ``max_length`` defaults to the transformer's ``max_text_seq_length`` (226 for the released models), the
    length it was trained with."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if max_length is None:
        max_length = int(getattr(bb.denoiser.config, "max_text_seq_length", 226) or 226)
    if bb.text_encoder is None or bb.tokenizer is None:
        raise ValueError("CogVideoX: this backbone has no text encoder; load one (text_encoders/) to encode prompts")
    ids = bb.tokenizer(list(prompts), padding="max_length", max_length=max_length, truncation=True,
                       add_special_tokens=True, return_tensors="pt").input_ids
    te = bb.text_encoder
    with on_device(bb, te):
        p = next(te.parameters())
        emb = te(ids.to(p.device))[0]
    return emb.to(bb.device, bb.dtype)


def _vae_in(bb, x):
    vae = bb.vae
    p = next(vae.parameters())
    return x.to(p.device, p.dtype)


def _scale(bb):
    return bb.extra.get("scaling_factor", 0.7)


@torch.no_grad()
def encode_frames(bb: Backbone, frames: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """frames [B,F,H,W,3] 0..1 -> latents [B,f,C,h,w] times the scaling factor (posterior mode, or a sample
    drawn with ``generator``)."""
    x = frames.permute(0, 4, 1, 2, 3).float() * 2 - 1  # [B,3,F,H,W]
    vae = bb.vae
    with on_device(bb, vae):
        dist = vae.encode(_vae_in(bb, x)).latent_dist
        vs = bb.extra.get("vae_scale_factor_spatial", 8)
        if vae.use_tiling and tuple(dist.mean.shape[-2:]) != (x.shape[-2] // vs, x.shape[-1] // vs):
            vae.disable_tiling()  # tiles do not line up at this geometry (see enable_vae_tiling)
            dist = vae.encode(_vae_in(bb, x)).latent_dist
        lat = dist.mode() if generator is None else _sample(dist, generator)
    lat = lat.permute(0, 2, 1, 3, 4).float()
    lat = lat / _scale(bb) if bb.extra.get("invert_scale_latents") else lat * _scale(bb)
    return lat.to(bb.device, bb.dtype)


def _sample(dist, generator):
    noise = torch.randn(dist.mean.shape, generator=generator, dtype=torch.float32).to(dist.mean.device,
                                                                                      dist.mean.dtype)
    return dist.mean + dist.std * noise


@torch.no_grad()
def image_condition(bb: Backbone, image: torch.Tensor, num_latent_frames: int,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """I2V conditioning: image [B,H,W,3] 0..1 -> [B,f,C,h,w] = (scaled frame-0 latent, zeros...).

    With a generator the latent is sampled like the diffusers pipeline (mean + std * N(0,1) from the CPU
    generator), otherwise the posterior mode.
    """
    lat0 = encode_frames(bb, image[:, None], generator=generator)  # [B,1,C,h,w]
    pad = lat0.new_zeros(lat0.shape[0], num_latent_frames - 1, *lat0.shape[2:])
    out = torch.cat([lat0, pad], dim=1)
    p_t = bb.denoiser.config.patch_size_t
    if p_t is not None and out.shape[1] % p_t:  # 1.5: the pipeline prepends frame 0 to reach a multiple
        out = torch.cat([out[:, : out.shape[1] % p_t], out], dim=1)
    return out


@torch.no_grad()
def decode_latents(bb: Backbone, latents: torch.Tensor) -> torch.Tensor:
    """latents [B,f,C,h,w] (scaled) -> frames [B,F,H,W,3] float32 0..1 on CPU (tiled when bb.vae_tiling)."""
    z = latents.permute(0, 2, 1, 3, 4)
    z = z * _scale(bb) if bb.extra.get("invert_scale_latents") else z / _scale(bb)
    vae = bb.vae
    outs = []
    with on_device(bb, vae):
        vs = bb.extra.get("vae_scale_factor_spatial", 8)
        for i in range(z.shape[0]):  # one video at a time bounds memory
            out = vae.decode(_vae_in(bb, z[i:i + 1])).sample
            if vae.use_tiling and tuple(out.shape[-2:]) != (z.shape[-2] * vs, z.shape[-1] * vs):
                vae.disable_tiling()  # tiles do not line up at this geometry (see enable_vae_tiling)
                out = vae.decode(_vae_in(bb, z[i:i + 1])).sample
            outs.append(out.float().cpu())
    x = torch.cat(outs)  # [B,3,F,H,W]
    return ((x + 1) / 2).clamp(0, 1).permute(0, 2, 3, 4, 1).contiguous()


def latent_preview_rgb(latent: torch.Tensor):
    """Cheap RGB preview of one latent frame [C,h,w] (first 3 channels, normalised) as a PIL image."""
    from PIL import Image

    lat = latent.float().cpu()[:3]
    lat = (lat - lat.mean()) / (lat.std() + 1e-6)
    rgb = ((lat.permute(1, 2, 0) * 0.25 + 0.5).clamp(0, 1) * 255).byte().numpy()
    return Image.fromarray(rgb)


def save_diffusers_folder(bb: Backbone, path) -> Path:
    """Write the bundle as a CogVideoXImageToVideoPipeline folder (tests, conversions)."""
    path = Path(path)
    bb.denoiser.save_pretrained(path / "transformer")
    bb.vae.save_pretrained(path / "vae")
    bb.text_encoder.save_pretrained(path / "text_encoder")
    bb.tokenizer.save_pretrained(path / "tokenizer")
    (path / "scheduler").mkdir(parents=True, exist_ok=True)
    (path / "scheduler" / "scheduler_config.json").write_text(
        json.dumps({"_class_name": "CogVideoXDDIMScheduler", **bb.scheduler_config}, indent=2))
    i2v = bb.extra.get("i2v", True)
    (path / "model_index.json").write_text(json.dumps({
        "_class_name": "CogVideoXImageToVideoPipeline" if i2v else "CogVideoXPipeline",
        "scheduler": ["diffusers", "CogVideoXDDIMScheduler"], "text_encoder": ["transformers", "T5EncoderModel"],
        "tokenizer": ["transformers", "T5TokenizerFast"], "transformer": ["diffusers", "CogVideoXTransformer3DModel"],
        "vae": ["diffusers", "AutoencoderKLCogVideoX"]}, indent=2))
    return path
