"""Hand-object interaction (HOI) sequences: the per-frame record PAM's conditions are rendered from, its generic
file format (HOI_FORMAT.md), frame-count checks and resampling, and the condition bundle handed to the sampler.

Units and axes: world metres; camera OpenCV pinhole (x right, y down, z forward) with the OpenCV pixel
convention (pixel column i, row j has its centre at (i, j), as DexYCB's joint_2d and cv2 drawing use);
``world_to_camera[f]`` maps world points of frame f into the camera. F frames, H x W pixels.

HOISequence fields (all per-frame arrays share F):
  fps        float
  camera     HOICamera: K [F,3,3], world_to_camera [F,4,4], width, height
  hands      list of HandTrack: side "right"/"left"; joints [F,21,3] world (drawing order: wrist, thumb MCP..tip,
             index, middle, ring, little) or None; joints_2d [F,21,2] annotated pixels or None (used as-is for the
             keypoint image); valid [F] bool; mano ManoParams or None; vertices [F,V,3] + faces [T,3] (a hand mesh)
             or None. Joints may be left None when MANO parameters and a MANO model are given.
  objects    list of ObjectTrack: label (segmentation id, e.g. the YCB id 1..21), pose [F,4,4] object->world,
             vertices [V,3] + faces [T,3] in the object frame (faces None: a point cloud), name
  seg        [F,H,W] uint8 annotated label map or None (DexYCB coding: 0 background, 1..254 objects, 255 hand)
  depth      [F,H,W] float32 annotated metric depth or None (0 = unknown)
  meta       dict (source, notes; the trajectory generator sets "non_physical": true)
"""
from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

HAND_JOINTS = 21
SIDES = ("right", "left")
FORMAT = "interplay-hoi"
VERSION = 1
HAND_LABEL = 255  # DexYCB's hand id in the label map


class HOIFormatError(ValueError):
    """A malformed HOI sequence or file; the message names the field (and the file)."""


class FrameCountError(ValueError):
    """A sequence whose frame count differs from what its consumer needs; names both counts."""


def _arr(x, name: str, dtype, shape: tuple, allow_none: bool = True):
    """Check an array against a shape pattern (ints fixed, None free) and convert it."""
    if x is None:
        if allow_none:
            return None
        raise HOIFormatError(f"{name}: required, missing")
    try:
        a = np.asarray(x, dtype=dtype)
    except (TypeError, ValueError) as ex:
        raise HOIFormatError(f"{name}: not a numeric array ({ex})") from ex
    if a.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape, a.shape)):
        want = "[" + ",".join("*" if s is None else str(s) for s in shape) + "]"
        raise HOIFormatError(f"{name}: expected shape {want}, got {list(a.shape)}")
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise HOIFormatError(f"{name}: contains NaN or infinite values")
    return a


def _per_frame(a, name: str, F: int):
    if a is not None and a.shape[0] != F:
        raise HOIFormatError(f"{name}: {a.shape[0]} frames, the sequence has {F}")
    return a


# ------------------------------------------------------------------------------------------------ types
@dataclass
class HOICamera:
    """K [F,3,3] (a single [3,3] is repeated), world_to_camera [F,4,4] (or one [4,4]), image width x height."""

    K: np.ndarray
    world_to_camera: np.ndarray
    width: int
    height: int

    def fit(self, F: int) -> "HOICamera":
        K = np.asarray(self.K, np.float64)
        E = np.asarray(self.world_to_camera, np.float64)
        if K.ndim == 2:
            K = np.repeat(K[None], F, 0)
        if E.ndim == 2:
            E = np.repeat(E[None], F, 0)
        K = _per_frame(_arr(K, "camera.K", np.float64, (None, 3, 3), False), "camera.K", F)
        E = _per_frame(_arr(E, "camera.world_to_camera", np.float64, (None, 4, 4), False),
                       "camera.world_to_camera", F)
        if not (1 <= int(self.width) <= 16384 and 1 <= int(self.height) <= 16384):
            raise HOIFormatError(f"camera: width/height must be 1..16384, got {self.width}x{self.height}")
        return HOICamera(K, E, int(self.width), int(self.height))

    def to_camera(self, points: np.ndarray, f: int) -> np.ndarray:
        """World points [...,3] of frame f -> camera coordinates [...,3]."""
        E = self.world_to_camera[f]
        return np.asarray(points, np.float64) @ E[:3, :3].T + E[:3, 3]

    def project(self, points_cam: np.ndarray, f: int) -> tuple[np.ndarray, np.ndarray]:
        """Camera points [...,3] -> (pixels [...,2] (u = column, v = row), depth z [...])."""
        K = self.K[f]
        z = points_cam[..., 2]
        zs = np.where(np.abs(z) < 1e-9, 1e-9, z)
        u = K[0, 0] * points_cam[..., 0] / zs + K[0, 1] * points_cam[..., 1] / zs + K[0, 2]
        v = K[1, 1] * points_cam[..., 1] / zs + K[1, 2]
        return np.stack([u, v], -1), z


