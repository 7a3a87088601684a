"""CogVideoX sampling: the one transformer forward (with KineMask residuals), the scheduler family and the I2V
sampler (batched CFG, dynamic CFG, control weight and step range, CPU-generator seeds, progress/interrupt).

:func:`model_forward` runs the diffusers ``CogVideoXTransformer3DModel`` submodules itself (same order and ops as
its ``forward``) so control residuals can be added after block i; with no branch it equals ``transformer(...)``.
The sampler, the trainer and the benchmark all call it.

Shapes: B batch, f latent frames, C latent channels, h, w latent size, T text tokens, D text width,
F pixel frames, H, W pixels.
"""
from __future__ import annotations

import contextlib
import math
from typing import Sequence

import torch

from .. import memory, runtime
from ..backbones import cogvideox as cog
from ..backbones.base import Backbone
from ..control.base import ControlBranch, ControlSignal

SCHEDULERS = ("ddim", "dpm")


# ------------------------------------------------------------------------------------------ attention
@contextlib.contextmanager
def fast_attention(device):
    """Prefer cuDNN attention on CUDA (fastest SDPA kernel for head_dim 64 on H100), falling back in order."""
    if torch.device(device).type != "cuda":
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    order = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
             SDPBackend.MATH]
    with sdpa_kernel(order, set_priority=True):
        yield


_ROPE_CACHE: dict = {}


def rotary_for(transformer, grid_f: int, grid_h: int, grid_w: int, device):
    """Cached :func:`cog.rotary_embeddings` (same tensors every step)."""
    cfg = transformer.config
    if not cfg.use_rotary_positional_embeddings:
        return None
    key = (cfg.attention_head_dim, cfg.patch_size, cfg.patch_size_t, cfg.sample_height, cfg.sample_width,
           grid_f, grid_h, grid_w, str(device))
    if key not in _ROPE_CACHE:
        if len(_ROPE_CACHE) > 16:
            _ROPE_CACHE.clear()
        _ROPE_CACHE[key] = cog.rotary_embeddings(cfg, grid_f, grid_h, grid_w, device=device)
    return _ROPE_CACHE[key]


# ---------------------------------------------------------------------------------------------- forward
def _branch_module(branch):
    return branch.module if isinstance(branch, ControlBranch) else branch


