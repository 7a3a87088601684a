"""Camera from keys or poses, and its Plücker ray maps (GameCraft-2 §4.1; GameCraft-1's action -> camera path).

Conventions (one place, used by every caller):
- OpenCV camera axes: x right, y down, z forward. World = the camera of frame 0 of the rollout, so frame 0 is
  the identity and every pose stays expressed in frame-0 coordinates for the whole rollout (the paper's sink
  frame "provides the coordinate-system origin"); a continued session keeps accumulating, never re-zeroes.
- c2w [F,4,4] float64 maps camera to world: ``x_world = R x_cam + t``; w2c is its inverse ``[R^T, -R^T t]``.
- Camera state from keys: position p (world), yaw (degrees, + = turned right, about world y), pitch (degrees,
  + = looking up, about the camera x axis), no roll; ``R = R_y(yaw) R_x(pitch)``, so the view direction is
  ``(cos(pitch) sin(yaw), -sin(pitch), cos(pitch) cos(yaw))`` and the strafe direction ``(cos yaw, 0, -sin yaw)``
  (GameCraft-1's vectors, in OpenCV axes). Pitch is clamped to +-pitch_limit (85 degrees).
- One step per new frame (see keys.py): the rates of the keys held are summed (W+D is diagonal), the camera
  moves along the orientation it has at the start of the step, then turns. W/S = +-move_speed along the view,
  D/A = +-move_speed along the strafe (units per frame); RIGHT/LEFT = +-turn_speed yaw, UP/DOWN = +-turn_speed
  pitch (degrees per frame); mouse (dx, dy) px * mouse_sensitivity degrees, dx>0 turns right, dy>0 looks down.
- SPACE: "none" ignores it; "jump" lifts the camera by jump_height * sin(pi s / n) at step s of an n-step SPACE
  segment (back on the ground when it ends, so it never accumulates); "text" moves nothing and records a text
  event (frames, phrase) that the instruction schedule appends to the prompt of the blocks it covers.
- Intrinsics are normalised by the image size: K = [[fx W, 0, cx W], [0, fy H, cy H], [0, 0, 1]]; the default is
  GameCraft-1's fx=0.50505, fy=0.8979, cx=cy=0.5.
- Plücker map per frame [6,H,W]: pixel centres (x+0.5, y+0.5), ``d = normalize(R K^-1 [u, v, 1])``, ``o = t``,
  channels ``(o x d, d)`` (CameraCtrl / GameCraft-1 order).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from .keys import BlockGrid, Timeline

SPACE_MODES = ("none", "jump", "text")
GAMECRAFT_INTRINSICS = (0.50505, 0.8979, 0.5, 0.5)  # fx, fy, cx, cy normalised by W, H (GameCraft-1)


# ------------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class Motion:
    """How keys become camera motion (per frame). Defaults: one 12-frame block of W moves 0.24 units (GameCraft-1
    moves 0.2 per 33-frame action at its default speed), one block of RIGHT turns 12 degrees."""

    move_speed: float = 0.02          # units per frame for W/A/S/D
    turn_speed: float = 1.0           # degrees per frame for the arrow keys
    mouse_sensitivity: float = 0.1    # degrees per mouse pixel
    space_mode: str = "none"          # none | jump | text
    jump_height: float = 0.1          # units at the top of a jump
    space_text: str = "jumps"         # phrase of a text event (space_mode "text")
    pitch_limit: float = 85.0         # degrees

    def __post_init__(self):
        for name in ("move_speed", "turn_speed", "mouse_sensitivity", "jump_height", "pitch_limit"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number; got {v!r}")
        if not 0.0 <= self.pitch_limit <= 89.9:
            raise ValueError(f"pitch_limit must be in [0, 89.9] degrees; got {self.pitch_limit}")
        if self.space_mode not in SPACE_MODES:
            raise ValueError(f"space_mode must be one of {', '.join(SPACE_MODES)}; got {self.space_mode!r}")


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics normalised by the image width (fx, cx) and height (fy, cy)."""

    fx: float = GAMECRAFT_INTRINSICS[0]
    fy: float = GAMECRAFT_INTRINSICS[1]
    cx: float = GAMECRAFT_INTRINSICS[2]
    cy: float = GAMECRAFT_INTRINSICS[3]

    def __post_init__(self):
        for name in ("fx", "fy", "cx", "cy"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"intrinsics {name} must be a finite number; got {v!r}")
        if self.fx <= 0 or self.fy <= 0:
            raise ValueError(f"intrinsics fx and fy must be > 0 (normalised by width/height); got {self.fx}, {self.fy}")

    @classmethod
    def from_pixels(cls, fx: float, fy: float, cx: float, cy: float, width: int, height: int) -> "Intrinsics":
        return cls(fx / width, fy / height, cx / width, cy / height)

    def matrix(self, width: int, height: int) -> torch.Tensor:
        """K [3,3] float64 in pixels for a width x height image."""
        return torch.tensor([[self.fx * width, 0.0, self.cx * width], [0.0, self.fy * height, self.cy * height],
                             [0.0, 0.0, 1.0]], dtype=torch.float64)

    def to_dict(self) -> dict:
        return {"fx": self.fx, "fy": self.fy, "cx": self.cx, "cy": self.cy}


