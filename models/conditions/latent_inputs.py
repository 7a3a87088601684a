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
           where: str = "sampler", num_frames: int | None = None) -> dict:
    """{layout name: latent} for the backbone; each name must be a part of ``bb.layout``.

    CogVideoX: [1, f, C, h, w], ``image_condition`` (a one-frame video, posterior mode, zeros after frame 0).
    Wan: [1, 4 + C, f, h, w], the I2V image condition of the picture (the ``num_frames``-frame video [picture,
    zeros] VAE-encoded, mode, with the 4-channel first-frame mask in front: MATRIX's public code, 20 channels on
    Wan2.1), no CLIP features."""
    from ..video_io import fit_frames, fit_nearest

    if inputs is None or not inputs.parts:
        return {}
    out = {}
    for name, image, resize in inputs.parts:
        core = ("noise", "image", "mask")  # the backbone's own parts (Wan I2V: its first-frame mask)
        if bb.layout is None or not bb.layout.has(name) or name in core:
            have = [n for n in (bb.layout.names if bb.layout else ()) if n not in core]
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
        elif bb.family == "wan":
            from ..backbones import wan

            if num_frames is None:
                raise ValueError(f"{where}: a Wan latent input needs the pixel frame count (num_frames)")
            plain = bb.replace(extra={**bb.extra, "clip": False})  # the picture's latent and mask; no CLIP pass
            if not bb.extra.get("i2v"):
                raise ValueError(f"{where}: a first-frame latent input needs a Wan I2V model (Wan2.1 I2V, Wan2.2 "
                                 f"I2V-A14B); {bb.variant} has no first-frame condition channels")
            lat = wan.i2v_condition(plain, pic.to(bb.device), int(num_frames), height, width).condition
        else:
            raise ValueError(f"{where}: first-frame latent inputs are not supported for the {bb.family} family yet")
        c = lat.shape[2] if bb.family == "cogvideox" else lat.shape[1]
        if c != bb.layout.size(name):
            raise ValueError(f"{where}: the {name!r} latent has {c} channels; the backbone's layout wants "
                             f"{bb.layout.size(name)}")
        out[name] = lat
    return out
