"""The CogVideoX family: the loader, the image-to-video sampler (any CogVideoX-family control through the branch
registry) and the latent decoder. Method nodes live in their own files (nodes/kinemask.py, nodes/pam.py, ...)."""
from __future__ import annotations

import torch

from ..models import runtime
from . import _choices
from ._controls import CONTROL_RULE, CONTROLS_INPUT, gather_controls
from ._speed import DEFAULT_THRESHOLD, PARALLEL_INPUT, SPEED_INPUTS, speed_settings

DIFFUSERS_PREFIX = _choices.DIFFUSERS_PREFIX
SINGLE_FILES = "(single files below)"
NONE = "(none)"
WEIGHT_DTYPES = ["auto", "bf16", "fp16", "fp32", "fp8_e4m3fn"]

def _cogvideox_choices() -> list[str]:
    from ..models.control import registry

    # folders without a model_index.json: by name, "cog" or a CogVideoX method's kind (e.g. a released branch)
    hints = ("cog",) + tuple(s.kind for s in registry.kinds("cogvideox"))
    return _choices.diffusers_pipelines("CogVideoX", name_hints=hints) + [SINGLE_FILES]


class InterplayCogVideoXLoader:
    DESCRIPTION = ("Load CogVideoX for KineMask (5B-I2V; T2V 2B/5B and 1.5 where diffusers supports them): a "
                   "diffusers folder from diffusers/ (e.g. CogVideoX-5b-I2V), or single files: transformer from "
                   "diffusion_models/, VAE from vae/, T5-XXL from text_encoders/ (its tokenizer folder beside it as "
                   "<name>_tokenizer/, or ComfyUI's own). fp8_e4m3fn stores the transformer in fp8 and computes in "
                   "bf16 (half the weight memory). offload 'model' keeps T5, transformer and VAE on the CPU and "
                   "moves each to the GPU for its stage.")
    CATEGORY = "Interplay/loaders"
    FUNCTION = "load"
    RETURN_TYPES = ("INTERPLAY_BACKBONE",)
    RETURN_NAMES = ("backbone",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (_cogvideox_choices(), {"tooltip": "diffusers/<folder>, or the single files below.",
                                             "model_folder": "diffusers", "interplay_path": "model"}),
            "transformer": ([NONE] + runtime.list_models("diffusion_models"),
                            {"tooltip": "Single-files mode: the CogVideoX transformer (diffusers key names).",
                             "model_folder": "diffusion_models", "interplay_path": "model"}),
            "vae": ([NONE] + runtime.list_models("vae"), {"tooltip": "Single-files mode: the CogVideoX VAE.",
                                                          "model_folder": "vae", "interplay_path": "model"}),
            "text_encoder": ([NONE] + runtime.list_models("text_encoders"),
                             {"tooltip": "Single-files mode: T5-v1.1-XXL encoder (t5xxl_fp16.safetensors).",
                              "model_folder": "text_encoders", "interplay_path": "model"}),
            "weight_dtype": (WEIGHT_DTYPES, {"default": "auto", "tooltip": "auto: bf16 on recent GPUs. fp8_e4m3fn: "
                                             "fp8 storage, bf16 compute."}),
            "offload": (["none", "model"], {"default": "none", "tooltip": "model: park each part on the CPU while "
                                            "another runs (less VRAM, a few seconds slower)."}),
            "vae_tiling": ("BOOLEAN", {"default": True, "tooltip": "Tile VAE encode/decode: ~4 GB instead of ~15 GB "
                                       "at 49x480x720, slightly slower."}),
        }}

    def load(self, model, transformer, vae, text_encoder, weight_dtype, offload, vae_tiling):
        from ..models.backbones.cogvideox import load_cogvideox

        node = "CogVideoX Loader"
        singles = (("transformer", "diffusion_models", transformer), ("vae", "vae", vae),
                   ("text_encoder", "text_encoders", text_encoder))
        for _, kind, name in singles:  # the path rule holds for every name given, used or not
            if name != NONE:
                runtime.model_path(kind, name, must_exist=False)
        if model == SINGLE_FILES:
            missing = [n for n, v in (("transformer", transformer), ("vae", vae), ("text_encoder", text_encoder))
                       if v == NONE]
            if missing:
                raise ValueError(f"{node}: single-files mode needs {', '.join(missing)}; pick the files (folders "
                                 "diffusion_models/, vae/, text_encoders/) or choose a diffusers folder in 'model'")
            source = dict(transformer=runtime.model_path("diffusion_models", transformer),
                          vae=runtime.model_path("vae", vae),
                          text_encoder=runtime.model_path("text_encoders", text_encoder))
        elif model.startswith(DIFFUSERS_PREFIX):
            source = runtime.model_path("diffusers", model[len(DIFFUSERS_PREFIX):])
        else:
            raise ValueError(f"{node}: 'model' must be diffusers/<folder> or {SINGLE_FILES!r}; got {model!r}")
        if weight_dtype not in WEIGHT_DTYPES:
            raise ValueError(f"{node}: 'weight_dtype' must be one of {WEIGHT_DTYPES}; got {weight_dtype!r}")
        device = runtime.compute_device()
        return (load_cogvideox(source, dtype=weight_dtype, device=device, offload=offload, vae_tiling=vae_tiling),)


