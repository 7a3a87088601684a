"""InterDyn on SVD: the branch loader, the driving-mask renderer and its counterfactual edits, a compare view (the SVD
Loader and the sampler, InterplayInterDynSampler, are the family's, in nodes/svd.py)."""
from __future__ import annotations

import json

import torch

from ..models import runtime
from . import _choices
from ..models.control.base import ControlSignal

DIFFUSERS_PREFIX = _choices.DIFFUSERS_PREFIX
NEW_BRANCH = "(new, zero-initialised from the backbone)"


def _branch_choices() -> list[str]:
    return _choices.branch_choices(NEW_BRANCH, "interdyn")


class InterplayInterDynBranchLoader:
    DESCRIPTION = ("Load the InterDyn control branch: the released controlnet/ folder (config.json + "
                   "diffusion_pytorch_model.safetensors), a file trained by the pack, or a new zero-initialised "
                   "copy of the backbone's encoder (for training). residual rule 'quirk' reproduces the released "
                   "UNet (skips receive their residual 4,4,4,4,3,3,3,2,2,2,1,1 times); 'once' is plain ControlNet.")
    CATEGORY = "Interplay/loaders"
    FUNCTION = "load"
    RETURN_TYPES = ("INTERPLAY_BRANCH",)
    RETURN_NAMES = ("branch",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "branch": (_branch_choices(), {"tooltip": "A folder or file in controlnet/ (or interplay/).",
                                           "model_folder": ["controlnet", "interplay"], "interplay_path": "model"}),
            "residual_rule": (["auto", "quirk", "once"], {"default": "auto", "tooltip": "auto: the file's rule; "
                              "the release (no rule recorded) uses 'quirk', new branches 'once'."}),
        }, "optional": {
            "backbone": ("INTERPLAY_BACKBONE", {"tooltip": "Needed for a new branch; sets dtype and device."}),
        }}

    def load(self, branch, residual_rule, backbone=None):
        from ..models.control import interdyn

        rule = None if residual_rule == "auto" else residual_rule
        if branch == NEW_BRANCH:
            if backbone is None:
                raise ValueError("InterDyn Branch Loader: a new branch copies the backbone's encoder; connect "
                                 "'backbone' or pick a file")
            return (interdyn.new_branch(backbone.denoiser, residual_rule=rule or "once"),)
        if branch.startswith("interplay/"):
            path = runtime.model_path("interplay", branch[len("interplay/"):])
        else:
            path = runtime.model_path("controlnet", branch)
        dev = backbone.device if backbone is not None else runtime.compute_device()
        dt = backbone.dtype if backbone is not None else runtime.default_dtype(dev)
        return (interdyn.load_branch(path, dtype=dt, device=dev, residual_rule=rule),)


def _parse_prompts(text: str) -> dict:
    if not text or not text.strip():
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as ex:
        raise ValueError(f"Driving Mask: 'prompts' is not JSON ({ex}); expected "
                         '{"v": 1, "frames": {"0": {"box": [x0, y0, x1, y1]}}}') from ex
    if not isinstance(data, dict) or data.get("v") != 1 or not isinstance(data.get("frames"), dict):
        raise ValueError('Driving Mask: \'prompts\' must be {"v": 1, "frames": {"<frame>": {"points": [[x, y]], '
                         f'"labels": [1], "box": [x0, y0, x1, y1]}}}}; got {text[:120]!r}')
    return {int(k): v for k, v in data["frames"].items()}


