"""MATRIX training-free guidance (spec seed-004 App. D): CAG and CMG perturbation passes on the interaction-dominant
layers, combined with CFG as PAG does. No MATRIX weights are needed: they run on any CogVideoX (and Wan) backbone.

Each is an attachment with its own guidance row ("perturbed_cag" / "perturbed_cmg", inputs copied from "cond"); the
guided step adds ``scale * (cond - perturbed)``, so with CFG: ``uncond + w (cond - uncond) + s (cond - perturbed)``.
On its row, at its layers, the attention output is recomputed with some post-softmax blocks zeroed and **not
renormalised** (the other rows keep the plain attention):

- **CAG** (default layer 12 for CogVideoX-5B, the v2v-dominant layer): video queries lose their cross-frame video
  keys (frame i -> frame j != i); same-frame video and the text blocks stay.
- **CMG** (default layers 7 and 11, the v2t-dominant ones; the Fig. 15 variant, no masks): the cross-modal blocks
  are zeroed, video -> text and text -> video; text -> text and video -> video stay.

Wan layers (``blocks.<i>.attn1`` self, ``attn2`` cross): CAG zeroes cross-frame weights in self-attention; CMG zeroes
the text part of cross-attention (its output becomes 0 on the perturbed row).

Scale 0 declares no row and no attention slot, so the sampler runs exactly as without it. The recomputation is
blockwise over queries (``chunk``), one ``[1, H, chunk, N]`` float32 block at a time.
"""
from __future__ import annotations

import math

import torch

from ..backbones.base import Attachment
from .matrix_capture import layer_names, token_layout

KIND = "matrix_guidance"
MODES = ("cag", "cmg")
DEFAULT_LAYERS = {("cogvideox", "cag"): (12,), ("cogvideox", "cmg"): (7, 11),
                  ("wan", "cag"): (6, 8), ("wan", "cmg"): (20, 24)}


def default_layers(family: str, mode: str, num_layers: int) -> tuple[int, ...]:
    """The paper's dominant layers (CogVideoX-5B: CMG 7, 11; CAG 12; Wan: the public code's 20, 24 / 6, 8), kept
    to those the model has (a small model without them uses its last layer)."""
    want = DEFAULT_LAYERS.get((family, mode), ())
    have = tuple(i for i in want if i < num_layers)
    return have or (num_layers - 1,)


def _keep_mask(lay, q0: int, q1: int, n_keys: int, mode: str, device) -> torch.Tensor | None:
    """bool [q1 - q0, n_keys]: which post-softmax weights survive for queries q0..q1 (None: all zero)."""
    if lay.kind == "cross":
        return None if mode == "cmg" else torch.ones(q1 - q0, n_keys, dtype=torch.bool, device=device)
    vq = lay.video_queries()
    pos_q = torch.arange(q0, q1, device=device)
    pos_k = torch.arange(n_keys, device=device)
    is_vq = (pos_q >= vq.start) & (pos_q < vq.stop)
    is_vk = (pos_k >= vq.start) & (pos_k < vq.stop)
    if mode == "cmg":  # drop video<->text, keep same-modality blocks
        return is_vq[:, None] == is_vk[None, :]
    ft = lay.frame_tokens
    fq = torch.where(is_vq, (pos_q - vq.start) // ft, -1)
    fk = torch.where(is_vk, (pos_k - vq.start) // ft, -2)
    cross = is_vq[:, None] & is_vk[None, :] & (fq[:, None] != fk[None, :])
    return ~cross


def perturbed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lay, mode: str,
                        chunk: int = 512) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) with the ``mode``'s blocks zeroed (no renormalisation) times v -> [B, H, Nq, d]."""
    if mode not in MODES:
        raise ValueError(f"MATRIX guidance: mode must be cag or cmg; got {mode!r}")
    scale = 1.0 / math.sqrt(q.shape[-1])
    out = torch.empty(q.shape[:-1] + (v.shape[-1],), dtype=v.dtype, device=v.device)
    kf, vf = k.float(), v.float()
    nq, nk = q.shape[2], k.shape[2]
    for c0 in range(0, nq, chunk):
        c1 = min(c0 + chunk, nq)
        keep = _keep_mask(lay, c0, c1, nk, mode, q.device)
        if keep is None:
            out[:, :, c0:c1] = 0
            continue
        p = ((q[:, :, c0:c1].float() * scale) @ kf.transpose(-1, -2)).softmax(-1)
        p = p.masked_fill_(~keep, 0.0)
        out[:, :, c0:c1] = (p @ vf).to(v.dtype)
        del p
    return out


class PerturbedAttention(Attachment):
    """CAG or CMG on ``layers`` (family attention-layer names) with guidance ``scale`` over the step range
    [start, end) (fractions of the sampler's steps; forwards outside a sampler always perturb)."""

    def __init__(self, layers, mode: str, scale: float = 1.0, start: float = 0.0, end: float = 1.0,
                 row: str | None = None, chunk: int = 512):
        if mode not in MODES:
            raise ValueError(f"MATRIX guidance: mode must be one of {', '.join(MODES)}; got {mode!r}")
        if not 0.0 <= start < end <= 1.0:
            raise ValueError(f"MATRIX guidance: start ({start}) and end ({end}) must satisfy 0 <= start < end <= 1")
        self.layers, self.mode, self.scale = list(layers), mode, float(scale)
        self.step_range, self.chunk = (float(start), float(end)), int(chunk)  # (.end is a door)
        self.row = row or f"perturbed_{mode}"

    def attention_layers(self, ctx):
        return self.layers if self.scale != 0 else []

    def guidance_rows(self):
        return [(self.row, "cond", self.scale)] if self.scale != 0 else []

    def active(self, step) -> bool:
        if step is None:
            return True
        i, n = step
        return self.step_range[0] <= i / max(n, 1) < self.step_range[1]

    def attention(self, ctx, layer, q, k, v, call):
        out = call(q, k, v)
        rows = ctx.rows.get(self.row)
        if rows is None or not self.active(ctx.extra.get("step")):
            return out
        out = out.clone()
        out[rows] = perturbed_attention(q[rows], k[rows], v[rows], token_layout(ctx, layer, q, k), self.mode,
                                        self.chunk)
        return out


def guidance_branch(family: str, mode: str, layers, scale: float):
    """CAG / CMG as a ControlBranch of the registry kind (no signal, no weights) for a sampler's controls chain.
    The sampler's and Apply Control's step ranges apply; their weights do not scale the guidance (set ``scale``)."""
    from .base import ControlBranch

    if mode not in MODES:
        raise ValueError(f"MATRIX guidance: mode must be one of {', '.join(MODES)}; got {mode!r}")
    return ControlBranch(kind=KIND if family == "cogvideox" else f"{KIND}_{family}", family=family,
                         module=torch.nn.Module(), config={"mode": mode, "layers": [int(i) for i in layers],
                                                           "scale": float(scale)}, source="MATRIX guidance")


def _attach(branch, bound, backbone):
    bc = bound[0]
    cfg = branch.config
    kind = "v2v" if cfg["mode"] == "cag" else "v2t"
    return PerturbedAttention(layer_names(backbone, cfg["layers"], kind), cfg["mode"], cfg["scale"], bc.start, bc.end)


def _register():
    from . import registry

    for fam, kind in (("cogvideox", KIND), ("wan", f"{KIND}_wan")):
        registry.register(registry.BranchKind(
            kind=kind, family=fam, label="MATRIX guidance (CAG/CMG)", signals=(), attach=_attach,
            hint="made by the MATRIX Guidance node"))


_register()
