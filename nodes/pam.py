"""PAM (hand-object interaction video) nodes.

Conditions section (this file's first part): load or make a hand-object sequence, render PAM's depth /
segmentation / hand-keypoint condition videos, colourise any depth estimator's output the same way, convert a
user's MANO model, and score hand poses. Motion-branch section: the PAM Branch Loader and PAM Control; the CogVideoX
Sampler runs PAM unchanged (its 'branch' + 'control' inputs, or an Apply Control chain). The release's sampler
settings (testing/evaluation_*.py): scheduler dpm, 50 steps, cfg 6 with dynamic CFG, seed 42, 49 frames at 480x720,
control_weight 1.0 on the sampler (its 0.5 default is KineMask's) and the negative prompt
``models.control.pam.NEGATIVE_PROMPT``.

Types: INTERPLAY_HOI_SEQUENCE (models.conditions.hoi.HOISequence), INTERPLAY_HOI (hoi.HOIConditions, the
condition bundle the PAM sampler takes).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..models import metrics as M
from ..models import runtime
from ..models.conditions import hoi
from ..models.conditions import hoi_datasets as D
from ..models.conditions import hoi_render as R
from ..models.conditions import hoi_trajectory as T

SEQ = "INTERPLAY_HOI_SEQUENCE"
COND = "INTERPLAY_HOI"
MANO_FOLDER = "mano/"
# Inputs that name files obey the pack's path rule (runtime.confined_path); their options carry the marker.
LOAD_FORMATS = ("generic", "dexycb", "oakink2", "sandbox_clip")


def _input_path(node: str, name: str, value: str, want: str = "file") -> Path:
    """A file or folder named relative to ComfyUI's input folder (or inside the pack's folders: the path rule);
    refused by the rule before any existence test, then reported missing with where it looked."""
    full = runtime.confined_path(value, node=node, input_name=name)
    if not full.exists():
        raise FileNotFoundError(f"{node}: '{name}' {value!r} not found; searched {full}")
    if want == "folder" and not full.is_dir():
        raise ValueError(f"{node}: '{name}' {value!r} is a file; expected a folder")
    return full


def _mano_choices() -> list[str]:
    return ["none"] + [n for n in runtime.list_models("interplay") if n.startswith(MANO_FOLDER)]


def _load_mano(node: str, right: str, left: str):
    from ..models.conditions.mano import ManoModel

    out = {}
    for side, name in (("right", right), ("left", left)):
        if name and name != "none":
            model = ManoModel.from_file(runtime.model_path("interplay", name))
            if model.side != side:
                raise ValueError(f"{node}: 'mano_{side}' {name!r} is a {model.side} hand; pick a {side} MANO file")
            out[side] = model
    return out or None


def _named(node: str, fn, *a, **k):
    """Call an engine function, prefixing its input errors with the node's name."""
    try:
        return fn(*a, **k)
    except (ValueError, FileNotFoundError) as ex:
        msg = str(ex)
        raise type(ex)(msg if msg.startswith(node) else f"{node}: {msg}") from ex


