"""PAM (hand-object interaction video): condition nodes and the motion branch.

The CogVideoX Sampler runs PAM unchanged (its 'branch' + 'control' inputs, or an Apply Control chain). The
release's sampler settings (testing/evaluation_*.py): scheduler dpm, 50 steps, cfg 6 with dynamic CFG, seed 42,
49 frames at 480x720, control_weight 1.0 on the sampler (its 0.5 default is KineMask's) and the negative prompt
``models.control.pam.NEGATIVE_PROMPT``.
"""
from __future__ import annotations

from ..models import runtime

# ================================================================================ motion branch (PAM §5)
# PAM Branch Loader and PAM Control: the motion branch on CogVideoX-5B-I2V and its control signal. The rest of this
# file (HOI sequences, trajectories, the condition renderer) is the condition side.
PAM_NEW_BRANCH = "(new, zero-initialised from the backbone)"
PAM_DIFFUSERS = "diffusers/"
PAM_SAMPLER_NOTE = (
    "Sampler settings of the release: CogVideoX Sampler with scheduler dpm, steps 50, cfg 6, dynamic_cfg on, "
    "seed 42, 49 frames at 480x720, control_weight 1.0 (the sampler's 0.5 default is KineMask's) and the negative "
    "prompt \"The video is not of a high quality, it has a low resolution. Watermark present in each frame. The "
    "background is solid. Strange body and strange trajectory. Distortion.\"")


def _pam_branch_choices() -> list[str]:
    """[new] + released PAM folders in diffusers/ + PAM branches (folders, pack files) in controlnet/ and
    interplay/."""
    from ..models.control import pam as P
    from . import _choices

    released = []
    for d in runtime.list_models("diffusers", folders_only=True):
        try:
            if P.released_folder(runtime.model_path("diffusers", d)) is not None:
                released.append(PAM_DIFFUSERS + d)
        except (OSError, ValueError):
            continue
    rest = _choices.branch_choices(PAM_NEW_BRANCH, P.KIND)
    return rest[:1] + released + rest[1:]


class InterplayPAMBranchLoader:
    DESCRIPTION = ("Load the PAM motion branch (12 copied CogVideoX blocks driven by depth, segmentation and "
                   "hand-keypoint videos): a released PAM checkpoint (a whole CogVideoX transformer folder, "
                   "class CogVideoXTransformer3DModelTracking, e.g. GasaiYU/PAM dexycb_all_cond) from diffusers/ or "
                   "controlnet/, of which only the branch's tensors are read; a branch file the pack trained "
                   "(interplay/, controlnet/); or a new branch copied from the backbone's first blocks with zero "
                   "projections (for training; it changes nothing until trained). The block count is read from "
                   "the weights. DiffusionAsShader checkpoints (same class name) are recognised and refused. "
                   "The text output says which layout was found. Use it with the CogVideoX-5B-I2V backbone. "
                   + PAM_SAMPLER_NOTE)
    CATEGORY = "Interplay/loaders"
    FUNCTION = "load"
    RETURN_TYPES = ("INTERPLAY_BRANCH", "STRING")
    RETURN_NAMES = ("branch", "layout")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "branch": (_pam_branch_choices(), {"tooltip": "A released PAM folder (diffusers/ or controlnet/), a "
                                               "pack branch file (interplay/, controlnet/), or new.",
                                               "model_folder": "controlnet"}),
            "num_blocks": ("INT", {"default": 12, "min": 1, "max": 42, "tooltip": "New branch only: how many "
                                   "backbone blocks are copied (PAM: the first 12). Files carry their own count."}),
        }, "optional": {
            "backbone": ("INTERPLAY_BACKBONE", {"tooltip": "The CogVideoX-I2V backbone: needed for a new branch; "
                                                "sets dtype and device."}),
        }}

    def load(self, branch, num_blocks, backbone=None):
        from ..models.control import pam as P

        node = "PAM Branch Loader"
        if backbone is not None:
            try:
                P.check_backbone(backbone, node)
            except ValueError as ex:
                raise ValueError(f"{ex} ('backbone')") from None
        if branch == PAM_NEW_BRANCH:
            if backbone is None:
                raise ValueError(f"{node}: a new branch copies the backbone's blocks; connect 'backbone' or pick a "
                                 "released folder or a branch file in 'branch'")
            layers = backbone.denoiser.config.num_layers
            if num_blocks > layers:
                raise ValueError(f"{node}: 'num_blocks' {num_blocks} exceeds the backbone's {layers} blocks; PAM "
                                 "copies the first 12")
            br = P.new_branch(backbone.denoiser, num_blocks=num_blocks)
            text = (f"new zero-initialised PAM branch: copies of backbone blocks 0..{num_blocks - 1}, both combining "
                    "projections zero (the output equals the backbone's until trained)")
            return {"ui": {"text": [text]}, "result": (br, text)}
        if branch.startswith(PAM_DIFFUSERS):
            path = runtime.model_path("diffusers", branch[len(PAM_DIFFUSERS):])
        elif branch.startswith("interplay/"):
            path = runtime.model_path("interplay", branch[len("interplay/"):])
        else:
            path = runtime.model_path("controlnet", branch)
        dev = backbone.device if backbone is not None else runtime.compute_device()
        dt = backbone.dtype if backbone is not None else runtime.default_dtype(dev)
        try:
            br, _, found = P.load_released(path, dtype=dt, device=dev, where=node)
        except ValueError as ex:
            raise ValueError(f"{ex} ('branch' = {branch!r})") from None
        text = f"{found.message}; loaded {br.config['num_blocks']} blocks as {str(dt).replace('torch.', '')} on {dev}"
        return {"ui": {"text": [text]}, "result": (br, text)}


