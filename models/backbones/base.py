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


def seeded_init(module: torch.nn.Module, generator: torch.Generator, skip=()) -> torch.nn.Module:
    """Re-initialise every Linear, Conv and Embedding of ``module`` from ``generator`` with PyTorch's default
    distributions (weight kaiming-uniform with a = sqrt(5), bias uniform(+-1/sqrt(fan_in)); embeddings N(0, 1)),
    so a new module depends on the run's seed and not on the global RNG's history. Layers whose parameters are all
    in ``skip`` (names the caller overwrites next, e.g. blocks copied from a backbone) are left alone. Norm layers
    start deterministic (ones/zeros) and are untouched. Zero-initialised layers must be zeroed again after."""
    import math

    skip = set(skip)
    with torch.no_grad():
        for name, m in module.named_modules():
            own = [f"{name}.{n}" if name else n for n, _ in m.named_parameters(recurse=False)]
            if not own or all(n in skip for n in own):
                continue
            if isinstance(m, (torch.nn.Linear, torch.nn.modules.conv._ConvNd)):
                torch.nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=generator)
                if m.bias is not None:
                    fan_in = m.weight[0].numel()
                    bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
                    torch.nn.init.uniform_(m.bias, -bound, bound, generator=generator)
            elif isinstance(m, torch.nn.Embedding):
                torch.nn.init.normal_(m.weight, generator=generator)
    return module


def init_generator(seed: int = 0) -> torch.Generator:
    """The CPU generator new trainable weights (control branches, LoRAs) are drawn from for run seed ``seed``."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + 424_242) % (2 ** 63))
