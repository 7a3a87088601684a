"""Wan backbones (Wan2.1 T2V/I2V, Wan2.2 I2V-A14B with two experts, Wan2.2 TI2V-5B) on diffusers' Wan classes:
loading and detection, encoders, the I2V conditioning, memory modes and their estimate. The denoiser forward, the
sampler loop and the sampler node are written on the model-forward contract (issue 15) and live elsewhere.

Sources accepted by :func:`load_wan` (one code path for every size):
- a diffusers folder (``transformer/`` [+ ``transformer_2/`` for two experts], ``vae/``, ``text_encoder/``,
  ``tokenizer/``, ``scheduler/`` [+ ``image_encoder/``, ``image_processor/`` for Wan2.1 I2V]);
- single files ``dict(transformer=, transformer_2=None, vae=, text_encoder=, tokenizer=None, clip_vision=None)``
  in the layouts ComfyUI users keep: ``diffusion_models/`` transformers in the ComfyUI-native layout of the
  Comfy-Org repackaged files (``blocks.N.self_attn.q.weight``, ``head.head.weight``, optionally prefixed
  ``model.diffusion_model.``) or diffusers names, fp16/bf16/fp32/fp8_e4m3fn incl. "scaled" fp8 (``scale_weight``
  per layer); ``vae/`` wan_2.1_vae / wan2.2_vae (original names or diffusers names); ``text_encoders/`` umt5_xxl
  (HF names, the SentencePiece model inside as ``spiece_model``, also fp8 scaled); ``clip_vision/`` clip_vision_h
  (HF ``CLIPVisionModelWithProjection`` names). Key maps: :mod:`.wan_convert`.

Every single file is identified from its safetensors header (:func:`identify`); a file of another role or family
(a CogVideoX transformer, an SVD checkpoint, a VAE given as the transformer, keys of two models in one file) is
refused with what it looks like. Configs are read from the shapes (the head width is 128 in every release; a file
saved by the pack may carry its diffusers config as ``config`` metadata for the rest). Each model is built on the
meta device, its key set and every shape compared with the header, and only then materialised; fp8 tensors are
assigned as read (no bf16 copy) and upcast per layer at compute (:func:`.offload.store_fp8`).

Layout conventions (diffusers' own): latents [B, C, f, h, w] (C = 16, or 48 for TI2V-5B), normalised as the
pipeline does: ``(z - latents_mean) / latents_std`` per channel (no scaling factor); pixel video in and out of the
engine [B, F, H, W, 3] float 0..1 (ComfyUI IMAGE frames); F = 4k+1 pixel frames -> f = (F-1)/4 + 1 latent frames;
h, w = H/8, W/8 (VAE 2.1) or H/16, W/16 (VAE 2.2); the transformer patchifies (1, 2, 2), so tokens =
f * (h/2) * (w/2), frame-major. Text: umT5 embeddings [B, 512, 4096] padded with zeros after each prompt (Wan2.1
I2V's cross-attention relies on exactly 512 text tokens). CLIP: [B, 257, 1280] penultimate hidden states.

``Backbone.extra`` (family "wan") - what the sampler and branches read:
    kind: "wan2.1-t2v" | "wan2.1-i2v" | "wan2.2-i2v-a14b" | "wan2.2-t2v-a14b" | "wan2.2-ti2v"
    version: "2.1" | "2.2";  i2v: 36-channel input (noisy ++ 4 mask ++ image latent);  ti2v: image latent replaces
    latent frame 0, whose tokens get timestep 0;  clip: the model has the CLIP image branch (Wan2.1 I2V)
    input_layout: ((name, channels), ...) of the transformer input along C, e.g. (("noise", 16), ("mask", 4),
        ("image_latent", 16))
    boundary: switch ratio (timestep >= boundary * num_train_timesteps -> high-noise expert) or None
    expert_cfg: {"high_noise": cfg, "low_noise": cfg} (the release's guidance per expert; one entry if one model)
    flow_shift: the release's sampling shift;  num_train_timesteps: 1000;  steps, frames, height, width, fps:
        the release's defaults
    vae_scale_factor_spatial, vae_scale_factor_temporal, latent_channels, patch_size, latents_mean, latents_std,
    vae_dtype, text_length (512), resolution ("480p"/"720p", Wan2.1 I2V from the file name), memory (the mode),
    placement (an :class:`ExpertPlacement`, used by :func:`use_expert`)
"""
from __future__ import annotations