# ============================================================================================ conditions
class InterplayLoadHOISequence:
    DESCRIPTION = ("Load a hand-object sequence (per-frame hands, objects, camera, fps) from the input folder: a "
                   "generic HOI file (.json/.npz, e.g. GraspXL or any simulator's export; HOI_FORMAT.md), a DexYCB "
                   "camera folder (labels_*.npz: seg, joint_2d/3d, MANO pose), an OakInk2 preview export (.npz; "
                   "pickles are never read) or a sandbox clip folder; or a connected sandbox scene.")
    CATEGORY = "Interplay/loaders"
    FUNCTION = "load"
    RETURN_TYPES = (SEQ, "INT", "FLOAT")
    RETURN_NAMES = ("hoi_sequence", "frame_count", "fps")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "format": (list(LOAD_FORMATS), {"default": "generic", "tooltip": (
                "generic: an HOI .json/.npz file; dexycb: a DexYCB camera folder <subject>/<seq>/<serial>; "
                "oakink2: an .npz export of an anno_preview file; sandbox_clip: a sandbox dataset clip folder.")}),
            "path": ("STRING", {"default": "", "interplay_path": "file",
                                "tooltip": "File or folder relative to ComfyUI's input folder (paths outside the "
                                           "pack's folders are refused)."}),
        }, "optional": {
            "start_frame": ("INT", {"default": 0, "min": 0, "max": 100000, "tooltip": "DexYCB: skip this many "
                                                                                       "label files."}),
            "every_nth": ("INT", {"default": 1, "min": 1, "max": 100, "tooltip": "DexYCB: keep one label file in "
                                                                                  "n (PAM: N // 49, i.e. 1)."}),
            "frame_cap": ("INT", {"default": 0, "min": 0, "max": 100000, "tooltip": "DexYCB: most frames; 0 = "
                                                                                     "all."}),
            "mesh_folder": ("STRING", {"default": "", "interplay_path": "folder", "tooltip": "OakInk2: object meshes folder "
                                                                 "(<id>/*.obj) relative to the input folder; "
                                                                 "empty: objects without meshes."}),
            "scene": ("INTERPLAY_SCENE", {"tooltip": "A sandbox scene (e.g. preset 'hoi'); used instead of "
                                                     "'path'."}),
        }}

    def load(self, format, path, start_frame=0, every_nth=1, frame_cap=0, mesh_folder="", scene=None):
        node = "InterplayLoadHOISequence"
        if mesh_folder.strip():  # the path rule holds for every name given, used or not
            runtime.confined_path(mesh_folder, node=node, input_name="mesh_folder")
        if scene is not None:
            seq = _named(node, D.sequence_from_scene, scene)
        elif format == "generic":
            seq = _named(node, hoi.load_hoi, _input_path(node, "path", path))
        elif format == "dexycb":
            seq = _named(node, D.load_dexycb, _input_path(node, "path", path, "folder"), start=start_frame,
                         every_nth=every_nth, max_frames=frame_cap or None)
        elif format == "oakink2":
            meshes = _input_path(node, "mesh_folder", mesh_folder, "folder") if mesh_folder.strip() else None
            seq = _named(node, D.load_oakink2, _input_path(node, "path", path), mesh_root=meshes)
        elif format == "sandbox_clip":
            from ..models.sandbox.dataset import read_clip

            clip = _named(node, read_clip, _input_path(node, "path", path, "folder"))
            seq = _named(node, D.sequence_from_scene, clip)
        else:
            raise ValueError(f"{node}: 'format' must be one of {', '.join(LOAD_FORMATS)}, got {format!r}")
        return (seq, seq.num_frames, seq.fps)


def _default_keyframes() -> str:
    """A reach-and-carry demo: an open hand 25 cm left of a mug-sized box closes on it and carries it right."""
    start = T.canonical_hand(0.0) @ np.diag([1.0, -1.0, -1.0]) + [-0.25, 0.05, 0.65]  # palm toward +y (down)
    grasp = T.canonical_hand(0.8) @ np.diag([1.0, -1.0, -1.0]) + [-0.09, 0.03, 0.62]
    box = np.eye(4)
    box[:3, 3] = [0.0, 0.09, 0.62]
    return json.dumps({"v": 1, "easing": "min_jerk", "hand": {"mode": "joints"}, "keyframes": [
        {"frame": 0, "joints": np.round(start, 4).tolist()},
        {"frame": 24, "joints": np.round(grasp, 4).tolist()},
        {"frame": 48, "wrist": [0.06, -0.02, 0.58]}],
        "objects": [{"label": 14, "name": "025_mug", "primitive": {"type": "box", "size": [0.08, 0.08, 0.08]},
                     "pose": box.tolist()}],
        "attach": {"object": 0, "frame": 24}})


