"""SAM2 nodes: load, segment an image from clicks/boxes, propagate a mask through frames, convert a .pt."""
from __future__ import annotations

import torch

from ..models import runtime
from ..models.segmentation import sam2 as S

CATEGORY = "Interplay/segmentation"


def _named(node: str, fn, *args, **kwargs):
    """Call fn and prefix user-input errors with the node's name."""
    try:
        return fn(*args, **kwargs)
    except ValueError as e:
        raise ValueError(f"{node}: {e}") from None


def _config_choices() -> list[str]:
    return ["auto"] + S.config_names() + runtime.list_models("sam2", extensions=(".yaml", ".yml"))


class InterplaySam2Loader:
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = ("INTERPLAY_SAM2",)
    RETURN_NAMES = ("sam2",)
    DESCRIPTION = ("Load a SAM2 or SAM2.1 model from models/sam2 (.safetensors only, e.g. Kijai/sam2-safetensors; "
                   "convert official .pt checkpoints once with Convert SAM2 Checkpoint). Needs the `sam2` package.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "weights": (runtime.list_models("sam2"), {"tooltip": "SAM2 weights (.safetensors) in models/sam2.",
                                                      "model_folder": "sam2", "interplay_path": "model"}),
            "config": (_config_choices(), {"default": "auto", "model_folder": "sam2", "interplay_path": "model",
                                           "tooltip": "Architecture: auto reads it from the file name "
                                                      "(sam2.1_hiera_tiny -> sam2.1_hiera_t); or a config YAML "
                                                      "placed in models/sam2."}),
            "device": (["auto", "cpu"], {"default": "auto", "tooltip": "auto: ComfyUI's compute device."}),
            "precision": (["auto", "fp32", "bf16", "fp16"], {"default": "auto",
                                                             "tooltip": "auto: bf16 autocast on GPU, fp32 on CPU."}),
        }}

    def load(self, weights, config="auto", device="auto", precision="auto"):
        node = "Load SAM2"
        path = runtime.model_path("sam2", weights)
        if config == "auto":
            config = _named(node, S.guess_config, weights)
        elif config not in S.CONFIGS:
            config = str(runtime.model_path("sam2", config))
        dev = runtime.compute_device() if device == "auto" else torch.device("cpu")
        dtype = torch.float32 if dev.type == "cpu" else _named(node, runtime.parse_dtype, precision, dev)
        return (_named(node, S.load_sam2, config, path, device=dev, dtype=dtype),)


class InterplaySam2Segment:
    CATEGORY = CATEGORY
    FUNCTION = "segment"
    RETURN_TYPES = ("MASK", "IMAGE")
    RETURN_NAMES = ("mask", "overlay")
    DESCRIPTION = ("Segment an object with SAM2 from clicks and/or a box, on every image of the batch. Prompts are "
                   'JSON {"v":1,"points":[[x,y,1|0]],"box":[x0,y0,x1,y1]} in image pixels (1 = on the object, '
                   "0 = not on it).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "sam2": ("INTERPLAY_SAM2", {"tooltip": "From Load SAM2."}),
            "image": ("IMAGE", {"tooltip": "Image(s) to segment; the same prompts apply to each."}),
            "prompts": ("STRING", {"default": '{"v": 1, "points": [[256, 256, 1]]}', "multiline": True,
                                   "tooltip": 'JSON {"v":1,"points":[[x,y,1|0],...],"box":[x0,y0,x1,y1]}; '
                                              "points and/or box, image pixels."}),
        }}

    def segment(self, sam2, image, prompts):
        node = "SAM2 Segment"
        p = _named(node, S.parse_image_prompts, prompts)
        tick = runtime.progress(image.shape[0], "SAM2 segment")
        masks = []
        for b in range(image.shape[0]):
            masks.append(_named(node, S.segment_image, sam2, image[b, ..., :3], **p))
            tick.update(1)
        m = torch.stack(masks).float()
        return (m, S.mask_overlay(image[..., :3], m))