import contextlib
import html
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import runtime
from .base import Backbone, on_device
from .wan_files import (  # noqa: F401  (re-exported: the family's public names live here)
    CLIP_MEAN, CLIP_STD, EXPERT_NAMES, HEAD_DIM, KINDS, LOOKS_LIKE, NODE, RELEASE_TRANSFORMERS, TEXT_LENGTH,
    UNIPC_DEFAULTS, VAE21, VAE22, WAN21_LATENTS_MEAN, WAN21_LATENTS_STD, WAN22_LATENTS_MEAN, WAN22_LATENTS_STD,
    LoadPlan, SentencePieceTokenizer, WanKind, cast_module, default_shift, detect_kind, identify, load_parts,
    plan_folder, plan_single_files, release_size, transformer_config, variant_name)
from .wan_memory import (  # noqa: F401
    GB, MemoryEstimate, WanMemoryError, WeightStats, activation_bytes, check_memory, estimate_memory,
    fp8_selectable, free_device_bytes, memory_plans)

DIFFUSERS_MIN = (0, 35)


def require_diffusers() -> None:
    """Wan2.2's two experts (``transformer_2``, ``boundary_ratio``) and TI2V's per-token timesteps need diffusers
    >= 0.35; checked at first use with the fix instead of failing deep inside a pipeline."""
    import diffusers

    parts = re.findall(r"\d+", diffusers.__version__)[:2]
    have = tuple(int(p) for p in parts) if len(parts) == 2 else (0, 0)
    if have < DIFFUSERS_MIN:
        raise ImportError(f"Wan needs diffusers >= {'.'.join(map(str, DIFFUSERS_MIN))} (two-expert Wan2.2, TI2V "
                          f"per-token timesteps); this environment has {diffusers.__version__}. Fix: pip install -U "
                          "'diffusers>=0.35' in ComfyUI's Python environment.")
    from diffusers import WanTransformer3DModel  # noqa: F401  (present since 0.33; confirms the install works)


# ------------------------------------------------------------------------------------------ loading
OFFLOAD_MODES = ("none", "model", "blocks")
WEIGHT_DTYPES = ("auto", "bf16", "fp16", "fp32", "fp8_e4m3fn")


def _dtypes(dtype, device, file_fp8: bool):
    """(compute dtype, storage dtype or None). "auto": the device default, and fp8 storage when the transformer
    file is fp8 already (it loads as read); "fp8_e4m3fn": fp8 storage whatever the file holds."""
    if isinstance(dtype, torch.dtype):
        if dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
            return runtime.default_dtype(device), dtype
        return dtype, None
    if dtype in (None, "auto"):
        return runtime.default_dtype(device), (torch.float8_e4m3fn if file_fp8 else None)
    if dtype == "fp8_e4m3fn":
        return runtime.default_dtype(device), torch.float8_e4m3fn
    if dtype not in WEIGHT_DTYPES:
        raise ValueError(f"{NODE}: weight_dtype must be one of {WEIGHT_DTYPES}; got {dtype!r}")
    return runtime.parse_dtype(dtype, device), None