class InterplayHOITrajectory:
    DESCRIPTION = ("Stage I fallback, NON-PHYSICAL: interpolate a hand-object trajectory between keyframes "
                   "(minimum-jerk wrist translation, SLERP wrist rotation, per-joint quaternion SLERP of the finger "
                   "rotations or, for 21 joints, of the bone directions; optionally the object rigidly attached to "
                   "the wrist from a contact frame). It knows nothing of contact or collisions; for PAM's setting "
                   "import a GraspXL (or other simulator) trajectory with Load HOI Sequence instead.")
    CATEGORY = "Interplay/conditions"
    FUNCTION = "make"
    RETURN_TYPES = (SEQ,)
    RETURN_NAMES = ("hoi_sequence",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "keyframes_json": ("STRING", {"default": _default_keyframes(), "multiline": True, "tooltip": (
                "Versioned keyframes {\"v\": 1, \"keyframes\": [{\"frame\", \"joints\" | \"wrist\", \"rotation\", "
                "\"fingers\"}], \"objects\": [...], \"attach\": {...}} (models/conditions/hoi_trajectory.py). The "
                "default is a reach-grasp-carry demo.")}),
            "frames": ("INT", {"default": T.DEFAULT_FRAMES, "min": 1, "max": 4096,
                               "tooltip": "Frames to make (PAM's motion model takes 49)."}),
            "fps": ("FLOAT", {"default": T.DEFAULT_FPS, "min": 0.1, "max": 240.0, "step": 0.5,
                              "tooltip": "Frame rate of the trajectory (PAM's code writes 15)."}),
            "easing": (list(T.EASINGS), {"default": "min_jerk", "tooltip": "min_jerk: rest to rest at every "
                                                                          "keyframe; linear: constant speed."}),
        }, "optional": {
            "start": (SEQ, {"tooltip": "Start pose: this sequence's hand (and object poses) at start_frame "
                                       "becomes the keyframe at frame 0; its camera is used."}),
            "start_frame": ("INT", {"default": 0, "min": -100000, "max": 100000,
                                    "tooltip": "Frame of 'start' to take (negative: from the end)."}),
            "target": (SEQ, {"tooltip": "Target pose: this sequence's hand at target_frame becomes the last "
                                        "keyframe (object poses too, unless attached)."}),
            "target_frame": ("INT", {"default": -1, "min": -100000, "max": 100000,
                                     "tooltip": "Frame of 'target' to take (negative: from the end)."}),
            "mano_right": (_mano_choices(), {"default": "none", "tooltip": "Converted MANO model (MANO Convert) "
                                                                          "for MANO-mode keyframes."}),
            "mano_left": (_mano_choices(), {"default": "none", "tooltip": "Left-hand MANO model, likewise."}),
        }}

    def make(self, keyframes_json, frames, fps, easing, start=None, start_frame=0, target=None, target_frame=-1,
             mano_right="none", mano_left="none"):
        node = "InterplayHOITrajectory"
        try:
            raw = json.loads(keyframes_json) if keyframes_json.strip() else {"v": 1}
        except json.JSONDecodeError as ex:
            raise ValueError(f"{node}: 'keyframes_json' is not valid JSON ({ex})") from ex
        if not isinstance(raw, dict):
            raise ValueError(f"{node}: 'keyframes_json' must be a JSON object {{\"v\": 1, ...}}")
        for key, val in (("frames", frames), ("fps", fps)):
            if key in raw and float(raw[key]) != float(val):
                raise ValueError(f"{node}: 'keyframes_json' says {key} = {raw[key]}, the '{key}' widget {val}; "
                                 "expected one value. Fix: drop it from the JSON or set the widget to it.")
        spec = _named(node, T.parse_trajectory, dict(raw, frames=int(frames), fps=float(fps), easing=easing))
        for seq, f, at in ((start, start_frame, 0), (target, target_frame, spec.frames - 1)):
            if seq is None:
                continue
            k = _named(node, T.keyframe_from_sequence, seq, f)
            obj_poses = k.pop("objects")
            spec.keyframes = [kf for kf in spec.keyframes if int(kf["frame"]) != at] + [dict(k, frame=at)]
            if at == 0:
                if seq.camera is not None and spec.camera is None:
                    c = seq.camera
                    spec.camera = {"K": c.K[0].tolist(), "world_to_camera": c.world_to_camera[0].tolist(),
                                   "width": c.width, "height": c.height}
                if not spec.objects:
                    spec.objects = [{"label": o.label, "name": o.name, "pose": p,
                                     "mesh": None if o.vertices is None else {
                                         "vertices": o.vertices.tolist(),
                                         "faces": None if o.faces is None else o.faces.tolist()}}
                                    for o, p in zip(seq.objects, obj_poses)]
            elif not spec.attach:
                for o, p in zip(spec.objects, obj_poses):
                    o.setdefault("keyframes", []).append({"frame": at, "pose": p})
        for o in spec.objects:
            if o.get("mesh") is None:
                o.pop("mesh", None)
        mano = _load_mano(node, mano_right, mano_left)
        model = None if mano is None else mano.get(spec.side)
        seq = _named(node, T.make_trajectory, spec, mano=model)
        return (seq,)


