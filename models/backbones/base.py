"""The loaded-backbone bundle every family returns and every sampler and trainer takes."""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import runtime

FAMILIES = ("svd", "cogvideox", "wan")


@dataclass
class Backbone:
    """A frozen video diffusion backbone with its encoders (ComfyUI type ``INTERPLAY_BACKBONE``).

    Fields:
        family: "svd" | "cogvideox" | "wan"; selects the scheduler family, loss and sampler.
        variant: what was detected at load, e.g. "cogvideox-5b-i2v", "svd-xt", "wan2.2-i2v-a14b", "tiny".
        denoiser: the diffusers model (UNetSpatioTemporalConditionModel, CogVideoXTransformer3DModel,
            WanTransformer3DModel). For two-expert Wan, the high-noise expert.
        vae: the family's diffusers autoencoder.
        text_encoder, tokenizer: prompt encoder (T5 / umT5), None for SVD.
        image_encoder, image_processor: CLIP vision encoder (SVD, Wan 2.1 I2V), else None.
        experts: extra denoisers by name (Wan2.2 "low_noise") and the switch boundary in ``extra``.
        scheduler_config: the family scheduler's config (from the folder, else the reference defaults).
        dtype: compute dtype; ``storage_dtype`` may be float8 with upcast at compute.
        device: compute device; ``offload_device`` where idle parts wait when ``offload`` is "model".
        vae_tiling: tile VAE encode/decode to bound memory.
        loras: LoRA adapters applied (names and strengths), for provenance.
        source: what was loaded from where, for error messages and the UI.
        extra: family-specific facts (e.g. ``vae_scale_factor_spatial``).

    Bundles are never mutated by nodes: ``replace()`` returns a shallow copy sharing the weights.
    """

    family: str
    variant: str
    denoiser: torch.nn.Module
    vae: torch.nn.Module | None = None
    text_encoder: torch.nn.Module | None = None
    tokenizer: Any = None
    image_encoder: torch.nn.Module | None = None
    image_processor: Any = None
    experts: dict[str, torch.nn.Module] = field(default_factory=dict)
    scheduler_config: dict = field(default_factory=dict)
    dtype: torch.dtype = torch.float32
    storage_dtype: torch.dtype | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    offload_device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    offload: str = "none"
    vae_tiling: bool = False
    loras: tuple = ()
    source: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"unknown backbone family {self.family!r}; expected one of {FAMILIES}")

    def replace(self, **changes) -> "Backbone":
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        n = sum(p.numel() for p in self.denoiser.parameters())
        return f"{self.family}/{self.variant} denoiser {n / 1e6:.1f}M params, {self.dtype}, {self.device}"


def cast(module: torch.nn.Module, *args, **kwargs) -> torch.nn.Module:
    """``module.to(*args, **kwargs)`` as plain ``nn.Module.to``: diffusers' ``ModelMixin.to`` logs "should be kept
    in float32: []" on every dtype cast, even for models with no such modules. Returns the module."""
    return torch.nn.Module.to(module, *args, **kwargs)


def plain_state_dict(module: torch.nn.Module) -> dict:
    """``module.state_dict()`` without LoRA adapters, peft's ``<layer>.base_layer.<name>`` keys named
    ``<layer>.<name>`` again: the frozen weights as the plain model names them. A control branch initialised from
    a backbone thus gets the same weights whether or not a LoRA is applied to it (peft's names would silently
    match nothing)."""
    return {k.replace(".base_layer.", "."): v for k, v in module.state_dict().items() if ".lora_" not in k}


@contextlib.contextmanager
def on_device(bb: Backbone, *modules):
    """Move offloaded parts (``offload="model"``) to the compute device for the duration of the block, then
    back to the offload device; a no-op otherwise. Shared by every family's encode/denoise/decode stages."""
    if bb.offload != "model":
        yield
        return
    for m in modules:
        if m is not None:
            m.to(bb.device)
    try:
        yield
    finally:
        for m in modules:
            if m is not None:
                m.to(bb.offload_device)
        runtime.empty_cache()
