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
from ..backbones.base import Attachment, cast, init_generator, plain_state_dict, seeded_init
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
                  copy_add_embedding: bool = True, load_weights_from_unet: bool = True,
                  generator: torch.Generator | None = None) -> "InterDynBranch":
        """A fresh branch copying the UNet's encoder. ``copy_add_embedding=False`` reproduces the release (its
        fps/motion/aug MLP started random). What is not copied is drawn from ``generator`` (default:
        backbones.base.init_generator(0)), never the global RNG; the zero convolutions stay zero."""
        c = unet.config
        with torch.random.fork_rng(devices=[]):  # the default init is redrawn below: keep the global RNG unmoved
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
        names = ["conv_in", "time_embedding", "down_blocks", "mid_block"] if load_weights_from_unet else []
        if load_weights_from_unet and copy_add_embedding:
            names.append("add_embedding")
        copied = {n for n, _ in branch.named_parameters() if n.split(".")[0] in names}
        seeded_init(branch, generator if generator is not None else init_generator(0), skip=copied)
        for zero in (branch.controlnet_cond_embedding.conv_out, branch.controlnet_down_blocks,
                     branch.controlnet_mid_block):
            _zero(zero)
        if load_weights_from_unet:
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


# A file's config is bounded before anything is built from it (weights.check_config); the meta build then
# compares every key and shape with the header.
CONFIG_BOUNDS = dict(sample_size=(1, 4096), in_channels=(1, 64), out_channels=(1, 64), block_out_channels=(1, 8192),
                     addition_time_embed_dim=(1, 8192), projection_class_embeddings_input_dim=(1, 1 << 16),
                     layers_per_block=(1, 16), cross_attention_dim=(1, 1 << 16), transformer_layers_per_block=(1, 16),
                     num_attention_heads=(1, 256), num_frames=(1, 1024), conditioning_channels=(1, 64),
                     conditioning_embedding_out_channels=(1, 8192))
BLOCK_TYPES = ("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal")
_WHAT = "InterDyn branch"


def _checked_config(cfg: dict, w_path: Path) -> dict:
    from ..weights import WeightsFileError, check_config

    cfg = _clean_config(cfg)
    kinds = cfg.get("down_block_types", BLOCK_TYPES[:1])
    if not isinstance(kinds, (list, tuple)) or not 1 <= len(kinds) <= 8 or any(k not in BLOCK_TYPES for k in kinds):
        raise WeightsFileError(f"{_WHAT}: {w_path}: config down_block_types={kinds!r}; expected 1 to 8 of "
                               f"{', '.join(BLOCK_TYPES)}")
    cfg.pop("up_block_types", None)  # not part of the branch
    return check_config(cfg, CONFIG_BOUNDS, w_path, _WHAT)


def load_branch(path, *, dtype=None, device=None, residual_rule: str | None = None) -> ControlBranch:
    """Load an InterDyn branch by parameter name: a released-layout folder (config.json +
    diffusion_pytorch_model.safetensors), that safetensors file with its config.json beside it, or a single file
    written by :func:`save_branch`. Raises ValueError listing missing/unexpected keys.

    The config (metadata or config.json) is bounded, the model built on the meta device and every key and shape
    compared with the file's header before the weights are read: a small file cannot make it allocate a large
    model. ``residual_rule``: None keeps the file's rule; folders without one (the release) get "quirk".
    """
    from ..weights import build_checked, metadata_json, read_header, read_json_config, read_safetensors

    path = Path(path)
    if path.is_dir():
        cfg_path, w_path = path / CONFIG_NAME, path / WEIGHTS_NAME
        if not w_path.is_file():
            cands = sorted(path.glob("*.safetensors"))
            if len(cands) != 1:
                raise FileNotFoundError(f"{_WHAT}: no {WEIGHTS_NAME} in {path}")
            w_path = cands[0]
    elif path.is_file():
        w_path, cfg_path = path, path.parent / CONFIG_NAME
    else:
        raise FileNotFoundError(f"{_WHAT}: {path} does not exist")
    header, meta = read_header(w_path, _WHAT)
    if "config" in meta:
        cfg = metadata_json(meta, "config", w_path, _WHAT)
        file_rule = meta.get("residual_rule", "quirk")
    elif cfg_path.is_file():
        cfg = read_json_config(cfg_path, _WHAT)
        file_rule = cfg.get("interplay_residual_rule", "quirk")
    else:
        raise ValueError(f"{_WHAT}: {w_path.name} has no config in its metadata and no {CONFIG_NAME} "
                         f"beside it ({cfg_path}); put the release's config.json next to the weights")
    args = _checked_config(cfg, w_path)
    module = build_checked(lambda: InterDynBranch(**args), header, w_path, _WHAT,
                           fix="Pick the InterDyn branch made for this SVD backbone, or save it again.")
    sd = read_safetensors(w_path, _WHAT)[0]
    module.load_state_dict(sd, strict=True, assign=True)
    module.requires_grad_(False).eval()
    cast(module, device=device, dtype=dtype if dtype is not None else torch.float32)
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