def model_forward(bb: Backbone, latent_in: torch.Tensor, timestep: torch.Tensor, prompt_embeds: torch.Tensor, *,
                  branch: ControlBranch | torch.nn.Module | None = None, control: torch.Tensor | None = None,
                  weight: float | Sequence[float] = 1.0, image_rotary_emb=None,
                  control_features: torch.Tensor | None = None, ofs: torch.Tensor | None = None) -> torch.Tensor:
    """The CogVideoX transformer with optional KineMask residuals -> model output [B,f,C,h,w] (v-prediction).

    Args:
        latent_in: [B,f,2C,h,w] (I2V: noisy latent ++ image condition) or [B,f,C,h,w] (T2V).
        timestep: [B] (or a scalar) diffusion timesteps 0..999.
        prompt_embeds: [B,T,D].
        branch, control: KineMask branch and control video [B|1,F,3,H,W] in [-1,1]; residual i is added to
            backbone block i's video tokens times ``weight`` (a float, or one per branch block). ``control_features``
            (from ``branch.encode_control``) replaces ``control`` when the same control is reused over steps.
        image_rotary_emb: (cos, sin) from :func:`cog.rotary_embeddings`; computed (and cached) when None.
        ofs: CogVideoX 1.5 I2V offset embedding input (the pipeline passes 2.0); defaulted for such models.
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
    if image_rotary_emb is None:
        image_rotary_emb = rotary_for(tr, f, h, w, x.device)

    residuals = None
    mod = _branch_module(branch)
    if mod is not None and (control is not None or control_features is not None):
        residuals = mod(x, None if control is None else control.to(x.device, dtype), enc_in, t,
                        rotary=image_rotary_emb, control_features=control_features)
        ws = list(weight) if isinstance(weight, (list, tuple)) else [float(weight)] * len(residuals)

    # 1. time embedding (fp32 sinusoid cast to the compute dtype, as diffusers)
    emb = tr.time_embedding(tr.time_proj(t).to(dtype=dtype), None)
    if tr.ofs_embedding is not None:
        if ofs is None:
            ofs = x.new_full((1,), 2.0)
        emb = emb + tr.ofs_embedding(tr.ofs_proj(ofs).to(dtype=dtype))
    # 2. patch embedding (text ++ video tokens)
    hs = tr.embedding_dropout(tr.patch_embed(enc_in, x))
    n_text = enc_in.shape[1]
    enc, hs = hs[:, :n_text], hs[:, n_text:]
    # 3. blocks, with residual i after block i
    grad_ckpt = torch.is_grad_enabled() and tr.gradient_checkpointing
    for i, block in enumerate(tr.transformer_blocks):
        if grad_ckpt:
            hs, enc = tr._gradient_checkpointing_func(block, hs, enc, emb, image_rotary_emb, None)
        else:
            hs, enc = block(hidden_states=hs, encoder_hidden_states=enc, temb=emb, image_rotary_emb=image_rotary_emb)
        if residuals is not None and i < len(residuals) and ws[i] != 0:
            hs = hs + residuals[i].to(hs.dtype) * ws[i]
    hs = tr.norm_final(hs)
    # 4. output
    hs = tr.proj_out(tr.norm_out(hs, temb=emb))
    # 5. unpatchify
    p, p_t = cfg.patch_size, cfg.patch_size_t
    if p_t is None:
        out = hs.reshape(b, f, h // p, w // p, -1, p, p)
        return out.permute(0, 1, 4, 2, 5, 3, 6).flatten(5, 6).flatten(3, 4)
    out = hs.reshape(b, (f + p_t - 1) // p_t, h // p, w // p, -1, p_t, p, p)
    return out.permute(0, 1, 5, 4, 2, 6, 3, 7).flatten(6, 7).flatten(4, 5).flatten(1, 2)


def compile_blocks(bb: Backbone, branch: ControlBranch | None = None, **kw) -> None:
    """Regional compile: every CogVideoXBlock of the backbone (and the branch) compiled in place
    (``nn.Module.compile``; one graph reused by all blocks of a shape). ``kw`` go to torch.compile."""
    kw.setdefault("dynamic", False)
    mods = list(bb.denoiser.transformer_blocks)
    mod = _branch_module(branch)
    if mod is not None:
        mods += list(mod.transformer_blocks)
    for m in mods:
        m.compile(**kw)


# ------------------------------------------------------------------------------------------------ fp8
class FP8Linear(torch.nn.Module):
    """W8A8 e4m3 Linear (opt-in speed path): per-output-channel weight scales, dynamic per-row activation scales,
    ``torch._scaled_mm`` with rowwise scales on CUDA (bias added after); elsewhere the dequantised weight in a
    plain matmul (same numbers up to the activation rounding). Pays only under torch.compile (which fuses the
    activation quantisation); eager is slower than bf16 (research/performance.md)."""

    def __init__(self, lin: torch.nn.Linear):
        super().__init__()
        w = lin.weight.detach().float()
        scale = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 448.0
        self.register_buffer("weight_fp8", (w / scale).to(torch.float8_e4m3fn))
        self.register_buffer("weight_scale", scale.t().contiguous())  # [1, out] fp32
        self.bias = None if lin.bias is None else torch.nn.Parameter(lin.bias.detach().clone(), requires_grad=False)
        self.in_features, self.out_features = lin.in_features, lin.out_features

    def forward(self, x):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if x2.is_cuda:
            xs = x2.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12) / 448.0
            xq = (x2.float() / xs).to(torch.float8_e4m3fn)
            out = torch._scaled_mm(xq, self.weight_fp8.t(), scale_a=xs, scale_b=self.weight_scale,
                                   out_dtype=x.dtype)
        else:
            w = self.weight_fp8.float() * self.weight_scale.t()
            out = (x2.float() @ w.t()).to(x.dtype)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out.reshape(*shape[:-1], self.out_features)


def enable_fp8_linears(blocks) -> int:
    """Swap the token-wise Linears (attention q/k/v/out, feed-forward) of CogVideoXBlocks for :class:`FP8Linear`
    in place; the adaLN linears (one row per sample) stay. Returns how many were swapped."""
    n = 0
    for block in blocks:
        for parent in (block.attn1, block.ff.net[0], block.ff.net):
            for name, child in list(parent.named_children()):
                if isinstance(child, torch.nn.Linear) and name != "linear":
                    setattr(parent, name, FP8Linear(child))
                    n += 1
        if isinstance(getattr(block.attn1, "to_out", None), torch.nn.ModuleList):
            lin = block.attn1.to_out[0]
            if isinstance(lin, torch.nn.Linear):
                block.attn1.to_out[0] = FP8Linear(lin)
                n += 1
    return n


# -------------------------------------------------------------------------------------------- schedulers
def make_scheduler(bb: Backbone, kind: str = "ddim"):
    """A fresh CogVideoX scheduler from the backbone's config: "ddim" (CogVideoXDDIMScheduler) or "dpm"
    (CogVideoXDPMScheduler); v-prediction, trailing spacing, zero-terminal-SNR as the release."""
    from diffusers import CogVideoXDDIMScheduler, CogVideoXDPMScheduler

    if kind not in SCHEDULERS:
        raise ValueError(f"CogVideoX sampler: scheduler must be one of {SCHEDULERS}; got {kind!r}")
    cls = CogVideoXDDIMScheduler if kind == "ddim" else CogVideoXDPMScheduler
    return cls(**{k: v for k, v in bb.scheduler_config.items() if not k.startswith("_")})


scheduler = make_scheduler  # the contract's name


def dynamic_guidance(cfg: float, t: float, steps: int) -> float:
    """The release's dynamic CFG (cosine ramp in the raw timestep value, exactly as the pipeline)."""
    return 1 + cfg * ((1 - math.cos(math.pi * ((steps - t) / steps) ** 5.0)) / 2)


