"""MATRIX attention capture through the forward contract: an observer attachment that reads q and k in the attention
slots of chosen layers and keeps per-layer, head-reduced v2t and v2v maps at latent resolution (spec seed-004
§2.2-§2.4, §3.3), computed blockwise by ``control.matrix`` (one ``[B, H, chunk, N]`` block at a time, one layer at a
time: never the full attention of all layers at once).

- Inference / analysis (``keep_grad=False``): maps are detached and summed over the denoising steps the user
  picks (``steps``), so nothing grows with the step count; ``result()`` gives the step means.
- Training (``keep_grad=True``): the maps of the current forward are kept with their graph, so a loss on them
  backpropagates into q and k of the captured layers (their LoRA, earlier layers, the widened input projection).

What is captured, per batch sample (``MapTargets``): v2t maps for named text-token sets (``"id1"``: every token of
instance 1; ``"verb1>2"``: the verb of 1 on 2; ``"word:cup"``: a word) and v2v maps for named first-frame query masks
(pixel masks of the generation size or any size of the same framing: fitted like the image, then NEAREST to the
token grid and > 0.5, the analysis mapping of ``conditions.id_map``). Names map to mask-track targets by
:func:`target_ids` (id k -> M_k; verb k>j -> M_k | M_j).

Layers are the families' attention-layer names (``layer_names``): CogVideoX ``transformer_blocks.<i>.attn1`` (joint
text+video attention: both v2t and v2v); Wan ``blocks.<i>.attn2`` (cross, v2t) and ``blocks.<i>.attn1`` (self, v2v).

Also here: the ``matrix_capture`` registry kind (a capture joins a sampler's ``controls`` chain and writes into a
:class:`CaptureSession` the visualiser and AAS nodes read), the AAS of a capture against mask tracks, and the step
selection syntax.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Sequence

import torch

from ..backbones.base import Attachment, ForwardContext
from ..conditions.id_map import latent_mask_track, latent_space_nearest
from . import matrix as M

KIND = "matrix_capture"
ROWS = ("cond", "uncond", "all")
_NAME = re.compile(r"^(?:id(\d+)|verb(\d+)>(\d+)|word:.+)$")


# ------------------------------------------------------------------------------------------ layers
def num_layers(bb) -> int:
    den = bb.denoiser
    blocks = getattr(den, "transformer_blocks", None) or getattr(den, "blocks", None)
    if blocks is None:
        raise ValueError(f"MATRIX capture: the {bb.family} denoiser has no transformer blocks")
    return len(blocks)


def layer_names(bb, indices: Sequence[int], kind: str) -> list[str]:
    """Attention-layer names of block ``indices`` for ``kind`` "v2t" or "v2v" (see the module doc)."""
    if kind not in ("v2t", "v2v"):
        raise ValueError(f"MATRIX capture: kind must be v2t or v2v; got {kind!r}")
    n = num_layers(bb)
    bad = [i for i in indices if not 0 <= int(i) < n]
    if bad:
        raise ValueError(f"MATRIX capture: layer {bad[0]} does not exist; this {bb.family} denoiser has layers "
                         f"0..{n - 1}")
    if bb.family == "cogvideox":
        return [f"transformer_blocks.{int(i)}.attn1" for i in indices]
    if bb.family == "wan":
        return [f"blocks.{int(i)}.{'attn2' if kind == 'v2t' else 'attn1'}" for i in indices]
    raise ValueError(f"MATRIX capture: the {bb.family} family has no joint or cross attention to text")


def layer_index(name: str) -> int:
    return int(name.split(".")[1])


def parse_layers(text, bb, where: str = "MATRIX") -> list[int]:
    """"all", or comma-separated block indices and ranges ("7,11-12") -> sorted unique indices."""
    n = num_layers(bb)
    if text is None or (isinstance(text, str) and text.strip().lower() in ("", "all")):
        return list(range(n))
    if not isinstance(text, str):
        out = sorted({int(i) for i in text})
    else:
        out = sorted(set(_ranges(text, where, "layers")))
    bad = [i for i in out if not 0 <= i < n]
    if bad:
        raise ValueError(f"{where}: layer {bad[0]} does not exist; this {bb.family} denoiser has layers 0..{n - 1}")
    return out


def _ranges(text: str, where: str, what: str) -> list[int]:
    out = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise ValueError(f"{where}: {what} must be 'all' or comma-separated numbers and ranges like '0-9,20'; "
                             f"got {text!r}")
        a, b = int(m.group(1)), int(m.group(2) or m.group(1))
        if b < a:
            raise ValueError(f"{where}: the {what} range {part!r} runs backwards")
        out.extend(range(a, b + 1))
    return out


def parse_steps(text, where: str = "MATRIX") -> frozenset | None:
    """"all" (None) or step indices and ranges, 0-based ("0-9,25")."""
    if text is None or (isinstance(text, str) and text.strip().lower() in ("", "all")):
        return None
    if not isinstance(text, str):
        return frozenset(int(i) for i in text)
    return frozenset(_ranges(text, where, "steps"))


def token_layout(ctx: ForwardContext, layer: str, q: torch.Tensor, k: torch.Tensor) -> M.TokenLayout:
    """The TokenLayout of one attention call (CogVideoX joint text-first; Wan self / cross)."""
    if ctx.bb.family == "cogvideox":
        return M.TokenLayout.cogvideox(ctx.grid, q.shape[2] - ctx.grid[0] * ctx.grid[1] * ctx.grid[2])
    if layer.endswith("attn1"):
        return M.TokenLayout.wan_self(ctx.grid)
    return M.TokenLayout.wan_cross(ctx.grid, k.shape[2])


def token_stride(bb) -> int:
    """Pixels per token side: VAE spatial factor x patch size."""
    p = getattr(bb.denoiser.config, "patch_size", 2)
    p = p[-1] if isinstance(p, (tuple, list)) else p
    return int(bb.extra.get("vae_scale_factor_spatial", 8)) * int(p)


# ------------------------------------------------------------------------------------------ targets
@dataclass
class MapTargets:
    """What to capture for one batch sample.

    v2t  name -> text-token positions (in the encoder's padded sequence)
    v2v  name -> first-frame query mask, bool [H, W] (pixels; fitted to the token grid at capture time)
    """
    v2t: dict = field(default_factory=dict)
    v2v: dict = field(default_factory=dict)

    def __post_init__(self):
        for name in list(self.v2t) + list(self.v2v):
            if not _NAME.match(name):
                raise ValueError(f"MATRIX capture: map name {name!r} is not id<k>, verb<k>><j> or word:<text>")

    @classmethod
    def from_prompt(cls, tokens=None, id_masks: torch.Tensor | None = None, *, words: dict | None = None,
                    verbs_v2v: bool = True) -> "MapTargets":
        """From a ``matrix_prompt.PromptTokens`` (its ID and verb token sets) and first-frame instance masks
        ``[K, H, W]`` (ID k = id_masks[k-1]): v2t id<k> / verb<k>><j>, v2v id<k> and, for each interaction,
        verb<k>><j> with the union of both first-frame masks as its queries (Q_verb = Q_sub | Q_obj, §2.3)."""
        v2t, v2v = {}, {}
        if tokens is not None:
            for k, pos in tokens.ids.items():
                if pos:
                    v2t[f"id{k}"] = list(pos)
            for it in tokens.interactions:
                if it["verb"]:
                    v2t[f"verb{it['sub_id']}>{it['obj_id']}"] = list(it["verb"])
        for w, pos in (words or {}).items():
            if pos:
                v2t[f"word:{w}"] = list(pos)
        if id_masks is not None:
            m = torch.as_tensor(id_masks)
            m = m >= 0.5 if m.dtype != torch.bool else m
            for k in range(1, m.shape[0] + 1):
                if bool(m[k - 1].any()):
                    v2v[f"id{k}"] = m[k - 1]
            if verbs_v2v and tokens is not None:
                for it in tokens.interactions:
                    s, o = it["sub_id"], it["obj_id"]
                    if s <= m.shape[0] and o <= m.shape[0] and bool((m[s - 1] | m[o - 1]).any()):
                        v2v[f"verb{s}>{o}"] = m[s - 1] | m[o - 1]
        return cls(v2t=v2t, v2v=v2v)


def target_ids(name: str) -> tuple[int, ...] | None:
    """The instance IDs whose mask-track union a map is scored against (None: a word map has no target)."""
    m = _NAME.match(name)
    if m is None or name.startswith("word:"):
        return None
    return (int(m.group(1)),) if m.group(1) else (int(m.group(2)), int(m.group(3)))


def fit_mask_nearest(mask: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """bool [..., H, W] fitted to (height, width) as samplers fit the image (cover, then center-crop), NEAREST."""
    from ..video_io import fit_nearest

    return fit_nearest(torch.as_tensor(mask).bool(), height, width)


def query_grid(mask: torch.Tensor, grid_hw: tuple[int, int], stride: int) -> torch.Tensor:
    """A first-frame pixel mask -> bool [h, w] on the token grid (fit to the generation size, NEAREST, > 0.5)."""
    h, w = grid_hw
    return latent_space_nearest(fit_mask_nearest(mask, h * stride, w * stride), stride)


def track_grid(tracks: torch.Tensor, grid: tuple[int, int, int], stride: int, temporal: int = 4) -> torch.Tensor:
    """Pixel mask tracks [K, F, H, W] -> bool [K, T, h, w] on the token grid (fitted, NEAREST, 1 + 4k OR)."""
    t, h, w = grid
    m = fit_mask_nearest(torch.as_tensor(tracks), h * stride, w * stride)
    out = latent_mask_track(m, temporal, stride)
    if out.shape[-3] != t:
        raise ValueError(f"MATRIX: the mask tracks have {m.shape[-3]} frames ({out.shape[-3]} latent frames); the "
                         f"attention maps have {t} latent frames. Fix: give the tracks of the generated video "
                         f"({1 + temporal * (t - 1)} frames).")
    return out


# ------------------------------------------------------------------------------------------ the attachment
class MatrixCapture(Attachment):
    """Observe attention in ``v2t_layers`` / ``v2v_layers`` (family layer names) and keep maps (module doc).

    Args:
        targets: one :class:`MapTargets` per batch sample (or one for all).
        mode: "softmax" (attention probabilities: the analysis and AAS) or "logits" (pre-softmax, the training
            read-out); head_reduce "mean" | "sum" | "full_dim" (logits only); chunk: queries (or keys) per block.
        steps: sampler step indices to capture (None: every step; forwards outside a sampler always count).
        row: the guidance row to read ("cond", the conditional half, by default; "all" reads every row; a plain
            forward has only "all", which any choice falls back to).
        keep_grad: keep the current forward's maps with their graph (training) instead of accumulating.
        stride: pixels per token side (to fit pixel query masks); default from the backbone.
    """

    def __init__(self, v2t_layers: Sequence[str] = (), v2v_layers: Sequence[str] = (), targets=(), *,
                 mode: str = "softmax", head_reduce: str = "mean", chunk: int = 1024, steps=None, row: str = "cond",
                 keep_grad: bool = False, stride: int | None = None, query_frame: int = 0):
        M._check_options(mode, head_reduce, chunk, "MATRIX capture")
        if row not in ROWS:
            raise ValueError(f"MATRIX capture: row must be one of {', '.join(ROWS)}; got {row!r}")
        self.v2t_layers, self.v2v_layers = list(v2t_layers), list(v2v_layers)
        self.targets = [targets] if isinstance(targets, MapTargets) else list(targets)
        self.mode, self.head_reduce, self.chunk = mode, head_reduce, int(chunk)
        self.steps = parse_steps(steps) if isinstance(steps, str) else (None if steps is None else frozenset(steps))
        self.row, self.keep_grad, self.stride, self.query_frame = row, bool(keep_grad), stride, int(query_frame)
        self.acc = M.MapAccumulator()
        self.live: dict = {}
        self.steps_seen: list = []
        self.grid = None
        self.timestep = None
        self._on = False
        self._queries: dict = {}

    def attention_layers(self, ctx):
        return list(dict.fromkeys(self.v2t_layers + self.v2v_layers))

    def begin(self, ctx):
        step = ctx.extra.get("step")
        self._on = self.steps is None or step is None or step[0] in self.steps
        if self._on:
            self.steps_seen.append(None if step is None else int(step[0]))
            self.live = {}
            self.grid = tuple(ctx.grid)
            self.timestep = ctx.timestep

    def _rows(self, ctx) -> slice:
        if self.row != "all" and self.row in ctx.rows:
            return ctx.rows[self.row]
        return ctx.rows.get("all", slice(None)) if "all" in ctx.rows else slice(None)

    def _query_masks(self, b: int, targets: MapTargets, ctx) -> tuple[list, torch.Tensor | None]:
        key = (b, self.grid)
        if key not in self._queries:
            stride = self.stride or token_stride(ctx.bb)
            names, masks = [], []
            for name, m in targets.v2v.items():
                g = query_grid(m, self.grid[1:], stride)
                if bool(g.any()):  # an instance too small for the token grid has no queries: no map
                    names.append(name)
                    masks.append(g)
            self._queries[key] = (names, torch.stack(masks) if masks else None)
        return self._queries[key]

    def attention(self, ctx, layer, q, k, v, call):
        out = call(q, k, v)
        if not self._on:
            return out
        rows = self._rows(ctx)
        qr, kr = q[rows], k[rows]
        if not self.keep_grad:
            qr, kr = qr.detach(), kr.detach()
        if not self.targets:
            return out
        lay = token_layout(ctx, layer, q, k)
        for b in range(qr.shape[0]):
            tg = self.targets[b if len(self.targets) > 1 else 0]
            maps = {}
            if layer in self.v2t_layers and tg.v2t:
                names = list(tg.v2t)
                mm = M.v2t_maps(qr[b:b + 1], kr[b:b + 1], lay, [tg.v2t[n] for n in names], mode=self.mode,
                                head_reduce=self.head_reduce, chunk=self.chunk)[0]
                maps.update({("v2t", n): mm[i] for i, n in enumerate(names)})
            if layer in self.v2v_layers and tg.v2v:
                names, qm = self._query_masks(b, tg, ctx)
                if names:
                    mm = M.v2v_maps(qr[b:b + 1], kr[b:b + 1], lay, qm, mode=self.mode, head_reduce=self.head_reduce,
                                    chunk=self.chunk, query_frame=self.query_frame)[0]
                    maps.update({("v2v", n): mm[i] for i, n in enumerate(names)})
            for (kind, name), m in maps.items():
                key = (layer, kind, name, b)
                if self.keep_grad:
                    # under gradient checkpointing a block's forward runs again in backward: keep the first
                    self.live.setdefault(key, m)
                else:
                    self.acc.add(key, m)
        return out

    # -- results
    def map(self, layer: str, kind: str, name: str, b: int = 0) -> torch.Tensor:
        """The current forward's map (training) or the step mean (inference), [T, h, w]."""
        key = (layer, kind, name, b)
        if self.keep_grad:
            if key not in self.live:
                raise KeyError(f"MATRIX capture: no {kind} map {name!r} of {layer} for sample {b} in this forward")
            return self.live[key]
        return self.acc.mean(key)

    def result(self, b: int = 0) -> "CapturedAttention":
        """Step means of sample ``b`` as a :class:`CapturedAttention`."""
        maps = {(layer, kind, name): self.acc.mean((layer, kind, name, bb))
                for layer, kind, name, bb in self.acc.keys() if bb == b}
        return CapturedAttention(maps=maps, grid=self.grid, steps=[s for s in self.steps_seen],
                                 mode=self.mode, head_reduce=self.head_reduce)


@dataclass
class CapturedAttention:
    """Captured maps of one video (ComfyUI type ``INTERPLAY_ATTENTION`` via a :class:`CaptureSession`).

    maps   {(layer name, "v2t" | "v2v", map name): float32 [T, h, w]} step means
    grid   (T, h, w) token grid; steps: the sampler steps averaged (None for a forward outside a sampler)
    """
    maps: dict
    grid: tuple | None
    steps: list
    mode: str = "softmax"
    head_reduce: str = "mean"

    @property
    def layers(self) -> list[str]:
        return sorted({k[0] for k in self.maps}, key=layer_index)

    def names(self, kind: str) -> list[str]:
        return sorted({k[2] for k in self.maps if k[1] == kind})

    def get(self, layer: str, kind: str, name: str) -> torch.Tensor:
        if (layer, kind, name) not in self.maps:
            have = sorted(f"{k[1]}:{k[2]}" for k in self.maps if k[0] == layer)
            raise KeyError(f"MATRIX: no {kind} map {name!r} at {layer}; captured there: {', '.join(have) or 'none'}")
        return self.maps[(layer, kind, name)]


def aas_report(cap: CapturedAttention, tracks: torch.Tensor, stride: int, temporal: int = 4) -> dict:
    """AAS (sum of map x mask track at token resolution, §2.4) of every captured map with a target, per layer:
    {"v": 1, "layers": {index: {"v2t": {name: aas}, "v2v": {...}}}, "mean": {index: {kind: mean over names}}}.
    ``tracks`` [K, F, H, W] pixel tracks of the generated video (ID k = tracks[k-1])."""
    if cap.grid is None or not cap.maps:
        raise ValueError("MATRIX AAS: the capture is empty. Fix: run the sampler with the capture in its controls "
                         "first (connect the sampler's frames to this node so it runs after).")
    lat = track_grid(tracks, cap.grid, stride, temporal)
    per: dict = {}
    for (layer, kind, name), m in cap.maps.items():
        ids = target_ids(name)
        if ids is None or max(ids) > lat.shape[0]:
            continue
        tgt = lat[ids[0] - 1]
        for i in ids[1:]:
            tgt = tgt | lat[i - 1]
        per.setdefault(layer_index(layer), {}).setdefault(kind, {})[name] = float(M.aas(m, tgt))
    means = {li: {kind: sum(d.values()) / len(d) for kind, d in kinds.items() if d} for li, kinds in per.items()}
    return {"v": 1, "grid": list(cap.grid), "mode": cap.mode, "layers": dict(sorted(per.items())),
            "mean": dict(sorted(means.items()))}


# ------------------------------------------------------------------------------------------ registry kind
class CaptureSession:
    """A capture set up by a node and run by a sampler: each sampler call starts a fresh :class:`MatrixCapture`
    (so a re-run never adds to the last run's sums) and the result is the latest run's."""

    def __init__(self, v2t_indices, v2v_indices, targets: MapTargets, **options):
        self.v2t_indices, self.v2v_indices = list(v2t_indices), list(v2v_indices)
        self.targets, self.options = targets, dict(options)
        self.capture: MatrixCapture | None = None
        self.stride: int | None = None
        self.temporal = 4

    def start(self, bb) -> MatrixCapture:
        self.stride = token_stride(bb)
        self.temporal = int(bb.extra.get("vae_scale_factor_temporal", 4))
        self.capture = MatrixCapture(layer_names(bb, self.v2t_indices, "v2t"),
                                     layer_names(bb, self.v2v_indices, "v2v"), self.targets, stride=self.stride,
                                     **self.options)
        return self.capture

    def result(self) -> CapturedAttention:
        if self.capture is None or not self.capture.acc.keys():
            raise ValueError("MATRIX: the attention capture is empty. Fix: connect its 'controls' to the sampler and "
                             "the sampler's frames to this node (so it runs after the sampler), and check that the "
                             "prompt has markup and the steps selection covers the run.")
        return self.capture.result()


def _attach(branch, bound, backbone):
    sess: CaptureSession = branch.config["session"]
    return sess.start(backbone)


def session_branch(session: CaptureSession, family: str = "cogvideox"):
    """The capture as a ControlBranch of the registry kind (no signal, no weights), for a sampler's controls."""
    from .base import ControlBranch

    return ControlBranch(kind=KIND if family == "cogvideox" else f"{KIND}_{family}", family=family,
                         module=torch.nn.Module(), config={"session": session}, source="MATRIX capture")


def _register():
    from . import registry

    for fam, kind in (("cogvideox", KIND), ("wan", f"{KIND}_wan")):
        registry.register(registry.BranchKind(
            kind=kind, family=fam, label="MATRIX attention capture", signals=(), attach=_attach,
            hint="made by the MATRIX Attention Capture node"))


_register()
