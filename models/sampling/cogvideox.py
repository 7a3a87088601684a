"""CogVideoX sampling: the scheduler family and the I2V schedule loop (batched CFG, dynamic CFG, control guidance,
CPU-generator seeds, progress/interrupt). The denoiser forward with its doors is the family's
(``backbones.cogvideox.forward``); each step is one ``guidance.guided_step`` over it, with the controls' attachments.

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
from ..control import registry
from ..control.base import BoundControl, ControlBranch, ControlSignal, bind
from ..fp8 import FP8Linear  # noqa: F401  (the one fp8 module of every family, importable here as before)
from .guidance import classifier_free, guided_step, rows_like
from .speed import running, with_fp8
from .step_cache import active_key

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


# ------------------------------------------------------------------------------------------------ fp8
def enable_fp8_linears(blocks) -> int:
    """Swap the token-wise Linears (attention q/k/v/out, feed-forward) of CogVideoXBlocks for :class:`FP8Linear`
    in place (benchmarks; the samplers' fp8 option uses ``fp8.convert``, which copies); the adaLN linears (one row
    per sample) stay. Returns how many were swapped."""
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
    """Control video [F,H,W,C] must match the generation (F frames at the image's size). C is 3 per video;
    a branch that reads several videos gets them stacked on channels (multiples of 3)."""
    if video.ndim != 4 or video.shape[-1] == 0 or video.shape[-1] % 3:
        raise ValueError(f"{node}: control video must be [F,H,W,3] (or several stacked on channels); got "
                         f"{tuple(video.shape)}")
    fr, hh, ww = video.shape[:3]
    if fr != num_frames or (hh, ww) != (height, width):
        raise ValueError(f"{node}: control is {fr} frames of {hh}x{ww} but the generation is {num_frames} frames "
                         f"of {height}x{width}; paint the control with num_frames={num_frames} at the image's size "
                         "(the same crop as the image).")


def bound_controls(controls, branch: ControlBranch | None, family: str, where: str) -> list[BoundControl]:
    """Controls given as BoundControl, or as bare ControlSignals bound to ``branch``; each checked against the
    registry (the branch's family and the signal kinds it takes)."""
    out = []
    for c in controls:
        if isinstance(c, ControlSignal):
            if branch is None:
                raise ValueError(f"{where}: a control was given but no branch; connect a branch loader (or remove "
                                 "the control)")
            c = bind(branch, c, where=where)
        registry.check_pairing(c.branch, c.signal, family, where)
        out.append(c)
    return out


def fit_controls(bound: Sequence[BoundControl], num_frames: int, height: int, width: int,
                 where: str, rgb: bool = True) -> list[BoundControl]:
    """Each control video checked for the generation's frame count and fitted to its size like the image
    (``video_io.fit_frames``: cover, then center-crop). ``rgb`` False lets any channel count through (e.g. 6-channel
    Plücker rays); the branch checks its own."""
    from ..video_io import fit_frames

    out = []
    for bc in bound:
        sig = bc.signal
        if sig is not None:
            if sig.video.shape[0] != num_frames:
                raise ValueError(f"{where}: control is {sig.video.shape[0]} frames of "
                                 f"{sig.video.shape[1]}x{sig.video.shape[2]} but the generation is {num_frames} "
                                 f"frames of {height}x{width}; paint the control with num_frames={num_frames}")
            sig = sig.replace(video=fit_frames(sig.video.float(), height, width))
            if rgb:
                check_control(sig.video, num_frames, height, width, where)
        out.append(bc.replace(signal=sig))
    return out


def sample_cogvideox(bb: Backbone, image: torch.Tensor, prompt_embeds: torch.Tensor,
                     negative_embeds: torch.Tensor | None = None, *, controls: Sequence = (),
                     branch: ControlBranch | None = None, attachments: Sequence = (), num_frames: int = 49,
                     steps: int = 50, cfg: float = 6.0, dynamic_cfg: bool = False, seed: int = 0,
                     scheduler: str = "ddim", eta: float = 0.0, sample_image_latent: bool = True,
                     preview: bool = False, latents: torch.Tensor | None = None, desc: str = "CogVideoX",
                     control_cfg: float = 1.0, inputs: dict | None = None,
                     decode: bool = False, step_cache=None, parallel="off",
                     parallel_engine: str = "auto", speed=None) -> torch.Tensor:
    """Image-to-video sampling -> latents [B,f,C,h,w] (scaled; :func:`cog.decode_latents` turns them to frames).

    Args:
        image: [B,H,W,3] in 0..1 (the first frame); B must match prompt_embeds' batch (or prompts broadcast).
        prompt_embeds / negative_embeds: [B|1,T,D] from :func:`cog.encode_prompt`.
        controls: BoundControl(s), or ControlSignal(s) bound to ``branch``; each runs through its branch's
            attachment (the registry's) with its own weight and step range [start, end) as fractions of the steps;
            controls of one branch add up. Control videos ([F,H,W,3]) are fitted to the image size.
        attachments: further forward-contract attachments (observers, method hooks), run after the controls'.
        cfg: guidance scale; <= 1 runs one forward per step (no negative). Cond and uncond run as one batch.
        dynamic_cfg: the release's cosine guidance ramp.
        control_cfg: control guidance; > 1 adds a batch row ("no_control") where every control is zeroed (the
            branch's "no information" input, as stage-2 dropout trains it) and extrapolates away from it:
            out = cond + (cfg - 1)(cond - uncond) + (control_cfg - 1)(cond - no_control). 1 = off.
        seed: the CPU generator seed (image-latent sample, initial noise, DPM noise): same result on CPU/GPU.
        sample_image_latent: sample the image latent like the diffusers pipeline (else the posterior mode).
        inputs: extra input-layout parts by name ([B,f,C,h,w] latents, e.g. "id_map"), same for every row.
        decode: the caller decodes the result next; the memory budget (checked before anything is allocated,
            memory.check) then covers the decode too.
        step_cache: a ``step_cache.StepCache``: steps whose prediction it expects to change little reuse the last
            one instead of calling the model (None or threshold 0: every step calls it, as without).
        parallel: in a torchrun launch, "auto" | "cfg" | "sequence" | "off" (``sampling.parallel.plan``): the
            guidance rows and/or the latent frames split over the processes (every process runs this call and
            returns the same latents). parallel_engine: "auto" (yunchang when installed) | "yunchang" | "torch".
        speed: a ``speed.Speed`` (regional compile, fp8 compute, the SDPA backend); None: the defaults.
    """
    where = "CogVideoX sampler"
    bb = with_fp8(bb, speed, where)
    tr = bb.denoiser
    b, height, width = image.shape[0], image.shape[1], image.shape[2]
    cog.check_frames(bb, num_frames, height, width, node=where)
    bound = fit_controls(bound_controls(controls, branch, "cogvideox", where), num_frames, height, width, where)
    atts = registry.attachments(bound, bb) + list(attachments)
    controls_of = atts[:len(atts) - len(attachments)]
    extra_rows = [r for a in atts for r in a.guidance_rows()]
    guidance = classifier_free(cfg, control_cfg, has_control=len(bound) > 0).with_rows(extra_rows)
    like = rows_like(guidance, extra_rows)
    check_budget(bb, num_frames, height, width, rows=b * len(guidance.rows), attachments=atts, decode=decode)
    gen = torch.Generator().manual_seed(int(seed))
    f = cog.latent_frames(bb, num_frames)
    dev = bb.device
    dtype = bb.dtype
    layout = bb.layout or cog.default_layout(tr.config.in_channels, bb.extra.get("latent_channels", 16))
    img_lat = cog.image_condition(bb, image, f, generator=gen if sample_image_latent else None).to(dev, dtype)
    c = bb.extra.get("latent_channels", tr.config.out_channels)
    shape = (b, img_lat.shape[1], c, img_lat.shape[3], img_lat.shape[4])
    sched = make_scheduler(bb, scheduler)
    sched.set_timesteps(steps, device=dev)
    timesteps = sched.timesteps
    if latents is None:
        latents = torch.randn(shape, generator=gen, dtype=dtype).to(dev)
    latents = (latents * sched.init_noise_sigma).to(dev, dtype)

    pos = prompt_embeds.to(dev, dtype)
    if pos.shape[0] != b:
        pos = pos.expand(b, *pos.shape[1:])
    text = {"cond": pos, "no_control": pos}
    if "uncond" in guidance.rows:
        if negative_embeds is None:
            negative_embeds = cog.encode_prompt(bb, [cog.NEGATIVE_DEFAULT] * b, max_length=pos.shape[1])
        neg = negative_embeds.to(dev, dtype)
        text["uncond"] = neg if neg.shape[0] == b else neg.expand(b, *neg.shape[1:])
    extra = {k: v.to(dev, dtype) for k, v in (inputs or {}).items()}
    rotary = cog.rotary_for(tr, shape[1], shape[3], shape[4], dev)
    from .parallel import plan

    par = plan(parallel, rows=len(guidance.rows), engine=parallel_engine, where=where, attachments=atts,
               heads=tr.config.num_attention_heads, frames=f, multiple=tr.config.patch_size_t or 1)
    sp = par is not None and par.sp > 1

    def forward(latent_in, ts, emb, rows, step):
        if not sp:
            return cog.forward(bb, latent_in, ts, emb, attachments=atts, rows=rows, image_rotary_emb=rotary,
                               step=step)
        return sequence_forward(bb, par, latent_in, ts, emb, attachments=atts, rows=rows, rotary=rotary,
                                step=step)

    def predict(x_rows, rows):
        n = len(rows)
        x_in = sched.scale_model_input(x_rows, t)
        parts = {"noise": x_in, **{k: torch.cat([v] * n) for k, v in extra.items()}}
        if layout.has("image"):
            parts["image"] = torch.cat([img_lat] * n)
        emb = torch.cat([text[like[r]] for r in rows]) if n > 1 else text[like[next(iter(rows))]]
        out = forward(layout.assemble(parts, dim=2), t.expand(n * b), emb, rows, (i, len(timesteps)))
        return out.float()

    old_x0 = None
    pbar = runtime.progress(len(timesteps), desc)
    if step_cache is not None:
        step_cache.start(len(timesteps))
    modules = [tr] + [m for a in atts for m in a.modules()]
    attention = fast_attention(dev) if speed is None or speed.attention == "auto" else contextlib.nullcontext()
    with torch.no_grad(), cog.on_device(bb, *modules), attention, \
            running(bb, atts, speed, where, tr.config.attention_head_dim):
        for i, t in enumerate(timesteps):
            g = guidance
            if "no_control" in g.rows and not any(_runs(a, i, len(timesteps)) for a in controls_of):
                g = g.without("no_control")  # a step with no control running has nothing to guide
            if dynamic_cfg and "uncond" in g.rows:
                g = g.with_scale("cond", "uncond", dynamic_guidance(cfg, t.item(), steps))
            if step_cache is not None:
                key = (g.rows, active_key(controls_of, i, len(timesteps)))
                out = step_cache(i, latents, lambda: guided_step(predict, latents, g, parallel=par), key=key)
            else:
                out = guided_step(predict, latents, g, parallel=par)
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


def sequence_forward(bb: Backbone, par, latent_in: torch.Tensor, timestep, prompt_embeds: torch.Tensor, *,
                     attachments=(), rows=None, rotary=None, step=None) -> torch.Tensor:
    """``cog.forward`` with this process's latent frames only (``par``: a sequence-parallel ``Parallel``) and
    Ulysses attention in every ``attn1`` slot (the text prefix of the joint attention stays on every process); the
    other processes' frames gathered after -> the whole output [B,f,C,h,w], as one process computes it.

    Positions: the rotary rows of these frames; models with a positional table (CogVideoX-5B-I2V's learned one,
    2B's sin-cos) see, for the duration of the call, the whole clip's table cut to the text rows and these frames'
    rows, so the patch embedding adds exactly what it adds in one process."""
    from .parallel import SequenceParallel

    tr = bb.denoiser
    cfg = tr.config
    f, h, w = latent_in.shape[1], latent_in.shape[3], latent_in.shape[4]
    p_t = cfg.patch_size_t or 1
    a, e = par.frame_range(f, p_t)
    hw = (h // cfg.patch_size) * (w // cfg.patch_size)
    rot = rotary if rotary is not None else cog.rotary_for(tr, f, h, w, latent_in.device)
    if rot is not None:
        rot = tuple(r[a // p_t * hw:e // p_t * hw] for r in rot)
    names = list(cog.attention_layers(tr))
    sp_att = SequenceParallel(par, lambda ctx: names, text_prefix=lambda ctx: ctx.text_in.shape[1], frames=(a, e, f))
    with _frame_positions(tr.patch_embed, f, a, e, h, w, hw, p_t):
        out = cog.forward(bb, latent_in[:, a:e], timestep, prompt_embeds, attachments=list(attachments) + [sp_att],
                          rows=rows, image_rotary_emb=rot, step=step)
    return par.gather_frames(out, 1, f, p_t)


@contextlib.contextmanager
def _frame_positions(pe, f: int, a: int, e: int, h: int, w: int, hw: int, p_t: int):
    """CogVideoXPatchEmbed with a positional table adds, while this is open, the rows the whole clip of ``f``
    latent frames gives its frames [a, e) (and the text rows), instead of the table of a clip of e - a frames."""
    if not (pe.use_positional_embeddings or pe.use_learned_positional_embeddings):
        yield
        return

    def pre(frames):  # the pixel-frame count the patch embedding derives from latent frames
        return (frames - 1) * pe.temporal_compression_ratio + 1

    if (pe.sample_height, pe.sample_width, pe.sample_frames) == (h, w, pre(f)):
        whole = pe.pos_embedding
    else:
        whole = pe._get_positional_embeddings(h, w, pre(f), device=pe.proj.weight.device)
    n = pe.max_text_seq_length
    table = torch.cat([whole[:, :n], whole[:, n + a // p_t * hw:n + e // p_t * hw]], dim=1)
    saved = (pe.pos_embedding, pe.sample_height, pe.sample_width, pe.sample_frames)
    pe.pos_embedding, pe.sample_height, pe.sample_width, pe.sample_frames = table, h, w, pre(e - a)
    try:
        yield
    finally:
        pe.pos_embedding, pe.sample_height, pe.sample_width, pe.sample_frames = saved


def _runs(att, step: int, num_steps: int) -> bool:
    active = getattr(att, "active", None)
    return bool(active((step, num_steps))) if callable(active) else True


def check_budget(bb: Backbone, num_frames: int, height: int, width: int, *, rows: int, attachments=(),
                 decode: bool = True, what: str = "CogVideoX sampler") -> None:
    """Refuse a sample that cannot fit (memory.check) before anything is allocated: one transformer step at this
    size over the guided step's batch rows with the attachments' modules (their transformer blocks hold
    residuals), or the decode, on the device, and the frames in host RAM."""
    from diffusers.models.transformers.cogvideox_transformer_3d import CogVideoXBlock

    mods = [m for a in attachments for m in a.modules()]
    layers = sum(isinstance(b, CogVideoXBlock) for m in mods for b in m.modules())
    dev_parts, host = memory.cogvideox_sampling(bb, num_frames, height, width, rows=rows, branch_layers=layers,
                                                decode=decode, modules=tuple(mods))
    fix = (f"generate fewer frames or a smaller size than {num_frames} x {height} x {width}, turn vae_tiling on in "
           "the loader, offload 'model', or cfg <= 1 (half the rows)")
    memory.check(what, dev_parts, bb.device, fix)
    if host:
        memory.check(what, host, "cpu", f"generate fewer frames or a smaller size than {num_frames} x {height} x "
                     f"{width}")


def sample_and_decode(bb: Backbone, image, prompt_embeds, negative_embeds=None, **kw):
    """(latents, frames [B,F,H,W,3] 0..1 CPU)."""
    lat = sample_cogvideox(bb, image, prompt_embeds, negative_embeds, **{"decode": True, **kw})
    return lat, cog.decode_latents(bb, lat)
