"""The Wan family's loader node (Wan2.1 T2V/I2V, Wan2.2 I2V-A14B two experts, Wan2.2 TI2V-5B). The sampler node
is written on the model-forward contract and comes later."""
from __future__ import annotations

from ..models import runtime
from . import _choices

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
                                       "below.", "model_folder": "diffusers"}),
            "transformer": ([NONE] + dm, {"tooltip": "Single files: the transformer, or Wan2.2 A14B's high-noise "
                                          "expert (…high_noise…), from diffusion_models/."}),
            "transformer_2": ([NONE] + dm, {"tooltip": "Single files, Wan2.2 A14B only: the low-noise expert "
                                            "(…low_noise…). Leave (none) for one-model releases."}),
            "vae": ([NONE] + runtime.list_models("vae"), {"tooltip": "Single files: wan_2.1_vae (Wan2.1, Wan2.2 A14B) "
                                                          "or wan2.2_vae (TI2V-5B)."}),
            "text_encoder": ([NONE] + runtime.list_models("text_encoders"),
                             {"tooltip": "Single files: umt5_xxl (fp16, bf16 or fp8_e4m3fn_scaled)."}),
            "clip_vision": ([NONE] + runtime.list_models("clip_vision"),
                            {"tooltip": "Single files, Wan2.1 I2V only: clip_vision_h. Other models ignore it."}),
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


NODE_CLASS_MAPPINGS = {"InterplayWanLoader": InterplayWanLoader}
NODE_DISPLAY_NAME_MAPPINGS = {"InterplayWanLoader": "Wan Loader (Interplay)"}
