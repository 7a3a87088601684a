"""Wan memory model: parameter counts from file headers (:class:`WeightStats`, nothing loaded) -> the peak device
memory of a request in each memory mode (:func:`estimate_memory`), and the check that refuses a request that cannot
fit before anything is allocated, naming the mode that would (:func:`check_memory`). The lead folds this into the
pack's generic memory-budget helper (models/memory.py) when both exist.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

NODE = "Wan loader"
TEXT_TOKENS = 512 + 257  # umT5 tokens + CLIP image tokens (Wan2.1 I2V) in the cross-attention context


# ------------------------------------------------------------------------------------------ memory
GB = 1024 ** 3


@dataclass
class WeightStats:
    """Parameter counts (no bytes: they depend on the storage mode) of the parts, read from headers."""

    expert_params: dict  # name -> total parameters of that expert
    block_params: dict  # name -> parameters of one block
    fp8_params: dict  # name -> parameters fp8 storage would quantise (block Linear weights)
    num_blocks: int
    text_encoder_params: int = 0
    clip_params: int = 0
    vae_params: int = 0
    inner_dim: int = 5120
    ffn_dim: int = 13824
    heads: int = 40
    text_dim: int = 4096
    latent_channels: int = 16
    vae_spatial: int = 8
    patch: tuple = (1, 2, 2)
    text_encoder_file_dtype: str = "bfloat16"


def fp8_selectable(name: str) -> bool:
    """Which transformer weights fp8 storage quantises: the 2-D Linear weights of the blocks outside the
    modules diffusers keeps in float32 (norms, modulation), as ComfyUI's fp8_e4m3fn files do."""
    if not name.startswith("blocks.") or not name.endswith(".weight"):
        return False
    parts = name.split(".")
    return not any(p.startswith("norm") for p in parts) and "scale_shift_table" not in parts


@dataclass
class MemoryEstimate:
    """Peak device memory of one request in one mode (bytes), by part."""

    offload: str
    storage: str  # "bf16" | "fp8"
    blocks_on_gpu: int | None
    parts: dict
    peak: int

    @property
    def peak_gb(self) -> float:
        return self.peak / GB

    def label(self) -> str:
        s = f"offload={self.offload!r}, weight_dtype={'fp8_e4m3fn' if self.storage == 'fp8' else 'bf16'}"
        if self.offload == "blocks":
            s += f", blocks_on_gpu={self.blocks_on_gpu}"
        return s


