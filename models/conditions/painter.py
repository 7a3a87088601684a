"""The arrow painter: a drawing (arrows + clicks, one per object) -> object masks -> KineMask velocity control.

The drawing travels as one versioned JSON string (the widget writes it, API users send it by hand)::

    {"v": 1,
     "width": 720, "height": 480,          # optional: the pixel size the coordinates refer to
     "length_scale": 0.2,                  # optional: arrow length (fraction of the image diagonal) = 1 m/s
     "objects": [
        {"arrow": {"x0": 100, "y0": 200, "x1": 180, "y1": 200},   # tail on the object -> head
         "speed": 1.2,                     # optional m/s; default from the arrow's length
         "vz": 0.0,                        # optional m/s toward the camera
         "points": [[x, y, 1], [x, y, 0]]} # optional extra SAM2 clicks: 1 positive, 0 negative
     ]}

Coordinates are in the input image's pixels (origin top-left, y down). The widget converts its canvas
coordinates to image pixels before writing; when ``width``/``height`` are given and differ from the image
the coordinates are scaled to the image. The velocity of each arrow is ``conditions.velocity.arrow_velocity``
(screen y flipped so +y is up the image), the encoding ``conditions.velocity.velocity_video`` on frame 0
with every later frame zero (``first_frame_only``): nothing here re-implements the encoding.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from ..control.base import ControlSignal
from .velocity import LENGTH_SCALE, V_REF, Arrow, arrow_velocity, first_frame_only, velocity_video

SCHEMA = ('{"v": 1, "objects": [{"arrow": {"x0": X, "y0": Y, "x1": X, "y1": Y}, "speed": M_PER_S (optional), '
          '"points": [[X, Y, 1|0], ...] (optional)}], "width": W, "height": H (optional)}')

# Object colours for previews and the widget (RGB 0..255); the widget uses the same list.
PALETTE = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60))


@dataclass(frozen=True)
class DrawnObject:
    """One object: its arrow (image pixels of the target image) and extra clicks [(x, y, label)]."""

    arrow: Arrow
    points: tuple[tuple[float, float, int], ...] = ()


@dataclass(frozen=True)
class Drawing:
    """A parsed drawing, coordinates already in pixels of an image of ``width`` x ``height``."""

    width: int
    height: int
    objects: tuple[DrawnObject, ...]
    length_scale: float = LENGTH_SCALE
    meta: dict = field(default_factory=dict, compare=False)

    def velocities(self) -> list[tuple[float, float, float]]:
        """(vx, vy, vz) m/s per object, screen-aligned (+x right, +y up, +z toward the camera)."""
        return [arrow_velocity(o.arrow, self.width, self.height, self.length_scale) for o in self.objects]

    def prompts(self, i: int) -> tuple[list[list[float]], list[int]]:
        """SAM2 point prompts for object i: the arrow tail as a positive click, then the extra clicks."""
        o = self.objects[i]
        pts = [[o.arrow.x0, o.arrow.y0]] + [[x, y] for x, y, _ in o.points]
        labels = [1] + [int(lab) for _, _, lab in o.points]
        return pts, labels

    def to_json(self) -> str:
        objs = []
        for o in self.objects:
            a = o.arrow
            d = {"arrow": {"x0": a.x0, "y0": a.y0, "x1": a.x1, "y1": a.y1}}
            if a.speed is not None:
                d["speed"] = a.speed
            if a.vz:
                d["vz"] = a.vz
            if o.points:
                d["points"] = [[x, y, lab] for x, y, lab in o.points]
            objs.append(d)
        return json.dumps({"v": 1, "width": self.width, "height": self.height,
                           "length_scale": self.length_scale, "objects": objs})


def _bad(msg: str, input_name: str) -> ValueError:
    return ValueError(f"`{input_name}`: {msg}. Expected a JSON string {SCHEMA}; coordinates in input-image "
                      "pixels. Draw arrows with the widget, or send this JSON through the API.")


def _num(v, what: str, input_name: str, positive: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise _bad(f"{what} must be a finite number; got {v!r}", input_name)
    if positive and v <= 0:
        raise _bad(f"{what} must be > 0; got {v!r}", input_name)
    return float(v)


def parse_drawing(text: str | dict, image_size: tuple[int, int] | None = None, *,
                  input_name: str = "drawing") -> Drawing:
    """Parse and validate a drawing JSON.

    Args:
        text: the JSON string (or an already-decoded dict).
        image_size: (height, width) of the image the drawing applies to. Coordinates are scaled from the
            drawing's own ``width``/``height`` when both are given and differ; they must then lie inside
            the image (a 1-pixel slack for edge clicks).
        input_name: the node input named in errors.
    Raises:
        ValueError naming ``input_name``, what was wrong and the expected schema.
    """
    if isinstance(text, dict):
        data = text
    else:
        if not isinstance(text, str) or not text.strip():
            raise _bad("is empty: draw at least one arrow (tail on the object, head where it moves)", input_name)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise _bad(f"is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})", input_name) from None
    if not isinstance(data, dict):
        raise _bad(f"must be a JSON object; got {type(data).__name__}", input_name)
    if data.get("v") != 1:
        raise _bad(f"unsupported version v={data.get('v')!r}; allowed: 1", input_name)
    objects = data.get("objects")
    if not isinstance(objects, list):
        raise _bad("needs an \"objects\" list", input_name)
    if not objects:
        raise _bad("has no objects: draw at least one arrow (tail on the object, head where it moves)", input_name)

    H, W = image_size if image_size is not None else (None, None)
    dw, dh = data.get("width"), data.get("height")
    if dw is not None or dh is not None:
        dw = _num(dw, "width", input_name, positive=True)
        dh = _num(dh, "height", input_name, positive=True)
    if H is None:
        if dw is None:
            raise _bad("needs \"width\" and \"height\" when no image size is known", input_name)
        H, W = int(round(dh)), int(round(dw))
    sx, sy = (W / dw, H / dh) if dw is not None else (1.0, 1.0)
    length_scale = _num(data.get("length_scale", LENGTH_SCALE), "length_scale", input_name, positive=True)

    def inside(x: float, y: float, what: str) -> None:
        if not (-1 <= x <= W + 1 and -1 <= y <= H + 1):
            raise _bad(f"{what} ({x:.1f}, {y:.1f}) lies outside the {W}x{H} image", input_name)

    parsed = []
    for i, o in enumerate(objects):
        where = f"objects[{i}]"
        if not isinstance(o, dict) or not isinstance(o.get("arrow"), dict):
            raise _bad(f"{where} needs an \"arrow\" object with x0, y0, x1, y1", input_name)
        a = o["arrow"]
        missing = [k for k in ("x0", "y0", "x1", "y1") if k not in a]
        if missing:
            raise _bad(f"{where}.arrow misses {', '.join(missing)}", input_name)
        x0, y0, x1, y1 = (_num(a[k], f"{where}.arrow.{k}", input_name) for k in ("x0", "y0", "x1", "y1"))
        x0, x1, y0, y1 = x0 * sx, x1 * sx, y0 * sy, y1 * sy
        inside(x0, y0, f"{where}.arrow tail")
        speed = o.get("speed")
        if speed is not None:
            speed = _num(speed, f"{where}.speed (m/s)", input_name)
            if speed < 0:
                raise _bad(f"{where}.speed must be >= 0 m/s (the arrow gives the direction); got {speed}", input_name)
        if speed != 0 and x0 == x1 and y0 == y1:
            raise _bad(f"{where}.arrow has zero length, so it has no direction; drag the head away from the tail "
                       "(or set \"speed\": 0 for an object that stays still)", input_name)
        vz = _num(o.get("vz", 0.0), f"{where}.vz", input_name)
        pts = o.get("points", [])
        if not isinstance(pts, list):
            raise _bad(f"{where}.points must be a list of [x, y, label]", input_name)
        clicks = []
        for j, p in enumerate(pts):
            if not (isinstance(p, (list, tuple)) and len(p) == 3 and p[2] in (0, 1) and not isinstance(p[2], bool)):
                raise _bad(f"{where}.points[{j}] must be [x, y, label] with label 1 (positive) or 0 (negative); "
                           f"got {p!r}", input_name)
            px = _num(p[0], f"{where}.points[{j}].x", input_name) * sx
            py = _num(p[1], f"{where}.points[{j}].y", input_name) * sy
            inside(px, py, f"{where}.points[{j}]")
            clicks.append((px, py, int(p[2])))
        parsed.append(DrawnObject(Arrow(x0, y0, x1, y1, speed=speed, vz=vz), tuple(clicks)))
    return Drawing(width=int(W), height=int(H), objects=tuple(parsed), length_scale=length_scale)


# ------------------------------------------------------------------------------------------------ masks
def masks_for_drawing(drawing: Drawing, image: torch.Tensor, sam=None, masks: torch.Tensor | None = None, *,
                      mask_input: str = "masks", sam_input: str = "sam2") -> torch.Tensor:
    """One mask per drawn object: bool [N, H, W].

    Args:
        image: [H, W, 3] float 0..1 (only used by SAM2).
        sam: a loaded ``segmentation.sam2.Sam2``; each object is segmented from its arrow tail (positive)
            and its extra clicks.
        masks: [N, H, W] (or [H, W] for one object), one per object in drawing order; wins over ``sam``.
    Raises:
        ValueError naming the input when masks are missing, mis-sized, or an object's mask is empty.
    """
    n, H, W = len(drawing.objects), drawing.height, drawing.width
    if masks is not None:
        m = torch.as_tensor(masks).float().cpu()
        if m.ndim == 2:
            m = m[None]
        if m.ndim != 3 or m.shape[0] != n or tuple(m.shape[1:]) != (H, W):
            raise ValueError(f"`{mask_input}`: expected one mask per drawn object in drawing order, shape "
                             f"[{n}, {H}, {W}] (the image's size); got {tuple(m.shape)}. Batch the masks in the "
                             "order the arrows were drawn, or disconnect them to segment with SAM2.")
        out = m >= 0.5
        how = f"the `{mask_input}` input"
    elif sam is not None:
        from ..segmentation.sam2 import segment_objects

        prompts = []
        for i in range(n):
            pts, labels = drawing.prompts(i)
            prompts.append(dict(points=pts, labels=labels))
        out = torch.as_tensor(segment_objects(sam, torch.as_tensor(image).float(), prompts)).bool()
        how = f"SAM2 (`{sam_input}`) from the arrow tail and clicks"
    else:
        raise ValueError(f"no object masks: connect a SAM2 model to `{sam_input}` (InterplaySam2Loader) to segment "
                         f"each object from its arrow tail, or connect `{mask_input}` (one MASK per arrow, in order).")
    for i in range(n):
        if not bool(out[i].any()):
            a = drawing.objects[i].arrow
            raise ValueError(f"object {i} (arrow tail at {a.x0:.0f}, {a.y0:.0f}): the mask from {how} is empty. "
                             "Put the arrow tail on the object, add positive clicks on it (shift-click in the "
                             "widget), or supply a non-empty mask.")
    return out


# ---------------------------------------------------------------------------------------------- control
def check_num_frames(num_frames: int, input_name: str = "num_frames", ok=None,
                     rule: str = "8k+1 (1, 9, 17, ..., 49) for CogVideoX") -> int:
    """A whole, positive frame count that the consumer's rule ``ok(n) -> bool`` accepts (the node passes the
    backbone's, e.g. ``cogvideox.frame_count_ok``), so a count the painter accepts is one the sampler takes."""
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1 \
            or (ok is not None and not ok(num_frames)):
        raise ValueError(f"`{input_name}` must be {rule}; got {num_frames!r}")
    return num_frames