def load_wan(source, *, dtype="auto", device=None, offload: str = "none", gpu_budget_gb: float | None = None,
             blocks_on_gpu: int | None = None, vae_tiling: bool = False, boundary: float | None = None,
             memory_budget_gb: float | None = None, request: dict | None = None,
             compute_dtype: torch.dtype | None = None) -> Backbone:
    """Load a Wan model as a frozen :class:`Backbone` (family "wan"). Nothing is read beyond file headers until
    the files are identified, every shape is checked and the memory estimate fits.

    Args:
        source: a diffusers folder, or ``dict(transformer=, transformer_2=None, vae=, text_encoder=,
            tokenizer=None, clip_vision=None)`` of single files (module doc).
        dtype: "auto" | "bf16" | "fp16" | "fp32" | "fp8_e4m3fn" (or a torch dtype). "fp8_e4m3fn": the blocks' Linear
            weights stored in fp8, each layer upcast to bf16 when it runs (half the weight memory); "auto": the
            device's default compute dtype, and fp8 storage when the transformer file is fp8 already.
        offload: "none" (everything on the device), "model" (text encoder, CLIP, VAE and each expert wait on the
            offload device and move in for their stage; the idle expert is parked while the other runs), "blocks"
            (as "model", and the active expert keeps only ``blocks_on_gpu`` of its blocks on the device, streaming
            the others through one at a time: WanVideoWrapper's "block swap").
        gpu_budget_gb: with offload "blocks", the GPU memory the denoiser may use (weights + activations of the
            default request); sets ``blocks_on_gpu`` when that is None. Default: what is free on the device.
        vae_tiling: tiled VAE encode/decode (diffusers' Wan tiling; bounded memory at 480p and up).
        boundary: override the two-expert switch ratio (release: 0.9 for I2V-A14B, 0.875 for T2V-A14B).
        memory_budget_gb: the device memory the request may use (default: free memory of a CUDA device; no check
            on the CPU). request: dict(frames=, height=, width=, cfg_batch=) checked at load (default: the
            release's size, 81 x 480 x 832 for I2V, CFG batch 2).
        compute_dtype: override the compute dtype fp8 storage upcasts to (default: the device's, bf16 on GPUs).
    """
    require_diffusers()
    if offload not in OFFLOAD_MODES:
        raise ValueError(f"{NODE}: offload must be one of {OFFLOAD_MODES}; got {offload!r}")
    device = torch.device(device) if device is not None else runtime.compute_device()
    if isinstance(source, dict):
        plan = plan_single_files(source)
        src = {"kind": "single_files", **{k: str(v) for k, v in source.items() if v not in (None, "")}}
    else:
        plan = plan_folder(Path(source))
        src = {"kind": "diffusers", "path": str(source)}
    compute, storage = _dtypes(dtype, device, plan.file_fp8)
    compute = compute_dtype or compute
    k = KINDS[plan.kind]
    h, w = release_size(plan.kind, plan.resolution)
    req = dict(frames=k.frames, height=h, width=w, cfg_batch=2) | dict(request or {})
    budget = memory_budget_gb * GB if memory_budget_gb is not None else free_device_bytes(device)
    store = "fp8" if storage is not None else "bf16"
    cbytes = torch.tensor([], dtype=compute).element_size()
    if offload == "blocks" and blocks_on_gpu is None:
        blocks_on_gpu = _blocks_for(plan.stats, store, cbytes, gpu_budget_gb, budget, req, vae_tiling)
    estimate = None
    if budget is not None:
        estimate = check_memory(plan.stats, int(budget), offload=offload, storage=store, blocks_on_gpu=blocks_on_gpu,
                                what=f"{plan.variant} request", vae_tiling=vae_tiling, compute_bytes=cbytes, **req)
    parts = load_parts(plan, compute, storage)
    bb = assemble_backbone(plan, parts, compute=compute, storage=storage, device=device, offload=offload,
                           blocks_on_gpu=blocks_on_gpu, vae_tiling=vae_tiling, source=src,
                           boundary=boundary if boundary is not None else plan.boundary)
    bb.extra["memory_estimate"] = estimate
    return bb


def _blocks_for(stats: WeightStats, store: str, cbytes: int, gpu_budget_gb, free, req, vae_tiling) -> int:
    """Resident blocks for block offload: the most that keep the active expert (and the request's activations)
    under ``gpu_budget_gb`` (default: the free device memory; on the CPU, half the blocks)."""
    from .offload import blocks_for_budget

    budget = gpu_budget_gb * GB if gpu_budget_gb else free
    if budget is None:
        return stats.num_blocks // 2
    name = next(iter(stats.expert_params))
    fp8 = stats.fp8_params[name] if store == "fp8" else 0
    blk_fp8 = fp8 / max(1, stats.num_blocks)
    block = int((stats.block_params[name] - blk_fp8) * cbytes + blk_fp8)
    nonblock = (stats.expert_params[name] - stats.block_params[name] * stats.num_blocks) * cbytes
    act = activation_bytes(stats, req["frames"], req["height"], req["width"], req.get("cfg_batch", 2),
                           dtype_bytes=cbytes)
    return blocks_for_budget(int(budget), nonblock, block, stats.num_blocks, reserve_bytes=act)


