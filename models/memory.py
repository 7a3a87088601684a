"""Memory budgets: estimate a job's working set before allocating it, and refuse early with the figure and the fix.

:func:`check` is the one budget check: every sampler and the sandbox scene builder call it with a breakdown of what
the job will hold at its peak; it compares the sum with ``runtime.free_memory`` (ComfyUI's model manager inside
ComfyUI, which may unload cached models first) and raises :class:`MemoryBudgetError` naming the GB needed, the GB
free and what to change. The estimators are rough upper bounds (they count the tensors a step keeps alive at once,
within about 2x) meant to stop a job that cannot fit in a second instead of after minutes, not to pack memory:

- :func:`dit_sampling`: a video diffusion transformer step (CogVideoX now; the Wan and PAM samplers reuse it):
  the token stream and its per-block intermediates at the attention path the device will take, control residuals;
- :func:`unet_sampling`: an SVD-family UNet step (InterDyn): feature maps and skip connections per level;
- :func:`vae_decode`: decoded frames plus one chunk (or tile) of decoder activations;
- :func:`sandbox_scene`: a rendered scene's frames, masks, ID maps and render buffers, and the node's float copy;
- :func:`cogvideox_sampling`, :func:`svd_sampling`: the two families' samplers, built from the above.

``INTERPLAY_SKIP_MEMORY_CHECK=1`` turns the check off (unified memory, swap: the owner knows better).
"""
from __future__ import annotations

import os

import torch

from . import runtime

GB = 1e9
SKIP_ENV = "INTERPLAY_SKIP_MEMORY_CHECK"
HEADROOM = 0.9  # leave a tenth of what is free for the allocator's slack and everything not counted


class MemoryBudgetError(ValueError):
    """A job whose estimated working set does not fit in the free memory of its device."""


def check(what: str, parts: dict, device, fix: str) -> int:
    """Raise MemoryBudgetError when ``sum(parts)`` bytes exceed what ``device`` has free (with HEADROOM); returns
    the bytes needed. ``parts`` names each share of the working set (shown largest first); ``fix`` says what to
    change (smaller size, tiling, offload)."""
    need = int(sum(parts.values()))
    if os.environ.get(SKIP_ENV, "").strip().lower() in ("1", "true", "yes", "on"):
        return need
    device = torch.device(device)
    free = runtime.free_memory(device, want=need)
    if need > free * HEADROOM:
        shares = sorted(((k, v) for k, v in parts.items() if v >= 0.01 * need), key=lambda kv: -kv[1])
        detail = ", ".join(f"{k} {v / GB:.1f} GB" for k, v in shares)
        where = "RAM" if device.type == "cpu" else f"{device} memory"
        raise MemoryBudgetError(f"{what}: needs about {need / GB:.1f} GB of {where} ({detail}) but {free / GB:.1f} "
                                f"GB is free. Fix: {fix}. (To try anyway, set {SKIP_ENV}=1.)")
    return need


