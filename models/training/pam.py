"""The PAM training task: the PAM motion branch (copies + both combining projections) on a frozen CogVideoX-I2V,
on the CogVideoX training base (``training.cogvideox``) with the branch attached through the forward contract.

Batch contract (sandbox format plus condition videos; what a dataset must give for this task):
    frames      [B,F,H,W,3] float 0..1                       the clip (frame 0 is the I2V image)
    caption     list[str]                                    optional
    hoi_depth   [B,F,H,W,3] float 0..1                       depth condition video (inferno, background black)
    hoi_seg     [B,F,H,W,3] float 0..1                       segmentation video (ADE20K palette)
    hoi_hand    [B,F,H,W,3] float 0..1                       hand-keypoint video
    hoi_tracking, hoi_normal  (optional, same shape)         absent = always zero, as in the released training
Every condition video has the clip's F, H, W (render at the training size; seg and keypoints resized NEAREST).

Augmentations as the released trainer (``training/dataset.py`` latent path + ``cogvideox_image_to_video_comb_sft``):
- per condition and sample, dropout with p 0.2 (normal 0.3): a dropped condition zeroes its map latents AND its
  first-frame latent; a condition not in ``conditions`` (or absent from the batch) is always zero;
- noised-image dropout p 0.05 per sample: the image latent and every condition's first-frame latent are zeroed
  (the code draws it once per batch; per sample here, the same rate);
- the first-frame noise augmentation is off (``noise_aug=False``): the released runs precompute latents, a path
  without it.
Condition latents are posterior samples drawn from the step's generator (the code samples them too).
"""
from __future__ import annotations

import torch

from ..backbones.base import Backbone, cast
from ..control import pam as P
from ..control.base import ControlBranch
from .cogvideox import CogVideoXI2VBase

KIND, TASK = P.KIND, P.TASK
BATCH_KEYS = {s: f"hoi_{s}" for s in P.SLOTS}
DROPOUT = {"tracking": 0.2, "normal": 0.3, "depth": 0.2, "seg": 0.2, "hand": 0.2}


def _parse_conditions(conditions) -> tuple[str, ...]:
    if isinstance(conditions, str):
        conditions = [c.strip() for c in conditions.split(",") if c.strip()]
    conditions = tuple(conditions)
    bad = [c for c in conditions if c not in P.SLOTS]
    if bad or not conditions:
        raise ValueError(f"PAMTask: 'conditions' must name some of {', '.join(P.SLOTS)}; got {list(conditions)}")
    return conditions


