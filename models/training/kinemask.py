"""CogVideoX training tasks on the trainer's Task protocol: the KineMask branch on a frozen backbone, and a
whole (tiny) image-to-video backbone.

Both use the CogVideoX objective (``objectives.v_prediction_loss``: t ~ U{0..999} on the scheduler's
alphas_cumprod, v target; the released trainer's 1/(1-a)-weighted x0 loss, which equals v-MSE) and the
I2V input of CogVideoX-I2V: [noisy latent ++ frame-0 image latent padded with zeros] along channels. The
image is noise-augmented as in diffusers' CogVideoX I2V training script (sigma = exp(N(-3, 0.5)) in [-1,1]
pixel units) before encoding; ``image_dropout`` zeroes the image latent for a fraction of samples.

Batches (sandbox format, ``SandboxDataset``): ``frames`` [B,F,H,W,3] float 0..1, ``caption`` list[str], and for
KineMask ``control`` [B,F,H,W,3] (velocity_video of the driven objects at v_ref 1.5) or, to re-encode with
another v_ref, ``masks`` [N,F,H,W] + ``vel_control`` [N,F,3] + ``driven`` per clip.

KineMask stages (condition-side, here not in the trainer): stage 1 sees the control on all frames; stage 2
keeps a prefix of k frames per sample, k from ``conditions.velocity.sample_prefix_length`` (early-biased by
default, k = 1 forced 20% of the time: the inference condition), the rest zero.
"""
from __future__ import annotations

import contextlib
import json

import numpy as np
import torch

from ..backbones import cogvideox as cvx
from ..backbones.base import Backbone, cast
from ..conditions.velocity import V_REF, keep_prefix, sample_prefix_length, velocity_video
from ..control.base import ControlBranch
from .objectives import v_prediction_loss

DEFAULT_CAPTION = "An object moving on a surface"  # KineMask's ablation caption c0
PREFIX_MODES = ("early_biased", "uniform", "all", "first")


def alphas_cumprod(bb: Backbone) -> torch.Tensor:
    """[T] float64 of the backbone's CogVideoXDDIMScheduler (snr shift and zero-SNR rescale applied)."""
    from diffusers import CogVideoXDDIMScheduler

    cfg = {k: v for k, v in (bb.scheduler_config or cvx.SCHEDULER_DEFAULTS).items() if not k.startswith("_")}
    return CogVideoXDDIMScheduler.from_config(cfg).alphas_cumprod.to(torch.float64)


def _np_rng(generator: torch.Generator) -> np.random.Generator:
    """A numpy generator seeded from the torch one (keeps a single seeded stream per step)."""
    return np.random.default_rng(int(torch.randint(0, 2 ** 62, (1,), generator=generator)))


class _CogVideoXI2V:
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

    def _loss(self, batch, generator, *, branch=None, control=None, weight=1.0) -> torch.Tensor:
        from ..sampling.cogvideox import model_forward

        frames = batch["_frames"]
        B = frames.shape[0]
        x0, img = self._inputs(frames, generator)
        emb = self.prompt_embeds(self._captions(batch, B))
        bb = self.bb

        dev = torch.device(bb.device)
        # an fp32 branch on a bf16/fp16 backbone computes in the backbone's dtype (unless the trainer autocasts)
        mixed = branch is not None and bb.dtype != torch.float32 and not torch.is_autocast_enabled(dev.type)

        def model_fn(x_t, t):
            latent_in = torch.cat([x_t.to(img.device, bb.dtype), img], dim=2)
            # (autocast(enabled=False) would switch off the trainer's autocast: use no context instead)
            with torch.autocast(dev.type, dtype=bb.dtype) if mixed else contextlib.nullcontext():
                return model_forward(bb, latent_in, t, emb, branch=branch, control=control, weight=weight)
        return v_prediction_loss(model_fn, x0, self._ac, generator)


