"""Sampling on several GPUs in one ``torchrun`` launch: CFG-parallel (the guided step's rows split over processes)
and sequence-parallel (Ulysses attention; the latent frames split over processes), for the Wan and CogVideoX
samplers and any loop built on their steps (the causal block sampler).

    torchrun --nproc-per-node 2 --no-python .venv/bin/interplay run workflows/wan_i2v.json   # every process runs
                                                                                             # the graph; rank 0 saves

Layout: ``world = cfg x sp``; rank ``c * sp + s`` computes guidance-row group ``c`` and latent-frame shard ``s``.

Sequence parallelism enters through the model-forward contract only: each process calls the family forward on its
frames ``[a, b)`` (Wan: ``rope_offset = a``, the causal sampler's own mechanism; CogVideoX: the matching rows of the
rotary table and of any positional table),
and :class:`SequenceParallel`, the last attachment in the chain, turns each self-attention slot into Ulysses
attention: an all-to-all trades the sequence shard of every head for the whole sequence of ``heads / sp`` heads,
the rest of the chain (SDPA) runs on it, and a second all-to-all trades back. Attention is thus computed on the
whole sequence, exactly as in one process (the exchange moves data, it does no arithmetic); text tokens of
CogVideoX's joint attention are the same on every process and are not exchanged (each takes its heads' slice, and
the heads' text outputs are gathered). Cross-attention to the text needs nothing: its queries are per token.

Engine: yunchang (the USP library xDiT builds on; ``pip install yunchang``, the ``parallel`` extra) does the
all-to-all (``SeqAllToAll4D``); without it the same exchange runs on ``torch.distributed.all_to_all``, with the same
numbers. Uneven frame shards (21 latent frames on 2 or 4 GPUs) are padded for yunchang's equal-sized exchange and
the padding is dropped before attention, so nothing attends to it.

Attachments: every other attachment sees its process's frame shard (``ctx.latent_in``; ``ctx.extra["frames"]`` =
(a, b, total)); one that can work on a shard says so with ``frame_shards = True`` (a KV cache that stores the k/v
its ``attention`` receives: the cache is then sharded the same way). Others are refused by name under sequence
parallelism; CFG-parallel runs every attachment unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .. import distributed
from ..backbones.base import Attachment

MODES = ("off", "auto", "cfg", "sequence")
ENGINES = ("auto", "yunchang", "torch")
_GROUPS: dict = {}


@dataclass
class Parallel:
    """How one sampler call is spread over the launch's processes (build it with :func:`plan`)."""

    cfg: int = 1
    sp: int = 1
    engine: str = "torch"
    cfg_rank: int = 0
    sp_rank: int = 0
    cfg_group: object = None
    sp_group: object = None

    # ------------------------------------------------------------------------------------------- frames
    def frame_range(self, frames: int, multiple: int = 1) -> tuple[int, int]:
        """This process's latent frames [a, b): ``frames`` split in groups of ``multiple`` (CogVideoX 1.5's
        temporal patch), the first processes taking one group more when they do not divide evenly."""
        sizes = self.frame_sizes(frames, multiple)
        a = sum(sizes[:self.sp_rank])
        return a, a + sizes[self.sp_rank]

    def frame_sizes(self, frames: int, multiple: int = 1) -> list[int]:
        groups = frames // multiple
        if groups < self.sp:
            raise ValueError(f"sequence parallel: {frames} latent frames cannot be split over {self.sp} processes "
                             f"(each needs at least {multiple}); use fewer processes, parallel 'cfg', or more frames")
        q, r = divmod(groups, self.sp)
        sizes = [(q + (i < r)) * multiple for i in range(self.sp)]
        sizes[-1] += frames - groups * multiple
        return sizes

    def gather_frames(self, out: torch.Tensor, dim: int, frames: int, multiple: int = 1) -> torch.Tensor:
        """Every process's frames of ``out`` concatenated along ``dim`` (the whole clip on every process)."""
        return distributed.all_gather_cat(out, dim, self.sp_group, sizes=self.frame_sizes(frames, multiple))

    # ---------------------------------------------------------------------------------------------- rows
    def row_groups(self, rows: Sequence[str]) -> list[list[str]]:
        """The guidance rows split into ``cfg`` contiguous groups (the first groups one larger when uneven; with
        fewer rows than groups, e.g. a step without CFG, the last groups are empty and ``split_rows`` runs every
        row on every process instead)."""
        q, r = divmod(len(rows), self.cfg)
        out, k = [], 0
        for c in range(self.cfg):
            n = q + (c < r)
            out.append(list(rows[k:k + n]))
            k += n
        return out

    def split_rows(self, predict: Callable, x: torch.Tensor, rows: Sequence[str]) -> torch.Tensor:
        """The guided step's batch computed row group by row group on the CFG processes, then gathered: the same
        [len(rows) * B, ...] output one process would give (rows in order)."""
        b = x.shape[0]
        if len(rows) < self.cfg:  # e.g. a step without CFG: every process computes the rows itself
            x_in = torch.cat([x] * len(rows)) if len(rows) > 1 else x
            return predict(x_in, {r: slice(k * b, (k + 1) * b) for k, r in enumerate(rows)})
        groups = self.row_groups(rows)
        mine = groups[self.cfg_rank]
        x_in = torch.cat([x] * len(mine)) if len(mine) > 1 else x
        out = predict(x_in, {r: slice(k * b, (k + 1) * b) for k, r in enumerate(mine)})
        return distributed.all_gather_cat(out, 0, self.cfg_group, sizes=[len(g) * b for g in groups])

    # -------------------------------------------------------------------------------------------- checks
    def check_attachments(self, attachments, where: str) -> None:
        """Under sequence parallelism every attachment must work on a frame shard (``frame_shards = True``)."""
        if self.sp == 1:
            return
        bad = [type(a).__name__ for a in attachments if not getattr(a, "frame_shards", False)]
        if bad:
            raise ValueError(f"{where}: parallel 'sequence' splits the frames over {self.sp} processes, and "
                             f"{', '.join(bad)} needs the whole clip in one process; use parallel 'cfg' (or 'off') "
                             "with these controls")

    def check_heads(self, heads: int, where: str) -> None:
        if self.sp > 1 and heads % self.sp:
            raise ValueError(f"{where}: sequence parallel over {self.sp} processes needs the heads ({heads}) to "
                             f"divide evenly; use {', '.join(str(p) for p in range(2, heads + 1) if heads % p == 0)}"
                             " processes, or parallel 'cfg'")


