"""The sandbox's one clip record (see FORMAT.md for the on-disk form)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class SceneClip:
    """One rendered scene. N objects (the pusher is not an object), F frames, H x W pixels.

    frames      uint8  [F,H,W,3]
    masks       bool   [N,F,H,W]  visible (occluded parts excluded) mask of each object
    id_map      int16  [F,H,W]    0 background (ground, sky and pusher), i+1 object i
    pusher_mask bool   [F,H,W]    visible pixels of the hand-like pusher (all False without one)
    vel_world   float32[N,F,3]    m/s, world axes (x, y on the ground, z up)
    vel_image   float32[N,F,2]    px/frame of the object's centre, +x right, +y UP the image
    vel_control float32[N,F,3]    m/s in screen-aligned ground axes: +x image right, +y up the image (away from
                                  the camera along the ground), +z out of the ground plane; what
                                  conditions.velocity.velocity_video consumes
    pos_world   float32[N,F,3]    centre of each object (m)
    hand_joints float32[F,21,3]   'hoi' preset: the hand's 21 joints (world m; wrist, thumb, index, middle, ring,
                                  little, as conditions.hoi), None otherwise
    object_pose float32[N,F,4,4]  'hoi' preset: object-to-world poses (rotation, and the lift when carried)
    """

    frames: np.ndarray
    masks: np.ndarray
    id_map: np.ndarray
    pusher_mask: np.ndarray
    vel_world: np.ndarray
    vel_image: np.ndarray
    vel_control: np.ndarray
    objects: list
    driven: list
    caption: str
    camera: dict
    fps: float
    seed: int
    preset: str
    pos_world: np.ndarray | None = None
    events: list = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    hand_joints: np.ndarray | None = None
    object_pose: np.ndarray | None = None

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        return int(self.frames.shape[1]), int(self.frames.shape[2])
