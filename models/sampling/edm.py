"""EDM Euler sampling for SVD (Karras sigmas, v-prediction, sigma_data = 1) with the InterDyn branch.

Preconditioning (SVD, sigma_data = 1): c_in = 1/sqrt(s^2+1), c_skip = 1/(s^2+1), c_out = -s/sqrt(s^2+1),
c_noise = 0.25 ln s; D(x) = c_skip x + c_out F(c_in x, c_noise). Euler: x' = x + (x - D(x))/s * (s' - s).
This equals diffusers' EulerDiscreteScheduler with SVD's config (checked in tests).
"""
from __future__ import annotations

import math

import torch

from .. import memory, runtime
from ..backbones import svd as svdb
from ..backbones.base import Backbone
from ..control.base import ControlBranch, ControlSignal


def karras_sigmas(steps: int, sigma_min: float = 0.002, sigma_max: float = 700.0, rho: float = 7.0) -> torch.Tensor:
    """[steps + 1] float64: Karras et al. (2022) eq. 5 from sigma_max down to sigma_min, then a final 0."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1; got {steps}")
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sig = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([sig, sig.new_zeros(1)])


def precondition(sigma):
    """(c_skip, c_out, c_in, c_noise) for sigma (float or tensor), sigma_data = 1."""
    s = torch.as_tensor(sigma, dtype=torch.float64)
    return 1 / (s ** 2 + 1), -s / (s ** 2 + 1).sqrt(), 1 / (s ** 2 + 1).sqrt(), 0.25 * s.log()


def loss_weight(sigma):
    """EDM lambda(sigma) = (sigma^2 + 1) / sigma^2 for sigma_data = 1."""
    s = torch.as_tensor(sigma)
    return (s ** 2 + 1) / s ** 2


def guidance_ramp(num_frames: int, min_cfg: float = 1.0, max_cfg: float = 3.0) -> torch.Tensor:
    """Per-frame guidance [F]: linear from ``min_cfg`` (frame 0) to ``max_cfg`` (last frame)."""
    return torch.linspace(min_cfg, max_cfg, num_frames, dtype=torch.float64)


def model_forward(bb: Backbone, latent_in: torch.Tensor, c_noise, image_embeds: torch.Tensor,
                  time_ids: torch.Tensor, *, branch: ControlBranch | None = None, control: torch.Tensor | None = None,
                  weight: float = 1.0) -> torch.Tensor:
    """The ONE SVD(+InterDyn) forward used by the sampler, the trainer and the benchmark.

    latent_in [B,F,8,h,w] (c_in-scaled noisy latent ++ image latent); c_noise scalar or [B];
    image_embeds [B,1,D]; time_ids [B,3]; control [B,F,3,H,W] in [-1,1] (batch B, or 1 to broadcast).
    Returns the raw network output F (v-prediction) [B,F,4,h,w].
    """
    down = mid = None
    rule = "once"
    if branch is not None and control is not None and weight != 0:
        if control.shape[0] != latent_in.shape[0]:
            control = control.expand(latent_in.shape[0], *control.shape[1:])
        bdt = next(branch.module.parameters()).dtype
        if bdt == latent_in.dtype:
            down, mid = branch.module(latent_in, c_noise, image_embeds, time_ids, control, conditioning_scale=weight)
        else:  # e.g. an fp32 branch being trained on a bf16 backbone: compute in the backbone's dtype
            with torch.autocast(latent_in.device.type, dtype=latent_in.dtype):
                down, mid = branch.module(latent_in, c_noise, image_embeds, time_ids, control,
                                          conditioning_scale=weight)
            down, mid = [d.to(latent_in.dtype) for d in down], mid.to(latent_in.dtype)
        rule = branch.config.get("residual_rule", "quirk")
    return svdb.unet_forward(bb.denoiser, latent_in, c_noise, image_embeds, time_ids, down, mid,
                             residual_rule=rule)


def compiled_forward(bb: Backbone, branch: ControlBranch | None = None):
    """``model_forward`` under torch.compile (one graph per shape; cached on the bundle's ``extra``)."""
    cache = bb.extra.setdefault("_compiled_forward", {})
    key = id(branch.module) if branch is not None else None
    if key not in cache:
        def fwd(inp, t, emb, tids, control, weight):
            return model_forward(bb, inp, t, emb, tids, branch=branch, control=control, weight=weight)
        cache[key] = torch.compile(fwd, dynamic=False)
    return cache[key]


def denoise(bb: Backbone, x: torch.Tensor, sigma: float, image_latent: torch.Tensor, image_embeds, time_ids, *,
            branch=None, control=None, weight=1.0, compile: bool = False) -> torch.Tensor:
    """D(x; sigma): x [B,F,4,h,w], image_latent [B,F,4,h,w] -> denoised x0 estimate [B,F,4,h,w]."""
    c_skip, c_out, c_in, c_noise = (float(v) for v in precondition(sigma))
    inp = torch.cat([(x * c_in).to(bb.dtype), image_latent.to(bb.dtype)], dim=2)
    t = torch.full((x.shape[0],), c_noise, device=x.device, dtype=torch.float32)
    if compile:
        fwd = compiled_forward(bb, branch if control is not None else None)
        out = fwd(inp, t, image_embeds, time_ids, control, float(weight))
    else:
        out = model_forward(bb, inp, t, image_embeds, time_ids, branch=branch, control=control, weight=weight)
    return c_skip * x + c_out * out.float()


@torch.no_grad()
def sample_svd(bb: Backbone, image: torch.Tensor, *, control: ControlSignal | torch.Tensor | None = None,
               branch: ControlBranch | None = None, num_frames: int = 14, steps: int = 50,
               min_cfg: float = 1.0, max_cfg: float = 3.0, fps_id: float = 6, motion_bucket_id: float = 40,
               noise_aug: float = 0.02, seed: int = 0, num_samples: int = 1, image_embeds: torch.Tensor | None = None,
               image_latent: torch.Tensor | None = None, callback=None, compile: bool = False,
               decode: bool = False) -> torch.Tensor:
    """Sample SVD image-to-video with an optional InterDyn branch.

    image [1,H,W,3] 0..1 (the first frame); control: ControlSignal (video [F,H,W,3] in [-1,1], weight, start/end)
    or a bare [F,H,W,3] tensor. Guidance is per frame, linear ``min_cfg`` -> ``max_cfg``; the unconditional half
    has zero image embedding and zero image latent but the same control; cond/uncond run as one batch, and the
    control is doubled only when guidance is on. Noise from a CPU generator seeded with ``seed``.
    ``image_embeds``/``image_latent`` may be passed precomputed ([1,1,D], [1,C,h,w]) to skip the encoders.
    ``compile``: run the UNet(+branch) step under torch.compile (first call per shape compiles for minutes).
    Returns latents [num_samples, F, 4, h, w] (scaled; decode with ``backbones.svd.decode_latents``). The memory
    budget (memory.check, before anything is allocated) covers the decode too when ``decode`` says it follows.
    """
    if image.ndim == 3:
        image = image[None]
    _, H, W, _ = image.shape
    svdb.check_frames(bb, num_frames, H, W, node="SVD sampler")
    check_budget(bb, num_frames, H, W, samples=num_samples, cfg=max_cfg, branch=branch if control is not None else None,
                 decode=decode)
    dev, f = bb.device, bb.extra["vae_scale_factor"]
    gen = torch.Generator("cpu").manual_seed(int(seed))
    if image_embeds is None:
        image_embeds = svdb.encode_image_embeds(bb, image[:1])
    if image_latent is None:
        image_latent = svdb.encode_image_latent(bb, image[:1], noise_aug, gen)
    cond_lat = image_latent[:, None].expand(num_samples, num_frames, *image_latent.shape[1:]).to(dev)
    cond_emb = image_embeds.expand(num_samples, *image_embeds.shape[1:]).to(dev, bb.dtype)

    ctrl = weight = None
    start, end = 0.0, 1.0
    if control is not None:
        if branch is None:
            raise ValueError("SVD sampler: a control video was given but no InterDyn branch; connect a branch")
        sig = control if isinstance(control, ControlSignal) else ControlSignal(control, "hand_mask")
        weight, start, end = sig.weight, sig.start, sig.end
        ctrl = check_control(sig.video, num_frames, H, W)
        ctrl = ctrl.permute(0, 3, 1, 2)[None].to(dev, bb.dtype)  # [1,F,3,H,W]

    cfg_on = max_cfg > 1.0
    if cfg_on:
        lat_in = torch.cat([torch.zeros_like(cond_lat), cond_lat])
        emb_in = torch.cat([torch.zeros_like(cond_emb), cond_emb])
        batch = 2 * num_samples
    else:
        lat_in, emb_in, batch = cond_lat, cond_emb, num_samples
    tids = svdb.added_time_ids(fps_id, motion_bucket_id, noise_aug, batch, dev, bb.dtype)
    if ctrl is not None:
        ctrl = ctrl.expand(batch, *ctrl.shape[1:])
    w = guidance_ramp(num_frames, min_cfg, max_cfg).to(dev, torch.float32).view(1, num_frames, 1, 1, 1)

    cfgs = bb.scheduler_config
    sigmas = karras_sigmas(steps, cfgs.get("sigma_min", 0.002), cfgs.get("sigma_max", 700.0), cfgs.get("rho", 7.0))
    shape = (num_samples, num_frames, bb.denoiser.config.out_channels, H // f, W // f)
    x = torch.randn(shape, generator=gen, dtype=torch.float32).to(dev) * math.sqrt(float(sigmas[0]) ** 2 + 1)

    pbar = runtime.progress(steps, "InterDyn sampling" if branch is not None else "SVD sampling")
    with svdb.on_device(bb, bb.denoiser):
        x = _euler_loop(bb, x, sigmas, steps, cfg_on, lat_in, emb_in, tids, ctrl, branch, weight, start, end, w,
                        num_frames, pbar, callback, compile)
    pbar.close()
    return x


def check_budget(bb: Backbone, num_frames: int, height: int, width: int, *, samples: int = 1, cfg: float = 3.0,
                 branch=None, decode: bool = True, what: str = "SVD sampler") -> None:
    """Refuse a sample that cannot fit (memory.check) before anything is allocated: one UNet step (and the
    branch's residuals) over the CFG rows, or the chunked decode, on the device, and the frames in host RAM."""
    rows = samples * (2 if cfg > 1.0 else 1)
    mod = getattr(branch, "module", branch)
    dev_parts, host = memory.svd_sampling(bb, num_frames, height, width, rows=rows, samples=samples,
                                          branch=mod is not None, decode=decode,
                                          modules=(mod,) if mod is not None else ())
    fix = (f"generate fewer frames, samples or a smaller size than {samples} x {num_frames} x {height} x {width}, "
           "offload 'model', or lower decode_chunk in the SVD Loader")
    memory.check(what, dev_parts, bb.device, fix)
    if host:
        memory.check(what, host, "cpu", fix)


def _euler_loop(bb, x, sigmas, steps, cfg_on, lat_in, emb_in, tids, ctrl, branch, weight, start, end, w,
                num_frames, pbar, callback, compile):
    denoised = x
    for i in range(steps):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        on = ctrl is not None and start <= i / steps < end
        xin = torch.cat([x, x]) if cfg_on else x
        d = denoise(bb, xin, s, lat_in, emb_in, tids, branch=branch if on else None,
                    control=ctrl if on else None, weight=1.0 if weight is None else weight, compile=compile)
        if cfg_on:
            d_u, d_c = d.chunk(2)
            denoised = d_u + w * (d_c - d_u)
        else:
            denoised = d
        x = x + (x - denoised) / s * (s_next - s)
        if callback is not None:
            callback(i, x, denoised)
        pbar.update(1, preview=lambda: svdb.latent_preview_rgb(denoised[0, num_frames // 2]),
                    text=f"sigma {s_next:.3f}")
    return x


def check_control(video: torch.Tensor, num_frames: int, height: int, width: int,
                  node: str = "SVD sampler", input_name: str = "control") -> torch.Tensor:
    """Validate a control video [F,H,W,3] against the sample; reject mismatches with a message naming the
    input (resampling is the mask renderer's job: conditions.hand_mask.fit_condition)."""
    if video.ndim != 4:
        raise ValueError(f"{node}: input '{input_name}' must be a video [F,H,W,3]; got shape {tuple(video.shape)}")
    fr, h, w, c = video.shape
    if c != 3:
        raise ValueError(f"{node}: input '{input_name}' must have 3 channels; got {c}. Render it with the "
                         "Driving Mask node (it repeats a mask to 3 channels).")
    if fr != num_frames:
        raise ValueError(f"{node}: input '{input_name}' has {fr} frames but num_frames is {num_frames}; "
                         "resample it with the Driving Mask node (num_frames) or change num_frames.")
    if (h, w) != (height, width):
        raise ValueError(f"{node}: input '{input_name}' is {h}x{w} but the image is {height}x{width}; "
                         "render the mask at the image size.")
    return video.float()
