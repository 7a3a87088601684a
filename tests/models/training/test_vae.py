import pytest
import torch
from diffusers import AutoencoderKLCogVideoX

from interplay.models.training.vae import VaeTrainConfig, latent_scale, train_vae, vae_loss


def _tiny_vae():
    torch.manual_seed(0)
    return AutoencoderKLCogVideoX(
        down_block_types=("CogVideoXDownBlock3D",) * 3, up_block_types=("CogVideoXUpBlock3D",) * 3,
        block_out_channels=(8, 16, 16), latent_channels=4, layers_per_block=1, norm_num_groups=4,
        sample_height=16, sample_width=16)


def test_vae_loss_rejects_frame_counts_the_vae_cannot_round_trip():
    vae = _tiny_vae()
    with pytest.raises(ValueError, match="8k\\+1"):
        vae_loss(vae, torch.zeros(1, 3, 13, 16, 16), 1e-6)


def test_training_a_few_steps_lowers_the_loss_on_a_fixed_clip():
    vae = _tiny_vae()
    # a smooth moving pattern: learnable in a few dozen steps, unlike white noise
    y, x = torch.meshgrid(torch.linspace(-1, 1, 16), torch.linspace(-1, 1, 16), indexing="ij")
    frames = [torch.stack([torch.sin(3 * x + 0.3 * f), torch.cos(2 * y - 0.2 * f), x * y]) for f in range(9)]
    clip = torch.stack(frames, dim=1)[None]
    losses = train_vae(vae, lambda step: clip, VaeTrainConfig(steps=40, lr=5e-3, warmup=1), device=torch.device("cpu"))
    assert len(losses) == 40
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5


def test_latent_scale_is_inverse_std_of_posterior_means():
    vae = _tiny_vae().eval()
    clip = torch.rand(1, 3, 9, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        std = vae.encode(clip).latent_dist.mean.std()
    assert latent_scale(vae, [clip], device=torch.device("cpu")) == pytest.approx(1 / float(std), rel=1e-5)
