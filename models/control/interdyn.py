"""InterDyn control branch: a trainable copy of the SVD UNet encoder driven by a mask video.

Layout (parameter names match the released ``ControlNetSDVModel`` weights, so they load by name):
- ``conv_in``, ``time_proj``/``time_embedding``, ``add_time_proj``/``add_embedding``, ``down_blocks``,
  ``mid_block``: a copy of the SVD UNet's (the release does not copy ``add_embedding``; we do, optionally);
- ``controlnet_cond_embedding``: a per-frame conv encoder E (3 -> 16 -> ... -> 256, three stride-2 convs, then a
  zero-initialised conv to 320), added to the feature after the branch's ``conv_in``;
- ``controlnet_down_blocks`` (12 zero-init 1x1 convs, one per UNet skip) and ``controlnet_mid_block``.

The branch returns residuals; how the frozen UNet adds them is the ``residual_rule`` carried by the
:class:`ControlBranch` ("quirk" for the released weights, see ``backbones.svd.unet_forward``).
"""
from __future__ import annotations

import inspect
import json
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_3d_blocks import UNetMidBlockSpatioTemporal, get_down_block

from ..backbones import svd
from ..backbones.base import Attachment, cast, plain_state_dict
from . import registry
from .base import ControlBranch

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
CONFIG_NAME = "config.json"
RELEASED_CLASS = "ControlNetSDVModel"


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ConditionEncoder(nn.Module):
    """E(c): control [B,F,Cc,H,W] -> [B*F, C0, H/2^k, W/2^k] per frame (k = len(channels) - 1)."""

    def __init__(self, out_channels: int, in_channels: int = 3, channels=(16, 32, 96, 256)):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, channels[0], 3, padding=1)
        self.blocks = nn.ModuleList()
        for a, b in zip(channels[:-1], channels[1:]):
            self.blocks.append(nn.Conv2d(a, a, 3, padding=1))
            self.blocks.append(nn.Conv2d(a, b, 3, padding=1, stride=2))
        self.conv_out = _zero(nn.Conv2d(channels[-1], out_channels, 3, padding=1))

    def forward(self, control: torch.Tensor) -> torch.Tensor:
        x = F.silu(self.conv_in(control.flatten(0, 1)))
        for conv in self.blocks:
            x = F.silu(conv(x))
        return self.conv_out(x)


