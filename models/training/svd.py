"""The SVD training base: what every SVD-family training task shares (the EDM objective of SVD with the paper
recipe's noise levels and image dropout, through the family forward with the task's attachments).

Loss (sigma_data = 1): lambda(sigma) * ||D(x0 + sigma n) - x0||^2, D = c_skip x + c_out F(c_in x, c_noise), with
ln sigma ~ N(p_mean, p_std^2); the input image is dropped with ``p_drop_image`` (both the CLIP embedding and the
concatenated image latent zeroed, matching the sampler's unconditional half). Batches: ``frames`` [B,F,H,W,3]
float 0..1; frame 0 is the input image.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..backbones import svd as svdb
from ..backbones.base import Backbone
from ..sampling import edm


def sample_sigmas(n: int, generator: torch.Generator, p_mean: float = 0.7, p_std: float = 1.6) -> torch.Tensor:
    """EDM training noise levels [n]: exp(p_mean + p_std * N(0,1)) (CPU float32)."""
    return (p_mean + p_std * torch.randn(n, generator=generator)).exp()


def drop_mask(n: int, generator: torch.Generator, p: float) -> torch.Tensor:
    """[n] bool: which samples lose their input image (classifier-free guidance dropout)."""
    return torch.rand(n, generator=generator) < p


class SVDTaskBase:
    """EDM training on a frozen SVD. ``hp`` holds p_mean, p_std, p_drop_image, fps_id, motion_bucket_id, noise_aug."""

    def _setup(self, backbone: Backbone, hp: dict, who: str) -> None:
        if backbone.family != "svd":
            raise ValueError(f"{who}: the backbone is {backbone.family}; this task trains on SVD")
        self.bb = backbone
        self.hp = dict(hp)
        backbone.denoiser.requires_grad_(False)

    def frames_of(self, batch: dict, who: str) -> torch.Tensor:
        frames = batch["frames"].float()
        if frames.ndim != 5 or frames.shape[-1] != 3:
            raise ValueError(f"{who}: batch 'frames' must be [B,F,H,W,3]; got {tuple(frames.shape)}")
        return frames

    def edm_loss(self, frames: torch.Tensor, generator: torch.Generator,
                 attachments: Callable[[], list]) -> torch.Tensor:
        """Scalar EDM loss; ``attachments()`` is called inside the no-grad conditioning block (after the image
        dropout is drawn) and returns the forward-contract attachments of the task (its branch)."""
        bb, hp = self.bb, self.hp
        B, Fn = frames.shape[:2]
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
            atts = attachments()
        sigma = sample_sigmas(B, generator, hp["p_mean"], hp["p_std"]).to(dev)
        noise = torch.randn(x0.shape, generator=generator).to(dev)
        s = sigma.view(B, 1, 1, 1, 1)
        x = x0 + noise * s
        c_skip, c_out, c_in, c_noise = (v.float() for v in edm.precondition(sigma))
        parts = {"noise": (x * c_in.view(B, 1, 1, 1, 1)).to(dt),
                 "image": img_lat[:, None].expand(B, Fn, *img_lat.shape[1:]).to(dt)}
        inp = bb.layout.assemble(parts, dim=2) if bb.layout is not None else torch.cat(list(parts.values()), 2)
        tids = svdb.added_time_ids(hp["fps_id"], hp["motion_bucket_id"], hp["noise_aug"], B, dev, dt)
        out = edm.model_forward(bb, inp, c_noise.to(dev), emb, tids, attachments=atts)
        d = c_skip.view(B, 1, 1, 1, 1) * x + c_out.view(B, 1, 1, 1, 1) * out.float()
        w = edm.loss_weight(sigma).view(B, 1, 1, 1, 1)
        return (w * (d - x0) ** 2).mean(dim=(1, 2, 3, 4)).mean()