# ------------------------------------------------------------------------------------------ experts
@dataclass
class ExpertPlacement:
    """Where the experts are and the log of swaps (expert, seconds). offload "none": all stay on the device."""

    mode: str
    device: torch.device
    offload_device: torch.device
    swaps: dict = field(default_factory=dict)  # name -> BlockSwap (offload "blocks")
    resident: set = field(default_factory=set)
    log: list = field(default_factory=list)


def expert_modules(bb: Backbone) -> dict:
    """{"high_noise": bb.denoiser, "low_noise": ...}: every denoiser of the bundle by expert name."""
    return {"high_noise": bb.denoiser, **bb.experts}


def park_experts(bb: Backbone) -> float:
    """Move every expert to the offload device (offload "model"/"blocks"; no-op otherwise). Returns seconds."""
    pl: ExpertPlacement = bb.extra["placement"]
    if pl.mode == "none":
        return 0.0
    t0 = time.perf_counter()
    for name, m in expert_modules(bb).items():
        if name in pl.resident:
            (pl.swaps[name].park() if name in pl.swaps else m.to(pl.offload_device))
    pl.resident.clear()
    runtime.empty_cache()
    return time.perf_counter() - t0


@contextlib.contextmanager
def use_expert(bb: Backbone, name: str = "high_noise"):
    """Make expert ``name`` ready on the compute device and yield it. With offload "model"/"blocks" the other
    expert is parked on the offload device first (one expert on the GPU at a time); the swap is timed into
    ``bb.extra["placement"].log`` as (name, seconds). Staying with the same expert moves nothing, so a sampler
    calls this every step."""
    experts = expert_modules(bb)
    if name not in experts:
        raise ValueError(f"Wan: no expert {name!r}; this bundle has {list(experts)}")
    pl: ExpertPlacement = bb.extra["placement"]
    if pl.mode != "none" and name not in pl.resident:
        t0 = time.perf_counter()
        for other in list(pl.resident):
            (pl.swaps[other].park() if other in pl.swaps else experts[other].to(pl.offload_device))
            pl.resident.discard(other)
        runtime.empty_cache()
        (pl.swaps[name].activate() if name in pl.swaps else experts[name].to(pl.device))
        pl.resident.add(name)
        if pl.device.type == "cuda":
            torch.cuda.synchronize(pl.device)
        pl.log.append((name, time.perf_counter() - t0))
    yield experts[name]


