"""The Wan training base: what every Wan-family training task shares (latents, the image condition of the variant,
the prompt cache, the flow-matching loss through the family forward with the task's attachments, the expert
chosen by the sampled timestep), and the whole-denoiser task (also the LoRA's base objective).

Objective (``objectives.flow_matching_loss``): s ~ U(0,1) (or logit-normal), sigma = Wan's shift of s, x_t = (1 -
sigma) x0 + sigma n, the model predicts the velocity n - x0 at timestep t = 1000 sigma. Two experts (Wan2.2 A14B):
each sample runs on the expert its t selects (``flow.expert_for_timestep``: high-noise for t >= boundary x 1000),
so a batch may use both; ``expert="high_noise"`` / ``"low_noise"`` trains one expert only, its t drawn inside its
range (the same draw mapped into [boundary, 1] or [0, boundary) before the shift). The input is the one the
sampler builds (``sampling.wan.prepare_conds`` / ``model_input``): I2V noisy latent ++ first-frame mask ++ the
latent of [frame 0, zeros...]; TI2V the clean image latent as latent frame 0, its tokens at t = 0 and out of the
loss. ``image_dropout`` zeroes the image condition of a fraction of samples (the model learns to run without it).

Batches (sandbox format, ``SandboxDataset``): ``frames`` [B, F, H, W, 3] float 0..1 (F = 4k+1, H and W multiples of
16, or 32 for TI2V), ``caption`` list[str]. Draw order on the generator: the latent sample (VAE posterior), the
image-dropout mask, then the objective's (sigma, noise).
"""
from __future__ import annotations

import contextlib
import json

import torch

from ..backbones import wan
from ..backbones.base import Backbone
from ..sampling import flow
from ..sampling import wan as sampler
from .objectives import flow_matching_loss, shift_sigma

DEFAULT_CAPTION = "An object moving on a surface"
EXPERTS = ("auto", "high_noise", "low_noise")


def unshift_sigma(sigma, shift: float):
    """The inverse of Wan's shift: s = sigma / (shift - (shift - 1) sigma)."""
    return sigma / (shift - (shift - 1) * sigma)


def expert_sigmas(n: int, generator: torch.Generator, *, expert: str, boundary: float | None, shift: float,
                  sampling: str = "uniform", num_train_timesteps: int = 1000) -> torch.Tensor | None:
    """[n] sigmas inside one expert's range (t = 1000 sigma >= boundary x 1000 for "high_noise", below for
    "low_noise"): s drawn as the objective draws it, mapped linearly into the unshifted range, then shifted.
    None for "auto" (the objective draws them itself)."""
    if expert == "auto" or boundary is None:
        return None
    if sampling == "uniform":
        u = torch.rand(n, generator=generator)
    else:
        u = torch.sigmoid(torch.randn(n, generator=generator))
    b = unshift_sigma(torch.tensor(float(boundary)), shift)
    lo, hi = (b, torch.tensor(1.0)) if expert == "high_noise" else (torch.tensor(0.0), b)
    sig = shift_sigma(lo + u * (hi - lo), shift)
    if expert == "low_noise":  # [0, boundary): keep the top end out of the high expert's range
        sig = sig.clamp(max=float(boundary) - 0.5 / num_train_timesteps)
    return sig