@dataclass(frozen=True)
class CameraState:
    """Where the camera is after frame ``frame`` (absolute index): carried from one session call to the next."""

    position: tuple[float, float, float] = (0.0, 0.0, 0.0)
    yaw: float = 0.0
    pitch: float = 0.0
    frame: int = 0

    def to_dict(self) -> dict:
        return {"position": list(self.position), "yaw": self.yaw, "pitch": self.pitch, "frame": self.frame}


@dataclass(frozen=True)
class TextEvent:
    """A phrase in force over absolute frames first..last (SPACE with space_mode "text")."""

    first: int
    last: int
    text: str


# -------------------------------------------------------------------------------------------- rotation
def rotation(yaw_deg: float, pitch_deg: float) -> np.ndarray:
    """R = R_y(yaw) R_x(pitch) [3,3] float64 (c2w rotation; see the module docstring for the signs)."""
    y, p = math.radians(yaw_deg), math.radians(pitch_deg)
    cy, sy, cp, sp = math.cos(y), math.sin(y), math.cos(p), math.sin(p)
    ry = np.array([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]])
    rx = np.array([[1.0, 0.0, 0.0], [0.0, cp, -sp], [0.0, sp, cp]])
    return ry @ rx


def c2w_matrix(position, yaw_deg: float, pitch_deg: float) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = rotation(yaw_deg, pitch_deg)
    m[:3, 3] = position
    return m


def invert_rigid(c2w: torch.Tensor) -> torch.Tensor:
    """[...,4,4] rigid transforms -> inverses ``[R^T, -R^T t]`` (exact, no general matrix inverse)."""
    r = c2w[..., :3, :3]
    t = c2w[..., :3, 3:]
    out = torch.zeros_like(c2w)
    rt = r.transpose(-1, -2)
    out[..., :3, :3] = rt
    out[..., :3, 3:] = -rt @ t
    out[..., 3, 3] = 1.0
    return out