@dataclass
class ManoParams:
    """MANO parameters of one hand. pose: axis_angle [F,48] (global first), quat [F,16,4] (w,x,y,z) or pca [F,3+k];
    trans [F,3]; betas [S] or [F,S]; flat_hand_mean and center_idx as in mano.ManoModel.forward."""

    pose: np.ndarray
    trans: np.ndarray
    betas: np.ndarray
    pose_space: str = "axis_angle"
    flat_hand_mean: bool = True
    center_idx: int | None = None

    def check(self, name: str, F: int) -> "ManoParams":
        from .mano import POSE_SPACES

        if self.pose_space not in POSE_SPACES:
            raise HOIFormatError(f"{name}.pose_space: expected one of {', '.join(POSE_SPACES)}, "
                                 f"got {self.pose_space!r}")
        shape = {"axis_angle": (None, 48), "quat": (None, 16, 4), "pca": (None, None)}[self.pose_space]
        pose = _per_frame(_arr(self.pose, f"{name}.pose", np.float64, shape, False), f"{name}.pose", F)
        if self.pose_space == "pca" and not 3 <= pose.shape[1] <= 48:
            raise HOIFormatError(f"{name}.pose: pca poses are [F,3+k] with k <= 45, got {list(pose.shape)}")
        trans = _per_frame(_arr(self.trans, f"{name}.trans", np.float64, (None, 3), False), f"{name}.trans", F)
        betas = np.asarray(self.betas, np.float64)
        betas = _arr(betas, f"{name}.betas", np.float64, (None,) * betas.ndim, False)
        if betas.ndim == 2:
            _per_frame(betas, f"{name}.betas", F)
        elif betas.ndim != 1:
            raise HOIFormatError(f"{name}.betas: expected [S] or [F,S], got {list(betas.shape)}")
        ci = None if self.center_idx is None else int(self.center_idx)
        return ManoParams(pose, trans, betas, self.pose_space, bool(self.flat_hand_mean), ci)


@dataclass
class HandTrack:
    side: str = "right"
    joints: np.ndarray | None = None
    joints_2d: np.ndarray | None = None
    valid: np.ndarray | None = None
    mano: ManoParams | None = None
    vertices: np.ndarray | None = None
    faces: np.ndarray | None = None

    def check(self, name: str, F: int) -> "HandTrack":
        if self.side not in SIDES:
            raise HOIFormatError(f"{name}.side: expected 'right' or 'left', got {self.side!r}")
        j = _per_frame(_arr(self.joints, f"{name}.joints", np.float64, (None, HAND_JOINTS, 3)), f"{name}.joints", F)
        j2 = _per_frame(_arr(self.joints_2d, f"{name}.joints_2d", np.float64, (None, HAND_JOINTS, 2)),
                        f"{name}.joints_2d", F)
        valid = np.ones(F, bool) if self.valid is None else np.asarray(self.valid).astype(bool).reshape(-1)
        _per_frame(valid, f"{name}.valid", F)
        mano = None if self.mano is None else self.mano.check(f"{name}.mano", F)
        v = _per_frame(_arr(self.vertices, f"{name}.vertices", np.float64, (None, None, 3)), f"{name}.vertices", F)
        faces = _arr(self.faces, f"{name}.faces", np.int64, (None, 3))
        if (v is None) != (faces is None):
            raise HOIFormatError(f"{name}: a hand mesh needs both vertices and faces")
        if faces is not None and (faces.min(initial=0) < 0 or faces.max(initial=0) >= v.shape[1]):
            raise HOIFormatError(f"{name}.faces: indices outside 0..{v.shape[1] - 1}")
        if j is None and j2 is None and mano is None and v is None:
            raise HOIFormatError(f"{name}: give joints, joints_2d, mano parameters or a mesh")
        return HandTrack(self.side, j, j2, valid, mano, v, faces)


