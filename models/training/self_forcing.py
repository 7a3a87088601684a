"""Self-Forcing student fine-tuning (GameCraft-2 spec §1.4 and §4.1 stage 3; Self-Forcing's DMD objective): a
few-step causal student learns from a bidirectional teacher by generating videos the way it will at inference,
block after block on its own KV cache, and matching the teacher's distribution on what it made.

Three copies of one Wan model (one or two experts): the **teacher** (the bundle given, frozen: DMD's "real score"),
the **student** (the generator, trained) and the **critic** ("fake score", trained to denoise the student's
videos); the student and the critic start from the teacher's weights, or the student from ``student`` (e.g. a
converted Self-Forcing checkpoint).

One step (``loss``), for each sample of the batch (the clip gives the first frame, the caption and the length):
1. **Self-forced rollout**: ``sampling.causal.CausalRollout`` on the student, the pack's sampler itself, with one
   exit step ``s`` drawn for the step (Self-Forcing's ``same_step_across_blocks``): every block runs the few-step
   schedule up to step ``s`` without gradients, step ``s`` with them (its x0 prediction is the block), then the
   clean t = 0 cache pass without; so each block is conditioned on the student's own earlier blocks, and the
   gradient reaches the exit step of every block (the cache entries are detached, as Self-Forcing's are).
2. **DMD generator loss** (generator steps: every ``critic_ratio``-th step, Self-Forcing's
   ``dfake_gen_update_ratio``): t ~ U[min_timestep, max_timestep], shifted as Wan's schedule (``shift``), x_t =
   (1 - sigma) x + sigma e; the teacher's x0 with CFG ``teacher_cfg`` and the critic's without, each on the expert
   t selects (the same for both: GameCraft-2's timesteps placed around the expert boundary); :func:`dmd_loss`.
3. **Critic loss** (every step): flow matching of the critic on the detached rollout, its own t and noise.
The two losses touch disjoint weights and are summed, so one backward is the two updates (the trainer clips
their joint gradient norm; Self-Forcing clips each). Per-expert learning rates: ``lr_scale_high_noise`` /
``lr_scale_low_noise`` for the student's experts (GameCraft-2 trains the high-noise one at a different rate),
``critic_lr_scale`` for the critic.

Not here: GameCraft-2's stage 4 (long rollouts with random windows and an interleaved teacher-forced condition),
multi-process launches of this task (one process; the critic-only steps leave the student unused, which DDP
refuses), and the camera encoder (train it first with ``gamecraft_camera``).

Batches (sandbox format): ``frames`` [B, F, H, W, 3] (frame 0 is the image of I2V models; F sets the latent
length, which must be whole blocks), ``caption``. Draw order on the loss generator: the exit step (once per
micro-batch, shared by its samples), then per sample the rollout's seed, (generator steps) t and e of the DMD loss,
then t and e of the critic loss.

Checkpoint: ``checkpoint.safetensors`` is the student's transformer (the high-noise expert of a pair) in the
format ``load_wan`` reads, with ``interplay_causal`` metadata (``backbones.wan_causal.causal_info``);
``checkpoint_low_noise.safetensors`` beside it the low-noise expert. The critic lives in the resume state only.
"""
from __future__ import annotations

import copy
import json

import torch

from ..backbones import wan
from ..backbones.base import Backbone
from ..sampling import causal as C
from ..sampling import flow
from ..sampling import wan as sampler
from .objectives import _noise, flow_matching_loss, shift_sigma
from .wan import WanTaskBase, save_transformer

TASK = "self_forcing"
WHO = "SelfForcingTask"


def dmd_loss(x: torch.Tensor, real_x0: torch.Tensor, fake_x0: torch.Tensor) -> torch.Tensor:
    """DMD's generator loss (DMD2 / Self-Forcing): with p_real = x - real_x0, p_fake = x - fake_x0, the KL
    gradient estimate g = (p_real - p_fake) / mean|p_real| (the mean over each sample's elements), and the loss
    0.5 mean((x - sg(x - g))^2), whose gradient in x is g / numel: descent moves x towards the teacher's x0 and
    away from the critic's. ``real_x0`` and ``fake_x0`` are constants (no gradient flows into them)."""
    real_x0, fake_x0 = real_x0.detach().double(), fake_x0.detach().double()
    xd = x.double()
    p_real = xd.detach() - real_x0
    norm = p_real.abs().flatten(1).mean(1).view(-1, *([1] * (x.ndim - 1)))
    g = torch.nan_to_num((fake_x0 - real_x0) / norm)
    return 0.5 * torch.nn.functional.mse_loss(xd, (xd - g).detach())