class InterDynBranch(ModelMixin, ConfigMixin):
    """The InterDyn ControlNet for SVD. Config keys are those of the released ``config.json``."""

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        sample_size: int | None = None,
        in_channels: int = 8,
        out_channels: int = 4,
        down_block_types=("CrossAttnDownBlockSpatioTemporal",) * 3 + ("DownBlockSpatioTemporal",),
        up_block_types=("UpBlockSpatioTemporal",) + ("CrossAttnUpBlockSpatioTemporal",) * 3,
        block_out_channels=(320, 640, 1280, 1280),
        addition_time_embed_dim: int = 256,
        projection_class_embeddings_input_dim: int = 768,
        layers_per_block=2,
        cross_attention_dim=1024,
        transformer_layers_per_block=1,
        # SVD's (64-channel heads). The reference class defaults to (5, 10, 10, 20), a slip inherited from
        # svd-temporal-controlnet; its from_unet copies the UNet's heads, so a config.json written from SVD's
        # UNet records (5, 10, 20, 20). A released config.json is read as it is.
        num_attention_heads=(5, 10, 20, 20),
        num_frames: int = 25,
        conditioning_channels: int = 3,
        conditioning_embedding_out_channels=(16, 32, 96, 256),
    ):
        super().__init__()
        n = len(down_block_types)
        if len(block_out_channels) != n:
            raise ValueError(f"block_out_channels ({len(block_out_channels)}) must match down_block_types ({n})")
        heads = (num_attention_heads,) * n if isinstance(num_attention_heads, int) else tuple(num_attention_heads)
        xdim = (cross_attention_dim,) * n if isinstance(cross_attention_dim, int) else tuple(cross_attention_dim)
        lpb = [layers_per_block] * n if isinstance(layers_per_block, int) else list(layers_per_block)
        tlpb = ([transformer_layers_per_block] * n if isinstance(transformer_layers_per_block, int)
                else list(transformer_layers_per_block))
        c0 = block_out_channels[0]
        temb = c0 * 4

        self.conv_in = nn.Conv2d(in_channels, c0, 3, padding=1)
        self.time_proj = Timesteps(c0, True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(c0, temb)
        self.add_time_proj = Timesteps(addition_time_embed_dim, True, downscale_freq_shift=0)
        self.add_embedding = TimestepEmbedding(projection_class_embeddings_input_dim, temb)
        self.controlnet_cond_embedding = ConditionEncoder(c0, conditioning_channels,
                                                          tuple(conditioning_embedding_out_channels))

        self.down_blocks = nn.ModuleList()
        self.controlnet_down_blocks = nn.ModuleList([_zero(nn.Conv2d(c0, c0, 1))])
        out_ch = c0
        for i, kind in enumerate(down_block_types):
            in_ch, out_ch = out_ch, block_out_channels[i]
            last = i == n - 1
            self.down_blocks.append(get_down_block(
                kind, num_layers=lpb[i], transformer_layers_per_block=tlpb[i], in_channels=in_ch,
                out_channels=out_ch, temb_channels=temb, add_downsample=not last, resnet_eps=1e-5,
                cross_attention_dim=xdim[i], num_attention_heads=heads[i], resnet_act_fn="silu"))
            for _ in range(lpb[i] + (0 if last else 1)):
                self.controlnet_down_blocks.append(_zero(nn.Conv2d(out_ch, out_ch, 1)))
        self.mid_block = UNetMidBlockSpatioTemporal(
            block_out_channels[-1], temb_channels=temb, transformer_layers_per_block=tlpb[-1],
            cross_attention_dim=xdim[-1], num_attention_heads=heads[-1])
        self.controlnet_mid_block = _zero(nn.Conv2d(block_out_channels[-1], block_out_channels[-1], 1))
        self.gradient_checkpointing = False

    @classmethod
    def from_unet(cls, unet, conditioning_channels: int = 3, conditioning_embedding_out_channels=(16, 32, 96, 256),
                  copy_add_embedding: bool = True, load_weights_from_unet: bool = True) -> "InterDynBranch":
        """A fresh branch copying the UNet's encoder. ``copy_add_embedding=False`` reproduces the release (its
        fps/motion/aug MLP started random)."""
        c = unet.config
        branch = cls(
            sample_size=c.sample_size, in_channels=c.in_channels, out_channels=c.out_channels,
            down_block_types=tuple(c.down_block_types), up_block_types=tuple(c.up_block_types),
            block_out_channels=tuple(c.block_out_channels), addition_time_embed_dim=c.addition_time_embed_dim,
            projection_class_embeddings_input_dim=c.projection_class_embeddings_input_dim,
            layers_per_block=c.layers_per_block, cross_attention_dim=c.cross_attention_dim,
            transformer_layers_per_block=c.transformer_layers_per_block,
            num_attention_heads=c.num_attention_heads, num_frames=c.num_frames,
            conditioning_channels=conditioning_channels,
            conditioning_embedding_out_channels=tuple(conditioning_embedding_out_channels),
        )
        if load_weights_from_unet:
            names = ["conv_in", "time_embedding", "down_blocks", "mid_block"]
            if copy_add_embedding:
                names.append("add_embedding")
            for name in names:
                getattr(branch, name).load_state_dict(plain_state_dict(getattr(unet, name)))
        p = next(unet.parameters())
        if p.dtype != torch.float32:
            cast(branch, dtype=p.dtype)
        return branch.to(p.device) if p.device.type != "cpu" else branch

    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor,
                added_time_ids: torch.Tensor, control: torch.Tensor, conditioning_scale: float = 1.0):
        """sample [B,F,8,h,w], timestep scalar/[B], encoder_hidden_states [B,1,D], added_time_ids [B,3],
        control [B,F,3,H,W] in [-1,1] with H = 8h. Returns (down residuals: list of 12 [B*F,C_i,h_i,w_i],
        mid residual [B*F,C,h',w']), each times ``conditioning_scale``."""
        batch, frames = sample.shape[:2]
        if control.shape[:2] != (batch, frames):
            raise ValueError(f"control batch/frames {tuple(control.shape[:2])} must match the latent's "
                             f"{(batch, frames)}")
        emb, ehs = svd.time_and_context(self, sample, timestep, encoder_hidden_states, added_time_ids)

        h = self.conv_in(sample.flatten(0, 1))
        h = h + self.controlnet_cond_embedding(control.to(h.dtype))
        indicator = torch.zeros(batch, frames, dtype=h.dtype, device=h.device)
        skips = [h]
        for block in self.down_blocks:
            if getattr(block, "has_cross_attention", False):
                h, r = block(hidden_states=h, temb=emb, encoder_hidden_states=ehs, image_only_indicator=indicator)
            else:
                h, r = block(hidden_states=h, temb=emb, image_only_indicator=indicator)
            skips.extend(r)
        h = self.mid_block(hidden_states=h, temb=emb, encoder_hidden_states=ehs, image_only_indicator=indicator)
        down = [conv(s) for conv, s in zip(self.controlnet_down_blocks, skips)]
        mid = self.controlnet_mid_block(h)
        if conditioning_scale != 1.0:
            down = [d * conditioning_scale for d in down]
            mid = mid * conditioning_scale
        return down, mid


