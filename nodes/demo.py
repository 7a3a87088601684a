"""The embedded demo model (tiny CogVideoX image-to-video + KineMask velocity branch, trained on the sandbox)."""
from __future__ import annotations


class InterplayDemoModelLoader:
    DESCRIPTION = ("Load the pack's embedded demo model: a tiny CogVideoX image-to-video backbone and its KineMask "
                   "velocity branch, trained from scratch on sandbox `push` scenes (64x64, 9 frames, 8 fps). No "
                   "download; use it with the CogVideoX Sampler (width/height 64, 9 frames, cfg 1) to try the "
                   "arrow-to-motion pipeline on any machine.")
    CATEGORY = "Interplay/loaders"
    FUNCTION = "load"
    RETURN_TYPES = ("INTERPLAY_BACKBONE", "INTERPLAY_BRANCH")
    RETURN_NAMES = ("backbone", "branch")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "dtype": (["auto", "fp32", "bf16", "fp16"], {"default": "fp32", "tooltip": "Compute dtype (the weights "
                      "are stored in fp16). fp32 is exact on CPU; auto picks bf16 on a GPU that supports it."}),
        }}

    def load(self, dtype):
        from ..models.demo.build import load_demo

        return load_demo(dtype=dtype)


NODE_CLASS_MAPPINGS = {"InterplayDemoModelLoader": InterplayDemoModelLoader}
NODE_DISPLAY_NAME_MAPPINGS = {"InterplayDemoModelLoader": "Demo Model Loader (Interplay)"}