# ------------------------------------------------------------------------------------------ assembly
def assemble_backbone(plan: LoadPlan, parts: dict, *, compute, storage, device, offload="none", blocks_on_gpu=None,
                      vae_tiling=False, source=None, boundary=None, vae_dtype=torch.float32) -> Backbone:
    """Freeze, cast, set fp8 storage and place the parts; returns the bundle (module doc lists ``extra``)."""
    from diffusers import WanTransformer3DModel

    from .offload import BlockSwap, store_fp8

    device = torch.device(device)
    offdev = runtime.offload_device()
    keep = WanTransformer3DModel._keep_in_fp32_modules
    experts = parts["experts"]
    for name, m in experts.items():
        m.requires_grad_(False).eval()
        cast_module(m, compute, keep)
        if storage is not None or parts["scales"].get(name):
            select = (lambda n, t: fp8_selectable(n) and t.ndim == 2) if storage is not None else None
            store_fp8(m, compute, select, parts["scales"].get(name),
                      storage_dtype=storage or torch.float8_e4m3fn)
    te, enc, vae = parts["text_encoder"], parts["image_encoder"], parts["vae"]
    for m in (te, enc, vae):
        if m is not None:
            m.requires_grad_(False).eval()
    cast_module(vae, vae_dtype)
    cast_module(te, compute)
    if parts.get("te_scales") or any(p.dtype == torch.float8_e4m3fn for p in te.parameters()):
        store_fp8(te, compute, None, parts.get("te_scales"))
    if enc is not None:
        cast_module(enc, compute)
    home = offdev if offload in ("model", "blocks") else device
    for m in (te, enc, vae):
        if m is not None:
            m.to(home)
    placement = ExpertPlacement(offload, device, offdev)
    for name, m in experts.items():
        if offload == "none":
            m.to(device)
            placement.resident.add(name)
        else:
            m.to(offdev)
            if offload == "blocks":
                placement.swaps[name] = BlockSwap(m, m.blocks, blocks_on_gpu, device, offdev)
    if vae_tiling:
        vae.enable_tiling()
    hi = experts["high_noise"]
    cfg = hi.config
    kind = KINDS[plan.kind]
    vcfg = vae.config
    z = int(vcfg.z_dim)
    guidance = dict(zip(EXPERT_NAMES, kind.guidance)) if len(experts) == 2 else {"high_noise": kind.guidance[-1]}
    layout = ((("noise", z), ("mask", int(vcfg.scale_factor_temporal)), ("image_latent", z)) if kind.i2v else
              (("noise", z),))
    extra = {
        "kind": plan.kind, "version": kind.version, "i2v": kind.i2v, "ti2v": kind.ti2v,
        "clip": enc is not None, "input_layout": layout,
        "boundary": boundary if len(experts) == 2 else None, "expert_cfg": guidance,
        "flow_shift": float(plan.scheduler_config.get("flow_shift", kind.flow_shift)),
        "num_train_timesteps": int(plan.scheduler_config.get("num_train_timesteps", 1000)),
        "steps": kind.steps, "frames": kind.frames, "height": release_size(plan.kind, plan.resolution)[0],
        "width": release_size(plan.kind, plan.resolution)[1], "fps": kind.fps,
        "vae_scale_factor_spatial": int(vcfg.scale_factor_spatial),
        "vae_scale_factor_temporal": int(vcfg.scale_factor_temporal), "latent_channels": z,
        "patch_size": tuple(cfg.patch_size), "latents_mean": list(vcfg.latents_mean),
        "latents_std": list(vcfg.latents_std), "vae_dtype": vae_dtype, "text_length": TEXT_LENGTH,
        "resolution": plan.resolution, "notes": list(plan.notes),
        "memory": {"offload": offload, "storage": "fp8_e4m3fn" if storage is not None else str(compute)
                   .replace("torch.", ""), "blocks_on_gpu": blocks_on_gpu},
        "placement": placement, "stats": plan.stats,
    }
    return WanBackbone(
        family="wan", variant=plan.variant, denoiser=hi, vae=vae, text_encoder=te, tokenizer=parts["tokenizer"],
        image_encoder=enc, image_processor=parts["image_processor"],
        experts={"low_noise": experts["low_noise"]} if "low_noise" in experts else {},
        scheduler_config=dict(plan.scheduler_config), dtype=compute, storage_dtype=storage, device=device,
        offload_device=offdev, offload="model" if offload == "blocks" else offload, vae_tiling=bool(vae_tiling),
        source=dict(source or {}), extra=extra)


class WanBackbone(Backbone):
    """A :class:`Backbone` whose ``describe()`` reads the Wan facts (kind, experts, switch, memory mode). The
    ``offload`` field is "model" for both "model" and "blocks" (encoders and VAE move per stage in both); the
    mode itself is ``extra["memory"]["offload"]``."""

    def describe(self) -> str:
        e = self.extra
        n = sum(p.numel() for p in self.denoiser.parameters())
        heads = self.denoiser.config.num_attention_heads * self.denoiser.config.attention_head_dim
        parts = [f"Wan {self.variant} ({e['kind']}): {self.denoiser.config.num_layers} blocks x {heads}, "
                 + (f"{n / 1e9:.2f}B" if n >= 1e8 else f"{n / 1e6:.2f}M") + " params"
                 + (" per expert" if self.experts else "")]
        if self.experts:
            parts.append(f"two experts: high-noise for t >= {e['boundary'] * e['num_train_timesteps']:g}, "
                         f"low-noise below (CFG {e['expert_cfg']['high_noise']:g} / {e['expert_cfg']['low_noise']:g})")
        if e["i2v"]:
            parts.append("image-to-video (36-channel input)" + (", CLIP image branch" if e["clip"] else ""))
        elif e["ti2v"]:
            parts.append("text+image-to-video (image as latent frame 0 at t=0)")
        else:
            parts.append("text-to-video")
        parts.append(f"VAE {e['latent_channels']} ch, {e['vae_scale_factor_spatial']}x space "
                     f"{e['vae_scale_factor_temporal']}x time")
        m = e["memory"]
        mem = f"{m['storage']} weights, compute {str(self.dtype).replace('torch.', '')}, offload {m['offload']}"
        if m["offload"] == "blocks":
            mem += f" ({m['blocks_on_gpu']} blocks resident)"
        parts.append(mem + f", on {self.device}")
        parts.append(f"shift {e['flow_shift']:g}, {e['steps']} steps, {e['frames']} frames at "
                     f"{e['width']}x{e['height']}")
        parts += e.get("notes", [])
        return "; ".join(parts)


