"""The KineMask training task: a KineMask branch on a frozen CogVideoX, on the CogVideoX training base
(``training.cogvideox``) with the branch attached through the forward contract.

Batches (sandbox format, ``SandboxDataset``): ``frames``, ``caption`` and ``control`` [B,F,H,W,3] (velocity_video of
the driven objects at v_ref 1.5) or, to re-encode with another v_ref, ``masks`` [N,F,H,W] + ``vel_control`` [N,F,3] +
``driven`` per clip.

KineMask stages (condition-side, here not in the trainer): stage 1 sees the control on all frames; stage 2
keeps a prefix of k frames per sample, k from ``conditions.velocity.sample_prefix_length`` (early-biased by
default, k = 1 forced 20% of the time: the inference condition), the rest zero.
"""
from __future__ import annotations

import json

import numpy as np
import torch

from ..backbones.base import Backbone, cast
from ..conditions.velocity import V_REF, keep_prefix, sample_prefix_length, velocity_video
from ..control.base import ControlBranch
from .cogvideox import DEFAULT_CAPTION, CogVideoXBackboneTask, CogVideoXI2VBase, _np_rng, alphas_cumprod  # noqa: F401

KIND, TASK = "kinemask", "kinemask_branch"
PREFIX_MODES = ("early_biased", "uniform", "all", "first")


class KineMaskTask(CogVideoXI2VBase):
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
        elif branch.kind != KIND:
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
        from ..control.kinemask import branch_state_dict

        return {k: v.detach().cpu().clone() for k, v in branch_state_dict(self.branch.module).items()}

    def load_trainable_state_dict(self, sd: dict) -> None:
        missing, unexpected = self.branch.module.load_state_dict(sd, strict=False)
        missing = [k for k in missing if not k.endswith("pos_embedding")]
        if missing or unexpected:
            raise ValueError(f"KineMaskTask: weights do not match the branch (missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]})")

    def config(self) -> dict:
        cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(self.branch.module.config).items()
               if not k.startswith("_")}
        return {"task": TASK, **self.hp, "branch": cfg}

    def save_weights(self, path, sd: dict) -> None:
        """The branch file format of control/kinemask.save_branch (loadable by load_branch)."""
        from safetensors.torch import save_file

        cfg = {k: v for k, v in dict(self.branch.module.config).items() if not k.startswith("_")}
        meta = {"format": "pt", "kind": KIND, "family": "cogvideox", "interplay_config": json.dumps(cfg),
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
        from ..control.kinemask import KineMaskAttachment

        att = KineMaskAttachment(self.branch.module, [(control, self.hp["weight"], 0.0, 1.0)], reuse=False)
        return self._loss({**batch, "_frames": frames}, generator, attachments=[att])

    def output(self) -> ControlBranch:
        """The trained branch as the pack type (eval mode, frozen), for sampling in the same graph."""
        m = self.branch.module
        m.eval().requires_grad_(False)
        return ControlBranch(kind=KIND, family="cogvideox", module=m, config=dict(m.config),
                             source=self.branch.source)