class InterplayDrivingMask:
    DESCRIPTION = ("Render InterDyn's driving-mask video: the driver (a hand) white on black, every frame, as a "
                   "3-channel control in [-1, 1]. The masks come from a MASK batch (painted or from any "
                   "segmenter), or from SAM2 tracking the driver through 'video' from clicks or a box on frame "
                   "0 (corrections on later frames). Frames are resampled to num_frames (by time when src_fps is "
                   "set) and the size fitted like the release (cover, then crop). 'first_frame' is the video's "
                   "frame 0 put through the same crop: use it as the sampler's image so the masks line up.")
    CATEGORY = "Interplay/conditions"
    FUNCTION = "render"
    RETURN_TYPES = ("INTERPLAY_CONTROL", "IMAGE", "IMAGE", "IMAGE", "MASK")
    RETURN_NAMES = ("control", "condition", "preview", "first_frame", "masks")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "num_frames": ("INT", {"default": 14, "min": 2, "max": 64, "tooltip": "Frames of the output (14 "
                               "for the released model)."}),
            "height": ("INT", {"default": 256, "min": 64, "max": 2048, "step": 64, "tooltip": "Output height "
                               "(256 for the released model)."}),
            "width": ("INT", {"default": 384, "min": 64, "max": 2048, "step": 64, "tooltip": "Output width "
                              "(384 for the released model)."}),
            "src_fps": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 240.0, "tooltip": "Frame rate of the "
                                  "driving video; 0 spreads the output evenly over the whole clip."}),
            "fps": ("FLOAT", {"default": 6.0, "min": 1.0, "max": 60.0, "tooltip": "Target frame rate (6 for the "
                              "released model; matches the sampler's fps id)."}),
            "start_frame": ("INT", {"default": 0, "min": 0, "max": 100000, "tooltip": "First source frame used "
                                    "when src_fps is set."}),
            "crop": (["center", "mask_aware"], {"default": "center", "tooltip": "center, or centred on the "
                                                "driver's bounding box over all frames."}),
        }, "optional": {
            "masks": ("MASK", {"tooltip": "Driver masks [F,H,W] (painted, or from a segmenter)."}),
            "video": ("IMAGE", {"tooltip": "The driving video; tracked with SAM2 when 'masks' is not given."}),
            "sam2": ("INTERPLAY_SAM2", {"tooltip": "SAM2 model for tracking the driver through 'video'."}),
            "prompts": ("STRING", {"default": "", "multiline": True, "tooltip": 'SAM2 prompts: {"v": 1, "frames": '
                                   '{"0": {"box": [x0, y0, x1, y1]}}} or points + labels; pixel coordinates.'}),
        }}

    def render(self, num_frames, height, width, src_fps, fps, start_frame, crop, masks=None, video=None,
               sam2=None, prompts=""):
        from ..models.conditions import hand_mask as hm

        if masks is None:
            if video is None or sam2 is None:
                raise ValueError("Driving Mask: connect 'masks', or 'video' + 'sam2' with 'prompts' to track the "
                                 "driver")
            masks = hm.masks_from_video(sam2, video, _parse_prompts(prompts))
        if masks.ndim == 2:
            masks = masks[None]
        if video is not None and tuple(video.shape[:3]) != tuple(masks.shape):
            raise ValueError(f"Driving Mask: 'video' {tuple(video.shape[:3])} and 'masks' {tuple(masks.shape)} "
                             "differ in frames or size; the masks must be of this video")
        out = hm.render_driving_mask(masks, num_frames=num_frames, height=height, width=width,
                                     src_fps=src_fps or None, fps=fps, start=start_frame, crop=crop, frames=video)
        sig = ControlSignal(out["condition"], "hand_mask", meta={"fps": fps, "indices": out["indices"],
                                                                "masks": out["masks"], "frames": out["frames"]})
        first = out["frames"][:1] if out["frames"] is not None else torch.zeros(1, height, width, 3)
        return (sig, (out["condition"] + 1) / 2, out["preview"], first, out["masks"].float())


class InterplayDrivingMaskEdit:
    DESCRIPTION = ("Counterfactual edit of a driving mask: remove the driver after frame 0, shift it (ramping from "
                   "frame 0), delay or speed up its motion, keep only some frames, freeze it, or reverse it. Same "
                   "image, another driving motion: compare what the model predicts.")
    CATEGORY = "Interplay/conditions"
    FUNCTION = "edit"
    RETURN_TYPES = ("INTERPLAY_CONTROL", "IMAGE", "IMAGE")
    RETURN_NAMES = ("control", "condition", "preview")

    @classmethod
    def INPUT_TYPES(cls):
        from ..models.conditions.hand_mask import EDIT_OPS

        return {"required": {
            "control": ("INTERPLAY_CONTROL", {"tooltip": "A driving mask from the Driving Mask node."}),
            "op": (list(EDIT_OPS), {"default": "remove", "tooltip": "remove / shift / time_shift / time_warp / "
                                    "keep_frames / freeze_after / reverse."}),
            "dx": ("INT", {"default": 0, "min": -4096, "max": 4096, "tooltip": "shift: pixels right at the last "
                           "frame."}),
            "dy": ("INT", {"default": 0, "min": -4096, "max": 4096, "tooltip": "shift: pixels down at the last "
                           "frame."}),
            "frames": ("STRING", {"default": "0", "tooltip": "time_shift: delay in frames; freeze_after: the frame "
                                  "to hold; keep_frames: list like '0-5, 9'."}),
            "speed": ("FLOAT", {"default": 1.0, "min": 0.05, "max": 20.0, "tooltip": "time_warp: playback "
                                "speed factor."}),
            "from_frame": ("INT", {"default": 1, "min": 0, "max": 4096, "tooltip": "remove: first frame without "
                               "the driver."}),
        }}

    def edit(self, control, op, dx, dy, frames, speed, from_frame):
        from ..models.conditions import hand_mask as hm

        if control.kind != "hand_mask":
            raise ValueError(f"Driving Mask Edit: 'control' is a {control.kind!r} signal; expected a driving mask")
        m = hm.condition_to_mask(control.video)
        arg = frames
        if op in ("time_shift", "freeze_after"):
            try:
                arg = int(str(frames).strip())
            except ValueError as ex:
                raise ValueError(f"Driving Mask Edit: 'frames' must be a whole number for {op}; got {frames!r}") \
                    from ex
        e = hm.edit_masks(m, op, dx=dx, dy=dy, frames=arg, speed=speed, from_frame=from_frame)
        cond = hm.mask_to_condition(e)
        base = control.meta.get("frames")
        preview = hm.overlay(base if base is not None else torch.full((*e.shape, 3), 0.15), e)
        sig = control.replace(video=cond, meta=dict(control.meta, masks=e, edit=op))
        return (sig, (cond + 1) / 2, preview)


