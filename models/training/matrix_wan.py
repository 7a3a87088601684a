"""MATRIX training on the Wan family (the ``code`` preset: Wan2.1-I2V-14B, spec seed-004 §3): the same task as
``training.matrix.MatrixTask`` (LoRA on the preset's layers, widened projection, decoders, SGA/SPA through a
gradient-keeping capture) on the Wan training base (``training.wan``: flow matching with the variant's shift).

What differs from CogVideoX:
- layers: v2t maps come from cross-attention ``blocks.<i>.attn2`` (a softmax over the 512 text keys alone), v2v maps
  from self-attention ``blocks.<i>.attn1``; the LoRA sits on exactly those modules' q, k, v, out;
- the ID map enters as the I2V image does (``conditions.latent_inputs``): the F-frame video [map, zeros]
  VAE-encoded (mode) with the 4-channel first-frame mask in front, 20 channels, so the patch embedding goes
  36 -> 56 (the public code);
- ``image_context`` False (the code preset): no CLIP features in cross-attention, in training and, through the
  file's metadata, in sampling (``apply_matrix_weights`` turns the bundle's CLIP pass off);
- text: umT5 at Wan's fixed 512 tokens; ``<idk>`` tags become tokens of an extended tokenizer copy when they fit
  the encoder's embedding table (``matrix_prompt.prepare``);
- the timestep weight of the alignment losses is 1: the pack's flow-matching loss is unweighted.

One expert: Wan2.1 I2V (the code preset's model) or any single-transformer Wan I2V. A two-expert Wan2.2 bundle is
refused (MATRIX's LoRA and maps belong to one transformer).
"""
from __future__ import annotations

import torch

from ..backbones import wan
from ..backbones.base import Backbone
from ..conditions import id_map as I
from .matrix import MatrixSample, MatrixTask
from .wan import WanTaskBase


class MatrixWanTask(WanTaskBase, MatrixTask):
    """:class:`~.matrix.MatrixTask` on a frozen Wan I2V backbone (the module doc). Options as MatrixTask's
    (``noise_aug`` has no Wan meaning and is ignored; ``max_text_length`` is always Wan's 512), plus the flow
    objective's ``shift`` (None: the variant's) and ``sampling`` ("uniform" | "logit_normal")."""

    FAMILY = "wan"

    def __init__(self, backbone: Backbone, *, preset: str = "code", shift: float | None = None,
                 sampling: str = "uniform", **kw):
        if backbone.family == "wan" and backbone.experts:
            raise ValueError(f"MATRIX training: {backbone.variant} has two experts; MATRIX trains one transformer "
                             "(the code preset: Wan2.1-I2V-14B). Load a single-transformer Wan I2V model.")
        self._flow = dict(shift=shift, sampling=sampling)
        kw["max_text_length"] = wan.TEXT_LENGTH
        super().__init__(backbone, preset=preset, **kw)
        self.hp.update(shift=self.shift, sampling=sampling)

    def _base_setup(self, bb: Backbone, **kw) -> None:
        if not self.preset.image_context:
            bb = bb.replace(extra={**bb.extra, "clip": False})  # no CLIP context in cross-attention
        self._setup(bb, caption=kw["caption"], image_dropout=kw["image_dropout"], **self._flow)
        self.max_text_length = wan.TEXT_LENGTH

    def prompt_embeds(self, captions: list[str]) -> torch.Tensor:
        """[B, 512, D]; each prompt encoded by its own tokenizer (the <idk>-extended copy in tokens mode)."""
        for c in set(captions) - set(self._prompts):
            tok = self._tokenizers.get(c, self.bb.tokenizer)
            self._prompts[c] = wan.encode_prompt(self.bb.replace(tokenizer=tok), [c])[0].cpu()
        return torch.stack([self._prompts[c] for c in captions]).to(self.bb.device, self.bb.dtype)

    def id_map_input(self, samples: list[MatrixSample], num_frames: int, height: int, width: int) -> torch.Tensor:
        """[B, 20, f, h, w]: each sample's first-frame palette map as Wan's I2V condition (mask ++ latent of the
        video [map, zeros], mode), as ``conditions.latent_inputs`` encodes it for the sampler."""
        imgs = []
        for s in samples:
            first = s.tracks[:, :1] if s.tracks.shape[0] else torch.zeros(0, 1, height, width, dtype=torch.bool)
            imgs.append(I.build_id_map(first, self.palette, self.overlap, where="MATRIX training").image[0])
        plain = self.bb.replace(extra={**self.bb.extra, "clip": False})
        with torch.no_grad():
            return wan.i2v_condition(plain, torch.stack(imgs).float(), num_frames, height, width).condition


def matrix_task(backbone: Backbone, **opts) -> MatrixTask:
    """The ``matrix_lora`` task for the backbone's family: :class:`MatrixWanTask` on Wan, else ``MatrixTask``."""
    if backbone.family == "wan":
        return MatrixWanTask(backbone, **opts)
    return MatrixTask(backbone, **opts)