@dataclass
class ObjectTrack:
    label: int
    pose: np.ndarray
    vertices: np.ndarray | None = None
    faces: np.ndarray | None = None
    name: str = ""

    def check(self, name: str, F: int) -> "ObjectTrack":
        label = int(self.label)
        if not 1 <= label <= 254:
            raise HOIFormatError(f"{name}.label: expected 1..254 (0 is the background, 255 the hand), got {label}")
        pose = np.asarray(self.pose, np.float64)
        if pose.ndim == 2:
            pose = np.repeat(pose[None], F, 0)
        pose = _per_frame(_arr(pose, f"{name}.pose", np.float64, (None, 4, 4), False), f"{name}.pose", F)
        v = _arr(self.vertices, f"{name}.vertices", np.float64, (None, 3))
        faces = _arr(self.faces, f"{name}.faces", np.int64, (None, 3))
        if faces is not None and (v is None or faces.min(initial=0) < 0 or faces.max(initial=0) >= len(v)):
            raise HOIFormatError(f"{name}.faces: indices outside the object's vertices")
        return ObjectTrack(label, pose, v, faces, str(self.name))


@dataclass
class HOISequence:
    """One hand-object sequence; see the module docstring for the fields. Validated on construction."""

    fps: float
    camera: HOICamera
    hands: list = field(default_factory=list)
    objects: list = field(default_factory=list)
    seg: np.ndarray | None = None
    depth: np.ndarray | None = None
    meta: dict = field(default_factory=dict)
    num_frames: int = 0

    def __post_init__(self):
        F = int(self.num_frames) or _infer_frames(self)
        if F < 1:
            raise HOIFormatError("HOI sequence: no frames (give num_frames or per-frame arrays)")
        self.num_frames = F
        if not (isinstance(self.fps, (int, float)) and math.isfinite(self.fps) and self.fps > 0):
            raise HOIFormatError(f"fps: expected a positive number, got {self.fps!r}")
        self.fps = float(self.fps)
        self.camera = self.camera.fit(F)
        self.hands = [h.check(f"hands[{i}]", F) for i, h in enumerate(self.hands)]
        self.objects = [o.check(f"objects[{i}]", F) for i, o in enumerate(self.objects)]
        H, W = self.camera.height, self.camera.width
        self.seg = _per_frame(_arr(self.seg, "seg", np.uint8, (None, H, W)), "seg", F)
        self.depth = _per_frame(_arr(self.depth, "depth", np.float32, (None, H, W)), "depth", F)
        self.meta = dict(self.meta)


def _infer_frames(seq: HOISequence) -> int:
    for h in seq.hands:
        for a in (h.joints, h.joints_2d, h.vertices, None if h.mano is None else h.mano.pose):
            if a is not None:
                return int(np.shape(a)[0])
    for o in seq.objects:
        if np.ndim(o.pose) == 3:
            return int(np.shape(o.pose)[0])
    for a in (seq.seg, seq.depth, seq.camera.world_to_camera):
        if a is not None and np.ndim(a) == 3:
            return int(np.shape(a)[0])
    return 0