class WanTaskBase:
    """Shared Wan plumbing: latents, image condition, prompt cache, the flow-matching loss per expert."""

    def _setup(self, backbone: Backbone, *, caption=None, shift: float | None = None, sampling: str = "uniform",
               expert: str = "auto", image_dropout: float = 0.0):
        who = type(self).__name__
        if backbone.family != "wan":
            raise ValueError(f"{who}: the backbone is {backbone.family}; this task trains Wan")
        if expert not in EXPERTS:
            raise ValueError(f"{who}: expert must be one of {EXPERTS}; got {expert!r}")
        if expert == "low_noise" and not backbone.experts:
            raise ValueError(f"{who}: expert 'low_noise' needs a two-expert model (Wan2.2 A14B); {backbone.variant} "
                             "has one. Use expert='auto'.")
        if sampling not in ("uniform", "logit_normal"):
            raise ValueError(f"{who}: sampling must be 'uniform' or 'logit_normal'; got {sampling!r}")
        self.bb = backbone
        self.caption = caption
        self.shift = float(shift if shift is not None else backbone.extra["flow_shift"])
        self.sampling = sampling
        self.expert = expert
        self.image_dropout = float(image_dropout)
        self.boundary = backbone.extra.get("boundary") if backbone.experts else None
        self._prompts: dict[str, torch.Tensor] = {}
        for m in (backbone.vae, backbone.text_encoder, backbone.image_encoder):
            if m is not None:
                m.requires_grad_(False)

    def prompt_embeds(self, captions: list[str]) -> torch.Tensor:
        """[B, 512, D] on bb.device; each distinct caption encoded once (the umT5 is frozen)."""
        for c in set(captions) - set(self._prompts):
            self._prompts[c] = wan.encode_prompt(self.bb, [c])[0].cpu()
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
        who = type(self).__name__
        if not isinstance(frames, torch.Tensor) or frames.ndim != 5 or frames.shape[-1] != 3:
            got = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
            raise ValueError(f"{who}: batch 'frames' must be [B,F,H,W,3] float 0..1; got {got}")
        wan.check_frames(self.bb, frames.shape[1], frames.shape[2], frames.shape[3], node=who)
        return frames.float()

    def conditions(self, frames: torch.Tensor, captions: list[str], generator: torch.Generator,
                   encoded: dict | None = None):
        """(x0 [B, C, f, h, w] float32, WanConds with the "cond" row) for a batch (no gradients). ``encoded``: a
        batch of :class:`EncodedDataset` items (``wan_latents``, ``wan_image_condition``): no VAE pass then."""
        bb = self.bb
        B, F, H, W, _ = frames.shape
        with torch.no_grad():
            image = frames[:, 0] if (bb.extra["i2v"] or bb.extra["ti2v"]) else None
            pre = encoded if encoded is not None and "wan_latents" in encoded else None
            x0 = (pre["wan_latents"].to(bb.device).float() if pre is not None
                  else wan.encode_video(bb, frames, generator=generator).float())
            if pre is not None and "wan_image_condition" in pre:  # I2V: mask ++ latent of [image, zeros...]
                c = pre["wan_image_condition"].to(bb.device)
                m = bb.layout.size("mask")
                conds = sampler.WanConds(text={"cond": self.prompt_embeds(captions)},
                                         parts={"mask": c[:, :m], "image": c[:, m:]})
            else:
                conds = sampler.prepare_conds(bb, image, self.prompt_embeds(captions), None, F, H, W,
                                              rows=("cond",))
            if self.image_dropout > 0 and image is not None:
                keep = (torch.rand(B, generator=generator) >= self.image_dropout).to(x0.device)
                conds.parts = {k: v * keep.view(B, 1, 1, 1, 1).to(v.dtype) for k, v in conds.parts.items()}
                if conds.image_embeds is not None:
                    conds.image_embeds = conds.image_embeds * keep.view(B, 1, 1).to(conds.image_embeds.dtype)
                if conds.first_frame_latent is not None:  # TI2V: a dropped image is a noisy first frame
                    m = keep.view(B, 1, 1, 1, 1).to(x0.dtype)
                    ffm = torch.maximum(conds.first_frame_mask.expand(B, -1, -1, -1, -1), 1 - m)
                    ph, pw = bb.extra["patch_size"][1:]
                    conds.first_frame_mask = ffm
                    conds.token_mask = ffm[:, 0, :, ::ph, ::pw].flatten(1)  # [B, N] per sample
        return x0, conds

    def _loss(self, batch, generator, *, attachments=(), inputs: dict | None = None) -> torch.Tensor:
        """The flow-matching loss of the family forward with ``attachments`` (a task's branch, observers), each
        sample on the expert its timestep selects; ``inputs``: extra input-layout parts [B, c, f, h, w].
        ``attachments`` may be a function of the batch rows (an index tensor) -> attachments, for per-sample
        conditions: the rows on one expert run in one forward, so such an attachment sees only those rows."""
        frames = batch["_frames"]
        B = frames.shape[0]
        bb = self.bb
        x0, conds = self.conditions(frames, self._captions(batch, B), generator, encoded=batch)
        for k, v in (inputs or {}).items():
            conds.parts[k] = v.to(x0.device)
        dev = torch.device(bb.device)
        # an fp32 branch on a bf16 backbone computes in the backbone's dtype (unless the trainer autocasts)
        mixed = (callable(attachments) or bool(attachments)) and bb.dtype != torch.float32 \
            and not torch.is_autocast_enabled(dev.type)
        ntt = bb.extra.get("num_train_timesteps", 1000)

        def model_fn(x_t, t):
            x_in = sampler.model_input(bb, x_t, conds).to(bb.dtype)
            names = [flow.expert_for_timestep(float(v), self.boundary, ntt) for v in t]
            out = None
            for name in dict.fromkeys(names):
                idx = torch.tensor([i for i, n in enumerate(names) if n == name], device=x_in.device)
                sub = _rows(conds, idx)
                tt = t[idx]
                ts = tt if sub.token_mask is None else sub.token_mask.to(tt.dtype) * tt.view(-1, 1)  # TI2V [b, N]
                with torch.autocast(dev.type, dtype=bb.dtype) if mixed else contextlib.nullcontext():
                    atts = attachments(idx) if callable(attachments) else attachments
                    y = wan.forward(bb, x_in[idx], ts, sub.text["cond"], image_embeds=sub.image_embeds,
                                    attachments=atts, rows={"cond": slice(None)}, expert=name)
                if out is None:
                    out = y.new_zeros((x_in.shape[0], *y.shape[1:]))
                out = out.index_copy(0, idx, y)
            return out

        sig = expert_sigmas(B, generator, expert=self.expert, boundary=self.boundary, shift=self.shift,
                            sampling=self.sampling, num_train_timesteps=ntt)
        if conds.first_frame_latent is None:
            return flow_matching_loss(model_fn, x0, generator, shift=self.shift, sampling=self.sampling,
                                      num_train_timesteps=ntt, sigmas=sig)
        # TI2V: latent frame 0 is the clean image (t = 0): nothing to learn there, so it is out of the loss
        _, info = flow_matching_loss(model_fn, x0, generator, shift=self.shift, sampling=self.sampling,
                                     num_train_timesteps=ntt, sigmas=sig, return_info=True)
        m = conds.first_frame_mask.to(x0.device).expand(B, 1, *x0.shape[2:])
        err = ((info["pred"] - info["target"]) ** 2 * m).flatten(1).sum(1) / (m.flatten(1).sum(1) * x0.shape[1])
        return err.mean()


