"""Apply a saved LoRA to a loaded backbone (the Train LoRA node's output, or a diffusers-format LoRA file)."""
from __future__ import annotations

from ..models import runtime
from ._choices import header_metadata

INTERPLAY_PREFIX = "interplay/"


def lora_choices() -> list[str]:
    """Files in loras/, then LoRAs trained by the pack in interplay/ (``interplay/<run>/checkpoint.safetensors``):
    an interplay/ file is offered only when its header says it is a LoRA (training writes state files and
    branches there too)."""
    return runtime.list_models("loras") + [INTERPLAY_PREFIX + f for f in runtime.list_models("interplay")
                                           if "interplay_lora" in header_metadata("interplay", f)]


class InterplayLoraLoader:
    DESCRIPTION = ("Apply a LoRA to a backbone: a file from loras/ in the diffusers/peft format (keys like "
                   "transformer.transformer_blocks.0.attn1.to_q.lora_A.weight, as diffusers and the Train LoRA node "
                   "write it), or a run of the Train LoRA node (interplay/<run>/checkpoint.safetensors). The input "
                   "backbone is not changed (the output shares its frozen weights, so this costs only the LoRA's "
                   "memory); chain several loaders to stack LoRAs.")
    CATEGORY = "Interplay/loaders"
    FUNCTION = "load"
    RETURN_TYPES = ("INTERPLAY_BACKBONE",)
    RETURN_NAMES = ("backbone",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "backbone": ("INTERPLAY_BACKBONE", {"tooltip": "The loaded backbone the LoRA was trained on."}),
            "lora": (lora_choices(), {"tooltip": "A LoRA file in loras/, or interplay/<run>/checkpoint.safetensors "
                                      "written by Train LoRA.", "model_folder": "loras", "interplay_path": "model"}),
            "strength": ("FLOAT", {"default": 1.0, "min": -4.0, "max": 4.0, "step": 0.05,
                                   "tooltip": "Scale of the LoRA's update: 0 = off, 1 = as trained."}),
        }}

    def load(self, backbone, lora, strength):
        from ..models.training.lora import apply_lora

        node = "LoRA Loader"
        if not lora:
            raise ValueError(f"{node}: no LoRA picked; put a .safetensors LoRA in models/loras/ or train one with "
                             "the Train LoRA node")
        try:
            if lora.startswith(INTERPLAY_PREFIX):
                path = runtime.model_path("interplay", lora[len(INTERPLAY_PREFIX):])
            else:
                path = runtime.model_path("loras", lora)
            return (apply_lora(backbone, path, strength=float(strength)),)
        except (ValueError, FileNotFoundError) as ex:
            raise type(ex)(f"{node}: {ex}") from ex


NODE_CLASS_MAPPINGS = {"InterplayLoraLoader": InterplayLoraLoader}
NODE_DISPLAY_NAME_MAPPINGS = {"InterplayLoraLoader": "LoRA Loader (Interplay)"}
