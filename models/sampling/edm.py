"""EDM Euler sampling for SVD (Karras sigmas, v-prediction, sigma_data = 1) with any SVD-family control branch.

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
from ..control import registry
from ..control.base import ControlBranch, ControlSignal, bind
from .guidance import Guidance, guided_step, rows_like
from .speed import running, with_fp8
from .step_cache import active_key


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
                  time_ids: torch.Tensor, *, attachments=(), rows: dict | None = None,
                  step: tuple[int, int] | None = None) -> torch.Tensor:
    """The ONE SVD forward used by the sampler, the trainer and the benchmark: the family's ``unet_forward`` with
    the attachments (control branches through the registry, observers).

    latent_in [B,F,8,h,w] (c_in-scaled noisy latent ++ image latent); c_noise scalar or [B];
    image_embeds [B,1,D]; time_ids [B,3]. Returns the raw network output F (v-prediction) [B,F,4,h,w].
    """
    return svdb.unet_forward(bb.denoiser, latent_in, c_noise, image_embeds, time_ids, attachments=attachments,
                             bb=bb, rows=rows, step=step)


def compiled_forward(bb: Backbone, attachments=()):
    """``model_forward`` under torch.compile (one graph per shape; cached on the bundle's ``extra``)."""
    cache = bb.extra.setdefault("_compiled_forward", {})
    key = tuple(id(a) for a in attachments)
    if key not in cache:
        def fwd(inp, t, emb, tids, rows, step):
            return model_forward(bb, inp, t, emb, tids, attachments=attachments, rows=rows, step=step)
        cache[key] = torch.compile(fwd, dynamic=False)
    return cache[key]


def denoise(bb: Backbone, x: torch.Tensor, sigma: float, image_latent: torch.Tensor, image_embeds, time_ids, *,
            attachments=(), rows=None, step=None, compile: bool = False) -> torch.Tensor:
    """D(x; sigma): x [B,F,4,h,w], image_latent [B,F,4,h,w] -> denoised x0 estimate [B,F,4,h,w]."""
    c_skip, c_out, c_in, c_noise = (float(v) for v in precondition(sigma))
    layout = bb.layout
    parts = {"noise": (x * c_in).to(bb.dtype), "image": image_latent.to(bb.dtype)}
    inp = layout.assemble(parts, dim=2) if layout is not None else torch.cat([parts["noise"], parts["image"]], 2)
    t = torch.full((x.shape[0],), c_noise, device=x.device, dtype=torch.float32)
    if compile:
        out = compiled_forward(bb, tuple(attachments))(inp, t, image_embeds, time_ids, rows, step)
    else:
        out = model_forward(bb, inp, t, image_embeds, time_ids, attachments=attachments, rows=rows, step=step)
    return c_skip * x + c_out * out.float()


@torch.no_grad()
def sample_svd(bb: Backbone, image: torch.Tensor, *, control: ControlSignal | torch.Tensor | None = None,
               branch: ControlBranch | None = None, controls=(), attachments=(), num_frames: int = 14,
               steps: int = 50, min_cfg: float = 1.0, max_cfg: float = 3.0, fps_id: float = 6,
               motion_bucket_id: float = 40, noise_aug: float = 0.02, seed: int = 0, num_samples: int = 1,
               image_embeds: torch.Tensor | None = None, image_latent: torch.Tensor | None = None, callback=None,
               compile: bool = False, decode: bool = False, step_cache=None, speed=None) -> torch.Tensor:
    """Sample SVD image-to-video with optional control branches.

    image [1,H,W,3] 0..1 (the first frame); control: ControlSignal (video [F,H,W,3] in [-1,1], weight, start/end)
    or a bare [F,H,W,3] tensor, bound to ``branch``; ``controls``: further BoundControls (any SVD-family branch);
    ``attachments``: further forward-contract attachments. Guidance is per frame, linear ``min_cfg`` ->
    ``max_cfg``; the unconditional half has zero image embedding and zero image latent but the same control;
    cond/uncond run as one batch. Noise from a CPU generator seeded with ``seed``.
    ``image_embeds``/``image_latent`` may be passed precomputed ([1,1,D], [1,C,h,w]) to skip the encoders.
    ``compile``: run the UNet(+branch) step under torch.compile (first call per shape compiles for minutes).
    Returns latents [num_samples, F, 4, h, w] (scaled; decode with ``backbones.svd.decode_latents``). The memory
    budget (memory.check, before anything is allocated) covers the decode too when ``decode`` says it follows.
    ``step_cache``: a ``step_cache.StepCache`` reusing the last denoised estimate on steps it expects to change
    little (None or threshold 0: every step calls the model). ``speed``: a ``speed.Speed`` (regional compile of the
    UNet's blocks, fp8 compute, the SDPA backend); None: the defaults.
    """
    where = "SVD sampler"
    bb = with_fp8(bb, speed, where)
    if image.ndim == 3:
        image = image[None]
    _, H, W, _ = image.shape
    svdb.check_frames(bb, num_frames, H, W, node=where)
    bound = []
    if control is not None:
        if branch is None:
            raise ValueError("SVD sampler: a control video was given but no InterDyn branch; connect a branch")
        sig = control if isinstance(control, ControlSignal) else ControlSignal(control, registry.of(branch).signals[0])
        bound.append(bind(branch, sig, where=where))
    bound += list(controls)
    for k, bc in enumerate(bound):
        registry.check_pairing(bc.branch, bc.signal, "svd", where)
        if bc.signal is not None:
            bound[k] = bc.replace(signal=bc.signal.replace(video=check_control(bc.signal.video, num_frames, H, W)))
    dev, f = bb.device, bb.extra["vae_scale_factor"]
    cfg_on = max_cfg > 1.0
    w = guidance_ramp(num_frames, min_cfg, max_cfg).to(dev, torch.float32).view(1, num_frames, 1, 1, 1)
    guidance = Guidance(("uncond", "cond"), "uncond", ((w, "cond", "uncond"),)) if cfg_on else Guidance(("cond",),
                                                                                                        "cond")
    atts = registry.attachments(bound, bb) + list(attachments)
    extra_rows = [r for a in atts for r in a.guidance_rows()]
    guidance = guidance.with_rows(extra_rows)
    like = rows_like(guidance, extra_rows)
    check_budget(bb, num_frames, H, W, samples=num_samples, rows=num_samples * len(guidance.rows), attachments=atts,
                 decode=decode)
    gen = torch.Generator("cpu").manual_seed(int(seed))
    if image_embeds is None:
        image_embeds = svdb.encode_image_embeds(bb, image[:1])
    if image_latent is None:
        image_latent = svdb.encode_image_latent(bb, image[:1], noise_aug, gen)
    cond_lat = image_latent[:, None].expand(num_samples, num_frames, *image_latent.shape[1:]).to(dev)
    cond_emb = image_embeds.expand(num_samples, *image_embeds.shape[1:]).to(dev, bb.dtype)

    per_row = {"uncond": (torch.zeros_like(cond_lat), torch.zeros_like(cond_emb)), "cond": (cond_lat, cond_emb)}
    lat_in = torch.cat([per_row[like[r]][0] for r in guidance.rows])
    emb_in = torch.cat([per_row[like[r]][1] for r in guidance.rows])
    batch = len(guidance.rows) * num_samples
    tids = svdb.added_time_ids(fps_id, motion_bucket_id, noise_aug, batch, dev, bb.dtype)

    cfgs = bb.scheduler_config
    sigmas = karras_sigmas(steps, cfgs.get("sigma_min", 0.002), cfgs.get("sigma_max", 700.0), cfgs.get("rho", 7.0))
    shape = (num_samples, num_frames, bb.denoiser.config.out_channels, H // f, W // f)
    x = torch.randn(shape, generator=gen, dtype=torch.float32).to(dev) * math.sqrt(float(sigmas[0]) ** 2 + 1)

    pbar = runtime.progress(steps, "InterDyn sampling" if bound else "SVD sampling")
    modules = [bb.denoiser] + [m for a in atts for m in a.modules()]
    if step_cache is not None:
        step_cache.start(steps)
    with svdb.on_device(bb, *modules), running(bb, atts, speed, where, head_dim=64):
        denoised = x
        for i in range(steps):
            s, s_next = float(sigmas[i]), float(sigmas[i + 1])

            def predict(x_rows, rows, s=s, i=i):
                return denoise(bb, x_rows, s, lat_in, emb_in, tids, attachments=atts, rows=rows, step=(i, steps),
                               compile=compile)

            if step_cache is not None:
                denoised = step_cache(i, x, lambda: guided_step(predict, x, guidance), key=active_key(atts, i, steps))
            else:
                denoised = guided_step(predict, x, guidance)
            x = x + (x - denoised) / s * (s_next - s)
            if callback is not None:
                callback(i, x, denoised)
            pbar.update(1, preview=lambda: svdb.latent_preview_rgb(denoised[0, num_frames // 2]),
                        text=f"sigma {s_next:.3f}")
    pbar.close()
    return x


def check_budget(bb: Backbone, num_frames: int, height: int, width: int, *, samples: int = 1, rows: int = 2,
                 attachments=(), decode: bool = True, what: str = "SVD sampler") -> None:
    """Refuse a sample that cannot fit (memory.check) before anything is allocated: one UNet step (and the
    attachments' residual branches) over the guided step's batch rows, or the chunked decode, on the device, and
    the frames in host RAM."""
    mods = [m for a in attachments for m in a.modules()]
    dev_parts, host = memory.svd_sampling(bb, num_frames, height, width, rows=rows, samples=samples,
                                          branch=bool(mods), decode=decode, modules=tuple(mods))
    fix = (f"generate fewer frames, samples or a smaller size than {samples} x {num_frames} x {height} x {width}, "
           "offload 'model', or lower decode_chunk in the SVD Loader")
    memory.check(what, dev_parts, bb.device, fix)
    if host:
        memory.check(what, host, "cpu", fix)


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
