"""Causal block sampling on the Wan family (GameCraft-2 §4.3-4.4, as Self-Forcing and LongLive generate): the video
is made block after block, each block attending to a KV cache of what came before.

One block (:meth:`CausalRollout.generate`), latent frames [a, a + n):
1. noise from the rollout's CPU generator;
2. the denoising steps, each one guided step (``sampling.wan.predict_step``: the expert of its timestep, the
   input layout, the guidance rows, every attachment) with RoPE at the block's absolute frames (``rope_offset=a``)
   and a :class:`KVCache` attachment that appends the cached keys/values of the context to every self-attention
   and serves the prompt's cross-attention keys/values from its cache;
   - ``few_step`` (the distilled students: Self-Forcing, LongLive, GameCraft-2's DMD): predict x0 = x - sigma v,
     re-noise to the next timestep x = (1 - sigma') x0 + sigma' e with fresh noise; no CFG by default; the
     default timesteps [1000, 937.5, 833.33, 625] are Self-Forcing's [1000, 750, 500, 250] warped by shift 5, two
     on each side of Wan2.2's expert boundary (t >= 900: high-noise expert), so both experts take two steps;
   - ``multi_step`` (a bidirectional teacher run causally, or any model): the family's scheduler (UniPC or Euler,
     ``flow.make_scheduler``) over ``steps`` with per-expert CFG;
3. the clean pass: one more forward of the finished block at t = 0 in "write" mode, once per expert the schedule
   uses (each expert attends with its own weights, so each keeps its own cache), which appends the block's
   self-attention keys/values (after the norms and RoPE, at its absolute frames) to the cache;
4. eviction: the cache keeps the first ``sink_latent_frames`` latent frames of the rollout (the sink: the first
   frame, GameCraft's coordinate origin) and the last ``window_latent_frames`` frames; it never holds more.

So block k's queries attend to the sink, the window before it and its own tokens: exactly one forward over the
whole video with per-token timesteps (0 on the context) and the block-causal mask restricted to sink + window
(tests/models/sampling/test_causal.py compares every step).

A prompt switch before a block (:meth:`CausalRollout.set_prompt`, or a new prompt in ``generate``) drops the text
cache and recaches the self-attention cache: ``recache_scope`` "last_block" (GameCraft-2: the last block's
entries recomputed with the new prompt, attending to the cache as it is), "window" (LongLive: every cached frame
recomputed in its original blocks, in order, from an empty cache) or "none" (only the cross-attention changes).

The rollout keeps the clean latents of the cached frames (for the recache), the generator (its state travels in
snapshots) and per-block records; :mod:`models.sessions` stores rollouts across queue runs. Shapes: latents
[B, C, f, h, w] (diffusers' order, normalised); the cache's keys/values [B x rows, heads, tokens, head_dim].
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from .. import runtime
from ..backbones import wan
from ..backbones.base import Attachment, Backbone, on_device
from . import flow
from .wan import WanConds, expert_guidance, predict_step, prepare_conds

WHERE = "Causal sampler"
SCHEDULES = ("few_step", "multi_step")
RECACHE_SCOPES = ("last_block", "window", "none")
SELF_FORCING_STEPS = (1000.0, 750.0, 500.0, 250.0)


def warp_timesteps(timesteps: Sequence[float], shift: float = 5.0) -> tuple[float, ...]:
    """Self-Forcing's ``warp_denoising_step``: each t in 0..1000 mapped through Wan's shift, 1000 shift(t/1000)
    ([1000, 750, 500, 250] at shift 5 -> [1000, 937.5, 833.33, 625])."""
    return tuple(float(1000.0 * flow.shift_sigma(float(t) / 1000.0, shift)) for t in timesteps)


DEFAULT_TIMESTEPS = warp_timesteps(SELF_FORCING_STEPS, 5.0)


@dataclass(frozen=True)
class CausalConfig:
    """Sizes and schedule of a causal rollout (GameCraft-2 spec §1.4 [rec] defaults).

    Fields:
        block_latent_frames: latent frames per block (3 = 12 video frames; block 0: the image + 8).
        sink_latent_frames: first latent frames kept in the cache for the whole rollout (1: the first frame).
        window_latent_frames: most recent latent frames kept besides the sink (9 = three blocks).
        schedule: "few_step" (x0 prediction and re-noising at ``timesteps``) or "multi_step" (the scheduler over
            ``steps``).
        timesteps: the few-step list in 0..1000, decreasing (default Self-Forcing's, warped by shift 5).
        steps, scheduler, shift: the multi-step schedule (shift None: the variant's).
        cfg, cfg_low_noise: guidance of the high-noise expert (or the only model) and of the low-noise one
            (None: the same); <= 1 runs one row (few-step students run without CFG).
        boundary: the two-expert switch ratio (None: the bundle's, 0.9 for Wan2.2 I2V).
        cache_update_pass: the clean t = 0 pass that writes each finished block to the cache (off: the last
            denoising step's keys/values are kept instead; one expert only).
        recache_scope: "last_block" | "window" | "none" (module docstring).
        context_timestep: the timestep of the clean pass (Self-Forcing's context_noise, 0).
    """

    block_latent_frames: int = 3
    sink_latent_frames: int = 1
    window_latent_frames: int = 9
    schedule: str = "few_step"
    timesteps: tuple = DEFAULT_TIMESTEPS
    steps: int = 20
    scheduler: str = "euler"
    shift: float | None = None
    cfg: float = 1.0
    cfg_low_noise: float | None = None
    boundary: float | None = None
    cache_update_pass: bool = True
    recache_scope: str = "last_block"
    context_timestep: float = 0.0

    def __post_init__(self):
        for name in ("block_latent_frames", "sink_latent_frames", "window_latent_frames", "steps"):
            v = getattr(self, name)
            lo = 0 if name in ("sink_latent_frames", "window_latent_frames") else 1
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= 4096:
                raise ValueError(f"{WHERE}: {name} must be a whole number in {lo}..4096; got {v!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"{WHERE}: schedule must be one of {SCHEDULES}; got {self.schedule!r}")
        if self.recache_scope not in RECACHE_SCOPES:
            raise ValueError(f"{WHERE}: recache_scope must be one of {RECACHE_SCOPES}; got {self.recache_scope!r}")
        ts = tuple(float(t) for t in self.timesteps)
        if not ts or any(not 0 < t <= 1000 for t in ts) or any(b >= a for a, b in zip(ts, ts[1:])):
            raise ValueError(f"{WHERE}: timesteps must be decreasing numbers in (0, 1000], e.g. "
                             f"1000,937.5,833.33,625; got {list(self.timesteps)}")
        object.__setattr__(self, "timesteps", ts)
        if self.scheduler not in flow.SCHEDULERS:
            raise ValueError(f"{WHERE}: scheduler must be one of {flow.SCHEDULERS}; got {self.scheduler!r}")
        if not 0 <= self.context_timestep < 1000:
            raise ValueError(f"{WHERE}: context_timestep must be in [0, 1000); got {self.context_timestep}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["timesteps"] = list(self.timesteps)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "CausalConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: (tuple(v) if k == "timesteps" else v) for k, v in d.items() if k in known})


# ------------------------------------------------------------------------------------------ the cache
@dataclass
class _ExpertCache:
    rows: tuple | None = None                       # guidance rows of the batch the entries hold
    kv: dict = field(default_factory=dict)         # self-attention layer -> (k, v) [B rows, heads, tokens, d]
    text: dict = field(default_factory=dict)       # cross-attention layer -> (k, v) of the prompt
    pending: dict = field(default_factory=dict)    # this write pass's (k, v), appended by commit


class KVCache(Attachment):
    """Self-attention KV cache with a sink and a rolling window, and the cross-attention text cache, on the
    contract's attention slots (``blocks.<i>.attn1`` / ``attn2``; Wan's ``cross_kv`` door for the text).

    ``mode``: "read" (every self-attention attends over cached ++ current keys/values), "write" (the same, and the
    forward's own keys/values are kept for :meth:`commit`) or "off" (no cache: a plain forward). One cache per
    expert, each holding the batch rows of the forwards that wrote it. ``frames`` lists the absolute latent frames
    held (the same for every expert and layer, in order) and ``groups`` the block each was written in.
    """

    def __init__(self, num_layers: int, *, sink: int, window: int):
        self.self_layers = [wan.attention_layer(i, "self") for i in range(num_layers)]
        self.cross_layers = [wan.attention_layer(i, "cross") for i in range(num_layers)]
        self._self = set(self.self_layers)
        self.sink, self.window = int(sink), int(window)
        self.frames: list[int] = []
        self.groups: list[int] = []
        self.experts: dict[str, _ExpertCache] = {}
        self.mode = "read"
        self.text_key = None
        self.tokens_per_frame: int | None = None
        self.writes = 0

    def attention_layers(self, ctx):
        return () if self.mode == "off" else self.self_layers + self.cross_layers

    def _ec(self, ctx) -> _ExpertCache:
        name = ctx.extra.get("expert") or "high_noise"
        ec = self.experts.setdefault(name, _ExpertCache())
        rows = tuple(ctx.rows)
        if ec.rows is None:
            ec.rows = rows
        elif ec.rows != rows and (ec.kv or ec.text):
            raise ValueError(f"{WHERE}: the {name} expert's cache holds the batch rows {ec.rows} but this forward "
                             f"runs {rows}; guidance changed inside a rollout (recache the window, or start a new "
                             "session)")
        return ec

    def cross_kv(self, ctx, layer):
        if self.mode == "off":
            return None
        return self._ec(ctx).text.get(layer)

    def attention(self, ctx, layer, q, k, v, call):
        if self.mode == "off":
            return call(q, k, v)
        ec = self._ec(ctx)
        if layer not in self._self:  # cross-attention: remember the prompt's k, v (served by cross_kv after)
            ec.text.setdefault(layer, (k, v))
            return call(q, k, v)
        cached = ec.kv.get(layer)
        if cached is None and self.frames:
            raise ValueError(f"{WHERE}: the {ctx.extra.get('expert')} expert has no cache entries while the cache "
                             f"holds frames {self.frames}; every expert must run the clean pass")
        if cached is not None:
            ck, cv = cached
            if ck.shape[0] != k.shape[0]:
                raise ValueError(f"{WHERE}: cache batch {ck.shape[0]} != forward batch {k.shape[0]}")
            kk, vv = torch.cat([ck.to(k.dtype), k], dim=2), torch.cat([cv.to(v.dtype), v], dim=2)
        else:
            kk, vv = k, v
        if self.mode == "write":
            ec.pending[layer] = (k.detach(), v.detach())
        return call(q, kk, vv)

    # -------------------------------------------------------------------------------------- bookkeeping
    def set_text(self, key) -> bool:
        """Drop the text caches when the prompt (any row's) changes; True when it did."""
        if key == self.text_key:
            return False
        self.text_key = key
        for ec in self.experts.values():
            ec.text.clear()
        return True

    def commit(self, frames: Sequence[int], group: int) -> None:
        """Append the pending keys/values of the write pass(es) for latent ``frames`` (block ``group``), then
        evict to sink + window."""
        frames = [int(f) for f in frames]
        wrote = [ec for ec in self.experts.values() if ec.pending]
        if not wrote:
            raise ValueError(f"{WHERE}: commit without a write pass")
        for name, ec in self.experts.items():
            if not ec.pending:
                if ec.kv:
                    raise ValueError(f"{WHERE}: expert {name} missed the write pass of frames {frames}")
                continue
            for layer, (k, v) in ec.pending.items():
                if self.tokens_per_frame is None:
                    self.tokens_per_frame = k.shape[2] // len(frames)
                old = ec.kv.get(layer)
                ec.kv[layer] = (k, v) if old is None else (torch.cat([old[0], k], 2), torch.cat([old[1], v], 2))
            ec.pending = {}
        self.frames += frames
        self.groups += [int(group)] * len(frames)
        self.writes += 1
        self.evict()

    def keep_positions(self, positions: Sequence[int]) -> None:
        """Keep only the held frames at these positions (in order)."""
        positions = list(positions)
        if positions == list(range(len(self.frames))):
            return
        tpf = self.tokens_per_frame or 1
        for ec in self.experts.values():
            if not ec.kv:
                continue
            dev = next(iter(ec.kv.values()))[0].device
            idx = torch.cat([torch.arange(p * tpf, (p + 1) * tpf) for p in positions]).to(dev) if positions else \
                torch.zeros(0, dtype=torch.long, device=dev)
            ec.kv = {layer: (k.index_select(2, idx), v.index_select(2, idx)) for layer, (k, v) in ec.kv.items()}
            if not positions:
                ec.kv = {}
        self.frames = [self.frames[p] for p in positions]
        self.groups = [self.groups[p] for p in positions]

    def evict(self) -> None:
        """Keep the sink frames (absolute index < sink) and the last ``window`` others."""
        sink = [i for i, f in enumerate(self.frames) if f < self.sink]
        rest = [i for i, f in enumerate(self.frames) if f >= self.sink]
        self.keep_positions(sink + (rest[max(0, len(rest) - self.window):] if self.window > 0 else []))

    def reset_to_sink(self) -> None:
        self.keep_positions([i for i, f in enumerate(self.frames) if f < self.sink])

    def clear(self) -> None:
        self.keep_positions([])

    def last_group_positions(self) -> list[int]:
        if not self.groups:
            return []
        g = self.groups[-1]
        return [i for i, x in enumerate(self.groups) if x == g]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for ec in self.experts.values()
                   for d in (ec.kv, ec.text) for kv in d.values() for t in kv)

    def describe(self) -> dict:
        return {"frames": list(self.frames), "groups": list(self.groups), "bytes": self.nbytes(),
                "experts": sorted(self.experts), "tokens_per_frame": self.tokens_per_frame}


# --------------------------------------------------------------------------------------- the rollout
def _frames_of(v: torch.Tensor, a: int, b: int, dim: int) -> torch.Tensor:
    """Frames a..b-1 of a reference tensor along ``dim``; frames past its end repeat its last frame (the I2V
    condition is constant there: mask 0, the latent of gray frames)."""
    n = v.shape[dim]
    idx = torch.arange(a, b).clamp(max=n - 1).to(v.device)
    return v.index_select(dim, idx)


@dataclass
class BlockRecord:
    """What one block did (for the node's info output and the live panel)."""

    block: int
    latent_frames: tuple[int, int]
    prompt: str
    switched: bool
    recache: str | None
    experts: list
    forwards: int
    seconds: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class CausalRollout:
    """A causal generation in progress (see the module docstring): the cache, the generator, the conditions.

    Args:
        bb: a Wan backbone (T2V, I2V, TI2V; one or two experts).
        config: :class:`CausalConfig`.
        height, width: the video size (multiples of the VAE factor x patch).
        encode: texts -> [N, 512, D] (``wan.encode_prompt`` by default), behind a TextEmbeddingCache.
        image: [B, H, W, 3] 0..1 for I2V/TI2V models (None for T2V).
        seed: the CPU generator of every noise draw.
        negative: the negative prompt (rows "uncond" when CFG > 1).
        ref_latent_frames: latent frames of the I2V condition encoded first (grown when needed; see
            ``_base_conds``).
    """

    def __init__(self, bb: Backbone, config: CausalConfig = CausalConfig(), *, height: int, width: int,
                 encode: Callable | None = None, image: torch.Tensor | None = None, seed: int = 0,
                 negative: str = "", ref_latent_frames: int | None = None):
        from ..conditions.instructions import TextEmbeddingCache

        if bb.family != "wan":
            raise ValueError(f"{WHERE}: the backbone is {bb.family}; the causal sampler runs Wan models")
        e = bb.extra
        needs_image = e["i2v"] or e["ti2v"]
        if needs_image and image is None:
            raise ValueError(f"{WHERE}: {bb.variant} is an image-to-video model; give the first frame ('image')")
        if not needs_image and image is not None:
            raise ValueError(f"{WHERE}: {bb.variant} is text-to-video and takes no image; disconnect 'image'")
        self.bb, self.config = bb, config
        self.height, self.width = int(height), int(width)
        n = config.block_latent_frames
        t = e["vae_scale_factor_temporal"]
        wan.check_frames(bb, 1 + t * (n - 1), self.height, self.width, node=WHERE)
        self.batch = int(image.shape[0]) if image is not None else 1
        self.image = image
        self.negative = negative or ""
        self.generator = torch.Generator().manual_seed(int(seed))
        self.seed = int(seed)
        self.text = TextEmbeddingCache(encode or (lambda texts: wan.encode_prompt(self.bb, list(texts))))
        self.cache = KVCache(bb.denoiser.config.num_layers, sink=config.sink_latent_frames,
                             window=config.window_latent_frames)
        self.boundary = (config.boundary if config.boundary is not None else e.get("boundary")) if bb.experts \
            else None
        if bb.experts and self.boundary is None:
            raise ValueError(f"{WHERE}: a two-expert model needs a boundary (the release's is 0.9)")
        self.guidance = expert_guidance(bb, config.cfg, config.cfg_low_noise)
        self.rows = sorted({r for g in self.guidance.values() for r in g.rows}, key=("uncond", "cond").index)
        self.experts_used = self._experts_used()
        if not config.cache_update_pass and len(self.experts_used) > 1:
            raise ValueError(f"{WHERE}: cache_update_pass off keeps the keys/values of the last denoising step, "
                             f"which one expert computes; this schedule uses {self.experts_used}. Turn the clean "
                             "pass on (each expert then writes its own cache)")
        self.ref_latent_frames = int(ref_latent_frames or (2 * n + 4))
        self.blocks_done = 0
        self.prompt: str | None = None
        self.held: dict[int, torch.Tensor] = {}   # clean latents [B, C, 1, h, w] of the cached frames
        self.records: list[BlockRecord] = []
        self.forwards = 0
        self._conds: WanConds | None = None
        self._ref = 0
        self._stationary = False

    # ------------------------------------------------------------------------------------------ sizes
    @property
    def latent_hw(self) -> tuple[int, int]:
        s = self.bb.extra["vae_scale_factor_spatial"]
        return self.height // s, self.width // s

    @property
    def frames_done(self) -> int:
        """Latent frames generated so far."""
        return self.blocks_done * self.config.block_latent_frames

    def pixel_frames(self, blocks: int) -> int:
        """Video frames of the first ``blocks`` blocks (block 0: 1 + 4(n-1), later 4n)."""
        t = self.bb.extra["vae_scale_factor_temporal"]
        n = self.config.block_latent_frames
        return 0 if blocks <= 0 else 1 + t * (n * blocks - 1)

    def _experts_used(self) -> list[str]:
        c = self.config
        if c.schedule == "few_step":
            ts = c.timesteps
        else:
            ts = self._scheduler().timesteps
        ntt = self.bb.extra.get("num_train_timesteps", 1000)
        return list(dict.fromkeys(flow.expert_for_timestep(t, self.boundary, ntt) for t in ts))

    def _scheduler(self):
        c = self.config
        shift = c.shift if c.shift is not None else wan.default_shift(self.bb.extra["kind"], self.height, self.width)
        return flow.make_scheduler(c.scheduler, shift, c.steps, config=self.bb.scheduler_config, device=self.bb.device)

    # ------------------------------------------------------------------------------------- conditions
    def _text_rows(self, prompt: str) -> dict:
        texts = [prompt] + ([self.negative] if "uncond" in self.rows else [])
        embs = self.text.get_many(texts)
        out = {}
        for r in self.rows:
            emb = (embs[1] if r == "uncond" else embs[0])
            emb = emb if emb.ndim == 3 else emb[None]
            out[r] = emb.to(self.bb.device, self.bb.dtype).expand(self.batch, *emb.shape[1:])
        return out

    def _base_conds(self, text: dict, need: int) -> WanConds:
        """The image conditions for at least latent frames [0, need). The I2V condition is the VAE latent of
        [image, gray, gray, ...]; the causal VAE makes frame k independent of the frames after it, and after
        enough gray frames its latent stops changing. So the reference is encoded for ``ref_latent_frames``,
        doubled when a block needs more, until its last two latent frames are equal: from there on every later
        frame is that frame (``conds`` repeats it)."""
        c = self._conds
        if c is not None and (need <= self._ref or self._stationary or not c.parts):
            return c
        ref = self.ref_latent_frames if c is None else max(2 * self._ref, need)
        t = self.bb.extra["vae_scale_factor_temporal"]
        img = None
        if self.image is not None:
            from ..video_io import fit_frames

            img = fit_frames(self.image.float(), self.height, self.width)
        c = prepare_conds(self.bb, img, text["cond"], text.get("uncond"), 1 + t * (ref - 1), self.height, self.width,
                          rows=tuple(text), where=WHERE)
        self._conds, self._ref = c, ref
        self._stationary = bool(c.parts) and ref >= 3 and all(
            torch.equal(v[:, :, -1], v[:, :, -2]) for v in c.parts.values())
        return c

    def conds(self, a: int, b: int) -> WanConds:
        """The conditions of latent frames [a, b) with the current prompt's text."""
        text = self._text_rows(self.prompt or "")
        c = self._base_conds(text, b)
        parts = {k: _frames_of(v, a, b, 2) for k, v in c.parts.items()}
        ffm = None if c.first_frame_mask is None else _frames_of(c.first_frame_mask, a, b, 2)
        tok = None
        if c.token_mask is not None:
            f = c.first_frame_mask.shape[2]
            per = c.token_mask.shape[1] // f
            tok = _frames_of(c.token_mask.view(c.token_mask.shape[0], f, per), a, b, 1).flatten(1)
        return dataclasses.replace(c, text=text, parts=parts, first_frame_mask=ffm, token_mask=tok)

    # ---------------------------------------------------------------------------------------- prompts
    def set_prompt(self, prompt: str, attachments: Sequence = ()) -> str | None:
        """Use ``prompt`` from the next block; on a change after the first block, recache (the config's scope).
        Returns the recache done ("last_block", "window", "none") or None when nothing changed."""
        prompt = prompt or ""
        if prompt == self.prompt:
            return None
        first = self.prompt is None
        self.prompt = prompt
        self.cache.set_text((prompt, self.negative))
        if first or not self.cache.frames:
            return None
        scope = self.config.recache_scope
        if scope != "none":
            self.recache(scope, attachments)
        return scope

    def recache(self, scope: str, attachments: Sequence = ()) -> int:
        """Recompute cached self-attention entries with the current prompt: "last_block" (the last written
        block, attending to the rest of the cache as it is) or "window" (every held frame, in its original
        blocks, in order, from an empty cache). Returns the forwards run."""
        if scope not in ("last_block", "window"):
            raise ValueError(f"{WHERE}: recache scope must be last_block or window; got {scope!r}")
        c = self.cache
        if not c.frames:
            return 0
        if scope == "last_block":
            pos = c.last_group_positions()
            redo = [(c.groups[pos[0]], [c.frames[p] for p in pos])]
            c.keep_positions([i for i in range(len(c.frames)) if i not in pos])
        else:
            redo, seen = [], {}
            for f, g in zip(c.frames, c.groups):
                seen.setdefault(g, []).append(f)
            redo = list(seen.items())
            c.clear()
        n = 0
        for group, frames in redo:
            n += self._clean_pass(frames, group, attachments, prune=False)
        self._prune()
        return n

    def reset_to_sink(self) -> None:
        """Forget the window (drift recovery); the sink stays."""
        self.cache.reset_to_sink()
        self._prune()

    # ------------------------------------------------------------------------------------------ a block
    def _prune(self) -> None:
        self.held = {f: v for f, v in self.held.items() if f in self.cache.frames}

    def _clean_pass(self, frames: list[int], group: int, attachments: Sequence, prune: bool = True) -> int:
        """Write latent ``frames`` (contiguous, their clean latents held) to the cache: one t = 0 forward per
        expert, then commit (and evict)."""
        a, b = frames[0], frames[-1] + 1
        if frames != list(range(a, b)):
            raise ValueError(f"{WHERE}: a cache write needs contiguous frames; got {frames}")
        x0 = torch.cat([self.held[f] for f in frames], dim=2)
        conds = self.conds(a, b)
        atts = list(attachments) + [self.cache]
        t = self.config.context_timestep
        self.cache.mode = "write"
        try:
            for name in self.experts_used:
                predict_step(self.bb, x0, t, conds, self.guidance[name], attachments=atts, expert=name,
                             rope_offset=a)
                self.forwards += 1
        finally:
            self.cache.mode = "read"
        self.cache.commit(frames, group)
        if prune:
            self._prune()
        return len(self.experts_used)

    def _noise(self, shape) -> torch.Tensor:
        return torch.randn(shape, generator=self.generator, dtype=torch.float32).to(self.bb.device)

    def generate_block(self, attachments: Sequence = (), *, prompt: str | None = None, tick=None,
                       observe=None, exit_step: int | None = None) -> torch.Tensor:
        """Generate the next block -> its clean latents [B, C, n, h, w] float32 (on bb.device).

        ``prompt``: the block's prompt (a change recaches first). ``tick()`` after every forward (progress);
        ``observe(kind, step, x_in, t, v)`` sees every denoising prediction (tests compare them with a full
        forward). ``exit_step`` (few-step only; Self-Forcing training, ``training.self_forcing``): stop after that
        step, its x0 prediction is the block, computed with gradients (every earlier step and the cache pass
        without); the last step's index gives the sampler's block exactly."""
        t0 = time.perf_counter()
        recache = None
        switched = False
        if prompt is not None:
            before = self.forwards
            had = self.prompt
            recache = self.set_prompt(prompt, attachments)
            switched = had is not None and had != self.prompt
            if tick is not None:
                for _ in range(self.forwards - before):
                    tick()
        if self.prompt is None:
            self.set_prompt("", attachments)
        c = self.config
        n = c.block_latent_frames
        k = self.blocks_done
        a = k * n
        h, w = self.latent_hw
        shape = (self.batch, self.bb.extra["latent_channels"], n, h, w)
        conds = self.conds(a, a + n)
        atts = list(attachments) + [self.cache]
        ntt = self.bb.extra.get("num_train_timesteps", 1000)
        forwards0 = self.forwards
        experts = []
        if exit_step is not None:
            nts = len(c.timesteps)
            if c.schedule != "few_step":
                raise ValueError(f"{WHERE}: exit_step is for the few-step schedule; this rollout is {c.schedule}")
            if isinstance(exit_step, bool) or not isinstance(exit_step, int) or not 0 <= exit_step < nts:
                raise ValueError(f"{WHERE}: exit_step must be a step index in 0..{nts - 1}; got {exit_step!r}")
        x = self._noise(shape)
        with torch.no_grad():
            if c.schedule == "few_step":
                ts = c.timesteps if exit_step is None else c.timesteps[:exit_step + 1]
                for i, t in enumerate(ts):
                    name = flow.expert_for_timestep(t, self.boundary, ntt)
                    experts.append(name)
                    last = i == len(ts) - 1
                    if last and not c.cache_update_pass:
                        self.cache.mode = "write"
                    with torch.enable_grad() if (last and exit_step is not None) else contextlib.nullcontext():
                        v = predict_step(self.bb, x, t, conds, self.guidance[name], attachments=atts, expert=name,
                                         step=(i, len(c.timesteps)), rope_offset=a)
                        x0 = x - (t / ntt) * v
                    self.forwards += 1
                    if observe is not None:
                        observe("step", i, x, t, v)
                    if not last:
                        s = ts[i + 1] / ntt
                        x = (1 - s) * x0 + s * self._noise(shape)
                    if tick is not None:
                        tick()
                x = x0
            else:
                sched = self._scheduler()
                tl = sched.timesteps
                for i, t in enumerate(tl):
                    name = flow.expert_for_timestep(t, self.boundary, ntt)
                    experts.append(name)
                    if i == len(tl) - 1 and not c.cache_update_pass:
                        self.cache.mode = "write"
                    v = predict_step(self.bb, x, t, conds, self.guidance[name], attachments=atts, expert=name,
                                     step=(i, len(tl)), rope_offset=a)
                    self.forwards += 1
                    if observe is not None:
                        observe("step", i, x, t, v)
                    x = sched.step(v, t, x, return_dict=False)[0]
                    if tick is not None:
                        tick()
            x = x.float()
            for j in range(n):
                self.held[a + j] = x[:, :, j:j + 1].detach()
            if c.cache_update_pass:
                self._clean_pass(list(range(a, a + n)), k, attachments)
                if tick is not None:
                    for _ in self.experts_used:
                        tick()
            else:
                self.cache.mode = "read"
                self.cache.commit(list(range(a, a + n)), k)
                self._prune()
        self.blocks_done += 1
        self.records.append(BlockRecord(block=k, latent_frames=(a, a + n), prompt=self.prompt, switched=switched,
                                        recache=recache, experts=experts, forwards=self.forwards - forwards0,
                                        seconds=time.perf_counter() - t0))
        return x

    def forwards_per_block(self) -> int:
        c = self.config
        steps = len(c.timesteps) if c.schedule == "few_step" else c.steps
        return steps + (len(self.experts_used) if c.cache_update_pass else 0)

    def generate(self, num_blocks: int, attachments: Sequence = (), *, prompts: Sequence[str] | None = None,
                 desc: str = WHERE, preview: bool = False, on_block=None) -> torch.Tensor:
        """``num_blocks`` more blocks -> their latents [B, C, n x num_blocks, h, w] (float32, bb.device).
        ``prompts``: one per block (None keeps the current). ``on_block(k, latents)`` after each block."""
        if num_blocks < 1:
            raise ValueError(f"{WHERE}: num_blocks must be >= 1; got {num_blocks}")
        if prompts is not None and len(prompts) != num_blocks:
            raise ValueError(f"{WHERE}: {len(prompts)} prompts for {num_blocks} blocks")
        pbar = runtime.progress(num_blocks * self.forwards_per_block(), desc)
        outs = []
        modules = [m for a in attachments for m in a.modules()]
        with torch.no_grad(), on_device(self.bb, *modules):
            for i in range(num_blocks):
                lat = self.generate_block(attachments, prompt=None if prompts is None else prompts[i],
                                          tick=lambda: pbar.update(1))
                outs.append(lat)
                if preview:
                    pbar.update(0, preview=lambda z=lat: _preview(z))
                if on_block is not None:
                    on_block(self.blocks_done - 1, lat)
        pbar.close()
        return torch.cat(outs, dim=2)

    # ------------------------------------------------------------------------------------------ memory
    def nbytes(self) -> int:
        """Bytes the rollout holds (cache, held latents, conditions)."""
        n = self.cache.nbytes() + sum(v.numel() * v.element_size() for v in self.held.values())
        if self._conds is not None:
            n += sum(v.numel() * v.element_size() for v in self._conds.parts.values())
        return n

    def cache_bytes_per_frame(self) -> int:
        """Bytes of the self-attention cache per latent frame (all experts, layers and rows): k and v of
        ``tokens_per_frame`` tokens each."""
        tr = self.bb.denoiser.config
        s = self.bb.extra["vae_scale_factor_spatial"]
        p = tr.patch_size
        tokens = (self.height // s // p[1]) * (self.width // s // p[2]) // p[0]
        el = torch.tensor([], dtype=self.bb.dtype).element_size()
        return (2 * tokens * tr.num_attention_heads * tr.attention_head_dim * tr.num_layers * el * len(self.rows)
                * self.batch * len(self.experts_used))


def _preview(z: torch.Tensor):
    from ..backbones.cogvideox import latent_preview_rgb

    return latent_preview_rgb(z[0, :, -1])
