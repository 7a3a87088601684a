"""Sandbox nodes: make a synthetic interaction scene, preview it, read one object's ground truth."""
from __future__ import annotations

import torch

from ..models.sandbox.presets import KEYS, PRESETS, generate_scene
from ..models.sandbox.types import SceneClip


def _scene_outputs(clip: SceneClip):
    frames = torch.from_numpy(clip.frames).float() / 255.0
    if clip.driven:
        driven = torch.from_numpy(clip.masks[clip.driven].any(0)).float()
    else:  # pusher scenes: the hand is what drives the scene (InterDyn's control signal)
        driven = torch.from_numpy(clip.pusher_mask).float()
    return frames, driven, clip, float(clip.fps)


class InterplaySandboxScene:
    DESCRIPTION = ("Simulate and render a synthetic physics scene (boxes and cylinders sliding, colliding, pushed by "
                   "a hand or filmed by a moving camera). Returns the frames, the mask of the driven objects (the "
                   "pusher's mask in 'pusher' scenes), the scene with all ground truth, and its fps. The same seed "
                   "gives the same scene.")
    CATEGORY = "Interplay/sandbox"
    FUNCTION = "make"
    RETURN_TYPES = ("IMAGE", "MASK", "INTERPLAY_SCENE", "FLOAT")
    RETURN_NAMES = ("frames", "driven_mask", "scene", "fps")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "preset": (list(PRESETS), {"default": "push", "tooltip": (
                "push: 1-2 objects start moving and hit others (KineMask); pusher: a hand pushes an object "
                "(InterDyn); multi: several interacting objects (MATRIX); camera: static scene, moving camera "
                "(GameCraft); hoi: a hand pushes or carries an object, its joints kept for PAM's conditions.")}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 2 ** 63 - 1, "control_after_generate": True,
                             "tooltip": "Scene seed: layout, colours, speeds, camera. Same seed, same scene."}),
            # maxima a large workstation can hold (~56 GB at 1536 x 1536 x 512); the memory check refuses more
            "width": ("INT", {"default": 64, "min": 16, "max": 1536, "step": 8, "tooltip": "Frame width (px)."}),
            "height": ("INT", {"default": 64, "min": 16, "max": 1536, "step": 8, "tooltip": "Frame height (px)."}),
            "frames": ("INT", {"default": 13, "min": 1, "max": 512, "tooltip": "Number of frames."}),
            "fps": ("FLOAT", {"default": 8.0, "min": 1.0, "max": 120.0, "step": 1.0,
                              "tooltip": "Output frame rate; the physics runs at 240 Hz and is sampled at this rate."}),
        }, "optional": {
            "camera_keys": ("STRING", {"default": "", "tooltip": (
                "Optional scripted camera: one key per frame step, comma-separated, from W S A D (move) and "
                "left right (turn), '-' for none, e.g. 'W,W,W,left,left'. Empty: the preset's own camera.")}),
        }}

    def make(self, preset, seed, width, height, frames, fps, camera_keys=""):
        if preset not in PRESETS:
            raise ValueError(f"InterplaySandboxScene: 'preset' must be one of {', '.join(PRESETS)}; got {preset!r}")
        keys = None
        if camera_keys and camera_keys.strip():
            keys = [k.strip() for k in camera_keys.split(",")]
            bad = [k for k in keys if k not in KEYS + ("-", "")]
            if bad:
                raise ValueError(f"InterplaySandboxScene: 'camera_keys' accepts {', '.join(KEYS)} or '-' separated by "
                                 f"commas; got {bad[0]!r}. Fix: e.g. 'W,W,left'.")
            keys = ["" if k == "-" else k for k in keys]
        from ..models import memory

        memory.check("InterplaySandboxScene", memory.sandbox_scene(int(height), int(width), int(frames)), "cpu",
                     f"a smaller width/height or fewer frames than {width} x {height} x {frames} (scenes for "
                     "training are usually 64 x 64 to 720 x 480, 9 to 49 frames)")
        clip = generate_scene(preset, int(seed), (int(height), int(width)), frames=int(frames), fps=float(fps),
                              camera_keys=keys)
        return _scene_outputs(clip)


