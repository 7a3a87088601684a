"""InterDynTask: train the InterDyn branch on a frozen SVD (the trainer's Task protocol, models/training/trainer.py),
on the SVD training base (``training.svd``: the EDM objective) with the branch attached through the forward contract.

Paper recipe: EDM with ln sigma ~ N(0.7, 1.6^2), Adam, lr 1e-5, the input image dropped 5% of the time.

Batches (sandbox format, ``SandboxDataset``): ``frames`` [B,F,H,W,3] float 0..1 and the driver's mask
``pusher_mask`` [B,F,H,W] (``driver_mask`` or ``mask`` also accepted). Frame 0 is the input image.
"""
from __future__ import annotations

import torch

from ..backbones.base import Backbone, cast
from ..conditions.hand_mask import mask_to_condition
from ..control.base import ControlBranch
from ..control.interdyn import InterDynAttachment, new_branch
from .svd import SVDTaskBase, drop_mask, sample_sigmas  # noqa: F401

MASK_KEYS = ("pusher_mask", "driver_mask", "mask")


class InterDynTask(SVDTaskBase):
    """Train an InterDyn branch (a fresh zero-initialised copy of the backbone's encoder, or a loaded one)."""

    def __init__(self, backbone: Backbone, branch: ControlBranch | None = None, *, p_mean: float = 0.7,
                 p_std: float = 1.6, p_drop_image: float = 0.05, fps_id: float = 6, motion_bucket_id: float = 40,
                 noise_aug: float = 0.02, lr: float = 1e-5, residual_rule: str = "once",
                 generator: torch.Generator | None = None):
        self._setup(backbone, dict(p_mean=p_mean, p_std=p_std, p_drop_image=p_drop_image, fps_id=fps_id,
                                   motion_bucket_id=motion_bucket_id, noise_aug=noise_aug, lr=lr), "InterDynTask")
        self.branch = branch or new_branch(backbone.denoiser, residual_rule=residual_rule, generator=generator)
        # trainable weights in fp32 (Adam at lr 1e-5 underflows bf16); model_forward autocasts to the
        # backbone's dtype for the compute
        cast(self.branch.module, backbone.device, torch.float32)
        self.branch.module.requires_grad_(True).train()

    # -- Task protocol
    def trainable_parameters(self):
        return [p for p in self.branch.module.parameters() if p.requires_grad]

    def trainable_state_dict(self) -> dict:
        return {k: v.detach().cpu().clone() for k, v in self.branch.module.state_dict().items()}

    def load_trainable_state_dict(self, sd: dict) -> None:
        self.branch.module.load_state_dict(sd, strict=True)

    def config(self) -> dict:
        return {"task": "interdyn", "optimizer": "adam", **self.hp,
                "residual_rule": self.branch.config.get("residual_rule", "once"),
                "branch": {k: (list(v) if isinstance(v, tuple) else v)
                           for k, v in dict(self.branch.module.config).items() if not k.startswith("_")}}

    def loss(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        """Scalar EDM loss for a batch; randomness from the CPU ``generator``."""
        frames = self.frames_of(batch, "InterDynTask")
        key = next((k for k in MASK_KEYS if k in batch), None)
        if key is None:
            raise ValueError(f"InterDynTask: the batch has no driver mask ({', '.join(MASK_KEYS)}); the dataset "
                             "needs the driving entity's mask per frame")
        masks = batch[key]
        B, Fn, H, W, _ = frames.shape
        if tuple(masks.shape) != (B, Fn, H, W):
            raise ValueError(f"InterDynTask: '{key}' {tuple(masks.shape)} must match frames {(B, Fn, H, W)}")

        def attachments():
            control = torch.stack([mask_to_condition(m) for m in masks]).permute(0, 1, 4, 2, 3)
            return [InterDynAttachment(self.branch, [(control.to(self.bb.device, self.bb.dtype), 1.0, 0.0, 1.0)])]

        return self.edm_loss(frames, generator, attachments)
