"""Wan sampling: the flow-matching schedule loop (Wan2.1 T2V/I2V, Wan2.2 I2V-A14B's two experts, Wan2.2 TI2V) on
the guided step, and the per-step model call a causal block loop reuses.

One step (:func:`predict_step`): the expert for the timestep (``flow.expert_for_timestep``: high-noise for
t >= boundary x 1000), the model input assembled by ``bb.layout`` (I2V: noisy latent ++ 4-channel first-frame mask
++ image latent; TI2V: the image latent in place of latent frame 0), the timesteps (one per sample, or per token:
TI2V's first-frame tokens at 0), and the guidance rows (CFG "uncond"/"cond", control guidance "no_control") run as
one batch through ``backbones.wan.forward`` with the attachments; the rows combined by ``guidance.Guidance``.

The loop (:func:`sample_wan`): the scheduler (UniPC or Euler, ``flow.make_scheduler``) with the shift of the
variant (``wan.default_shift``), the expert switch at the boundary with each expert's CFG scale, progress +
interrupt + latent previews through ``runtime``, noise from a CPU ``torch.Generator``, and a memory check before
anything is allocated (:func:`check_request`). With the pipeline's inputs it reproduces ``WanImageToVideoPipeline``
and ``WanPipeline`` (the tests compare the latents after every step on CPU in float32: bitwise with
``batched_cfg=False``, the pipeline's one row per forward; batched, CPU kernels round batch 2 differently, ~2e-6).

Shapes (diffusers' order): latents [B, C, f, h, w] normalised (C = 16, or 48 for TI2V); text [B, 512, D];
CLIP features [B, 257, 1280]; image [B, H, W, 3] 0..1; N = f * h/2 * w/2 video tokens, frame-major.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Sequence

import torch

from .. import runtime
from ..backbones import wan
from ..backbones.base import Backbone, on_device
from ..control import registry
from ..control.base import ControlBranch
from . import flow
from .cogvideox import _runs, bound_controls, fit_controls
from .guidance import Guidance, classifier_free, guided_step
from .speed import running, with_fp8
from .step_cache import active_key

WHERE = "Wan sampler"


# ------------------------------------------------------------------------------------------ conditions
@dataclass
class WanConds:
    """What every step of one request reuses (built once by :func:`prepare_conds`).

    Fields:
        text: row name -> [B, 512, D] text embeddings ("cond", "uncond", "no_control", or a method's own rows).
        parts: input-layout parts besides "noise", each [B, c, f, h, w] (I2V: "mask" [B, 4, ...], "image"
            [B, C, ...]; extra parts such as a widened projection's).
        image_embeds: CLIP features [B, 257, 1280] (Wan2.1 I2V), else None.
        first_frame_latent, first_frame_mask: TI2V's image latent [B, C, 1, h, w] and mask [1, 1, f, h, w]
            (0 on latent frame 0): the model input and the final latents are (1 - m) * image + m * latents.
        token_mask: [1, N] 0/1, the per-token timesteps are token_mask * t (TI2V), or None (one t per sample).
    """

    text: dict
    parts: dict = field(default_factory=dict)
    image_embeds: torch.Tensor | None = None
    first_frame_latent: torch.Tensor | None = None
    first_frame_mask: torch.Tensor | None = None
    token_mask: torch.Tensor | None = None

    def frames(self, start: int, stop: int) -> "WanConds":
        """The same conditions for latent frames [start, stop) only (a causal block of a longer clip)."""
        parts = {k: v[:, :, start:stop] for k, v in self.parts.items()}
        mask = None if self.first_frame_mask is None else self.first_frame_mask[:, :, start:stop]
        tok = None
        if self.token_mask is not None:
            f = self.first_frame_mask.shape[2] if self.first_frame_mask is not None else None
            if f is None:
                raise ValueError("WanConds.frames: a token mask without the frame mask cannot be sliced")
            per = self.token_mask.shape[1] // f
            tok = self.token_mask[:, start * per:stop * per]
        return dataclasses.replace(self, parts=parts, first_frame_mask=mask, token_mask=tok)


def prepare_conds(bb: Backbone, image: torch.Tensor | None, prompt_embeds: torch.Tensor,
                  negative_embeds: torch.Tensor | None, num_frames: int, height: int, width: int, *,
                  rows: Sequence[str] = ("cond",), inputs: dict | None = None,
                  generator: torch.Generator | None = None, where: str = WHERE) -> WanConds:
    """The conditions of a request: the image condition of the variant (``wan.i2v_condition``: VAE latent and
    mask, CLIP features on Wan2.1 I2V; TI2V: the first-frame latent and the token mask), the text per row
    ("uncond" takes ``negative_embeds``, every other row the prompt), and extra layout parts (``inputs``)."""
    e = bb.extra
    dev, dtype = bb.device, bb.dtype
    b = image.shape[0] if image is not None else prompt_embeds.shape[0]
    needs_image = e["i2v"] or e["ti2v"]
    if needs_image and image is None:
        raise ValueError(f"{where}: {bb.variant} is an image-to-video model; connect an 'image' (the first frame)")
    if not needs_image and image is not None:
        raise ValueError(f"{where}: {bb.variant} is text-to-video and takes no image; disconnect 'image' or load an "
                         "I2V/TI2V model")

    def rows_of(emb):
        emb = emb.to(dev, dtype)
        return emb if emb.shape[0] == b else emb.expand(b, *emb.shape[1:])

    text = {}
    for r in rows:
        if r == "uncond":
            if negative_embeds is None:
                raise ValueError(f"{where}: CFG needs negative prompt embeddings (encode '' or the negative prompt)")
            text[r] = rows_of(negative_embeds)
        else:
            text[r] = rows_of(prompt_embeds)
    conds = WanConds(text=text)
    if needs_image:
        c = wan.i2v_condition(bb, image, num_frames, height, width, generator=None)
        if c.condition is not None:
            m = bb.layout.size("mask")
            conds.parts = {"mask": c.condition[:, :m].to(dev), "image": c.condition[:, m:].to(dev)}
        conds.image_embeds = c.image_embeds
        if c.first_frame_latent is not None:
            conds.first_frame_latent = c.first_frame_latent.to(dev)
            conds.first_frame_mask = c.first_frame_mask.to(dev)
            conds.token_mask = c.token_mask.to(dev)
    for k, v in (inputs or {}).items():
        conds.parts[k] = v.to(dev)
    return conds


def first_frame(x: torch.Tensor, conds: WanConds) -> torch.Tensor:
    """TI2V: latents with latent frame 0 replaced by the image latent (the model input, and the final latents);
    x unchanged for other variants."""
    if conds.first_frame_latent is None:
        return x
    m = conds.first_frame_mask.to(x.device, x.dtype)
    return (1 - m) * conds.first_frame_latent.to(x.device, x.dtype) + m * x


def model_input(bb: Backbone, x: torch.Tensor, conds: WanConds) -> torch.Tensor:
    """[B, C_in, f, h, w] for latents x [B, C, f, h, w]: TI2V's first frame replaced, then ``bb.layout``."""
    x = first_frame(x, conds)
    layout = bb.layout
    if layout is None or layout.names == ("noise",) and not conds.parts:
        return x
    return layout.assemble({"noise": x, **conds.parts}, dim=1)


def model_timestep(t, conds: WanConds, batch: int) -> torch.Tensor:
    """The model's timesteps for scheduler timestep ``t``: [B] (t for every sample) or, with a token mask, the
    per-token [B, N] = token_mask * t (as WanImageToVideoPipeline with ``expand_timesteps``)."""
    tt = torch.as_tensor(t)
    if conds.token_mask is not None:
        return flow.token_timesteps(tt, conds.token_mask, batch).to(conds.token_mask.device)
    return tt.reshape(()).expand(batch)


# ---------------------------------------------------------------------------------------- the one step
def predict_step(bb: Backbone, x: torch.Tensor, t, conds: WanConds, guidance: Guidance, *, attachments=(),
                 expert=None, step: tuple[int, int] | None = None, rope_offset: int = 0,
                 timestep: torch.Tensor | None = None, batched: bool = True, parallel=None) -> torch.Tensor:
    """One guided velocity prediction -> [B, C, f, h, w] float32 (what the scheduler steps with).

    Args:
        x: the current latents [B, C, f, h, w] (the whole clip, or one causal block with ``conds.frames``).
        t: the scheduler timestep (a number or 0-d tensor in 0..1000).
        conds: :func:`prepare_conds`' result; ``conds.text`` must hold every row of ``guidance``.
        guidance: the rows and how they combine (``guidance.classifier_free``); the rows run as one batch.
        attachments: forward-contract attachments (the controls' and any others: a KV cache, an observer).
        expert: an expert name or module; None picks it by ``t`` and the bundle's boundary.
        step: (i, num_steps) for attachments with a step range.
        rope_offset: latent frame of x's first frame (a causal block's absolute position).
        timestep: the model timesteps [B] or per-token [B, N] when they are not ``t`` everywhere (a causal
            block with clean context tokens); default :func:`model_timestep`.
        batched: the guidance rows in one forward (fastest); False: one forward per row (the pipeline's way,
            bitwise its numbers on the CPU, where kernels round differently at another batch size; less memory).
        parallel: a ``sampling.parallel.Parallel`` of a torchrun launch (``parallel.plan``): the rows split over
            its CFG processes and x's latent frames over its sequence processes (Ulysses attention; every
            attachment must work on a frame shard, ``frame_shards = True``, and sits before the exchange in the
            chain: a KV cache then holds this process's shard). Every process calls this with the same arguments
            and gets the whole prediction. A causal block loop passes its block and ``rope_offset`` as usual.
    """
    if expert is None:
        expert = flow.expert_for_timestep(t, bb.extra.get("boundary"), bb.extra.get("num_train_timesteps", 1000))
    b = x.shape[0]
    x_in = model_input(bb, x, conds).to(bb.dtype)
    tt = model_timestep(t, conds, b) if timestep is None else timestep
    img = conds.image_embeds

    sp = parallel is not None and parallel.sp > 1
    if sp:
        parallel.check_attachments(attachments, WHERE)

    def predict(x_rows, rows):
        if not batched and len(rows) > 1:
            return torch.cat([predict(x_rows[sl], {r: slice(0, b)}) for r, sl in rows.items()])
        n = len(rows)
        emb = torch.cat([conds.text[r] for r in rows]) if n > 1 else conds.text[next(iter(rows))]
        ts = torch.cat([tt] * n) if n > 1 else tt
        im = None if img is None else (torch.cat([img] * n) if n > 1 else img)
        atts, offset, f = attachments, rope_offset, x_rows.shape[2]
        if sp:  # this process's frames at their absolute position; Ulysses attention in the self-attention slots
            a, e = parallel.frame_range(f)
            if ts.ndim == 2:
                per = ts.shape[1] // f
                ts = ts[:, a * per:e * per]
            x_rows, offset = x_rows[:, :, a:e], rope_offset + a
            atts = list(attachments) + [sequence_attention(parallel, (a, e, f))]
        out = wan.forward(bb, x_rows, ts.to(x_rows.device), emb, image_embeds=im, attachments=atts,
                          rows=rows, step=step, expert=expert, rope_offset=offset).float()
        return parallel.gather_frames(out, 2, f) if sp else out

    return guided_step(predict, x_in, guidance, parallel=parallel)


def sequence_attention(par, frames) -> "SequenceParallel":
    """The Ulysses attachment for Wan's self-attention slots (``blocks.<i>.attn1``) of a frame-sharded forward."""
    from .parallel import SequenceParallel

    def layers(ctx):
        return [n for n in wan.attention_layers(ctx.bb, ctx.extra.get("expert")) if n.endswith(".attn1")]

    return SequenceParallel(par, layers, frames=frames)


# ------------------------------------------------------------------------------------------ memory
def bundle_bytes_on(bb: Backbone, device) -> int:
    """Bytes of the bundle's tensors now on ``device`` (what a later free-memory reading no longer shows)."""
    device = torch.device(device)
    seen, total = set(), 0
    mods = list(wan.expert_modules(bb).values()) + [bb.text_encoder, bb.image_encoder, bb.vae]
    for m in mods:
        if m is None:
            continue
        for p in list(m.parameters()) + list(m.buffers()):
            if id(p) in seen or p.device.type != device.type:
                continue
            seen.add(id(p))
            total += p.numel() * p.element_size()
    return total


def check_request(bb: Backbone, num_frames: int, height: int, width: int, cfg_batch: int, *,
                  memory_budget_gb: float | None = None, where: str = WHERE):
    """Refuse a request that cannot fit the device in the bundle's memory mode before anything is allocated,
    naming the mode that would fit (``wan.check_memory``). Budget: ``memory_budget_gb`` (the whole request:
    weights + activations), else the device's free memory plus what the bundle already holds there; no check
    on the CPU without a budget. Returns the estimate or None."""
    stats = bb.extra.get("stats")
    if stats is None:
        return None
    if memory_budget_gb is not None:
        budget = memory_budget_gb * wan.GB
    else:
        free = wan.free_device_bytes(bb.device)
        if free is None:
            return None
        budget = free + bundle_bytes_on(bb, bb.device)
    mem = bb.extra["memory"]
    storage = "fp8" if bb.storage_dtype is not None else "bf16"
    try:
        return wan.check_memory(stats, int(budget), offload=mem["offload"], storage=storage,
                                blocks_on_gpu=mem.get("blocks_on_gpu"), what=f"{where} request",
                                frames=num_frames, height=height, width=width, cfg_batch=cfg_batch,
                                vae_tiling=bb.vae_tiling, compute_bytes=torch.tensor([], dtype=bb.dtype).element_size())
    except wan.WanMemoryError as ex:
        raise wan.WanMemoryError(f"{where}: {ex} The memory mode is the Wan Loader's: reload with that setting, "
                                 "or lower num_frames / the size.") from None


# ------------------------------------------------------------------------------------------ the loop
def expert_guidance(bb: Backbone, cfg=None, cfg_low_noise=None, control_cfg: float = 1.0,
                    has_control: bool = False) -> dict:
    """{expert name: Guidance}: ``cfg`` for the high-noise expert (or the only model), ``cfg_low_noise`` for the
    low-noise one (None: ``cfg``); ``cfg`` None takes the release's per-expert scales (``bb.extra["expert_cfg"]``)."""
    rel = bb.extra.get("expert_cfg") or {"high_noise": 5.0}
    if cfg is None:
        scales = dict(rel)
        if cfg_low_noise is not None:
            scales["low_noise"] = cfg_low_noise
    else:
        scales = {"high_noise": float(cfg), "low_noise": float(cfg if cfg_low_noise is None else cfg_low_noise)}
    names = list(wan.expert_modules(bb))
    return {n: classifier_free(float(scales.get(n, scales["high_noise"])), control_cfg, has_control) for n in names}


def sample_wan(bb: Backbone, image: torch.Tensor | None, prompt_embeds: torch.Tensor,
               negative_embeds: torch.Tensor | None = None, *, controls: Sequence = (),
               branch: ControlBranch | None = None, attachments: Sequence = (), num_frames: int = 81,
               height: int | None = None, width: int | None = None, steps: int | None = None, cfg=None,
               cfg_low_noise=None, shift: float | None = None, scheduler: str = "unipc",
               boundary: float | None = None, seed: int = 0, latents: torch.Tensor | None = None,
               preview: bool = False, desc: str = "Wan", control_cfg: float = 1.0, inputs: dict | None = None,
               memory_budget_gb: float | None = None, batched_cfg: bool = True, callback=None,
               step_cache=None, parallel="off", parallel_engine: str = "auto", speed=None) -> torch.Tensor:
    """Generate -> normalised latents [B, C, f, h, w] float32 (``wan.decode_latents`` makes frames).

    Args:
        image: [B, H, W, 3] 0..1 at height x width (I2V/TI2V), or None (T2V: then height and width are needed).
        prompt_embeds / negative_embeds: [B|1, 512, D] from ``wan.encode_prompt``; the negative is needed when
            some expert's CFG scale is > 1.
        controls: BoundControl(s), or ControlSignal(s) bound to ``branch``; each branch kind's attachment comes
            from the registry (family "wan"), with its weight and step range; control videos [F, H, W, C] (any C,
            e.g. 6-channel Plücker rays) are fitted to height x width. attachments: more, run after them.
        steps: default the release's (40 for I2V-A14B). cfg / cfg_low_noise: the high- and low-noise experts'
            guidance (:func:`expert_guidance`; <= 1 runs one row). shift: default ``wan.default_shift`` of the
            variant and size. scheduler: "unipc" (the releases') or "euler". boundary: the two-expert switch
            ratio (default the bundle's, 0.9 for I2V-A14B).
        seed: the CPU generator of the initial noise (the same numbers on every device).
        latents: the initial noise [B, C, f, h, w] instead of drawing it.
        control_cfg: > 1 adds a "no_control" row and extrapolates away from it (as the CogVideoX sampler).
        inputs: extra input-layout parts by name ([B, c, f, h, w], the same for every row).
        memory_budget_gb: the memory the request may use (default: what the device has; see check_request).
        batched_cfg: the guidance rows in one batch (default) or one forward each (half the activations; on the
            CPU the pipeline's numbers bit for bit).
        callback: ``callback(i, t, latents)`` after each scheduler step (the latents as the scheduler left them).
        step_cache: a ``step_cache.StepCache`` (None or threshold 0: every step calls the model); an expert switch
            always calls it.
        parallel: in a torchrun launch, "auto" | "cfg" | "sequence" | "off" (``sampling.parallel.plan``): the
            guidance rows and/or the latent frames split over the processes; every process runs this call and
            returns the same latents. parallel_engine: "auto" (yunchang when installed) | "yunchang" | "torch".
        speed: a ``speed.Speed`` (regional compile, fp8 compute, the SDPA backend); None: the defaults.
    """
    bb = with_fp8(bb, speed, WHERE)
    e = bb.extra
    if bb.family != "wan":
        raise ValueError(f"{WHERE}: the backbone is {bb.family}; load a Wan model")
    if image is not None:
        if image.ndim != 4 or image.shape[-1] != 3:
            raise ValueError(f"{WHERE}: 'image' must be [B, H, W, 3]; got {tuple(image.shape)}")
        height, width = (height or image.shape[1]), (width or image.shape[2])
    if height is None or width is None:
        raise ValueError(f"{WHERE}: a text-to-video request needs height and width")
    wan.check_frames(bb, num_frames, height, width, node=WHERE)
    steps = int(steps or e["steps"])
    shift = float(shift if shift is not None else wan.default_shift(e["kind"], height, width))
    if boundary is None:
        boundary = e.get("boundary")
    if bb.experts and boundary is None:
        raise ValueError(f"{WHERE}: a two-expert model needs a boundary (the release's is 0.9)")
    if not bb.experts:
        boundary = None
    bound = fit_controls(bound_controls(controls, branch, "wan", WHERE), num_frames, height, width, WHERE, rgb=False)
    atts = registry.attachments(bound, bb) + list(attachments)
    # perturbation rows the attachments declare (MATRIX CAG/CMG, PAG-style): each copies a row's inputs
    extra_rows = [r for a in atts for r in a.guidance_rows()]
    guid = {n: g.with_rows(extra_rows)
            for n, g in expert_guidance(bb, cfg, cfg_low_noise, control_cfg, has_control=len(bound) > 0).items()}
    order = ("uncond", "cond", "no_control") + tuple(r[0] for r in extra_rows)
    rows = sorted({r for g in guid.values() for r in g.rows}, key=order.index)
    b = image.shape[0] if image is not None else prompt_embeds.shape[0]
    check_request(bb, num_frames, height, width, b * (max(len(g.rows) for g in guid.values()) if batched_cfg else 1),
                  memory_budget_gb=memory_budget_gb)

    from .parallel import plan

    par = plan(parallel, rows=max(len(g.rows) for g in guid.values()), engine=parallel_engine, where=WHERE,
               attachments=atts, heads=wan.expert_module(bb).config.num_attention_heads,
               frames=wan.latent_shape(bb, num_frames, height, width)[2])
    dev = bb.device
    gen = torch.Generator().manual_seed(int(seed))
    shape = wan.latent_shape(bb, num_frames, height, width, batch=b)
    if latents is None:
        latents = torch.randn(shape, generator=gen, dtype=torch.float32)  # first, as the pipeline draws it
    elif tuple(latents.shape) != tuple(shape):
        raise ValueError(f"{WHERE}: 'latents' must be {list(shape)}; got {list(latents.shape)}")
    latents = latents.to(dev, torch.float32)
    conds = prepare_conds(bb, image, prompt_embeds, negative_embeds, num_frames, height, width, rows=rows,
                          inputs=inputs)
    for name, like, _ in extra_rows:
        conds.text[name] = conds.text[like]
    sched = flow.make_scheduler(scheduler, shift, steps, config=bb.scheduler_config, device=dev)
    timesteps = sched.timesteps
    controls_of = atts[:len(atts) - len(attachments)]
    ntt = e.get("num_train_timesteps", 1000)
    pbar = runtime.progress(len(timesteps), desc)
    if step_cache is not None:
        step_cache.start(len(timesteps))
    modules = [m for a in atts for m in a.modules()]
    head_dim = wan.expert_module(bb).config.attention_head_dim
    with torch.no_grad(), on_device(bb, *modules), running(bb, atts, speed, WHERE, head_dim):
        for i, t in enumerate(timesteps):
            name = flow.expert_for_timestep(t, boundary, ntt)
            g = guid[name]
            if "no_control" in g.rows and not any(_runs(a, i, len(timesteps)) for a in controls_of):
                g = g.without("no_control")  # a step with no control running has nothing to guide
            def call(t=t, g=g, name=name, i=i):
                return predict_step(bb, latents, t, conds, g, attachments=atts, expert=name,
                                    step=(i, len(timesteps)), batched=batched_cfg, parallel=par)
            if step_cache is not None:
                v = step_cache(i, latents, call, key=(name, g.rows, active_key(controls_of, i, len(timesteps))))
            else:
                v = call()
            latents = sched.step(v, t, latents, return_dict=False)[0]
            if callback is not None:
                callback(i, t, latents)
            pbar.update(1, preview=(lambda z=latents: _preview(z)) if preview else None,
                        text=name.replace("_", "-") if bb.experts else None)
    pbar.close()
    if bb.extra.get("placement") is not None and bb.extra["placement"].mode != "none":
        wan.park_experts(bb)  # the VAE decode comes next
    return first_frame(latents, conds)


def _preview(z: torch.Tensor):
    from ..backbones.cogvideox import latent_preview_rgb

    return latent_preview_rgb(z[0, :, -1])


def sample_and_decode(bb: Backbone, image, prompt_embeds, negative_embeds=None, **kw):
    """(latents, frames [B, F, H, W, 3] 0..1 on the CPU)."""
    lat = sample_wan(bb, image, prompt_embeds, negative_embeds, **kw)
    return lat, wan.decode_latents(bb, lat)