def velocity_control(masks: torch.Tensor, velocities, num_frames: int, v_ref: float = V_REF, *,
                     weight: float = 1.0, start: float = 0.0, end: float = 1.0, meta: dict | None = None
                     ) -> ControlSignal:
    """The inference control from masks [N,H,W] and velocities [N, 2|3] m/s: frame 0 encoded, the rest zero.

    Returns ControlSignal(video [F,H,W,3] in [-1,1], kind="velocity"). Equal to
    ``first_frame_only(velocity_video(masks repeated over F, velocities, v_ref))``, built from one frame.
    """
    m = torch.as_tensor(masks).float()
    if m.ndim == 2:
        m = m[None]
    v = torch.as_tensor(velocities, dtype=torch.float32).reshape(m.shape[0], -1)
    frame0 = velocity_video(m[:, None], v, v_ref=v_ref)  # [1,H,W,3]
    video = torch.cat([frame0, torch.zeros(num_frames - 1, *frame0.shape[1:])]) if num_frames > 1 else frame0
    info = dict(meta or {})
    info.update(v_ref=float(v_ref), velocities=v.tolist(), num_objects=int(m.shape[0]))
    return ControlSignal(video=video, kind="velocity", weight=float(weight), start=float(start), end=float(end),
                         meta=info)


