"""The Wan family's flow-matching schedule: shifted sigmas, the UniPC and Euler schedulers configured as the Wan
pipelines configure them, the two-expert switch rule and per-token timesteps. No sampler loop here (it is written
on the model-forward contract, issue 15).

Flow matching: x_s = (1 - s) x0 + s n, the model predicts the velocity v = n - x0, timestep t = 1000 s.
Shift (Wan's, also the trainer's): s' = shift s / (1 + (shift - 1) s); shift > 1 spends more steps at high noise.
UniPC (the releases' scheduler, ``UniPCMultistepScheduler(prediction_type="flow_prediction",
use_flow_sigmas=True, flow_shift=shift)``): s_i = shift(linspace(1, 1/1000, N + 1)[:-1]), the first nudged to
1 - 1e-6, then a final 0; timesteps = int(1000 s_i) (truncated: diffusers stores them as int64).
Euler (``FlowMatchEulerDiscreteScheduler(shift=shift)``): s_i = shift(linspace(1, shift(1/1000), N)) (diffusers
spans the already shifted training range, so the last point is shifted twice), a final 0; timesteps = 1000 s_i
(float).
Two experts (Wan2.2 A14B): the high-noise expert denoises every step whose timestep t >= boundary x 1000, the
low-noise expert the rest, exactly WanImageToVideoPipeline's rule; with a decreasing schedule the switch happens
once, at the first timestep below the boundary.
"""
from __future__ import annotations

import numpy as np
import torch

SCHEDULERS = ("unipc", "euler")


def shift_sigma(s, shift: float):
    """Wan's timestep shift: sigma = shift s / (1 + (shift - 1) s) (tensor, array or float)."""
    return shift * s / (1 + (shift - 1) * s)


def flow_sigmas(steps: int, shift: float, scheduler: str = "unipc", num_train_timesteps: int = 1000) -> torch.Tensor:
    """[steps + 1] float32 sigmas of ``scheduler`` (module doc), computed here without diffusers (the tests check
    that diffusers' schedulers give the same numbers)."""
    if steps < 1:
        raise ValueError(f"flow schedule: steps must be >= 1; got {steps}")
    if scheduler == "unipc":
        s = np.linspace(1, 1 / num_train_timesteps, steps + 1)[:-1]
        s = shift_sigma(s, shift)
        if abs(s[0] - 1) < 1e-6:
            s[0] -= 1e-6
    elif scheduler == "euler":
        lo = shift_sigma(1 / num_train_timesteps, shift)
        s = shift_sigma(np.linspace(1, lo, steps), shift)
    else:
        raise ValueError(f"flow schedule: scheduler must be one of {SCHEDULERS}; got {scheduler!r}")
    return torch.from_numpy(np.concatenate([s, [0.0]]).astype(np.float32))


def make_scheduler(scheduler: str = "unipc", shift: float = 5.0, steps: int | None = None, *, config: dict | None = None,
                   device=None):
    """A diffusers scheduler configured as the Wan pipelines do, timesteps set when ``steps`` is given.

    ``config``: the folder's scheduler_config (Backbone.scheduler_config) for UniPC (its solver order/type and
    final sigma); ``shift`` always wins over the config's ``flow_shift``."""
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    if scheduler == "unipc":
        base = dict(num_train_timesteps=1000, prediction_type="flow_prediction", use_flow_sigmas=True,
                    solver_order=2, solver_type="bh2", lower_order_final=True, final_sigmas_type="zero",
                    timestep_spacing="linspace")
        keys = ("num_train_timesteps", "solver_order", "solver_type", "lower_order_final", "final_sigmas_type",
                "timestep_spacing", "predict_x0", "thresholding", "disable_corrector")
        base.update({k: v for k, v in (config or {}).items() if k in keys})
        sch = UniPCMultistepScheduler(**base, flow_shift=float(shift))
    elif scheduler == "euler":
        n = int((config or {}).get("num_train_timesteps", 1000))
        sch = FlowMatchEulerDiscreteScheduler(num_train_timesteps=n, shift=float(shift))
    else:
        raise ValueError(f"Wan sampler: scheduler must be one of {SCHEDULERS}; got {scheduler!r}")
    if steps is not None:
        if steps < 1:
            raise ValueError(f"Wan sampler: steps must be >= 1; got {steps}")
        sch.set_timesteps(steps, device=device)
    return sch


def expert_for_timestep(t, boundary: float | None, num_train_timesteps: int = 1000) -> str:
    """"high_noise" when ``boundary`` is None (one model) or t >= boundary x num_train_timesteps, else
    "low_noise": WanImageToVideoPipeline's rule (t: the scheduler's timestep, a number or 0-d tensor)."""
    if boundary is None:
        return "high_noise"
    return "high_noise" if float(t) >= boundary * num_train_timesteps else "low_noise"


def expert_plan(timesteps, boundary: float | None, num_train_timesteps: int = 1000) -> list[str]:
    """The expert of every step of a schedule."""
    return [expert_for_timestep(t, boundary, num_train_timesteps) for t in timesteps]


def switch_step(timesteps, boundary: float | None, num_train_timesteps: int = 1000) -> int | None:
    """Index of the first low-noise step (None if the schedule never goes below the boundary)."""
    plan = expert_plan(timesteps, boundary, num_train_timesteps)
    return plan.index("low_noise") if "low_noise" in plan else None


def token_timesteps(t, token_mask: torch.Tensor, batch: int = 1) -> torch.Tensor:
    """Per-token timesteps [batch, L] = token_mask x t (TI2V: 0 for the tokens of the first latent frame; later
    causal blocks: 0 for context frames). ``token_mask`` [1, L] or [L] of 0/1 (wan.WanCondition.token_mask)."""
    m = token_mask.reshape(1, -1).float()
    tt = torch.as_tensor(t, dtype=torch.float32, device=m.device)
    return (m * tt).expand(batch, -1)
