"""Wan backbones (Wan2.1 T2V/I2V, Wan2.2 I2V-A14B with two experts, Wan2.2 TI2V-5B) on diffusers' Wan classes:
loading and detection, encoders, the I2V conditioning, memory modes and their estimate, and the family's denoiser
forward on the model-forward contract (:func:`forward`, doors as ``base`` documents; the sampler loop is
``sampling/wan.py``).

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

``Backbone.layout`` (the contract's InputLayout along C): I2V (("noise", C), ("mask", 4), ("image", C)); T2V and
TI2V (("noise", C),).

``Backbone.extra`` (family "wan") - what the sampler and branches read:
    kind: "wan2.1-t2v" | "wan2.1-i2v" | "wan2.2-i2v-a14b" | "wan2.2-t2v-a14b" | "wan2.2-ti2v"
    version: "2.1" | "2.2";  i2v: 36-channel input (noisy ++ 4 mask ++ image latent);  ti2v: image latent replaces
    latent frame 0, whose tokens get timestep 0;  clip: the model has the CLIP image branch (Wan2.1 I2V)
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
from .base import Backbone, InputLayout, on_device
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
    layout = InputLayout((("noise", z), ("mask", int(vcfg.scale_factor_temporal)), ("image", z)) if kind.i2v else
                         (("noise", z),))
    extra = {
        "kind": plan.kind, "version": kind.version, "i2v": kind.i2v, "ti2v": kind.ti2v,
        "clip": enc is not None,
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
        source=dict(source or {}), extra=extra, layout=layout)


# ------------------------------------------------------------------------------------ random bundles
TINY_TRANSFORMER = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, text_dim=32, freq_dim=256,
                        ffn_dim=64, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6,
                        rope_max_seq_len=1024)
"""A tiny transformer of the real class (benchmarks' CPU size); channels come from the kind's release config."""


def random_backbone(kind: str = "wan2.2-i2v-a14b", size: str = "tiny", *, dtype=torch.float32, device="cpu",
                    seed: int = 0, offload: str = "none", storage: torch.dtype | None = None,
                    blocks_on_gpu: int | None = None) -> Backbone:
    """Random-weight Wan of the real classes, for step benchmarks: the release transformer(s) of ``kind``
    ("full": ``RELEASE_TRANSFORMERS``, built on ``device`` directly; "tiny": :data:`TINY_TRANSFORMER` with the
    release's channels), a tiny VAE with the release's latent format and a one-block umT5 (random embeddings in
    the benchmarks). Placed through :func:`assemble_backbone`, so ``offload`` / ``storage`` (fp8) /
    ``blocks_on_gpu`` are the loader's memory modes. Kinds with a CLIP branch are not built here (use the kit)."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    from ..tokenizer import build_tokenizer
    from .wan_files import _Part, _stats

    if size not in ("tiny", "full"):
        raise ValueError(f"random_backbone: size must be tiny or full; got {size!r}")
    k = KINDS.get(kind)
    rel = next((v for n, v in RELEASE_TRANSFORMERS.items() if n.startswith(kind)), None)
    if k is None or rel is None or k.clip:
        raise ValueError(f"random_backbone: kind must be one of the Wan kinds without CLIP; got {kind!r}")
    device = torch.device(device)
    tcfg = dict(rel) if size == "full" else dict(TINY_TRANSFORMER, in_channels=rel["in_channels"],
                                                 out_channels=rel["out_channels"])
    vcfg = dict(VAE22 if k.vae == "2.2" else VAE21, base_dim=4)
    vcfg.pop("decoder_base_dim", None)
    names = EXPERT_NAMES[:k.experts]
    experts = {}
    low = dtype in (torch.float16, torch.bfloat16)
    for i, n in enumerate(names):
        torch.manual_seed(seed + i)
        old = torch.get_default_dtype()
        torch.set_default_dtype(dtype if low else torch.float32)  # a 14B expert never exists in fp32 on the GPU
        try:
            with torch.device(device):
                experts[n] = WanTransformer3DModel(**tcfg)
        finally:
            torch.set_default_dtype(old)
    torch.manual_seed(seed + 10)
    vae = AutoencoderKLWan(**vcfg)
    tok = build_tokenizer()
    te = UMT5EncoderModel(UMT5Config(vocab_size=len(tok), d_model=tcfg["text_dim"], d_kv=16, d_ff=64, num_layers=1,
                                     num_heads=2, relative_attention_num_buckets=8, dropout_rate=0.0,
                                     feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False))
    shapes = {n: {key: tuple(v.shape) for key, v in m.state_dict().items()} for n, m in experts.items()}
    stats = _stats(kind, {n: tcfg for n in names}, shapes, sum(p.numel() for p in te.parameters()), 0,
                   sum(p.numel() for p in vae.parameters()), vcfg)
    plan = LoadPlan(kind=kind, variant=f"random-{size}-{kind}", experts={n: _Part(tcfg) for n in names},
                    vae=_Part(vcfg), text_encoder=_Part(None), tokenizer=None, clip=None, image_processor=None,
                    scheduler_config=dict(UNIPC_DEFAULTS, flow_shift=k.flow_shift), boundary=k.boundary,
                    stats=stats, file_fp8=False)
    parts = dict(experts=experts, scales={n: {} for n in names}, vae=vae, text_encoder=te, tokenizer=tok,
                 image_encoder=None, image_processor=None, te_scales={})
    return assemble_backbone(plan, parts, compute=dtype, storage=storage, device=device, offload=offload,
                             blocks_on_gpu=blocks_on_gpu, source={"kind": "random"}, boundary=k.boundary)


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


def raw_latents(bb: Backbone, latents: torch.Tensor) -> torch.Tensor:
    """Normalised latents -> the VAE's own latent space (``latents / (1 / std) + mean``, the pipeline's arithmetic):
    what the VAE decodes and what ComfyUI's LATENT holds for Wan (its Wan21/Wan22 latent formats normalise inside
    the model)."""
    mean, std = _latent_stats(bb, latents.device, latents.dtype)
    return latents / (1.0 / std) + mean


@torch.no_grad()
def decode_latents(bb: Backbone, latents: torch.Tensor) -> torch.Tensor:
    """Normalised latents [B,C,f,h,w] -> frames [B,F,H,W,3] float32 0..1 on the CPU (tiled when bb.vae_tiling:
    diffusers' Wan tiling, 256 px tiles blended over 64 px), one video at a time."""
    vae = bb.vae
    outs = []
    with on_device(bb, vae):
        p = next(vae.parameters())
        for i in range(latents.shape[0]):
            z = raw_latents(bb, latents[i:i + 1].to(p.device, torch.float32))
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


# ------------------------------------------------------------------------------------- the family forward
# Cross-attention context: diffusers' Wan processor takes everything before the last 512 tokens as the CLIP image
# context (Wan2.1 I2V); the text is always exactly 512 tokens.
def expert_module(bb: Backbone, expert=None) -> torch.nn.Module:
    """The denoiser to run: ``expert`` None (the high-noise expert, or the only model), a name ("high_noise",
    "low_noise") or a module (returned as is)."""
    if expert is None:
        return bb.denoiser
    if isinstance(expert, torch.nn.Module):
        return expert
    experts = expert_modules(bb)
    if expert not in experts:
        raise ValueError(f"Wan forward: no expert {expert!r}; this bundle has {list(experts)}")
    return experts[expert]


def attention_layers(bb_or_transformer, expert=None) -> dict:
    """Attention layer name -> module: ``blocks.<i>.attn1`` (self-attention over the video tokens, RoPE) and
    ``blocks.<i>.attn2`` (cross-attention to the text, plus the CLIP image context on Wan2.1 I2V)."""
    tr = bb_or_transformer if isinstance(bb_or_transformer, torch.nn.Module) else expert_module(bb_or_transformer,
                                                                                                expert)
    out = {}
    for i, b in enumerate(tr.blocks):
        out[f"blocks.{i}.attn1"] = b.attn1
        out[f"blocks.{i}.attn2"] = b.attn2
    return out


def attention_layer(i: int, kind: str = "self") -> str:
    """The name of block ``i``'s self- ("self") or cross-attention ("cross") layer."""
    if kind not in ("self", "cross"):
        raise ValueError(f"Wan attention layer kind must be 'self' or 'cross'; got {kind!r}")
    return f"blocks.{i}.attn{1 if kind == 'self' else 2}"


def rotary(transformer, num_frames: int, height: int, width: int, offset: int = 0):
    """The 3-D RoPE (cos, sin) [1, N, 1, head_dim] of a latent grid f x h x w (before patching), the time axis
    starting at latent frame ``offset``: diffusers' ``WanRotaryPosEmbed.forward`` (same buffers and ops, so
    offset 0 is its output exactly) with the frame rows ``offset .. offset + f/p_t`` instead of ``0 .. f/p_t``.
    A block at absolute latent frame k of a longer clip thus gets exactly the rows that clip's RoPE gives it."""
    rope = transformer.rope
    p_t, p_h, p_w = rope.patch_size
    ppf, pph, ppw = num_frames // p_t, height // p_h, width // p_w
    offset = int(offset)
    if offset < 0 or offset + ppf > rope.max_seq_len:
        raise ValueError(f"Wan forward: rope_offset {offset} + {ppf} frames leaves the model's rotary table "
                         f"(rope_max_seq_len {rope.max_seq_len}); use 0 <= rope_offset <= {rope.max_seq_len - ppf}")
    split = [rope.t_dim, rope.h_dim, rope.w_dim]
    cos = rope.freqs_cos.split(split, dim=1)
    sin = rope.freqs_sin.split(split, dim=1)

    def grid(parts):
        f_ = parts[0][offset:offset + ppf].view(ppf, 1, 1, -1).expand(ppf, pph, ppw, -1)
        h_ = parts[1][:pph].view(1, pph, 1, -1).expand(ppf, pph, ppw, -1)
        w_ = parts[2][:ppw].view(1, 1, ppw, -1).expand(ppf, pph, ppw, -1)
        return torch.cat([f_, h_, w_], dim=-1).reshape(1, ppf * pph * ppw, 1, -1)

    return grid(cos), grid(sin)


def _apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """diffusers' Wan RoPE on [B, N, heads, d] (interleaved pairs), op for op."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos = cos[..., 0::2]
    sin = sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


class SlotProcessor:
    """diffusers' ``WanAttnProcessor`` with the attention call handed to a chain (the contract's slot).

    q, k, v are projected, RMS-normed across heads and (self-attention) rotated exactly as diffusers does, then
    passed down the chain as [B, heads, N, d] (diffusers' Wan processor holds [B, N, heads, d]; the transpose is
    the one its native SDPA backend makes, so the numbers are the same). ``chain(mask)`` returns call(q, k, v) ->
    [B, heads, N, d]. Wan2.1 I2V's image branch of cross-attention (q against the CLIP context's own k/v) runs
    beside the chain exactly as diffusers runs it; the chain sees the text attention only.

    ``cross_kv``: a callable () -> (k, v) [B, heads, M, d] or None, asked before the k/v projections of a
    cross-attention layer; when it returns tensors the text k/v are not projected (a text KV cache)."""

    def __init__(self, chain, cross_kv=None):
        self.chain = chain
        self.cross_kv = cross_kv

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        from diffusers.models.attention_dispatch import dispatch_attention_fn

        enc_img = None
        if attn.add_k_proj is not None:
            n_img = encoder_hidden_states.shape[1] - TEXT_LENGTH
            enc_img = encoder_hidden_states[:, :n_img]
            encoder_hidden_states = encoder_hidden_states[:, n_img:]
        cross = encoder_hidden_states is not None
        fused = getattr(attn, "fused_projections", False)
        cached = self.cross_kv() if (cross and self.cross_kv is not None) else None
        if cached is not None:
            q = attn.norm_q(attn.to_q(hidden_states)).unflatten(2, (attn.heads, -1))
            k, v = cached
        else:
            ctx_states = hidden_states if encoder_hidden_states is None else encoder_hidden_states
            if fused and not attn.is_cross_attention:
                q, k, v = attn.to_qkv(hidden_states).chunk(3, dim=-1)
            elif fused:
                q = attn.to_q(hidden_states)
                k, v = attn.to_kv(ctx_states).chunk(2, dim=-1)
            else:
                q, k, v = attn.to_q(hidden_states), attn.to_k(ctx_states), attn.to_v(ctx_states)
            q, k = attn.norm_q(q), attn.norm_k(k)
            q, k, v = (z.unflatten(2, (attn.heads, -1)) for z in (q, k, v))  # [B, N, heads, d] as diffusers
            if rotary_emb is not None:
                k = _apply_rotary(k, *rotary_emb)
            k, v = k.transpose(1, 2), v.transpose(1, 2)
        if rotary_emb is not None:
            q = _apply_rotary(q, *rotary_emb)
        img = None
        if enc_img is not None:
            if fused:
                k_img, v_img = attn.to_added_kv(enc_img).chunk(2, dim=-1)
            else:
                k_img, v_img = attn.add_k_proj(enc_img), attn.add_v_proj(enc_img)
            k_img = attn.norm_added_k(k_img).unflatten(2, (attn.heads, -1))
            v_img = v_img.unflatten(2, (attn.heads, -1))
            img = dispatch_attention_fn(q, k_img, v_img, attn_mask=None, dropout_p=0.0, is_causal=False)
            img = img.flatten(2, 3).type_as(q)
        out = self.chain(attention_mask)(q.transpose(1, 2), k, v)
        out = out.transpose(1, 2).flatten(2, 3).type_as(q)
        if img is not None:
            out = out + img
        return attn.to_out[1](attn.to_out[0](out))


def _timesteps(timestep, b: int, n_tokens: int, device) -> torch.Tensor:
    t = torch.as_tensor(timestep, device=device)
    if t.ndim == 0:
        t = t.expand(b)
    if t.ndim == 1 and t.shape[0] == 1 and b > 1:
        t = t.expand(b)
    if t.ndim == 2 and t.shape[0] == 1 and b > 1:
        t = t.expand(b, -1)
    if t.ndim > 2 or t.shape[0] != b or (t.ndim == 2 and t.shape[1] != n_tokens):
        raise ValueError(f"Wan forward: timestep must be [B] or per-token [B, N] with B={b}, N={n_tokens} video "
                         f"tokens (frame-major); got shape {tuple(t.shape)}")
    return t


def forward(bb: Backbone, latent_in: torch.Tensor, timestep, text: torch.Tensor, *,
            image_embeds: torch.Tensor | None = None, attachments=(), rows: dict | None = None,
            step: tuple[int, int] | None = None, expert=None, rope_offset: int = 0) -> torch.Tensor:
    """The Wan denoiser forward with the contract's doors -> the velocity [B, C_out, f, h, w].

    Runs the diffusers ``WanTransformer3DModel`` submodules in the order and with the ops of its own ``forward``
    (equal to it, bitwise, with no attachments and ``rope_offset`` 0). Doors: ``begin``; ``after_embed`` on the
    video tokens [B, N, D] right after the patch embedding (``ctx.temb``, ``ctx.text`` already set; the token count
    must stay N); ``after_block`` i after each ``blocks[i]``; attention slots on ``blocks.<i>.attn1`` (self) and
    ``blocks.<i>.attn2`` (cross: text, and the CLIP image branch beside the chain), q/k/v [B, heads, N, d] after
    the projections, the RMS norms and (self) RoPE; ``end``.

    Wan extension of the attention door: an attachment listing a cross-attention layer may define
    ``cross_kv(ctx, layer) -> (k, v) | None`` ([B, heads, M, d], normed); when it returns tensors the slot uses
    them instead of projecting the text (a text KV cache; the attachment fills it from the k, v its
    ``attention`` receives on a first call).

    Args:
        latent_in: [B, C_in, f, h, w] assembled by ``bb.layout`` (I2V: noisy latent ++ mask ++ image latent).
        timestep: [B] (or a scalar, or [1]) in 0..1000, or per-token [B, N] (N = f/p_t * h/p_h * w/p_w video
            tokens, frame-major: Wan2.2 TI2V's first-frame tokens at 0, a causal sampler's clean context at 0).
        text: [B|1, 512, D_text] umT5 embeddings (``encode_prompt``).
        image_embeds: [B|1, 257, 1280] CLIP features, for the Wan2.1 I2V image branch only.
        attachments: :class:`Attachment` objects, applied in order at every door.
        rows: batch row name -> slice (from the guided step) for attachments that act on some rows.
        step: (i, num_steps) of the sampler, for attachments with a step range.
        expert: None (the high-noise expert or the only model), an expert name or the module itself. A name is
            made resident through :func:`use_expert` (a no-op when it already is).
        rope_offset: latent frame index of the first frame (RoPE rows ``offset ..``), so a causal sampler places
            a block at its absolute position; RoPE is relative, so alone it changes the output only by rounding.
    Returns the output in the compute dtype.
    """
    name = expert if isinstance(expert, str) else None
    with (use_expert(bb, name) if name is not None and "placement" in bb.extra else contextlib.nullcontext()):
        return _forward(bb, expert_module(bb, expert), latent_in, timestep, text, image_embeds, list(attachments),
                        rows, step, name, rope_offset)


def _forward(bb, tr, latent_in, timestep, text, image_embeds, atts, rows, step, name, rope_offset):
    from .base import (ForwardContext, attention_slots, run_after_block, run_after_embed, run_begin, run_end)

    cfg = tr.config
    b, c, f, h, w = latent_in.shape
    if c != cfg.in_channels:
        lay = bb.layout.names if bb.layout is not None else "?"
        raise ValueError(f"Wan forward: latent_in has {c} channels but the transformer takes {cfg.in_channels} "
                         f"(input layout {lay}); assemble the input with bb.layout")
    dtype = bb.dtype
    x = latent_in.to(dtype)
    enc_in = text.to(dtype)
    if enc_in.shape[0] != b:
        enc_in = enc_in.expand(b, *enc_in.shape[1:])
    img_in = None
    if image_embeds is not None:
        if cfg.image_dim is None:
            raise ValueError(f"Wan forward: image_embeds given but {bb.variant} has no CLIP image branch")
        img_in = image_embeds.to(dtype)
        if img_in.shape[0] != b:
            img_in = img_in.expand(b, *img_in.shape[1:])
    p_t, p_h, p_w = cfg.patch_size
    grid = (f // p_t, h // p_h, w // p_w)
    t = _timesteps(timestep, b, grid[0] * grid[1] * grid[2], x.device)
    rot = rotary(tr, f, h, w, rope_offset)
    ctx = ForwardContext(bb=bb, latent_in=x, timestep=t, text_in=enc_in, rotary=rot, grid=grid,
                         rows=dict(rows) if rows else {"all": slice(None)},
                         extra={"step": step, "expert": name, "rope_offset": int(rope_offset),
                                "image_embeds": img_in})
    run_begin(ctx, atts)

    # 1. condition embeddings: time (per token for [B, N] timesteps), text, CLIP image context
    ts_len = t.shape[1] if t.ndim == 2 else None
    temb, tproj, enc, enc_img = tr.condition_embedder(t.flatten() if ts_len else t, enc_in, img_in,
                                                      timestep_seq_len=ts_len)
    tproj = tproj.unflatten(2, (6, -1)) if ts_len is not None else tproj.unflatten(1, (6, -1))
    if enc_img is not None:
        enc = torch.concat([enc_img, enc], dim=1)
    ctx.temb, ctx.text = tproj, enc
    # 2. patch embedding -> video tokens [B, N, D]
    hs = tr.patch_embedding(x).flatten(2).transpose(1, 2).contiguous()
    if atts:
        n = hs.shape[1]
        hs = run_after_embed(ctx, atts, hs)
        if hs.shape[1] != n:
            raise ValueError(f"Wan forward: after_embed changed the token count from {n} to {hs.shape[1]}; add to "
                             "the video tokens (extra tokens go through an attention slot's k/v instead)")

    # 3. blocks, each followed by the after_block door
    grad_ckpt = torch.is_grad_enabled() and tr.gradient_checkpointing

    def make_slot(layer, chain):
        srcs = [a for a in atts if callable(getattr(a, "cross_kv", None))
                and layer in (a.attention_layers(ctx) or ())]
        if not srcs or not layer.endswith("attn2"):
            return SlotProcessor(chain)

        def cross_kv():
            for a in srcs:
                kv = a.cross_kv(ctx, layer)
                if kv is not None:
                    return kv
            return None
        return SlotProcessor(chain, cross_kv)

    with attention_slots(ctx, atts, attention_layers(tr) if atts else {}, make_slot):
        for i, block in enumerate(tr.blocks):
            if grad_ckpt:
                hs = tr._gradient_checkpointing_func(block, hs, enc, tproj, rot)
            else:
                hs = block(hs, enc, tproj, rot)
            if atts:
                hs = run_after_block(ctx, atts, i, hs)

    # 4. output norm (modulated by the time embedding), projection, unpatchify
    if temb.ndim == 3:  # per-token timesteps: [B, N, D]
        shift, scale = (tr.scale_shift_table.unsqueeze(0).to(temb.device) + temb.unsqueeze(2)).chunk(2, dim=2)
        shift, scale = shift.squeeze(2), scale.squeeze(2)
    else:
        shift, scale = (tr.scale_shift_table.to(temb.device) + temb.unsqueeze(1)).chunk(2, dim=1)
    shift, scale = shift.to(hs.device), scale.to(hs.device)
    hs = (tr.norm_out(hs.float()) * (1 + scale) + shift).type_as(hs)
    hs = tr.proj_out(hs)
    hs = hs.reshape(b, grid[0], grid[1], grid[2], p_t, p_h, p_w, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
    out = hs.flatten(6, 7).flatten(4, 5).flatten(2, 3)
    return run_end(ctx, atts, out) if atts else out


def compile_blocks(bb: Backbone, attachments=(), **kw) -> int:
    """Regional compile: every ``WanTransformerBlock`` of every expert (and of the attachments' modules) compiled
    in place (``nn.Module.compile``; one graph reused by all blocks of a shape). ``kw`` go to torch.compile.
    Returns how many blocks were compiled."""
    from diffusers.models.transformers.transformer_wan import WanTransformerBlock

    kw.setdefault("dynamic", False)
    mods = [blk for m in expert_modules(bb).values() for blk in m.blocks]
    for att in attachments:
        for m in att.modules():
            mods += [b for b in m.modules() if isinstance(b, WanTransformerBlock)]
    for m in mods:
        m.compile(**kw)
    return len(mods)
