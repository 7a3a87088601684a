"""Widening a denoiser's input projection for extra input channels (MATRIX's ID-map latent, spec seed-004 §3.1).

``widen_input(bb, "id_map", channels)`` returns a new :class:`Backbone` whose denoiser is a shared-weight copy of
``bb.denoiser`` (every tensor but the projection is the original's) with the patch-embedding projection replaced
by a wider one: the original weights copied into the original channels' slice, the new channels' kernels zero,
the bias copied. Its ``layout`` is ``bb.layout.widened(name, channels)``, so samplers and trainers assemble the
extra part by name and fill it with zeros when it is not given; with zeros there (or zero kernels) the output is
the plain backbone's. The input bundle is never changed.

Where the projection lives, per family (diffusers module names):
- CogVideoX: ``patch_embed.proj``, a Conv2d over C channels (1.0 releases) or a Linear over p_t*p*p*C values with
  the channel innermost (1.5).
- Wan: ``patch_embedding``, a Conv3d over C channels.
"""
from __future__ import annotations

import torch

from .base import Backbone

PROJECTIONS = {"cogvideox": "patch_embed.proj", "wan": "patch_embedding", "svd": "conv_in"}
WAN_MASK_CHANNELS = 4  # Wan I2V's first-frame indicator, prepended to a VAE latent of an extra picture


def projection_name(bb: Backbone) -> str:
    if bb.family not in PROJECTIONS:
        raise ValueError(f"widen_input: no input projection known for the {bb.family} family")
    return PROJECTIONS[bb.family]


def input_projection(bb: Backbone) -> torch.nn.Module:
    """The denoiser's input projection module (see the module doc)."""
    return bb.denoiser.get_submodule(projection_name(bb))


def default_extra_channels(bb: Backbone) -> int:
    """Channels of one extra first-frame picture: its VAE latent (CogVideoX: 16 at release; Wan: 16 + the
    4-channel first-frame indicator = 20, the public code's 36 -> 56)."""
    latent = int(bb.extra.get("latent_channels", 16))
    return latent + WAN_MASK_CHANNELS if bb.family == "wan" else latent


def _wider(proj: torch.nn.Module, old: int, extra: int) -> torch.nn.Module:
    """A new module like ``proj`` taking ``old + extra`` input channels (new kernels zero, bias copied)."""
    w = proj.weight.detach()
    if isinstance(proj, torch.nn.modules.conv._ConvNd):
        if proj.groups != 1:
            raise ValueError("widen_input: grouped input convolutions cannot be widened")
        new = type(proj)(old + extra, proj.out_channels, proj.kernel_size, stride=proj.stride, padding=proj.padding,
                         dilation=proj.dilation, bias=proj.bias is not None, padding_mode=proj.padding_mode,
                         device=w.device, dtype=w.dtype)
        with torch.no_grad():
            new.weight.zero_()
            new.weight[:, :old] = w
    elif isinstance(proj, torch.nn.Linear):  # CogVideoX 1.5: in = (p_t * p * p) groups of C, channel innermost
        if proj.in_features % old:
            raise ValueError(f"widen_input: a Linear projection of {proj.in_features} inputs is not a multiple of "
                             f"{old} channels")
        groups = proj.in_features // old
        new = torch.nn.Linear(groups * (old + extra), proj.out_features, bias=proj.bias is not None,
                              device=w.device, dtype=w.dtype)
        with torch.no_grad():
            full = torch.zeros(proj.out_features, groups, old + extra, device=w.device, dtype=w.dtype)
            full[:, :, :old] = w.view(proj.out_features, groups, old)
            new.weight.copy_(full.flatten(1))
    else:
        raise ValueError(f"widen_input: cannot widen a {type(proj).__name__} input projection")
    if proj.bias is not None:
        with torch.no_grad():
            new.bias.copy_(proj.bias.detach())
    new.requires_grad_(False)
    return new


def widen_input(bb: Backbone, name: str = "id_map", channels: int | None = None) -> Backbone:
    """A new bundle whose denoiser takes ``channels`` more input channels, declared as layout part ``name`` (see
    the module doc). ``channels`` defaults to :func:`default_extra_channels`. The new projection is frozen (a
    trainer unfreezes it); its weight and bias are new tensors, everything else is shared with ``bb``."""
    from ..training.lora import shared_copy

    if bb.layout is None:
        raise ValueError(f"widen_input: the {bb.family} backbone declares no input layout; load it with the pack's "
                         "loader")
    if bb.layout.has(name):
        raise ValueError(f"widen_input: the backbone already has a {name!r} input ({bb.layout.parts}); widen a "
                         "plain backbone")
    extra = default_extra_channels(bb) if channels is None else int(channels)
    if extra < 1:
        raise ValueError(f"widen_input: channels must be >= 1; got {channels}")
    old = bb.layout.channels
    path = projection_name(bb)
    den = shared_copy(bb.denoiser)
    proj = den.get_submodule(path)
    cin = proj.in_channels if hasattr(proj, "in_channels") else old
    if cin != old:
        raise ValueError(f"widen_input: {path} takes {cin} channels but the layout {bb.layout.parts} declares {old}")
    parent_path, _, leaf = path.rpartition(".")
    parent = den.get_submodule(parent_path) if parent_path else den
    setattr(parent, leaf, _wider(proj, old, extra))
    cfg_key = {"cogvideox": "in_channels", "wan": "in_channels", "svd": "in_channels"}[bb.family]
    if hasattr(den, "register_to_config"):
        den.register_to_config(**{cfg_key: old + extra})
    return bb.replace(denoiser=den, layout=bb.layout.widened(name, extra))
