"""Driving-mask videos for InterDyn: from SAM2 tracks, MASK batches or painted masks, plus counterfactual edits.

The released model takes a binary mask of the driver (hand) for every frame, frame 0 included, as a 3-channel
video in [-1, 1] (driver +1, background -1), 14 frames at fps id 6, 256x384 (H x W).

Spatial fitting follows the release: upsample so both sides cover the target (keeping aspect, ``round`` per
side), then crop (centre, or centred on the mask's bounding box over all frames). Masks use nearest, RGB
bicubic. Temporal resampling picks source frames: by time when both frame rates are known (stride
``src_fps / fps``, the release's 12 -> 6 fps takes every 2nd frame), else evenly over the clip.

Shapes: F frames, H, W pixels; masks [F,H,W] (bool or float 0..1), videos [F,H,W,C].
"""
from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F

DEFAULT_FRAMES = 14
DEFAULT_FPS = 6
DEFAULT_SIZE = (256, 384)
EDIT_OPS = ("none", "remove", "shift", "time_shift", "time_warp", "keep_frames", "freeze_after", "reverse")


# --------------------------------------------------------------------------------------------- resample
def frame_indices(num_src: int, num_frames: int, src_fps: float | None = None, fps: float | None = None,
                  start: int = 0) -> list[int]:
    """Source frame index for each output frame. With both rates: start + round(i * src_fps / fps) (the
    last source frame repeats if the clip is too short); without: evenly spread over the whole clip."""
    if num_src < 1:
        raise ValueError("the driving video has no frames")
    if src_fps and fps:
        step = float(src_fps) / float(fps)
        return [min(int(start + round(i * step)), num_src - 1) for i in range(num_frames)]
    if num_frames == 1:
        return [0]
    return [int(round(i * (num_src - 1) / (num_frames - 1))) for i in range(num_frames)]


def resample_time(video: torch.Tensor, num_frames: int, src_fps=None, fps=None, start: int = 0) -> torch.Tensor:
    return video[frame_indices(video.shape[0], num_frames, src_fps, fps, start)]


def cover_size(h: int, w: int, height: int, width: int) -> tuple[int, int]:
    """Smallest aspect-keeping size covering (height, width): the release's max-scale, rounded per side."""
    s = max(height / h, width / w)
    return max(height, int(round(h * s))), max(width, int(round(w * s)))


def crop_box(h: int, w: int, height: int, width: int, mode: str = "center", masks: torch.Tensor | None = None):
    """Top-left corner (y0, x0) of the crop. ``mask_aware`` centres on the masks' bounding box over all
    frames, clamped to the borders, falling back to centre when the masks are empty."""
    y0, x0 = (h - height) // 2, (w - width) // 2
    if mode == "mask_aware" and masks is not None and bool(masks.any()):
        ys = torch.nonzero(masks.any(dim=0).any(dim=1)).flatten()
        xs = torch.nonzero(masks.any(dim=0).any(dim=0)).flatten()
        cy, cx = (int(ys[0]) + int(ys[-1])) / 2, (int(xs[0]) + int(xs[-1])) / 2
        y0 = int(min(max(round(cy - height / 2), 0), h - height))
        x0 = int(min(max(round(cx - width / 2), 0), w - width))
    elif mode not in ("center", "mask_aware"):
        raise ValueError(f"crop must be 'center' or 'mask_aware'; got {mode!r}")
    return y0, x0


def fit_spatial(video: torch.Tensor, height: int, width: int, *, is_mask: bool, crop: str = "center",
                crop_masks: torch.Tensor | None = None) -> torch.Tensor:
    """Upsample-to-cover then crop: video [F,H,W] (mask) or [F,H,W,C] -> same rank at (height, width).

    ``crop_masks`` [F,H,W] (at the input size) steer the ``mask_aware`` crop; for a mask video it is itself.
    """
    squeeze = video.ndim == 3
    x = video[..., None] if squeeze else video
    fr, h, w, c = x.shape
    if (h, w) != (height, width):
        ch, cw = cover_size(h, w, height, width)
        t = x.permute(0, 3, 1, 2).float()
        if (ch, cw) != (h, w):
            t = (F.interpolate(t, size=(ch, cw), mode="nearest-exact") if is_mask else
                 F.interpolate(t, size=(ch, cw), mode="bicubic", align_corners=False).clamp(0, 1))
        m = crop_masks if crop_masks is not None else (video if is_mask and squeeze else None)
        if m is not None and m.shape[-2:] != (ch, cw):
            m = F.interpolate(m[:, None].float(), size=(ch, cw), mode="nearest-exact")[:, 0] > 0.5
        y0, x0 = crop_box(ch, cw, height, width, crop, None if m is None else m > 0.5)
        x = t[:, :, y0:y0 + height, x0:x0 + width].permute(0, 2, 3, 1)
    out = x.to(video.dtype) if not video.dtype.is_floating_point else x.float()
    return out[..., 0] if squeeze else out