# ----------------------------------------------------------------------------------------- trajectory
@dataclass
class CameraTrajectory:
    """A camera path (ComfyUI type ``INTERPLAY_CAMERA``).

    Fields:
        c2w: [F,4,4] float64 camera-to-world in frame-0 OpenCV coordinates; row i is absolute frame
            ``start_frame + i``.
        intrinsics: normalised pinhole intrinsics (shared by every frame).
        fps: frames per second of the video the path belongs to.
        grid: the block layout (which frames each generation block holds).
        start_frame: absolute index of ``c2w[0]`` (0 for a fresh rollout; the first new frame for a
            continuation).
        end_state: the state after the last frame, to continue from (CameraState).
        yaw, pitch: [F] degrees (derived from the rotation for user poses).
        timeline: the key timeline it came from (None for user poses).
        events: text events (space_mode "text").
        source: "keys" or "poses".
    """

    c2w: torch.Tensor
    intrinsics: Intrinsics = field(default_factory=Intrinsics)
    fps: float = 16.0
    grid: BlockGrid = field(default_factory=BlockGrid)
    start_frame: int = 0
    end_state: CameraState | None = None
    yaw: torch.Tensor | None = None
    pitch: torch.Tensor | None = None
    timeline: Timeline | None = None
    events: tuple[TextEvent, ...] = ()
    source: str = "keys"

    def __post_init__(self):
        if self.c2w.ndim != 3 or tuple(self.c2w.shape[1:]) != (4, 4) or self.c2w.shape[0] < 1:
            raise ValueError(f"c2w must be [F,4,4] with F >= 1; got {tuple(self.c2w.shape)}")
        self.c2w = self.c2w.to(torch.float64)
        if self.yaw is None or self.pitch is None:
            fwd = self.c2w[:, :3, 2]
            self.yaw = torch.rad2deg(torch.atan2(fwd[:, 0], fwd[:, 2]))
            self.pitch = torch.rad2deg(torch.asin((-fwd[:, 1]).clamp(-1, 1)))
        if self.end_state is None:
            self.end_state = CameraState(tuple(float(v) for v in self.c2w[-1, :3, 3]), float(self.yaw[-1]),
                                         float(self.pitch[-1]), self.start_frame + self.num_frames - 1)

    @property
    def num_frames(self) -> int:
        return int(self.c2w.shape[0])

    @property
    def w2c(self) -> torch.Tensor:
        """[F,4,4] float64 world-to-camera."""
        return invert_rigid(self.c2w)

    @property
    def positions(self) -> torch.Tensor:
        return self.c2w[:, :3, 3]

    def block_rows(self, b: int) -> slice:
        """Rows of c2w (local indices) holding block b's frames (clipped to this trajectory)."""
        lo = max(self.grid.block_start(b) - self.start_frame, 0)
        hi = min(self.grid.block_end(b) + 1 - self.start_frame, self.num_frames)
        return slice(lo, max(lo, hi))

    def plucker(self, height: int, width: int, rows: slice | None = None, *, dtype=torch.float32,
                device=None) -> torch.Tensor:
        """Plücker maps [F,6,H,W] of the frames in ``rows`` (all by default), computed now at this size."""
        c2w = self.c2w if rows is None else self.c2w[rows]
        return plucker_rays(c2w, self.intrinsics, height, width, dtype=dtype, device=device)

    def to_dict(self) -> dict:
        """Trajectory export: c2w per frame (row-major 4x4), intrinsics, fps, blocks, end state."""
        return {"v": 1, "convention": "opencv", "start_frame": self.start_frame, "fps": self.fps,
                "intrinsics": self.intrinsics.to_dict(), "grid": self.grid.to_dict(),
                "c2w": [[float(v) for v in m.reshape(-1)] for m in self.c2w],
                "end_state": self.end_state.to_dict(),
                "events": [{"first": e.first, "last": e.last, "text": e.text} for e in self.events],
                "timeline": self.timeline.to_dict() if self.timeline is not None else None}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())


def camera_from_timeline(timeline: Timeline, motion: Motion = Motion(), *, intrinsics: Intrinsics = Intrinsics(),
                         fps: float = 16.0, grid: BlockGrid = BlockGrid(), start: CameraState = CameraState(),
                         include_start: bool = True, num_frames: int | None = None) -> CameraTrajectory:
    """Integrate the timeline's steps from ``start``.

    include_start: the first row is ``start``'s own frame (a fresh rollout: frame 0, the identity); False for a
        continuation (rows are frames start.frame+1 ...), so part 1 + its continuation equals one long timeline.
    num_frames: rows wanted; the timeline is cut, or extended by holding still.
    """
    steps = timeline.step_segments()
    want_steps = len(steps) if num_frames is None else num_frames - (1 if include_start else 0)
    if want_steps < 0 or (num_frames is not None and num_frames < 1):
        raise ValueError(f"num_frames must be >= 1; got {num_frames}")
    steps = (steps + [-1] * want_steps)[:want_steps]  # -1: hold still
    p = np.array(start.position, dtype=np.float64)
    yaw, pitch = float(start.yaw), float(start.pitch)
    lim = motion.pitch_limit
    mats, yaws, pitches = [], [], []
    if include_start:
        mats.append(c2w_matrix(p, yaw, pitch))
        yaws.append(yaw)
        pitches.append(pitch)
    events: list[TextEvent] = []
    seg_step = 0
    prev = None
    for i, si in enumerate(steps):
        frame = start.frame + 1 + i
        seg = timeline.segments[si] if si >= 0 else None
        seg_step = seg_step + 1 if si == prev else 1
        prev = si
        keys = set(seg.keys) if seg else set()
        n = seg.frames if seg else 1
        fwd_amt = motion.move_speed * ((("W" in keys) - ("S" in keys)))
        side_amt = motion.move_speed * ((("D" in keys) - ("A" in keys)))
        yr, pr = math.radians(yaw), math.radians(pitch)
        forward = np.array([math.cos(pr) * math.sin(yr), -math.sin(pr), math.cos(pr) * math.cos(yr)])
        right = np.array([math.cos(yr), 0.0, -math.sin(yr)])
        p = p + fwd_amt * forward + side_amt * right
        dyaw = motion.turn_speed * (("RIGHT" in keys) - ("LEFT" in keys))
        dpitch = motion.turn_speed * (("UP" in keys) - ("DOWN" in keys))
        if seg is not None and seg.mouse != (0.0, 0.0):
            dyaw += seg.mouse[0] * motion.mouse_sensitivity / n
            dpitch -= seg.mouse[1] * motion.mouse_sensitivity / n
        yaw = yaw + dyaw
        pitch = min(max(pitch + dpitch, -lim), lim)
        shown = p
        if "SPACE" in keys and motion.space_mode == "jump":
            shown = p + np.array([0.0, -motion.jump_height * math.sin(math.pi * seg_step / n), 0.0])
        if "SPACE" in keys and motion.space_mode == "text" and seg_step == 1:
            events.append(TextEvent(frame, frame + n - 1, motion.space_text))
        mats.append(c2w_matrix(shown, yaw, pitch))
        yaws.append(yaw)
        pitches.append(pitch)
    if not mats:
        raise ValueError("the camera has no frame: give include_start=True or a timeline with frames")
    last = start.frame + len(steps)
    if events:  # a text event cut by num_frames ends at the last frame
        events = [replace(e, last=min(e.last, last)) for e in events]
    return CameraTrajectory(
        c2w=torch.from_numpy(np.stack(mats)), intrinsics=intrinsics, fps=float(fps), grid=grid,
        start_frame=start.frame if include_start else start.frame + 1,
        end_state=CameraState((float(p[0]), float(p[1]), float(p[2])), yaw, pitch, last),
        yaw=torch.tensor(yaws, dtype=torch.float64), pitch=torch.tensor(pitches, dtype=torch.float64),
        timeline=timeline, events=tuple(events), source="keys")


