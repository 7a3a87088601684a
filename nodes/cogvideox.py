"""KineMask on CogVideoX: backbone and branch loaders, the interaction prompt, the I2V sampler, latent decode."""
from __future__ import annotations

import torch

from ..models import runtime
from . import _choices
from ._controls import CONTROL_RULE, CONTROLS_INPUT, gather_controls

DIFFUSERS_PREFIX = _choices.DIFFUSERS_PREFIX
SINGLE_FILES = "(single files below)"
NONE = "(none)"
NEW_BRANCH = "(new, zero-initialised from the backbone)"
WEIGHT_DTYPES = ["auto", "bf16", "fp16", "fp32", "fp8_e4m3fn"]

PROMPT_TEMPLATES = {
    "interaction": ("On {surface} there is {subject}. {subject_cap} moves to the {direction}{speed_text}. {outcome}"),
    "simple motion": "{subject_cap} on {surface} moves to the {direction}{speed_text}.",
    "c0 (ablation)": "An object moving on a surface",
    "free text": "",
}
OUTCOMES = {
    "none": "",
    "collides": "It collides with the objects in its path, which are pushed and then come to rest.",
    "falls": "It reaches the edge, falls and hits the ground.",
    "slows down": "It slows down gradually and comes to rest.",
}


def _cogvideox_choices() -> list[str]:
    return _choices.diffusers_pipelines("CogVideoX", name_hints=("cog", "kinemask")) + [SINGLE_FILES]


def _branch_choices() -> list[str]:
    return _choices.branch_choices(NEW_BRANCH, "kinemask")


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
                                             "model_folder": "diffusers"}),
            "transformer": ([NONE] + runtime.list_models("diffusion_models"),
                            {"tooltip": "Single-files mode: the CogVideoX transformer (diffusers key names).",
                             "model_folder": "diffusion_models"}),
            "vae": ([NONE] + runtime.list_models("vae"), {"tooltip": "Single-files mode: the CogVideoX VAE.",
                                                          "model_folder": "vae"}),
            "text_encoder": ([NONE] + runtime.list_models("text_encoders"),
                             {"tooltip": "Single-files mode: T5-v1.1-XXL encoder (t5xxl_fp16.safetensors).",
                              "model_folder": "text_encoders"}),
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


class InterplayKineMaskBranchLoader:
    DESCRIPTION = ("Load the KineMask control branch (a ControlNet over the first CogVideoX blocks): a file trained "
                   "by the pack (controlnet/ or interplay/), a public CogVideoX ControlNet folder (config.json + "
                   "diffusion_pytorch_model.safetensors; residuals added directly), or a new branch initialised from "
                   "the backbone with zero output projections (for training: it changes nothing until trained).")
    CATEGORY = "Interplay/loaders"
    FUNCTION = "load"
    RETURN_TYPES = ("INTERPLAY_BRANCH",)
    RETURN_NAMES = ("branch",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "branch": (_branch_choices(), {"tooltip": "A file or folder in controlnet/ (or interplay/), or new.",
                                           "model_folder": ["controlnet", "interplay"]}),
            "num_layers": ("INT", {"default": 8, "min": 1, "max": 42, "tooltip": "New branch only: backbone blocks "
                                   "it drives (KineMask: the first 8)."}),
        }, "optional": {
            "backbone": ("INTERPLAY_BACKBONE", {"tooltip": "Needed for a new branch; sets dtype and device."}),
        }}

    def load(self, branch, num_layers, backbone=None):
        from ..models.control import kinemask as km

        node = "KineMask Branch Loader"
        if branch == NEW_BRANCH:
            if backbone is None:
                raise ValueError(f"{node}: a new branch copies the backbone's blocks; connect 'backbone' or pick a "
                                 "file")
            if backbone.family != "cogvideox":
                raise ValueError(f"{node}: 'backbone' is {backbone.family}; KineMask needs CogVideoX")
            if num_layers > backbone.denoiser.config.num_layers:
                raise ValueError(f"{node}: 'num_layers' {num_layers} exceeds the backbone's "
                                 f"{backbone.denoiser.config.num_layers} blocks")
            return (km.new_branch(backbone.denoiser, num_layers=num_layers,
                                  downscale=backbone.extra.get("vae_scale_factor_spatial", 8)),)
        if branch.startswith("interplay/"):
            path = runtime.model_path("interplay", branch[len("interplay/"):])
        else:
            path = runtime.model_path("controlnet", branch)
        dev = backbone.device if backbone is not None else runtime.compute_device()
        dt = backbone.dtype if backbone is not None else runtime.default_dtype(dev)
        return (km.load_branch(path, dtype=dt, device=dev),)


