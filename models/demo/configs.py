"""The exact configs of the embedded demo model (tiny CogVideoX image-to-video + KineMask velocity branch).

Why CogVideoX: it is KineMask's backbone family, so the demo exercises the flagship method's real classes
(CogVideoXTransformer3DModel, AutoencoderKLCogVideoX, T5EncoderModel, CogVideoXDDIMScheduler) end to end; the
KineMask branch's control encoder mirrors its causal VAE (frame 0 kept apart). The demo's VAE compresses time 2x,
not the release's 4x: at 64x64 it raised the VAE round-trip IoU bound from 0.67 to 0.76.
Sizes are chosen so the whole recipe trains on two CPU cores in about three hours (demo_config.json: total_s).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

DEMO_ROOT = Path(__file__).resolve().parent
BACKBONE_DIR = DEMO_ROOT / "cogvideox_push"          # diffusers folder (model_index.json ...)
BRANCH_FILE = DEMO_ROOT / "kinemask_push.safetensors"  # the velocity branch, loadable by load_branch
CAPTION = "An object moving on a surface"


@dataclass
class DemoConfig:
    """Everything that decides the demo weights; stored in models/demo/demo_config.json with them."""

    size: int = 64                 # frames are size x size
    frames: int = 9                # t*k+1 with an odd latent count so the causal VAE round-trips
    vae_temporal: int = 2          # the VAE's time compression (2: 5 latent frames; 4 as the release: 3)
    fps: float = 8.0
    n_train: int = 2000
    train_seed: int = 0            # training scenes use seeds train_seed .. train_seed + n_train - 1
    heldout_seed: int = 1_000_000  # evaluation scenes start here: never used in training
    caption: str = CAPTION
    max_text_len: int = 8
    # VAE (trained from scratch on random crops: it is fully convolutional)
    vae_steps: int = 900
    vae_batch: int = 8
    vae_crop: int = 32
    vae_lr: float = 3e-4
    # backbone (trained from scratch, image-to-video, no control)
    backbone_steps: int = 4000
    backbone_batch: int = 16
    backbone_lr: float = 5e-4
    backbone_ema: float = 0.995
    # KineMask branch on the frozen backbone: stage 1 all frames, stage 2 prefix dropout
    branch_layers: int = 4
    branch_weight: float = 0.5     # residual scale in training = the sampler node's default (KineMask: 0.5)
    branch_stage1_steps: int = 1500
    branch_stage2_steps: int = 18000
    branch_batch: int = 16
    branch_lr: float = 5e-4
    seed: int = 0
    # sampling used by the demo workflow and the evaluation
    sample_steps: int = 25
    sample_cfg: float = 1.0

    def to_dict(self) -> dict:
        return asdict(self)


def vae_config(cfg: DemoConfig, scaling_factor: float = 1.0) -> dict:
    """AutoencoderKLCogVideoX: 3 levels -> 4x space (64 -> 16), ``vae_temporal`` x time (9 -> 3 or 5 latent
    frames), 8 channels."""
    return dict(
        in_channels=3, out_channels=3,
        down_block_types=("CogVideoXDownBlock3D",) * 3, up_block_types=("CogVideoXUpBlock3D",) * 3,
        block_out_channels=(16, 32, 32), latent_channels=8, layers_per_block=1, norm_num_groups=8,
        temporal_compression_ratio=cfg.vae_temporal, sample_height=cfg.size, sample_width=cfg.size,
        scaling_factor=float(scaling_factor),
    )


def transformer_config(cfg: DemoConfig) -> dict:
    """CogVideoXTransformer3DModel, I2V layout (noisy latent and image latent concatenated: 2 x 8 channels)."""
    lat = cfg.size // 4
    return dict(
        num_attention_heads=4, attention_head_dim=32, in_channels=16, out_channels=8, time_embed_dim=128,
        text_embed_dim=32, num_layers=4, sample_width=lat, sample_height=lat, sample_frames=cfg.frames,
        patch_size=2, temporal_compression_ratio=cfg.vae_temporal, max_text_seq_length=cfg.max_text_len,
        use_rotary_positional_embeddings=True, use_learned_positional_embeddings=False,
    )


def t5_config(vocab_size: int) -> dict:
    """T5EncoderModel: a frozen random text encoder (the demo's caption is constant; the interface is real)."""
    return dict(vocab_size=vocab_size, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4,
                relative_attention_num_buckets=8, relative_attention_max_distance=16, dropout_rate=0.0,
                feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False, pad_token_id=0,
                eos_token_id=1, decoder_start_token_id=0)


def scheduler_config() -> dict:
    """CogVideoXDDIMScheduler exactly as the CogVideoX-5B-I2V release ships it."""
    return dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                num_train_timesteps=1000, prediction_type="v_prediction", rescale_betas_zero_snr=True,
                sample_max_value=1.0, set_alpha_to_one=True, snr_shift_scale=1.0, steps_offset=0,
                timestep_spacing="trailing", trained_betas=None)
