"""The SVD family: the loader and the image-to-video sampler (EDM Euler; any SVD-family control, e.g. the InterDyn
branch, through the branch registry). InterDyn's own nodes (branch loader, driving masks, compare) are in
nodes/interdyn.py; the sampler keeps its landed id ``InterplayInterDynSampler``."""
from __future__ import annotations

from ..models import runtime
from . import _choices
from ._controls import CONTROL_RULE, CONTROLS_INPUT, gather_controls
from ._speed import DEFAULT_THRESHOLD, SPEED_INPUTS, speed_settings

DIFFUSERS_PREFIX = _choices.DIFFUSERS_PREFIX
FROM_CHECKPOINT = "(from the checkpoint)"


def _svd_choices() -> list[str]:
    # no placeholder when nothing is installed: an empty list fails validation naming the input, like the
    # other loaders, instead of failing later at run time
    files = [f for f in runtime.list_models("checkpoints") if "svd" in f.lower() or "video" in f.lower()]
    return files + _choices.diffusers_pipelines("StableVideoDiffusion", name_hints=("svd", "stable-video"))


class InterplaySVDLoader:
    DESCRIPTION = ("Load Stable Video Diffusion img2vid (14 frames, or XT 25) for InterDyn: a single original "
                   "checkpoint from checkpoints/ (svd.safetensors, svd_xt.safetensors; converted in memory), or a "
                   "diffusers folder from diffusers/. The CLIP ViT-H image encoder comes from the checkpoint or "
                   "from clip_vision/.")
    CATEGORY = "Interplay/loaders"
    FUNCTION = "load"
    RETURN_TYPES = ("INTERPLAY_BACKBONE",)
    RETURN_NAMES = ("backbone",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (_svd_choices(), {"tooltip": "checkpoints/<file> (original layout) or diffusers/<folder>.",
                                       "model_folder": ["checkpoints", "diffusers"], "interplay_path": "model"}),
            "clip_vision": ([FROM_CHECKPOINT] + runtime.list_models("clip_vision"),
                            {"tooltip": "CLIP ViT-H/14 image encoder for checkpoints that lack one.",
                             "model_folder": "clip_vision", "interplay_path": "model"}),
            "dtype": (["auto", "bf16", "fp16", "fp32"], {"default": "auto",
                                                         "tooltip": "Compute dtype; the VAE stays fp32."}),
            "offload": (["none", "model"], {"default": "none", "tooltip": "model: keep parts on the CPU and move "
                                            "each to the GPU only while it runs (less VRAM, slower)."}),
            "decode_chunk": ("INT", {"default": 14, "min": 1, "max": 64,
                                     "tooltip": "Frames the VAE decodes at once (lower = less VRAM)."}),
        }}

    def load(self, model, clip_vision, dtype, offload, decode_chunk):
        from ..models.backbones.svd import load_svd

        if model.startswith(DIFFUSERS_PREFIX):
            path = runtime.model_path("diffusers", model[len(DIFFUSERS_PREFIX):])
        else:
            path = runtime.model_path("checkpoints", model)
        cv = None if clip_vision == FROM_CHECKPOINT else runtime.model_path("clip_vision", clip_vision)
        device = runtime.compute_device()
        return (load_svd(path, dtype=runtime.parse_dtype(dtype, device), device=device, offload=offload,
                         clip_vision=cv, decode_chunk=decode_chunk),)


