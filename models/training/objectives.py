"""Each backbone family's own diffusion training objective, on latents x0 [B, ...] (any trailing layout).

``model_fn(x_in, t) -> prediction`` wraps the network (and whatever conditioning a task concatenates); every
random draw comes from the CPU ``generator`` in a documented order, so losses are reproducible on CPU and
GPU and testable by hand.

- ``v_prediction_loss`` (CogVideoX; DDPM/DDIM discrete timesteps): t ~ U{0..T-1}, x_t = sqrt(a) x0 +
  sqrt(1-a) n, the network predicts v = sqrt(a) n - sqrt(1-a) x0. CogVideoX's trainer converts the prediction
  to x0_hat = sqrt(a) x_t - sqrt(1-a) v_hat and weights (x0_hat - x0)^2 by 1/(1-a); that equals the plain
  MSE on v exactly (x0_hat - x0 = -sqrt(1-a) (v_hat - v)), so both spellings give one number.
- ``edm_loss`` (SVD / InterDyn): ln sigma ~ N(P_mean, P_std^2), x = x0 + sigma n, D = c_skip x + c_out
  F(c_in x, c_noise), loss lambda(sigma) |D - x0|^2 with lambda = (sigma^2 + sd^2) / (sigma sd)^2. SVD is a
  v-prediction EDM model: c_out = -sigma sd / sqrt(sigma^2 + sd^2) (``prediction="v"``); the EDM paper's F
  uses +sigma sd / sqrt(...) (``prediction="edm"``). c_noise = 0.25 ln sigma.
- ``flow_matching_loss`` (Wan): s ~ U(0,1) (or logit-normal), shifted sigma = shift s / (1 + (shift-1) s),
  x_t = (1 - sigma) x0 + sigma n, target n - x0, timestep t = 1000 sigma.

Reduction: squared error averaged over each sample's elements, times an optional per-sample weight, then
averaged over the batch.
"""
from __future__ import annotations

import torch

from ..sampling.flow import shift_sigma  # noqa: F401  (the one shift; the trainer and the sampler share it)