# ------------------------------------------------------------------------------------------- save/load
def new_branch(unet, *, residual_rule: str = "once", copy_add_embedding: bool = True, **kw) -> ControlBranch:
    """A fresh trainable branch for ``unet``. New branches default to the plain add-once rule."""
    module = InterDynBranch.from_unet(unet, copy_add_embedding=copy_add_embedding, **kw)
    return ControlBranch(kind="interdyn", family="svd", module=module,
                         config={"model": dict(module.config), "residual_rule": residual_rule}, source="init")


def _clean_config(cfg: dict) -> dict:
    keys = set(inspect.signature(InterDynBranch.__init__).parameters) - {"self"}
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items() if k in keys}


def save_branch(branch: ControlBranch, path, layout: str = "file") -> Path:
    """Save a branch. ``layout="diffusers"``: a folder with config.json + diffusion_pytorch_model.safetensors
    (the released layout); ``"file"``: one .safetensors with the config and residual rule in its metadata."""
    from safetensors.torch import save_file

    path = Path(path)
    module = branch.module
    sd = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    cfg = _clean_config(dict(module.config))
    rule = branch.config.get("residual_rule", "quirk")
    if layout == "diffusers":
        path.mkdir(parents=True, exist_ok=True)
        full = dict(cfg, _class_name=RELEASED_CLASS, interplay_residual_rule=rule)
        (path / CONFIG_NAME).write_text(json.dumps(full, indent=2))
        save_file(sd, str(path / WEIGHTS_NAME), metadata={"format": "pt"})
        return path
    if layout != "file":
        raise ValueError(f"save_branch: layout must be 'file' or 'diffusers'; got {layout!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"interplay_kind": "interdyn", "config": json.dumps(cfg), "residual_rule": rule, "format": "pt"}
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(sd, str(tmp), metadata=meta)
    tmp.replace(path)
    return path


def load_branch(path, *, dtype=None, device=None, residual_rule: str | None = None) -> ControlBranch:
    """Load an InterDyn branch by parameter name: a released-layout folder (config.json +
    diffusion_pytorch_model.safetensors), that safetensors file with its config.json beside it, or a single file
    written by :func:`save_branch`. Raises ValueError listing missing/unexpected keys.

    ``residual_rule``: None keeps the file's rule; folders without one (the release) get "quirk".
    """
    from ..weights import read_metadata, read_safetensors

    path = Path(path)
    if path.is_dir():
        cfg_path, w_path = path / CONFIG_NAME, path / WEIGHTS_NAME
        if not w_path.is_file():
            cands = sorted(path.glob("*.safetensors"))
            if len(cands) != 1:
                raise FileNotFoundError(f"InterDyn branch: no {WEIGHTS_NAME} in {path}")
            w_path = cands[0]
    elif path.is_file():
        w_path, cfg_path = path, path.parent / CONFIG_NAME
    else:
        raise FileNotFoundError(f"InterDyn branch: {path} does not exist")
    meta = read_metadata(w_path, "InterDyn branch")
    if "config" in meta:
        cfg = json.loads(meta["config"])
        file_rule = meta.get("residual_rule", "quirk")
    elif cfg_path.is_file():
        cfg = json.loads(cfg_path.read_text())
        file_rule = cfg.get("interplay_residual_rule", "quirk")
    else:
        raise ValueError(f"InterDyn branch: {w_path.name} has no config in its metadata and no {CONFIG_NAME} "
                         f"beside it ({cfg_path}); put the release's config.json next to the weights")
    module = InterDynBranch(**_clean_config(cfg))
    sd = read_safetensors(w_path, "InterDyn branch")[0]
    own = module.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    bad = [k for k in own if k in sd and own[k].shape != sd[k].shape]
    if missing or unexpected or bad:
        raise ValueError(f"InterDyn branch {w_path}: weights do not match the config: missing {missing[:8]} "
                         f"({len(missing)}), unexpected {unexpected[:8]} ({len(unexpected)}), wrong shape "
                         f"{bad[:8]}")
    module.load_state_dict(sd, strict=True)
    module.requires_grad_(False).eval()
    if device is not None or dtype is not None:
        cast(module, device=device, dtype=dtype)
    rule = residual_rule or file_rule
    return ControlBranch(kind="interdyn", family="svd", module=module,
                         config={"model": dict(module.config), "residual_rule": rule}, source=str(w_path))


# ------------------------------------------------------------------------------ the forward contract
class InterDynAttachment(Attachment):
    """InterDyn on the SVD UNet: at ``begin`` the branch runs on the sample, c_noise, image embedding, micro-
    conditions and the mask video; its residuals join the UNet's skips by the branch's residual rule and the mid
    residual is added after the mid block (``svd.SkipResiduals``).

    ``entries``: ``(video [B|1,F,3,H,W] in [-1,1], weight, start, end)`` per control through this branch (several add
    up). The branch runs in the backbone's dtype, under autocast when its weights are another (training in fp32).
    """

    def __init__(self, branch: ControlBranch, entries):
        self.branch = branch
        self.entries = [dict(video=v, weight=w, start=s, end=e) for v, w, s, e in entries]
        self.rule = branch.config.get("residual_rule", "quirk")

    @classmethod
    def from_bound(cls, branch: ControlBranch, bound, backbone=None) -> "InterDynAttachment":
        return cls(branch, [(bc.signal.video.permute(0, 3, 1, 2)[None], bc.weight, bc.start, bc.end)
                            for bc in bound])

    def modules(self):
        return [self.branch.module]

    def active(self, step) -> list:
        return [e for e in self.entries if e["weight"] != 0
                and (step is None or e["start"] <= step[0] / max(step[1], 1) < e["end"])]

    def _run(self, ctx, video, weight):
        x = ctx.latent_in
        control = video.to(x.device, x.dtype)
        if control.shape[0] != x.shape[0]:
            control = control.expand(x.shape[0], *control.shape[1:])
        mod = self.branch.module
        args = (x, ctx.timestep, ctx.text_in, ctx.extra["time_ids"], control)
        if next(mod.parameters()).dtype == x.dtype:
            return mod(*args, conditioning_scale=weight)
        with torch.autocast(x.device.type, dtype=x.dtype):  # e.g. an fp32 branch being trained on a bf16 UNet
            down, mid = mod(*args, conditioning_scale=weight)
        return [d.to(x.dtype) for d in down], mid.to(x.dtype)

    def begin(self, ctx):
        st = ctx.state_of(self)
        st["res"] = None
        active = self.active(ctx.extra.get("step"))
        down = mid = None
        for e in active:
            d, m = self._run(ctx, e["video"], e["weight"])
            down = d if down is None else [a + b for a, b in zip(down, d)]
            mid = m if mid is None else mid + m
        if active:
            st["res"] = svd.SkipResiduals(down, mid, self.rule)

    def after_block(self, ctx, i, hidden):
        res = ctx.state_of(self).get("res")
        return hidden if res is None else res.after_block(ctx, i, hidden)


def _new(backbone, residual_rule: str = "once", **kw) -> ControlBranch:
    return new_branch(backbone.denoiser, residual_rule=residual_rule, **kw)


def _task_class():
    from ..training.interdyn import InterDynTask

    return InterDynTask


registry.register(registry.BranchKind(
    kind="interdyn", family="svd", label="InterDyn branch", signals=("hand_mask",),
    attach=InterDynAttachment.from_bound, load=load_branch, save=save_branch, new=_new, task="interdyn_branch",
    task_class=_task_class, folder_classes=(RELEASED_CLASS,), hint="render it with the Driving Mask node",
    train_defaults={"optimizer": "adam"}))