class InterplayHOIRenderConditions:
    DESCRIPTION = ("Render PAM's condition videos from a hand-object sequence, in the encodings the released "
                   "weights were trained on: depth (inferno, per-video normalised inverse depth, bright = near, "
                   "background black), segmentation (ADE20K palette: hand (92,0,255), YCB id k -> palette[k]) and "
                   "the HO-3D style hand-keypoint drawing; meshes and, without MANO, a capsule hand made from the "
                   "21 joints are point-splatted with a depth test. Outputs the three videos, their first frames "
                   "(plain IMAGEs for core ControlNet nodes), the foreground mask and the PAM condition bundle.")
    CATEGORY = "Interplay/conditions"
    FUNCTION = "render"
    RETURN_TYPES = (COND, "IMAGE", "IMAGE", "IMAGE", "IMAGE", "IMAGE", "IMAGE", "MASK", "FLOAT")
    RETURN_NAMES = ("conditions", "depth", "seg", "hand_keypoints", "depth_first", "seg_first",
                    "hand_keypoints_first", "mask", "fps")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "hoi_sequence": (SEQ, {"tooltip": "From Load HOI Sequence or HOI Trajectory."}),
            "width": ("INT", {"default": 720, "min": 8, "max": 8192, "step": 8,
                              "tooltip": "Output width (PAM: 720); rendered at the camera's size, then resized."}),
            "height": ("INT", {"default": 480, "min": 8, "max": 8192, "step": 8, "tooltip": "Output height "
                                                                                            "(PAM: 480)."}),
            "frames": ("INT", {"default": 49, "min": 0, "max": 4096, "tooltip": "Frames the consumer needs "
                                                                                "(PAM: 49); 0 keeps the "
                                                                                "sequence's."}),
            "frame_mismatch": (["resample", "error"], {"default": "resample", "tooltip": (
                "When the sequence has a different frame count: resample it (same time span) or stop with an "
                "error naming both counts.")}),
            "style": (list(R.STYLES), {"default": "dexycb", "tooltip": (
                "dexycb: PAM's DexYCB encodings (hand (92,0,255), keypoint ellipses 6/3 px); oakink2: its OakInk2 "
                "renderer's (black + ADE20K from 21, ellipses 4/2, right hand white-red).")}),
            "depth_range": (list(R.DEPTH_RANGES), {"default": "background_plane", "tooltip": (
                "background_plane: foreground in the bright part, like DepthCrafter's whole-frame normalisation; "
                "foreground: min-max over hand and objects; fixed: between 'near' and 'background_depth'; "
                "frame: every pixel.")}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 2 ** 32 - 1, "tooltip": "Seed of the surface "
                                                                                     "samples."}),
        }, "optional": {
            "background_depth": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 100.0, "step": 0.01, "tooltip": (
                "Metres; the far end of the depth range (0: auto, the farthest foreground point at 35% "
                "brightness, as in PAM's training depth).")}),
            "near": ("FLOAT", {"default": 0.3, "min": 0.001, "max": 100.0, "step": 0.01,
                               "tooltip": "Metres; the bright end for depth_range 'fixed'."}),
            "points": ("INT", {"default": 25000, "min": 100, "max": 1000000, "tooltip": (
                "Surface samples per mesh / capsule hand (PAM: 25,000).")}),
            "splat_radius": ("INT", {"default": 2, "min": 0, "max": 16, "tooltip": "Disc radius per point, px "
                                                                                   "(PAM: 2)."}),
            "min_area": ("INT", {"default": 50, "min": 0, "max": 100000, "tooltip": (
                "Drop label components smaller than this, px (PAM: 50).")}),
            "use_annotations": ("BOOLEAN", {"default": True, "tooltip": (
                "Use the sequence's annotated label maps and depth (DexYCB) as given instead of rendering them.")}),
            "mano_right": (_mano_choices(), {"default": "none", "tooltip": "Converted MANO model for hands given "
                                                                          "as MANO parameters."}),
            "mano_left": (_mano_choices(), {"default": "none", "tooltip": "Left-hand MANO model, likewise."}),
        }}

    def render(self, hoi_sequence, width, height, frames, frame_mismatch, style, depth_range, seed,
               background_depth=0.0, near=0.3, points=25000, splat_radius=2, min_area=50, use_annotations=True,
               mano_right="none", mano_left="none"):
        node = "InterplayHOIRenderConditions"
        seq = hoi_sequence
        if frames and seq.num_frames != frames:
            if frame_mismatch == "error":
                _named(node, hoi.check_frames, seq, frames, "HOI Render Conditions 'frames'")
            seq = hoi.resample(seq, frames)
        mano = _load_mano(node, mano_right, mano_left)
        c = _named(node, R.render_hoi_conditions, seq, size=(height, width), style=style, depth_range=depth_range,
                   near=near, far=background_depth, points=points, radius=splat_radius, min_area=min_area,
                   seed=seed, mano=mano, use_annotations=use_annotations)
        return (c, c.depth, c.seg, c.hand, c.depth[:1], c.seg[:1], c.hand[:1], c.mask, float(c.fps))


