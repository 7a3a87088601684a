"""Training a video VAE from scratch on sandbox clips (the embedded demo model's AutoencoderKLCogVideoX).

Real backbones ship their VAE; only a from-scratch tiny model needs this. The objective is the usual one for
a KL autoencoder without a discriminator: L1 + MSE reconstruction plus a small KL term. After training,
``latent_scale`` measures the latents' standard deviation so the config's ``scaling_factor`` makes them unit
variance, as the diffusion objective expects.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from .. import runtime


@dataclass
class VaeTrainConfig:
    steps: int = 2000
    lr: float = 2e-4
    betas: tuple = (0.9, 0.99)
    weight_decay: float = 0.0
    warmup: int = 100
    kl_weight: float = 1e-6
    clip_norm: float = 1.0
    seed: int = 0


def vae_loss(vae, video: torch.Tensor, kl_weight: float, generator: torch.Generator | None = None):
    """video [B,3,F,H,W] in [-1,1] -> (loss, logs). Reconstruction from a posterior sample."""
    posterior = vae.encode(video).latent_dist
    z = posterior.sample(generator)
    recon = vae.decode(z).sample
    if recon.shape != video.shape:
        t = int(getattr(vae.config, "temporal_compression_ratio", 4))
        raise ValueError(f"VAE returned {tuple(recon.shape)} for input {tuple(video.shape)}; the frame count must be "
                         f"{2 * t}k+1 for this CogVideoX VAE ({t}x time compression; e.g. {2 * t + 1}, {4 * t + 1})")
    l1 = (recon - video).abs().mean()
    mse = F.mse_loss(recon, video)
    kl = posterior.kl().mean() / (z[0].numel())
    loss = l1 + mse + kl_weight * kl
    return loss, {"l1": float(l1.detach()), "mse": float(mse.detach()), "kl": float(kl.detach())}


def train_vae(vae, batches: Callable[[int], torch.Tensor], cfg: VaeTrainConfig, device=None,
              log: Callable[[int, float, dict], None] | None = None) -> list[float]:
    """Train ``vae`` in place. ``batches(step)`` returns video [B,3,F,H,W] in [-1,1] for that step (seeded by the
    caller, so a run is reproducible). Returns the loss per step."""
    device = device or runtime.compute_device()
    vae.to(device).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)

    def lr_at(step):
        if step < cfg.warmup:
            return cfg.lr * (step + 1) / cfg.warmup
        t = (step - cfg.warmup) / max(cfg.steps - cfg.warmup, 1)
        return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))

    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    losses = []
    bar = runtime.progress(cfg.steps, "vae")
    for step in range(cfg.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        video = batches(step).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss, logs = vae_loss(vae, video, cfg.kl_weight, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), cfg.clip_norm)
        opt.step()
        lv = float(loss.detach())
        losses.append(lv)
        if log is not None:
            log(step, lv, logs)
        bar.update(text=f"loss {lv:.4f} l1 {logs['l1']:.4f}")
    vae.eval()
    return losses


@torch.no_grad()
def latent_scale(vae, videos: Iterator[torch.Tensor], device=None) -> float:
    """1 / std of posterior means over the given videos: the ``scaling_factor`` to store in the VAE config."""
    device = device or runtime.compute_device()
    vals = []
    for v in videos:
        vals.append(vae.encode(v.to(device)).latent_dist.mean.float().flatten().cpu())
    z = torch.cat(vals)
    return float(1.0 / z.std())