class InterplayInterDynCompare:
    DESCRIPTION = ("Show videos side by side (e.g. the same image under two driving motions), each with its "
                   "driving-mask preview above it, and save the result as an animated WebP.")
    CATEGORY = "Interplay/video"
    FUNCTION = "compare"
    OUTPUT_NODE = True
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("grid",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "video_a": ("IMAGE", {"tooltip": "First video [F,H,W,3]."}),
            "fps": ("FLOAT", {"default": 6.0, "min": 1.0, "max": 60.0, "tooltip": "Playback rate of the file."}),
            "filename_prefix": ("STRING", {"default": "interdyn/compare", "interplay_path": "save",
                                           "tooltip": "Output file prefix (a name or subfolder of the output "
                                                      "folder)."}),
        }, "optional": {
            "video_b": ("IMAGE", {"tooltip": "Second video, same frames and size."}),
            "preview_a": ("IMAGE", {"tooltip": "Driving-mask preview shown above video_a."}),
            "preview_b": ("IMAGE", {"tooltip": "Driving-mask preview shown above video_b."}),
        }}

    def compare(self, video_a, fps, filename_prefix, video_b=None, preview_a=None, preview_b=None):
        cols = []
        for name, vid, prev in (("video_a", video_a, preview_a), ("video_b", video_b, preview_b)):
            if vid is None:
                continue
            if prev is not None:
                if prev.shape[0] != vid.shape[0] or prev.shape[2] != vid.shape[2]:
                    raise ValueError(f"InterDyn Compare: the preview of '{name}' is {tuple(prev.shape[:3])}, "
                                     f"the video {tuple(vid.shape[:3])}; they need the same frames and width")
                vid = torch.cat([prev, vid], dim=1)
            cols.append(vid)
        if len(cols) == 2 and cols[0].shape[:2] != cols[1].shape[:2]:
            raise ValueError(f"InterDyn Compare: 'video_a' {tuple(cols[0].shape[:3])} and 'video_b' "
                             f"{tuple(cols[1].shape[:3])} differ in frames or height")
        grid = torch.cat(cols, dim=2).float().clamp(0, 1)
        ui = _save_webp(grid, fps, filename_prefix)
        return {"ui": {"images": [ui]}, "result": (grid,)}


def _save_webp(frames: torch.Tensor, fps: float, prefix: str) -> dict:
    from PIL import Image

    from ..models import video_io as vio

    try:  # one past the highest existing number (never overwrites an earlier run's file)
        path, name, sub = vio.counter_path(runtime.output_directory(), prefix, "webp")
    except ValueError as e:
        raise ValueError(f"InterDyn Compare: {e}") from None
    imgs = [Image.fromarray((f.numpy() * 255).round().astype("uint8")) for f in frames]
    imgs[0].save(path, save_all=True, append_images=imgs[1:], duration=int(1000 / fps), loop=0, lossless=True)
    return {"filename": name, "subfolder": sub, "type": "output"}


NODE_CLASS_MAPPINGS = {
    "InterplayInterDynBranchLoader": InterplayInterDynBranchLoader,
    "InterplayDrivingMask": InterplayDrivingMask,
    "InterplayDrivingMaskEdit": InterplayDrivingMaskEdit,
    "InterplayInterDynCompare": InterplayInterDynCompare,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "InterplayInterDynBranchLoader": "InterDyn Branch Loader (Interplay)",
    "InterplayDrivingMask": "Driving Mask (Interplay)",
    "InterplayDrivingMaskEdit": "Driving Mask Edit (Interplay)",
    "InterplayInterDynCompare": "Compare Videos (Interplay)",
}
