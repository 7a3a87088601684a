"""Painter nodes: arrows drawn on the image (or plain numbers) -> KineMask velocity control.

The drawing is one JSON string input (``drawing``), written by the canvas widget in
web/arrow_painter.js or sent by hand through the API; see models/conditions/painter.py for its schema.
"""
from __future__ import annotations

import base64
import io
import json

import torch

from ..models.backbones.cogvideox import frame_count_ok
from ..models.conditions import painter as P
from ..models.conditions.velocity import LENGTH_SCALE, V_REF

EXAMPLE = json.dumps({"v": 1, "objects": []})
_PREVIEW_SIDE = 768  # the background image sent back to the widget is at most this many pixels wide/high


def _first_image(image: torch.Tensor, node: str) -> torch.Tensor:
    if image.ndim != 4 or image.shape[-1] < 3:
        raise ValueError(f"{node}: `image` must be an IMAGE [B,H,W,3]; got shape {tuple(image.shape)}")
    return image[0, ..., :3].float().cpu()


def _png_b64(image: torch.Tensor) -> str:
    """[H,W,3] 0..1 -> base64 PNG, downscaled so the widget has a background before it has a LoadImage link."""
    from PIL import Image

    arr = (image.clamp(0, 1).numpy() * 255).round().astype("uint8")
    im = Image.fromarray(arr)
    im.thumbnail((_PREVIEW_SIDE, _PREVIEW_SIDE))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _frames_input(name: str = "num_frames"):
    return ("INT", {"default": 49, "min": 1, "max": 1025, "step": 8,
                    "tooltip": "Length of the control video, equal to the sampler's num_frames. CogVideoX takes "
                               "8k+1 frames (1, 9, 17, ..., 49; 49 for the released model); only frame 0 carries "
                               "the velocity, later frames are zero."})


_COMMON_OPTIONAL = {
    "weight": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 5.0, "step": 0.05,
                         "tooltip": "Scale of the control branch's residuals."}),
    "start": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01,
                        "tooltip": "Fraction of the sampling steps at which the control starts."}),
    "end": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                      "tooltip": "Fraction of the sampling steps at which the control stops."}),
}


def _check_range(node: str, start: float, end: float) -> None:
    if not 0.0 <= start < end <= 1.0:
        raise ValueError(f"{node}: `start` and `end` must satisfy 0 <= start < end <= 1; got {start}, {end}")


class InterplayArrowPainter:
    CATEGORY = "Interplay/conditions"
    FUNCTION = "paint"
    RETURN_TYPES = ("INTERPLAY_CONTROL", "MASK", "IMAGE")
    RETURN_NAMES = ("control", "masks", "preview")
    # An output node: ComfyUI re-sends a cached run's UI only for output nodes, and the canvas needs its image
    # (reload the page, queue the unchanged graph: otherwise the painter stays blank). It also lets "queue
    # selected output nodes" fetch just the image to draw on.
    OUTPUT_NODE = True
    OUTPUT_TOOLTIPS = ("KineMask velocity control: frame 0 encodes each object's velocity on its mask, later "
                       "frames are zero.", "One mask per arrow, in drawing order [N,H,W].",
                       "The image with masks, arrows and speeds drawn.")
    DESCRIPTION = ("Draw arrows on the image: tail on an object, direction and length give its velocity (speed in "
                   "m/s shown next to the arrow; drag the handle or type a speed). Shift-click adds a positive and "
                   "Ctrl-click a negative point for the selected object. Each object is segmented by SAM2 from its "
                   "arrow tail and clicks, or taken from the `masks` input. The drawing is the JSON string in "
                   "`drawing`, so API users can send the same JSON without a browser.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "The first frame of the video; arrows are drawn on it (the first "
                                               "image of a batch is used)."}),
                "drawing": ("STRING", {"default": EXAMPLE, "multiline": True,
                                       "tooltip": 'Arrows and clicks as JSON {"v":1,"objects":[{"arrow":{"x0","y0",'
                                                  '"x1","y1"},"speed":m/s (optional),"points":[[x,y,1|0]]}]} in '
                                                  "image pixels; written by the canvas widget."}),
                "num_frames": _frames_input(),
                "v_ref": ("FLOAT", {"default": V_REF, "min": 0.05, "max": 20.0, "step": 0.05,
                                    "tooltip": "Speed (m/s) encoded as 1.0; faster speeds clip. KineMask trained "
                                               "with 1.5."}),
            },
            "optional": {
                "sam2": ("INTERPLAY_SAM2", {"tooltip": "SAM2 model that segments each object from its arrow tail "
                                                       "and clicks (Load SAM2)."}),
                "masks": ("MASK", {"tooltip": "One mask per arrow, in drawing order; used instead of SAM2."}),
                **_COMMON_OPTIONAL,
            },
        }

    def paint(self, image, drawing, num_frames, v_ref, sam2=None, masks=None, weight=1.0, start=0.0, end=1.0):
        node = "Arrow Painter"
        _check_range(node, start, end)
        img = _first_image(image, node)
        H, W = img.shape[:2]
        try:
            P.check_num_frames(num_frames, ok=frame_count_ok)
            d = P.parse_drawing(drawing, (H, W))
            m = P.masks_for_drawing(d, img, sam=sam2, masks=masks)
        except ValueError as e:
            raise ValueError(f"{node}: {e}") from None
        ctrl = P.drawing_to_control(d, m, num_frames, v_ref, weight=weight, start=start, end=end)
        preview = P.drawing_preview(img, d, m)
        ui = {"interplay_bg": [_png_b64(img)], "interplay_size": [W, H]}
        return {"ui": ui, "result": (ctrl, m.float(), preview)}