def _bview(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.view(v.shape[0], *([1] * (x.ndim - 1)))


def _reduce(err: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    per = err.float().flatten(1).mean(dim=1)
    if weight is not None:
        per = per * weight.to(per)
    return per.mean()


def _noise(x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """N(0,1) like x0, drawn on the CPU in float32 (device-independent), then moved."""
    return torch.randn(x0.shape, generator=generator, dtype=torch.float32).to(x0.device, torch.float32)


# ------------------------------------------------------------------------------------------ v-prediction
def v_prediction_loss(model_fn, x0: torch.Tensor, alphas_cumprod: torch.Tensor, generator: torch.Generator, *,
                      timesteps: torch.Tensor | None = None, noise: torch.Tensor | None = None,
                      weighting: str = "cogvideox", return_info: bool = False):
    """DDPM v-prediction loss (CogVideoX).

    Args:
        model_fn: (x_t [B,...] float32, t [B] long) -> v prediction like x0.
        x0: clean latents [B,...] (already times the VAE scaling factor).
        alphas_cumprod: [T] the scheduler's cumulative alphas (with CogVideoX's snr shift applied).
        generator: CPU generator. Draw order: timesteps (if not given) then noise (if not given).
        weighting: "cogvideox" (x0-space error weighted 1/(1-a), the released trainer's form) or "v" (MSE on
            v); equal in exact arithmetic.
    Returns the scalar loss, or (loss, dict(t, noise, target, pred)) with ``return_info``.
    """
    if weighting not in ("cogvideox", "v"):
        raise ValueError(f"v_prediction_loss: weighting must be 'cogvideox' or 'v'; got {weighting!r}")
    B = x0.shape[0]
    ac = alphas_cumprod.detach().to(torch.float64).cpu()
    if timesteps is None:
        timesteps = torch.randint(0, ac.shape[0], (B,), generator=generator)
    timesteps = timesteps.long().cpu()
    n = _noise(x0, generator) if noise is None else noise.to(x0.device, torch.float32)
    a = ac[timesteps].to(torch.float32).to(x0.device)
    sa, s1a = _bview(a.sqrt(), x0), _bview((1 - a).sqrt(), x0)
    x0f = x0.float()
    x_t = sa * x0f + s1a * n
    target = sa * n - s1a * x0f
    pred = model_fn(x_t, timesteps.to(x0.device)).float()
    if weighting == "v":
        loss = _reduce((pred - target) ** 2)
    else:
        x0_hat = sa * x_t - s1a * pred
        loss = _reduce((x0_hat - x0f) ** 2 / _bview(1 - a, x0))
    if return_info:
        return loss, dict(t=timesteps, noise=n, target=target, pred=pred, x_t=x_t)
    return loss


# ----------------------------------------------------------------------------------------------- EDM
def edm_precondition(sigma: torch.Tensor, sigma_data: float = 1.0, prediction: str = "v"):
    """(c_skip, c_out, c_in, c_noise) for sigma [B] (float32)."""
    if prediction not in ("v", "edm"):
        raise ValueError(f"edm: prediction must be 'v' (SVD) or 'edm'; got {prediction!r}")
    s, sd = sigma.float(), float(sigma_data)
    den = (s ** 2 + sd ** 2)
    c_skip = sd ** 2 / den
    c_out = s * sd / den.sqrt() * (-1.0 if prediction == "v" else 1.0)
    c_in = 1 / den.sqrt()
    c_noise = 0.25 * s.log()
    return c_skip, c_out, c_in, c_noise


def edm_weight(sigma: torch.Tensor, sigma_data: float = 1.0) -> torch.Tensor:
    """lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2."""
    s = sigma.float()
    return (s ** 2 + sigma_data ** 2) / (s * sigma_data) ** 2


def sample_edm_sigmas(n: int, generator: torch.Generator, p_mean: float = 0.7, p_std: float = 1.6) -> torch.Tensor:
    """[n] exp(p_mean + p_std N(0,1)) on the CPU (InterDyn: P_mean 0.7, P_std 1.6)."""
    return (p_mean + p_std * torch.randn(n, generator=generator)).exp()


def edm_loss(model_fn, x0: torch.Tensor, generator: torch.Generator, *, p_mean: float = 0.7, p_std: float = 1.6,
             sigma_data: float = 1.0, prediction: str = "v", sigmas: torch.Tensor | None = None,
             noise: torch.Tensor | None = None, return_info: bool = False):
    """EDM loss (Karras et al. 2022) with SVD's v-prediction preconditioning by default.

    Args:
        model_fn: (c_in * x [B,...] float32, c_noise [B]) -> raw network output F like x0.
        x0: clean latents [B,...].
        generator: CPU generator. Draw order: sigmas (if not given) then noise (if not given).
    """
    B = x0.shape[0]
    sigma = sample_edm_sigmas(B, generator, p_mean, p_std) if sigmas is None else sigmas.float().cpu()
    n = _noise(x0, generator) if noise is None else noise.to(x0.device, torch.float32)
    sigma = sigma.to(x0.device)
    c_skip, c_out, c_in, c_noise = edm_precondition(sigma, sigma_data, prediction)
    x0f = x0.float()
    x = x0f + _bview(sigma, x0) * n
    out = model_fn(_bview(c_in, x0) * x, c_noise).float()
    d = _bview(c_skip, x0) * x + _bview(c_out, x0) * out
    loss = _reduce((d - x0f) ** 2, edm_weight(sigma, sigma_data))
    if return_info:
        return loss, dict(sigma=sigma, noise=n, denoised=d, out=out)
    return loss


# ----------------------------------------------------------------------------------------- flow matching


def flow_matching_loss(model_fn, x0: torch.Tensor, generator: torch.Generator, *, shift: float = 5.0,
                       sampling: str = "uniform", logit_mean: float = 0.0, logit_std: float = 1.0,
                       num_train_timesteps: int = 1000, sigmas: torch.Tensor | None = None,
                       noise: torch.Tensor | None = None, return_info: bool = False):
    """Rectified-flow loss (Wan): predict the velocity n - x0.

    Args:
        model_fn: (x_t [B,...] float32, t [B] float = num_train_timesteps * sigma) -> velocity like x0.
        shift: Wan's sigma shift (5.0 for the 480p I2V releases; 1.0 = none).
        sampling: "uniform" s ~ U(0,1) or "logit_normal" s = sigmoid(N(logit_mean, logit_std^2)), before the shift.
        generator: CPU generator. Draw order: s (if sigmas not given) then noise (if not given).
    """
    if sampling not in ("uniform", "logit_normal"):
        raise ValueError(f"flow_matching_loss: sampling must be 'uniform' or 'logit_normal'; got {sampling!r}")
    B = x0.shape[0]
    if sigmas is None:
        if sampling == "uniform":
            s = torch.rand(B, generator=generator)
        else:
            s = torch.sigmoid(logit_mean + logit_std * torch.randn(B, generator=generator))
        sigmas = shift_sigma(s, shift)
    sigma = sigmas.float().cpu().to(x0.device)
    n = _noise(x0, generator) if noise is None else noise.to(x0.device, torch.float32)
    x0f = x0.float()
    sv = _bview(sigma, x0)
    x_t = (1 - sv) * x0f + sv * n
    target = n - x0f
    pred = model_fn(x_t, sigma * num_train_timesteps).float()
    loss = _reduce((pred - target) ** 2)
    if return_info:
        return loss, dict(sigma=sigma, noise=n, target=target, pred=pred, x_t=x_t)
    return loss


OBJECTIVES = {"cogvideox": "v_prediction", "svd": "edm", "wan": "flow_matching"}
