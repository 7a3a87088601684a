"""Extra first-frame pictures for named input-layout parts (ComfyUI type ``INTERPLAY_LATENT_INPUTS``).

A widened denoiser (``backbones.widen``) takes more input channels under a layout name, e.g. MATRIX's "id_map". What
goes there is a picture of the first frame (the palette ID map) encoded like the I2V image: fitted to the generation
size as the image is (cover, center-crop; NEAREST for palette pictures so no new colours appear), VAE-encoded as a
one-frame video with the posterior mode, and zero-padded in time. The sampler encodes them, because only it knows the
generation size and frame count (``sampling.latent_inputs.encode``); nodes just collect the pictures.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

RESIZE = ("nearest", "bilinear")


@dataclass(frozen=True)
class LatentInputs:
    """parts: ((layout name, picture [1, H, W, 3] float 0..1, resize), ...), in the order they were added."""
    parts: tuple = ()

    def then(self, name: str, image: torch.Tensor, resize: str = "nearest") -> "LatentInputs":
        if resize not in RESIZE:
            raise ValueError(f"latent inputs: resize must be one of {', '.join(RESIZE)}; got {resize!r}")
        if image.ndim != 4 or image.shape[-1] != 3:
            raise ValueError(f"latent inputs: {name!r} must be an IMAGE [1,H,W,3]; got {tuple(image.shape)}")
        if name in self.names:
            raise ValueError(f"latent inputs: {name!r} is given twice")
        return LatentInputs(self.parts + ((name, image[:1].float().cpu(), resize),))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p[0] for p in self.parts)