class InterplayCogVideoXSampler:
    DESCRIPTION = ("Generate a video from one image with CogVideoX-I2V and, when connected, the KineMask branch "
                   "driven by a velocity control (Arrow Painter). DDIM or DPM (v-prediction, trailing spacing, the "
                   "release's schedule), 50 steps, CFG 6 (cond and uncond in one batch), optional dynamic CFG. The "
                   "image and the control are resized and center-cropped to width x height identically. KineMask "
                   "defaults: control weight 0.5 over all steps, 49 frames at 480x720.")
    CATEGORY = "Interplay/sampling"
    FUNCTION = "sample"
    RETURN_TYPES = ("IMAGE", "LATENT")
    RETURN_NAMES = ("frames", "latent")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "backbone": ("INTERPLAY_BACKBONE", {"tooltip": "From the CogVideoX Loader."}),
            "image": ("IMAGE", {"tooltip": "The first frame (the first image of a batch)."}),
            "prompt": ("STRING", {"forceInput": True, "tooltip": "What happens (Interaction Prompt)."}),
            "negative": ("STRING", {"default": "", "multiline": True, "tooltip": "Negative prompt (the release "
                                    "uses an empty one)."}),
            "width": ("INT", {"default": 720, "min": 16, "max": 2048, "step": 16, "tooltip": "Video width (5B-I2V: "
                              "720 only)."}),
            "height": ("INT", {"default": 480, "min": 16, "max": 2048, "step": 16, "tooltip": "Video height "
                               "(5B-I2V: 480 only)."}),
            "num_frames": ("INT", {"default": 49, "min": 1, "max": 161, "step": 8, "tooltip": "8k+1 frames (49 = "
                                   "6 s at 8 fps); the control's count."}),
            "steps": ("INT", {"default": 50, "min": 1, "max": 500, "tooltip": "Denoising steps."}),
            "cfg": ("FLOAT", {"default": 6.0, "min": 0.0, "max": 30.0, "step": 0.1, "tooltip": "Guidance; <= 1 "
                              "turns it off (half the compute)."}),
            "dynamic_cfg": ("BOOLEAN", {"default": False, "tooltip": "The release's cosine guidance ramp."}),
            "scheduler": (["ddim", "dpm"], {"default": "ddim", "tooltip": "CogVideoX DDIM or DPM-solver."}),
            "seed": ("INT", {"default": 42, "min": 0, "max": 2 ** 63 - 1, "tooltip": "Noise seed (CPU generator: "
                             "the same video on any device)."}),
            "decode": ("BOOLEAN", {"default": True, "tooltip": "Decode to frames here (off: only the latent; use "
                                   "CogVideoX Decode)."}),
        }, "optional": {
            "control": ("INTERPLAY_CONTROL", {"tooltip": "Velocity control from the Arrow Painter."}),
            "branch": ("INTERPLAY_BRANCH", {"tooltip": "The KineMask branch."}),
            "control_weight": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 5.0, "step": 0.05, "tooltip": "Scales "
                                         "the branch's residuals (KineMask: 0.5). " + CONTROL_RULE}),
            "control_start": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": "Fraction "
                                        "of the steps before the branch starts. " + CONTROL_RULE}),
            "control_end": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": "Fraction of "
                                      "the steps after which the branch stops. " + CONTROL_RULE}),
            "control_guidance": ("FLOAT", {"default": 1.0, "min": 1.0, "max": 10.0, "step": 0.1, "tooltip":
                                           "Control guidance: above 1 adds a pass with the control zeroed and pushes "
                                           "away from it (follows the arrow more strictly; costs one more forward per "
                                           "step, high values blur the object). 1 = off."}),
            "controls": CONTROLS_INPUT,
            "inputs": ("INTERPLAY_LATENT_INPUTS", {"tooltip": "Extra first-frame pictures for a widened model's "
                                                              "extra input channels (e.g. the MATRIX ID map from "
                                                              "ID Map Input); fitted like the image and VAE-encoded. "
                                                              "Unconnected: those channels get zeros."}),
            **SPEED_INPUTS,
            **PARALLEL_INPUT,
        }}

    def sample(self, backbone, image, prompt, negative, width, height, num_frames, steps, cfg, dynamic_cfg,
               scheduler, seed, decode, control=None, branch=None, control_weight=0.5, control_start=0.0,
               control_end=1.0, control_guidance=1.0, controls=None, inputs=None, step_cache=False,
               cache_threshold=DEFAULT_THRESHOLD, compile=False, fp8="off", attention="auto", parallel="auto"):
        from ..models.backbones import cogvideox as cog
        from ..models.sampling.cogvideox import sample_cogvideox
        from ..models.video_io import fit_frames

        node = "CogVideoX Sampler"
        if backbone.family != "cogvideox":
            raise ValueError(f"{node}: 'backbone' is {backbone.family}; load CogVideoX with the CogVideoX Loader")
        if backbone.layout is not None and not backbone.layout.has("image"):
            raise ValueError(f"{node}: 'backbone' is a text-to-video model ({backbone.variant}); this sampler "
                             "generates from an image and needs an image-to-video release (CogVideoX-5b-I2V)")
        if image.ndim != 4 or image.shape[-1] != 3:
            raise ValueError(f"{node}: 'image' must be IMAGE [B,H,W,3]; got {tuple(image.shape)}")
        if not prompt or not prompt.strip():
            raise ValueError(f"{node}: 'prompt' is empty; connect an Interaction Prompt or type one")
        try:
            cog.check_frames(backbone, num_frames, height, width, node=node)
        except ValueError as e:
            raise ValueError(str(e).replace("num_frames", "'num_frames'").replace("height and width",
                                                                                  "'height' and 'width'")) from None
        img = fit_frames(image[:1].float(), height, width)
        bound = gather_controls(node, "cogvideox", control, branch, controls, control_weight, control_start,
                                control_end)
        for bc in bound:
            if bc.signal is not None and bc.signal.video.shape[0] != num_frames:
                raise ValueError(f"{node}: 'control' has {bc.signal.video.shape[0]} frames but num_frames is "
                                 f"{num_frames}; paint the control with num_frames={num_frames}")
        from ..models.sampling.latent_inputs import encode

        extra = encode(backbone, inputs, height, width, cog.latent_frames(backbone, num_frames), where=node)
        cache, speed = speed_settings(node, step_cache, cache_threshold, compile, fp8, attention)
        pos = cog.encode_prompt(backbone, [prompt])
        neg = cog.encode_prompt(backbone, [negative or ""]) if cfg > 1 else None
        lat = sample_cogvideox(backbone, img, pos, neg, controls=bound, num_frames=num_frames, steps=steps, cfg=cfg,
                               dynamic_cfg=dynamic_cfg, seed=seed, scheduler=scheduler, preview=True,
                               control_cfg=float(control_guidance), decode=bool(decode), step_cache=cache,
                               speed=speed, parallel=parallel, inputs=extra or None)
        latent = {"samples": lat.permute(0, 2, 1, 3, 4).float().cpu(), "interplay_family": "cogvideox"}
        if decode:
            frames = cog.decode_latents(backbone, lat)[0]
        else:
            frames = torch.zeros(1, height, width, 3)
        return (frames, latent)


