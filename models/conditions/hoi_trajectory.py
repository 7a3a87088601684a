"""Stage I fallback: KINEMATIC, NON-PHYSICAL hand-object trajectories from sparse keyframes.

PAM's Stage I is GraspXL, a physics-simulated grasping policy run outside ComfyUI; its (or any simulator's)
output is imported in the generic HOI format (``hoi.load_hoi``). Without it, this module interpolates between
keyframes. Nothing here knows about contact or collisions: hands may pass through objects and objects move only
where told. Every sequence it makes carries meta["non_physical"] = True.

Between two consecutive keyframes (time s from 0 to 1 over the segment, eased by ``easing``):
- wrist translation: p0 + (p1 - p0) e(s), with the minimum-jerk profile e(s) = 10 s^3 - 15 s^4 + 6 s^5 (rest to
  rest: zero velocity and acceleration at every keyframe) or linear e(s) = s;
- wrist (global) rotation: SLERP(q0, q1, e(s));
- fingers, MANO mode: each of the 15 finger joints' rotations by SLERP of its quaternion (axis-angle in and out);
  joints mode (21 joints, no MANO): each bone's direction in the hand frame by SLERP along the great circle, its
  length linearly, joints rebuilt from the wrist outwards;
- objects: their own keyframes likewise (rotation SLERP, translation eased); optionally rigidly attached to the
  wrist from a contact frame c on: pose(f) = T_wrist(f) T_wrist(c)^-1 pose(c).

Keyframe JSON (a widget's string, ``parse_trajectory``), version 1:
  {"v": 1, "frames": 49, "fps": 15, "side": "right", "easing": "min_jerk",
   "camera": {"K": [[..]], "world_to_camera": [[..]], "width": 640, "height": 480},   (optional)
   "hand": {"mode": "joints" | "mano", "betas": [10 numbers], "flat_hand_mean": true},
   "keyframes": [{"frame": 0, "wrist": [x,y,z], "rotation": [axis-angle 3] | "quat": [w,x,y,z],
                  "joints": [[21 x 3]] (joints mode) | "fingers": [45] (mano mode: 15 x axis-angle)}, ...],
   "objects": [{"label": 14, "name": "mug", "primitive": {"type": "box", "size": [x,y,z]} | "mesh": {...},
                "pose": [[4x4]], "keyframes": [{"frame": 30, "pose": [[4x4]]}]}],
   "attach": {"object": 0, "frame": 24}}                                                 (optional)
A keyframe may leave out joints/fingers (the previous keyframe's hand shape is kept) or the wrist (kept too).
Joints mode: "joints" alone fixes the pose; "wrist"/"rotation" then move that shape rigidly.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import torch

from . import rotations as rot
from .hoi import HandTrack, HOICamera, HOIFormatError, HOISequence, ManoParams, ObjectTrack, box_mesh, cylinder_mesh

DEFAULT_FRAMES = 49
DEFAULT_FPS = 15.0
EASINGS = ("min_jerk", "linear")
MODES = ("joints", "mano")
BONES = ((0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10), (10, 11), (11, 12),
         (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18), (18, 19), (19, 20))
# A nominal camera when none is given: DexYCB's 640 x 480 with a typical focal length, at the world origin
# looking along +z (x right, y down)
NOMINAL_K = ((615.0, 0.0, 319.5), (0.0, 615.0, 239.5), (0.0, 0.0, 1.0))
SOURCE = "kinematic fallback (Stage I, non-physical)"


# A right hand in its own frame (x toward the fingers, y toward the thumb when palm down, z out of the back),
# human size in metres: per finger the MCP position, the pointing direction and three phalanx lengths
_FINGERS = (((0.025, 0.022, -0.012), (0.62, 0.72, -0.30), (0.035, 0.030, 0.025)),   # thumb
            ((0.090, 0.024, 0.0), (1.0, 0.10, 0.0), (0.040, 0.025, 0.020)),        # index
            ((0.095, 0.004, 0.0), (1.0, 0.0, 0.0), (0.045, 0.028, 0.022)),         # middle
            ((0.090, -0.015, 0.0), (1.0, -0.08, 0.0), (0.042, 0.026, 0.020)),      # ring
            ((0.080, -0.032, 0.0), (1.0, -0.18, 0.0), (0.033, 0.020, 0.018)))      # little
_CURL = (0.35, 0.55, 0.45)  # radians per finger joint at a full grasp (MCP, PIP, DIP)


def canonical_hand(curl: float = 0.0, scale: float = 1.0, side: str = "right") -> np.ndarray:
    """A plausible hand's 21 joints [21,3] in its own frame (metres x scale; wrist at the origin), fingers bent by
    curl (0 open, 1 grasping: each phalanx turns toward the palm, -z, by curl x _CURL; the thumb also across the
    palm). A left hand mirrors y. A stand-in pose for keyframes and the sandbox, not a measured hand."""
    j = np.zeros((21, 3))
    for k, (base, d, lengths) in enumerate(_FINGERS):
        d = np.asarray(d, np.float64) / np.linalg.norm(d)
        p = np.asarray(base, np.float64)
        j[1 + 4 * k] = p
        ang = 0.0
        for i, ln in enumerate(lengths):
            ang += curl * _CURL[i] * (1.4 if k == 0 else 1.0)
            step = np.cos(ang) * d + np.sin(ang) * np.array([0.0, 0.0, -1.0])
            if k == 0:
                step = step - 0.6 * np.sin(ang) * np.array([0.0, 1.0, 0.0])
            p = p + ln * step / np.linalg.norm(step)
            j[2 + 4 * k + i] = p
    if side == "left":
        j[:, 1] *= -1
    return j * scale


def min_jerk(s):
    """Minimum-jerk position profile on [0, 1]: 10 s^3 - 15 s^4 + 6 s^5 (0 -> 0, 0.5 -> 0.5, 1 -> 1)."""
    s = np.clip(np.asarray(s, np.float64), 0.0, 1.0)
    return s ** 3 * (10 - 15 * s + 6 * s * s)


def ease(s, easing: str = "min_jerk"):
    if easing not in EASINGS:
        raise ValueError(f"easing must be one of {', '.join(EASINGS)}, got {easing!r}")
    return min_jerk(s) if easing == "min_jerk" else np.clip(np.asarray(s, np.float64), 0.0, 1.0)


def hand_frame(joints: np.ndarray, side: str = "right") -> np.ndarray:
    """Rotation [3,3] (columns: hand axes in world) of 21 joints: x from the wrist to the middle MCP, z the palm
    normal (index MCP x little MCP about the wrist; flipped for a left hand, so for both hands z points out of the
    palm), y = z x x."""
    j = np.asarray(joints, np.float64)
    x = j[9] - j[0]
    x /= max(np.linalg.norm(x), 1e-12)
    n = np.cross(j[5] - j[0], j[17] - j[0])
    if side == "left":
        n = -n
    z = n - (n @ x) * x
    nz = np.linalg.norm(z)
    if nz < 1e-9:  # degenerate palm: any perpendicular
        z = np.cross(x, [0.0, 0.0, 1.0] if abs(x[2]) < 0.9 else [0.0, 1.0, 0.0])
        nz = np.linalg.norm(z)
    z /= nz
    return np.stack([x, np.cross(z, x), z], 1)


def _frames_of(kfs: list) -> list[int]:
    return [int(k["frame"]) for k in kfs]


def _segments(frames: list[int], F: int):
    """For each output frame: (index of the keyframe before, index after, eased fraction input s)."""
    out = []
    for f in range(F):
        if f <= frames[0]:
            out.append((0, 0, 0.0))
        elif f >= frames[-1]:
            out.append((len(frames) - 1, len(frames) - 1, 0.0))
        else:
            k = int(np.searchsorted(frames, f, side="right")) - 1
            out.append((k, k + 1, (f - frames[k]) / (frames[k + 1] - frames[k])))
    return out


def _interp_poses(frames: list[int], R: np.ndarray, p: np.ndarray, F: int, easing: str):
    """Keyframe rotations [K,3,3] and positions [K,3] -> per frame [F,3,3], [F,3]."""
    q = rot.matrix_to_quaternion(torch.from_numpy(R))
    Rs, ps = np.zeros((F, 3, 3)), np.zeros((F, 3))
    for f, (a, b, s) in enumerate(_segments(frames, F)):
        e = float(ease(s, easing))
        Rs[f] = rot.quaternion_to_matrix(rot.slerp(q[a], q[b], torch.tensor(e, dtype=torch.float64))).numpy()
        ps[f] = p[a] + (p[b] - p[a]) * e
    return Rs, ps


@dataclass
class TrajectorySpec:
    """A parsed keyframe description (see the module docstring)."""

    frames: int = DEFAULT_FRAMES
    fps: float = DEFAULT_FPS
    side: str = "right"
    easing: str = "min_jerk"
    mode: str = "joints"
    betas: list = field(default_factory=lambda: [0.0] * 10)
    flat_hand_mean: bool = True
    camera: dict | None = None
    keyframes: list = field(default_factory=list)
    objects: list = field(default_factory=list)
    attach: dict | None = None


def parse_trajectory(text, input_name: str = "keyframes_json") -> TrajectorySpec:
    """Parse and check a v1 keyframe JSON string (or dict). Errors name the input and the bad field."""
    where = f"{input_name}"
    if isinstance(text, str):
        if not text.strip():
            return TrajectorySpec()
        try:
            d = json.loads(text)
        except json.JSONDecodeError as ex:
            raise ValueError(f"{where}: not valid JSON ({ex})") from ex
    else:
        d = text
    if not isinstance(d, dict) or d.get("v") != 1:
        raise ValueError(f"{where}: expected an object with \"v\": 1, got {str(d)[:60]!r}")
    hand = d.get("hand") or {}
    spec = TrajectorySpec(frames=int(d.get("frames", DEFAULT_FRAMES)), fps=float(d.get("fps", DEFAULT_FPS)),
                          side=str(d.get("side", "right")), easing=str(d.get("easing", "min_jerk")),
                          mode=str(hand.get("mode", "joints")), betas=list(hand.get("betas", [0.0] * 10)),
                          flat_hand_mean=bool(hand.get("flat_hand_mean", True)), camera=d.get("camera"),
                          keyframes=list(d.get("keyframes", [])), objects=list(d.get("objects", [])),
                          attach=d.get("attach"))
    if not 1 <= spec.frames <= 4096:
        raise ValueError(f"{where}: 'frames' must be 1..4096, got {spec.frames}")
    if spec.mode not in MODES:
        raise ValueError(f"{where}: hand.mode must be one of {', '.join(MODES)}, got {spec.mode!r}")
    if spec.easing not in EASINGS:
        raise ValueError(f"{where}: 'easing' must be one of {', '.join(EASINGS)}, got {spec.easing!r}")
    if spec.side not in ("right", "left"):
        raise ValueError(f"{where}: 'side' must be 'right' or 'left', got {spec.side!r}")
    for i, k in enumerate(spec.keyframes):
        if not isinstance(k, dict) or "frame" not in k:
            raise ValueError(f"{where}: keyframes[{i}] needs a 'frame'")
        if not 0 <= int(k["frame"]) < spec.frames:
            raise ValueError(f"{where}: keyframes[{i}].frame {k['frame']} is outside 0..{spec.frames - 1}")
    return spec


def _hand_keys(spec: TrajectorySpec, where: str):
    """Resolve the hand keyframes: sorted, one per frame, missing shape/wrist/rotation filled from the previous."""
    kfs = sorted(spec.keyframes, key=lambda k: int(k["frame"]))
    frames = _frames_of(kfs)
    if len(set(frames)) != len(frames):
        raise ValueError(f"{where}: two hand keyframes share a frame ({frames})")
    out = []
    prev = None
    for i, k in enumerate(kfs):
        r = dict(frame=int(k["frame"]))
        if spec.mode == "joints":
            if "joints" in k:
                j = np.asarray(k["joints"], np.float64)
                if j.shape != (21, 3) or not np.isfinite(j).all():
                    raise ValueError(f"{where}: keyframe at frame {r['frame']}: 'joints' must be 21 x 3 numbers")
                R0 = hand_frame(j, spec.side)
                shape = (j - j[0]) @ R0  # joints in the hand frame
                wrist, R = j[0], R0
            elif prev is None:
                raise ValueError(f"{where}: the first hand keyframe (frame {r['frame']}) needs 'joints' in joints "
                                 "mode")
            else:
                shape, wrist, R = prev["shape"], prev["wrist"], prev["R"]
            r["shape"] = shape
        else:
            if "fingers" in k:
                fing = np.asarray(k["fingers"], np.float64).reshape(-1)
                if fing.shape != (45,):
                    raise ValueError(f"{where}: keyframe at frame {r['frame']}: 'fingers' must be 45 numbers")
            elif prev is None:
                fing = np.zeros(45)
            else:
                fing = prev["fingers"]
            r["fingers"] = fing
            wrist = prev["wrist"] if prev is not None else np.zeros(3)
            R = prev["R"] if prev is not None else np.eye(3)
        if "wrist" in k:
            wrist = np.asarray(k["wrist"], np.float64).reshape(3)
        if "rotation" in k:
            R = rot.axis_angle_to_matrix(torch.tensor(k["rotation"], dtype=torch.float64).reshape(3)).numpy()
        elif "quat" in k:
            R = rot.quaternion_to_matrix(torch.tensor(k["quat"], dtype=torch.float64).reshape(4)).numpy()
        r["wrist"], r["R"] = wrist, R
        out.append(r)
        prev = r
    return out


def _joints_from(shape_a, shape_b, e: float) -> np.ndarray:
    """Hand-frame joints between two shapes: bone directions by SLERP, lengths linearly, rebuilt from the wrist."""
    out = np.zeros((21, 3))
    for p, c in BONES:
        da, db = shape_a[c] - shape_a[p], shape_b[c] - shape_b[p]
        la, lb = np.linalg.norm(da), np.linalg.norm(db)
        q = rot.rotation_between(torch.from_numpy(da), torch.from_numpy(db))
        qe = rot.slerp(torch.tensor([1.0, 0, 0, 0], dtype=torch.float64), q, torch.tensor(e, dtype=torch.float64))
        d = (rot.quaternion_to_matrix(qe).numpy() @ (da / max(la, 1e-12))) * (la + (lb - la) * e)
        out[c] = out[p] + d
    return out


def make_trajectory(spec: TrajectorySpec, mano=None, input_name: str = "keyframes_json") -> HOISequence:
    """Interpolate the keyframes into an HOISequence of spec.frames frames (see the module docstring). ``mano``
    (a ManoModel of the spec's side) makes MANO-mode trajectories carry joints too; attaching an object in
    MANO mode needs it (the wrist's position comes from the model)."""
    where = input_name
    F = spec.frames
    if not spec.keyframes:
        raise ValueError(f"{where}: no hand keyframes; give at least a start (frame 0) and a target keyframe, or "
                         "connect 'start' and 'target' poses")
    keys = _hand_keys(spec, where)
    frames = [k["frame"] for k in keys]
    Rs, ws = _interp_poses(frames, np.stack([k["R"] for k in keys]), np.stack([k["wrist"] for k in keys]), F,
                           spec.easing)
    segs = _segments(frames, F)
    hand_joints = mano_params = None
    if spec.mode == "joints":
        hand_joints = np.zeros((F, 21, 3))
        for f, (a, b, s) in enumerate(segs):
            local = keys[a]["shape"] if a == b else _joints_from(keys[a]["shape"], keys[b]["shape"],
                                                                 float(ease(s, spec.easing)))
            hand_joints[f] = ws[f] + local @ Rs[f].T
        T_wrist = np.tile(np.eye(4), (F, 1, 1))
        T_wrist[:, :3, :3], T_wrist[:, :3, 3] = Rs, ws
    else:
        fq = rot.axis_angle_to_quaternion(torch.from_numpy(np.stack([k["fingers"] for k in keys]).reshape(-1, 15, 3)))
        fingers = np.zeros((F, 15, 3))
        for f, (a, b, s) in enumerate(segs):
            e = torch.tensor(float(ease(s, spec.easing)), dtype=torch.float64)
            fingers[f] = rot.quaternion_to_axis_angle(rot.slerp(fq[a], fq[b], e)).numpy()
        glob = rot.quaternion_to_axis_angle(rot.matrix_to_quaternion(torch.from_numpy(Rs))).numpy()
        pose = np.concatenate([glob, fingers.reshape(F, 45)], 1)
        betas = np.asarray(spec.betas, np.float64)
        mano_params = ManoParams(pose, ws.copy(), betas, "axis_angle", spec.flat_hand_mean, None)
        T_wrist = None
        if mano is not None:
            with torch.no_grad():
                _, j = mano(torch.from_numpy(pose).float(), torch.from_numpy(betas[None]).float(),
                            torch.from_numpy(ws).float(), pose_space="axis_angle", flat_hand_mean=spec.flat_hand_mean)
            hand_joints = j.double().numpy()
            T_wrist = np.tile(np.eye(4), (F, 1, 1))
            T_wrist[:, :3, :3], T_wrist[:, :3, 3] = Rs, hand_joints[:, 0]
    objects = []
    for i, o in enumerate(spec.objects):
        objects.append(_object_track(o, i, F, spec.easing, where))
    if spec.attach:
        k = int(spec.attach.get("object", 0))
        c = int(spec.attach.get("frame", 0))
        if not 0 <= k < len(objects):
            raise ValueError(f"{where}: attach.object {k} is not one of the {len(objects)} objects")
        if not 0 <= c < F:
            raise ValueError(f"{where}: attach.frame {c} is outside 0..{F - 1}")
        if T_wrist is None:
            raise ValueError(f"{where}: attaching an object in MANO mode needs the MANO model (the wrist position "
                             "comes from it); connect one or use joints mode")
        later = [int(kf["frame"]) for kf in spec.objects[k].get("keyframes", []) if int(kf["frame"]) > c]
        if later:
            raise ValueError(f"{where}: object {k} is attached to the hand from frame {c} but has keyframes at "
                             f"{later}; remove them or attach later")
        pose = objects[k].pose.copy()
        rel = np.linalg.inv(T_wrist[c]) @ pose[c]
        pose[c:] = T_wrist[c:] @ rel
        objects[k] = ObjectTrack(objects[k].label, pose, objects[k].vertices, objects[k].faces, objects[k].name)
    cam = spec.camera or {}
    camera = HOICamera(np.asarray(cam.get("K", NOMINAL_K), np.float64),
                       np.asarray(cam.get("world_to_camera", np.eye(4)), np.float64),
                       int(cam.get("width", 640)), int(cam.get("height", 480)))
    hand = HandTrack(spec.side, hand_joints, None, None, mano_params)
    meta = dict(source=SOURCE, non_physical=True, easing=spec.easing, mode=spec.mode, keyframes=frames,
                attach=spec.attach)
    try:
        return HOISequence(spec.fps, camera, [hand], objects, meta=meta, num_frames=F)
    except HOIFormatError as ex:
        raise ValueError(f"{where}: {ex}") from ex


def _object_track(o: dict, i: int, F: int, easing: str, where: str) -> ObjectTrack:
    if not isinstance(o, dict) or "label" not in o:
        raise ValueError(f"{where}: objects[{i}] needs a 'label' (its segmentation id, e.g. the YCB id)")
    v = f = None
    if "mesh" in o:
        v, f = o["mesh"].get("vertices"), o["mesh"].get("faces")
    elif "primitive" in o:
        p = o["primitive"]
        if p.get("type") == "box":
            v, f = box_mesh(p.get("size", [0.1, 0.1, 0.1]))
        elif p.get("type") == "cylinder":
            v, f = cylinder_mesh(float(p.get("radius", 0.04)), float(p.get("height", 0.1)))
        else:
            raise ValueError(f"{where}: objects[{i}].primitive.type must be 'box' or 'cylinder'")
    start = np.asarray(o.get("pose", np.eye(4)), np.float64)
    if start.shape != (4, 4):
        raise ValueError(f"{where}: objects[{i}].pose must be a 4 x 4 matrix")
    kfs = sorted([dict(frame=0, pose=start)] + [dict(frame=int(k["frame"]), pose=np.asarray(k["pose"], np.float64))
                                                 for k in o.get("keyframes", []) if int(k["frame"]) != 0],
                 key=lambda k: k["frame"])
    for k in kfs:
        if k["pose"].shape != (4, 4) or not 0 <= k["frame"] < F:
            raise ValueError(f"{where}: objects[{i}] keyframe at frame {k['frame']}: a 4 x 4 pose within 0..{F - 1}")
    R, p = _interp_poses([k["frame"] for k in kfs], np.stack([k["pose"][:3, :3] for k in kfs]),
                         np.stack([k["pose"][:3, 3] for k in kfs]), F, easing)
    pose = np.tile(np.eye(4), (F, 1, 1))
    pose[:, :3, :3], pose[:, :3, 3] = R, p
    return ObjectTrack(int(o["label"]), pose, v, f, str(o.get("name", "")))


def keyframe_from_sequence(seq: HOISequence, frame: int, hand: int = 0) -> dict:
    """One hand keyframe (joints mode: the hand's 21 joints; MANO mode: wrist, rotation, fingers) from a frame of
    a sequence, e.g. a loaded start or target pose; object poses go in "objects" (pose per object)."""
    f = int(frame) if frame >= 0 else seq.num_frames + int(frame)
    if not 0 <= f < seq.num_frames:
        raise ValueError(f"frame {frame} is outside the sequence's {seq.num_frames} frames")
    if not seq.hands:
        raise ValueError("the sequence has no hand")
    h = seq.hands[hand]
    k: dict = {}
    if h.joints is not None:
        k["joints"] = h.joints[f].tolist()
    if h.mano is not None and h.mano.pose_space == "axis_angle":
        k["rotation"] = h.mano.pose[f, :3].tolist()
        k["fingers"] = h.mano.pose[f, 3:].tolist()
        k["wrist"] = h.mano.trans[f].tolist()
    if not k:
        raise ValueError("the sequence's hand has neither 21 joints nor axis-angle MANO parameters")
    k["objects"] = [o.pose[f].tolist() for o in seq.objects]
    return k
