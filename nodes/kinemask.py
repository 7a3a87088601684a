"""KineMask on CogVideoX: the branch loader and the interaction prompt (the Arrow Painter and Velocity Control are in
nodes/painter.py). The CogVideoX Sampler runs the branch through the registry."""
from __future__ import annotations

from ..models import runtime
from . import _choices

NEW_BRANCH = "(new, zero-initialised from the backbone)"

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


def _branch_choices() -> list[str]:
    return _choices.branch_choices(NEW_BRANCH, "kinemask")


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
                                           "model_folder": ["controlnet", "interplay"], "interplay_path": "model"}),
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


NODE_CLASS_MAPPINGS = {
    "InterplayKineMaskBranchLoader": InterplayKineMaskBranchLoader,
    "InterplayInteractionPrompt": InterplayInteractionPrompt,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "InterplayKineMaskBranchLoader": "KineMask Branch Loader (Interplay)",
    "InterplayInteractionPrompt": "Interaction Prompt (Interplay)",
}