class InterplayInterDynSampler:
    DESCRIPTION = ("Generate a video from one image with SVD and, when connected, the InterDyn branch driven by a "
                   "mask video: EDM Euler (Karras sigmas, v-prediction), guidance rising per frame from min_cfg to "
                   "max_cfg. The unconditional half drops the image but keeps the control. Defaults are the "
                   "released model's: 50 steps, fps id 6, motion bucket 40, noise augmentation 0.02.")
    CATEGORY = "Interplay/sampling"
    FUNCTION = "sample"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("frames",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "backbone": ("INTERPLAY_BACKBONE", {"tooltip": "From the SVD Loader."}),
            "image": ("IMAGE", {"tooltip": "The first frame; its size is the video's (multiples of 64)."}),
            "seed": ("INT", {"default": 42, "min": 0, "max": 2 ** 63 - 1, "tooltip": "Noise seed (CPU generator: "
                             "same result on any device)."}),
            "steps": ("INT", {"default": 50, "min": 1, "max": 500, "tooltip": "Euler steps."}),
            "num_frames": ("INT", {"default": 14, "min": 2, "max": 64, "tooltip": "Frames (the control's count)."}),
            "min_cfg": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 30.0, "step": 0.1, "tooltip": "Guidance at "
                                  "frame 0."}),
            "max_cfg": ("FLOAT", {"default": 3.0, "min": 0.0, "max": 30.0, "step": 0.1, "tooltip": "Guidance at the "
                                  "last frame; <= 1 turns guidance off (half the compute)."}),
            "fps_id": ("INT", {"default": 6, "min": 0, "max": 60, "tooltip": "SVD fps micro-condition (6 for "
                               "InterDyn)."}),
            "motion_bucket_id": ("INT", {"default": 40, "min": 0, "max": 1023, "tooltip": "SVD motion amount (40 "
                                         "for InterDyn)."}),
            "noise_aug": ("FLOAT", {"default": 0.02, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": "Noise "
                                    "added to the conditioning image."}),
            "num_samples": ("INT", {"default": 1, "min": 1, "max": 16, "tooltip": "Videos drawn (batched)."}),
        }, "optional": {
            "branch": ("INTERPLAY_BRANCH", {"tooltip": "The InterDyn branch."}),
            "control": ("INTERPLAY_CONTROL", {"tooltip": "The driving mask (same frames and size)."}),
            "control_weight": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 5.0, "step": 0.05, "tooltip": "Scales "
                                         "the branch's residuals. " + CONTROL_RULE}),
            "control_start": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": "Fraction "
                                        "of the steps before the branch starts. " + CONTROL_RULE}),
            "control_end": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": "Fraction of "
                                      "the steps after which the branch stops. " + CONTROL_RULE}),
            "controls": CONTROLS_INPUT,
            **SPEED_INPUTS,
        }}

    def sample(self, backbone, image, seed, steps, num_frames, min_cfg, max_cfg, fps_id, motion_bucket_id,
               noise_aug, num_samples, branch=None, control=None, control_weight=1.0, control_start=0.0,
               control_end=1.0, controls=None, step_cache=False, cache_threshold=DEFAULT_THRESHOLD, compile=False,
               fp8="off", attention="auto"):
        from ..models.backbones.svd import decode_latents
        from ..models.sampling.edm import sample_svd

        node = "InterDyn Sampler"
        if backbone.family != "svd":
            raise ValueError(f"{node}: 'backbone' is {backbone.family}; load SVD with the SVD Loader")
        if image.shape[0] != 1:
            image = image[:1]
        bound = gather_controls(node, "svd", control, branch, controls, control_weight, control_start, control_end)
        cache, speed = speed_settings(node, step_cache, cache_threshold, compile, fp8, attention)
        lat = sample_svd(backbone, image, controls=bound, num_frames=num_frames, steps=steps, min_cfg=min_cfg,
                         max_cfg=max_cfg, fps_id=fps_id, motion_bucket_id=motion_bucket_id, noise_aug=noise_aug,
                         seed=seed, num_samples=num_samples, decode=True, step_cache=cache, speed=speed)
        frames = decode_latents(backbone, lat)
        return (frames.reshape(-1, *frames.shape[2:]),)


NODE_CLASS_MAPPINGS = {
    "InterplaySVDLoader": InterplaySVDLoader,
    "InterplayInterDynSampler": InterplayInterDynSampler,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "InterplaySVDLoader": "SVD Loader (Interplay)",
    "InterplayInterDynSampler": "InterDyn Sampler (Interplay)",
}