def check_control(video: torch.Tensor, num_frames: int, height: int, width: int, node: str = "CogVideoX sampler"):
    """Control video [F,H,W,3] must match the generation (F frames at the image's size)."""
    if video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"{node}: control video must be [F,H,W,3]; got {tuple(video.shape)}")
    fr, hh, ww = video.shape[:3]
    if fr != num_frames or (hh, ww) != (height, width):
        raise ValueError(f"{node}: control is {fr} frames of {hh}x{ww} but the generation is {num_frames} frames "
                         f"of {height}x{width}; paint the control with num_frames={num_frames} at the image's size "
                         "(the same crop as the image).")


def sample_cogvideox(bb: Backbone, image: torch.Tensor, prompt_embeds: torch.Tensor,
                     negative_embeds: torch.Tensor | None = None, *, controls: Sequence[ControlSignal] = (),
                     branch: ControlBranch | None = None, num_frames: int = 49, steps: int = 50, cfg: float = 6.0,
                     dynamic_cfg: bool = False, seed: int = 0, scheduler: str = "ddim", eta: float = 0.0,
                     sample_image_latent: bool = True, preview: bool = False, latents: torch.Tensor | None = None,
                     desc: str = "CogVideoX", control_cfg: float = 1.0, decode: bool = False) -> torch.Tensor:
    """Image-to-video sampling -> latents [B,f,C,h,w] (scaled; :func:`cog.decode_latents` turns them to frames).

    Args:
        image: [B,H,W,3] in 0..1 (the first frame); B must match prompt_embeds' batch (or prompts broadcast).
        prompt_embeds / negative_embeds: [B|1,T,D] from :func:`cog.encode_prompt`.
        controls: ControlSignal(s) (video [F,H,W,3] in [-1,1]) consumed by ``branch``; each has its own weight
            and step range [start, end) as fractions of the steps; residuals of several controls add up.
        cfg: guidance scale; <= 1 runs one forward per step (no negative). Cond and uncond run as one batch.
        dynamic_cfg: the release's cosine guidance ramp.
        control_cfg: control guidance; > 1 adds a batch row with every control zeroed (the branch's "no
            information" input, as stage-2 dropout trains it) and extrapolates away from it:
            out = cond + (cfg - 1)(cond - uncond) + (control_cfg - 1)(cond - no_control). 1 = off.
        seed: the CPU generator seed (image-latent sample, initial noise, DPM noise): same result on CPU/GPU.
        sample_image_latent: sample the image latent like the diffusers pipeline (else the posterior mode).
        decode: the caller decodes the result next; the memory budget (checked before anything is allocated,
            memory.check) then covers the decode too.
    """
    tr = bb.denoiser
    b, height, width = image.shape[0], image.shape[1], image.shape[2]
    cog.check_frames(bb, num_frames, height, width, node="CogVideoX sampler")
    if controls and branch is None:
        raise ValueError("CogVideoX sampler: a control was given but no branch; connect a KineMask branch loader "
                         "(or remove the control)")
    for sig in controls:
        check_control(sig.video, num_frames, height, width)
    mod = _branch_module(branch)
    if mod is not None:
        vs = bb.extra.get("vae_scale_factor_spatial", 8)
        if mod.config.downscale_coef != vs:
            raise ValueError(f"CogVideoX sampler: the branch downscales by {mod.config.downscale_coef} but the VAE "
                             f"by {vs}; load a branch made for this backbone")
    check_budget(bb, num_frames, height, width, batch=b, cfg=cfg, control_cfg=control_cfg if controls else 1.0,
                 branch=mod if controls else None, decode=decode)
    gen = torch.Generator().manual_seed(int(seed))
    f = cog.latent_frames(bb, num_frames)
    dev = bb.device
    dtype = bb.dtype
    img_lat = cog.image_condition(bb, image, f, generator=gen if sample_image_latent else None).to(dev, dtype)
    c = bb.extra.get("latent_channels", tr.config.out_channels)
    shape = (b, img_lat.shape[1], c, img_lat.shape[3], img_lat.shape[4])
    sched = make_scheduler(bb, scheduler)
    sched.set_timesteps(steps, device=dev)
    timesteps = sched.timesteps
    if latents is None:
        latents = torch.randn(shape, generator=gen, dtype=dtype).to(dev)
    latents = (latents * sched.init_noise_sigma).to(dev, dtype)

    do_cfg = cfg > 1.0
    pos = prompt_embeds.to(dev, dtype)
    if pos.shape[0] != b:
        pos = pos.expand(b, *pos.shape[1:])
    if do_cfg:
        if negative_embeds is None:
            negative_embeds = cog.encode_prompt(bb, [cog.NEGATIVE_DEFAULT] * b, max_length=pos.shape[1])
        neg = negative_embeds.to(dev, dtype)
        if neg.shape[0] != b:
            neg = neg.expand(b, *neg.shape[1:])
        emb_in = torch.cat([neg, pos])
        img_in = torch.cat([img_lat, img_lat])
    else:
        emb_in, img_in = pos, img_lat
    do_ccfg = control_cfg > 1.0 and len(controls) > 0
    if do_ccfg:  # one more row: the positive prompt with the controls zeroed
        emb_in, img_in = torch.cat([emb_in, pos]), torch.cat([img_in, img_lat])
    groups = emb_in.shape[0] // b
    rotary = rotary_for(tr, shape[1], shape[3], shape[4], dev)

    old_x0 = None
    pbar = runtime.progress(len(timesteps), desc)
    modules = [tr] + ([mod] if mod is not None else [])
    with torch.no_grad(), cog.on_device(bb, *modules), fast_attention(dev):
        feats = []
        for sig in controls:  # the control video is constant over steps: encode it once
            v = sig.video.permute(0, 3, 1, 2)[None].to(dev, dtype)  # [1,F,3,H,W]
            fe = mod.encode_control(v)
            if do_ccfg:  # per row: the control for the cond (and uncond) rows, zeros for the last
                fz = mod.encode_control(torch.zeros_like(v))
                fe = torch.cat([fe.expand(b, *fe.shape[1:])] * (groups - 1) + [fz.expand(b, *fz.shape[1:])])
            feats.append((sig, fe))
        for i, t in enumerate(timesteps):
            active = [(s, fe) for s, fe in feats if s.active(i, len(timesteps)) and s.weight != 0]
            # a step with no control running has nothing to guide: skip the zeroed-control row
            used = groups - 1 if do_ccfg and not active else groups
            x_in = torch.cat([latents] * used) if used > 1 else latents
            x_in = sched.scale_model_input(x_in, t)
            x_in = torch.cat([x_in, img_in[:used * b]], dim=2) if bb.extra.get("i2v", True) else x_in
            emb = emb_in[:used * b]
            tt = t.expand(used * b)
            if len(active) <= 1:
                s, fe = active[0] if active else (None, None)
                out = model_forward(bb, x_in, tt, emb, branch=mod if s is not None else None,
                                    control_features=fe, weight=s.weight if s is not None else 0.0,
                                    image_rotary_emb=rotary)
            else:
                out = _multi_control_forward(bb, mod, x_in, tt, emb, active, rotary)
            out = out.float()
            g = dynamic_guidance(cfg, t.item(), steps) if dynamic_cfg else cfg
            rows = out.chunk(used)
            cond = rows[1] if do_cfg else rows[0]
            out = rows[0] + g * (cond - rows[0]) if do_cfg else cond  # the pipeline's own expression
            if do_ccfg and active:
                out = out + (control_cfg - 1) * (cond - rows[-1])
            if scheduler == "dpm":
                prev_t = timesteps[i - 1] if i > 0 else None
                latents, old_x0 = sched.step(out, old_x0, t, prev_t, latents, eta=eta, generator=gen,
                                             return_dict=False)
            else:
                latents = sched.step(out, t, latents, eta=eta, generator=gen, return_dict=False)[0]
            latents = latents.to(dtype)
            pbar.update(1, preview=(lambda z=latents: cog.latent_preview_rgb(z[0, 0])) if preview else None)
    pbar.close()
    return latents