class InterplayDepthColorise:
    DESCRIPTION = ("Turn any depth estimator's output (MiDaS, Depth Anything, DepthCrafter: bright = near) into "
                   "PAM's depth encoding: per-video min-max normalisation, the inferno colour map as DepthCrafter "
                   "writes it, background black outside the mask. With 'conditions' connected, also returns that "
                   "bundle with its depth replaced (resized to it, masked by its segmentation).")
    CATEGORY = "Interplay/conditions"
    FUNCTION = "colorise"
    RETURN_TYPES = ("IMAGE", COND)
    RETURN_NAMES = ("depth", "conditions")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "depth": ("IMAGE", {"tooltip": "Depth video [F,H,W,3] (the channel mean is used)."}),
            "kind": (["disparity", "relative_depth"], {"default": "disparity", "tooltip": (
                "disparity: bright = near (most estimators); relative_depth: bright = far.")}),
            "range_mode": (["frame", "foreground"], {"default": "frame", "tooltip": (
                "frame: normalise over every pixel of the video (DepthCrafter's rule, then masked); foreground: "
                "over the masked pixels only.")}),
        }, "optional": {
            "mask": ("MASK", {"tooltip": "Foreground (hand + objects) [F,H,W] or one frame; without it (and "
                                         "without conditions) nothing is masked."}),
            "conditions": (COND, {"tooltip": "A rendered bundle: its foreground masks the depth, and the bundle is "
                                             "returned with this depth."}),
        }}

    def colorise(self, depth, kind, range_mode, mask=None, conditions=None):
        node = "InterplayDepthColorise"
        if depth.ndim != 4:
            raise ValueError(f"{node}: 'depth' must be an IMAGE batch [F,H,W,C], got {tuple(depth.shape)}")
        d = depth.float().mean(-1)
        F, H, W = d.shape
        if conditions is not None:
            from ..models.video_io import resize_frames

            if conditions.num_frames != F:
                raise ValueError(f"{node}: 'depth' has {F} frames, 'conditions' {conditions.num_frames}; expected "
                                 "equal counts. Fix: select or resample the depth video's frames.")
            H, W = conditions.size
            d = resize_frames(d[..., None], H, W)[..., 0]
            m = conditions.mask
        elif mask is not None:
            m = mask if mask.shape[0] == F else mask[:1].expand(F, -1, -1)
            if tuple(m.shape) != (F, H, W):
                raise ValueError(f"{node}: 'mask' {tuple(mask.shape)} does not match the depth's {F}x{H}x{W}. Fix: "
                                 "resize the mask with the depth video.")
        else:
            m = None
        img = _named(node, R.colorize_depth, d, m, kind=kind, range_mode=range_mode)
        out = None
        if conditions is not None:
            from dataclasses import replace

            out = replace(conditions, depth=img, depth_raw=None, meta=dict(conditions.meta, depth="estimator"))
        return (img, out)


class InterplayMANOConvert:
    DESCRIPTION = ("Convert your own MANO model (MANO_RIGHT.pkl / MANO_LEFT.pkl from mano.is.tue.mpg.de, or an "
                   ".npz export of its arrays) once to .safetensors in models/interplay/mano/. MANO is "
                   "licence-restricted and never shipped. The .pkl is read by a restricted unpickler that builds "
                   "only numpy arrays and inert stand-ins for chumpy / scipy objects; any other content is refused.")
    CATEGORY = "Interplay/loaders"
    FUNCTION = "convert"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("mano_model",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "source": ("STRING", {"default": "MANO_RIGHT.pkl", "interplay_path": "file", "tooltip": "MANO .pkl or .npz, relative to ComfyUI's "
                                                                          "input folder."}),
            "side": (["auto", "right", "left"], {"default": "auto", "tooltip": "auto: from the file name "
                                                                               "(MANO_RIGHT / MANO_LEFT)."}),
        }}

    def convert(self, source, side="auto"):
        from ..models.conditions.mano import convert_mano

        node = "InterplayMANOConvert"
        src = _input_path(node, "source", source)
        sd = None if side == "auto" else side
        name = src.name.lower()
        hand = sd or ("left" if "left" in name else "right" if "right" in name else None)
        if hand is None:
            raise ValueError(f"{node}: cannot tell the hand from {src.name!r}; set 'side' to right or left")
        dst = runtime.model_folders("interplay")[0] / "mano" / f"mano_{hand}.safetensors"
        _named(node, convert_mano, src, dst, side=hand)
        rel = f"{MANO_FOLDER}{dst.name}"
        return {"ui": {"text": [f"wrote models/interplay/{rel}"]}, "result": (rel,)}


