"""Composing controls: Apply Control binds a branch to its control with a weight and step range and chains it after
other controls, so one sampler runs several branches (or several controls through one branch) at once."""
from __future__ import annotations

from ._controls import CONTROL_RULE


class InterplayApplyControl:
    DESCRIPTION = ("Bind a control branch to its control (Arrow Painter, Driving Mask, ...) with a weight and a step "
                   "range, after the controls already chained in 'controls'. Connect the result to a sampler's "
                   "'controls' input; every control in the chain runs in the same denoising steps. A branch that "
                   "needs no control signal runs without one. " + CONTROL_RULE)
    CATEGORY = "Interplay/conditions"
    FUNCTION = "apply"
    RETURN_TYPES = ("INTERPLAY_CONTROLS",)
    RETURN_NAMES = ("controls",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "branch": ("INTERPLAY_BRANCH", {"tooltip": "The branch that reads the control."}),
            "weight": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 5.0, "step": 0.05,
                                 "tooltip": "Scales this control (multiplies the control's own weight)."}),
            "start": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                "tooltip": "Fraction of the steps before this control starts (intersects the "
                                           "control's own range)."}),
            "end": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                              "tooltip": "Fraction of the steps after which this control stops."}),
        }, "optional": {
            "control": ("INTERPLAY_CONTROL", {"tooltip": "The control signal the branch reads."}),
            "controls": ("INTERPLAY_CONTROLS", {"tooltip": "Controls chained before this one."}),
        }}

    def apply(self, branch, weight, start, end, control=None, controls=None):
        from ..models.control import registry
        from ..models.control.base import ControlStack, bind

        node = "Apply Control"
        spec = registry.of(branch)
        if control is None and spec.signals:
            raise ValueError(f"{node}: the {spec.label} needs a control ({' or '.join(spec.signals)}); connect "
                             f"'control'{(' (' + spec.hint + ')') if spec.hint else ''}")
        if control is not None and control.kind not in spec.signals:
            raise ValueError(f"{node}: 'control' is a {control.kind!r} signal but the {spec.label} takes "
                             f"{' or '.join(spec.signals) or 'none'}")
        families = {registry.of(bc.branch).family for bc in (controls.items if controls else ())}
        if families and spec.family not in families:
            raise ValueError(f"{node}: the {spec.label} works on {spec.family} backbones but the chained controls are "
                             f"for {', '.join(sorted(families))}; one sampler runs one backbone family")
        stack = controls if controls is not None else ControlStack()
        return (stack.then(bind(branch, control, weight, start, end, where=node)),)


NODE_CLASS_MAPPINGS = {"InterplayApplyControl": InterplayApplyControl}
NODE_DISPLAY_NAME_MAPPINGS = {"InterplayApplyControl": "Apply Control (Interplay)"}
