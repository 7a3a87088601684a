"""InterDynTask: train the InterDyn branch on a frozen SVD (the trainer's Task protocol, models/training/trainer.py).

Paper recipe: EDM with ln sigma ~ N(0.7, 1.6^2), Adam, lr 1e-5, the input image dropped 5% of the time (both
the CLIP embedding and the concatenated image latent zeroed, matching the sampler's unconditional half).
Loss (sigma_data = 1): lambda(sigma) * ||D(x0 + sigma n) - x0||^2, D = c_skip x + c_out F(c_in x, c_noise).

Batches (sandbox format, ``SandboxDataset``): ``frames`` [B,F,H,W,3] float 0..1 and the driver's mask
``pusher_mask`` [B,F,H,W] (``driver_mask`` or ``mask`` also accepted). Frame 0 is the input image.
"""
from __future__ import annotations

import torch

from ..backbones import svd as svdb
from ..backbones.base import Backbone, cast
from ..conditions.hand_mask import mask_to_condition
from ..control.base import ControlBranch
from ..control.interdyn import new_branch
from ..sampling import edm

MASK_KEYS = ("pusher_mask", "driver_mask", "mask")


def sample_sigmas(n: int, generator: torch.Generator, p_mean: float = 0.7, p_std: float = 1.6) -> torch.Tensor:
    """EDM training noise levels [n]: exp(p_mean + p_std * N(0,1)) (CPU float32)."""
    return (p_mean + p_std * torch.randn(n, generator=generator)).exp()


def drop_mask(n: int, generator: torch.Generator, p: float) -> torch.Tensor:
    """[n] bool: which samples lose their input image (classifier-free guidance dropout)."""
    return torch.rand(n, generator=generator) < p


class InterDynTask:
    """Train an InterDyn branch (a fresh zero-initialised copy of the backbone's encoder, or a loaded one)."""

    def __init__(self, backbone: Backbone, branch: ControlBranch | None = None, *, p_mean: float = 0.7,
                 p_std: float = 1.6, p_drop_image: float = 0.05, fps_id: float = 6, motion_bucket_id: float = 40,
                 noise_aug: float = 0.02, lr: float = 1e-5, residual_rule: str = "once",
                 generator: torch.Generator | None = None):
        if backbone.family != "svd":
            raise ValueError(f"InterDynTask: the backbone is {backbone.family}; InterDyn trains on SVD")
        self.bb = backbone
        self.branch = branch or new_branch(backbone.denoiser, residual_rule=residual_rule, generator=generator)
        # trainable weights in fp32 (Adam at lr 1e-5 underflows bf16); model_forward autocasts to the
        # backbone's dtype for the compute
        cast(self.branch.module, backbone.device, torch.float32)
        self.branch.module.requires_grad_(True).train()
        backbone.denoiser.requires_grad_(False)
        self.hp = dict(p_mean=p_mean, p_std=p_std, p_drop_image=p_drop_image, fps_id=fps_id,
                       motion_bucket_id=motion_bucket_id, noise_aug=noise_aug, lr=lr)

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
        bb, hp = self.bb, self.hp
        frames = batch["frames"].float()
        if frames.ndim != 5 or frames.shape[-1] != 3:
            raise ValueError(f"InterDynTask: batch 'frames' must be [B,F,H,W,3]; got {tuple(frames.shape)}")
        key = next((k for k in MASK_KEYS if k in batch), None)
        if key is None:
            raise ValueError(f"InterDynTask: the batch has no driver mask ({', '.join(MASK_KEYS)}); the dataset "
                             "needs the driving entity's mask per frame")
        masks = batch[key]
        B, Fn, H, W, _ = frames.shape
        if tuple(masks.shape) != (B, Fn, H, W):
            raise ValueError(f"InterDynTask: '{key}' {tuple(masks.shape)} must match frames {(B, Fn, H, W)}")
        dev, dt = bb.device, bb.dtype
        with torch.no_grad():
            x0 = svdb.encode_frames(bb, frames).float()  # [B,F,C,h,w]
            img_lat = torch.cat([svdb.encode_image_latent(bb, frames[i:i + 1, 0], hp["noise_aug"], generator)
                                 for i in range(B)])
            emb = svdb.encode_image_embeds(bb, frames[:, 0])
            drop = drop_mask(B, generator, hp["p_drop_image"]).to(dev)
            keep = (~drop).to(dt)
            img_lat = img_lat * keep.view(B, 1, 1, 1)
            emb = emb * keep.view(B, 1, 1)
            control = torch.stack([mask_to_condition(m) for m in masks]).permute(0, 1, 4, 2, 3).to(dev, dt)
        sigma = sample_sigmas(B, generator, hp["p_mean"], hp["p_std"]).to(dev)
        noise = torch.randn(x0.shape, generator=generator).to(dev)
        s = sigma.view(B, 1, 1, 1, 1)
        x = x0 + noise * s
        c_skip, c_out, c_in, c_noise = (v.float() for v in edm.precondition(sigma))
        inp = torch.cat([(x * c_in.view(B, 1, 1, 1, 1)).to(dt),
                         img_lat[:, None].expand(B, Fn, *img_lat.shape[1:]).to(dt)], dim=2)
        tids = svdb.added_time_ids(hp["fps_id"], hp["motion_bucket_id"], hp["noise_aug"], B, dev, dt)
        out = edm.model_forward(bb, inp, c_noise.to(dev), emb, tids, branch=self.branch, control=control)
        d = c_skip.view(B, 1, 1, 1, 1) * x + c_out.view(B, 1, 1, 1, 1) * out.float()
        w = edm.loss_weight(sigma).view(B, 1, 1, 1, 1)
        return (w * (d - x0) ** 2).mean(dim=(1, 2, 3, 4)).mean()