def _copy_bundle(bb: Backbone, train: bool) -> Backbone:
    """A copy of the bundle's denoiser(s) (its encoders shared), trainable or not."""
    experts = {n: copy.deepcopy(m).requires_grad_(train) for n, m in wan.expert_modules(bb).items()}
    return bb.replace(denoiser=experts.pop("high_noise"), experts=experts)


class SelfForcingTask(WanTaskBase):
    """Self-Forcing DMD fine-tuning of a causal few-step student from the bundle ``backbone`` (the teacher).

    Args:
        caption, shift: the Wan base's (the caption overrides the clips'; shift: the DMD / critic timesteps').
        negative: the teacher CFG's negative prompt.
        block_latent_frames, sink_latent_frames, window_latent_frames, timesteps: the student's causal rollout
            (``sampling.causal.CausalConfig``; the defaults are the sampler's, Self-Forcing's warped list).
        teacher_cfg: the teacher's guidance scale (Self-Forcing's real_guidance_scale 3.0; 1 = one row).
        min_timestep, max_timestep: the DMD / critic t range before the shift (Self-Forcing's 2%..98%).
        critic_ratio: critic updates per generator update (Self-Forcing's 5).
        critic_lr_scale, lr_scale_high_noise, lr_scale_low_noise: learning-rate scales of the groups (Self-Forcing:
            lr 2e-6 and critic 4e-7, scale 0.2; its Adam betas are (0, 0.999): set them in the TrainConfig).
        student: a Wan bundle of the teacher's shapes whose weights start the student (default: the teacher's).
    """

    def __init__(self, backbone: Backbone, *, caption: str | None = None, negative: str = "",
                 shift: float | None = None, block_latent_frames: int = 3, sink_latent_frames: int = 1,
                 window_latent_frames: int = 9, timesteps=C.DEFAULT_TIMESTEPS, teacher_cfg: float = 3.0,
                 min_timestep: float = 20.0, max_timestep: float = 980.0, critic_ratio: int = 5,
                 critic_lr_scale: float = 0.2, lr_scale_high_noise: float = 1.0, lr_scale_low_noise: float = 1.0,
                 student: Backbone | None = None, generator: torch.Generator | None = None):
        self._setup(backbone, caption=caption, shift=shift)
        if backbone.extra.get("ti2v"):
            # its first latent frame is the clean image at t = 0 per token, which the DMD noising here ignores
            raise ValueError(f"{WHO}: {backbone.variant} (text-image-to-video) students are not supported; use a "
                             "Wan2.1 / Wan2.2 I2V or T2V model")
        self.rollout_config = C.CausalConfig(block_latent_frames=block_latent_frames,
                                             sink_latent_frames=sink_latent_frames,
                                             window_latent_frames=window_latent_frames, schedule="few_step",
                                             timesteps=tuple(timesteps), cfg=1.0)
        if not 0 <= min_timestep < max_timestep <= 1000:
            raise ValueError(f"{WHO}: need 0 <= min_timestep < max_timestep <= 1000; got {min_timestep}, "
                             f"{max_timestep}")
        if isinstance(critic_ratio, bool) or not isinstance(critic_ratio, int) or critic_ratio < 1:
            raise ValueError(f"{WHO}: critic_ratio must be a whole number >= 1; got {critic_ratio!r}")
        if not teacher_cfg >= 1.0:
            raise ValueError(f"{WHO}: teacher_cfg must be >= 1 (1 = no guidance); got {teacher_cfg}")
        for name, v in (("critic_lr_scale", critic_lr_scale), ("lr_scale_high_noise", lr_scale_high_noise),
                        ("lr_scale_low_noise", lr_scale_low_noise)):
            if not v > 0:
                raise ValueError(f"{WHO}: {name} must be > 0; got {v}")
        self.negative = negative or ""
        self.teacher_cfg = float(teacher_cfg)
        self.t_range = (float(min_timestep), float(max_timestep))
        self.critic_ratio = critic_ratio
        self.scales = {"critic": float(critic_lr_scale), "high_noise": float(lr_scale_high_noise),
                       "low_noise": float(lr_scale_low_noise)}
        for m in wan.expert_modules(backbone).values():
            m.requires_grad_(False)
        self.student = _copy_bundle(backbone, True)
        if student is not None:
            theirs, mine = wan.expert_modules(student), wan.expert_modules(self.student)
            if sorted(theirs) != sorted(mine):
                raise ValueError(f"{WHO}: the student has experts {sorted(theirs)}; the teacher {sorted(mine)}")
            for n, m in mine.items():
                try:
                    m.load_state_dict(theirs[n].state_dict(), strict=True)
                except RuntimeError as e:
                    raise ValueError(f"{WHO}: the student's {n} transformer does not match the teacher's shapes: "
                                     f"{str(e).splitlines()[0][:200]}") from None
        self.critic = _copy_bundle(backbone, True)
        self.teacher_guidance = {n: sampler.classifier_free(self.teacher_cfg) for n in wan.expert_modules(backbone)}
        self.plain = {n: sampler.classifier_free(1.0) for n in wan.expert_modules(backbone)}
        self.step = 0
        self.last = {}
        self.hp = dict(caption=caption, negative=self.negative, shift=self.shift,
                       rollout=self.rollout_config.to_dict(), teacher_cfg=self.teacher_cfg,
                       min_timestep=self.t_range[0], max_timestep=self.t_range[1], critic_ratio=critic_ratio,
                       critic_lr_scale=critic_lr_scale, lr_scale_high_noise=lr_scale_high_noise,
                       lr_scale_low_noise=lr_scale_low_noise)

    # ------------------------------------------------------------------------------------ the protocol
    def _groups(self) -> dict:
        return {**{f"student.{n}": m for n, m in wan.expert_modules(self.student).items()},
                **{f"critic.{n}": m for n, m in wan.expert_modules(self.critic).items()}}

    def trainable_parameters(self):
        return [p for m in self._groups().values() for p in m.parameters() if p.requires_grad]

    def param_groups(self):
        out = []
        for name, m in self._groups().items():
            who, expert = name.split(".")
            scale = self.scales["critic"] if who == "critic" else self.scales[expert]
            out.append({"params": [p for p in m.parameters() if p.requires_grad], "name": name, "lr_scale": scale})
        return out

    def trainable_state_dict(self) -> dict:
        return {f"{g}.{k}": v.detach().cpu().clone() for g, m in self._groups().items()
                for k, v in m.state_dict().items()}

    def load_trainable_state_dict(self, sd: dict) -> None:
        for g, m in self._groups().items():
            pre = g + "."
            m.load_state_dict({k[len(pre):]: v for k, v in sd.items() if k.startswith(pre)}, strict=True)

    def config(self) -> dict:
        return {"task": TASK, **self.hp}

    def set_step(self, step: int) -> None:
        self.step = int(step)

    def generator_step(self, step: int | None = None) -> bool:
        """Whether ``step`` (default: the current) updates the student (Self-Forcing: step % ratio == 0)."""
        return (self.step if step is None else int(step)) % self.critic_ratio == 0

    def save_weights(self, path, sd: dict) -> None:
        """The student's transformer(s) in ``load_wan``'s single-file format: the high-noise (or only) one at
        ``path``, the low-noise one beside it."""
        from ..backbones.wan_causal import CAUSAL_KEY
        from .trainer import write_beside

        c = self.rollout_config
        for n, mod in wan.expert_modules(self.student).items():
            pre = f"student.{n}."
            tensors = {k[len(pre):]: v for k, v in sd.items() if k.startswith(pre)}
            meta = {CAUSAL_KEY: json.dumps({"source": "interplay_self_forcing", "expert": n,
                                            "block_latent_frames": c.block_latent_frames,
                                            "timesteps": list(c.timesteps), "training": self.hp})}
            if n == "high_noise":
                save_transformer(path, tensors, mod, meta)
            else:
                write_beside(path, f"_{n}.safetensors", lambda tmp, t=tensors, m=mod, md=meta:
                             save_transformer(tmp, t, m, md))

    def train(self):
        for m in self._groups().values():
            m.train()

    def eval(self):
        for m in self._groups().values():
            m.eval()

    def enable_gradient_checkpointing(self):
        for m in self._groups().values():
            m.enable_gradient_checkpointing()

    # ------------------------------------------------------------------------------------------ pieces
    def _t(self, generator: torch.Generator) -> float:
        lo, hi = self.t_range
        u = float(torch.rand(1, generator=generator))
        s = (lo + u * (hi - lo)) / 1000.0
        return float(1000.0 * shift_sigma(torch.tensor(s, dtype=torch.float64), self.shift))

    def _x0(self, bb: Backbone, x_t, t: float, conds, guidance) -> torch.Tensor:
        """x0 = x_t - sigma v of one guided prediction on the expert t selects."""
        ntt = bb.extra.get("num_train_timesteps", 1000)
        name = flow.expert_for_timestep(t, self.boundary, ntt)
        v = sampler.predict_step(bb, x_t, t, conds, guidance[name], expert=name)
        return x_t - (t / ntt) * v

    def _critic_v(self, x_t, t: float, conds) -> torch.Tensor:
        """The critic's velocity at timestep ``t`` (no guidance), on the expert t selects."""
        name = flow.expert_for_timestep(t, self.boundary, self.bb.extra.get("num_train_timesteps", 1000))
        return sampler.predict_step(self.critic, x_t, t, conds, self.plain[name], expert=name)

    def rollout(self, image, caption: str, latent_frames: int, seed: int, exit_step: int | None,
                height: int, width: int, grad: bool = True) -> torch.Tensor:
        """The student's self-forced video [1, C, f, h, w] (gradients at each block's exit step when ``grad``)."""
        n = self.rollout_config.block_latent_frames
        if latent_frames % n:
            t = self.bb.extra["vae_scale_factor_temporal"]
            raise ValueError(f"{WHO}: the clips have {latent_frames} latent frames, not whole blocks of {n}; use "
                             f"clips of 1 + {t}(k x {n} - 1) frames (e.g. {1 + t * (n - 1)} or {1 + t * (2 * n - 1)}) "
                             "or another block_latent_frames")
        ro = C.CausalRollout(self.student, self.rollout_config, height=height, width=width,
                             encode=lambda texts: self.prompt_embeds(list(texts)), image=image, seed=seed)
        ro.set_prompt(caption)
        blocks = []
        for _ in range(latent_frames // n):
            z = ro.generate_block(exit_step=exit_step)
            blocks.append(z if grad else z.detach())
        return torch.cat(blocks, dim=2)

    def _teacher_conds(self, image, caption: str, F: int, H: int, W: int):
        rows = ("cond", "uncond") if self.teacher_cfg > 1 else ("cond",)
        emb = self.prompt_embeds([caption])
        neg = self.prompt_embeds([self.negative]) if self.teacher_cfg > 1 else None
        return sampler.prepare_conds(self.bb, image, emb, neg, F, H, W, rows=rows, where=WHO)

    def loss(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        frames = self._frames(batch)
        B, F, H, W, _ = frames.shape
        caps = self._captions(batch, B)
        e = self.bb.extra
        ntt = e.get("num_train_timesteps", 1000)
        f = 1 + (F - 1) // e["vae_scale_factor_temporal"]
        gen_step = self.generator_step()
        steps = len(self.rollout_config.timesteps)
        exit_step = int(torch.randint(steps, (1,), generator=generator))
        needs_image = e["i2v"] or e["ti2v"]
        total, info = 0.0, {"generator_step": gen_step, "exit_step": exit_step, "dmd": [], "critic": []}
        for i in range(B):
            image = frames[i:i + 1, 0] if needs_image else None
            seed = int(torch.randint(2 ** 31 - 1, (1,), generator=generator))
            x = self.rollout(image, caps[i], f, seed, exit_step, H, W, grad=gen_step)
            with torch.no_grad():
                conds = self._teacher_conds(image, caps[i], F, H, W)
            loss = x.new_zeros(())
            if gen_step:
                t = self._t(generator)
                sig = t / ntt
                noise = _noise(x, generator)
                with torch.no_grad():
                    x_t = (1 - sig) * x.detach() + sig * noise
                    real = self._x0(self.bb, x_t, t, conds, self.teacher_guidance)
                    fake = self._x0(self.critic, x_t, t, conds, self.plain)
                g = dmd_loss(x, real, fake)
                info["dmd"].append(float(g.detach()))
                loss = loss + g.float()
            t = self._t(generator)
            c = flow_matching_loss(lambda x_t, tt, t=t: self._critic_v(x_t, t, conds), x.detach(), generator,
                                   sigmas=torch.tensor([t / ntt]), num_train_timesteps=ntt)
            info["critic"].append(float(c.detach()))
            total = total + loss + c
        self.last = info
        return total / B