def _rows(conds: sampler.WanConds, idx: torch.Tensor) -> sampler.WanConds:
    """The conditions of some batch rows."""
    import dataclasses

    def pick(v):
        return None if v is None else (v.index_select(0, idx.to(v.device)) if v.shape[0] > 1 else v)
    return dataclasses.replace(
        conds, text={k: pick(v) for k, v in conds.text.items()}, parts={k: pick(v) for k, v in conds.parts.items()},
        image_embeds=pick(conds.image_embeds), first_frame_latent=pick(conds.first_frame_latent),
        first_frame_mask=pick(conds.first_frame_mask), token_mask=pick(conds.token_mask))


class EncodedDataset(torch.utils.data.Dataset):
    """``dataset``'s items plus their Wan encodings, each computed once (on first use) and kept in memory:
    ``wan_latents`` [C, f, h, w] (the VAE posterior's mode, not a fresh sample per step) and, for I2V models,
    ``wan_image_condition`` [4 + C, f, h, w] (``wan.i2v_condition`` of frame 0). On small models the VAE costs
    far more than the denoiser, so many epochs over a small dataset (the sandbox experiments) encode once.
    Tasks read the keys through ``WanTaskBase.conditions``; the loss then draws no latent sample."""

    def __init__(self, dataset, backbone: Backbone):
        self.dataset, self.bb = dataset, backbone
        self._enc: dict[int, dict] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        item = dict(self.dataset[i])
        if i not in self._enc:
            fr = item["frames"].float()[None]
            F, H, W = fr.shape[1:4]
            wan.check_frames(self.bb, F, H, W, node="EncodedDataset")
            enc = {"wan_latents": wan.encode_video(self.bb, fr)[0].cpu()}
            if self.bb.extra["i2v"]:
                enc["wan_image_condition"] = wan.i2v_condition(self.bb, fr[:, 0], F, H, W).condition[0].cpu()
            self._enc[i] = enc
        item.update(self._enc[i])
        return item


