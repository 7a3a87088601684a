"""The Wan family's nodes (Wan2.1 T2V/I2V, Wan2.2 I2V-A14B two experts, Wan2.2 TI2V-5B): the loader, and the one
sampler every Wan-based method reuses (its controls come from any branch made for the family)."""
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
OFFLOAD = ["none", "model", "blocks"]


def _wan_choices() -> list[str]:
    return _choices.diffusers_pipelines("Wan", name_hints=("wan",)) + [SINGLE_FILES]


class InterplayWanLoader:
    DESCRIPTION = ("Load a Wan video model: Wan2.2 I2V-A14B (two experts: pick the high-noise file as transformer and "
                   "the low-noise file as transformer_2), Wan2.1 I2V 480p/720p (needs clip_vision_h), Wan2.1 T2V "
                   "1.3B/14B, or Wan2.2 TI2V-5B (with wan2.2_vae). Either a diffusers folder from diffusers/, or the "
                   "files ComfyUI users keep: diffusion_models/ (ComfyUI or diffusers key names, fp16/bf16/fp8, "
                   "'fp8_scaled' too), vae/ (wan_2.1_vae or wan2.2_vae), text_encoders/ (umt5_xxl, its tokenizer "
                   "inside) and clip_vision/. The model is recognised from its weights and named in the node's text; "
                   "a file of another model (CogVideoX, SVD, a VAE in the transformer slot) is refused by name. "
                   "Memory: fp8_e4m3fn halves the weights (bf16 compute); offload 'model' keeps one part on the GPU at "
                   "a time (the idle expert waits on the CPU); 'blocks' also streams the transformer's blocks under "
                   "gpu_budget_gb. A request that cannot fit is refused before loading, naming the mode that fits.")
    CATEGORY = "Interplay/loaders"
    FUNCTION = "load"
    RETURN_TYPES = ("INTERPLAY_BACKBONE",)
    RETURN_NAMES = ("backbone",)

    @classmethod
    def INPUT_TYPES(cls):
        dm = runtime.list_models("diffusion_models")
        return {"required": {
            "model": (_wan_choices(), {"tooltip": "diffusers/<folder> (a Wan pipeline folder), or the single files "
                                       "below.", "model_folder": "diffusers",
                                       "interplay_path": "model"}),
            "transformer": ([NONE] + dm, {"tooltip": "Single files: the transformer, or Wan2.2 A14B's high-noise "
                                          "expert (…high_noise…), from diffusion_models/.",
                                          "model_folder": "diffusion_models", "interplay_path": "model"}),
            "transformer_2": ([NONE] + dm, {"tooltip": "Single files, Wan2.2 A14B only: the low-noise expert "
                                            "(…low_noise…). Leave (none) for one-model releases.",
                                            "model_folder": "diffusion_models", "interplay_path": "model"}),
            "vae": ([NONE] + runtime.list_models("vae"), {"tooltip": "Single files: wan_2.1_vae (Wan2.1, Wan2.2 A14B) "
                                                          "or wan2.2_vae (TI2V-5B).", "model_folder": "vae",
                                                          "interplay_path": "model"}),
            "text_encoder": ([NONE] + runtime.list_models("text_encoders"),
                             {"tooltip": "Single files: umt5_xxl (fp16, bf16 or fp8_e4m3fn_scaled).",
                              "model_folder": "text_encoders", "interplay_path": "model"}),
            "clip_vision": ([NONE] + runtime.list_models("clip_vision"),
                            {"tooltip": "Single files, Wan2.1 I2V only: clip_vision_h. Other models ignore it.",
                             "model_folder": "clip_vision", "interplay_path": "model"}),
            "weight_dtype": (WEIGHT_DTYPES, {"default": "auto", "tooltip": "auto: bf16 on recent GPUs, and fp8 storage "
                                             "when the file is fp8. fp8_e4m3fn: transformer weights stored in fp8, "
                                             "computed in bf16 (half the memory, same speed)."}),
            "offload": (OFFLOAD, {"default": "none", "tooltip": "none: everything on the GPU (80 GB for Wan2.2 A14B "
                                  "in bf16). model: one part on the GPU at a time; the idle expert waits on the CPU. "
                                  "blocks: as model, and only part of the transformer's blocks stay on the GPU "
                                  "(block swap), the rest stream in per step."}),
            "gpu_budget_gb": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1024.0, "step": 0.5,
                                        "tooltip": "offload 'blocks': GPU memory the transformer may use (weights + "
                                        "activations); sets how many blocks stay resident. 0: what is free."}),
            "vae_tiling": ("BOOLEAN", {"default": True, "tooltip": "Tile VAE encode/decode (bounded memory at 480p "
                                       "and up, slightly slower)."}),
            "boundary": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.005,
                                   "tooltip": "Two experts: the switch point as a fraction of the 1000 timesteps "
                                   "(high-noise expert for t >= boundary x 1000). 0: the release's (0.9 I2V, 0.875 "
                                   "T2V)."}),
        }}

    def load(self, model, transformer, transformer_2, vae, text_encoder, clip_vision, weight_dtype, offload,
             gpu_budget_gb, vae_tiling, boundary):
        from ..models.backbones.wan import load_wan

        node = "Wan Loader"
        if weight_dtype not in WEIGHT_DTYPES:
            raise ValueError(f"{node}: 'weight_dtype' must be one of {WEIGHT_DTYPES}; got {weight_dtype!r}")
        if offload not in OFFLOAD:
            raise ValueError(f"{node}: 'offload' must be one of {OFFLOAD}; got {offload!r}")
        if not 0.0 <= boundary < 1.0:
            raise ValueError(f"{node}: 'boundary' must be in [0, 1) (0 = the release's); got {boundary}")
        singles = (("diffusion_models", transformer), ("diffusion_models", transformer_2), ("vae", vae),
                   ("text_encoders", text_encoder), ("clip_vision", clip_vision))
        for kind, name in singles:  # the path rule holds for every name given, used or not
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
            if transformer_2 != NONE:
                source["transformer_2"] = runtime.model_path("diffusion_models", transformer_2)
            if clip_vision != NONE:
                source["clip_vision"] = runtime.model_path("clip_vision", clip_vision)
        elif model.startswith(DIFFUSERS_PREFIX):
            source = runtime.model_path("diffusers", model[len(DIFFUSERS_PREFIX):])
        else:
            raise ValueError(f"{node}: 'model' must be diffusers/<folder> or {SINGLE_FILES!r}; got {model!r}")
        bb = load_wan(source, dtype=weight_dtype, device=runtime.compute_device(), offload=offload,
                      gpu_budget_gb=gpu_budget_gb or None, vae_tiling=vae_tiling, boundary=boundary or None)
        return {"ui": {"text": [bb.describe()]}, "result": (bb,)}