def tokenize(tokenizer, texts: list[str], max_length: int = TEXT_LENGTH) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) [B, max_length] as the Wan pipelines tokenize (pad to max_length, truncate,
    eos added), for a Hugging Face tokenizer or a :class:`SentencePieceTokenizer`."""
    if isinstance(tokenizer, SentencePieceTokenizer):
        return tokenizer.encode(list(texts), max_length)
    enc = tokenizer(list(texts), padding="max_length", max_length=max_length, truncation=True,
                    add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
    return enc.input_ids, enc.attention_mask


def prompt_clean(text: str) -> str:
    """The pipeline's prompt cleaning: ftfy's fix (when installed), HTML unescaped twice, whitespace collapsed."""
    try:
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:
        pass
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


# ----------------------------------------------------------------------------------------- encoders
@torch.no_grad()
def encode_prompt(bb: Backbone, prompts, max_length: int = TEXT_LENGTH) -> torch.Tensor:
    """umT5 embeddings as the Wan pipelines make them: [B, 512, D] on bb.device in bb.dtype, each prompt's
    tokens (incl. eos) followed by zeros (the encoder runs with the attention mask)."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if bb.text_encoder is None or bb.tokenizer is None:
        raise ValueError("Wan: this backbone has no text encoder; load umt5_xxl (text_encoders/) to encode prompts")
    ids, mask = tokenize(bb.tokenizer, [prompt_clean(p) for p in prompts], max_length)
    te = bb.text_encoder
    with on_device(bb, te):
        dev = next(te.parameters()).device
        emb = te(ids.to(dev), mask.to(dev)).last_hidden_state
    emb = emb.to(bb.device, bb.dtype)
    keep = (torch.arange(max_length)[None, :] < mask.sum(1)[:, None]).to(emb.device)
    return emb * keep[..., None].to(emb.dtype)