def transformer_config(mod) -> dict:
    """A diffusers transformer's config as JSON-able values (what ``load_wan`` reads from a file's metadata)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(mod.config).items() if not k.startswith("_")}


def save_transformer(path, tensors: dict, mod, metadata: dict | None = None) -> None:
    """One transformer file ``load_wan`` reads: diffusers keys, ``mod``'s config JSON in the metadata (plus
    ``metadata``)."""
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path),
              metadata={"format": "pt", "config": json.dumps(transformer_config(mod)), **(metadata or {})})


class WanBackboneTask(WanTaskBase):
    """Train a Wan denoiser (the only model, or one expert: ``expert``) with flow matching, e.g. a tiny sandbox
    model; with ``train=False`` every weight stays frozen and only the loss is used (the LoRA's base objective:
    ``LoraTask(bb, lambda b: WanBackboneTask(b, train=False))``)."""

    def __init__(self, backbone: Backbone, *, train: bool = True, caption: str | None = None,
                 shift: float | None = None, sampling: str = "uniform", expert: str = "auto",
                 image_dropout: float = 0.0):
        self._setup(backbone, caption=caption, shift=shift, sampling=sampling, expert=expert,
                    image_dropout=image_dropout)
        self.trains = bool(train)
        experts = wan.expert_modules(backbone)
        if self.trains and len(experts) > 1 and expert == "auto":
            raise ValueError("WanBackboneTask: a two-expert model trains one expert at a time; set expert="
                             "'high_noise' or 'low_noise'")
        self.model = experts["high_noise" if expert == "auto" else expert]
        for m in experts.values():
            m.requires_grad_(False)
        if self.trains:  # weights train in the bundle's dtype: load it in fp32 (the trainer autocasts compute)
            self.model.requires_grad_(True).train()
        self.hp = dict(caption=caption, shift=self.shift, sampling=sampling, expert=expert,
                       image_dropout=self.image_dropout)

    def trainable_parameters(self):
        return [p for p in self.model.parameters() if p.requires_grad] if self.trains else []

    def trainable_state_dict(self) -> dict:
        return {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}

    def load_trainable_state_dict(self, sd: dict) -> None:
        self.model.load_state_dict(sd, strict=True)

    def config(self) -> dict:
        return {"task": "wan_backbone", **self.hp, "transformer": transformer_config(self.model)}

    def save_weights(self, path, sd: dict) -> None:
        """One transformer file (diffusers keys, the config JSON in the metadata: load_wan reads it)."""
        save_transformer(path, sd, self.model)

    def train(self):
        if self.trains:
            self.model.train()

    def eval(self):
        self.model.eval()

    def enable_gradient_checkpointing(self):
        for m in wan.expert_modules(self.bb).values():
            m.enable_gradient_checkpointing()

    def fsdp_modules(self):
        """(root, units) for FSDP2 in a multi-process launch: each WanTransformerBlock of the trained expert
        sharded on its own, the expert's other weights with the root (its state dict is the checkpoint's)."""
        return self.model, list(self.model.blocks)

    def loss(self, batch: dict, generator: torch.Generator, attachments=()) -> torch.Tensor:
        """The Task protocol's loss; ``attachments`` (observers, a method's hooks) join the forward."""
        frames = self._frames(batch)
        return self._loss({**batch, "_frames": frames}, generator, attachments=attachments)