SCHEDULERS = ["unipc", "euler"]


class InterplayWanSampler:
    DESCRIPTION = ("Generate a video with a Wan model from the Wan Loader: image-to-video (Wan2.2 I2V-A14B, Wan2.1 "
                   "I2V), text+image (Wan2.2 TI2V-5B) or text-to-video (Wan2.1 T2V: leave 'image' unconnected). "
                   "Flow matching with UniPC (the releases') or Euler and the variant's shift; two-expert models run "
                   "the high-noise expert while t >= boundary x 1000 and the low-noise one after, each with its own "
                   "CFG. Cond and uncond run as one batch (batched_cfg off: one after the other, less memory). The "
                   "image is resized and center-cropped to width x height. Controls from any branch made for Wan "
                   "(and chained Apply Control nodes) run in the same steps. A request too large for the GPU in the "
                   "loader's memory mode is refused before it starts, naming the mode that fits. Outputs the frames "
                   "and the LATENT in the VAE's own space (ComfyUI's VAE Decode with the Wan VAE reads it too).")
    CATEGORY = "Interplay/sampling"
    FUNCTION = "sample"
    RETURN_TYPES = ("IMAGE", "LATENT")
    RETURN_NAMES = ("frames", "latent")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "backbone": ("INTERPLAY_BACKBONE", {"tooltip": "From the Wan Loader."}),
            "prompt": ("STRING", {"default": "", "multiline": True, "tooltip": "What happens in the video."}),
            "negative": ("STRING", {"default": "", "multiline": True, "tooltip": "Negative prompt (used when CFG > "
                                    "1)."}),
            "width": ("INT", {"default": 832, "min": 16, "max": 2048, "step": 16, "tooltip": "Video width: a "
                              "multiple of 16 (Wan2.2 TI2V: 32). 832 for 480p, 1280 for 720p."}),
            "height": ("INT", {"default": 480, "min": 16, "max": 2048, "step": 16, "tooltip": "Video height: a "
                               "multiple of 16 (Wan2.2 TI2V: 32). 480 for 480p, 720 for 720p."}),
            "num_frames": ("INT", {"default": 81, "min": 1, "max": 1025, "step": 4, "tooltip": "4k+1 frames (81 = "
                                   "5 s at 16 fps; TI2V: 121 at 24 fps)."}),
            "steps": ("INT", {"default": 40, "min": 1, "max": 500, "tooltip": "Denoising steps (the releases: 40 "
                              "for I2V, 50 for T2V and TI2V)."}),
            "cfg": ("FLOAT", {"default": 3.5, "min": 0.0, "max": 30.0, "step": 0.1, "tooltip": "Guidance of the "
                              "high-noise expert (or the only model); <= 1 turns it off (half the compute). Wan2.2 "
                              "I2V: 3.5, Wan2.1 and TI2V: 5.0."}),
            "cfg_low_noise": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 30.0, "step": 0.1, "tooltip": "Two "
                                        "experts: guidance of the low-noise expert; 0 = the same as cfg."}),
            "shift": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 100.0, "step": 0.1, "tooltip": "Flow shift (> 1 "
                                "spends more steps at high noise); 0 = the release's for the model and size (5.0 "
                                "for Wan2.2 I2V, 3.0 for Wan2.1 I2V at 480p)."}),
            "scheduler": (SCHEDULERS, {"default": "unipc", "tooltip": "unipc: the releases' UniPC multistep; euler: "
                                       "flow-matching Euler."}),
            "boundary": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.005, "tooltip": "Two experts: "
                                   "switch to the low-noise expert below boundary x 1000; 0 = the loader's (0.9 for "
                                   "Wan2.2 I2V)."}),
            "seed": ("INT", {"default": 42, "min": 0, "max": 2 ** 63 - 1, "tooltip": "Noise seed (CPU generator: "
                             "the same video on any device)."}),
            "decode": ("BOOLEAN", {"default": True, "tooltip": "Decode to frames here (off: only the latent)."}),
        }, "optional": {
            "image": ("IMAGE", {"tooltip": "The first frame (the first image of a batch). Needed by I2V and TI2V "
                                "models; leave unconnected for text-to-video."}),
            "control": ("INTERPLAY_CONTROL", {"tooltip": "A control signal for 'branch'."}),
            "branch": ("INTERPLAY_BRANCH", {"tooltip": "A control branch made for Wan."}),
            "control_weight": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 5.0, "step": 0.05, "tooltip": "Scales "
                                         "the controls. " + CONTROL_RULE}),
            "control_start": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": "Fraction "
                                        "of the steps before the controls start. " + CONTROL_RULE}),
            "control_end": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": "Fraction of "
                                      "the steps after which the controls stop. " + CONTROL_RULE}),
            "controls": CONTROLS_INPUT,
            "batched_cfg": ("BOOLEAN", {"default": True, "tooltip": "Run cond and uncond as one batch (fastest); off: "
                                        "one after the other (half the activation memory)."}),
            "inputs": ("INTERPLAY_LATENT_INPUTS", {"tooltip": "Extra first-frame pictures for a widened model's "
                                                              "extra input channels (e.g. the MATRIX ID map from "
                                                              "ID Map Input); fitted like the image and encoded as "
                                                              "the I2V image is (latent + first-frame mask). "
                                                              "Unconnected: those channels get zeros."}),
            **SPEED_INPUTS,
            **PARALLEL_INPUT,
        }}

    def sample(self, backbone, prompt, negative, width, height, num_frames, steps, cfg, cfg_low_noise, shift,
               scheduler, boundary, seed, decode, image=None, control=None, branch=None, control_weight=1.0,
               control_start=0.0, control_end=1.0, controls=None, batched_cfg=True, inputs=None, step_cache=False,
               cache_threshold=DEFAULT_THRESHOLD, compile=False, fp8="off", attention="auto", parallel="auto"):
        from ..models.backbones import wan
        from ..models.sampling.latent_inputs import encode
        from ..models.sampling.wan import sample_wan
        from ..models.video_io import fit_frames

        node = "Wan Sampler"
        if getattr(backbone, "family", None) != "wan":
            raise ValueError(f"{node}: 'backbone' is {getattr(backbone, 'family', type(backbone).__name__)}; load a "
                             "Wan model with the Wan Loader")
        if scheduler not in SCHEDULERS:
            raise ValueError(f"{node}: 'scheduler' must be one of {SCHEDULERS}; got {scheduler!r}")
        if not 0.0 <= boundary < 1.0:
            raise ValueError(f"{node}: 'boundary' must be in [0, 1) (0 = the loader's); got {boundary}")
        if not prompt or not prompt.strip():
            raise ValueError(f"{node}: 'prompt' is empty; describe what should happen")
        e = backbone.extra
        if (e["i2v"] or e["ti2v"]) and image is None:
            raise ValueError(f"{node}: {backbone.variant} generates from an image; connect 'image' (the first frame)")
        if not (e["i2v"] or e["ti2v"]) and image is not None:
            raise ValueError(f"{node}: {backbone.variant} is text-to-video; disconnect 'image' or load an I2V model")
        if image is not None and (image.ndim != 4 or image.shape[-1] != 3):
            raise ValueError(f"{node}: 'image' must be IMAGE [B,H,W,3]; got {tuple(image.shape)}")
        try:
            wan.check_frames(backbone, num_frames, height, width, node=node)
        except ValueError as ex:
            raise ValueError(str(ex).replace("num_frames", "'num_frames'").replace("height and width",
                                                                                   "'height' and 'width'")) from None
        img = fit_frames(image[:1].float(), height, width) if image is not None else None
        bound = gather_controls(node, "wan", control, branch, controls, control_weight, control_start, control_end)
        two = bool(backbone.experts)
        guided = cfg > 1 or (two and (cfg_low_noise or cfg) > 1)
        cache, speed = speed_settings(node, step_cache, cache_threshold, compile, fp8, attention)
        extra = encode(backbone, inputs, height, width, 0, where=node, num_frames=num_frames)
        pos = wan.encode_prompt(backbone, [prompt])
        neg = wan.encode_prompt(backbone, [negative or ""]) if guided else None
        lat = sample_wan(backbone, img, pos, neg, controls=bound, num_frames=num_frames, height=height, width=width,
                         inputs=extra or None,
                         steps=steps, cfg=cfg, cfg_low_noise=(cfg_low_noise or None) if two else None,
                         shift=shift or None, scheduler=scheduler, boundary=boundary or None, seed=seed,
                         preview=True, batched_cfg=batched_cfg, desc=node, step_cache=cache, speed=speed,
                         parallel=parallel)
        latent = {"samples": wan.raw_latents(backbone, lat).float().cpu(), "interplay_family": "wan"}
        if decode:
            frames = wan.decode_latents(backbone, lat)[0]
        else:
            frames = torch.zeros(1, height, width, 3)
        return (frames, latent)


NODE_CLASS_MAPPINGS = {"InterplayWanLoader": InterplayWanLoader, "InterplayWanSampler": InterplayWanSampler}
NODE_DISPLAY_NAME_MAPPINGS = {"InterplayWanLoader": "Wan Loader (Interplay)",
                              "InterplayWanSampler": "Wan Sampler (Interplay)"}