def camera_from_poses(c2w, *, convention: str = "opencv", relative: bool = True,
                      intrinsics: Intrinsics = Intrinsics(), fps: float = 16.0, grid: BlockGrid = BlockGrid(),
                      tolerance: float = 1e-4, input_name: str = "poses") -> CameraTrajectory:
    """User camera-to-world matrices (a list of 4x4 or of 16 numbers row-major, or a tensor [F,4,4]) -> a
    trajectory. convention "opengl" (x right, y up, z backward: Blender, NeRF) is turned into OpenCV axes;
    relative=True re-expresses every pose in frame 0's camera (so frame 0 becomes the identity)."""
    if convention not in ("opencv", "opengl"):
        raise ValueError(f"`convention` must be opencv or opengl; got {convention!r}")
    if isinstance(c2w, torch.Tensor):
        m = c2w.to(torch.float64)
    else:
        if not isinstance(c2w, (list, tuple)) or not c2w:
            raise ValueError(f"`{input_name}`: expected a non-empty list of camera-to-world 4x4 matrices; got "
                             f"{type(c2w).__name__}")
        rows = []
        for i, item in enumerate(c2w):  # each pose: nested 4x4 / 3x4, or 16 / 12 numbers row-major
            try:
                v = torch.as_tensor(item, dtype=torch.float64).reshape(-1)
            except (TypeError, ValueError, RuntimeError):
                raise ValueError(f"`{input_name}`: pose {i} is not a matrix of numbers: {str(item)[:60]}") from None
            if v.numel() == 12:
                v = torch.cat([v, torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64)])
            if v.numel() != 16:
                raise ValueError(f"`{input_name}`: pose {i} has {v.numel()} numbers; expected a camera-to-world "
                                 "4x4 matrix (16 numbers, or 12 for 3x4), row-major")
            rows.append(v.view(4, 4))
        m = torch.stack(rows)
    if m.ndim != 3 or tuple(m.shape[1:]) != (4, 4) or m.shape[0] < 1:
        raise ValueError(f"`{input_name}`: expected a list of F >= 1 camera-to-world 4x4 matrices (or 16 or 12 "
                         f"numbers each, row-major); got shape {tuple(m.shape)}")
    if not torch.isfinite(m).all():
        i = int((~torch.isfinite(m)).flatten(1).any(1).nonzero()[0])
        raise ValueError(f"`{input_name}`: pose {i} has a non-finite number")
    for i in range(m.shape[0]):
        r = m[i, :3, :3]
        err = float((r.T @ r - torch.eye(3, dtype=torch.float64)).abs().max())
        if err > tolerance or abs(float(torch.linalg.det(r)) - 1) > tolerance:
            raise ValueError(f"`{input_name}`: pose {i}'s rotation is not a rotation (|R^T R - I| = {err:.2g}, det "
                             f"{float(torch.linalg.det(r)):.4g}); expected rigid camera-to-world matrices (no scale). "
                             "Fix: pass c2w, not w2c with scale or K R")
        if float((m[i, 3] - torch.tensor([0.0, 0, 0, 1], dtype=torch.float64)).abs().max()) > tolerance:
            raise ValueError(f"`{input_name}`: pose {i}'s last row is {m[i, 3].tolist()}; expected [0, 0, 0, 1]")
    if convention == "opengl":
        m = m @ torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64))
    if relative:
        m = invert_rigid(m[:1]) @ m
    return CameraTrajectory(c2w=m, intrinsics=intrinsics, fps=float(fps), grid=grid, source="poses")