def build_prompt(template: str, subject: str, surface: str, direction: str, speed: float, outcome: str,
                 extra: str = "") -> str:
    """Fill the interaction template (the paper asked GPT for this text; this is the offline stand-in)."""
    if template not in PROMPT_TEMPLATES:
        raise ValueError(f"Interaction Prompt: 'template' must be one of {list(PROMPT_TEMPLATES)}; got {template!r}")
    subject = subject.strip() or "an object"
    text = PROMPT_TEMPLATES[template].format(
        subject=subject, subject_cap=subject[:1].upper() + subject[1:], surface=surface.strip() or "a surface",
        direction=direction.strip() or "right", speed_text=f" at {speed:g} m/s" if speed > 0 else "",
        outcome=OUTCOMES.get(outcome, ""))
    parts = [p.strip() for p in (text, extra) if p and p.strip()]
    return " ".join(parts)


class InterplayInteractionPrompt:
    DESCRIPTION = ("Write the text prompt that describes the intended interaction (KineMask asked an LLM for it; here "
                   "a template plus your own words, no network). 'interaction' describes the scene, the push and "
                   "what follows; 'c0' is the paper's fixed ablation text; 'free text' uses only 'extra'. Avoid "
                   "speeds and physics words in 'extra': the training captions never had them.")
    CATEGORY = "Interplay/conditions"
    FUNCTION = "build"
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("prompt",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "template": (list(PROMPT_TEMPLATES), {"default": "interaction", "tooltip": "Sentence pattern."}),
            "subject": ("STRING", {"default": "the red cube", "tooltip": "The object you push (as seen)."}),
            "surface": ("STRING", {"default": "a wooden floor", "tooltip": "What it stands on."}),
            "direction": ("STRING", {"default": "right", "tooltip": "Where it moves: left, right, toward the camera..."}),
            "speed": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 10.0, "step": 0.05, "tooltip": "m/s to mention; "
                                "0 leaves speed out (the paper's captions never state it)."}),
            "outcome": (list(OUTCOMES), {"default": "collides", "tooltip": "What should happen next."}),
            "extra": ("STRING", {"default": "", "multiline": True, "tooltip": "Free text appended (or the whole "
                                 "prompt with 'free text')."}),
        }}

    def build(self, template, subject, surface, direction, speed, outcome, extra):
        text = build_prompt(template, subject, surface, direction, speed, outcome, extra)
        if not text:
            raise ValueError("Interaction Prompt: the prompt is empty; write it in 'extra' or pick a template")
        return (text,)


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
        }}

    def sample(self, backbone, image, prompt, negative, width, height, num_frames, steps, cfg, dynamic_cfg,
               scheduler, seed, decode, control=None, branch=None, control_weight=0.5, control_start=0.0,
               control_end=1.0, control_guidance=1.0, controls=None, inputs=None):
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
        from ..models.conditions.latent_inputs import encode

        extra = encode(backbone, inputs, height, width, cog.latent_frames(backbone, num_frames), where=node)
        pos = cog.encode_prompt(backbone, [prompt])
        neg = cog.encode_prompt(backbone, [negative or ""]) if cfg > 1 else None
        lat = sample_cogvideox(backbone, img, pos, neg, controls=bound, num_frames=num_frames, steps=steps, cfg=cfg,
                               dynamic_cfg=dynamic_cfg, seed=seed, scheduler=scheduler, preview=True,
                               control_cfg=float(control_guidance), inputs=extra or None)
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
    "InterplayKineMaskBranchLoader": InterplayKineMaskBranchLoader,
    "InterplayInteractionPrompt": InterplayInteractionPrompt,
    "InterplayCogVideoXSampler": InterplayCogVideoXSampler,
    "InterplayCogVideoXDecode": InterplayCogVideoXDecode,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "InterplayCogVideoXLoader": "CogVideoX Loader (Interplay)",
    "InterplayKineMaskBranchLoader": "KineMask Branch Loader (Interplay)",
    "InterplayInteractionPrompt": "Interaction Prompt (Interplay)",
    "InterplayCogVideoXSampler": "CogVideoX Sampler (Interplay)",
    "InterplayCogVideoXDecode": "CogVideoX Decode (Interplay)",
}