@dataclass
class HOIConditions:
    """PAM's condition videos for one clip, as ComfyUI IMAGE tensors [F,H,W,3] float 0..1 on the CPU.

    depth     inferno colours of inverse depth, per-video normalised, bright = near, background black
    seg       ADE20K palette label colours (DexYCB: hand (92,0,255), YCB id k -> palette[k]), background black
    hand      HO-3D style hand-keypoint drawing, background black
    tracking, normal  the two slots PAM's branch has but never used (None: zero latents, as in training)
    mask      [F,H,W] float foreground (seg > 0); labels [F,H,W] int16 label map (0, 255 hand, object ids)
    depth_raw [F,H,W] float32 metric depth of the foreground (0 elsewhere) when known
    SLOTS is the released branch's condition order; slots() returns the five in that order."""

    depth: torch.Tensor
    seg: torch.Tensor
    hand: torch.Tensor
    fps: float
    tracking: torch.Tensor | None = None
    normal: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    depth_raw: torch.Tensor | None = None
    meta: dict = field(default_factory=dict)

    SLOTS = ("tracking", "normal", "depth", "seg", "hand")

    def slots(self) -> list:
        return [getattr(self, k) for k in self.SLOTS]

    @property
    def num_frames(self) -> int:
        return int(self.depth.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        return int(self.depth.shape[1]), int(self.depth.shape[2])


# ------------------------------------------------------------------------------------ frame counts
def check_frames(seq, n: int, consumer: str = "the consumer") -> None:
    """Raise FrameCountError naming both counts unless seq (an HOISequence or HOIConditions) has n frames."""
    have = seq.num_frames
    if have != int(n):
        raise FrameCountError(f"{consumer}: the HOI sequence has {have} frames, {consumer} needs {int(n)}. Fix: "
                              f"resample it to {int(n)} frames (HOI Render Conditions 'frames' = {int(n)}, or "
                              f"hoi.resample(seq, {int(n)})), or make the trajectory with {int(n)} frames.")


def _lerp_index(F: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = np.linspace(0.0, F - 1.0, n) if F > 1 else np.zeros(n)
    i0 = np.clip(np.floor(x).astype(int), 0, F - 1)
    i1 = np.minimum(i0 + 1, F - 1)
    return i0, i1, x - i0


def _lerp(a, i0, i1, w):
    if a is None:
        return None
    shape = (-1,) + (1,) * (a.ndim - 1)
    return a[i0] * (1 - w).reshape(shape) + a[i1] * w.reshape(shape)


def _slerp_transforms(T: np.ndarray, i0, i1, w) -> np.ndarray:
    """Interpolate rigid transforms [F,4,4]: rotation by SLERP, translation linearly."""
    from .rotations import matrix_to_quaternion, quaternion_to_matrix, slerp

    q = matrix_to_quaternion(torch.from_numpy(T[:, :3, :3]))
    R = quaternion_to_matrix(slerp(q[i0], q[i1], torch.from_numpy(w))).numpy()
    out = np.zeros((len(i0), 4, 4))
    out[:, :3, :3] = R
    out[:, :3, 3] = _lerp(T[:, :3, 3], i0, i1, w)
    out[:, 3, 3] = 1
    return out


def resample(seq: HOISequence, n: int) -> HOISequence:
    """The same motion at n frames over the same time span (fps scales by (n-1)/(F-1)): positions and vertices
    interpolated linearly, rotations (object poses, camera, MANO joint rotations) by SLERP, annotated images
    and validity by the nearest frame."""
    from .rotations import axis_angle_to_quaternion, quaternion_to_axis_angle, slerp

    n = int(n)
    if n < 1:
        raise ValueError(f"resample: n must be >= 1, got {n}")
    F = seq.num_frames
    if n == F:
        return copy.deepcopy(seq)
    i0, i1, w = _lerp_index(F, n)
    near = np.where(w < 0.5, i0, i1)
    hands = []
    for h in seq.hands:
        mano = None
        if h.mano is not None:
            m = h.mano
            if m.pose_space == "axis_angle":
                q = axis_angle_to_quaternion(torch.from_numpy(m.pose.reshape(F, 16, 3)))
                pose = quaternion_to_axis_angle(slerp(q[i0], q[i1], torch.from_numpy(w)[:, None])).reshape(n, 48)
                pose = pose.numpy()
            elif m.pose_space == "quat":
                pose = slerp(torch.from_numpy(m.pose[i0]), torch.from_numpy(m.pose[i1]),
                             torch.from_numpy(w)[:, None]).numpy()
            else:  # PCA coefficients are linear in the finger axis-angles; the global rotation by SLERP
                q = axis_angle_to_quaternion(torch.from_numpy(m.pose[:, :3]))
                glob = quaternion_to_axis_angle(slerp(q[i0], q[i1], torch.from_numpy(w))).numpy()
                pose = np.concatenate([glob, _lerp(m.pose[:, 3:], i0, i1, w)], 1)
            betas = m.betas if m.betas.ndim == 1 else _lerp(m.betas, i0, i1, w)
            mano = ManoParams(pose, _lerp(m.trans, i0, i1, w), betas, m.pose_space, m.flat_hand_mean, m.center_idx)
        valid = h.valid[i0] & h.valid[i1]
        hands.append(HandTrack(h.side, _lerp(h.joints, i0, i1, w), _lerp(h.joints_2d, i0, i1, w), valid, mano,
                               _lerp(h.vertices, i0, i1, w), h.faces))
    objects = [ObjectTrack(o.label, _slerp_transforms(o.pose, i0, i1, w), o.vertices, o.faces, o.name)
               for o in seq.objects]
    cam = HOICamera(_lerp(seq.camera.K, i0, i1, w), _slerp_transforms(seq.camera.world_to_camera, i0, i1, w),
                    seq.camera.width, seq.camera.height)
    fps = seq.fps * (n - 1) / (F - 1) if F > 1 and n > 1 else seq.fps
    meta = dict(seq.meta, resampled_from=F)
    return HOISequence(fps, cam, hands, objects, None if seq.seg is None else seq.seg[near],
                       None if seq.depth is None else seq.depth[near], meta, n)


# ------------------------------------------------------------------------------------ meshes
def box_mesh(size) -> tuple[np.ndarray, np.ndarray]:
    """Closed box centred at the origin, size (x, y, z) in metres: 8 vertices, 12 outward triangles."""
    s = np.asarray(size, np.float64).reshape(3) / 2
    v = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], np.float64) * s
    f = np.array([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
                  [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]], np.int64)
    return v, f


