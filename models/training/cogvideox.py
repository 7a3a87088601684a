"""The CogVideoX training base: what every CogVideoX-family training task shares (latents, the I2V image condition,
the prompt cache, the v-prediction loss through the family forward with the task's attachments), and the
whole-backbone task.

The objective is ``objectives.v_prediction_loss`` (t ~ U{0..999} on the scheduler's alphas_cumprod, v target; the
released trainer's 1/(1-a)-weighted x0 loss, which equals v-MSE) on the I2V input of CogVideoX-I2V: the backbone's
input layout assembled from the noisy latent and the frame-0 image latent padded with zeros (plus any extra parts a
task supplies). The image is noise-augmented as in diffusers' CogVideoX I2V training script (sigma = exp(N(-3, 0.5))
in [-1,1] pixel units) before encoding; ``image_dropout`` zeroes the image latent for a fraction of samples.

Batches (sandbox format, ``SandboxDataset``): ``frames`` [B,F,H,W,3] float 0..1, ``caption`` list[str].
"""
from __future__ import annotations

import contextlib
import json

import numpy as np
import torch

from ..backbones import cogvideox as cvx
from ..backbones.base import Backbone
from .objectives import v_prediction_loss

DEFAULT_CAPTION = "An object moving on a surface"  # KineMask's ablation caption c0


def alphas_cumprod(bb: Backbone) -> torch.Tensor:
    """[T] float64 of the backbone's CogVideoXDDIMScheduler (snr shift and zero-SNR rescale applied)."""
    from diffusers import CogVideoXDDIMScheduler

    cfg = {k: v for k, v in (bb.scheduler_config or cvx.SCHEDULER_DEFAULTS).items() if not k.startswith("_")}
    return CogVideoXDDIMScheduler.from_config(cfg).alphas_cumprod.to(torch.float64)


def _np_rng(generator: torch.Generator) -> np.random.Generator:
    """A numpy generator seeded from the torch one (keeps a single seeded stream per step)."""
    return np.random.default_rng(int(torch.randint(0, 2 ** 62, (1,), generator=generator)))


class CogVideoXI2VBase:
    """Shared I2V plumbing: latents, image condition, prompt cache, the v-prediction loss."""

    def _setup(self, backbone: Backbone, caption, noise_aug: bool, image_dropout: float, max_text_length: int):
        if backbone.family != "cogvideox":
            raise ValueError(f"{type(self).__name__}: the backbone is {backbone.family}; this task trains CogVideoX")
        self.bb = backbone
        self.caption = caption
        self.noise_aug = bool(noise_aug)
        self.image_dropout = float(image_dropout)
        self.max_text_length = int(max_text_length)
        self._ac = alphas_cumprod(backbone)
        self._prompts: dict[str, torch.Tensor] = {}
        backbone.vae.requires_grad_(False)
        if backbone.text_encoder is not None:
            backbone.text_encoder.requires_grad_(False)

    def prompt_embeds(self, captions: list[str]) -> torch.Tensor:
        """[B,T,D] on bb.device; each distinct caption encoded once (the T5 is frozen)."""
        for c in set(captions) - set(self._prompts):
            self._prompts[c] = cvx.encode_prompt(self.bb, [c], self.max_text_length)[0].cpu()
        return torch.stack([self._prompts[c] for c in captions]).to(self.bb.device, self.bb.dtype)

    def _captions(self, batch: dict, B: int) -> list[str]:
        if self.caption is not None:
            return [self.caption] * B
        caps = batch.get("caption")
        if caps is None:
            return [DEFAULT_CAPTION] * B
        caps = [caps] * B if isinstance(caps, str) else list(caps)
        return [c if c else DEFAULT_CAPTION for c in caps]

    def _frames(self, batch: dict) -> torch.Tensor:
        frames = batch.get("frames")
        if not isinstance(frames, torch.Tensor) or frames.ndim != 5 or frames.shape[-1] != 3:
            got = None if frames is None else (tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames))
            raise ValueError(f"{type(self).__name__}: batch 'frames' must be [B,F,H,W,3] float 0..1; got {got}")
        B, F, H, W, _ = frames.shape
        cvx.check_frames(self.bb, F, H, W, node=type(self).__name__)
        return frames.float()

    def _inputs(self, frames: torch.Tensor, generator: torch.Generator):
        """(x0 [B,f,C,h,w] float32, image latent [B,f,C,h,w] in bb.dtype)."""
        B = frames.shape[0]
        with torch.no_grad():
            x0 = cvx.encode_frames(self.bb, frames, generator=generator).float()
            image = frames[:, 0]
            if self.noise_aug:
                sigma = torch.exp(-3.0 + 0.5 * torch.randn(B, generator=generator)).view(B, 1, 1, 1)
                # diffusers' I2V script adds sigma * N(0,1) in [-1,1] units: half that in 0..1 units
                image = image + sigma * torch.randn(image.shape, generator=generator) / 2
            img = cvx.image_condition(self.bb, image, x0.shape[1], generator=generator)
            if self.image_dropout > 0:
                keep = (torch.rand(B, generator=generator) >= self.image_dropout).to(img.dtype).to(img.device)
                img = img * keep.view(B, 1, 1, 1, 1)
        return x0, img

    def _loss(self, batch, generator, *, attachments=(), inputs: dict | None = None) -> torch.Tensor:
        """The v-prediction loss of the family forward with ``attachments`` (a task's branch, observers) and any
        extra input-layout parts (``inputs``: name -> [B,f,C,h,w])."""
        frames = batch["_frames"]
        B = frames.shape[0]
        x0, img = self._inputs(frames, generator)
        emb = self.prompt_embeds(self._captions(batch, B))
        bb = self.bb

        dev = torch.device(bb.device)
        # an fp32 branch on a bf16/fp16 backbone computes in the backbone's dtype (unless the trainer autocasts)
        mixed = bool(attachments) and bb.dtype != torch.float32 and not torch.is_autocast_enabled(dev.type)
        layout = bb.layout or cvx.default_layout(bb.denoiser.config.in_channels, x0.shape[2])

        def model_fn(x_t, t):
            parts = {"noise": x_t.to(img.device, bb.dtype), **(inputs or {})}
            if layout.has("image"):
                parts["image"] = img
            latent_in = layout.assemble(parts, dim=2)
            # (autocast(enabled=False) would switch off the trainer's autocast: use no context instead)
            with torch.autocast(dev.type, dtype=bb.dtype) if mixed else contextlib.nullcontext():
                return cvx.forward(bb, latent_in, t, emb, attachments=attachments)
        return v_prediction_loss(model_fn, x0, self._ac, generator)