def check_budget(bb: Backbone, num_frames: int, height: int, width: int, *, batch: int = 1, cfg: float = 6.0,
                 control_cfg: float = 1.0, branch=None, decode: bool = True, what: str = "CogVideoX sampler") -> None:
    """Refuse a sample that cannot fit (memory.check) before anything is allocated: one transformer step at this
    size over the CFG / control-guidance rows, or the decode, on the device, and the frames in host RAM."""
    mod = _branch_module(branch)
    rows = batch * ((2 if cfg > 1.0 else 1) + (1 if control_cfg > 1.0 else 0))
    layers = len(mod.transformer_blocks) if mod is not None else 0
    dev_parts, host = memory.cogvideox_sampling(bb, num_frames, height, width, rows=rows, branch_layers=layers,
                                                decode=decode, modules=(mod,) if mod is not None else ())
    fix = (f"generate fewer frames or a smaller size than {num_frames} x {height} x {width}, turn vae_tiling on in "
           "the loader, offload 'model', or cfg <= 1 (half the rows)")
    memory.check(what, dev_parts, bb.device, fix)
    if host:
        memory.check(what, host, "cpu", f"generate fewer frames or a smaller size than {num_frames} x {height} x "
                     f"{width}")


def _multi_control_forward(bb, mod, x_in, tt, emb_in, active, rotary):
    """Several controls through one branch: the weighted residuals are summed (one backbone pass)."""

    class _Sum(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = mod.config

        def forward(self, x, control, enc, t, rotary=None, control_features=None):
            total = None
            for s, fe in active:
                res = mod(x, None, enc, t, rotary=rotary, control_features=fe)
                res = [r * s.weight for r in res]
                total = res if total is None else [a + r for a, r in zip(total, res)]
            return total

    return model_forward(bb, x_in, tt, emb_in, branch=_Sum(), control_features=active[0][1], weight=1.0,
                         image_rotary_emb=rotary)


def sample_and_decode(bb: Backbone, image, prompt_embeds, negative_embeds=None, **kw):
    """(latents, frames [B,F,H,W,3] 0..1 CPU)."""
    lat = sample_cogvideox(bb, image, prompt_embeds, negative_embeds, **{"decode": True, **kw})
    return lat, cog.decode_latents(bb, lat)