def _uint8_images(image: torch.Tensor) -> list:
    """[B,H,W,3] 0..1 -> uint8 HWC arrays (what a PIL image gives the processor)."""
    x = (image.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return [x[i] for i in range(x.shape[0])]


@torch.no_grad()
def encode_image(bb: Backbone, image: torch.Tensor) -> torch.Tensor:
    """CLIP image features for the Wan2.1 I2V image branch: image [B,H,W,3] 0..1 -> penultimate hidden states
    [B, 257, 1280] (ViT-H/14 at 224 px) on bb.device in bb.dtype, as the pipeline's ``encode_image``."""
    if not bb.extra.get("clip"):
        raise ValueError(f"Wan: {bb.variant} has no CLIP image branch; only Wan2.1 I2V reads CLIP features")
    enc = bb.image_encoder
    px = bb.image_processor(images=_uint8_images(image), return_tensors="pt").pixel_values
    with on_device(bb, enc):
        p = next(enc.parameters())
        hs = enc(pixel_values=px.to(p.device, p.dtype), output_hidden_states=True).hidden_states[-2]
    return hs.to(bb.device, bb.dtype)


def _latent_stats(bb, device, dtype):
    z = bb.extra["latent_channels"]
    mean = torch.tensor(bb.extra["latents_mean"]).view(1, z, 1, 1, 1).to(device, dtype)
    std = torch.tensor(bb.extra["latents_std"]).view(1, z, 1, 1, 1).to(device, dtype)
    return mean, std


@torch.no_grad()
def encode_video(bb: Backbone, frames: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """frames [B,F,H,W,3] 0..1 -> normalised latents [B,C,f,h,w] float32 on bb.device: the posterior mode
    (``generator`` None, as the I2V pipelines encode their condition) or a sample drawn on the CPU."""
    x = frames.permute(0, 4, 1, 2, 3).float() * 2 - 1  # [B,3,F,H,W] in [-1, 1]
    vae = bb.vae
    with on_device(bb, vae):
        p = next(vae.parameters())
        dist = vae.encode(x.to(p.device, p.dtype)).latent_dist
        if generator is None:
            z = dist.mode()
        else:
            noise = torch.randn(dist.mean.shape, generator=generator, dtype=torch.float32)
            z = dist.mean + dist.std * noise.to(dist.mean.device, dist.mean.dtype)
    z = z.float()
    mean, std = _latent_stats(bb, z.device, z.dtype)
    return ((z - mean) * (1.0 / std)).to(bb.device)  # the pipeline's arithmetic, bit for bit


@torch.no_grad()
def decode_latents(bb: Backbone, latents: torch.Tensor) -> torch.Tensor:
    """Normalised latents [B,C,f,h,w] -> frames [B,F,H,W,3] float32 0..1 on the CPU (tiled when bb.vae_tiling:
    diffusers' Wan tiling, 256 px tiles blended over 64 px), one video at a time."""
    vae = bb.vae
    outs = []
    with on_device(bb, vae):
        p = next(vae.parameters())
        mean, std = _latent_stats(bb, p.device, torch.float32)
        for i in range(latents.shape[0]):
            z = latents[i:i + 1].to(p.device, torch.float32) / (1.0 / std) + mean  # as the pipeline
            outs.append(vae.decode(z.to(p.dtype)).sample.float().cpu())
    x = torch.cat(outs)  # [B,3,F,H,W]
    return ((x + 1) / 2).clamp(0, 1).permute(0, 2, 3, 4, 1).contiguous()


# --------------------------------------------------------------------------------- frames and sizes
def latent_shape(bb: Backbone, num_frames: int, height: int, width: int, batch: int = 1) -> tuple:
    """[B, C, f, h, w] of the latents for F x H x W pixels."""
    s, t = bb.extra["vae_scale_factor_spatial"], bb.extra["vae_scale_factor_temporal"]
    return (batch, bb.extra["latent_channels"], (num_frames - 1) // t + 1, height // s, width // s)


def check_frames(bb: Backbone, num_frames: int, height: int, width: int, node: str = "Wan") -> None:
    """The Wan rules with named errors: F = 4k+1 (the VAE keeps frame 0 apart and compresses time 4x), H and W
    multiples of VAE stride x patch (16 for the Wan2.1 VAE, 32 for the Wan2.2 VAE)."""
    t = bb.extra["vae_scale_factor_temporal"]
    if num_frames < 1 or (num_frames - 1) % t:
        near = max(1, round((num_frames - 1) / t) * t + 1)
        raise ValueError(f"{node}: num_frames must be {t}k+1 (1, {1 + t}, {1 + 2 * t}, ..., 81); got {num_frames}. "
                         f"Use {near}.")
    m = bb.extra["vae_scale_factor_spatial"] * bb.extra["patch_size"][1]
    if height % m or width % m or height < m or width < m:
        raise ValueError(f"{node}: height and width must be multiples of {m} (VAE {bb.extra['vae_scale_factor_spatial']}"
                         f"x, patch {bb.extra['patch_size'][1]}); got {height}x{width}. Resize, e.g. to "
                         f"{max(m, round(height / m) * m)}x{max(m, round(width / m) * m)} (HxW).")


# --------------------------------------------------------------------------------- I2V conditioning
@dataclass
class WanCondition:
    """The image conditioning of one Wan request (B = batch of images; f, h, w latent grid).

    condition: I2V [B, 4 + C, f, h, w] = first-frame mask (4 channels: 1 on latent frame 0, 0 after) ++ the
        normalised latent of the video [image, zeros...]; the transformer input is cat([noisy, condition], dim=1)
        (36 channels for C = 16). None for TI2V.
    image_embeds: CLIP features [B, 257, 1280] for Wan2.1 I2V, else None.
    first_frame_latent: TI2V [B, C, 1, h, w] normalised latent of the image; None for I2V.
    first_frame_mask: TI2V [1, 1, f, h, w]: 0 on latent frame 0, 1 elsewhere (diffusers' convention); the model
        input is (1 - mask) * first_frame_latent + mask * latents (:func:`ti2v_input`), also after the last step.
    token_mask: TI2V [1, f * h/p * w/p]: 0 for the tokens of latent frame 0, 1 elsewhere (frame-major tokens);
        per-token timesteps are token_mask * t.
    """

    condition: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    first_frame_latent: torch.Tensor | None = None
    first_frame_mask: torch.Tensor | None = None
    token_mask: torch.Tensor | None = None


def first_frame_mask_channels(batch: int, num_frames: int, h: int, w: int, temporal: int = 4) -> torch.Tensor:
    """The I2V mask [B, temporal, f, h, w]: pixel frame 0 repeated ``temporal`` times, then frames grouped by
    ``temporal`` along channels, exactly as WanImageToVideoPipeline.prepare_latents (1 only on latent frame 0)."""
    m = torch.ones(batch, 1, num_frames, h, w)
    m[:, :, 1:] = 0
    m = torch.cat([m[:, :, 0:1].repeat_interleave(temporal, dim=2), m[:, :, 1:]], dim=2)
    return m.view(batch, -1, temporal, h, w).transpose(1, 2)


@torch.no_grad()
def i2v_condition(bb: Backbone, image: torch.Tensor, num_frames: int, height: int, width: int,
                  generator: torch.Generator | None = None) -> WanCondition:
    """Wan's image conditioning for image [B,H,W,3] 0..1 of size height x width (see :class:`WanCondition`).

    I2V (Wan2.1 I2V, Wan2.2 I2V-A14B): VAE-encode the F-frame video [image, zeros] (mode, as the pipeline;
    a ``generator`` samples instead), normalise, prepend the 4-channel first-frame mask; CLIP features when the
    model has the image branch. TI2V-5B: the image's own latent, the first-frame mask and the token mask."""
    node = "Wan I2V condition"
    e = bb.extra
    if not (e["i2v"] or e["ti2v"]):
        raise ValueError(f"{node}: {bb.variant} is text-to-video; it takes no image. Load an I2V or TI2V model.")
    check_frames(bb, num_frames, height, width, node)
    if image.ndim != 4 or image.shape[-1] != 3 or tuple(image.shape[1:3]) != (height, width):
        raise ValueError(f"{node}: 'image' must be [B, {height}, {width}, 3] (IMAGE at the video size); got "
                         f"{list(image.shape)}. Resize/crop it to {width}x{height} (WxH) first.")
    _, _, f, h, w = latent_shape(bb, num_frames, height, width)
    b = image.shape[0]
    if e["ti2v"]:
        lat = encode_video(bb, image[:, None], generator)  # [B,C,1,h,w]
        mask = torch.ones(1, 1, f, h, w, device=lat.device)
        mask[:, :, 0] = 0
        ph, pw = e["patch_size"][1:]
        tok = mask[0, 0][:, ::ph, ::pw].flatten()[None]
        return WanCondition(first_frame_latent=lat, first_frame_mask=mask, token_mask=tok)
    video = torch.cat([image[:, None], image.new_zeros(b, num_frames - 1, height, width, 3) + 0.5], dim=1)
    lat = encode_video(bb, video, generator)  # zeros in [-1, 1] = 0.5 in 0..1
    mask = first_frame_mask_channels(b, num_frames, h, w, e["vae_scale_factor_temporal"]).to(lat.device, lat.dtype)
    embeds = encode_image(bb, image) if e["clip"] else None
    return WanCondition(condition=torch.cat([mask, lat], dim=1), image_embeds=embeds)


def ti2v_input(cond: WanCondition, latents: torch.Tensor) -> torch.Tensor:
    """TI2V's model input (and final latents): latent frame 0 replaced by the image latent."""
    m = cond.first_frame_mask.to(latents.device, latents.dtype)
    return (1 - m) * cond.first_frame_latent.to(latents.device, latents.dtype) + m * latents
