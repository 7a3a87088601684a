"""What flows between a condition builder, a control branch and a sampler."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch


@dataclass
class ControlSignal:
    """A control video for one branch (ComfyUI type ``INTERPLAY_CONTROL``).

    Fields:
        video: [F, H, W, C] float tensor on CPU at image resolution; value range depends on ``kind``
            (velocity: signed, [-1, 1]; hand_mask: [-1, 1] three channels).
        kind: "velocity" (KineMask), "hand_mask" (InterDyn), "hoi" (PAM), "camera" (GameCraft).
        weight: residual scale applied by the sampler.
        start, end: fraction of the sampling steps in which the branch is active, 0 <= start < end <= 1.
        meta: free-form facts for previews and provenance (arrows, fps, reference speed).
    """

    video: torch.Tensor
    kind: str
    weight: float = 1.0
    start: float = 0.0
    end: float = 1.0
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.video.ndim != 4:
            raise ValueError(f"control video must be [F,H,W,C]; got shape {tuple(self.video.shape)}")
        if not (0.0 <= self.start < self.end <= 1.0):
            raise ValueError(f"control step range must satisfy 0 <= start < end <= 1; got {self.start}, {self.end}")

    def active(self, step: int, num_steps: int) -> bool:
        """Whether the branch runs at sampler step ``step`` (0-based) of ``num_steps``."""
        frac = step / max(num_steps, 1)
        return self.start <= frac < self.end

    def replace(self, **changes) -> "ControlSignal":
        return dataclasses.replace(self, **changes)


@dataclass
class ControlBranch:
    """A trained (or freshly initialised) control branch (ComfyUI type ``INTERPLAY_BRANCH``).

    Fields:
        kind: which method's branch ("kinemask", "interdyn", ...), matching ControlSignal.kind's consumer.
        family: the backbone family it attaches to.
        module: the nn.Module.
        config: the constructor arguments, saved beside the weights.
        source: file it came from, or "init".
    """

    kind: str
    family: str
    module: torch.nn.Module
    config: dict = field(default_factory=dict)
    source: str = "init"


@dataclass
class BoundControl:
    """A branch with the control it consumes and the settings it runs with: one entry of ``INTERPLAY_CONTROLS``,
    what a sampler turns into forward-contract attachments (``control.registry.attachments``).

    Fields:
        branch: the ControlBranch.
        signal: its ControlSignal, or None for a branch that needs none.
        weight: the effective scale (see :func:`bind`).
        start, end: the effective step range [start, end) as fractions of the sampling steps.

    Settings combine by one rule wherever they are set (the condition node, an Apply Control node, the sampler):
    weights multiply and step ranges intersect. So a range painted on the Arrow Painter survives the sampler's
    default 0..1, and a sampler range narrows it further.
    """

    branch: ControlBranch
    signal: ControlSignal | None = None
    weight: float = 1.0
    start: float = 0.0
    end: float = 1.0

    def active(self, step: int, num_steps: int) -> bool:
        frac = step / max(num_steps, 1)
        return self.weight != 0 and self.start <= frac < self.end

    def replace(self, **changes) -> "BoundControl":
        return dataclasses.replace(self, **changes)


def combine_range(a: tuple[float, float], b: tuple[float, float], where: str = "control") -> tuple[float, float]:
    """Intersection of two step ranges; an empty one is an error naming both."""
    start, end = max(a[0], b[0]), min(a[1], b[1])
    if not start < end:
        raise ValueError(f"{where}: the step ranges {a[0]:g}..{a[1]:g} and {b[0]:g}..{b[1]:g} do not overlap, so the "
                         "control would never run; widen one of them (weights multiply and ranges intersect)")
    return start, end


def bind(branch: ControlBranch, signal: ControlSignal | None = None, weight: float = 1.0, start: float = 0.0,
         end: float = 1.0, where: str = "control") -> BoundControl:
    """Bind a branch to its control with the settings of the node that binds them (product and intersection with
    the signal's own weight and range)."""
    if not 0.0 <= start < end <= 1.0:
        raise ValueError(f"{where}: control start ({start}) and end ({end}) must satisfy 0 <= start < end <= 1")
    s_w, s_range = (signal.weight, (signal.start, signal.end)) if signal is not None else (1.0, (0.0, 1.0))
    lo, hi = combine_range(s_range, (start, end), where)
    return BoundControl(branch=branch, signal=signal, weight=s_w * weight, start=lo, end=hi)


def apply_settings(bound: BoundControl, weight: float = 1.0, start: float = 0.0, end: float = 1.0,
                   where: str = "control") -> BoundControl:
    """A bound control under a further node's settings (the sampler's control_weight / start / end)."""
    if not 0.0 <= start < end <= 1.0:
        raise ValueError(f"{where}: control start ({start}) and end ({end}) must satisfy 0 <= start < end <= 1")
    lo, hi = combine_range((bound.start, bound.end), (start, end), where)
    return bound.replace(weight=bound.weight * weight, start=lo, end=hi)


@dataclass(frozen=True)
class ControlStack:
    """Controls chained by Apply Control nodes, in order (ComfyUI type ``INTERPLAY_CONTROLS``)."""

    items: tuple = ()

    def then(self, bound: BoundControl) -> "ControlStack":
        return ControlStack(self.items + (bound,))
