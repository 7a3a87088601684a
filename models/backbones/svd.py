"""Stable Video Diffusion (img2vid) backbone: loading, encoders, the UNet forward with control residuals.

Sources accepted by :func:`load_svd`:
- a diffusers folder (``unet/``, ``vae/``, ``image_encoder/``, ``feature_extractor/``, ``scheduler/``);
- a single original-layout checkpoint (``svd.safetensors`` / ``svd_xt.safetensors`` as ComfyUI keeps them in
  ``checkpoints/``), converted in memory by :mod:`.svd_convert`; the CLIP ViT-H image encoder is taken from the
  file when present, else from a separate ``clip_vision`` file.

Shapes: B batch, F frames, C latent channels (4), h, w latent size (H/8, W/8), H, W pixels.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import runtime
from .base import (Attachment, Backbone, ForwardContext, InputLayout, attention_slots, cast, heads_qkv, on_device,
                   run_after_block, run_after_embed, run_begin, run_end)

from .svd_configs import SVD_SCHEDULER_DEFAULTS, SVD_UNET_CONFIG, SVD_VAE_CONFIG, VIT_H_CONFIG  # noqa: F401

# Tiny configs of the same classes for tests and the CPU benchmark: 4 blocks (so the 12-skip layout and the
# residual multiplicities are the real ones), 32 channels (GroupNorm needs multiples of 32).
TINY_UNET_CONFIG = dict(
    sample_size=8, in_channels=8, out_channels=4,
    down_block_types=SVD_UNET_CONFIG["down_block_types"], up_block_types=SVD_UNET_CONFIG["up_block_types"],
    block_out_channels=(32, 32, 32, 32), addition_time_embed_dim=8, projection_class_embeddings_input_dim=24,
    layers_per_block=2, cross_attention_dim=16, transformer_layers_per_block=1, num_attention_heads=(2, 2, 2, 2),
    num_frames=4,
)
TINY_VAE_CONFIG = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
    block_out_channels=(32, 32, 32, 32), layers_per_block=1, latent_channels=4, sample_size=64,
)
TINY_CLIP_CONFIG = dict(
    hidden_size=32, intermediate_size=37, projection_dim=16, num_hidden_layers=1, num_attention_heads=2,
    image_size=32, patch_size=8, hidden_act="gelu",
)


# --------------------------------------------------------------------------------------------- loading
def _dtype_of(dtype, device):
    if dtype is None:
        return runtime.default_dtype(device)
    if isinstance(dtype, str):
        return runtime.parse_dtype(dtype, device)
    return dtype


def load_svd(source, *, dtype=None, device=None, offload: str = "none", clip_vision=None,
             decode_chunk: int = 14, variant: str | None = None) -> Backbone:
    """Load SVD as a frozen :class:`Backbone` (family "svd").

    Args:
        source: a diffusers folder, or a single original-layout ``.safetensors`` checkpoint.
        dtype: compute dtype (torch dtype or "auto"/"bf16"/"fp16"/"fp32"); the VAE stays fp32 when its config
            asks for ``force_upcast`` (SVD's does), since fp16 VAE encodes overflow.
        offload: "none" keeps everything on ``device``; "model" parks each part on the offload device and
            moves it in only while it runs.
        clip_vision: CLIP ViT-H file (HF or open_clip layout) for single files that lack the image encoder.
        decode_chunk: frames decoded per VAE call (memory vs speed).
    """
    if offload not in ("none", "model"):
        raise ValueError(f"SVD loader: offload must be 'none' or 'model'; got {offload!r}")
    device = torch.device(device) if device is not None else runtime.compute_device()
    dtype = _dtype_of(dtype, device)
    path = Path(source)
    if path.is_dir():
        parts = _load_diffusers_folder(path)
        kind = "diffusers"
    elif path.is_file():
        from .svd_convert import load_single_file

        parts = load_single_file(path, clip_vision=clip_vision)
        kind = "single_file"
    else:
        raise FileNotFoundError(f"SVD loader: {str(path)!r} is neither a diffusers folder nor a checkpoint file")
    unet, vae, image_encoder, image_processor, sched = parts
    return assemble_backbone(unet, vae, image_encoder, image_processor, sched, dtype=dtype, device=device,
                             offload=offload, decode_chunk=decode_chunk, variant=variant,
                             source={"kind": kind, "path": str(path),
                                     "clip_vision": str(clip_vision) if clip_vision else None})


def _load_diffusers_folder(path: Path):
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    missing = [p for p in ("unet", "vae", "image_encoder") if not (path / p).is_dir()]
    if missing:
        raise FileNotFoundError(f"SVD loader: diffusers folder {path} lacks {', '.join(missing)}/ "
                                "(expected unet/, vae/, image_encoder/, feature_extractor/, scheduler/)")
    from ..weights import from_pretrained

    unet = from_pretrained(UNetSpatioTemporalConditionModel, path / "unet", "SVD loader (unet)")
    vae = from_pretrained(AutoencoderKLTemporalDecoder, path / "vae", "SVD loader (vae)")
    image_encoder = from_pretrained(CLIPVisionModelWithProjection, path / "image_encoder", "SVD loader (image_encoder)")
    fe = path / "feature_extractor"
    image_processor = CLIPImageProcessor.from_pretrained(fe) if fe.is_dir() else None
    sched = dict(SVD_SCHEDULER_DEFAULTS)
    sc = path / "scheduler" / "scheduler_config.json"
    if sc.is_file():
        cfg = json.loads(sc.read_text())
        sched.update({k: cfg[k] for k in ("prediction_type", "sigma_min", "sigma_max", "use_karras_sigmas",
                                          "timestep_type") if k in cfg and cfg[k] is not None})
    return unet, vae, image_encoder, image_processor, sched


def assemble_backbone(unet, vae, image_encoder, image_processor=None, scheduler_config=None, *, dtype,
                      device, offload="none", decode_chunk=14, variant=None, source=None) -> Backbone:
    """Freeze, cast and place the parts; returns the bundle."""
    device = torch.device(device)
    for m in (unet, vae, image_encoder):
        m.requires_grad_(False).eval()
    vae_dtype = torch.float32 if getattr(vae.config, "force_upcast", True) else dtype
    home = runtime.offload_device() if offload == "model" else device
    for m, dt in ((unet, dtype), (image_encoder, dtype), (vae, vae_dtype)):
        p = next(m.parameters())
        if p.dtype != dt:
            cast(m, dtype=dt)
        if p.device != home:
            m.to(home)
    if variant is None:
        big = unet.config.block_out_channels[0] >= 320
        variant = ("svd-xt" if unet.config.num_frames >= 25 else "svd") if big else "tiny"
    mean, std = _clip_norm(image_processor)
    size = int(image_encoder.config.image_size)
    return Backbone(
        family="svd", variant=variant, denoiser=unet, vae=vae, image_encoder=image_encoder,
        image_processor=image_processor, scheduler_config=dict(scheduler_config or SVD_SCHEDULER_DEFAULTS),
        dtype=dtype, device=device, offload_device=runtime.offload_device(), offload=offload,
        source=dict(source or {}),
        extra={"vae_scale_factor": 2 ** (len(vae.config.block_out_channels) - 1), "num_frames":
               int(unet.config.num_frames), "clip_size": size, "clip_mean": mean, "clip_std": std,
               "decode_chunk": int(decode_chunk), "vae_dtype": vae_dtype},
        layout=InputLayout((("noise", int(unet.config.out_channels)),
                            ("image", int(unet.config.in_channels) - int(unet.config.out_channels)))),
    )


def _clip_norm(processor):
    mean = getattr(processor, "image_mean", None) or [0.48145466, 0.4578275, 0.40821073]
    std = getattr(processor, "image_std", None) or [0.26862954, 0.26130258, 0.27577711]
    return [float(x) for x in mean], [float(x) for x in std]


def random_backbone(size: str = "tiny", *, dtype=torch.float32, device="cpu", seed: int = 0) -> Backbone:
    """A random-weight SVD of the real classes: "tiny" (tests), "full" (real UNet, tiny VAE/CLIP: step
    benchmarks) or "full_all" (real UNet, VAE and ViT-H: end-to-end sample timing)."""
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    device = torch.device(device)

    if size not in ("tiny", "full", "full_all"):
        raise ValueError(f"random_backbone: size must be tiny, full or full_all; got {size!r}")
    ucfg = dict(TINY_UNET_CONFIG if size == "tiny" else SVD_UNET_CONFIG)
    vcfg = SVD_VAE_CONFIG if size == "full_all" else TINY_VAE_CONFIG
    ccfg = VIT_H_CONFIG if size == "full_all" else dict(TINY_CLIP_CONFIG, projection_dim=ucfg["cross_attention_dim"])
    with torch.device(device):
        unet = UNetSpatioTemporalConditionModel(**ucfg)
        vae = AutoencoderKLTemporalDecoder(**vcfg)
        clip = CLIPVisionModelWithProjection(CLIPVisionConfig(**ccfg))
    return assemble_backbone(unet, vae, clip, None, None, dtype=dtype, device=device,
                             variant="random-" + size, source={"kind": "random"})


def check_frames(bb: Backbone, num_frames: int, height: int, width: int, node: str = "SVD") -> None:
    """Raise ValueError naming what is wrong: H and W multiples of 64 (VAE x8, three UNet downsamples)."""
    mult = bb.extra.get("vae_scale_factor", 8) * 2 ** (len(bb.denoiser.config.block_out_channels) - 1)
    if height % mult or width % mult:
        raise ValueError(f"{node}: height and width must be multiples of {mult}; got {height}x{width}. "
                         f"Resize the image, e.g. to {max(mult, round(height / mult) * mult)}x"
                         f"{max(mult, round(width / mult) * mult)}.")
    if num_frames < 2:
        raise ValueError(f"{node}: num_frames must be at least 2; got {num_frames}")


# -------------------------------------------------------------------------------------------- encoders
def encode_image_embeds(bb: Backbone, image: torch.Tensor) -> torch.Tensor:
    """CLIP image embedding, one token per image: image [B,H,W,3] in 0..1 -> [B,1,D]."""
    x = image.permute(0, 3, 1, 2).float() * 2 - 1
    size = bb.extra.get("clip_size", 224)
    try:  # the release's exact antialiased resize (applied in [-1,1], like the pipeline)
        from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import (
            _resize_with_antialiasing,
        )

        x = _resize_with_antialiasing(x, (size, size))
    except ImportError:  # pragma: no cover
        x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=True)
    x = (x + 1) / 2
    mean = torch.tensor(bb.extra["clip_mean"]).view(1, 3, 1, 1)
    std = torch.tensor(bb.extra["clip_std"]).view(1, 3, 1, 1)
    x = (x - mean) / std
    enc = bb.image_encoder
    with on_device(bb, enc):
        p = next(enc.parameters())
        emb = enc(x.to(p.device, p.dtype)).image_embeds
    return emb.unsqueeze(1).to(bb.device, bb.dtype)


def encode_image_latent(bb: Backbone, image: torch.Tensor, noise_aug: float = 0.02,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """The concat-conditioning latent: image [B,H,W,3] 0..1 -> VAE mode of (2x-1 + aug*N(0,1)), [B,C,h,w].

    Not multiplied by the scaling factor (as the release). Noise comes from a CPU generator.
    """
    x = image.permute(0, 3, 1, 2).float() * 2 - 1
    if noise_aug > 0:
        x = x + noise_aug * torch.randn(x.shape, generator=generator, dtype=torch.float32)
    vae = bb.vae
    with on_device(bb, vae):
        p = next(vae.parameters())
        lat = vae.encode(x.to(p.device, p.dtype)).latent_dist.mode()
    return lat.to(bb.device, bb.dtype)


def encode_frames(bb: Backbone, frames: torch.Tensor) -> torch.Tensor:
    """Training targets: frames [B,F,H,W,3] 0..1 -> latents [B,F,C,h,w] times the scaling factor."""
    b, f = frames.shape[:2]
    x = frames.flatten(0, 1).permute(0, 3, 1, 2).float() * 2 - 1
    vae = bb.vae
    chunk = max(1, int(bb.extra.get("decode_chunk", 14)))
    outs = []
    with on_device(bb, vae):
        p = next(vae.parameters())
        for i in range(0, x.shape[0], chunk):
            outs.append(vae.encode(x[i:i + chunk].to(p.device, p.dtype)).latent_dist.mode())
    lat = torch.cat(outs) * vae.config.scaling_factor
    return lat.view(b, f, *lat.shape[1:]).to(bb.device, bb.dtype)


def decode_latents(bb: Backbone, latents: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """latents [B,F,C,h,w] (scaled) -> frames [B,F,H,W,3] float32 0..1 on CPU, decoded ``chunk`` frames a call."""
    b, f = latents.shape[:2]
    vae = bb.vae
    chunk = int(chunk or bb.extra.get("decode_chunk", 14)) or f
    z = latents.flatten(0, 1) / vae.config.scaling_factor
    out = []
    with on_device(bb, vae):
        p = next(vae.parameters())
        for i in range(0, z.shape[0], chunk):
            zc = z[i:i + chunk].to(p.device, p.dtype)
            out.append(vae.decode(zc, num_frames=zc.shape[0]).sample.float().cpu())
    x = torch.cat(out)
    x = ((x + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)
    return x.reshape(b, f, *x.shape[1:])


def added_time_ids(fps_id: float, motion_bucket_id: float, noise_aug: float, batch: int = 1,
                   device=None, dtype=torch.float32) -> torch.Tensor:
    """The SVD micro-conditions [B,3] = [fps id, motion bucket, noise augmentation] (released order)."""
    t = torch.tensor([[float(fps_id), float(motion_bucket_id), float(noise_aug)]], dtype=dtype, device=device)
    return t.repeat(batch, 1)


# -------------------------------------------------------------------------------------- UNet forward
RESIDUAL_RULES = ("quirk", "quirk_loop", "once")


def skip_block_index(config) -> list[int]:
    """For each UNet skip tensor (conv_in first), the index of the down block that produced it."""
    lpb = config.layers_per_block
    n = len(config.block_out_channels)
    lpb = [lpb] * n if isinstance(lpb, int) else list(lpb)
    owners = [0]
    for i in range(n):
        owners += [i] * lpb[i]
        if i < n - 1:
            owners.append(i)  # downsampler output
    return owners


def residual_multiplicity(config, rule: str = "quirk") -> list[int]:
    """How many times each skip receives its residual under ``rule``.

    "quirk" (the released InterDyn UNet, which re-adds every residual after each down block): the number of
    down blocks from the producing block through the last one, [4,4,4,4,3,3,3,2,2,2,1,1] for SVD.
    "once": plain ControlNet, 1 each.
    """
    owners = skip_block_index(config)
    if rule == "once":
        return [1] * len(owners)
    if rule in ("quirk", "quirk_loop"):
        n = len(config.block_out_channels)
        return [n - o for o in owners]
    raise ValueError(f"residual rule must be one of {RESIDUAL_RULES}; got {rule!r}")


def time_and_context(m, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor,
                     added_time_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The SVD UNet's step embedding (time + micro-conditions) and image context, one row per frame:
    -> (emb [B*F, E], encoder_hidden_states [B*F, 1, D]). ``m`` is the UNet or the InterDyn branch (the same
    time_proj/time_embedding/add_time_proj/add_embedding modules)."""
    batch, frames = sample.shape[:2]
    t = timestep
    if not torch.is_tensor(t):
        t = torch.tensor([t], dtype=torch.float32, device=sample.device)
    elif t.ndim == 0:
        t = t[None].to(sample.device)
    t = t.expand(batch)
    emb = m.time_embedding(m.time_proj(t).to(sample.dtype))
    tids = m.add_time_proj(added_time_ids.flatten()).reshape(batch, -1).to(emb.dtype)
    emb = emb + m.add_embedding(tids)
    emb = emb.repeat_interleave(frames, dim=0, output_size=batch * frames)
    ehs = encoder_hidden_states.repeat_interleave(frames, dim=0, output_size=batch * frames)
    return emb, ehs


def add_skip_residuals(skips: list, residuals, rule: str, config) -> list:
    """skip_i + k_i * r_i with k from :func:`residual_multiplicity` ("quirk": equal, up to rounding, to the released
    UNet's in-loop re-adding, at one add per skip; "once": standard ControlNet)."""
    if len(residuals) != len(skips):
        raise ValueError(f"control branch gave {len(residuals)} residuals; the UNet has {len(skips)} skips")
    ks = residual_multiplicity(config, rule)
    return [s + (a if k == 1 else a * k) for s, a, k in zip(skips, residuals, ks)]


class SkipResiduals(Attachment):
    """ControlNet residuals on the UNet: ``down`` joins the skip tensors by ``rule`` and ``mid`` is added once to
    the mid-block output ("quirk_loop": the released InterDyn loop literally, re-adding after each down block)."""

    def __init__(self, down, mid, rule: str = "quirk"):
        if rule not in RESIDUAL_RULES:
            raise ValueError(f"residual rule must be one of {RESIDUAL_RULES}; got {rule!r}")
        self.down, self.mid, self.rule = (list(down) if down is not None else None), mid, rule

    def after_block(self, ctx, i, hidden):
        n = ctx.extra["n_down"]
        if self.down is not None and i < n:
            if self.rule == "quirk_loop":
                k = len(self.down)
                ctx.skips[:] = [s + a for s, a in zip(ctx.skips, self.down)] + ctx.skips[k:]
            elif i == n - 1:
                ctx.skips[:] = add_skip_residuals(ctx.skips, self.down, self.rule, ctx.extra["unet_config"])
        if i == n and self.mid is not None:
            hidden = hidden + self.mid
        return hidden


def attention_layers(bb_or_unet) -> dict:
    """Attention layer name -> module: every diffusers Attention in the UNet by its module path (spatial and
    temporal blocks, self- and cross-attention), e.g. ``down_blocks.0.attentions.0.transformer_blocks.0.attn1``."""
    from diffusers.models.attention_processor import Attention

    unet = getattr(bb_or_unet, "denoiser", bb_or_unet)
    return {n: m for n, m in unet.named_modules() if isinstance(m, Attention)}


class SlotProcessor:
    """diffusers' AttnProcessor2_0 with the attention call handed to a chain (the contract's slot)."""

    def __init__(self, chain):
        self.chain = chain

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        ndim = hidden_states.ndim
        if ndim == 4:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        b, n, _ = hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, n, b)
            attention_mask = attention_mask.view(b, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        q = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        q, k, v = heads_qkv(attn, q, attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states))
        out = self.chain(attention_mask)(q, k, v)
        out = out.transpose(1, 2).flatten(2).to(q.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if ndim == 4:
            out = out.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def unet_forward(unet, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor,
                 added_time_ids: torch.Tensor, down_residuals=None, mid_residual=None,
                 residual_rule: str = "quirk", *, attachments=(), bb: Backbone | None = None, rows: dict | None = None,
                 step: tuple[int, int] | None = None) -> torch.Tensor:
    """The SVD UNet forward with the contract's doors (and, as a shorthand, ControlNet residuals).

    Same maths as diffusers ``UNetSpatioTemporalConditionModel.forward``. Doors: begin; after_embed (the
    ``conv_in`` features); after_block i for the down blocks (0..n-1, with the skip tensors in ``ctx.skips``), the
    mid block (n) and the up blocks (n+1...); attention slots on every Attention by module path; end.
    ``down_residuals``/``mid_residual``/``residual_rule`` add a :class:`SkipResiduals` attachment (first).

    Args: sample [B,F,8,h,w]; timestep scalar or [B] (c_noise); encoder_hidden_states [B,1,D];
    added_time_ids [B,3]; down_residuals: sequence of [B*F,C_i,h_i,w_i]; mid_residual [B*F,C,h',w'].
    Returns [B,F,4,h,w].
    """
    atts = list(attachments)
    if down_residuals is not None or mid_residual is not None:
        atts.insert(0, SkipResiduals(down_residuals, mid_residual, residual_rule))
    elif residual_rule not in RESIDUAL_RULES:
        raise ValueError(f"residual rule must be one of {RESIDUAL_RULES}; got {residual_rule!r}")
    up_factor = 2 ** unet.num_upsamplers
    forward_upsample_size = any(s % up_factor != 0 for s in sample.shape[-2:])
    batch, frames = sample.shape[:2]
    n_down = len(unet.down_blocks)
    ctx = ForwardContext(bb=bb if bb is not None else _bare(unet), latent_in=sample,
                         timestep=torch.as_tensor(timestep), text_in=encoder_hidden_states,
                         rows=dict(rows) if rows else {"all": slice(None)},
                         extra={"time_ids": added_time_ids, "step": step, "unet_config": unet.config,
                                "n_down": n_down})
    if atts:
        run_begin(ctx, atts)

    # 1. time + micro-conditions
    emb, ehs = time_and_context(unet, sample, timestep, encoder_hidden_states, added_time_ids)
    ctx.temb = emb

    # 2. down path: the skips flow in ctx.skips
    h = unet.conv_in(sample.flatten(0, 1))
    if atts:
        h = run_after_embed(ctx, atts, h)
    indicator = torch.zeros(batch, frames, dtype=h.dtype, device=h.device)
    ctx.skips = [h]
    with attention_slots(ctx, atts, attention_layers(unet) if atts else {}, lambda name, chain: SlotProcessor(chain)):
        for i, block in enumerate(unet.down_blocks):
            if getattr(block, "has_cross_attention", False):
                h, r = block(hidden_states=h, temb=emb, encoder_hidden_states=ehs, image_only_indicator=indicator)
            else:
                h, r = block(hidden_states=h, temb=emb, image_only_indicator=indicator)
            ctx.skips.extend(r)
            if atts:
                h = run_after_block(ctx, atts, i, h)

        # 3. mid
        h = unet.mid_block(hidden_states=h, temb=emb, encoder_hidden_states=ehs, image_only_indicator=indicator)
        if atts:
            h = run_after_block(ctx, atts, n_down, h)

        # 4. up
        skips = tuple(ctx.skips)
        upsample_size = None
        for i, block in enumerate(unet.up_blocks):
            n = len(block.resnets)
            r, skips = skips[-n:], skips[:-n]
            if i < len(unet.up_blocks) - 1 and forward_upsample_size:
                upsample_size = skips[-1].shape[2:]
            if getattr(block, "has_cross_attention", False):
                h = block(hidden_states=h, temb=emb, res_hidden_states_tuple=r, encoder_hidden_states=ehs,
                          upsample_size=upsample_size, image_only_indicator=indicator)
            else:
                h = block(hidden_states=h, temb=emb, res_hidden_states_tuple=r, upsample_size=upsample_size,
                          image_only_indicator=indicator)
            if atts:
                h = run_after_block(ctx, atts, n_down + 1 + i, h)

    # 5. out
    h = unet.conv_out(unet.conv_act(unet.conv_norm_out(h)))
    out = h.reshape(batch, frames, *h.shape[1:])
    return run_end(ctx, atts, out) if atts else out


def compile_blocks(bb: Backbone, attachments=(), **kw) -> int:
    """Regional compile: every ``SpatioTemporalResBlock`` and ``TransformerSpatioTemporalModel`` of the UNet (and of
    the attachments' modules, e.g. the InterDyn encoder copy) compiled in place (``nn.Module.compile``; the repeated
    blocks of a size share a graph, so the first compile stays short). ``kw`` go to torch.compile. Returns how many
    blocks were compiled."""
    from diffusers.models.resnet import SpatioTemporalResBlock
    from diffusers.models.transformers.transformer_temporal import TransformerSpatioTemporalModel

    kw.setdefault("dynamic", False)
    kinds = (SpatioTemporalResBlock, TransformerSpatioTemporalModel)
    mods = [m for m in bb.denoiser.modules() if isinstance(m, kinds)]
    for att in attachments:
        for mod in att.modules():
            mods += [m for m in mod.modules() if isinstance(m, kinds)]
    for m in mods:
        m.compile(**kw)
    return len(mods)


def _bare(unet) -> Backbone:
    """A minimal bundle for a UNet called without one (tests, the branch's own checks)."""
    return Backbone(family="svd", variant="unet", denoiser=unet)


def latent_preview_rgb(latent: torch.Tensor):
    """Cheap RGB preview of one latent frame [C,h,w] (SD 2.x latent space) as a PIL image."""
    from PIL import Image

    factors = torch.tensor([[0.3512, 0.2297, 0.3227], [0.3250, 0.4974, 0.2350],
                            [-0.2829, 0.1762, 0.2721], [-0.2120, -0.2616, -0.7177]])
    lat = latent.float().cpu()[:4]
    rgb = torch.einsum("chw,cr->hwr", lat, factors[: lat.shape[0]])
    rgb = ((rgb + 1) / 2).clamp(0, 1).mul(255).byte().numpy()
    return Image.fromarray(rgb)



def save_diffusers_folder(bb: Backbone, path) -> Path:
    """Write the bundle as a diffusers StableVideoDiffusionPipeline folder (tests, conversions)."""
    from transformers import CLIPImageProcessor

    path = Path(path)
    bb.denoiser.save_pretrained(path / "unet")
    bb.vae.save_pretrained(path / "vae")
    bb.image_encoder.save_pretrained(path / "image_encoder")
    size = bb.extra.get("clip_size", 224)
    proc = bb.image_processor or CLIPImageProcessor(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size},
        image_mean=bb.extra["clip_mean"], image_std=bb.extra["clip_std"])
    proc.save_pretrained(path / "feature_extractor")
    sched = dict(_class_name="EulerDiscreteScheduler", num_train_timesteps=1000, beta_start=0.00085,
                 beta_end=0.012, beta_schedule="scaled_linear", interpolation_type="linear",
                 steps_offset=1, timestep_spacing="leading", set_alpha_to_one=False, skip_prk_steps=True,
                 clip_sample=False, **{k: v for k, v in bb.scheduler_config.items() if k != "rho"})
    (path / "scheduler").mkdir(parents=True, exist_ok=True)
    (path / "scheduler" / "scheduler_config.json").write_text(json.dumps(sched, indent=2))
    (path / "model_index.json").write_text(json.dumps({
        "_class_name": "StableVideoDiffusionPipeline", "feature_extractor": ["transformers", "CLIPImageProcessor"],
        "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "unet": ["diffusers", "UNetSpatioTemporalConditionModel"],
        "vae": ["diffusers", "AutoencoderKLTemporalDecoder"]}, indent=2))
    return path