class CogVideoXBackboneTask(CogVideoXI2VBase):
    """Train the whole CogVideoX transformer (image-to-video, no control), e.g. the sandbox demo model from
    scratch. With ``train=False`` the transformer stays frozen and only the loss is used (the LoRA base)."""

    def __init__(self, backbone: Backbone, *, train: bool = True, caption: str | None = None,
                 noise_aug: bool = True, image_dropout: float = 0.0, max_text_length: int = 226):
        self._setup(backbone, caption, noise_aug, image_dropout, max_text_length)
        if backbone.layout is not None and not backbone.layout.has("image"):
            raise ValueError("CogVideoXBackboneTask: the transformer is text-to-video (input layout "
                             f"{backbone.layout.names}); image-to-video training needs an image-latent input")
        self.trains = bool(train)
        den = backbone.denoiser
        if self.trains:  # weights train in the bundle's dtype: load it in fp32 (the trainer autocasts compute)
            den.requires_grad_(True).train()
        else:
            den.requires_grad_(False)
        self.hp = dict(caption=caption, noise_aug=bool(noise_aug), image_dropout=float(image_dropout))

    def trainable_parameters(self):
        return [p for p in self.bb.denoiser.parameters() if p.requires_grad] if self.trains else []

    def trainable_state_dict(self) -> dict:
        return {k: v.detach().cpu().clone() for k, v in self.bb.denoiser.state_dict().items()}

    def load_trainable_state_dict(self, sd: dict) -> None:
        self.bb.denoiser.load_state_dict(sd, strict=True)

    def config(self) -> dict:
        cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(self.bb.denoiser.config).items()
               if not k.startswith("_")}
        return {"task": "cogvideox_backbone", **self.hp, "transformer": cfg}

    def save_weights(self, path, sd: dict) -> None:
        """A single transformer file (diffusers keys, config JSON in the metadata: load_cogvideox reads it)."""
        from safetensors.torch import save_file

        cfg = {k: v for k, v in dict(self.bb.denoiser.config).items() if not k.startswith("_")}
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path),
                  metadata={"format": "pt", "config": json.dumps(cfg)})

    def train(self):
        if self.trains:
            self.bb.denoiser.train()

    def eval(self):
        self.bb.denoiser.eval()

    def enable_gradient_checkpointing(self):
        self.bb.denoiser.enable_gradient_checkpointing()

    def fsdp_modules(self):
        """(root, units) for FSDP2 in a multi-process launch: each transformer block sharded on its own, the
        transformer's other weights with the root (``trainable_state_dict`` is the root's state dict)."""
        den = self.bb.denoiser
        return den, list(den.transformer_blocks)

    def loss(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        frames = self._frames(batch)
        return self._loss({**batch, "_frames": frames}, generator)
