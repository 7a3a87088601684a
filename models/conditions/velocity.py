"""The one velocity encoding (KineMask's velocity-mask video), shared by the arrow painter, the sandbox
dataset writer and the trainer. Nothing else in the pack turns a velocity into control pixels.

Encoding (KineMask spec §1.2, the recommended consistent choice):
    video[f, y, x, :] = clip(v_f / v_ref, -1, 1)   on the object's mask at frame f
    video[f, y, x, :] = 0                          elsewhere ("no information", same as a dropped frame)

Axes are screen-aligned: channel 0 = +x to the image right, channel 1 = +y UP the image (for a ground
plane seen obliquely: away from the camera), channel 2 = +z out of the plane toward the camera (default 0).
Velocities are in m/s; ``v_ref`` (default 1.5 m/s, the fastest training speed) maps to 1.

Frames: at inference only frame 0 carries the velocity (``first_frame_only``); training stage 1 uses
all frames, stage 2 keeps a random prefix biased toward early frames (``sample_prefix_length`` +
``keep_prefix``). When masks overlap, the object listed later wins (drawing order).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

V_REF = 1.5  # m/s that encodes to 1.0
LENGTH_SCALE = 0.2  # an arrow of this fraction of the image diagonal means 1 m/s (painter default)


def velocity_video(masks: torch.Tensor, velocities: torch.Tensor, v_ref: float = V_REF) -> torch.Tensor:
    """Encode object masks and velocities as an [F, H, W, 3] float32 video in [-1, 1].

    Args:
        masks: [N, F, H, W] (or [N, H, W] for one frame, or [H, W] for one object) in {0, 1}; values
            >= 0.5 count as the object.
        velocities: [N, F, 2|3] or [N, 2|3] (constant over frames) in m/s, screen-aligned axes; a missing
            z component is 0.
        v_ref: speed that encodes to 1.0; larger speeds clip.
    """
    if v_ref <= 0:
        raise ValueError(f"v_ref must be positive (m/s); got {v_ref}")
    m = torch.as_tensor(masks)
    if m.ndim == 2:
        m = m[None, None]
    elif m.ndim == 3:
        m = m[:, None]
    if m.ndim != 4:
        raise ValueError(f"masks must be [N,F,H,W], [N,H,W] or [H,W]; got shape {tuple(m.shape)}")
    n, f, h, w = m.shape
    v = torch.as_tensor(velocities, dtype=torch.float32)
    if v.ndim == 1:
        v = v[None]
    if v.ndim == 2:
        v = v[:, None].expand(v.shape[0], f, v.shape[-1])
    if v.ndim != 3 or v.shape[0] != n or v.shape[1] != f or v.shape[2] not in (2, 3):
        raise ValueError(f"velocities must be [N,F,2|3] or [N,2|3] with N={n}, F={f}; got {tuple(v.shape)}")
    if v.shape[2] == 2:
        v = torch.cat([v, torch.zeros(n, f, 1)], dim=2)
    enc = (v / v_ref).clamp(-1.0, 1.0)
    out = torch.zeros(f, h, w, 3, dtype=torch.float32)
    for i in range(n):  # later objects overwrite earlier ones: drawing order
        on = (m[i] >= 0.5)[..., None]
        out = torch.where(on, enc[i][:, None, None, :].expand(f, h, w, 3), out)
    return out


def keep_prefix(video: torch.Tensor, k: int) -> torch.Tensor:
    """Keep frames 0..k-1 and zero the rest (stage-2 truncation; k=1 is the inference condition)."""
    if not 1 <= k <= video.shape[0]:
        raise ValueError(f"prefix length k must be in 1..{video.shape[0]}; got {k}")
    out = torch.zeros_like(video)
    out[:k] = video[:k]
    return out


def first_frame_only(video: torch.Tensor) -> torch.Tensor:
    """The inference control: the velocity on frame 0, every later frame zero."""
    return keep_prefix(video, 1)


def sample_prefix_length(num_frames: int, rng: np.random.Generator, mode: str = "early_biased",
                         gamma: float = 3.0, p_first: float = 0.2) -> int:
    """Draw the stage-2 prefix length k in 1..num_frames.

    modes: "early_biased" (k = 1 + floor((F-1) * u**gamma), mass near 1, and k=1 forced with probability
    p_first so the inference condition is trained), "uniform", "all" (always F: stage 1), "first" (always 1).
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1; got {num_frames}")
    if mode == "all":
        return num_frames
    if mode == "first":
        return 1
    if mode == "uniform":
        return int(rng.integers(1, num_frames + 1))
    if mode == "early_biased":
        if rng.random() < p_first:
            return 1
        return 1 + int(math.floor((num_frames - 1) * rng.random() ** gamma + 1e-9)) if num_frames > 1 else 1
    raise ValueError(f"prefix mode must be one of early_biased, uniform, all, first; got {mode!r}")


@dataclass(frozen=True)
class Arrow:
    """A drawn arrow in image pixels (origin top-left, y down), tail on the object."""

    x0: float
    y0: float
    x1: float
    y1: float
    speed: float | None = None  # m/s; None = from the arrow's length
    vz: float = 0.0

    def velocity(self, width: int, height: int, length_scale: float = LENGTH_SCALE) -> tuple[float, float, float]:
        """(vx, vy, vz) in m/s, screen-aligned (+y up): direction from the arrow, speed explicit or
        ``length / (length_scale * image diagonal)``."""
        return arrow_velocity(self, width, height, length_scale)


def arrow_velocity(a: Arrow, width: int, height: int, length_scale: float = LENGTH_SCALE) -> tuple[float, float, float]:
    dx, dy = a.x1 - a.x0, -(a.y1 - a.y0)  # screen y flips: +y is up the image
    length = math.hypot(dx, dy)
    if length == 0:
        return (0.0, 0.0, float(a.vz))
    speed = a.speed if a.speed is not None else length / (length_scale * math.hypot(width, height))
    return (speed * dx / length, speed * dy / length, float(a.vz))


def decode_mean_velocity(video: torch.Tensor, mask: torch.Tensor, frame: int = 0, v_ref: float = V_REF) -> torch.Tensor:
    """Mean encoded velocity (m/s) over a mask at one frame: the inverse used by tests and previews."""
    on = torch.as_tensor(mask) >= 0.5
    if not bool(on.any()):
        raise ValueError("mask is empty; nothing to decode")
    return video[frame][on].mean(dim=0) * v_ref


def velocity_preview(video: torch.Tensor) -> torch.Tensor:
    """A visible rendering of an encoded video as IMAGE [F,H,W,3] in [0,1]: black where no information,
    0.5 + 0.5 * code where encoded (so +x reads red, +y green, and a zero-speed object stays mid-grey)."""
    info = (video != 0).any(dim=-1, keepdim=True)
    return torch.where(info, 0.5 + 0.5 * video.clamp(-1, 1), torch.zeros_like(video))
