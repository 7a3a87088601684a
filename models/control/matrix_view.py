"""Attention maps on the video: a latent-resolution map ``[T, h, w]`` brought to the frames ``[F, H, W]`` and drawn as
a heat colour map over them (spec seed-004 §7: word attention, first-frame-region propagation, Figs 3 and 13).

Time follows the causal VAE: pixel frame 0 is latent frame 0, pixel frame f >= 1 is latent frame ceil(f / t) (latent
i covers pixel frames t(i-1)+1 .. ti, t = 4). Space: bilinear (smooth) or nearest (token blocks) to H x W.
Normalisation: ``video`` (one min..max over the clip: shows when attention is strong) or ``frame`` (per frame).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# a heat colour map: black -> deep red -> orange -> yellow -> white, piecewise linear in 0..1
HEAT = torch.tensor([[0.00, 0.00, 0.00], [0.50, 0.00, 0.10], [0.90, 0.20, 0.00], [1.00, 0.65, 0.00],
                     [1.00, 0.95, 0.30], [1.00, 1.00, 1.00]])
NORMALISE = ("video", "frame")
RESIZE = ("bilinear", "nearest")


def heat(x: torch.Tensor) -> torch.Tensor:
    """Values in 0..1 [...] -> RGB [..., 3] on the HEAT ramp."""
    x = x.float().clamp(0, 1) * (len(HEAT) - 1)
    i = x.floor().long().clamp(max=len(HEAT) - 2)
    w = (x - i)[..., None]
    return HEAT[i] * (1 - w) + HEAT[i + 1] * w


def to_frames(m: torch.Tensor, num_frames: int, height: int, width: int, temporal: int = 4,
              resize: str = "bilinear") -> torch.Tensor:
    """A map [T, h, w] -> [F, H, W] (see the module doc)."""
    if resize not in RESIZE:
        raise ValueError(f"attention view: resize must be one of {', '.join(RESIZE)}; got {resize!r}")
    t = m.shape[0]
    idx = torch.tensor([0] + [min((f + temporal - 1) // temporal, t - 1) for f in range(1, num_frames)])
    x = m.float()[idx][:, None]
    kw = {"align_corners": False} if resize == "bilinear" else {}
    return F.interpolate(x, size=(height, width), mode=resize, **kw)[:, 0]


def normalise(x: torch.Tensor, how: str = "video") -> torch.Tensor:
    if how not in NORMALISE:
        raise ValueError(f"attention view: normalise must be one of {', '.join(NORMALISE)}; got {how!r}")
    dims = tuple(range(x.ndim)) if how == "video" else (-2, -1)
    lo, hi = x.amin(dims, keepdim=True), x.amax(dims, keepdim=True)
    return (x - lo) / (hi - lo).clamp(min=1e-12)


def overlay(frames: torch.Tensor, m: torch.Tensor, *, alpha: float = 0.6, how: str = "video",
            temporal: int = 4, resize: str = "bilinear") -> torch.Tensor:
    """frames [F, H, W, 3] 0..1 and a map [T, h, w] -> [F, H, W, 3]: (1 - a) frame + a heat(map)."""
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"attention view: frames must be [F,H,W,3]; got {tuple(frames.shape)}")
    f, h, w = frames.shape[:3]
    need = 1 + temporal * (m.shape[0] - 1)
    if f != need:
        raise ValueError(f"attention view: the map has {m.shape[0]} latent frames, i.e. {need} video frames; the "
                         f"frames have {f}. Fix: connect the video the capture was made with.")
    x = normalise(to_frames(m, f, h, w, temporal, resize), how)
    return ((1 - alpha) * frames.float() + alpha * heat(x)).clamp(0, 1)