class KineMaskTask(_CogVideoXI2V):
    """Train a KineMask branch (new from the backbone, or continue ``branch``) on a frozen CogVideoX.

    Args:
        stage: 1 (control on all frames) or 2 (prefix dropout per sample).
        prefix_mode, gamma, p_first: stage-2 prefix sampling (conditions.velocity.sample_prefix_length).
        v_ref: m/s that encodes to 1 (the dataset's ``control`` is used as is when v_ref is the default).
        caption: one caption for every clip (KineMask's c0 ablation), or None for the clips' own captions.
        num_layers, downscale: a new branch's size (downscale defaults to the VAE's spatial factor).
    """

    def __init__(self, backbone: Backbone, branch: ControlBranch | None = None, *, stage: int = 1,
                 prefix_mode: str = "early_biased", gamma: float = 3.0, p_first: float = 0.2, v_ref: float = V_REF,
                 caption: str | None = None, num_layers: int = 8, downscale: int | None = None,
                 weight: float = 1.0, noise_aug: bool = True, image_dropout: float = 0.0,
                 max_text_length: int = 226, generator: torch.Generator | None = None):
        from ..control.kinemask import new_branch

        if stage not in (1, 2):
            raise ValueError(f"KineMaskTask: stage must be 1 (all frames) or 2 (prefix dropout); got {stage!r}")
        if prefix_mode not in PREFIX_MODES:
            raise ValueError(f"KineMaskTask: prefix_mode must be one of {', '.join(PREFIX_MODES)}; got {prefix_mode!r}")
        if v_ref <= 0:
            raise ValueError(f"KineMaskTask: v_ref must be > 0 m/s; got {v_ref}")
        self._setup(backbone, caption, noise_aug, image_dropout, max_text_length)
        backbone.denoiser.requires_grad_(False)
        if branch is None:
            d = downscale or backbone.extra.get("vae_scale_factor_spatial", 8)
            num_layers = min(num_layers, backbone.denoiser.config.num_layers)
            branch = new_branch(backbone.denoiser, num_layers=num_layers, downscale=d, generator=generator)
        elif branch.kind != "kinemask":
            raise ValueError(f"KineMaskTask: the branch is a {branch.kind!r} branch; continue a KineMask branch")
        self.branch = branch
        # fp32 trainable weights (AdamW at 1e-4 stalls in bf16); bf16 compute comes from the trainer's autocast
        cast(branch.module, backbone.device, torch.float32).requires_grad_(True).train()
        self.hp = dict(stage=int(stage), prefix_mode=prefix_mode, gamma=float(gamma), p_first=float(p_first),
                       v_ref=float(v_ref), caption=caption, weight=float(weight), noise_aug=bool(noise_aug),
                       image_dropout=float(image_dropout))

    # -- Task protocol
    def trainable_parameters(self):
        return [p for p in self.branch.module.parameters() if p.requires_grad]

    def trainable_state_dict(self) -> dict:
        m = self.branch.module
        return {k: v.detach().cpu().clone() for k, v in m.state_dict().items()
                if not k.endswith("pos_embedding") or m.config.use_learned_positional_embeddings}

    def load_trainable_state_dict(self, sd: dict) -> None:
        missing, unexpected = self.branch.module.load_state_dict(sd, strict=False)
        missing = [k for k in missing if not k.endswith("pos_embedding")]
        if missing or unexpected:
            raise ValueError(f"KineMaskTask: weights do not match the branch (missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]})")

    def config(self) -> dict:
        cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(self.branch.module.config).items()
               if not k.startswith("_")}
        return {"task": "kinemask_branch", **self.hp, "branch": cfg}

    def save_weights(self, path, sd: dict) -> None:
        """The branch file format of control/kinemask.save_branch (loadable by load_branch)."""
        from safetensors.torch import save_file

        cfg = {k: v for k, v in dict(self.branch.module.config).items() if not k.startswith("_")}
        meta = {"format": "pt", "kind": "kinemask", "family": "cogvideox", "interplay_config": json.dumps(cfg),
                "interplay_training": json.dumps(self.hp)}
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path), metadata=meta)

    def train(self):
        self.branch.module.train()

    def eval(self):
        self.branch.module.eval()

    def enable_gradient_checkpointing(self):
        # the loss backpropagates through every frozen backbone block after the first residual, so the
        # backbone's activations dominate memory: checkpoint both (the flag only acts when grad is enabled)
        self.branch.module.enable_gradient_checkpointing()
        self.bb.denoiser.enable_gradient_checkpointing()

    # -- conditions
    def controls(self, batch: dict, F: int, generator: torch.Generator) -> torch.Tensor:
        """Control videos [B,F,H,W,3] for the batch: the velocity encoding, stage-2 prefix applied."""
        ctrl = batch.get("control")
        if ctrl is None or self.hp["v_ref"] != V_REF:
            need = [k for k in ("masks", "vel_control", "driven") if k not in batch]
            if need:
                raise ValueError(f"KineMaskTask: the batch has no 'control' video and lacks {need} to build one; "
                                 "use a sandbox-format dataset (SandboxDataset)")
            vids = []
            for m, v, d in zip(batch["masks"], batch["vel_control"], batch["driven"]):
                d = torch.as_tensor(d, dtype=torch.long)
                if len(d) == 0:
                    vids.append(torch.zeros(*m.shape[1:], 3))
                else:
                    vids.append(velocity_video(m[d], v[d], self.hp["v_ref"]))
            ctrl = torch.stack(vids)
        ctrl = ctrl.float()
        if ctrl.ndim != 5 or ctrl.shape[1] != F or ctrl.shape[-1] != 3:
            raise ValueError(f"KineMaskTask: 'control' must be [B,{F},H,W,3]; got {tuple(ctrl.shape)}")
        if self.hp["stage"] == 2:
            rng = _np_rng(generator)
            ks = [sample_prefix_length(F, rng, self.hp["prefix_mode"], self.hp["gamma"], self.hp["p_first"])
                  for _ in range(ctrl.shape[0])]
            ctrl = torch.stack([keep_prefix(c, k) for c, k in zip(ctrl, ks)])
        return ctrl

    def loss(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        frames = self._frames(batch)
        ctrl = self.controls(batch, frames.shape[1], generator)  # [B,F,H,W,3]
        control = ctrl.permute(0, 1, 4, 2, 3).to(self.bb.device, self.bb.dtype)  # [B,F,3,H,W]
        return self._loss({**batch, "_frames": frames}, generator, branch=self.branch, control=control,
                          weight=self.hp["weight"])

    def output(self) -> ControlBranch:
        """The trained branch as the pack type (eval mode, frozen), for sampling in the same graph."""
        m = self.branch.module
        m.eval().requires_grad_(False)
        return ControlBranch(kind="kinemask", family="cogvideox", module=m, config=dict(m.config),
                             source=self.branch.source)


class CogVideoXBackboneTask(_CogVideoXI2V):
    """Train the whole CogVideoX transformer (image-to-video, no control), e.g. the sandbox demo model from
    scratch. With ``train=False`` the transformer stays frozen and only the loss is used (the LoRA base)."""

    def __init__(self, backbone: Backbone, *, train: bool = True, caption: str | None = None,
                 noise_aug: bool = True, image_dropout: float = 0.0, max_text_length: int = 226):
        self._setup(backbone, caption, noise_aug, image_dropout, max_text_length)
        if backbone.denoiser.config.in_channels != 2 * backbone.denoiser.config.out_channels:
            raise ValueError("CogVideoXBackboneTask: the transformer is text-to-video (in_channels "
                             f"{backbone.denoiser.config.in_channels}); image-to-video training needs 2x the latent "
                             "channels")
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

    def loss(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        frames = self._frames(batch)
        return self._loss({**batch, "_frames": frames}, generator)
