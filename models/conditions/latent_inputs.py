"""Extra first-frame pictures for named input-layout parts (ComfyUI type ``INTERPLAY_LATENT_INPUTS``).

A widened denoiser (``backbones.widen``) takes more input channels under a layout name, e.g. MATRIX's "id_map". What
goes there is a picture of the first frame (the palette ID map) encoded like the I2V image: fitted to the generation
size as the image is (cover, center-crop; NEAREST for palette pictures so no new colours appear), VAE-encoded as a
one-frame video with the posterior mode, and zero-padded in time. The sampler encodes them, because only it knows the
generation size and frame count; nodes just collect the pictures.
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


def encode(bb, inputs: LatentInputs | None, height: int, width: int, num_latent_frames: int,
           where: str = "sampler") -> dict:
    """{layout name: latent [1, f, C, h, w]} for the backbone (CogVideoX: ``image_condition`` with the posterior
    mode); each name must be a part of ``bb.layout``."""
    from ..video_io import fit_frames, fit_nearest

    if inputs is None or not inputs.parts:
        return {}
    out = {}
    for name, image, resize in inputs.parts:
        if bb.layout is None or not bb.layout.has(name) or name in ("noise", "image"):
            have = [n for n in (bb.layout.names if bb.layout else ()) if n not in ("noise", "image")]
            raise ValueError(f"{where}: 'inputs' has a {name!r} picture but the backbone ({bb.variant}) takes "
                             f"{'extra inputs ' + ', '.join(repr(h) for h in have) if have else 'no extra inputs'}. "
                             "Fix: load the weights that widen it (e.g. the MATRIX Loader for an ID map).")
        if resize == "nearest":
            pic = fit_nearest(image.permute(0, 3, 1, 2), height, width).permute(0, 2, 3, 1)
        else:
            pic = fit_frames(image, height, width)
        if bb.family == "cogvideox":
            from ..backbones import cogvideox as cvx

            lat = cvx.image_condition(bb, pic.to(bb.device), num_latent_frames)
        else:
            raise ValueError(f"{where}: first-frame latent inputs are not supported for the {bb.family} family yet")
        if lat.shape[2] != bb.layout.size(name):
            raise ValueError(f"{where}: the {name!r} latent has {lat.shape[2]} channels; the backbone's layout wants "
                             f"{bb.layout.size(name)}")
        out[name] = lat
    return out