# ------------------------------------------------------------------------------------------- rendering
def mask_to_condition(masks: torch.Tensor, colors=None) -> torch.Tensor:
    """Binary masks [F,H,W] -> condition [F,H,W,3] in [-1,1]: driver +1 (white), background -1.

    Several drivers [N,F,H,W] with ``colors`` (N RGB triples in 0..1) give the CLEVRER-style coloured
    control (each driver painted in its colour on black), also mapped to [-1,1]."""
    m = (masks.float() > 0.5).float()
    if m.ndim == 3:
        return (m * 2 - 1)[..., None].expand(*m.shape, 3).contiguous()
    if colors is None or len(colors) != m.shape[0]:
        raise ValueError(f"{m.shape[0]} driver masks need {m.shape[0]} colours; got {colors!r}")
    rgb = torch.zeros(*m.shape[1:], 3)
    for i in range(m.shape[0]):
        rgb = torch.where(m[i][..., None] > 0, torch.tensor(colors[i], dtype=torch.float32), rgb)
    return rgb * 2 - 1


def condition_to_mask(cond: torch.Tensor) -> torch.Tensor:
    """Inverse for previews and metrics: [F,H,W,3] in [-1,1] -> bool [F,H,W] (any channel above 0)."""
    return (cond > 0).any(dim=-1)


def overlay(frames: torch.Tensor, masks: torch.Tensor, color=(1.0, 0.2, 0.2), alpha: float = 0.5) -> torch.Tensor:
    """Preview: frames [F,H,W,3] 0..1 with masks [F,H,W] tinted in ``color`` -> [F,H,W,3] 0..1."""
    if frames.shape[:3] != masks.shape[:3]:
        raise ValueError(f"overlay: frames {tuple(frames.shape[:3])} and masks {tuple(masks.shape)} differ")
    m = (masks.float() > 0.5)[..., None].float() * alpha
    return (frames.float() * (1 - m) + torch.tensor(color, dtype=torch.float32) * m).clamp(0, 1)


# -------------------------------------------------------------------------------------------- editing
def parse_frames(spec: str, num_frames: int) -> list[int]:
    """"0-5, 9, 11-" -> sorted frame list; ranges inclusive, open ends allowed."""
    out: set[int] = set()
    for part in (p.strip() for p in str(spec).split(",")):
        if not part:
            continue
        m = re.fullmatch(r"(\d*)\s*-\s*(\d*)", part)
        if m:
            a = int(m[1]) if m[1] else 0
            b = int(m[2]) if m[2] else num_frames - 1
            out.update(range(a, min(b, num_frames - 1) + 1))
        elif part.isdigit():
            out.add(int(part))
        else:
            raise ValueError(f"frames: cannot read {part!r}; use numbers and ranges like '0-5, 9, 11-'")
    bad = [f for f in out if f >= num_frames]
    if bad:
        raise ValueError(f"frames: {bad} outside 0..{num_frames - 1}")
    return sorted(out)


