"""Encoding the extra first-frame pictures of ``conditions.latent_inputs.LatentInputs`` for a widened backbone, per
family (the samplers' side: only they know the generation size and frame count)."""
from __future__ import annotations

from ..conditions.latent_inputs import LatentInputs


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