class PAMTask(CogVideoXI2VBase):
    """Train a PAM branch (new from the backbone, or continue ``branch``) on a frozen CogVideoX-I2V.

    Args:
        conditions: the slots trained (released: depth, seg, hand); the others are always zero.
        dropout: per-slot drop probabilities (default 0.2, normal 0.3).
        noised_image_dropout: per-sample probability of zeroing the image latent and every first-frame latent.
        num_blocks: a new branch's copied blocks (12 as released).
        weight: the residual scale during training (1 as released).
    """

    def __init__(self, backbone: Backbone, branch: ControlBranch | None = None, *,
                 conditions=P.RELEASED_USED, dropout: dict | None = None, noised_image_dropout: float = 0.05,
                 num_blocks: int = 12, weight: float = 1.0, caption: str | None = None, noise_aug: bool = False,
                 max_text_length: int = 226, generator: torch.Generator | None = None):
        # (generator: the run's init generator; a new PAM branch draws nothing: copies and zero projections)
        P.check_backbone(backbone, "PAMTask")
        conds = _parse_conditions(conditions)
        drop = dict(DROPOUT)
        unknown = sorted(set(dropout or {}) - set(P.SLOTS))
        if unknown:
            raise ValueError(f"PAMTask: 'dropout' has unknown slot(s) {unknown}; slots: {', '.join(P.SLOTS)}")
        drop.update({k: float(v) for k, v in (dropout or {}).items()})
        if any(not 0 <= v <= 1 for v in drop.values()) or not 0 <= noised_image_dropout <= 1:
            raise ValueError(f"PAMTask: dropout probabilities must be in [0, 1]; got {drop}, "
                             f"noised_image_dropout {noised_image_dropout}")
        # the base's own image dropout stays off: this task draws one mask for the image and every first frame
        self._setup(backbone, caption, noise_aug, 0.0, max_text_length)
        backbone.denoiser.requires_grad_(False)
        if branch is None:
            branch = P.new_branch(backbone.denoiser, num_blocks=min(num_blocks, backbone.denoiser.config.num_layers))
        elif branch.kind != KIND:
            raise ValueError(f"PAMTask: the branch is a {branch.kind!r} branch; continue a PAM branch")
        self.branch = branch
        # fp32 trainable weights (AdamW at 1e-4 stalls in bf16); bf16 compute comes from the trainer's autocast
        cast(branch.module, backbone.device, torch.float32).requires_grad_(True).train()
        self.hp = dict(conditions=list(conds), dropout=drop, noised_image_dropout=float(noised_image_dropout),
                       weight=float(weight), caption=caption, noise_aug=bool(noise_aug))
        self._pending = None

    # -- Task protocol
    def trainable_parameters(self):
        return [p for p in self.branch.module.parameters() if p.requires_grad]

    def trainable_state_dict(self) -> dict:
        return {k: v.detach().cpu().clone() for k, v in self.branch.module.state_dict().items()}

    def load_trainable_state_dict(self, sd: dict) -> None:
        missing, unexpected = self.branch.module.load_state_dict(sd, strict=False)
        if missing or unexpected:
            raise ValueError(f"PAMTask: weights do not match the branch (missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]})")

    def config(self) -> dict:
        return {"task": TASK, **self.hp, "branch": P._clean_config(self.branch.module.config)}

    def save_weights(self, path, sd: dict) -> None:
        """The branch file format of control/pam.save_branch (loadable by load_branch)."""
        import json

        from safetensors.torch import save_file

        meta = P.branch_metadata(self.branch.module, interplay_training=json.dumps(self.hp))
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path), metadata=meta)

    def train(self):
        self.branch.module.train()

    def eval(self):
        self.branch.module.eval()

    def enable_gradient_checkpointing(self):
        # the loss backpropagates through every frozen block after block 0 (the first residual): checkpoint both
        self.branch.module.enable_gradient_checkpointing()
        self.bb.denoiser.enable_gradient_checkpointing()

    # -- conditions
    def condition_videos(self, batch: dict, shape) -> dict:
        """{slot: [B,F,H,W,3] or None}: the trained slots the batch carries (``hoi_<slot>``)."""
        B, F, H, W = shape[:4]
        used = self.hp["conditions"]
        out = {}
        for s in P.SLOTS:
            v = batch.get(BATCH_KEYS[s])
            if v is None or s not in used:
                out[s] = None
                continue
            if not isinstance(v, torch.Tensor) or tuple(v.shape) != (B, F, H, W, 3):
                got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
                raise ValueError(f"PAMTask: batch '{BATCH_KEYS[s]}' must be [B,F,H,W,3] = {[B, F, H, W, 3]} like "
                                 f"'frames'; got {got}")
            out[s] = v.float()
        if all(v is None for v in out.values()):
            raise ValueError(f"PAMTask: the batch has none of the trained conditions "
                             f"({', '.join(BATCH_KEYS[s] for s in used)}); use a dataset whose clips carry PAM "
                             "condition videos")
        return out

    def condition_latents(self, videos: dict, image_keep: torch.Tensor, generator: torch.Generator,
                          like: torch.Tensor):
        """[B,S,f,C_in,h,w]: encoded slots with per-slot dropout (map and first frame together) and the image
        dropout's mask on every first frame. ``like``: the clip's latents [B,f,C,h,w] (shape of an empty slot)."""
        B = image_keep.shape[0]
        keep = {}
        for s in P.SLOTS:
            k = torch.rand(B, generator=generator) >= self.hp["dropout"][s]
            keep[s] = k if videos[s] is not None else torch.zeros(B, dtype=torch.bool)
        todo = {s: (v if bool(keep[s].any()) else None) for s, v in videos.items()}  # no VAE for a slot all drop
        if any(v is not None for v in todo.values()):
            maps, firsts = P.encode_conditions(self.bb, todo, generator=generator)
        else:
            maps = like.new_zeros(B, len(P.SLOTS), *like.shape[1:]).to(self.bb.device, self.bb.dtype)
            firsts = maps
        km = torch.stack([keep[s] for s in P.SLOTS], dim=1).to(maps.device, maps.dtype)  # [B,S]
        kf = km * image_keep.to(maps.device, maps.dtype)[:, None]
        maps = maps * km[:, :, None, None, None, None]
        firsts = firsts * kf[:, :, None, None, None, None]
        return P.condition_input(self.bb, maps, firsts)

    def _inputs(self, frames, generator):
        x0, img = super()._inputs(frames, generator)
        B = frames.shape[0]
        keep = torch.rand(B, generator=generator) >= self.hp["noised_image_dropout"]
        img = img * keep.to(img.device, img.dtype).view(B, 1, 1, 1, 1)
        if self._pending is not None:  # the conditions of this batch, encoded after the image (one stream)
            att, videos = self._pending
            att.entries[0].latents = self.condition_latents(videos, keep, generator, like=x0)
        return x0, img

    def loss(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        frames = self._frames(batch)
        videos = self.condition_videos(batch, frames.shape)
        att = P.PAMAttachment(self.branch.module, [P.HOIEntry(weight=self.hp["weight"])], reuse=False)
        self._pending = (att, videos)
        try:
            return self._loss({**batch, "_frames": frames}, generator, attachments=[att])
        finally:
            self._pending = None

    def output(self) -> ControlBranch:
        """The trained branch as the pack type (eval mode, frozen), for sampling in the same graph."""
        m = self.branch.module
        m.eval().requires_grad_(False)
        return ControlBranch(kind=KIND, family="cogvideox", module=m, config=P._clean_config(m.config),
                             source=self.branch.source)
