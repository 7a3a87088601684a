"""A readable view of a SceneClip: masks tinted over the frames and velocity arrows from each object's centre."""
from __future__ import annotations

import numpy as np

from .presets import COLOURS
from .types import SceneClip

PUSHER_TINT = (1.0, 0.0, 1.0)


def preview_frames(clip: SceneClip, alpha: float = 0.45, arrow_frames: float = 3.0, arrows: bool = True,
                   upscale: int = 1) -> np.ndarray:
    """uint8 [F, H*upscale, W*upscale, 3]: each object's mask tinted with the complement of its colour (so it
    stands out on the object), the pusher in magenta, and an arrow per moving object showing where its centre
    goes in ``arrow_frames`` frames at its current image velocity (vel_image)."""
    import cv2

    F, H, W = clip.frames.shape[:3]
    s = max(1, int(upscale))
    out = clip.frames.astype(np.float32) / 255.0
    for i, o in enumerate(clip.objects):
        tint = 1.0 - np.asarray(COLOURS.get(o.get("colour"), (1.0, 1.0, 1.0)), np.float32)
        m = clip.masks[i][..., None]
        out = np.where(m, (1 - alpha) * out + alpha * tint, out)
    out = np.where(clip.pusher_mask[..., None], (1 - alpha) * out + alpha * np.float32(PUSHER_TINT), out)
    u8 = (np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8)
    if s > 1:
        u8 = u8.repeat(s, 1).repeat(s, 2)
    if not arrows:
        return u8
    u8 = np.ascontiguousarray(u8)
    thick = max(1, round(min(H, W) * s / 160))
    for f in range(F):
        for i in range(len(clip.objects)):
            ys, xs = np.nonzero(clip.masks[i, f])
            v = clip.vel_image[i, f]
            if len(xs) == 0 or float(np.hypot(*v)) * arrow_frames < 0.5:
                continue
            x0, y0 = (xs.mean() + 0.5) * s, (ys.mean() + 0.5) * s
            x1, y1 = x0 + v[0] * arrow_frames * s, y0 - v[1] * arrow_frames * s  # +y up -> image rows down
            cv2.arrowedLine(u8[f], (int(round(x0)), int(round(y0))), (int(round(x1)), int(round(y1))),
                            (255, 255, 255), thick, cv2.LINE_AA, tipLength=0.3)
    return u8