class InterplayLoadSandboxClip:
    DESCRIPTION = ("Read one clip folder in the sandbox dataset format (clip.json + data.npz + frames/ or video.mp4; "
                   "see FORMAT.md) as a scene, e.g. a held-out reference for evaluation or a user's own clip.")
    CATEGORY = "Interplay/sandbox"
    FUNCTION = "load"
    RETURN_TYPES = ("IMAGE", "MASK", "INTERPLAY_SCENE", "FLOAT")
    RETURN_NAMES = ("frames", "driven_mask", "scene", "fps")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "clip_folder": ("STRING", {"default": "", "interplay_path": "folder", "tooltip": (
                "A clip folder (the one holding clip.json): relative to ComfyUI's input (then output) folder, or "
                "absolute inside its input, output, temp or model folders.")}),
        }}

    def load(self, clip_folder):
        from ..models import runtime
        from ..models.sandbox.dataset import ClipError, read_clip

        p = runtime.confined_path(clip_folder, node="InterplayLoadSandboxClip", input_name="clip_folder",
                                  search=("input", "output"))
        if not (p / "clip.json").is_file():
            raise FileNotFoundError(f"InterplayLoadSandboxClip: 'clip_folder' has no clip.json; searched {p}")
        try:
            clip = read_clip(p)
        except ClipError as ex:
            raise ValueError(f"InterplayLoadSandboxClip: 'clip_folder' is not a readable sandbox clip: {ex}") from ex
        return _scene_outputs(clip)


class InterplaySandboxPreview:
    DESCRIPTION = ("Show a scene's ground truth: object masks tinted (pusher in magenta) and a white arrow per moving "
                   "object pointing where it goes over the next few frames.")
    CATEGORY = "Interplay/sandbox"
    FUNCTION = "preview"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("preview",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "scene": ("INTERPLAY_SCENE", {"tooltip": "A scene from Sandbox Scene or Load Sandbox Clip."}),
            "mask_opacity": ("FLOAT", {"default": 0.45, "min": 0.0, "max": 1.0, "step": 0.05,
                                       "tooltip": "How strongly masks are tinted (0 = off)."}),
            "arrow_frames": ("FLOAT", {"default": 3.0, "min": 0.0, "max": 50.0, "step": 0.5, "tooltip": (
                "Arrow length in frames of motion at the current image velocity (0 = no arrows).")}),
            "upscale": ("INT", {"default": 4, "min": 1, "max": 16, "tooltip": (
                "Integer zoom before drawing arrows, so small (64 px) scenes stay readable.")}),
        }}

    def preview(self, scene, mask_opacity, arrow_frames, upscale):
        from ..models.sandbox.preview import preview_frames

        if not isinstance(scene, SceneClip):
            raise ValueError(f"InterplaySandboxPreview: 'scene' must be an INTERPLAY_SCENE; got {type(scene).__name__}")
        u8 = preview_frames(scene, alpha=float(mask_opacity), arrow_frames=float(arrow_frames),
                            arrows=arrow_frames > 0, upscale=int(upscale))
        return (torch.from_numpy(u8).float() / 255.0,)


class InterplaySceneInfo:
    DESCRIPTION = ("One object of a scene: its mask over all frames, the scene caption, and its frame-0 velocity "
                   "(m/s, +x right, +y up the image: the axes of the velocity-mask control), so a workflow can "
                   "drive the control with ground-truth velocity. object_index -1 gives the pusher's mask.")
    CATEGORY = "Interplay/sandbox"
    FUNCTION = "info"
    RETURN_TYPES = ("MASK", "STRING", "FLOAT", "FLOAT", "INT")
    RETURN_NAMES = ("mask", "caption", "vx", "vy", "num_objects")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "scene": ("INTERPLAY_SCENE", {"tooltip": "A scene from Sandbox Scene or Load Sandbox Clip."}),
            "object_index": ("INT", {"default": 0, "min": -1, "max": 63, "tooltip": (
                "Object number (0 = the first driven object in push/multi scenes); -1 = the pusher.")}),
        }}

    def info(self, scene, object_index):
        if not isinstance(scene, SceneClip):
            raise ValueError(f"InterplaySceneInfo: 'scene' must be an INTERPLAY_SCENE; got {type(scene).__name__}")
        n = len(scene.objects) if scene.objects else int(scene.masks.shape[0])
        if object_index == -1:
            return (torch.from_numpy(scene.pusher_mask).float(), scene.caption, 0.0, 0.0, n)
        if not 0 <= object_index < scene.masks.shape[0]:
            raise ValueError(f"InterplaySceneInfo: 'object_index' must be -1 (pusher) or 0..{scene.masks.shape[0] - 1} "
                             f"for this scene of {scene.masks.shape[0]} objects; got {object_index}")
        v = scene.vel_control[object_index, 0]
        return (torch.from_numpy(scene.masks[object_index]).float(), scene.caption, float(v[0]), float(v[1]), n)


NODE_CLASS_MAPPINGS = {
    "InterplaySandboxScene": InterplaySandboxScene,
    "InterplayLoadSandboxClip": InterplayLoadSandboxClip,
    "InterplaySandboxPreview": InterplaySandboxPreview,
    "InterplaySceneInfo": InterplaySceneInfo,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "InterplaySandboxScene": "Sandbox Scene (Interplay)",
    "InterplayLoadSandboxClip": "Load Sandbox Clip (Interplay)",
    "InterplaySandboxPreview": "Sandbox Preview (Interplay)",
    "InterplaySceneInfo": "Scene Info (Interplay)",
}