def plan(mode="off", *, rows: int = 2, engine: str = "auto", where: str = "sampler", attachments=(),
         heads: int | None = None, frames: int | None = None, multiple: int = 1) -> Parallel | None:
    """A :class:`Parallel` for this launch, or None (one process, or ``mode`` "off").

    mode: "off"; "auto" (2 CFG groups when the world size is even and the step has >= 2 rows, the rest sequence
    parallel where the request allows it: every attachment ``frame_shards``, the heads and latent ``frames``
    divide; otherwise those processes compute the same thing, so "auto" never refuses); "cfg" (every process a
    row group: at most ``rows`` processes); "sequence" (every process a frame shard; refused, by name, where the
    request does not allow it). A :class:`Parallel` passes through. ``rows``: the most guidance rows a step of
    this request has; ``multiple``: the latent frames a shard is made of (CogVideoX 1.5's temporal patch)."""
    if isinstance(mode, Parallel) or mode is None:
        return mode
    if mode not in MODES:
        raise ValueError(f"{where}: parallel must be one of {', '.join(MODES)}; got {mode!r}")
    if engine not in ENGINES:
        raise ValueError(f"{where}: the parallel engine must be one of {', '.join(ENGINES)}; got {engine!r}")
    if mode == "off":
        return None
    world = distributed.init()
    if world == 1:
        return None
    if mode == "cfg":
        if world > max(rows, 1):
            raise ValueError(f"{where}: parallel 'cfg' puts one guidance row per process, and this request has "
                             f"{rows} row(s) for {world} processes; use parallel 'auto' or 'sequence'")
        cfg = world
    elif mode == "sequence":
        cfg = 1
    else:
        cfg = 2 if world % 2 == 0 and rows >= 2 else 1
    span = world // cfg  # the processes of one row group: a frame shard each, or replicas
    sp = span
    if span > 1:
        probe = Parallel(sp=span)
        try:
            probe.check_attachments(attachments, where)
            if heads is not None:
                probe.check_heads(heads, where)
            if frames is not None:
                probe.frame_sizes(frames, multiple)
        except ValueError:
            if mode == "sequence":
                raise
            sp = 1  # "auto": these processes compute the same rows
    if cfg == 1 and sp == 1:
        return None  # nothing to split: every process runs the whole request
    r = distributed.rank()
    c, s = divmod(r, span)
    cfg_group, sp_group = _groups(cfg, span)
    return Parallel(cfg=cfg, sp=sp, engine=_engine(engine, where) if sp > 1 else "torch", cfg_rank=c,
                    sp_rank=s if sp > 1 else 0, cfg_group=cfg_group[s], sp_group=sp_group[c] if sp > 1 else None)


def _groups(cfg: int, sp: int):
    """(cfg groups by sp index, sp groups by cfg index), made once per layout (every process, same order)."""
    key = (cfg, sp)
    if key not in _GROUPS:
        cfg_groups = [distributed.new_group([c * sp + s for c in range(cfg)]) for s in range(sp)]
        sp_groups = [distributed.new_group([c * sp + s for s in range(sp)]) for c in range(cfg)]
        _GROUPS[key] = (cfg_groups, sp_groups)
    return _GROUPS[key]


def yunchang_available() -> bool:
    try:
        from yunchang.comm.all_to_all import SeqAllToAll4D  # noqa: F401
    except Exception:  # not installed, or its optional kernels fail to import here
        return False
    return True


