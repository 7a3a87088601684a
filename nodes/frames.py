"""Frame picking for IMAGE batches (so the pack's workflows need no other pack for "take frame 0")."""
from __future__ import annotations


class InterplaySelectFrames:
    DESCRIPTION = ("Take `count` consecutive frames of an IMAGE batch starting at `start` (negative counts from the "
                   "end). count 1 at start 0 gives the first frame, the usual image-to-video input.")
    CATEGORY = "Interplay/video"
    FUNCTION = "select"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("frames",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "images": ("IMAGE", {"tooltip": "Frames [F,H,W,3]."}),
            "start": ("INT", {"default": 0, "min": -4096, "max": 4096,
                              "tooltip": "First frame index; -1 is the last frame."}),
            "count": ("INT", {"default": 1, "min": 1, "max": 4096, "tooltip": "How many frames to take."}),
        }}

    def select(self, images, start, count):
        n = images.shape[0]
        i = start + n if start < 0 else start
        node = type(self).__name__
        if not 0 <= i < n:
            raise ValueError(f"{node}: start={start} is outside the batch of {n} frames; "
                             f"use 0..{n - 1} or -{n}..-1")
        if i + count > n:
            raise ValueError(f"{node}: start={start} with count={count} needs {i + count} frames; "
                             f"the batch has {n}. Lower count to at most {n - i}.")
        return (images[i:i + count].clone(),)


class InterplaySelectMasks(InterplaySelectFrames):
    DESCRIPTION = ("Take `count` consecutive masks of a MASK batch starting at `start` (negative counts from the "
                   "end): e.g. an object's frame-0 mask for the Arrow Painter.")
    CATEGORY = "Interplay/video"
    RETURN_TYPES = ("MASK",)
    RETURN_NAMES = ("masks",)

    @classmethod
    def INPUT_TYPES(cls):
        spec = super().INPUT_TYPES()
        spec["required"] = {"masks": ("MASK", {"tooltip": "Masks [F,H,W]."}),
                            **{k: v for k, v in spec["required"].items() if k != "images"}}
        return spec

    def select(self, masks, start, count):
        m = masks if masks.ndim == 3 else masks[None]
        return super().select(m, start, count)


NODE_CLASS_MAPPINGS = {"InterplaySelectFrames": InterplaySelectFrames, "InterplaySelectMasks": InterplaySelectMasks}
NODE_DISPLAY_NAME_MAPPINGS = {"InterplaySelectFrames": "Select Frames (Interplay)",
                              "InterplaySelectMasks": "Select Masks (Interplay)"}