class InterplayHOIMetrics:
    DESCRIPTION = ("MPJPE of the hand in a generated video after wrist (root) alignment, PAM's pose metric: the "
                   "generated video's 21 hand keypoints come in as data from any estimator (HaMeR, ...; none is "
                   "bundled) and are compared with the sequence's joints, 3-D in millimetres or 2-D in pixels.")
    CATEGORY = "Interplay/evaluation"
    FUNCTION = "score"
    RETURN_TYPES = ("FLOAT", "STRING")
    RETURN_NAMES = ("mpjpe", "report_json")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "hoi_sequence": (SEQ, {"tooltip": "The reference: the sequence the video was generated from."}),
            "keypoints_json": ("STRING", {"default": "", "multiline": True, "tooltip": (
                "{\"v\": 1, \"joints\": [F][21][3] (metres, camera frame) or [F][21][2] (pixels), optional "
                "\"width\", \"height\" (the pixel frame of 2-D joints; rescaled to the sequence's camera), "
                "optional \"valid\": [F]} in the drawing order (wrist, thumb, index, middle, ring, little).")}),
            "hand": ("INT", {"default": 0, "min": 0, "max": 7, "tooltip": "Which of the sequence's hands."}),
        }}

    def score(self, hoi_sequence, keypoints_json, hand=0):
        node = "InterplayHOIMetrics"
        try:
            d = json.loads(keypoints_json)
        except json.JSONDecodeError as ex:
            raise ValueError(f"{node}: 'keypoints_json' is not valid JSON ({ex})") from ex
        if not isinstance(d, dict) or d.get("v") != 1 or "joints" not in d:
            raise ValueError(f"{node}: 'keypoints_json' must be {{\"v\": 1, \"joints\": [...]}}")
        pred = np.asarray(d["joints"], np.float64)
        seq = hoi_sequence
        if not 0 <= hand < len(seq.hands):
            raise ValueError(f"{node}: 'hand' {hand}: the sequence has {len(seq.hands)} hand(s)")
        if pred.ndim != 3 or pred.shape[1:] not in ((21, 3), (21, 2)):
            raise ValueError(f"{node}: 'keypoints_json' joints must be [F][21][3] or [F][21][2], "
                             f"got {list(pred.shape)}")
        if pred.shape[0] != seq.num_frames:
            raise ValueError(f"{node}: 'keypoints_json' has {pred.shape[0]} frames, the sequence {seq.num_frames}; "
                             "expected equal counts. Fix: resample the sequence to the video's frames.")
        h = seq.hands[hand]
        if pred.shape[2] == 3:
            geo = R.hand_geometry(seq)[hand]
            if geo["joints"] is None:
                raise ValueError(f"{node}: the sequence's hand has no 3-D joints; give 2-D keypoints")
            ref = np.stack([seq.camera.to_camera(geo["joints"][f], f) for f in range(seq.num_frames)])
            scale, unit = 1000.0, "mm"
        else:
            ref, _ = R.project_joints(seq)[hand]
            if ref is None:
                raise ValueError(f"{node}: the sequence's hand has no joints to compare with")
            if "width" in d and "height" in d:
                pred = pred * [seq.camera.width / float(d["width"]), seq.camera.height / float(d["height"])]
            scale, unit = 1.0, "px"
        valid = h.valid & np.asarray(d.get("valid", [True] * seq.num_frames), bool)
        per = M.mpjpe_per_frame(pred, ref, root=0, valid=valid) * scale
        value = float(np.nanmean(per)) if np.isfinite(per).any() else float("nan")
        report = {"v": 1, "mpjpe": value, "unit": unit, "root_aligned": True,
                  "frames_scored": int(np.isfinite(per).sum()),
                  "per_frame": [None if not np.isfinite(x) else round(float(x), 4) for x in per]}
        return {"ui": {"text": [f"MPJPE {value:.2f} {unit} over {report['frames_scored']} frames"]},
                "result": (value, json.dumps(report))}


# ================================================================================ motion branch (PAM §5)
# PAM Branch Loader and PAM Control: the motion branch on CogVideoX-5B-I2V and its control signal. The rest of this
# file (HOI sequences, trajectories, the condition renderer) is the condition side.
PAM_NEW_BRANCH = "(new, zero-initialised from the backbone)"
PAM_DIFFUSERS = "diffusers/"
PAM_SAMPLER_NOTE = (
    "Sampler settings of the release: CogVideoX Sampler with scheduler dpm, steps 50, cfg 6, dynamic_cfg on, "
    "seed 42, 49 frames at 480x720, control_weight 1.0 (the sampler's 0.5 default is KineMask's) and the negative "
    "prompt \"The video is not of a high quality, it has a low resolution. Watermark present in each frame. The "
    "background is solid. Strange body and strange trajectory. Distortion.\"")


