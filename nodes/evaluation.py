"""Evaluation node: score a generated video against a reference video and the reference object's mask."""
from __future__ import annotations

import math

from ..models import metrics as M
from ..models import runtime
from ..models import video_io as vio
from ..models.sandbox import evaluate as ev

_FLOATS = ("iou", "direction_error_deg", "endpoint_error_px", "motion_fidelity", "psnr", "ssim")


class InterplayEvaluateVideo:
    DESCRIPTION = ("Score a generated video against a reference with no learned model: the reference object's "
                   "frame-0 mask is tracked into the generated video (Lucas-Kanade) and compared with the reference "
                   "mask per frame (IoU), centroid direction error (degrees) and end-point error (px) frame 0 -> "
                   "last, InterDyn's motion fidelity (100 points, range -2..2), and PSNR/SSIM. A 1-frame mask is "
                   "tracked through the reference too. Writes the JSON report to the output folder. NaN means the "
                   "value is undefined (an object that does not move has no direction; a mask under 100 px has no "
                   "motion fidelity).")
    CATEGORY = "Interplay/evaluation"
    FUNCTION = "evaluate"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING", "FLOAT", "FLOAT", "FLOAT", "FLOAT", "FLOAT", "FLOAT")
    RETURN_NAMES = ("report_json", "iou", "direction_error_deg", "endpoint_error_px", "motion_fidelity", "psnr",
                    "ssim")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "generated": ("IMAGE", {"tooltip": "Generated frames [F,H,W,3]; resized to the reference size if "
                                               "they differ, and trimmed to the shorter clip."}),
            "reference": ("IMAGE", {"tooltip": "Reference (ground-truth) frames [F,H,W,3]; frame 0 should be the "
                                               "shared conditioning image."}),
            "reference_mask": ("MASK", {"tooltip": "The object's mask in the reference: [F,H,W], or one frame "
                                                   "[1,H,W] (then it is tracked through the reference too)."}),
            "skip_first": ("BOOLEAN", {"default": True, "tooltip": "Leave frame 0 (the conditioning image) out of "
                                                                   "IoU, PSNR and SSIM, as InterDyn reports."}),
            "refine": (["none", "colour"], {"default": "none", "tooltip": "colour: refine the tracked mask by "
                                                                         "colour similarity to the frame-0 "
                                                                         "object (follows shape changes)."}),
            "filename_prefix": ("STRING", {"default": "Interplay/eval", "interplay_path": "save",
                                           "tooltip": "Where the JSON report is "
                                                                                  "written in the output folder; "
                                                                                  "empty writes none."}),
        }, "optional": {
            "method": (list(M.TRACK_METHODS), {"default": "match", "tooltip": "match: find the object by its "
                                                                              "frame-0 appearance around the LK "
                                                                              "prediction; lk: LK points alone."}),
        }}

    def evaluate(self, generated, reference, reference_mask, skip_first=True, refine="none",
                 filename_prefix="Interplay/eval", method="match"):
        node = "InterplayEvaluateVideo"
        for name, x in (("generated", generated), ("reference", reference)):
            if x.ndim != 4 or x.shape[-1] != 3:
                raise ValueError(f"{node}: '{name}' must be an IMAGE batch [F,H,W,3], got {tuple(x.shape)}")
        mask = reference_mask if reference_mask.ndim == 3 else reference_mask[None]
        if mask.ndim != 3 or tuple(mask.shape[1:]) != tuple(reference.shape[1:3]):
            raise ValueError(f"{node}: 'reference_mask' must be [F,H,W] at the reference size "
                             f"{tuple(reference.shape[1:3])}, got {tuple(reference_mask.shape)}. Fix: resize the "
                             "mask with the reference frames.")
        if not bool((mask[0] > 0.5).any()):
            raise ValueError(f"{node}: 'reference_mask' frame 0 is empty; expected the object's mask. Fix: "
                             "segment the object in the reference's first frame.")
        ref = reference.detach().cpu().float().numpy()
        n = min(len(generated), len(ref))
        if mask.shape[0] == 1:
            masks, _ = M.track_object(ref[:n], mask[0].cpu().numpy(), method=method, refine=refine)
        elif mask.shape[0] >= n:
            masks = (mask[:n] > 0.5).cpu().numpy()
        else:
            raise ValueError(f"{node}: 'reference_mask' has {mask.shape[0]} frames, the clips {n}; expected 1 or "
                             f"at least {n}.")
        report = ev.evaluate_clip(generated.detach().cpu().double().numpy(),
                                  {"frames": ref[:n], "masks": masks[None], "driven": [0]},
                                  method=method, refine=refine, skip_first=skip_first)
        report.pop("objects", None)
        report = {"v": 1, **report, "options": {"skip_first": skip_first, "method": method, "refine": refine,
                                               "reference_mask_frames": int(mask.shape[0])}}
        text = ev.to_json(report)
        ui_text = ", ".join(f"{k} {report[k]:.3f}" if not math.isnan(report[k]) else f"{k} n/a" for k in _FLOATS)
        if filename_prefix:
            path, _, _ = vio.counter_path(runtime.output_directory(), filename_prefix, "json")
            path.write_text(text)
            ui_text += f"\nreport: {path.name}"
        return {"ui": {"text": [ui_text]}, "result": (text,) + tuple(float(report[k]) for k in _FLOATS)}


NODE_CLASS_MAPPINGS = {"InterplayEvaluateVideo": InterplayEvaluateVideo}
NODE_DISPLAY_NAME_MAPPINGS = {"InterplayEvaluateVideo": "Evaluate Video (Interplay)"}
