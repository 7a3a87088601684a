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