def _pam_branch_choices() -> list[str]:
    """[new] + released PAM folders in diffusers/ + PAM branches (folders, pack files) in controlnet/ and
    interplay/."""
    from ..models.control import pam as P
    from . import _choices

    released = []
    for d in runtime.list_models("diffusers", folders_only=True):
        try:
            if P.released_folder(runtime.model_path("diffusers", d)) is not None:
                released.append(PAM_DIFFUSERS + d)
        except (OSError, ValueError):
            continue
    rest = _choices.branch_choices(PAM_NEW_BRANCH, P.KIND)
    return rest[:1] + released + rest[1:]


class InterplayPAMBranchLoader:
    DESCRIPTION = ("Load the PAM motion branch (12 copied CogVideoX blocks driven by depth, segmentation and "
                   "hand-keypoint videos): a released PAM checkpoint (a whole CogVideoX transformer folder, "
                   "class CogVideoXTransformer3DModelTracking, e.g. GasaiYU/PAM dexycb_all_cond) from diffusers/ or "
                   "controlnet/, of which only the branch's tensors are read; a branch file the pack trained "
                   "(interplay/, controlnet/); or a new branch copied from the backbone's first blocks with zero "
                   "projections (for training; it changes nothing until trained). The block count is read from "
                   "the weights. DiffusionAsShader checkpoints (same class name) are recognised and refused. "
                   "The text output says which layout was found. Use it with the CogVideoX-5B-I2V backbone. "
                   + PAM_SAMPLER_NOTE)
    CATEGORY = "Interplay/loaders"
    FUNCTION = "load"
    RETURN_TYPES = ("INTERPLAY_BRANCH", "STRING")
    RETURN_NAMES = ("branch", "layout")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "branch": (_pam_branch_choices(), {"tooltip": "A released PAM folder (diffusers/ or controlnet/), a "
                                               "pack branch file (interplay/, controlnet/), or new.",
                                               "model_folder": ["diffusers", "controlnet", "interplay"],
                                               "interplay_path": "model"}),
            "num_blocks": ("INT", {"default": 12, "min": 1, "max": 42, "tooltip": "New branch only: how many "
                                   "backbone blocks are copied (PAM: the first 12). Files carry their own count."}),
        }, "optional": {
            "backbone": ("INTERPLAY_BACKBONE", {"tooltip": "The CogVideoX-I2V backbone: needed for a new branch; "
                                                "sets dtype and device."}),
        }}

    def load(self, branch, num_blocks, backbone=None):
        from ..models.control import pam as P

        node = "PAM Branch Loader"
        if backbone is not None:
            try:
                P.check_backbone(backbone, node)
            except ValueError as ex:
                raise ValueError(f"{ex} ('backbone')") from None
        if branch == PAM_NEW_BRANCH:
            if backbone is None:
                raise ValueError(f"{node}: a new branch copies the backbone's blocks; connect 'backbone' or pick a "
                                 "released folder or a branch file in 'branch'")
            layers = backbone.denoiser.config.num_layers
            if num_blocks > layers:
                raise ValueError(f"{node}: 'num_blocks' {num_blocks} exceeds the backbone's {layers} blocks; PAM "
                                 "copies the first 12")
            br = P.new_branch(backbone.denoiser, num_blocks=num_blocks)
            text = (f"new zero-initialised PAM branch: copies of backbone blocks 0..{num_blocks - 1}, both combining "
                    "projections zero (the output equals the backbone's until trained)")
            return {"ui": {"text": [text]}, "result": (br, text)}
        if branch.startswith(PAM_DIFFUSERS):
            path = runtime.model_path("diffusers", branch[len(PAM_DIFFUSERS):])
        elif branch.startswith("interplay/"):
            path = runtime.model_path("interplay", branch[len("interplay/"):])
        else:
            path = runtime.model_path("controlnet", branch)
        dev = backbone.device if backbone is not None else runtime.compute_device()
        dt = backbone.dtype if backbone is not None else runtime.default_dtype(dev)
        try:
            br, _, found = P.load_released(path, dtype=dt, device=dev, where=node)
        except ValueError as ex:
            raise ValueError(f"{ex} ('branch' = {branch!r})") from None
        text = f"{found.message}; loaded {br.config['num_blocks']} blocks as {str(dt).replace('torch.', '')} on {dev}"
        return {"ui": {"text": [text]}, "result": (br, text)}