# ------------------------------------------------------------------------------------------- Plücker
def ray_directions(intrinsics: Intrinsics, height: int, width: int) -> torch.Tensor:
    """Unit camera-space ray directions [3,H,W] float64 through pixel centres: normalize(K^-1 [x+0.5, y+0.5, 1])."""
    fx, fy = intrinsics.fx * width, intrinsics.fy * height
    cx, cy = intrinsics.cx * width, intrinsics.cy * height
    u = torch.arange(width, dtype=torch.float64) + 0.5
    v = torch.arange(height, dtype=torch.float64) + 0.5
    x = ((u - cx) / fx)[None, :].expand(height, width)
    y = ((v - cy) / fy)[:, None].expand(height, width)
    d = torch.stack([x, y, torch.ones(height, width, dtype=torch.float64)])
    return d / d.norm(dim=0, keepdim=True)


def plucker_rays(c2w: torch.Tensor, intrinsics: Intrinsics, height: int, width: int, *, dtype=torch.float32,
                 device=None) -> torch.Tensor:
    """Plücker ray maps [F,6,H,W]: channels (o x d, d) with d = R normalize(K^-1 [u,v,1]) and o = t per frame.

    Computed in float64 frame by frame on ``device`` (the CPU by default), stored in ``dtype``."""
    if int(height) < 1 or int(width) < 1:
        raise ValueError(f"Plücker maps need height, width >= 1; got {height}x{width}")
    device = torch.device("cpu") if device is None else torch.device(device)
    c2w = torch.as_tensor(c2w, dtype=torch.float64).to(device)
    if c2w.ndim == 2:
        c2w = c2w[None]
    dirs = ray_directions(intrinsics, height, width).reshape(3, -1).to(device)
    out = torch.empty(c2w.shape[0], 6, height * width, dtype=dtype, device=device)
    for i in range(c2w.shape[0]):
        d = c2w[i, :3, :3] @ dirs                       # [3, HW]
        out[i, :3] = torch.linalg.cross(c2w[i, :3, 3:].expand_as(d), d, dim=0)
        out[i, 3:] = d
    return out.view(c2w.shape[0], 6, height, width)


def wan_fun_camera_embedding(plucker: torch.Tensor) -> torch.Tensor:
    """Plücker maps [F,6,H,W] (F = 4n+1) -> ComfyUI's Wan Fun-Camera embedding [1, 24, n+1, H, W].

    The packing of ComfyUI's WanCameraEmbedding node (comfy_extras/nodes_camera_trajectory.py): frame 0 is
    repeated 4 times, frames go in groups of 4 per latent frame, and channel 4c + k holds Plücker channel c of
    the group's k-th frame. The result plugs into WanCameraImageToVideo's ``camera_conditions``."""
    if plucker.ndim != 4 or plucker.shape[1] != 6:
        raise ValueError(f"expected Plücker maps [F,6,H,W]; got {tuple(plucker.shape)}")
    f = plucker.shape[0]
    if (f - 1) % 4:
        raise ValueError(f"the Wan Fun-Camera packing needs 4n+1 frames (1, 5, 9, ..., 81); got {f}")
    x = torch.cat([plucker[:1].expand(4, -1, -1, -1), plucker[1:]])       # [4(n+1), 6, H, W]
    t = x.shape[0] // 4
    x = x.reshape(t, 4, 6, *x.shape[-2:]).transpose(1, 2)                # [t, 6, 4, H, W]
    return x.reshape(t, 24, *x.shape[-2:]).transpose(0, 1)[None].contiguous()