class InterplaySam2Propagate:
    CATEGORY = CATEGORY
    FUNCTION = "propagate"
    RETURN_TYPES = ("MASK", "IMAGE")
    RETURN_NAMES = ("masks", "overlay")
    DESCRIPTION = ("Track one object through the frames with SAM2's video predictor. Prompt it with clicks/boxes "
                   'on any frames (JSON {"v":1,"frames":{"0":{"points":[[x,y,1]],"box":[x0,y0,x1,y1]}}}) and/or a '
                   "mask on frame `mask_frame`. Tracks forward from the first prompted frame and back to frame 0.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "sam2": ("INTERPLAY_SAM2", {"tooltip": "From Load SAM2."}),
                "frames": ("IMAGE", {"tooltip": "The video frames [F,H,W,3]."}),
                "prompts": ("STRING", {"default": '{"v": 1, "frames": {}}', "multiline": True,
                                       "tooltip": 'JSON {"v":1,"frames":{"<frame>":{"points":[[x,y,1|0]],'
                                                  '"box":[x0,y0,x1,y1]}}} in pixels; may be empty when a mask '
                                                  "is connected."}),
            },
            "optional": {
                "mask": ("MASK", {"tooltip": "Object mask on frame `mask_frame` (its first mask is used); "
                                             "replaces clicks on that frame."}),
                "mask_frame": ("INT", {"default": 0, "min": 0, "max": 100000,
                                       "tooltip": "Frame index the mask belongs to."}),
            },
        }

    def propagate(self, sam2, frames, prompts, mask=None, mask_frame=0):
        node = "SAM2 Propagate"
        F_, H, W = frames.shape[:3]
        p = {} if (mask is not None and _no_frames(prompts)) else _named(node, S.parse_video_prompts, prompts, F_)
        if mask is not None:
            m = torch.as_tensor(mask)
            m = m[0] if m.ndim == 3 else m
            if tuple(m.shape) != (H, W):
                raise ValueError(f"{node}: `mask` is {m.shape[-1]}x{m.shape[-2]} but `frames` are {W}x{H}; they must "
                                 "match")
            if not bool((m >= 0.5).any()):
                raise ValueError(f"{node}: `mask` is empty (no pixel >= 0.5); give a mask covering the object")
            if not 0 <= mask_frame < F_:
                raise ValueError(f"{node}: `mask_frame` must be in 0..{F_ - 1}; got {mask_frame}")
            p[mask_frame] = {"mask": m}
        out = _named(node, S.propagate_video, sam2, frames[..., :3], p).float()
        return (out, S.mask_overlay(frames[..., :3], out))


def _no_frames(text: str) -> bool:
    import json

    if not text.strip():
        return True
    try:
        return json.loads(text).get("frames") in ({}, None)
    except (json.JSONDecodeError, AttributeError):
        return False


class InterplaySam2Convert:
    CATEGORY = CATEGORY
    FUNCTION = "convert"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("weights",)
    DESCRIPTION = ("Convert an official SAM2 .pt checkpoint in models/sam2 to .safetensors next to it (read with "
                   "torch.load(weights_only=True): tensors only, no code runs). Run once, then pick the new file in "
                   "Load SAM2.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "checkpoint": (runtime.list_models("sam2", extensions=(".pt", ".pth")),
                           {"tooltip": "Official .pt checkpoint in models/sam2 (e.g. sam2.1_hiera_tiny.pt).",
                            "model_folder": "sam2", "interplay_path": "model"}),
            "config": (["auto", "none"] + S.config_names(),
                       {"default": "auto", "tooltip": "Checks keys and shapes against this config before writing; "
                                                      "auto reads it from the file name, none skips the check."}),
        }}

    def convert(self, checkpoint, config="auto"):
        node = "Convert SAM2 Checkpoint"
        src = runtime.model_path("sam2", checkpoint)
        cfg = None if config == "none" else (_named(node, S.guess_config, checkpoint) if config == "auto" else config)
        out = _named(node, S.convert_sam2_checkpoint, src, src.with_suffix(".safetensors"), config=cfg)
        rel = out.resolve().relative_to(_folder_of(out)).as_posix()
        return {"ui": {"text": [f"wrote {rel}"]}, "result": (rel,)}


def _folder_of(path):
    """The models/sam2 folder holding ``path`` (names in the loader's list are relative to it)."""
    for base in runtime.model_folders("sam2"):
        base = base.resolve()
        if base in path.resolve().parents:
            return base
    return path.resolve().parent


NODE_CLASS_MAPPINGS = {
    "InterplaySam2Loader": InterplaySam2Loader,
    "InterplaySam2Segment": InterplaySam2Segment,
    "InterplaySam2Propagate": InterplaySam2Propagate,
    "InterplaySam2Convert": InterplaySam2Convert,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "InterplaySam2Loader": "Load SAM2 (Interplay)",
    "InterplaySam2Segment": "SAM2 Segment (Interplay)",
    "InterplaySam2Propagate": "SAM2 Propagate (Interplay)",
    "InterplaySam2Convert": "Convert SAM2 Checkpoint (Interplay)",
}