class InterplayCogVideoXDecode:
    DESCRIPTION = ("Decode a CogVideoX latent (from the sampler) to frames with the backbone's VAE (tiled when the "
                   "loader's vae_tiling is on).")
    CATEGORY = "Interplay/sampling"
    FUNCTION = "decode"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("frames",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "backbone": ("INTERPLAY_BACKBONE", {"tooltip": "The CogVideoX backbone that made the latent."}),
            "latent": ("LATENT", {"tooltip": "From the CogVideoX Sampler ([B,C,f,h,w])."}),
        }}

    def decode(self, backbone, latent):
        from ..models.backbones import cogvideox as cog

        node = "CogVideoX Decode"
        if backbone.family != "cogvideox":
            raise ValueError(f"{node}: 'backbone' is {backbone.family}; expected CogVideoX")
        z = latent.get("samples") if isinstance(latent, dict) else None
        c = backbone.extra.get("latent_channels", 16)
        if z is None or z.ndim != 5 or z.shape[1] != c:
            raise ValueError(f"{node}: 'latent' must hold samples [B,{c},f,h,w] from the CogVideoX Sampler; got "
                             f"{None if z is None else tuple(z.shape)}")
        frames = cog.decode_latents(backbone, z.permute(0, 2, 1, 3, 4).to(backbone.device, backbone.dtype))
        return (frames.reshape(-1, *frames.shape[2:]),)


NODE_CLASS_MAPPINGS = {
    "InterplayCogVideoXLoader": InterplayCogVideoXLoader,
    "InterplayCogVideoXSampler": InterplayCogVideoXSampler,
    "InterplayCogVideoXDecode": InterplayCogVideoXDecode,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "InterplayCogVideoXLoader": "CogVideoX Loader (Interplay)",
    "InterplayCogVideoXSampler": "CogVideoX Sampler (Interplay)",
    "InterplayCogVideoXDecode": "CogVideoX Decode (Interplay)",
}
