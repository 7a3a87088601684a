"""MATRIX attention-alignment training pieces: the two presets, the SGA/SPA losses and the causal attention decoder
D_phi (spec seed-004 §3.2-§3.6, §8). No backbone here: the maps come from ``control.matrix`` and the tracks from
``conditions.id_map``.

Presets (``PRESETS``; every field can be overridden with ``get_preset(name, **changes)``):

- ``paper``: CogVideoX-5B-I2V at 49 x 480 x 720; LoRA r128 / alpha 64 on the q, k, v and out projections of
  layers 7, 11, 12 (v2t on 7 and 11, v2v on 12, all in the joint ``attn1``); patch embedding 32 -> 48 input
  channels (the ID map's 16 latent channels); roles sub / obj / verb (SGA) and sub / obj (SPA) from the prompt's
  spans; loss BCE + (1 - Dice) + L2, betas 1 (unstated in the paper); two decoder heads; LoRA strength 1.
- ``code``: Wan2.1-I2V-14B-480P at 81 x 480 x 832; LoRA r16 / alpha 16 on the q, k, v, o projections of blocks 20,
  24 cross-attention (``attn2``, v2t) and 6, 8 self-attention (``attn1``, v2v); patch embedding 36 -> 56 (16 VAE
  channels of the ID-map video + Wan's 4 first-frame mask channels); one map per present ID (``<idk>`` tags), no verb
  term; BCE with pos_weight = min(#neg / max(#pos, 1), 10) pooled over the present IDs; lambda_SGA 0.01 and
  lambda_SPA 0.005, both times the scheduler's timestep weight; maps averaged over the supervised layers before
  decoding; one shared decoder; CLIP image context off in cross-attention; inference LoRA strength 0.5.

Losses (``mask_loss``) take decoder logits and binary pixel-space targets of the same shape ``[..., F, H, W]``:
BCE-with-logits is the mean over elements; Dice is soft Dice on sigmoid(X) per map (sums over F, H, W, eps 1e-6 in
numerator and denominator, as the public code's analysis does), 1 - Dice averaged over maps; L2 is the mean of
(sigmoid(X) - Y)^2. ``alignment_loss`` groups maps: paper presets sum the roles of one interaction and average over
interactions; the code preset pools every present map into one BCE.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..conditions.id_map import resize_nearest

PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")
LOSSES = ("bce_dice_l2", "bce")


# ------------------------------------------------------------------------------------------ decoder
@dataclass(frozen=True)
class DecoderConfig:
    """D_phi: ``spatial_stages`` x2 up-samplings (4: token grid -> pixels at a x16 factor), the first
    ``temporal_stages`` of them also causal x2 in time keeping frame 0 (2: T -> 1 + 4(T - 1)); ``channels`` has
    spatial_stages + 1 widths (conv_in's, then each stage's output)."""
    spatial_stages: int = 4
    temporal_stages: int = 2
    channels: tuple = (64, 64, 32, 32, 16)
    standardise: str = "frame"  # "frame" (causal), "clip" (whole clip; not causal), "none"

    def __post_init__(self):
        if len(self.channels) != self.spatial_stages + 1:
            raise ValueError(f"DecoderConfig: channels needs spatial_stages + 1 = {self.spatial_stages + 1} widths; "
                             f"got {self.channels}")
        if not 0 <= self.temporal_stages <= self.spatial_stages:
            raise ValueError("DecoderConfig: temporal_stages must be between 0 and spatial_stages")
        if self.standardise not in ("frame", "clip", "none"):
            raise ValueError(f"DecoderConfig: standardise must be frame, clip or none; got {self.standardise!r}")

    @classmethod
    def for_factors(cls, spatial: int = 16, temporal: int = 4, target_scale: float = 1.0) -> "DecoderConfig":
        """Stages that bring a token grid of ``spatial`` pixels per token to ``target_scale`` x the pixel grid."""
        up = spatial * target_scale
        s, t = round(math.log2(up)), round(math.log2(temporal))
        if up < 1 or 2 ** s != up or 2 ** t != temporal:
            raise ValueError(f"DecoderConfig: spatial x target_scale ({spatial} x {target_scale}) and temporal "
                             f"({temporal}) must be powers of two")
        widths = (64, 64, 32, 32, 16, 16, 8)[:s + 1]
        return cls(spatial_stages=s, temporal_stages=min(t, s), channels=widths)


def _groups(c: int) -> int:
    return next(g for g in (8, 4, 2, 1) if c % g == 0)


class FrameNorm(nn.GroupNorm):
    """GroupNorm over (C, h, w) of each frame separately: statistics never mix frames, so it stays causal."""

    def forward(self, x):  # [B, C, T, h, w]
        b, c, t, h, w = x.shape
        y = super().forward(x.transpose(1, 2).reshape(b * t, c, h, w))
        return y.reshape(b, t, c, h, w).transpose(1, 2)


class CausalConv3d(nn.Conv3d):
    """Conv3d padded in time on the past side only (frame 0 repeated, the 3-D VAEs' causal padding)."""

    def __init__(self, cin: int, cout: int, kernel=(3, 3, 3)):
        super().__init__(cin, cout, kernel, padding=(0, kernel[1] // 2, kernel[2] // 2))
        self.time_pad = kernel[0] - 1

    def forward(self, x):
        if self.time_pad:
            x = torch.cat([x[:, :, :1].expand(-1, -1, self.time_pad, -1, -1), x], dim=2)
        return super().forward(x)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1, self.conv1 = FrameNorm(_groups(cin), cin), CausalConv3d(cin, cout)
        self.norm2, self.conv2 = FrameNorm(_groups(cout), cout), CausalConv3d(cout, cout)
        self.skip = nn.Conv3d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x):
        y = self.conv1(F.silu(self.norm1(x)))
        return self.skip(x) + self.conv2(F.silu(self.norm2(y)))


class Upsample(nn.Module):
    """x2 in space (nearest + 3x3), and optionally x2 in time the causal way: frame 0 stays single, every later
    frame is doubled (T -> 1 + 2(T - 1)), then a causal temporal conv."""

    def __init__(self, c: int, temporal: bool):
        super().__init__()
        self.temporal = temporal
        self.space = nn.Conv3d(c, c, (1, 3, 3), padding=(0, 1, 1))
        self.time = CausalConv3d(c, c, (3, 1, 1)) if temporal else None

    def forward(self, x):
        if self.temporal and x.shape[2] > 1:
            x = torch.cat([x[:, :, :1], x[:, :, 1:].repeat_interleave(2, dim=2)], dim=2)
        if self.time is not None:
            x = self.time(x)
        b, c, t, h, w = x.shape
        x = F.interpolate(x.reshape(b, c * t, h, w), scale_factor=2, mode="nearest").reshape(b, c, t, 2 * h, 2 * w)
        return self.space(x)


class MatrixAttnDecoder(nn.Module):
    """The lightweight causal decoder D_phi: a 1-channel attention map on the token lattice -> mask-track logits.

    forward(maps ``[B, T, h, w]`` or ``[B, 1, T, h, w]``) -> logits ``[B, 1, 1 + 4(T - 1), h * 2^s, w * 2^s]``
    (temporal_stages = 2, s = spatial_stages). Causal: output frame f depends on latent frames <= ceil(f / 4) only
    (latent i covers pixel frames 4i - 3 .. 4i), like the 3-D VAEs it mirrors. Dropped at inference.
    """

    def __init__(self, config: DecoderConfig = DecoderConfig()):
        super().__init__()
        self.config = config
        ch = config.channels
        self.conv_in = CausalConv3d(1, ch[0])
        self.blocks = nn.ModuleList(ResBlock(ch[i], ch[i + 1]) for i in range(config.spatial_stages))
        self.ups = nn.ModuleList(Upsample(ch[i + 1], i < config.temporal_stages) for i in range(config.spatial_stages))
        self.norm_out = FrameNorm(_groups(ch[-1]), ch[-1])
        self.conv_out = CausalConv3d(ch[-1], 1)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def output_frames(self, t: int) -> int:
        return 1 + (2 ** self.config.temporal_stages) * (t - 1)

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        mode = self.config.standardise
        if mode == "none":
            return x
        dims = (-2, -1) if mode == "frame" else (-3, -2, -1)
        return (x - x.mean(dims, keepdim=True)) / (x.std(dims, keepdim=True, unbiased=False) + 1e-6)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        x = maps[:, None] if maps.ndim == 4 else maps
        if x.ndim != 5 or x.shape[1] != 1:
            raise ValueError("MatrixAttnDecoder: maps must be [B, T, h, w] or [B, 1, T, h, w]; got "
                             f"{tuple(maps.shape)}")
        x = self.conv_in(self.standardise(x.to(self.conv_in.weight.dtype)))
        for block, up in zip(self.blocks, self.ups):
            x = up(block(x))
        return self.conv_out(F.silu(self.norm_out(x)))


# ------------------------------------------------------------------------------------------ presets
@dataclass(frozen=True)
class MatrixPreset:
    """Everything a MATRIX recipe fixes; see the module doc for the two named presets."""
    name: str
    family: str  # "cogvideox" | "wan"
    backbone: str
    frames: int
    height: int
    width: int
    fps: float
    vae_spatial: int
    vae_temporal: int
    patch: int
    text_len: int
    v2t_layers: tuple
    v2t_attention: str  # "attn1" (CogVideoX joint) | "attn2" (Wan cross)
    v2v_layers: tuple
    v2v_attention: str
    lora_rank: int
    lora_alpha: float
    patch_in: int
    patch_out: int
    markup: str  # "paper_spans" | "id_tags"
    sga_roles: tuple
    spa_roles: tuple
    loss: str
    pos_weight_cap: float | None
    lambda_sga: float
    lambda_spa: float
    timestep_weighted: bool
    head_reduce: str
    shared_decoder: bool
    inference_lora_strength: float
    lr: float
    lr_schedule: str
    steps: int | None
    image_context: bool = True
    projections: tuple = PROJECTIONS
    map_mode: str = "logits"
    layer_combine: str = "mean_maps"
    beta_bce: float = 1.0
    beta_dice: float = 1.0
    beta_l2: float = 1.0
    weight_decay: float = 0.01
    target_scale: float = 1.0  # decoder output / targets as a fraction of the pixel grid (1, 1/2, 1/4, 1/8)

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f"MatrixPreset: loss must be one of {', '.join(LOSSES)}; got {self.loss!r}")
        if self.layer_combine not in ("mean_maps", "mean_losses"):
            raise ValueError("MatrixPreset: layer_combine must be mean_maps or mean_losses; got "
                             f"{self.layer_combine!r}")

    @property
    def token_stride(self) -> int:
        """Pixels per token side (VAE x patch): 16 for both presets."""
        return self.vae_spatial * self.patch

    @property
    def latent_grid(self) -> tuple[int, int, int]:
        """(T, h, w) token grid at the preset's resolution: (13, 30, 45) paper, (21, 30, 52) code."""
        s = self.token_stride
        return 1 + (self.frames - 1) // self.vae_temporal, self.height // s, self.width // s

    @property
    def lora_layers(self) -> tuple:
        return tuple(sorted(set(self.v2t_layers) | set(self.v2v_layers)))

    def lora_target_modules(self) -> list[str]:
        """Full module paths in diffusers naming, peft ``target_modules`` ready: CogVideoXTransformer3DModel
        ``transformer_blocks.{i}.attn1.{to_q,to_k,to_v,to_out.0}``; WanTransformer3DModel ``blocks.{i}.attn1`` (self)
        / ``blocks.{i}.attn2`` (cross) ``.{to_q,to_k,to_v,to_out.0}``."""
        root = "transformer_blocks" if self.family == "cogvideox" else "blocks"
        pairs = sorted({(i, self.v2t_attention) for i in self.v2t_layers} | {(i, self.v2v_attention)
                                                                                for i in self.v2v_layers})
        return [f"{root}.{i}.{attn}.{p}" for i, attn in pairs for p in self.projections]

    def decoder_config(self) -> DecoderConfig:
        """The decoder for this preset's factors and ``target_scale``."""
        return DecoderConfig.for_factors(self.token_stride, self.vae_temporal, self.target_scale)

    def replace(self, **changes) -> "MatrixPreset":
        return dataclasses.replace(self, **changes)


PAPER = MatrixPreset(
    name="paper", family="cogvideox", backbone="THUDM/CogVideoX-5b-I2V", frames=49, height=480, width=720, fps=8.0,
    vae_spatial=8, vae_temporal=4, patch=2, text_len=226,
    v2t_layers=(7, 11), v2t_attention="attn1", v2v_layers=(12,), v2v_attention="attn1",
    lora_rank=128, lora_alpha=64.0, patch_in=32, patch_out=48, markup="paper_spans",
    sga_roles=("sub", "obj", "verb"), spa_roles=("sub", "obj"), loss="bce_dice_l2", pos_weight_cap=None,
    lambda_sga=0.01, lambda_spa=0.005, timestep_weighted=False, head_reduce="mean", shared_decoder=False,
    inference_lora_strength=1.0, lr=1e-5, lr_schedule="cosine", steps=4000)
"""lambda, beta, lr are not stated in the paper: lambda follows the public code, beta = 1 (spec §3.5 rec), lr the
public code's 1e-5."""

CODE = MatrixPreset(
    name="code", family="wan", backbone="Wan-AI/Wan2.1-I2V-14B-480P", frames=81, height=480, width=832, fps=16.0,
    vae_spatial=8, vae_temporal=4, patch=2, text_len=512,
    v2t_layers=(20, 24), v2t_attention="attn2", v2v_layers=(6, 8), v2v_attention="attn1",
    lora_rank=16, lora_alpha=16.0, patch_in=36, patch_out=56, markup="id_tags",
    sga_roles=("id",), spa_roles=("id",), loss="bce", pos_weight_cap=10.0,
    lambda_sga=0.01, lambda_spa=0.005, timestep_weighted=True, head_reduce="full_dim", shared_decoder=True,
    inference_lora_strength=0.5, lr=1e-5, lr_schedule="constant", steps=None, image_context=False)
"""steps None: the public code trains 5 epochs over its data."""

PRESETS = {"paper": PAPER, "code": CODE}


def get_preset(name: str, **changes) -> MatrixPreset:
    if name not in PRESETS:
        raise ValueError(f"MATRIX: preset must be one of {', '.join(PRESETS)}; got {name!r}")
    return PRESETS[name].replace(**changes) if changes else PRESETS[name]


# ------------------------------------------------------------------------------------------ losses
def pos_weight(target: torch.Tensor, cap: float | None = 10.0) -> torch.Tensor:
    """#neg / max(#pos, 1) over all of ``target``, clamped at ``cap`` (the public code's BCE weight)."""
    t = target.float()
    pos = t.sum()
    w = (t.numel() - pos) / pos.clamp(min=1.0)
    return w.clamp(max=cap) if cap is not None else w


def bce(logits: torch.Tensor, target: torch.Tensor, pos_weight_value: torch.Tensor | None = None) -> torch.Tensor:
    """Mean BCE-with-logits; ``pos_weight_value`` scales the positive term."""
    return F.binary_cross_entropy_with_logits(logits.float(), target.float(), pos_weight=pos_weight_value)


def dice(logits: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Soft Dice of sigmoid(logits) per map (sums over the last three dims ``F, H, W``) -> ``[...]``."""
    p, y = torch.sigmoid(logits.float()), target.float()
    inter = (p * y).sum((-3, -2, -1))
    return (2 * inter + eps) / (p.sum((-3, -2, -1)) + y.sum((-3, -2, -1)) + eps)


def l2(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean of (sigmoid(logits) - target)^2."""
    return (torch.sigmoid(logits.float()) - target.float()).pow(2).mean()


def mask_loss(logits: torch.Tensor, target: torch.Tensor, preset: MatrixPreset) -> torch.Tensor:
    """ell(X, Y) for one map (or a stack of maps pooled) per the preset: ``bce_dice_l2`` = b_bce BCE + b_dice
    (1 - mean Dice) + b_l2 L2; ``bce`` = BCE with the capped pos_weight over all given elements."""
    if logits.shape != target.shape:
        raise ValueError(f"MATRIX loss: the decoder output {tuple(logits.shape)} and the target {tuple(target.shape)} "
                         "differ; expected the same [.., F, H, W]. Fix: build the targets at the decoder's scale "
                         "(pixel_targets with the preset's target_scale).")
    w = pos_weight(target, preset.pos_weight_cap).to(logits.device) if preset.pos_weight_cap is not None else None
    if preset.loss == "bce":
        return bce(logits, target, w)
    return (preset.beta_bce * bce(logits, target, w) + preset.beta_dice * (1 - dice(logits, target).mean())
            + preset.beta_l2 * l2(logits, target))


def alignment_loss(logits: torch.Tensor, target: torch.Tensor, preset: MatrixPreset,
                   present: Sequence[bool] | torch.Tensor | None = None) -> torch.Tensor:
    """L_SGA or L_SPA from stacked decoder logits and targets ``[G, R, F, H, W]`` (G groups: interactions for the
    paper preset, IDs for the code preset; R roles per group: sub, obj, verb / sub, obj / one).

    ``bce_dice_l2``: mean over present groups of sum over roles of ``mask_loss`` (spec §3.5's sum over e, averaged
    over interactions). ``bce``: one BCE with one pos_weight over every present group's elements (the public code).
    ``present`` (bool per group, default all) leaves absent IDs out; no group present gives 0.
    """
    if logits.ndim != 5 or logits.shape != target.shape:
        raise ValueError(f"MATRIX loss: expected logits and targets [G, R, F, H, W] of one shape; got "
                         f"{tuple(logits.shape)} and {tuple(target.shape)}")
    keep = torch.ones(logits.shape[0], dtype=torch.bool) if present is None else torch.as_tensor(present).bool()
    if keep.shape != (logits.shape[0],):
        raise ValueError(f"MATRIX loss: present needs one flag per group ({logits.shape[0]}); got {tuple(keep.shape)}")
    idx = keep.nonzero().flatten().to(logits.device)
    if idx.numel() == 0:
        return logits.sum() * 0.0  # keeps the graph; nothing to align
    x, y = logits.index_select(0, idx), target.index_select(0, idx.to(target.device))
    if preset.loss == "bce":
        return mask_loss(x, y, preset)
    per = torch.stack([torch.stack([mask_loss(x[g, r], y[g, r], preset) for r in range(x.shape[1])]).sum()
                       for g in range(x.shape[0])])
    return per.mean()


def total_loss(l_dm: torch.Tensor, l_sga: torch.Tensor | float, l_spa: torch.Tensor | float, preset: MatrixPreset,
               timestep_weight: torch.Tensor | float = 1.0) -> torch.Tensor:
    """L_DM + w (lambda_SGA L_SGA + lambda_SPA L_SPA); w is the scheduler's weight of the sampled timestep for the
    code preset (the diffusion loss carries its own weighting) and 1 for the paper preset."""
    w = timestep_weight if preset.timestep_weighted else 1.0
    return l_dm + w * (preset.lambda_sga * l_sga + preset.lambda_spa * l_spa)


def combine_layers(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """The public code's multi-layer rule: the supervised layers' maps averaged before decoding."""
    return torch.stack(list(maps)).mean(0)


# ------------------------------------------------------------------------------------------ targets
def pixel_targets(tracks: torch.Tensor, target_scale: float = 1.0) -> torch.Tensor:
    """Pixel mask tracks ``[..., F, H, W]`` -> bool targets at ``target_scale`` of the pixel grid (NEAREST; the
    full frame rate is kept: the decoder restores time, the targets are never OR-pooled)."""
    t = torch.as_tensor(tracks)
    t = t >= 0.5 if t.dtype != torch.bool else t
    if target_scale == 1.0:
        return t
    h, w = t.shape[-2:]
    if any(abs(n * target_scale - round(n * target_scale)) > 1e-6 for n in (h, w)):
        raise ValueError(f"MATRIX targets: {h}x{w} does not scale by {target_scale} to whole pixels")
    size = (round(h * target_scale), round(w * target_scale))
    return resize_nearest(t, size)


def role_targets(tracks: torch.Tensor, preset: MatrixPreset, kind: str,
                 interactions: Sequence[tuple[int, int]] = ()) -> tuple[torch.Tensor, list, torch.Tensor]:
    """Targets ``[G, R, F, H, W]`` for SGA (``kind="sga"``) or SPA (``"spa"``) from ID tracks ``[K, F, H, W]``
    (ID k = tracks[k-1]), the list of groups (per group, per role, the IDs whose union is the target; the maps must
    be decoded in this order) and the present flags.

    Paper roles: per interaction (sub, obj): SGA [M_sub, M_obj, M_sub | M_obj], SPA [M_sub, M_obj]. Code: one group
    per ID slot, [M_k]; present = the track has pixels (SPA: in frame 0, where its queries come from).
    """
    if kind not in ("sga", "spa"):
        raise ValueError(f"role_targets: kind must be sga or spa; got {kind!r}")
    t = torch.as_tensor(tracks)
    t = t >= 0.5 if t.dtype != torch.bool else t
    roles = preset.sga_roles if kind == "sga" else preset.spa_roles
    if roles == ("id",):
        groups = [[(k,)] for k in range(1, t.shape[0] + 1)]
        present = t.flatten(1).any(1) if kind == "sga" else t[:, 0].flatten(1).any(1)
        return t[:, None], groups, present
    if not interactions:
        raise ValueError("role_targets: the paper preset needs the prompt's interactions (sub, obj) pairs")
    groups, stacks = [], []
    for s, o in interactions:
        for i in (s, o):
            if not 1 <= i <= t.shape[0]:
                raise ValueError(f"role_targets: interaction {s}>{o} names ID {i}, but there are tracks for IDs "
                                 f"1..{t.shape[0]}")
        ids = {"sub": (s,), "obj": (o,), "verb": (s, o)}
        groups.append([ids[r] for r in roles])
        stacks.append(torch.stack([t[s - 1] if r == "sub" else t[o - 1] if r == "obj" else t[s - 1] | t[o - 1]
                                   for r in roles]))
    return torch.stack(stacks), groups, torch.ones(len(groups), dtype=torch.bool)