class InterplayPAMControl:
    DESCRIPTION = ("Bundle PAM's condition videos into one control for the PAM motion branch: depth, segmentation "
                   "and hand-keypoint videos (IMAGE, the encodings PAM was trained on: inferno depth with a black "
                   "background, ADE20K-palette segmentation, the HO-3D-style keypoint drawing), all with the "
                   "generation's frame count and size (480x720 for CogVideoX-5B-I2V). Unconnected conditions are "
                   "disabled (all-zero latents, as the released training drops them); the released weights never "
                   "saw tracking or normal videos, so leave those unconnected for them. The conditions are the same "
                   "on both CFG rows. Connect the output to the CogVideoX Sampler's 'control' with the PAM branch in "
                   "'branch' (or through Apply Control). " + PAM_SAMPLER_NOTE)
    CATEGORY = "Interplay/conditions"
    FUNCTION = "build"
    RETURN_TYPES = ("INTERPLAY_CONTROL",)
    RETURN_NAMES = ("control",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "weight": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 5.0, "step": 0.05, "tooltip": "Scales the "
                                 "branch's residuals (PAM: 1.0). Multiplies with the sampler's control_weight."}),
            "start": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": "Fraction of the "
                                "steps before the branch starts."}),
            "end": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": "Fraction of the "
                              "steps after which the branch stops."}),
            "num_frames": ("INT", {"default": 49, "min": 0, "max": 1024, "tooltip": "The sampler's frame count (PAM: "
                                   "49); conditions of another length are refused here. 0: take their count (the "
                                   "sampler still checks it)."}),
        }, "optional": {
            "depth": ("IMAGE", {"tooltip": "Depth video: inferno colour map, near bright, background black."}),
            "seg": ("IMAGE", {"tooltip": "Segmentation video: ADE20K palette, hand (92,0,255), background black."}),
            "hand": ("IMAGE", {"tooltip": "Hand-keypoint video (PAM's skeleton drawing on black)."}),
            "tracking": ("IMAGE", {"tooltip": "Tracking video slot (zero in the released training: leave empty)."}),
            "normal": ("IMAGE", {"tooltip": "Normal-map slot (zero in the released training: leave empty)."}),
        }}

    def build(self, weight, start, end, num_frames, depth=None, seg=None, hand=None, tracking=None, normal=None):
        from ..models.control import pam as P

        node = "PAM Control"
        given = {"depth": depth, "seg": seg, "hand": hand, "tracking": tracking, "normal": normal}
        if all(v is None for v in given.values()):
            raise ValueError(f"{node}: no condition is connected; connect at least one of depth, seg, hand "
                             "(the released weights use all three)")
        for name, v in given.items():
            if v is not None and (v.ndim != 4 or v.shape[-1] != 3):
                raise ValueError(f"{node}: '{name}' must be an IMAGE batch [F,H,W,3]; got {tuple(v.shape)}")
        if not 0.0 <= start < end <= 1.0:
            raise ValueError(f"{node}: 'start' ({start}) and 'end' ({end}) must satisfy 0 <= start < end <= 1")
        try:
            sig = P.hoi_signal(given, weight=weight, start=start, end=end)
        except ValueError as ex:
            raise ValueError(str(ex).replace("PAM conditions:", f"{node}:")) from None
        frames = int(sig.video.shape[0])
        if num_frames and frames != num_frames:
            raise ValueError(f"{node}: the conditions have {frames} frames but 'num_frames' is {num_frames} (what "
                             f"the sampler generates); render them with {num_frames} frames, or set num_frames to "
                             f"{frames} here and on the sampler (CogVideoX takes 8k+1 frames)")
        return (sig,)


MOTION_NODE_CLASS_MAPPINGS = {
    "InterplayPAMBranchLoader": InterplayPAMBranchLoader,
    "InterplayPAMControl": InterplayPAMControl,
}
MOTION_NODE_DISPLAY_NAME_MAPPINGS = {
    "InterplayPAMBranchLoader": "PAM Branch Loader (Interplay)",
    "InterplayPAMControl": "PAM Control (Interplay)",
}
# ============================================================================ end of motion branch section

NODE_CLASS_MAPPINGS = {**MOTION_NODE_CLASS_MAPPINGS}
NODE_DISPLAY_NAME_MAPPINGS = {**MOTION_NODE_DISPLAY_NAME_MAPPINGS}