def _engine(engine: str, where: str) -> str:
    if engine == "torch":
        return "torch"
    if yunchang_available():
        return "yunchang"
    if engine == "yunchang":
        raise ValueError(f"{where}: the parallel engine 'yunchang' is not installed; pip install yunchang (the "
                         "pack's 'parallel' extra), or use engine 'auto' (torch.distributed's all-to-all)")
    return "torch"


# --------------------------------------------------------------------------------------- the attention
class SequenceParallel(Attachment):
    """Ulysses attention in the self-attention slots of a frame-sharded forward (see the module docstring).

    ``layers(ctx)``: the slot names (the family's self-attention layers). ``text_prefix(ctx)``: how many leading
    tokens of q, k, v are a replicated text stream (CogVideoX's joint attention), 0 for Wan. ``frames``: (a, b,
    total) latent frames of this process, put in ``ctx.extra["frames"]`` for the other attachments."""

    frame_shards = True

    def __init__(self, par: Parallel, layers: Callable, text_prefix: Callable | None = None, frames=None):
        self.par = par
        self.layers = layers
        self.text_prefix = text_prefix or (lambda ctx: 0)
        self.frames = frames

    def attention_layers(self, ctx):
        return self.layers(ctx)

    def begin(self, ctx):
        if self.frames is not None:
            ctx.extra["frames"] = tuple(self.frames)

    def _sizes(self, ctx, tag: str, n: int) -> list[int]:
        """Every process's sequence length for ``tag`` (q or kv), exchanged once per forward."""
        memo = ctx.state_of(self)
        if memo.get(tag, (None,))[0] != n:
            memo[tag] = (n, distributed.gather_sizes(n, self.par.sp_group))
        return memo[tag][1]

    def attention(self, ctx, layer, q, k, v, call):
        p = self.par.sp
        heads = q.shape[1]
        if heads % p:
            self.par.check_heads(heads, "sequence parallel")
        t = self.text_prefix(ctx)
        hp, r = heads // p, self.par.sp_rank
        nq, nkv = q.shape[2] - t, k.shape[2] - t
        sq, skv = self._sizes(ctx, "q", nq), self._sizes(ctx, "kv", nkv)
        qv = self._to_heads(q[:, :, t:], sq)
        kv_, vv = self._to_heads(k[:, :, t:], skv), self._to_heads(v[:, :, t:], skv)
        if t:
            mine = slice(r * hp, (r + 1) * hp)
            qv = torch.cat([q[:, mine, :t], qv], dim=2)
            kv_ = torch.cat([k[:, mine, :t], kv_], dim=2)
            vv = torch.cat([v[:, mine, :t], vv], dim=2)
        out = call(qv, kv_, vv)
        video = self._to_sequence(out[:, :, t:], sq)
        if not t:
            return video
        text = distributed.all_gather_cat(out[:, :, :t].contiguous(), 1, self.par.sp_group, sizes=[hp] * p)
        return torch.cat([text, video], dim=2)

    # [B, H, n_r, d] on each process -> [B, H/p, sum n, d]: this process's heads over the whole sequence
    def _to_heads(self, x, sizes):
        p, hp = self.par.sp, x.shape[1] // self.par.sp
        b, _, n, d = x.shape
        if self.par.engine == "yunchang":
            from yunchang.comm.all_to_all import SeqAllToAll4D

            top = max(sizes)
            x = _pad(x, 2, top).transpose(1, 2).contiguous()  # yunchang's layout [B, S, H, D], equal S
            y = SeqAllToAll4D.apply(self.par.sp_group, x, 2, 1, False)  # [B, p * top, H/p, D]
            y = torch.cat([blk[:, :s] for blk, s in zip(y.split(top, dim=1), sizes)], dim=1)
            return y.transpose(1, 2)
        chunks = [x[:, j * hp:(j + 1) * hp] for j in range(p)]
        got = distributed.all_to_all(chunks, [(b, hp, s, d) for s in sizes], self.par.sp_group)
        return torch.cat(got, dim=2)

    # [B, H/p, sum n, d] -> [B, H, n_r, d]: back to this process's tokens, every head
    def _to_sequence(self, y, sizes):
        p, r = self.par.sp, self.par.sp_rank
        b, hp, _, d = y.shape
        if self.par.engine == "yunchang":
            from yunchang.comm.all_to_all import SeqAllToAll4D

            top = max(sizes)
            y = y.transpose(1, 2)
            y = torch.cat([_pad(blk, 1, top) for blk in y.split(sizes, dim=1)], dim=1).contiguous()
            x = SeqAllToAll4D.apply(self.par.sp_group, y, 1, 2, False)  # [B, top, H, D]
            return x[:, :sizes[r]].transpose(1, 2)
        chunks = list(y.split(sizes, dim=2))
        got = distributed.all_to_all(chunks, [(b, hp, sizes[r], d)] * p, self.par.sp_group)
        return torch.cat(got, dim=1)


def _pad(x: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    if x.shape[dim] == size:
        return x
    shape = list(x.shape)
    shape[dim] = size - x.shape[dim]
    return torch.cat([x, x.new_zeros(shape)], dim=dim)