class InterplayVelocityControl:
    CATEGORY = "Interplay/conditions"
    FUNCTION = "build"
    RETURN_TYPES = ("INTERPLAY_CONTROL", "IMAGE")
    RETURN_NAMES = ("control", "preview")
    OUTPUT_TOOLTIPS = ("KineMask velocity control (frame 0 only).", "The image (or the mask) with the arrow drawn.")
    DESCRIPTION = ("Velocity control from numbers: one velocity (vx, vy, vz in m/s; +x right, +y up the image, +z "
                   "toward the camera) applied to every mask in the batch. The same encoding as Arrow Painter, "
                   "for API use and for driving the sandbox with its ground-truth velocity.")

    @classmethod
    def INPUT_TYPES(cls):
        speed = {"min": -20.0, "max": 20.0, "step": 0.05}
        return {
            "required": {
                "mask": ("MASK", {"tooltip": "Object mask(s) [N,H,W]; every object gets the same velocity."}),
                "vx": ("FLOAT", {"default": 1.0, **speed, "tooltip": "Velocity to the image right, m/s."}),
                "vy": ("FLOAT", {"default": 0.0, **speed, "tooltip": "Velocity up the image, m/s."}),
                "vz": ("FLOAT", {"default": 0.0, **speed, "tooltip": "Velocity toward the camera, m/s."}),
                "num_frames": _frames_input(),
                "v_ref": ("FLOAT", {"default": V_REF, "min": 0.05, "max": 20.0, "step": 0.05,
                                    "tooltip": "Speed (m/s) encoded as 1.0; faster speeds clip."}),
            },
            "optional": {
                "image": ("IMAGE", {"tooltip": "Optional background for the preview."}),
                **_COMMON_OPTIONAL,
            },
        }

    def build(self, mask, vx, vy, vz, num_frames, v_ref, image=None, weight=1.0, start=0.0, end=1.0):
        node = "Velocity Control"
        try:
            P.check_num_frames(num_frames, ok=frame_count_ok)
        except ValueError as e:
            raise ValueError(f"{node}: {e}") from None
        _check_range(node, start, end)
        m = torch.as_tensor(mask).float().cpu()
        if m.ndim == 2:
            m = m[None]
        if m.ndim != 3:
            raise ValueError(f"{node}: `mask` must be a MASK [N,H,W]; got shape {tuple(m.shape)}")
        for i in range(m.shape[0]):
            if not bool((m[i] >= 0.5).any()):
                raise ValueError(f"{node}: `mask` {i} is empty (no pixel >= 0.5); give a mask that covers the "
                                 "object to move.")
        v = [(float(vx), float(vy), float(vz))] * m.shape[0]
        ctrl = P.velocity_control(m, v, num_frames, v_ref, weight=weight, start=start, end=end,
                                  meta={"source": "numbers"})
        H, W = m.shape[1:]
        if image is not None:
            bg = _first_image(image, node)
            if tuple(bg.shape[:2]) != (H, W):
                raise ValueError(f"{node}: `image` is {bg.shape[1]}x{bg.shape[0]} but `mask` is {W}x{H}; they must "
                                 "match")
        else:
            bg = torch.full((H, W, 3), 0.25)
        arrows = [P.mask_arrow(m[i], v[i], LENGTH_SCALE) for i in range(m.shape[0])]
        return (ctrl, P.render_preview(bg, m >= 0.5, arrows, v))


NODE_CLASS_MAPPINGS = {
    "InterplayArrowPainter": InterplayArrowPainter,
    "InterplayVelocityControl": InterplayVelocityControl,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "InterplayArrowPainter": "Arrow Painter (Interplay)",
    "InterplayVelocityControl": "Velocity Control (Interplay)",
}
