"""The GameCraft camera-encoder training task: a camera encoder (``control.gamecraft``) on a frozen Wan, with
GameCraft-2's action-injected flow matching (§4.1 of the spec): the clip's camera poses become Plücker ray maps
(``conditions.camera.plucker_rays``), the encoder's tokens are added after the patch embedding, and the loss is
the Wan base's flow matching (``training.wan``: each sample on the expert its timestep selects). Optionally a
LoRA per expert trains beside it (``lora_rank`` > 0; the paper fine-tunes the experts, with separate learning
rates for the two: ``lr_scale_high_noise`` / ``lr_scale_low_noise``, group scales on the run's lr).

Batches (sandbox format, ``SandboxDataset``; any dataset with these keys): ``frames`` [B,F,H,W,3] 0..1,
``caption``, ``camera_c2w`` [B,F,4,4] camera-to-world relative to frame 0 in OpenCV axes (the sandbox's
``camera_poses``), ``camera_intrinsics`` [B,4] normalised (fx/W, fy/H, cx/W, cy/H; GameCraft's default when
absent); ``wan_latents`` / ``wan_image_condition`` from ``training.wan.EncodedDataset`` skip the VAE.

Draw order on the loss generator: the camera-dropout mask (only when ``camera_dropout`` > 0), then the Wan base's
(latent sample, image dropout, sigma and noise).

Checkpoint: ``checkpoint.safetensors`` is the encoder file ``control.gamecraft.load_encoder`` reads; with LoRA,
``<checkpoint>_lora_<expert>.safetensors`` beside it hold each expert's LoRA (``lora.apply_lora`` reads them);
with ``train_experts``, ``<checkpoint>_<expert>.safetensors`` each expert's transformer.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..backbones import wan
from ..backbones.base import Backbone, cast
from ..control.base import ControlBranch
from .wan import WanTaskBase, save_transformer

KIND = TASK = "gamecraft_camera"
LORA_EXPERTS = ("both", "high_noise", "low_noise")


def batch_plucker(c2w: torch.Tensor, intrinsics: torch.Tensor | None, height: int, width: int, *,
                  translation_scale: float = 1.0) -> torch.Tensor:
    """Per-sample Plücker maps [B,F,6,H,W] float32 for poses c2w [B,F,4,4] and normalised intrinsics [B,4]
    (None: GameCraft's), translations times ``translation_scale`` (GameCraft-1 rescales its poses)."""
    from ..conditions.camera import Intrinsics, plucker_rays

    c2w = torch.as_tensor(c2w, dtype=torch.float64)
    if c2w.ndim != 4 or tuple(c2w.shape[2:]) != (4, 4):
        raise ValueError(f"GameCraftCameraTask: 'camera_c2w' must be [B,F,4,4]; got {tuple(c2w.shape)}")
    if translation_scale != 1.0:
        c2w = c2w.clone()
        c2w[..., :3, 3] *= float(translation_scale)
    out = []
    for i in range(c2w.shape[0]):
        k = Intrinsics() if intrinsics is None else Intrinsics(*(float(v) for v in intrinsics[i]))
        out.append(plucker_rays(c2w[i], k, height, width))
    return torch.stack(out)


class GameCraftCameraTask(WanTaskBase):
    """Train a GameCraft camera encoder (new from the backbone, zero-output at init, or continue ``branch``) on a
    frozen Wan; with ``lora_rank`` > 0 also a LoRA on each expert (``lora_experts``).

    Args:
        caption, shift, sampling, expert, image_dropout: the Wan base's (``training.wan``).
        camera_dropout: fraction of samples that see the identity-pose camera (GameCraft's unconditional
            embedding), so a camera CFG has an unconditional to extrapolate from; 0 = never.
        translation_scale: multiplies the poses' translations (scene units -> the encoder's units).
        weight: the encoder's strength in the forward.
        lora_rank, lora_alpha, lora_targets, lora_experts: the per-expert LoRA (rank 0 = none).
        lr_scale_high_noise, lr_scale_low_noise: learning-rate scales of the two experts' groups (LoRA or whole).
        train_experts: also fine-tune every expert's weights in place (GameCraft-2's action-injected training
            fine-tunes the model with the encoder; load the bundle in fp32); exclusive with LoRA.
    """

    def __init__(self, backbone: Backbone, branch: ControlBranch | None = None, *, caption: str | None = None,
                 shift: float | None = None, sampling: str = "uniform", expert: str = "auto",
                 image_dropout: float = 0.0, camera_dropout: float = 0.0, translation_scale: float = 1.0,
                 weight: float = 1.0, lora_rank: int = 0, lora_alpha: float | None = None,
                 lora_targets=("to_q", "to_k", "to_v", "to_out.0"), lora_experts: str = "both",
                 lr_scale_high_noise: float = 1.0, lr_scale_low_noise: float = 1.0, train_experts: bool = False,
                 generator: torch.Generator | None = None):
        from ..control import gamecraft as gc
        from ..control import registry

        who = "GameCraftCameraTask"
        if not 0.0 <= camera_dropout < 1.0:
            raise ValueError(f"{who}: camera_dropout must be in [0, 1); got {camera_dropout!r}")
        if isinstance(lora_rank, bool) or not isinstance(lora_rank, int) or lora_rank < 0:
            raise ValueError(f"{who}: lora_rank must be a whole number >= 0 (0 = no LoRA); got {lora_rank!r}")
        if lora_experts not in LORA_EXPERTS:
            raise ValueError(f"{who}: lora_experts must be one of {', '.join(LORA_EXPERTS)}; got {lora_experts!r}")
        for name, v in (("lr_scale_high_noise", lr_scale_high_noise), ("lr_scale_low_noise", lr_scale_low_noise)):
            if not float(v) > 0:
                raise ValueError(f"{who}: {name} must be > 0; got {v!r}")
        if backbone.family != "wan":
            raise ValueError(f"{who}: the backbone is {backbone.family}; the camera encoder trains on Wan")
        if train_experts and lora_rank > 0:
            raise ValueError(f"{who}: train_experts fine-tunes the experts themselves; set lora_rank 0 or "
                             "train_experts false")
        gen = generator if generator is not None else torch.Generator().manual_seed(0)
        for m in wan.expert_modules(backbone).values():
            m.requires_grad_(False)
        if branch is None:  # the encoder's He/Xavier init drawn from the run's generator, not the global RNG
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(torch.randint(0, 2 ** 62, (1,), generator=gen)))
                branch = registry.get(KIND).new(backbone)
        elif branch.kind != KIND:
            raise ValueError(f"{who}: the branch is a {branch.kind!r} branch; continue a {gc.NAME} ({KIND!r})")
        gc._check_fits(branch.module, backbone)
        self.branch = branch
        # fp32 trainable weights; a bf16 backbone computes in bf16 (the base autocasts or the trainer does)
        cast(branch.module, backbone.device, torch.float32).requires_grad_(True).train()
        self.source_backbone = backbone
        self.lora: dict[str, dict] = {}
        bb = backbone
        if lora_rank > 0:
            bb = self._add_loras(backbone, lora_rank, lora_alpha, tuple(lora_targets), lora_experts, gen)
        self._setup(bb, caption=caption, shift=shift, sampling=sampling, expert=expert,
                    image_dropout=image_dropout)
        self.backbone = bb  # the bundle with the LoRA live (== the input without one), ready to sample
        self.full = dict(wan.expert_modules(bb)) if train_experts else {}
        for m in self.full.values():
            m.requires_grad_(True).train()
        self.lr_scales = {"high_noise": float(lr_scale_high_noise), "low_noise": float(lr_scale_low_noise)}
        self.hp = dict(caption=caption, shift=self.shift, sampling=sampling, expert=expert,
                       image_dropout=self.image_dropout, camera_dropout=float(camera_dropout),
                       translation_scale=float(translation_scale), weight=float(weight), lora_rank=int(lora_rank),
                       lora_alpha=float(lora_alpha if lora_alpha is not None else lora_rank),
                       lora_targets=list(lora_targets), lora_experts=lora_experts,
                       lr_scale_high_noise=float(lr_scale_high_noise), lr_scale_low_noise=float(lr_scale_low_noise),
                       train_experts=bool(train_experts))

    def _add_loras(self, backbone, rank, alpha, targets, which, gen) -> Backbone:
        """Shared-weight copies of the experts with a LoRA each (LoraTask's machinery: the input bundle and
        its weights stay untouched)."""
        from .lora import adapter_parameters, add_lora, free_adapter_name, place_adapter, shared_copy

        mods = dict(wan.expert_modules(backbone))
        names = list(mods) if which == "both" else [which]
        if any(n not in mods for n in names):
            raise ValueError(f"GameCraftCameraTask: lora_experts {which!r} needs a two-expert model (Wan2.2 "
                             f"A14B); {backbone.variant} has {', '.join(mods)}")
        for n in names:
            den = shared_copy(mods[n])
            adapter = free_adapter_name(den)
            add_lora(den, rank, alpha, targets, adapter=adapter, generator=gen)
            place_adapter(den, adapter, torch.float32)
            params = adapter_parameters(den, adapter)
            for p in params:
                p.requires_grad_(True)
            self.lora[n] = dict(module=den, adapter=adapter, params=params)
            mods[n] = den
        experts = {k: v for k, v in mods.items() if k != "high_noise"}
        return backbone.replace(denoiser=mods["high_noise"], experts=experts,
                                loras=tuple(backbone.loras) + (("training", 1.0),))

    # -- Task protocol
    @property
    def encoder(self):
        return self.branch.module

    def trainable_parameters(self):
        ps = [p for p in self.encoder.parameters() if p.requires_grad]
        ps += [p for m in self.full.values() for p in m.parameters()]
        return ps + [p for d in self.lora.values() for p in d["params"]]

    def param_groups(self):
        groups = [{"params": [p for p in self.encoder.parameters() if p.requires_grad], "name": "camera_encoder",
                   "lr_scale": 1.0}]
        for n, m in self.full.items():
            groups.append({"params": list(m.parameters()), "name": n, "lr_scale": self.lr_scales[n]})
        for n, d in self.lora.items():
            groups.append({"params": list(d["params"]), "name": f"lora_{n}", "lr_scale": self.lr_scales[n]})
        return groups

    def trainable_state_dict(self) -> dict:
        from .lora import lora_state_dict

        sd = {k: v.detach().cpu().clone() for k, v in self.encoder.state_dict().items()}
        for n, m in self.full.items():
            sd.update({f"expert.{n}.{k}": v.detach().cpu().clone() for k, v in m.state_dict().items()})
        for n, d in self.lora.items():
            sd.update({f"lora.{n}.{k}": v for k, v in lora_state_dict(d["module"], "transformer",
                                                                      d["adapter"]).items()})
        return sd

    def load_trainable_state_dict(self, sd: dict) -> None:
        from .lora import load_lora_state_dict

        enc = {k: v for k, v in sd.items() if not k.startswith(("lora.", "expert."))}
        self.encoder.load_state_dict(enc, strict=True)
        for n, m in self.full.items():
            pre = f"expert.{n}."
            m.load_state_dict({k[len(pre):]: v for k, v in sd.items() if k.startswith(pre)}, strict=True)
        for n, d in self.lora.items():
            pre = f"lora.{n}."
            part = {k[len(pre):]: v for k, v in sd.items() if k.startswith(pre)}
            if not part:
                raise ValueError(f"GameCraftCameraTask: the checkpoint holds no LoRA for the {n} expert")
            load_lora_state_dict(d["module"], part, "transformer", d["adapter"])

    def config(self) -> dict:
        from ..control.gamecraft import _clean_config

        return {"task": TASK, **self.hp, "encoder": _clean_config(self.encoder.config)}

    def save_weights(self, path, sd: dict) -> None:
        """The encoder in ``control.gamecraft``'s file format at ``path``; each expert's LoRA beside it (the
        trainer hands a temporary name ``.<final>.tmp<pid>``: the LoRA files take the final name's stem)."""
        from safetensors.torch import save_file

        from ..control.gamecraft import _clean_config
        from .lora import save_lora
        from .trainer import write_beside

        path = Path(path)
        meta = {"format": "pt", "kind": KIND, "family": "wan",
                "interplay_config": json.dumps(_clean_config(self.encoder.config)),
                "interplay_training": json.dumps(self.hp)}
        save_file({k: v.contiguous() for k, v in sd.items() if not k.startswith(("lora.", "expert."))}, str(path),
                  metadata=meta)
        for n, mod in self.full.items():  # the transformer files load_wan reads (WanBackboneTask's format)
            pre = f"expert.{n}."
            write_beside(path, f"_{n}.safetensors", lambda tmp, pre=pre, mod=mod: save_transformer(
                tmp, {k[len(pre):]: v for k, v in sd.items() if k.startswith(pre)}, mod))
        for n in self.lora:
            pre = f"lora.{n}."
            write_beside(path, f"_lora_{n}.safetensors", lambda tmp, pre=pre, n=n: save_lora(
                {k[len(pre):]: v for k, v in sd.items() if k.startswith(pre)}, tmp,
                {"rank": self.hp["lora_rank"], "alpha": self.hp["lora_alpha"],
                 "target_modules": self.hp["lora_targets"], "prefix": "transformer", "family": "wan",
                 "expert": n}))

    def train(self):
        self.encoder.train()
        for m in self.full.values():
            m.train()
        for d in self.lora.values():
            for m in d["module"].modules():
                if "lora" in type(m).__module__:
                    m.train()

    def eval(self):
        self.encoder.eval()
        for m in self.full.values():
            m.eval()
        for d in self.lora.values():
            d["module"].eval()

    def enable_gradient_checkpointing(self):
        for m in wan.expert_modules(self.bb).values():
            m.enable_gradient_checkpointing()

    # -- the loss
    def plucker(self, batch: dict, F: int, H: int, W: int, generator: torch.Generator | None = None):
        """Plücker maps [B,F,6,H,W] of the batch's cameras, camera dropout applied."""
        if "camera_c2w" not in batch:
            raise ValueError("GameCraftCameraTask: the batch has no 'camera_c2w' (camera poses); train on a dataset "
                             "with cameras (a sandbox 'camera' preset dataset, or clips whose clip.json has "
                             "camera.K and camera.world_to_camera)")
        c2w = batch["camera_c2w"]
        c2w = torch.stack(list(c2w)) if isinstance(c2w, (list, tuple)) else c2w
        if c2w.shape[1] < F:
            raise ValueError(f"GameCraftCameraTask: 'camera_c2w' has {c2w.shape[1]} poses for {F} frames")
        intr = batch.get("camera_intrinsics")
        if isinstance(intr, (list, tuple)):
            intr = torch.stack([torch.as_tensor(v) for v in intr])
        pl = batch_plucker(c2w[:, :F], intr, H, W, translation_scale=self.hp["translation_scale"])
        p = self.hp["camera_dropout"]
        if p > 0:
            drop = torch.rand(pl.shape[0], generator=generator) < p
            if bool(drop.any()):
                eye = torch.eye(4, dtype=torch.float64).expand(1, F, 4, 4)
                ident = batch_plucker(eye, None if intr is None else intr[:1], H, W)[0]
                pl[drop] = ident
        return pl

    def loss(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        from ..control.gamecraft import GameCraftCameraAttachment

        frames = self._frames(batch)
        B, F, H, W, _ = frames.shape
        pl = self.plucker(batch, F, H, W, generator).to(self.bb.device)
        enc, w = self.encoder, self.hp["weight"]
        return self._loss({**batch, "_frames": frames}, generator,
                          attachments=lambda idx: [GameCraftCameraAttachment.from_plucker(enc, pl[idx], w)])

    def output(self) -> ControlBranch:
        """The trained encoder as the pack type (eval mode, frozen), for sampling in the same graph."""
        m = self.encoder
        m.eval().requires_grad_(False)
        return ControlBranch(kind=KIND, family="wan", module=m, config=dict(self.branch.config),
                             source=self.branch.source)