def elem(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def module_bytes(*modules, unless_on: torch.device | None = None) -> int:
    """Parameter and buffer bytes of the modules (only of those not already on ``unless_on``: weights that the
    job will move there)."""
    total = 0
    for m in modules:
        if m is None:
            continue
        tensors = list(m.parameters()) + list(m.buffers())
        if not tensors or (unless_on is not None and _same_device(tensors[0].device, unless_on)):
            continue
        total += sum(t.numel() * t.element_size() for t in tensors)
    return total


def _same_device(a: torch.device, b: torch.device) -> bool:
    a, b = torch.device(a), torch.device(b)
    return a.type == b.type and (a.index or 0) == (b.index or 0)


# ------------------------------------------------------------------------------------------- attention
def attention_path(device, dtype: torch.dtype, head_dim: int) -> str:
    """"sdpa" when scaled_dot_product_attention will take a fused kernel (memory linear in the tokens: flash or
    memory-efficient on CUDA, the flash kernel on CPU), else "math" (the full score matrix)."""
    device = torch.device(device)
    if device.type == "cuda":
        fused = torch.backends.cuda.flash_sdp_enabled() or torch.backends.cuda.mem_efficient_sdp_enabled() \
            or torch.backends.cuda.cudnn_sdp_enabled()
        return "sdpa" if fused and head_dim <= 256 else "math"
    return "sdpa" if dtype in (torch.float32, torch.bfloat16, torch.float16) else "math"


def attention_bytes(rows: int, heads: int, queries: int, keys: int, head_dim: int, dtype: torch.dtype,
                    path: str) -> int:
    """Extra memory of one attention call: the score and probability matrices on the math path, the output and
    the kernel's running statistics on a fused one."""
    e = elem(dtype)
    if path == "math":
        return 2 * rows * heads * queries * keys * e
    return 2 * rows * heads * queries * head_dim * e + rows * heads * queries * 4


# ------------------------------------------------------------------------------------------ estimators
def dit_sampling(*, rows: int, video_tokens: int, text_tokens: int, width: int, heads: int, dtype: torch.dtype,
                 device, ff_mult: int = 4, residual_layers: int = 0, joint: bool = True) -> dict:
    """One transformer step over ``rows`` batch rows (CFG and control-guidance rows included). A block keeps the
    stream, the normed copy, q/k/v, the attention output and the feed-forward's ``ff_mult``-wide hidden state
    (2x: before and after the activation) alive at once; ``residual_layers`` control residuals [rows, video
    tokens, width] are held through the backbone pass. ``joint``: text and video tokens attend together
    (CogVideoX, PAM); otherwise text is cross-attended (Wan)."""
    e = elem(dtype)
    tokens = video_tokens + (text_tokens if joint else 0)
    hd = width // heads
    path = attention_path(device, dtype, hd)
    parts = {"activations": rows * tokens * width * e * (6 + 2 * ff_mult),
             f"attention ({path})": attention_bytes(rows, heads, tokens, tokens, hd, dtype, path)}
    if not joint:
        parts["cross-attention"] = attention_bytes(rows, heads, video_tokens, text_tokens, hd, dtype, path)
    if residual_layers:
        parts["control residuals"] = residual_layers * rows * video_tokens * width * e
    return parts


def unet_sampling(*, rows: int, frames: int, height: int, width: int, channels, layers_per_block: int,
                  heads, dtype: torch.dtype, device, branch: bool = False) -> dict:
    """One SVD-family UNet step: at each level of ``channels`` (resolution halving per level from ``height`` x
    ``width`` latents) the skip connections kept for the decoder, a resnet's working copies and the spatial
    self-attention over the level's tokens; ``branch`` adds an encoder copy's residuals (InterDyn)."""
    e = elem(dtype)
    heads = list(heads) if isinstance(heads, (list, tuple)) else [heads] * len(channels)
    skips = work = att = 0
    for i, c in enumerate(channels):
        hw = max(1, height >> i) * max(1, width >> i)
        skips += rows * frames * hw * c * e * (layers_per_block + 1)
        work = max(work, rows * frames * hw * c * e * 6)
        hd = max(1, c // heads[i])
        att = max(att, attention_bytes(rows * frames, heads[i], hw, hw, hd, dtype, attention_path(device, dtype, hd)))
    parts = {"skip connections": skips, "activations": work, "attention": att}
    if branch:
        parts["control residuals"] = skips
    return parts


def vae_decode(*, frames: int, height: int, width: int, channels: int, chunk_frames: int,
               tile: tuple[int, int] | None = None) -> dict:
    """Decoding ``frames`` frames of height x width on the device: the float32 output and the decoder's widest
    level (``channels`` at full resolution, four float32 working copies) over one chunk of ``chunk_frames``
    frames, or one ``tile`` of it."""
    th, tw = tile if tile is not None else (height, width)
    return {"decoded frames": frames * height * width * 3 * 4,
            "decoder activations": channels * min(chunk_frames, frames) * min(th, height) * min(tw, width) * 4 * 4}


def frames_on_host(frames: int, height: int, width: int) -> dict:
    """The float32 frames a decode hands back in host RAM: the copy, the concatenation and the 0..1 result."""
    return {"frames": frames * height * width * 3 * 4 * 3}


def _phases(device, step: dict, decode: dict, host: dict) -> tuple[dict, dict]:
    """(device parts, host parts): the larger of the two phases that never overlap on the device (a step's memory
    is freed before decoding); on the CPU the host's share is the same memory and joins the device's."""
    dev = step if sum(step.values()) >= sum(decode.values()) else decode
    if torch.device(device).type == "cpu":
        return {**dev, **{f"{k} (host)": v for k, v in host.items()}}, {}
    return dev, host


SANDBOX_MAX_OBJECTS = 7  # the most bodies any preset draws (multi: 6) plus the pusher


def sandbox_scene(height: int, width: int, frames: int, objects: int = SANDBOX_MAX_OBJECTS,
                  float_outputs: bool = True) -> dict:
    """A simulated and rendered scene (models/sandbox/presets.generate_scene): uint8 frames, int16 ID rasters
    (three at once while the ID map is derived), a bool mask per object and the pusher's, the per-frame ray and
    ground buffers (float64), and with ``float_outputs`` the node's float32 copies (frames twice while scaled,
    the driven mask)."""
    px = height * width * frames
    parts = {"frames": px * 3, "ID maps": px * 2 * 3, "masks": px * (objects + 1),
             "render buffers": height * width * 8 * 16}
    if float_outputs:
        parts["float frames"] = px * 3 * 4 * 2
        parts["driven mask"] = px * (4 + 1)
    return parts


def cogvideox_sampling(bb, num_frames: int, height: int, width: int, *, rows: int, branch_layers: int = 0,
                       decode: bool = True, modules=()) -> tuple[dict, dict]:
    """(device parts, host parts) of one CogVideoX image-to-video sample: one transformer step (dit_sampling) with
    the latents and the weights that must move to the device (offload), or the VAE decode if larger, and the final
    frames in host RAM."""
    from .backbones import cogvideox as cog

    c = bb.denoiser.config
    dev, dt = bb.device, bb.dtype
    vs = bb.extra.get("vae_scale_factor_spatial", 8)
    f, h, w = cog.latent_frames(bb, num_frames), height // vs, width // vs
    p, pt = c.patch_size, c.patch_size_t or 1
    tokens = -(-f // pt) * (h // p) * (w // p)
    ch = bb.extra.get("latent_channels", c.out_channels)
    step = dit_sampling(rows=rows, video_tokens=tokens, text_tokens=c.max_text_seq_length,
                        width=c.num_attention_heads * c.attention_head_dim, heads=c.num_attention_heads, dtype=dt,
                        device=dev, residual_layers=branch_layers)
    step["latents"] = rows * f * 2 * ch * h * w * 4 * 3
    moved = module_bytes(bb.denoiser, *modules, unless_on=dev)
    if moved:
        step["weights moved to the device"] = moved
    dec, host = {}, {}
    if decode:
        vae = bb.vae
        tile = None
        if getattr(vae, "use_tiling", False):
            tile = (int(getattr(vae, "tile_sample_min_height", height)), int(getattr(vae, "tile_sample_min_width", width)))
        dec = vae_decode(frames=num_frames, height=height, width=width, channels=vae.config.block_out_channels[0],
                         chunk_frames=int(getattr(vae, "num_sample_frames_batch_size", 8)), tile=tile)
        host = frames_on_host(num_frames, height, width)
    return _phases(dev, step, dec, host)


def svd_sampling(bb, num_frames: int, height: int, width: int, *, rows: int, samples: int = 1, branch: bool = False,
                 decode: bool = True, modules=()) -> tuple[dict, dict]:
    """(device parts, host parts) of one SVD image-to-video sample (the InterDyn sampler's): one UNet step
    (unet_sampling) with the branch's residuals and the weights moved to the device, or the chunked decode if
    larger, and the frames of every sample in host RAM."""
    c = bb.denoiser.config
    dev, dt = bb.device, bb.dtype
    f = bb.extra.get("vae_scale_factor", 8)
    step = unet_sampling(rows=rows, frames=num_frames, height=height // f, width=width // f,
                         channels=list(c.block_out_channels), layers_per_block=int(c.layers_per_block),
                         heads=c.num_attention_heads, dtype=dt, device=dev, branch=branch)
    step["latents"] = rows * num_frames * 8 * (height // f) * (width // f) * 4 * 3
    moved = module_bytes(bb.denoiser, *modules, unless_on=dev)
    if moved:
        step["weights moved to the device"] = moved
    if not decode:
        return _phases(dev, step, {}, {})
    chunk = int(bb.extra.get("decode_chunk", 14) or 14)
    dec = vae_decode(frames=num_frames * samples, height=height, width=width,
                     channels=bb.vae.config.block_out_channels[0], chunk_frames=chunk)
    return _phases(dev, step, dec, frames_on_host(num_frames * samples, height, width))