def cylinder_mesh(radius: float, height: float, sides: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """Closed cylinder centred at the origin, axis z."""
    a = np.linspace(0, 2 * np.pi, sides, endpoint=False)
    ring = np.stack([radius * np.cos(a), radius * np.sin(a)], 1)
    v = np.concatenate([np.c_[ring, np.full(sides, -height / 2)], np.c_[ring, np.full(sides, height / 2)],
                        [[0, 0, -height / 2], [0, 0, height / 2]]])
    f = []
    for i in range(sides):
        j = (i + 1) % sides
        f += [[i, j, sides + j], [i, sides + j, sides + i], [2 * sides, j, i], [2 * sides + 1, sides + i, sides + j]]
    return v, np.asarray(f, np.int64)


def read_obj(path) -> tuple[np.ndarray, np.ndarray]:
    """Vertices [V,3] and triangles [T,3] of a Wavefront OBJ (v and f records; polygons fan-triangulated;
    texture/normal indices ignored; negative indices counted from the end)."""
    path = Path(path)
    verts, faces = [], []
    try:
        text = path.read_text(errors="replace")
    except OSError as ex:
        raise HOIFormatError(f"{path}: cannot read the mesh ({ex})") from ex
    for ln, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            if parts[0] == "v":
                verts.append([float(p) for p in parts[1:4]])
            elif parts[0] == "f":
                idx = [int(p.split("/")[0]) for p in parts[1:]]
                idx = [i - 1 if i > 0 else len(verts) + i for i in idx]
                faces += [[idx[0], idx[k], idx[k + 1]] for k in range(1, len(idx) - 1)]
        except (ValueError, IndexError) as ex:
            raise HOIFormatError(f"{path}:{ln}: malformed OBJ record {line.strip()[:40]!r}") from ex
    if not verts:
        raise HOIFormatError(f"{path}: no vertices")
    v = np.asarray(verts, np.float64)
    f = np.asarray(faces, np.int64).reshape(-1, 3)
    if len(f) and (f.min() < 0 or f.max() >= len(v)):
        raise HOIFormatError(f"{path}: faces index missing vertices")
    return v, (f if len(f) else None)


# ------------------------------------------------------------------------------------ generic file format
def _tree(seq: HOISequence, put) -> dict:
    """The sequence as a JSON tree; put(name, array) returns what stands for an array (a list or a reference)."""
    hands = []
    for i, h in enumerate(seq.hands):
        d = {"side": h.side}
        for k in ("joints", "joints_2d"):
            if getattr(h, k) is not None:
                d[k] = put(f"hands.{i}.{k}", getattr(h, k))
        if h.valid is not None and not h.valid.all():
            d["valid"] = put(f"hands.{i}.valid", h.valid.astype(np.uint8))
        if h.mano is not None:
            m = h.mano
            d["mano"] = {"pose": put(f"hands.{i}.mano.pose", m.pose), "trans": put(f"hands.{i}.mano.trans", m.trans),
                         "betas": put(f"hands.{i}.mano.betas", m.betas), "pose_space": m.pose_space,
                         "flat_hand_mean": m.flat_hand_mean, "center_idx": m.center_idx}
        if h.vertices is not None:
            d["mesh"] = {"vertices": put(f"hands.{i}.vertices", h.vertices), "faces": put(f"hands.{i}.faces", h.faces)}
        hands.append(d)
    objects = []
    for i, o in enumerate(seq.objects):
        d = {"label": o.label, "name": o.name, "pose": put(f"objects.{i}.pose", o.pose)}
        if o.vertices is not None:
            d["mesh"] = {"vertices": put(f"objects.{i}.vertices", o.vertices)}
            if o.faces is not None:
                d["mesh"]["faces"] = put(f"objects.{i}.faces", o.faces)
        objects.append(d)
    tree = {"v": VERSION, "format": FORMAT, "fps": seq.fps, "num_frames": seq.num_frames,
            "camera": {"K": put("camera.K", seq.camera.K), "world_to_camera": put("camera.world_to_camera",
                                                                                  seq.camera.world_to_camera),
                       "width": seq.camera.width, "height": seq.camera.height},
            "hands": hands, "objects": objects, "meta": seq.meta}
    if seq.seg is not None:
        tree["seg"] = put("seg", seq.seg)
    if seq.depth is not None:
        tree["depth"] = put("depth", seq.depth)
    return tree


def save_hoi(seq: HOISequence, path) -> Path:
    """Write seq as .json (arrays inline) or .npz (arrays as entries, the tree in the '__hoi__' entry)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".json":
        text = json.dumps(_tree(seq, lambda k, a: np.asarray(a).tolist()))
        path.write_text(text)
    elif path.suffix.lower() == ".npz":
        arrays = {}

        def put(k, a):
            arrays[k] = np.asarray(a)
            return {"$npz": k}

        tree = _tree(seq, put)
        arrays["__hoi__"] = np.array(json.dumps(tree))
        np.savez_compressed(path, **arrays)
    else:
        raise HOIFormatError(f"{path}: HOI files are .json or .npz")
    return path


def _safe_relative(base: Path, name: str, what: str) -> Path:
    p = Path(name)
    if p.is_absolute() or ".." in p.parts:
        raise HOIFormatError(f"{what}: {name!r} must be a path relative to the file's folder, without '..'")
    return base / p


def sequence_from_tree(tree: dict, get=lambda x: x, base: Path | None = None, where: str = "HOI") -> HOISequence:
    """Build an HOISequence from a parsed v1 tree (``get`` resolves array references; ``base`` is the folder
    relative mesh_file names are read from)."""
    if not isinstance(tree, dict):
        raise HOIFormatError(f"{where}: expected a JSON object, got {type(tree).__name__}")
    if tree.get("v") != VERSION:
        raise HOIFormatError(f"{where}: expected version {{\"v\": {VERSION}}}, got {tree.get('v')!r}")

    def req(d, k, ctx):
        if not isinstance(d, dict) or k not in d:
            raise HOIFormatError(f"{where}: {ctx}{k} is required")
        return d[k]

    cam = req(tree, "camera", "")
    camera = HOICamera(get(req(cam, "K", "camera.")), get(cam.get("world_to_camera", np.eye(4).tolist())),
                       int(req(cam, "width", "camera.")), int(req(cam, "height", "camera.")))
    hands = []
    for i, h in enumerate(tree.get("hands", [])):
        mano = None
        if h.get("mano") is not None:
            m = h["mano"]
            mano = ManoParams(get(req(m, "pose", f"hands[{i}].mano.")), get(req(m, "trans", f"hands[{i}].mano.")),
                              get(m.get("betas", [0.0] * 10)), m.get("pose_space", "axis_angle"),
                              bool(m.get("flat_hand_mean", True)), m.get("center_idx"))
        mesh = h.get("mesh") or {}
        hands.append(HandTrack(h.get("side", "right"), get(h.get("joints")), get(h.get("joints_2d")),
                               get(h.get("valid")), mano, get(mesh.get("vertices")), get(mesh.get("faces"))))
    objects = []
    for i, o in enumerate(tree.get("objects", [])):
        v = f = None
        if "mesh" in o:
            v, f = get(o["mesh"].get("vertices")), get(o["mesh"].get("faces"))
        elif "mesh_file" in o:
            if base is None:
                raise HOIFormatError(f"{where}: objects[{i}].mesh_file needs a file on disk")
            v, f = read_obj(_safe_relative(base, o["mesh_file"], f"{where}: objects[{i}].mesh_file"))
        elif "primitive" in o:
            p = o["primitive"]
            if p.get("type") == "box":
                v, f = box_mesh(p["size"])
            elif p.get("type") == "cylinder":
                v, f = cylinder_mesh(float(p["radius"]), float(p["height"]))
            else:
                raise HOIFormatError(f"{where}: objects[{i}].primitive.type must be 'box' or 'cylinder'")
        objects.append(ObjectTrack(int(req(o, "label", f"objects[{i}].")), get(req(o, "pose", f"objects[{i}].")),
                                   v, f, str(o.get("name", ""))))
    try:
        return HOISequence(float(req(tree, "fps", "")), camera, hands, objects, get(tree.get("seg")),
                           get(tree.get("depth")), dict(tree.get("meta") or {}), int(tree.get("num_frames", 0)))
    except HOIFormatError as ex:
        raise HOIFormatError(f"{where}: {ex}") from ex


def load_hoi(path) -> HOISequence:
    """Read a generic HOI file (.json or .npz, version 1; see HOI_FORMAT.md)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"HOI file {path} not found")
    if path.suffix.lower() == ".json":
        try:
            tree = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as ex:
            raise HOIFormatError(f"{path}: not valid JSON ({ex})") from ex
        return sequence_from_tree(tree, base=path.parent, where=str(path))
    if path.suffix.lower() == ".npz":
        try:
            z = np.load(path, allow_pickle=False)
        except Exception as ex:
            raise HOIFormatError(f"{path}: not a readable .npz without pickles ({type(ex).__name__}: {ex})") from ex
        with z:
            if "__hoi__" not in z.files:
                raise HOIFormatError(f"{path}: no '__hoi__' entry; write it with save_hoi or follow HOI_FORMAT.md")
            tree = json.loads(str(z["__hoi__"]))

            def get(x):
                if isinstance(x, dict) and "$npz" in x:
                    if x["$npz"] not in z.files:
                        raise HOIFormatError(f"{path}: missing array entry {x['$npz']!r}")
                    return z[x["$npz"]]
                return x

            return sequence_from_tree(tree, get, base=path.parent, where=str(path))
    raise HOIFormatError(f"{path}: HOI files are .json or .npz")