def _translate(m: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    out = torch.zeros_like(m)
    H, W = m.shape[-2:]
    ys, yd = (slice(0, H - dy), slice(dy, H)) if dy >= 0 else (slice(-dy, H), slice(0, H + dy))
    xs, xd = (slice(0, W - dx), slice(dx, W)) if dx >= 0 else (slice(-dx, W), slice(0, W + dx))
    if abs(dy) < H and abs(dx) < W:
        out[..., yd, xd] = m[..., ys, xs]
    return out


def edit_masks(masks: torch.Tensor, op: str = "none", *, dx: float = 0, dy: float = 0, frames: int | str = 0,
               speed: float = 1.0, from_frame: int = 1) -> torch.Tensor:
    """Counterfactual edits of a driving-mask video [F,H,W] (bool) -> [F,H,W] bool, frame count kept.

    - remove: no driver from ``from_frame`` on (frame 0 stays: it must match the input image);
    - shift: move the driver by (dx, dy) pixels, ramping linearly from 0 at frame 0 to the full offset at the
      last frame (frame 0 stays aligned with the image);
    - time_shift: delay the motion by ``frames`` frames (holding frame 0), negative to advance it;
    - time_warp: play the motion ``speed`` times as fast (out frame t = in frame round(t * speed), clamped);
    - keep_frames: keep only the frames in ``frames`` ("0-5, 9"), others empty;
    - freeze_after: hold frame ``frames`` to the end (the driver stops);
    - reverse: play the motion backwards after frame 0 (frame 0 kept).
    """
    m = masks.bool()
    Fn = m.shape[0]
    if op == "none":
        return m.clone()
    if op == "remove":
        out = m.clone()
        out[max(int(from_frame), 0):] = False
        return out
    if op == "shift":
        out = torch.empty_like(m)
        for t in range(Fn):
            a = t / max(Fn - 1, 1)
            out[t] = _translate(m[t], int(round(dy * a)), int(round(dx * a)))
        return out
    if op == "time_shift":
        k = int(frames)
        return m[[min(max(t - k, 0), Fn - 1) for t in range(Fn)]]
    if op == "time_warp":
        if speed <= 0:
            raise ValueError(f"time_warp: speed must be > 0; got {speed}")
        return m[[min(int(round(t * speed)), Fn - 1) for t in range(Fn)]]
    if op == "keep_frames":
        keep = parse_frames(str(frames), Fn)
        out = torch.zeros_like(m)
        out[keep] = m[keep]
        return out
    if op == "freeze_after":
        k = min(max(int(frames), 0), Fn - 1)
        return m[[min(t, k) for t in range(Fn)]]
    if op == "reverse":
        return m[[0] + list(range(Fn - 1, 0, -1))]
    raise ValueError(f"edit op must be one of {', '.join(EDIT_OPS)}; got {op!r}")


# ----------------------------------------------------------------------------------------- whole paths
def masks_from_video(sam, frames: torch.Tensor, prompts: dict) -> torch.Tensor:
    """SAM2 track of the driver: frames [F,H,W,3] 0..1, prompts {frame: dict(points, labels, box)} (clicks or a
    box on frame 0, corrections on later frames) -> bool [F,H,W]."""
    from ..segmentation.sam2 import propagate_video

    if not prompts:
        raise ValueError("driving mask: give clicks or a box on frame 0 to track the driver")
    return propagate_video(sam, frames, {int(k): v for k, v in prompts.items()})


def render_driving_mask(masks: torch.Tensor, *, num_frames: int = DEFAULT_FRAMES, height: int = DEFAULT_SIZE[0],
                        width: int = DEFAULT_SIZE[1], src_fps: float | None = None, fps: float | None = DEFAULT_FPS,
                        start: int = 0, crop: str = "center", frames: torch.Tensor | None = None,
                        edit: str = "none", edit_args: dict | None = None):
    """Masks [F0,H0,W0] (any count/size) -> dict(condition [F,H,W,3] in [-1,1], masks bool [F,H,W],
    frames [F,H,W,3] 0..1 or None (the driving video put through the same resampling and crop: its frame 0 is
    the matching input image), preview [F,H,W,3] 0..1, indices (source frames used))."""
    if masks.ndim != 3:
        raise ValueError(f"driving mask: masks must be [F,H,W]; got shape {tuple(masks.shape)}")
    if frames is not None and frames.shape[:3] != masks.shape:
        raise ValueError(f"driving mask: video {tuple(frames.shape[:3])} and masks {tuple(masks.shape)} differ; "
                         "track the masks on this same video")
    idx = frame_indices(masks.shape[0], num_frames, src_fps, fps if src_fps else None, start)
    m = masks[idx].float() > 0.5
    crop_m = m
    m = fit_spatial(m.float(), height, width, is_mask=True, crop=crop, crop_masks=crop_m) > 0.5
    vid = None
    if frames is not None:
        vid = fit_spatial(frames[idx].float(), height, width, is_mask=False, crop=crop, crop_masks=crop_m)
    m = edit_masks(m, edit, **(edit_args or {}))
    cond = mask_to_condition(m)
    base = vid if vid is not None else torch.full((*m.shape, 3), 0.15)
    return dict(condition=cond, masks=m, frames=vid, preview=overlay(base, m), indices=idx)


def fit_condition(video: torch.Tensor, num_frames: int, height: int, width: int, *, input_name: str = "control",
                  node: str = "InterDyn") -> tuple[torch.Tensor, list[str]]:
    """Bring a condition video [F,H,W,C] to [num_frames,height,width,3], saying what was changed.

    1 channel repeats to 3; other channel counts, or an aspect ratio far from the target (a crop would cut
    the driver off), raise ValueError naming ``input_name``. Frames are resampled evenly; size by cover+crop.
    """
    notes = []
    if video.ndim == 3:
        video = video[..., None]
    if video.ndim != 4:
        raise ValueError(f"{node}: input '{input_name}' must be a video [F,H,W,C]; got {tuple(video.shape)}")
    fr, h, w, c = video.shape
    if c == 1:
        video = video.expand(fr, h, w, 3)
        notes.append("repeated 1 channel to 3")
    elif c != 3:
        raise ValueError(f"{node}: input '{input_name}' has {c} channels; expected 3 (or 1, repeated)")
    if fr != num_frames:
        video = resample_time(video, num_frames)
        notes.append(f"resampled {fr} -> {num_frames} frames evenly")
    if (h, w) != (height, width):
        if abs(math.log((w / h) / (width / height))) > math.log(1.5):
            raise ValueError(f"{node}: input '{input_name}' is {h}x{w} but the target is {height}x{width}; the "
                             "aspect ratios differ too much to crop safely. Render the mask at the image size.")
        video = (fit_spatial((video.float() + 1) / 2, height, width, is_mask=True) * 2 - 1)
        notes.append(f"resized {h}x{w} -> {height}x{width} (cover + centre crop)")
    return video.float(), notes