class InterplayPAMControl:
    DESCRIPTION = ("Bundle PAM's condition videos into one control for the PAM motion branch: depth, segmentation "
                   "and hand-keypoint videos (IMAGE, the encodings PAM was trained on: inferno depth with a black "
                   "background, ADE20K-palette segmentation, the HO-3D-style keypoint drawing), all with the "
                   "generation's frame count and size (480x720 for CogVideoX-5B-I2V). Unconnected conditions are "
                   "disabled (all-zero latents, as the released training drops them); the released weights never "
                   "saw tracking or normal videos, so leave those unconnected for them. The conditions are the same "
                   "on both CFG rows. Connect the output to the CogVideoX Sampler's 'control' with the PAM branch in "
                   "'branch' (or through Apply Control). " + PAM_SAMPLER_NOTE)
    CATEGORY = "Interplay/conditions"
    FUNCTION = "build"
    RETURN_TYPES = ("INTERPLAY_CONTROL",)
    RETURN_NAMES = ("control",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "weight": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 5.0, "step": 0.05, "tooltip": "Scales the "
                                 "branch's residuals (PAM: 1.0). Multiplies with the sampler's control_weight."}),
            "start": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": "Fraction of the "
                                "steps before the branch starts."}),
            "end": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": "Fraction of the "
                              "steps after which the branch stops."}),
            "num_frames": ("INT", {"default": 49, "min": 0, "max": 1024, "tooltip": "The sampler's frame count (PAM: "
                                   "49); conditions of another length are refused here. 0: take their count (the "
                                   "sampler still checks it)."}),
        }, "optional": {
            "depth": ("IMAGE", {"tooltip": "Depth video: inferno colour map, near bright, background black."}),
            "seg": ("IMAGE", {"tooltip": "Segmentation video: ADE20K palette, hand (92,0,255), background black."}),
            "hand": ("IMAGE", {"tooltip": "Hand-keypoint video (PAM's skeleton drawing on black)."}),
            "tracking": ("IMAGE", {"tooltip": "Tracking video slot (zero in the released training: leave empty)."}),
            "normal": ("IMAGE", {"tooltip": "Normal-map slot (zero in the released training: leave empty)."}),
        }}

    def build(self, weight, start, end, num_frames, depth=None, seg=None, hand=None, tracking=None, normal=None):
        from ..models.control import pam as P

        node = "PAM Control"
        given = {"depth": depth, "seg": seg, "hand": hand, "tracking": tracking, "normal": normal}
        if all(v is None for v in given.values()):
            raise ValueError(f"{node}: no condition is connected; connect at least one of depth, seg, hand "
                             "(the released weights use all three)")
        for name, v in given.items():
            if v is not None and (v.ndim != 4 or v.shape[-1] != 3):
                raise ValueError(f"{node}: '{name}' must be an IMAGE batch [F,H,W,3]; got {tuple(v.shape)}")
        if not 0.0 <= start < end <= 1.0:
            raise ValueError(f"{node}: 'start' ({start}) and 'end' ({end}) must satisfy 0 <= start < end <= 1")
        try:
            sig = P.hoi_signal(given, weight=weight, start=start, end=end)
        except ValueError as ex:
            raise ValueError(str(ex).replace("PAM conditions:", f"{node}:")) from None
        frames = int(sig.video.shape[0])
        if num_frames and frames != num_frames:
            raise ValueError(f"{node}: the conditions have {frames} frames but 'num_frames' is {num_frames} (what "
                             f"the sampler generates); render them with {num_frames} frames, or set num_frames to "
                             f"{frames} here and on the sampler (CogVideoX takes 8k+1 frames)")
        return (sig,)


MOTION_NODE_CLASS_MAPPINGS = {
    "InterplayPAMBranchLoader": InterplayPAMBranchLoader,
    "InterplayPAMControl": InterplayPAMControl,
}
MOTION_NODE_DISPLAY_NAME_MAPPINGS = {
    "InterplayPAMBranchLoader": "PAM Branch Loader (Interplay)",
    "InterplayPAMControl": "PAM Control (Interplay)",
}
# ============================================================================ end of motion branch section


NODE_CLASS_MAPPINGS = {
    "InterplayLoadHOISequence": InterplayLoadHOISequence,
    "InterplayHOITrajectory": InterplayHOITrajectory,
    "InterplayHOIRenderConditions": InterplayHOIRenderConditions,
    "InterplayDepthColorise": InterplayDepthColorise,
    "InterplayMANOConvert": InterplayMANOConvert,
    "InterplayHOIMetrics": InterplayHOIMetrics,
    **MOTION_NODE_CLASS_MAPPINGS,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "InterplayLoadHOISequence": "Load HOI Sequence (Interplay)",
    "InterplayHOITrajectory": "HOI Trajectory (Interplay)",
    "InterplayHOIRenderConditions": "HOI Render Conditions (Interplay)",
    "InterplayDepthColorise": "Depth Colorise (Interplay)",
    "InterplayMANOConvert": "MANO Convert (Interplay)",
    "InterplayHOIMetrics": "HOI Metrics (Interplay)",
    **MOTION_NODE_DISPLAY_NAME_MAPPINGS,
}