def drawing_to_control(drawing: Drawing, masks: torch.Tensor, num_frames: int, v_ref: float = V_REF, *,
                       weight: float = 1.0, start: float = 0.0, end: float = 1.0) -> ControlSignal:
    """masks [N,H,W] (from ``masks_for_drawing``) -> the velocity ControlSignal of the drawing's arrows."""
    meta = {"arrows": [[o.arrow.x0, o.arrow.y0, o.arrow.x1, o.arrow.y1] for o in drawing.objects],
            "length_scale": drawing.length_scale, "source": "painter"}
    return velocity_control(masks, drawing.velocities(), num_frames, v_ref, weight=weight, start=start, end=end,
                            meta=meta)


# ---------------------------------------------------------------------------------------------- preview
def render_preview(image: torch.Tensor, masks: torch.Tensor, arrows: list[tuple[float, float, float, float]],
                   velocities: list, clicks: list | None = None, alpha: float = 0.45) -> torch.Tensor:
    """The input with tinted masks, mask outlines, arrows and "1.20 m/s" labels: IMAGE [1,H,W,3] 0..1.

    ``arrows`` are (x0, y0, x1, y1) image pixels; ``clicks`` per object [(x, y, label)] are drawn as dots
    (green positive, red negative).
    """
    import cv2

    img = (torch.as_tensor(image).float().clamp(0, 1).cpu().numpy() * 255).astype(np.float32)
    H, W = img.shape[:2]
    m = torch.as_tensor(masks).bool().cpu().numpy()
    for i in range(m.shape[0]):
        c = np.array(PALETTE[i % len(PALETTE)], np.float32)
        img[m[i]] = img[m[i]] * (1 - alpha) + c * alpha
    out = np.ascontiguousarray(img.round().clip(0, 255).astype(np.uint8))
    thick = max(1, round(min(H, W) / 160))
    for i in range(m.shape[0]):
        c = tuple(int(v) for v in PALETTE[i % len(PALETTE)])
        contours, _ = cv2.findContours(m[i].astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, (255, 255, 255), thick + 1)  # white rim: visible on any colour
        cv2.drawContours(out, contours, -1, c, thick)
    for i, (x0, y0, x1, y1) in enumerate(arrows):
        c = tuple(int(v) for v in PALETTE[i % len(PALETTE)])
        p0, p1 = (int(round(x0)), int(round(y0))), (int(round(x1)), int(round(y1)))
        if p0 != p1:
            cv2.arrowedLine(out, p0, p1, (0, 0, 0), thick + 3, cv2.LINE_AA, tipLength=0.25)
            cv2.arrowedLine(out, p0, p1, c, thick, cv2.LINE_AA, tipLength=0.25)
        cv2.circle(out, p0, thick + 3, (255, 255, 255), -1, cv2.LINE_AA)
        cv2.circle(out, p0, thick + 2, c, -1, cv2.LINE_AA)
        vx, vy, vz = (list(velocities[i]) + [0.0, 0.0, 0.0])[:3]
        label = f"{math.sqrt(vx * vx + vy * vy + vz * vz):.2f} m/s"
        scale = max(0.35, min(H, W) / 600)
        org = (min(max(p1[0] + 4, 0), W - 1), min(max(p1[1] - 4, 10), H - 1))
        cv2.putText(out, label, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick + 2, cv2.LINE_AA)
        cv2.putText(out, label, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick, cv2.LINE_AA)
    for obj in clicks or []:
        for x, y, lab in obj:
            col = (40, 220, 40) if lab else (230, 30, 30)
            cv2.circle(out, (int(round(x)), int(round(y))), thick + 2, col, -1, cv2.LINE_AA)
            cv2.circle(out, (int(round(x)), int(round(y))), thick + 2, (255, 255, 255), 1, cv2.LINE_AA)
    return torch.from_numpy(out).float()[None] / 255.0


def drawing_preview(image: torch.Tensor, drawing: Drawing, masks: torch.Tensor) -> torch.Tensor:
    """``render_preview`` for a drawing: IMAGE [1,H,W,3]."""
    arrows = [(o.arrow.x0, o.arrow.y0, o.arrow.x1, o.arrow.y1) for o in drawing.objects]
    return render_preview(image, masks, arrows, drawing.velocities(), [list(o.points) for o in drawing.objects])


def mask_arrow(mask: torch.Tensor, velocity, length_scale: float = LENGTH_SCALE) -> tuple[float, float, float, float]:
    """An arrow for previews of numeric velocities: tail at the mask centroid, length by ``length_scale``
    (the inverse of ``arrow_velocity``)."""
    m = torch.as_tensor(mask) >= 0.5
    H, W = m.shape
    ys, xs = torch.nonzero(m, as_tuple=True)
    cx, cy = (float(xs.float().mean()), float(ys.float().mean())) if xs.numel() else (W / 2, H / 2)
    k = length_scale * math.hypot(W, H)
    vx, vy = float(velocity[0]), float(velocity[1])
    return (cx, cy, cx + vx * k, cy - vy * k)
