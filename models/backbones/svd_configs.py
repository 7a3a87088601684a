"""The release configs of Stable Video Diffusion (UNet, VAE, CLIP ViT-H image encoder, scheduler): one place both the
loader (svd.py) and the original-checkpoint converter (svd_convert.py) read, so neither imports the other's module
for them."""
from __future__ import annotations

# The reference scheduler config of the SVD release (EDM Euler, Karras sigmas, v-prediction).
SVD_SCHEDULER_DEFAULTS = {
    "prediction_type": "v_prediction",
    "sigma_min": 0.002,
    "sigma_max": 700.0,
    "use_karras_sigmas": True,
    "timestep_type": "continuous",
    "rho": 7.0,
}

# Real configs (diffusers UNetSpatioTemporalConditionModel): SVD 14 frames and SVD-XT 25 frames differ only in
# num_frames (a default, not a weight shape). Heads (5, 10, 20, 20) are 64 channels each, the release's and
# diffusers' default; they change no weight shape, so a wrong value loads strictly and runs wrong attention.
SVD_UNET_CONFIG = dict(
    sample_size=96, in_channels=8, out_channels=4,
    down_block_types=("CrossAttnDownBlockSpatioTemporal",) * 3 + ("DownBlockSpatioTemporal",),
    up_block_types=("UpBlockSpatioTemporal",) + ("CrossAttnUpBlockSpatioTemporal",) * 3,
    block_out_channels=(320, 640, 1280, 1280), addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=768, layers_per_block=2, cross_attention_dim=1024,
    transformer_layers_per_block=1, num_attention_heads=(5, 10, 20, 20), num_frames=14,
)

# The VAE and the CLIP ViT-H/14 image encoder of the release (diffusers / transformers configs).
SVD_VAE_CONFIG = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                      block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                      sample_size=768, scaling_factor=0.18215, force_upcast=True)
VIT_H_CONFIG = dict(hidden_size=1280, intermediate_size=5120, projection_dim=1024, num_hidden_layers=32,
                    num_attention_heads=16, image_size=224, patch_size=14, hidden_act="gelu", layer_norm_eps=1e-5)