# ------------------------------------------------------------------------------------------- preview
def _colour(t: float) -> tuple[int, int, int]:
    """Frame colour along the path: blue (frame 0) -> green -> yellow -> red (last)."""
    stops = [(40, 90, 230), (30, 190, 120), (235, 200, 40), (225, 50, 40)]
    t = min(max(t, 0.0), 1.0) * (len(stops) - 1)
    i = min(int(t), len(stops) - 2)
    a, b, f = stops[i], stops[i + 1], t - i
    return tuple(int(round(a[k] + (b[k] - a[k]) * f)) for k in range(3))


def trajectory_preview(traj: CameraTrajectory, width: int = 512, height: int = 384) -> torch.Tensor:
    """A top-down view of the path as an IMAGE [1,H,W,3]: x to the right, frame 0's forward (z) up the image,
    one dot per frame coloured by time, heading arrows at frame 0 and every block end, a text line with the
    frame/block counts and the final yaw/pitch."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height), (250, 250, 250))
    d = ImageDraw.Draw(img)
    pos = traj.positions.numpy()
    xs, zs = pos[:, 0], pos[:, 2]
    pad, text_h = 30, 16  # room for the heading arrows and the two text lines
    x_lo, x_hi, y_lo, y_hi = pad, width - pad, text_h + pad, height - text_h - pad
    span = max(float(xs.max() - xs.min()), float(zs.max() - zs.min()))
    if span < 1e-6:  # turning on the spot: a unit box so the arrows show
        span = 1.0
    scale = min(x_hi - x_lo, y_hi - y_lo) / span
    mx, mz = (xs.max() + xs.min()) / 2, (zs.max() + zs.min()) / 2

    def px(x, z):
        return ((x_lo + x_hi) / 2 + (x - mx) * scale, (y_lo + y_hi) / 2 - (z - mz) * scale)

    # grid: frame-0 axes
    ox, oz = px(0.0, 0.0)
    d.line([(ox, text_h), (ox, height - text_h)], fill=(225, 225, 225))
    d.line([(0, oz), (width, oz)], fill=(225, 225, 225))
    n = traj.num_frames
    pts = [px(x, z) for x, z in zip(xs, zs)]
    for i in range(1, n):
        d.line([pts[i - 1], pts[i]], fill=_colour(i / max(n - 1, 1)), width=2)
    for i, (x, y) in enumerate(pts):
        c = _colour(i / max(n - 1, 1))
        d.ellipse([x - 2, y - 2, x + 2, y + 2], fill=c)
    marks = {0, n - 1}
    b = traj.grid.block_of(traj.start_frame)
    while True:
        r = traj.grid.block_end(b) - traj.start_frame
        if r >= n:
            break
        if r >= 0:
            marks.add(r)
        b += 1
    fwd = traj.c2w[:, :3, 2].numpy()
    for i in sorted(marks):
        hx, hz = fwd[i, 0], fwd[i, 2]
        norm = math.hypot(hx, hz)
        x, y = pts[i]
        c = _colour(i / max(n - 1, 1))
        if norm < 1e-9:  # looking straight up or down
            d.ellipse([x - 5, y - 5, x + 5, y + 5], outline=c, width=2)
            continue
        ux, uy = hx / norm, -hz / norm
        L = 18
        ex, ey = x + ux * L, y + uy * L
        d.line([(x, y), (ex, ey)], fill=c, width=3)
        for s in (0.5, -0.5):
            ca, sa = math.cos(math.pi - s), math.sin(math.pi - s)
            d.line([(ex, ey), (ex + 7 * (ux * ca - uy * sa), ey + 7 * (ux * sa + uy * ca))], fill=c, width=3)
    x0, y0 = pts[0]
    d.ellipse([x0 - 5, y0 - 5, x0 + 5, y0 + 5], outline=(0, 0, 0), width=2)
    blocks = traj.grid.block_of(traj.start_frame + n - 1) - traj.grid.block_of(traj.start_frame) + 1
    dist = float(np.linalg.norm(pos[-1] - pos[0]))
    d.text((6, 4), f"frames {traj.start_frame}-{traj.start_frame + n - 1} ({n}), blocks {blocks}, "
                   f"distance {dist:.3g}, yaw {float(traj.yaw[-1]):.1f}, pitch {float(traj.pitch[-1]):.1f}",
           fill=(0, 0, 0))
    d.text((6, height - 14), "top-down: x right, frame-0 forward up", fill=(110, 110, 110))
    arr = np.asarray(img, dtype=np.float32) / 255.0
    return torch.from_numpy(arr.copy())[None]