def activation_bytes(stats: WeightStats, frames: int, height: int, width: int, cfg_batch: int = 2,
                     attention: str = "sdpa", dtype_bytes: int = 2) -> int:
    """Peak activation memory of one transformer forward (one expert step, CFG rows batched).

    Per block the live tensors are the stream (kept fp32 around the norms: 4 bytes), q/k/v and the attention
    output (4 x D), the FFN hidden and its GELU (2 x ffn), in the compute dtype: B * L * (16 D + 4 ffn) bytes
    for bf16. ``attention`` "sdpa" (flash / memory-efficient kernels: linear in L) or "math" (materialises the
    B x heads x L x L scores twice: what plain attention on a GPU without those kernels costs)."""
    f = (frames - 1) // 4 + 1
    h, w = height // stats.vae_spatial, width // stats.vae_spatial
    L = f * (h // stats.patch[1]) * (w // stats.patch[2])
    B = cfg_batch
    per = B * L * (stats.inner_dim * (4 + 4 + 4 * dtype_bytes) + 2 * stats.ffn_dim * dtype_bytes)
    text = B * (TEXT_TOKENS) * stats.inner_dim * dtype_bytes * 4
    if attention == "math":
        per += 2 * B * stats.heads * L * L * dtype_bytes
    return int(per + text)


def vae_work_bytes(stats: WeightStats, frames: int, height: int, width: int, tiled: bool, decode: bool = True,
                   vae_bytes: int = 4) -> int:
    """VAE encode/decode working memory: the causal VAE runs frame chunk by chunk, so it scales with the frame
    area, not the frame count (constants as ComfyUI's memory model of these VAEs). Tiled: one 256x256 tile."""
    if tiled:
        height, width = min(height, 256), min(width, 256)
    if stats.latent_channels == 48:
        per = 8000 * (height // 16) * (width // 16) * 256 if decode else 3300 * height * width
    else:
        per = 7000 * (height // 8) * (width // 8) * 64 if decode else 6000 * height * width
    return int(per * vae_bytes)


def estimate_memory(stats: WeightStats, *, offload: str, storage: str, frames: int = 81, height: int = 480,
                    width: int = 832, cfg_batch: int = 2, attention: str = "sdpa", vae_tiling: bool = True,
                    blocks_on_gpu: int | None = None, compute_bytes: int = 2) -> MemoryEstimate:
    """Peak device memory of a request (defaults: 81 x 480 x 832, CFG batch 2) for one memory mode.

    offload "none": every part resident. "model": one stage at a time (text encoder, CLIP, VAE, one expert).
    "blocks": like "model", and the active expert holds its non-block weights, ``blocks_on_gpu`` blocks and one
    streamed block. Weights in ``storage`` "bf16" (2 bytes) or "fp8" (block Linear weights 1 byte)."""
    def expert_bytes(name, k=None):
        total, fp8 = stats.expert_params[name], stats.fp8_params[name] if storage == "fp8" else 0
        if k is None:
            return (total - fp8) * compute_bytes + fp8
        blk = stats.block_params[name]
        blk_fp8 = fp8 / max(1, stats.num_blocks)
        nonblock = (total - blk * stats.num_blocks) * compute_bytes
        one = (blk - blk_fp8) * compute_bytes + blk_fp8
        return int(nonblock + one * (k + 1))

    te = stats.text_encoder_params * compute_bytes
    clip = stats.clip_params * compute_bytes
    vae = stats.vae_params * 4
    act = activation_bytes(stats, frames, height, width, cfg_batch, attention, compute_bytes)
    f = (frames - 1) // 4 + 1
    lat = cfg_batch * stats.latent_channels * 3 * f * (height // stats.vae_spatial) * (width // stats.vae_spatial) * 4
    dec = vae_work_bytes(stats, frames, height, width, vae_tiling, True)
    enc = vae_work_bytes(stats, frames, height, width, vae_tiling, False)
    names = list(stats.expert_params)
    parts = {"latents": lat, "activations": act, "vae_decode": dec, "vae_encode": enc}
    if offload == "none":
        for n in names:
            parts[f"{n}_weights"] = expert_bytes(n)
        parts.update(text_encoder=te, clip=clip, vae=vae)
        resident = sum(parts[f"{n}_weights"] for n in names) + te + clip + vae
        peak = resident + lat + max(act, dec, enc)
    else:
        k = None if offload == "model" else (stats.num_blocks if blocks_on_gpu is None else blocks_on_gpu)
        ex = max(expert_bytes(n, k) for n in names)
        parts.update(expert_weights=ex, text_encoder=te, clip=clip, vae=vae)
        peak = max(te, clip, vae + max(dec, enc), ex + act) + lat
    return MemoryEstimate(offload, storage, None if offload != "blocks" else k, parts, int(peak))


class WanMemoryError(ValueError):
    """A request that does not fit the device in the chosen memory mode (raised before anything is allocated)."""


def memory_plans(stats: WeightStats, budget: int, **request) -> list[MemoryEstimate]:
    """The modes in order of preference (fastest first), each with its peak; block offload with the most
    resident blocks that fit ``budget``."""
    plans = [estimate_memory(stats, offload=o, storage=s, **request)
             for o, s in (("none", "bf16"), ("model", "bf16"), ("none", "fp8"), ("model", "fp8"))]
    for s in ("bf16", "fp8"):
        best = None
        for k in range(stats.num_blocks, -1, -1):
            e = estimate_memory(stats, offload="blocks", storage=s, blocks_on_gpu=k, **request)
            best = e
            if e.peak <= budget:
                break
        plans.append(best)
    return plans


def check_memory(stats: WeightStats, budget: int, *, offload: str, storage: str, blocks_on_gpu=None,
                 what: str = "request", **request) -> MemoryEstimate:
    """The estimate of the chosen mode; raises :class:`WanMemoryError` naming what it needs, what is free and the
    first mode that fits (or the smallest need when none does)."""
    mine = estimate_memory(stats, offload=offload, storage=storage, blocks_on_gpu=blocks_on_gpu, **request)
    if mine.peak <= budget:
        return mine
    plans = memory_plans(stats, budget, **request)
    fits = [p for p in plans if p.peak <= budget]
    r = request
    size = f"{r.get('frames', 81)}x{r.get('height', 480)}x{r.get('width', 832)}, CFG batch {r.get('cfg_batch', 2)}"
    msg = (f"{NODE}: the {what} ({size}) needs {mine.peak_gb:.1f} GB with {mine.label()}, but {budget / GB:.1f} GB "
           "are free on the device.")
    if fits:
        msg += f" Fix: use {fits[0].label()} (needs {fits[0].peak_gb:.1f} GB)."
    else:
        low = min(plans, key=lambda p: p.peak)
        msg += (f" No mode fits: the smallest is {low.label()} at {low.peak_gb:.1f} GB. Fix: fewer frames or a "
                "smaller size, or a larger GPU.")
    raise WanMemoryError(msg)


def free_device_bytes(device) -> int | None:
    """Free memory of a CUDA device, None elsewhere (no check on the CPU)."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    return None
