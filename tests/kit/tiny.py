"""Tiny random instances of the REAL diffusers/transformers/sam2 classes, saved the way users have them.

Every builder is deterministic (``torch.manual_seed`` per model), builds once and caches on disk under
``tests/.tiny_models/<name>-<hash>/`` (hash of the config + library versions, so a config or version change
rebuilds). A build writes into a private temp dir and is published with ``os.replace``, so parallel pytest
processes never see a half-written folder; a builder that finds the folder complete returns at once.
``INTERPLAY_TINY_MODELS`` overrides the cache location.

Builders (all return paths; fixtures of the same names live in tests/conftest.py, session scope):

- :func:`tiny_cogvideox_dir` -> diffusers ``CogVideoXImageToVideoPipeline`` folder.
- :func:`tiny_cogvideox_files` -> ``dict(transformer=, vae=, text_encoder=, tokenizer=)`` single files.
- :func:`tiny_svd_dir` -> diffusers ``StableVideoDiffusionPipeline`` folder.
- :func:`tiny_wan_dir` -> diffusers ``WanImageToVideoPipeline`` folder (variant "2.2": two experts, "2.1": CLIP
  branch, "2.1-t2v", "2.2-ti2v": 48-channel VAE).
- :func:`tiny_wan_comfy_files` -> the same weights as ComfyUI-native single files (+ fp8 copies);
  :func:`tiny_wan_files` -> the "2.2" model as diffusers-named single files.
- :func:`tiny_sam2` -> ``(yaml_path, weights_safetensors)``.
- :func:`tiny_models_root` / :func:`models_root` -> a ComfyUI-style models root holding all of the above.

CogVideoX facts (tiny config in :data:`COGVIDEOX_TRANSFORMER`, :data:`COGVIDEOX_VAE`, :data:`T5_CONFIG`)
--------------------------------------------------------------------------------------------------------
Frames/pixels: H, W multiples of 8 (VAE 4x space x patch 2). Frames must be F = 8k+1 (1, 9, 17, ...): the
VAE keeps frame 0 apart, encodes F -> f = (F-1)//4 + 1 latent frames, and decodes f -> 4(f-1)+1 frames only
when f is odd (measured with diffusers 0.42: 5 -> 2 -> 8 and 13 -> 4 -> 16 do NOT round-trip; 9 -> 3 -> 9 and
17 -> 5 -> 17 do). With 32 px and 9 frames: latents [B, f=3, C=4, h=8, w=8] (diffusers VAE order is
[B, C, f, h, w]); the transformer sees 3 x 4 x 4 = 48 video tokens.

Single-file keys (diffusers names, what ``save_pretrained`` writes; ``<root>/diffusion_models/
tiny_cogvideox_transformer.safetensors``) and how a loader infers the config from shapes:

- ``patch_embed.proj.weight`` [inner, in_channels, p, p] -> inner_dim, in_channels (I2V: 2 x latent channels),
  patch_size p. ``patch_embed.text_proj.weight`` [inner, text_embed_dim].
- ``transformer_blocks.<i>.*`` -> num_layers = 1 + max i. ``transformer_blocks.0.attn1.norm_q.weight``
  [attention_head_dim] (qk_norm is per head) -> num_attention_heads = inner / head_dim.
- ``time_embedding.linear_1.weight`` [time_embed_dim, inner] -> time_embed_dim.
- ``proj_out.weight`` [p*p*out_channels, inner] -> out_channels (p_t is None: not CogVideoX 1.5).
- ``ofs_embedding.*`` present only for CogVideoX 1.5 I2V (ofs_embed_dim); absent here.
- ``patch_embed.pos_embedding`` present only with learned positional embeddings (5B I2V: absent; rotary).
  Rotary/learned are NOT recoverable from shapes when pos_embedding is absent: rotary for 5B/1.5 models.
- ComfyUI core has no CogVideoX model (checked: no ``cogvideo`` in comfy/); users' single files come from the
  ComfyUI-CogVideoXWrapper ecosystem, which (to our knowledge) ships diffusers key names like these. The original
  SAT checkpoints use other names (``model.diffusion_model.`` prefix, ``mixins.patch_embed.proj.weight``,
  ``transformer.layers.<i>.attention.query_key_value.weight`` fused QKV, ``transformer.layers.<i>.mlp.
  dense_h_to_4h``, ``mixins.adaln_layer.adaLN_modulations.<i>``); loading those needs a converter (diffusers'
  scripts/convert_cogvideox_to_diffusers.py documents the map). The kit only writes diffusers names.

VAE file (``<root>/vae/tiny_cogvideox_vae.safetensors``, diffusers names): ``encoder.conv_in.conv.weight``
[C0, 3, 3, 3, 3] -> block_out_channels[0]; ``encoder.down_blocks.<i>.resnets.0.conv1.conv.weight`` [C_i, ...]
-> block_out_channels and number of levels; ``encoder.conv_out.conv.weight`` [2*latent_channels, ...];
``encoder.down_blocks.<i>.resnets.<j>`` -> layers_per_block = 1 + max j. temporal_compression_ratio (4) and
scaling_factor (0.7 for 5B) are not in the weights: use the release values. norm_num_groups is not in the
weights either (this kit: 4; releases: 32).

Text encoder file (``<root>/text_encoders/tiny_t5.safetensors``, HF T5 names like ComfyUI's t5xxl files):
``shared.weight`` [vocab, d_model]; ``encoder.block.<i>.layer.0.SelfAttention.q.weight`` [heads*d_kv, d_model];
``encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight`` [buckets, heads] -> num_heads;
``encoder.block.<i>.layer.1.DenseReluDense.wi_0.weight`` (gated-gelu; ``wi.weight`` when relu) [d_ff, d_model].
``encoder.embed_tokens.weight`` is tied to ``shared.weight`` and not stored. The tokenizer folder sits beside it
(``<root>/text_encoders/tiny_t5_tokenizer/``) since a single file carries no tokenizer.

SVD facts (:data:`SVD_UNET`, :data:`SVD_VAE`, :data:`SVD_CLIP`)
----------------------------------------------------------------
UNet cross_attention_dim == CLIP projection_dim (16); projection_class_embeddings_input_dim = 3 x
addition_time_embed_dim (fps, motion bucket, noise aug). The CLIP image processor is saved at size 32 (the tiny
CLIP's image_size; the release uses 224 with the OpenAI CLIP mean/std): a loader must resize to
``feature_extractor.crop_size`` (never a hard-coded 224) with ``image_mean``/``image_std`` from that folder.

Wan facts: see :func:`tiny_wan_dir`. SAM2 facts: see :func:`tiny_sam2`.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Callable

import torch

KIT_VERSION = 1  # bump to force every tiny model to rebuild

DEFAULT_CACHE = Path(__file__).resolve().parents[1] / ".tiny_models"


def cache_root() -> Path:
    return Path(os.environ.get("INTERPLAY_TINY_MODELS") or DEFAULT_CACHE)


def _versions() -> dict:
    import diffusers
    import safetensors
    import transformers

    v = dict(kit=KIT_VERSION, torch=torch.__version__.split("+")[0], diffusers=diffusers.__version__,
             transformers=transformers.__version__, safetensors=safetensors.__version__)
    with contextlib.suppress(Exception):
        from importlib.metadata import version

        v["sam2"] = version("sam2")
    return v


def spec_hash(spec) -> str:
    blob = json.dumps({"spec": spec, "versions": _versions()}, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:10]


COMPLETE = ".complete"


def cached(name: str, spec, build: Callable[[Path], None]) -> Path:
    """``<cache>/<name>-<hash(spec, versions)>/``, built by ``build(tmp_dir)`` only if not yet complete.

    Atomic: ``build`` writes into a fresh temp dir next to the target which is then renamed; if another process
    published first, its folder is kept and ours discarded.
    """
    root = cache_root()
    final = root / f"{name}-{spec_hash(spec)}"
    if (final / COMPLETE).is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=root))
    try:
        with torch.random.fork_rng(devices=[]):  # building never disturbs the caller's RNG
            build(tmp)
        (tmp / COMPLETE).write_text(json.dumps({"spec": spec, "versions": _versions()}, indent=1, default=str))
        if final.exists() and not (final / COMPLETE).is_file():
            # a stale, incomplete folder (a killed build before the atomic publish existed): move it away
            with contextlib.suppress(OSError):
                os.replace(final, root / f".stale-{name}-{uuid.uuid4().hex[:8]}")
        try:
            os.replace(tmp, final)
        except OSError:
            if not (final / COMPLETE).is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _save_module(module, folder: Path) -> None:
    module.save_pretrained(folder, safe_serialization=True)


def save_single_file(module, path: Path, metadata: dict | None = None) -> Path:
    """The module's state dict as one safetensors file (diffusers/HF key names; tied weights stored once)."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    sd, seen = {}, {}
    for k, v in module.state_dict().items():
        key = (v.data_ptr(), v.shape, v.stride()) if v.numel() else None
        if key is not None and key in seen:
            continue  # tied (e.g. T5 encoder.embed_tokens.weight is shared.weight)
        if key is not None:
            seen[key] = k
        sd[k] = v.detach().contiguous().clone()
    save_file(sd, str(path), metadata={"format": "pt", **(metadata or {})})
    return path


# ============================================================================================ CogVideoX
LATENT_CHANNELS = 4

COGVIDEOX_VAE = dict(
    in_channels=3, out_channels=3,
    down_block_types=("CogVideoXDownBlock3D",) * 3, up_block_types=("CogVideoXUpBlock3D",) * 3,
    block_out_channels=(8, 16, 16), latent_channels=LATENT_CHANNELS, layers_per_block=1, norm_num_groups=4,
    temporal_compression_ratio=4, sample_height=32, sample_width=32, scaling_factor=0.7,
)
"""3 levels -> 4x space and 4x time (the first two down blocks compress both); 0.7 = 5B release scaling."""

COGVIDEOX_TRANSFORMER = dict(
    num_attention_heads=2, attention_head_dim=16, in_channels=2 * LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
    time_embed_dim=16, ofs_embed_dim=None, text_embed_dim=32, num_layers=2, sample_width=8, sample_height=8,
    sample_frames=9, patch_size=2, patch_size_t=None, temporal_compression_ratio=4, max_text_seq_length=226,
    use_rotary_positional_embeddings=True, use_learned_positional_embeddings=False,
)
"""I2V layout (noisy latent ++ image latent). head_dim 16 because 3D RoPE splits it 4/6/6 (t/h/w, all even).
sample_* = latent 8x8 (32 px) and 9 pixel frames: only used for the RoPE base grid."""

T5_CONFIG = dict(d_model=32, d_kv=16, d_ff=64, num_layers=1, num_heads=2, relative_attention_num_buckets=8,
                 relative_attention_max_distance=16, dropout_rate=0.0, feed_forward_proj="gated-gelu",
                 is_encoder_decoder=False, use_cache=False, pad_token_id=0, eos_token_id=1,
                 decoder_start_token_id=0)
"""T5 v1.1 style (gated-gelu, like t5-v1_1-xxl that CogVideoX uses); vocab_size = len(tokenizer)."""

COGVIDEOX_SCHEDULER = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, clip_sample_range=1.0,
    num_train_timesteps=1000, prediction_type="v_prediction", rescale_betas_zero_snr=True, sample_max_value=1.0,
    set_alpha_to_one=True, snr_shift_scale=1.0, steps_offset=0, timestep_spacing="trailing", trained_betas=None,
)
"""CogVideoXDDIMScheduler of THUDM/CogVideoX-5b-I2V (2B uses snr_shift_scale 3.0)."""

COGVIDEOX_INDEX = {
    "_class_name": "CogVideoXImageToVideoPipeline", "_diffusers_version": "0.32.0",
    "scheduler": ["diffusers", "CogVideoXDDIMScheduler"], "text_encoder": ["transformers", "T5EncoderModel"],
    "tokenizer": ["transformers", "T5TokenizerFast"], "transformer": ["diffusers", "CogVideoXTransformer3DModel"],
    "vae": ["diffusers", "AutoencoderKLCogVideoX"],
}


def build_t5_tokenizer():
    """``T5TokenizerFast`` over a small local Unigram vocabulary (pad 0, eos 1, unk 2; no download).

    The package's local tokenizer (interplay.models.tokenizer) is reused so the kit and the demo agree.
    """
    from interplay.models.tokenizer import build_tokenizer

    return build_tokenizer()


def new_t5(vocab_size: int, seed: int = 2, cls_name: str = "T5EncoderModel", config: dict | None = None):
    import transformers

    torch.manual_seed(seed)
    if cls_name == "UMT5EncoderModel":
        cfg = transformers.UMT5Config(vocab_size=vocab_size, **(config or T5_CONFIG))
    else:
        cfg = transformers.T5Config(vocab_size=vocab_size, **(config or T5_CONFIG))
    return getattr(transformers, cls_name)(cfg).eval()


def new_cogvideox_modules(seed: int = 0) -> dict:
    """In-memory modules of the tiny CogVideoX (same weights as the saved folder for the same seed)."""
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXTransformer3DModel

    torch.manual_seed(seed)
    vae = AutoencoderKLCogVideoX(**COGVIDEOX_VAE).eval()
    torch.manual_seed(seed + 1)
    transformer = CogVideoXTransformer3DModel(**COGVIDEOX_TRANSFORMER).eval()
    tokenizer = build_t5_tokenizer()
    text_encoder = new_t5(len(tokenizer), seed=seed + 2)
    return dict(vae=vae, transformer=transformer, text_encoder=text_encoder, tokenizer=tokenizer,
                scheduler=CogVideoXDDIMScheduler(**COGVIDEOX_SCHEDULER))


def _cogvideox_spec(seed):
    return dict(vae=COGVIDEOX_VAE, transformer=COGVIDEOX_TRANSFORMER, t5=T5_CONFIG, sched=COGVIDEOX_SCHEDULER,
                index=COGVIDEOX_INDEX, seed=seed)


def tiny_cogvideox_dir(seed: int = 0) -> Path:
    """Diffusers folder loadable by ``CogVideoXImageToVideoPipeline.from_pretrained`` (float32 weights).

    Layout: model_index.json, transformer/, vae/, text_encoder/, tokenizer/, scheduler/.
    """

    def build(tmp: Path):
        m = new_cogvideox_modules(seed)
        for name in ("transformer", "vae", "text_encoder", "tokenizer", "scheduler"):
            m[name].save_pretrained(tmp / name)
        (tmp / "model_index.json").write_text(json.dumps(COGVIDEOX_INDEX, indent=2))

    return cached("cogvideox", _cogvideox_spec(seed), build)


COGVIDEOX_FILES = dict(transformer="diffusion_models/tiny_cogvideox_transformer.safetensors",
                       vae="vae/tiny_cogvideox_vae.safetensors",
                       text_encoder="text_encoders/tiny_t5.safetensors",
                       tokenizer="text_encoders/tiny_t5_tokenizer")


def tiny_cogvideox_files(seed: int = 0) -> dict:
    """The same weights as :func:`tiny_cogvideox_dir` as single safetensors files in a ComfyUI-style root.

    Returns ``dict(transformer=, vae=, text_encoder=, tokenizer=, root=)`` (paths; ``root`` is the models root,
    laid out as in :data:`COGVIDEOX_FILES`). No config is embedded: loaders infer it from shapes (module doc).
    """
    src = tiny_cogvideox_dir(seed)

    def build(tmp: Path):
        from diffusers import AutoencoderKLCogVideoX, CogVideoXTransformer3DModel
        from transformers import T5EncoderModel, T5TokenizerFast

        save_single_file(CogVideoXTransformer3DModel.from_pretrained(src / "transformer"),
                         tmp / COGVIDEOX_FILES["transformer"])
        save_single_file(AutoencoderKLCogVideoX.from_pretrained(src / "vae"), tmp / COGVIDEOX_FILES["vae"])
        save_single_file(T5EncoderModel.from_pretrained(src / "text_encoder"), tmp / COGVIDEOX_FILES["text_encoder"])
        T5TokenizerFast.from_pretrained(src / "tokenizer").save_pretrained(tmp / COGVIDEOX_FILES["tokenizer"])

    root = cached("cogvideox_files", dict(src=src.name, files=COGVIDEOX_FILES), build)
    return {k: root / v for k, v in COGVIDEOX_FILES.items()} | {"root": root}


# ================================================================================================== SVD
SVD_UNET = dict(
    sample_size=8, in_channels=8, out_channels=4,
    down_block_types=("CrossAttnDownBlockSpatioTemporal",) * 3 + ("DownBlockSpatioTemporal",),
    up_block_types=("UpBlockSpatioTemporal",) + ("CrossAttnUpBlockSpatioTemporal",) * 3,
    block_out_channels=(32, 32, 32, 32), addition_time_embed_dim=8, projection_class_embeddings_input_dim=24,
    layers_per_block=2, cross_attention_dim=16, transformer_layers_per_block=1, num_attention_heads=(2, 2, 2, 2),
    num_frames=4,
)
"""The release's 4 block types (so the 12-skip layout is real) at 32 channels (GroupNorm groups = 32)."""

SVD_VAE = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4, block_out_channels=(32,) * 4,
    layers_per_block=1, latent_channels=4, sample_size=64, scaling_factor=0.18215, force_upcast=True,
)
"""8x space like the release (64 px -> 8x8 latents); temporal decoder, no time compression."""

SVD_CLIP = dict(hidden_size=32, intermediate_size=37, projection_dim=16, num_hidden_layers=1, num_attention_heads=2,
                image_size=224, patch_size=32, hidden_act="gelu")
"""224 px like the release (StableVideoDiffusionPipeline hard-codes a 224 resize), 7x7 patches of 32 px."""

SVD_SCHEDULER = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", trained_betas=None,
    prediction_type="v_prediction", interpolation_type="linear", use_karras_sigmas=True, sigma_min=0.002,
    sigma_max=700.0, timestep_spacing="leading", timestep_type="continuous", steps_offset=1,
    rescale_betas_zero_snr=False,
)
"""EulerDiscreteScheduler of stabilityai/stable-video-diffusion-img2vid(-xt) (EDM sigmas, Karras, v-pred)."""

SVD_INDEX = {
    "_class_name": "StableVideoDiffusionPipeline", "_diffusers_version": "0.24.0",
    "feature_extractor": ["transformers", "CLIPImageProcessor"],
    "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
    "scheduler": ["diffusers", "EulerDiscreteScheduler"], "unet": ["diffusers", "UNetSpatioTemporalConditionModel"],
    "vae": ["diffusers", "AutoencoderKLTemporalDecoder"],
}


def new_svd_modules(seed: int = 0) -> dict:
    """In-memory tiny SVD parts (unet, vae, image_encoder, feature_extractor, scheduler)."""
    from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler, UNetSpatioTemporalConditionModel
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    unet = UNetSpatioTemporalConditionModel(**SVD_UNET).eval()
    torch.manual_seed(seed + 1)
    vae = AutoencoderKLTemporalDecoder(**SVD_VAE).eval()
    torch.manual_seed(seed + 2)
    clip = CLIPVisionModelWithProjection(CLIPVisionConfig(**SVD_CLIP)).eval()
    # the release's feature_extractor: 224 shortest edge + 224 center crop, OpenAI CLIP mean/std
    fe = CLIPImageProcessor(size={"shortest_edge": SVD_CLIP["image_size"]},
                            crop_size={"height": SVD_CLIP["image_size"], "width": SVD_CLIP["image_size"]},
                            image_mean=[0.48145466, 0.4578275, 0.40821073],
                            image_std=[0.26862954, 0.26130258, 0.27577711])
    return dict(unet=unet, vae=vae, image_encoder=clip, feature_extractor=fe,
                scheduler=EulerDiscreteScheduler(**SVD_SCHEDULER))


def tiny_svd_dir(seed: int = 0) -> Path:
    """Diffusers folder loadable by ``StableVideoDiffusionPipeline.from_pretrained`` (float32).

    Layout: model_index.json, unet/, vae/, image_encoder/, feature_extractor/, scheduler/. Frames: any count
    (default 4); pixels multiples of 8 (64 px -> latents [B,F,4,8,8]); CLIP input 224 px.
    """

    def build(tmp: Path):
        m = new_svd_modules(seed)
        for name in ("unet", "vae", "image_encoder", "feature_extractor", "scheduler"):
            m[name].save_pretrained(tmp / name)
        (tmp / "model_index.json").write_text(json.dumps(SVD_INDEX, indent=2))

    spec = dict(unet=SVD_UNET, vae=SVD_VAE, clip=SVD_CLIP, sched=SVD_SCHEDULER, index=SVD_INDEX, seed=seed)
    return cached("svd", spec, build)


SVD_FILES = dict(clip_vision="clip_vision/tiny_svd_clip_vision.safetensors")


def tiny_svd_files(seed: int = 0) -> dict:
    """Single files of the tiny SVD that ComfyUI users keep apart: the CLIP vision encoder in ``clip_vision/``
    (HF ``CLIPVisionModelWithProjection`` key names: ``vision_model.*`` + ``visual_projection.weight``).

    The original-SGM ``checkpoints/`` file is written by the SVD owner's fixture writer (svd_convert), not here.
    Returns ``dict(clip_vision=, root=)``.
    """
    src = tiny_svd_dir(seed)

    def build(tmp: Path):
        from transformers import CLIPVisionModelWithProjection

        save_single_file(CLIPVisionModelWithProjection.from_pretrained(src / "image_encoder"),
                         tmp / SVD_FILES["clip_vision"])

    root = cached("svd_files", dict(src=src.name, files=SVD_FILES), build)
    return {k: root / v for k, v in SVD_FILES.items()} | {"root": root}


# ================================================================================================= SAM2
SAM2_BASE = "configs/sam2.1/sam2.1_hiera_t.yaml"  # inside the sam2 package
SAM2_IMAGE_SIZE = 128
SAM2_OVERRIDES = {
    "image_encoder.trunk.embed_dim": 16, "image_encoder.trunk.stages": [1, 1, 2, 1],
    "image_encoder.trunk.global_att_blocks": [3],  # Hiera: global attention must sit on a non-pooling block
    "image_encoder.neck.d_model": 32, "image_encoder.neck.position_encoding.num_pos_feats": 32,
    "image_encoder.neck.backbone_channel_list": [128, 64, 32, 16],
    "memory_attention.d_model": 32, "memory_attention.num_layers": 1, "memory_attention.layer.d_model": 32,
    "memory_attention.layer.dim_feedforward": 64, "memory_attention.layer.self_attention.embedding_dim": 32,
    "memory_attention.layer.cross_attention.embedding_dim": 32,
    "memory_attention.layer.cross_attention.kv_in_dim": 16,
    "memory_encoder.out_dim": 16, "memory_encoder.in_dim": 32,
    "memory_encoder.position_encoding.num_pos_feats": 16, "memory_encoder.mask_downsampler.embed_dim": 32,
    "memory_encoder.fuser.layer.dim": 32, "memory_encoder.fuser.num_layers": 1,
    "image_size": SAM2_IMAGE_SIZE, "num_maskmem": 3,
}
"""sam2.1_hiera_t at toy widths (~0.87M parameters, 128 px input). Same classes as the release. Why: the real
hiera_t at 1024 px takes ~4.5 s per image encoder pass on one CPU core; this one ~4 ms."""

SAM2_FILES = dict(config="sam2/sam2.1_hiera_tiny_test.yaml", weights="sam2/sam2.1_hiera_tiny_test.safetensors")


def write_sam2_config(path: Path) -> Path:
    """The derived YAML (a complete SAM2 model config: ``model:`` with the release's ``_target_`` classes)."""
    import sam2
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(Path(sam2.__path__[0]) / SAM2_BASE)
    for dotted, v in SAM2_OVERRIDES.items():
        OmegaConf.update(cfg.model, dotted, v, merge=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, path)
    return path


def new_sam2_model(config: Path, seed: int = 0):
    """Random-init SAM2Base from a YAML path (no hydra search path needed), eval mode, CPU."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(config)
    OmegaConf.resolve(cfg)
    torch.manual_seed(seed)
    return instantiate(cfg.model, _recursive_=True).eval()


def tiny_sam2(seed: int = 0) -> tuple[Path, Path]:
    """``(yaml_path, weights_path)`` of a tiny random SAM2.1 (Hiera) inside a models root
    (``<root>/sam2/sam2.1_hiera_tiny_test.{yaml,safetensors}``).

    Weights: the model's state dict with the keys of an official checkpoint's ``"model"`` dict
    (``image_encoder.trunk.*``, ``sam_mask_decoder.*``, ``memory_attention.*``, ``maskmem_tpos_enc`` ...),
    identical for SAM2Base and SAM2VideoPredictor. The YAML is a path, not a name in the sam2 package:
    ``sam2.build_sam.build_sam2``/``build_sam2_video_predictor`` look names up with hydra ``compose`` and
    need :func:`sam2_hydra_dir` around the call (name = ``yaml.stem``); ``OmegaConf.load`` + ``instantiate`` work
    directly.
    """
    import sam2  # noqa: F401  (fail early with ImportError when the optional package is absent)

    def build(tmp: Path):
        from safetensors.torch import save_file

        yaml = write_sam2_config(tmp / SAM2_FILES["config"])
        model = new_sam2_model(yaml, seed)
        sd = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
        save_file(sd, str(tmp / SAM2_FILES["weights"]), metadata={"format": "pt"})

    root = cached("sam2", dict(base=SAM2_BASE, overrides=SAM2_OVERRIDES, files=SAM2_FILES, seed=seed), build)
    return root / SAM2_FILES["config"], root / SAM2_FILES["weights"]


@contextlib.contextmanager
def sam2_hydra_dir(config_dir: Path):
    """Let ``sam2.build_sam.build_sam2(name)`` find YAMLs in ``config_dir``; restores sam2's search path after."""
    from hydra import initialize_config_dir, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(Path(config_dir).resolve()), version_base="1.2"):
            yield
    finally:
        GlobalHydra.instance().clear()
        initialize_config_module("sam2", version_base="1.2")


# ================================================================================================== Wan
# Four tiny Wan models of the real classes at the release channel counts (16/48-channel latents, 36/16/48-channel
# transformer inputs), each a diffusers folder and ComfyUI-native single files. Facts in tiny_wan_dir's docstring.
WAN_Z = 16
WAN22_Z = 48


def _release_latent_stats():
    from interplay.models.backbones import wan

    return wan.WAN21_LATENTS_MEAN, wan.WAN21_LATENTS_STD, wan.WAN22_LATENTS_MEAN, wan.WAN22_LATENTS_STD


_M21, _S21, _M22, _S22 = _release_latent_stats()
WAN_VAE = dict(
    base_dim=4, z_dim=WAN_Z, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
    temperal_downsample=[False, True, True], dropout=0.0, latents_mean=_M21, latents_std=_S21,
    scale_factor_temporal=4, scale_factor_spatial=8,
)
"""Wan2.1 VAE structure (also Wan2.2-A14B's) at base width 4: 8x space, 4x time keeping frame 0 apart, the
release's 16 latent channels and latents_mean/std (the pipeline normalises latents with them, no scaling factor);
num_res_blocks 2 as released, so diffusers' own single-file converter reads the native file."""

WAN22_VAE = dict(
    base_dim=4, decoder_base_dim=8, z_dim=WAN22_Z, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
    temperal_downsample=[False, True, True], dropout=0.0, is_residual=True, in_channels=12, out_channels=12,
    patch_size=2, latents_mean=_M22, latents_std=_S22, scale_factor_temporal=4, scale_factor_spatial=16,
)
"""Wan2.2 VAE (TI2V-5B): residual blocks, 2x2 pixel patches (12 channels in), 16x space, 48 latent channels."""

_WAN_BASE = dict(
    patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, text_dim=32, freq_dim=256, ffn_dim=64,
    num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=None,
    added_kv_proj_dim=None, rope_max_seq_len=1024, pos_embed_seq_len=None,
)
WAN_TRANSFORMER = dict(_WAN_BASE, in_channels=2 * WAN_Z + 4, out_channels=WAN_Z)
"""Wan2.2 I2V-A14B expert layout: input = noisy latent (16) ++ 4 first-frame mask channels ++ image latent (16) =
36, like the release; no CLIP branch (image_dim None). head_dim 16: RoPE splits it t/h/w = 8/4/4."""

WAN21_TRANSFORMER = dict(WAN_TRANSFORMER, image_dim=32, added_kv_proj_dim=32)
"""Wan2.1 I2V layout: the same 36 channels plus a CLIP image branch (image_dim = CLIP hidden size, added K/V
projections of width inner_dim)."""

WAN21_T2V_TRANSFORMER = dict(_WAN_BASE, in_channels=WAN_Z, out_channels=WAN_Z)
"""Wan2.1 T2V layout (1.3B/14B): the noisy latent only."""

WAN22_TI2V_TRANSFORMER = dict(_WAN_BASE, in_channels=WAN22_Z, out_channels=WAN22_Z)
"""Wan2.2 TI2V-5B layout: 48 in = 48 out; the image enters as the first latent frame (per-token timestep 0)."""

WAN_CLIP = dict(hidden_size=32, intermediate_size=37, projection_dim=32, num_hidden_layers=2, num_attention_heads=2,
                image_size=224, patch_size=32, hidden_act="gelu")
"""Wan2.1 I2V uses CLIPVisionModel hidden_states[-2] (penultimate layer) at 224 px (tiny: 7x7 patches + class)."""

UMT5_CONFIG = dict(T5_CONFIG, num_layers=2)
"""umT5 keeps a relative-attention bias in every block (T5 only in block 0): two blocks show it."""

WAN_SCHEDULER = dict(num_train_timesteps=1000, prediction_type="flow_prediction", use_flow_sigmas=True,
                     flow_shift=5.0, solver_order=2, solver_type="bh2", lower_order_final=True,
                     final_sigmas_type="zero", timestep_spacing="linspace")
"""UniPCMultistepScheduler as Wan2.2-I2V-A14B-Diffusers ships it (flow matching, shift 5.0 = sample_shift)."""

WAN_BOUNDARY_RATIO = 0.9  # Wan2.2 A14B: high-noise expert `transformer` for t >= 900, `transformer_2` below

WAN_VARIANTS = ("2.2", "2.1", "2.1-t2v", "2.2-ti2v")
"""Kit variant names: "2.2" = Wan2.2-I2V-A14B (two experts), "2.1" = Wan2.1-I2V-14B (CLIP branch), "2.1-t2v" =
Wan2.1-T2V, "2.2-ti2v" = Wan2.2-TI2V-5B (48-channel VAE)."""

_WAN_TCFG = {"2.2": WAN_TRANSFORMER, "2.1": WAN21_TRANSFORMER, "2.1-t2v": WAN21_T2V_TRANSFORMER,
             "2.2-ti2v": WAN22_TI2V_TRANSFORMER}


def _check_wan_variant(variant: str) -> None:
    if variant not in WAN_VARIANTS:
        raise ValueError(f"tiny Wan: variant must be one of {WAN_VARIANTS}; got {variant!r}")


def _wan_index(variant: str) -> dict:
    i2v = variant in ("2.2", "2.1")
    idx = {
        "_class_name": "WanImageToVideoPipeline" if i2v else "WanPipeline", "_diffusers_version": "0.35.0",
        "scheduler": ["diffusers", "UniPCMultistepScheduler"], "text_encoder": ["transformers", "UMT5EncoderModel"],
        "tokenizer": ["transformers", "T5TokenizerFast"], "transformer": ["diffusers", "WanTransformer3DModel"],
        "vae": ["diffusers", "AutoencoderKLWan"],
    }
    if variant == "2.2":
        idx |= {"transformer_2": ["diffusers", "WanTransformer3DModel"], "boundary_ratio": WAN_BOUNDARY_RATIO,
                "expand_timesteps": False, "image_encoder": [None, None], "image_processor": [None, None]}
    elif variant == "2.1":
        idx |= {"image_encoder": ["transformers", "CLIPVisionModel"],
                "image_processor": ["transformers", "CLIPImageProcessor"]}
    elif variant == "2.2-ti2v":  # as Wan-AI/Wan2.2-TI2V-5B-Diffusers: one model, per-token timesteps
        idx |= {"transformer_2": [None, None], "boundary_ratio": None, "expand_timesteps": True}
    return idx


def new_wan_clip(seed: int = 4):
    """The tiny CLIP vision tower with its projection (ComfyUI's clip_vision_h layout keeps visual_projection)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    return CLIPVisionModelWithProjection(CLIPVisionConfig(**WAN_CLIP)).eval()


def new_wan_modules(seed: int = 0, variant: str = "2.2") -> dict:
    """In-memory tiny Wan parts for a kit ``variant`` (:data:`WAN_VARIANTS`)."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel

    _check_wan_variant(variant)
    torch.manual_seed(seed)
    out = dict(vae=AutoencoderKLWan(**(WAN22_VAE if variant == "2.2-ti2v" else WAN_VAE)).eval())
    torch.manual_seed(seed + 1)
    out["transformer"] = WanTransformer3DModel(**_WAN_TCFG[variant]).eval()
    if variant == "2.2":
        torch.manual_seed(seed + 3)
        out["transformer_2"] = WanTransformer3DModel(**_WAN_TCFG[variant]).eval()
    if variant == "2.1":
        from transformers import CLIPImageProcessor, CLIPVisionModel

        full = new_wan_clip(seed + 4)
        clip = CLIPVisionModel(full.config).eval()
        getattr(clip, "vision_model", clip).load_state_dict(full.vision_model.state_dict())  # transformers 4 / 5
        out["image_encoder"] = clip
        out["image_processor"] = CLIPImageProcessor(
            size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224},
            image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711])
    out["tokenizer"] = build_t5_tokenizer()
    out["text_encoder"] = new_t5(len(out["tokenizer"]), seed=seed + 2, cls_name="UMT5EncoderModel",
                                 config=UMT5_CONFIG)
    out["scheduler"] = UniPCMultistepScheduler(**WAN_SCHEDULER)
    return out


def _wan_spec(seed, variant):
    return dict(vae=WAN22_VAE if variant == "2.2-ti2v" else WAN_VAE, transformer=_WAN_TCFG[variant],
                clip=WAN_CLIP if variant == "2.1" else None, t5=UMT5_CONFIG, sched=WAN_SCHEDULER,
                index=_wan_index(variant), seed=seed)


def tiny_wan_dir(seed: int = 0, variant: str = "2.2") -> Path:
    """Diffusers folder loadable by ``WanImageToVideoPipeline.from_pretrained`` (``WanPipeline`` for T2V).

    variant "2.2" (default, the Wan2.2 I2V-A14B layout): transformer/ (high-noise expert), transformer_2/
    (low-noise expert), vae/, text_encoder/ (UMT5EncoderModel), tokenizer/ (T5TokenizerFast, local vocab),
    scheduler/ (UniPC, flow shift 5), model_index.json with boundary_ratio 0.9 and no image encoder.
    variant "2.1": one transformer with image_dim/added_kv_proj_dim + image_encoder/ (CLIPVisionModel) and
    image_processor/. "2.1-t2v": one 16-channel transformer (WanPipeline). "2.2-ti2v": one 48-channel transformer,
    the Wan2.2 VAE, expand_timesteps true.

    Shapes: frames F = 4k+1 (81 in the release; 5 or 9 here). VAE 2.1: pixels multiples of 16 (VAE 8x, patch 2),
    32 px, 5 frames -> latents [B, 16, f=2, 4, 4] (diffusers order), 2 x 2 x 2 = 8 tokens. VAE 2.2: multiples of
    32 (16x, patch 2), 64 px, 5 frames -> [B, 48, 2, 4, 4]. The I2V transformers take 36 channels: 16 noisy +
    4 mask + 16 image latent.

    Native (ComfyUI) keys: see :func:`tiny_wan_comfy_files` and interplay.models.backbones.wan_convert. ComfyUI's
    own detection (comfy/model_detection.py) assumes head_dim 128 (num_heads = dim // 128) and a 1280-wide CLIP,
    which a tiny model breaks; the pack's loader reads both from the shapes.
    """
    _check_wan_variant(variant)

    def build(tmp: Path):
        m = new_wan_modules(seed, variant)
        for name, mod in m.items():
            mod.save_pretrained(tmp / name)
        (tmp / "model_index.json").write_text(json.dumps(_wan_index(variant), indent=2))

    return cached("wan" + variant.replace(".", "").replace("-", "_"), _wan_spec(seed, variant), build)


WAN_FILES = dict(transformer="diffusion_models/tiny_wan22_i2v_high_noise_diffusers.safetensors",
                 transformer_2="diffusion_models/tiny_wan22_i2v_low_noise_diffusers.safetensors",
                 vae="vae/tiny_wan_vae.safetensors", text_encoder="text_encoders/tiny_umt5.safetensors",
                 tokenizer="text_encoders/tiny_umt5_tokenizer")
"""Diffusers-layout single files of the "2.2" model (what diffusers' save_pretrained names)."""


def tiny_wan_files(seed: int = 0) -> dict:
    """The Wan2.2 experts, VAE and umT5 of :func:`tiny_wan_dir` as single files with diffusers key names
    (:data:`WAN_FILES`). Returns ``dict(transformer=, transformer_2=, vae=, text_encoder=, tokenizer=, root=)``."""
    src = tiny_wan_dir(seed, "2.2")

    def build(tmp: Path):
        from diffusers import AutoencoderKLWan, WanTransformer3DModel
        from transformers import T5TokenizerFast, UMT5EncoderModel

        for k in ("transformer", "transformer_2"):
            tr = WanTransformer3DModel.from_pretrained(src / k)  # its diffusers config as the file's metadata
            save_single_file(tr, tmp / WAN_FILES[k], metadata={"config": json.dumps({k2: v for k2, v in tr.config.items()
                                                                                    if not k2.startswith("_")})})
        save_single_file(AutoencoderKLWan.from_pretrained(src / "vae"), tmp / WAN_FILES["vae"])
        save_single_file(UMT5EncoderModel.from_pretrained(src / "text_encoder"), tmp / WAN_FILES["text_encoder"])
        T5TokenizerFast.from_pretrained(src / "tokenizer").save_pretrained(tmp / WAN_FILES["tokenizer"])

    root = cached("wan_files", dict(src=src.name, files=WAN_FILES), build)
    return {k: root / v for k, v in WAN_FILES.items()} | {"root": root}


# ComfyUI-native single files, named like the Comfy-Org repackaged releases (models root relative)
WAN_COMFY_FILES = {
    "2.2": dict(transformer="diffusion_models/tiny_wan2.2_i2v_high_noise_14B.safetensors",
                transformer_2="diffusion_models/tiny_wan2.2_i2v_low_noise_14B.safetensors",
                vae="vae/tiny_wan_2.1_vae.safetensors"),
    "2.1": dict(transformer="diffusion_models/tiny_wan2.1_i2v_480p_14B.safetensors",
                vae="vae/tiny_wan_2.1_vae.safetensors", clip_vision="clip_vision/tiny_clip_vision_h.safetensors"),
    "2.1-t2v": dict(transformer="diffusion_models/tiny_wan2.1_t2v_1.3B.safetensors",
                    vae="vae/tiny_wan_2.1_vae.safetensors"),
    "2.2-ti2v": dict(transformer="diffusion_models/tiny_wan2.2_ti2v_5B.safetensors",
                     vae="vae/tiny_wan2.2_vae.safetensors"),
}
WAN_COMFY_TEXT_ENCODER = "text_encoders/tiny_umt5_xxl.safetensors"
WAN_COMFY_TEXT_ENCODER_FP8 = "text_encoders/tiny_umt5_xxl_fp8_e4m3fn_scaled.safetensors"


def fp8_path(rel: str, scaled: bool = False) -> str:
    """The fp8 copy's name of a kit file: ``<stem>_fp8_e4m3fn[_scaled].safetensors`` (Comfy-Org's suffixes)."""
    stem = rel[: -len(".safetensors")]
    return stem + ("_fp8_e4m3fn_scaled" if scaled else "_fp8_e4m3fn") + ".safetensors"


def spiece_model_proto(vocab) -> bytes:
    """A SentencePiece Unigram ModelProto (serialised protobuf) over ``vocab`` [(piece, score)], pad 0, eos 1,
    unk 2, no bos, identity normaliser: the same tokenizer as ``T5TokenizerFast(vocab=vocab)``. ComfyUI umT5 files
    carry the real model as a ``spiece_model`` byte tensor; this writes a tiny one without the protobuf package."""
    import struct

    def varint(n):
        n &= (1 << 64) - 1
        out = bytearray()
        while True:
            b, n = n & 0x7F, n >> 7
            out.append(b | (0x80 if n else 0))
            if not n:
                return bytes(out)

    def ld(num, data):  # length-delimited field
        return varint(num << 3 | 2) + varint(len(data)) + data

    def vi(num, n):
        return varint(num << 3) + varint(n)

    def f32(num, x):
        return varint(num << 3 | 5) + struct.pack("<f", x)

    kinds = {0: 3, 1: 3, 2: 2}  # SentencePiece.Type: NORMAL 1, UNKNOWN 2, CONTROL 3
    pieces = b"".join(ld(1, ld(1, p.encode()) + f32(2, s) + vi(3, kinds.get(i, 1))) for i, (p, s) in enumerate(vocab))
    trainer = vi(3, 1) + vi(4, len(vocab)) + vi(40, 2) + vi(41, -1) + vi(42, 1) + vi(43, 0)  # unigram, ids
    normalizer = ld(1, b"identity") + vi(3, 1) + vi(4, 1) + vi(5, 1)  # dummy prefix, trim spaces, escape spaces
    return pieces + ld(2, trainer) + ld(3, normalizer)


def _fp8_state_dict(sd: dict, scaled: bool) -> dict:
    """ComfyUI-style fp8 copy: the 2-D Linear weights of the blocks (and the umT5 layers) in float8_e4m3fn, the rest
    as is. ``scaled``: per-tensor ``<layer>.scale_weight`` (max|w| / 448, float32) and the ``scaled_fp8`` marker."""
    out = {}
    for k, v in sd.items():
        big = v.ndim == 2 and k.endswith(".weight") and (k.startswith("blocks.") or k.startswith("encoder.block."))
        if not big or "relative_attention_bias" in k:
            out[k] = v
            continue
        if scaled:
            s = (v.abs().max().float() / 448.0).clamp(min=1e-12)
            out[k] = (v.float() / s).to(torch.float8_e4m3fn)
            out[k[: -len("weight")] + "scale_weight"] = s.reshape(())
        else:
            out[k] = v.to(torch.float8_e4m3fn)
    if scaled:
        out["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    return out


def _save_sd(sd: dict, path: Path, metadata: dict | None = None) -> Path:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().clone() for k, v in sd.items()}, str(path),
              metadata={"format": "pt", **(metadata or {})})
    return path


def tiny_wan_comfy_files(seed: int = 0, variant: str = "2.2") -> dict:
    """The weights of :func:`tiny_wan_dir` as the single files a ComfyUI user keeps (ComfyUI-native key names).

    Returns paths ``dict(transformer=, [transformer_2=,] vae=, text_encoder=, text_encoder_fp8=, [clip_vision=,]
    transformer_fp8=, [transformer_2_fp8=,] [transformer_fp8_scaled=,] root=)`` inside one models root laid out
    as :data:`WAN_COMFY_FILES`.

    - transformers: native names (``patch_embedding.weight`` [32, 36, 1, 2, 2], ``blocks.<i>.self_attn.q.weight``,
      ``blocks.<i>.cross_attn.k_img.weight`` (2.1 I2V), ``head.head.weight``, ``head.modulation`` [1, 2, 32],
      ``img_emb.proj.{0,1,3,4}.*`` (2.1 I2V)), float32; plus an ``_fp8_e4m3fn`` copy (block Linear weights fp8),
      and for "2.1" an ``_fp8_e4m3fn_scaled`` copy (``scale_weight`` per Linear + ``scaled_fp8`` marker).
    - VAE: original names (``encoder.conv1.weight``, ``decoder.middle.0.residual.0.gamma``, ``conv1``/``conv2``;
      2.2: ``decoder.upsamples.0.upsamples.0.residual.2.weight``).
    - text encoder: HF UMT5 names (``shared.weight``, ``encoder.block.<i>.layer.0.SelfAttention.q.weight``; no
      tied ``encoder.embed_tokens.weight``) + ``spiece_model`` (uint8 SentencePiece model, the tokenizer); an fp8
      scaled copy beside it.
    - CLIP vision ("2.1"): HF ``CLIPVisionModelWithProjection`` names (``vision_model.*``, ``visual_projection``).
    """
    from interplay.models.backbones import wan_convert

    _check_wan_variant(variant)
    src = tiny_wan_dir(seed, variant)
    files = dict(WAN_COMFY_FILES[variant], text_encoder=WAN_COMFY_TEXT_ENCODER,
                 text_encoder_fp8=WAN_COMFY_TEXT_ENCODER_FP8)
    experts = ["transformer", "transformer_2"] if variant == "2.2" else ["transformer"]
    for k in experts:
        files[k + "_fp8"] = fp8_path(files[k])
    if variant == "2.1":
        files["transformer_fp8_scaled"] = fp8_path(files["transformer"], scaled=True)

    def build(tmp: Path):
        from diffusers import AutoencoderKLWan, WanTransformer3DModel
        from transformers import UMT5EncoderModel

        for k in experts:
            tr = WanTransformer3DModel.from_pretrained(src / k)
            native = {wan_convert.transformer_key_to_native(n): v for n, v in tr.state_dict().items()}
            # released files carry no config (their head width is 128); the tiny one's 16 is recorded as the pack
            # records it in files it saves
            meta = {"config": json.dumps({"attention_head_dim": tr.config.attention_head_dim})}
            _save_sd(native, tmp / files[k], meta)
            _save_sd(_fp8_state_dict(native, scaled=False), tmp / files[k + "_fp8"], meta)
            if k + "_fp8_scaled" in files:
                _save_sd(_fp8_state_dict(native, scaled=True), tmp / files[k + "_fp8_scaled"], meta)
        vsd = AutoencoderKLWan.from_pretrained(src / "vae").state_dict()
        names = wan_convert.vae_keys_to_native(vsd)
        _save_sd({names[n]: v for n, v in vsd.items()}, tmp / files["vae"])
        te = UMT5EncoderModel.from_pretrained(src / "text_encoder").state_dict()
        te = {k: v for k, v in te.items() if k != "encoder.embed_tokens.weight"}  # tied to shared.weight
        from interplay.models.tokenizer import demo_vocab

        spm = torch.frombuffer(bytearray(spiece_model_proto(demo_vocab())), dtype=torch.uint8)
        _save_sd(te | {"spiece_model": spm}, tmp / files["text_encoder"])
        _save_sd(_fp8_state_dict(te, scaled=True) | {"spiece_model": spm}, tmp / files["text_encoder_fp8"])
        if variant == "2.1":
            clip = new_wan_clip(seed + 4)
            save_single_file(clip, tmp / files["clip_vision"])

    spec = dict(src=src.name, files=files, convert=_source_digest("interplay.models.backbones.wan_convert"))
    root = cached("wan_comfy_" + variant.replace(".", "").replace("-", "_"), spec, build)
    return {k: root / v for k, v in files.items()} | {"root": root}


# ============================================================================================ models root
ROOT_DIFFUSERS = ("tiny_cogvideox", "tiny_svd", "tiny_wan", "tiny_wan21", "tiny_wan21_t2v", "tiny_wan22_ti2v")
MODEL_KINDS = ("diffusion_models", "vae", "text_encoders", "clip_vision", "checkpoints", "controlnet", "loras",
               "diffusers", "sam2", "interplay")
SVD_CHECKPOINT = "checkpoints/tiny_svd.safetensors"


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dst, copy_function=_link_file, ignore=shutil.ignore_patterns(COMPLETE))
    else:
        _link_file(src, dst)


def _link_file(src, dst):
    try:
        os.link(src, dst)  # same filesystem: free
    except OSError:
        shutil.copy2(src, dst)


def _source_digest(module_name: str) -> str:
    import importlib.util

    spec = importlib.util.find_spec(module_name)
    return hashlib.sha1(Path(spec.origin).read_bytes()).hexdigest()[:10] if spec and spec.origin else "absent"


def tiny_models_root(seed: int = 0) -> Path:
    """A complete ComfyUI-style models root with every tiny model (cached; treat as read-only).

    Layout::

        diffusers/tiny_cogvideox/  diffusers/tiny_svd/  diffusers/tiny_wan/ (2.2 A14B)  diffusers/tiny_wan21/
        diffusers/tiny_wan21_t2v/  diffusers/tiny_wan22_ti2v/
        diffusion_models/tiny_cogvideox_transformer.safetensors
        diffusion_models/tiny_wan22_i2v_{high,low}_noise_diffusers.safetensors   (diffusers key names)
        diffusion_models/tiny_wan2.2_i2v_{high,low}_noise_14B[_fp8_e4m3fn].safetensors   (ComfyUI-native, and so on:
            tiny_wan2.1_i2v_480p_14B[_fp8_e4m3fn|_fp8_e4m3fn_scaled], tiny_wan2.1_t2v_1.3B, tiny_wan2.2_ti2v_5B)
        vae/tiny_cogvideox_vae.safetensors  vae/tiny_wan_vae.safetensors (diffusers names)
        vae/tiny_wan_2.1_vae.safetensors  vae/tiny_wan2.2_vae.safetensors   (ComfyUI-native)
        text_encoders/tiny_t5.safetensors + tiny_t5_tokenizer/  text_encoders/tiny_umt5.safetensors + tiny_umt5_tokenizer/
        text_encoders/tiny_umt5_xxl[_fp8_e4m3fn_scaled].safetensors   (ComfyUI: spiece_model inside)
        clip_vision/tiny_svd_clip_vision.safetensors  clip_vision/tiny_clip_vision_h.safetensors
        checkpoints/tiny_svd.safetensors   (original SGM layout, written by the pack's svd_convert.save_single_file)
        sam2/sam2.1_hiera_tiny_test.yaml + sam2/sam2.1_hiera_tiny_test.safetensors
        controlnet/ loras/ interplay/      (empty)

    Tests that write into a models root use :func:`models_root` (a private copy made of links).
    """
    parts = dict(cog=tiny_cogvideox_dir(seed), svd=tiny_svd_dir(seed), wan=tiny_wan_dir(seed, "2.2"),
                 wan21=tiny_wan_dir(seed, "2.1"), wan21_t2v=tiny_wan_dir(seed, "2.1-t2v"),
                 wan22_ti2v=tiny_wan_dir(seed, "2.2-ti2v"))
    files = [tiny_cogvideox_files(seed)["root"], tiny_svd_files(seed)["root"], tiny_wan_files(seed)["root"]]
    files += [tiny_wan_comfy_files(seed, v)["root"] for v in WAN_VARIANTS]
    try:
        sam = tiny_sam2(seed)[0].parent.parent
    except ImportError:  # sam2 is optional
        sam = None
    if sam is not None:
        files.append(sam)

    def build(tmp: Path):
        for kind in MODEL_KINDS:
            (tmp / kind).mkdir(parents=True, exist_ok=True)
        for name, key in zip(ROOT_DIFFUSERS, ("cog", "svd", "wan", "wan21", "wan21_t2v", "wan22_ti2v")):
            _link_or_copy(parts[key], tmp / "diffusers" / name)
        for froot in files:
            for kind_dir in froot.iterdir():
                if kind_dir.is_dir():
                    for entry in kind_dir.iterdir():
                        if not (tmp / kind_dir.name / entry.name).exists():  # Wan variants share VAE and umT5
                            _link_or_copy(entry, tmp / kind_dir.name / entry.name)
        from interplay.models.backbones import svd, svd_convert

        bb = svd.load_svd(str(parts["svd"]), dtype=torch.float32, device="cpu")
        svd_convert.save_single_file(bb, tmp / SVD_CHECKPOINT)

    spec = dict(parts={k: v.name for k, v in parts.items()}, files=[f.name for f in files],
                svd_convert=_source_digest("interplay.models.backbones.svd_convert"))
    return cached("models_root", spec, build)


def models_root(dest: Path, seed: int = 0) -> Path:
    """Lay out a private, writable models root at ``dest``: real kind folders whose entries are hard links to
    :func:`tiny_models_root` (so files a test adds never reach the shared cache; not symlinks, which the path rule
    refuses when they lead out of the folder). Returns ``dest``."""
    src = tiny_models_root(seed)
    dest = Path(dest)
    for kind in src.iterdir():
        if not kind.is_dir():
            continue
        (dest / kind.name).mkdir(parents=True, exist_ok=True)
        for entry in kind.iterdir():
            target = dest / kind.name / entry.name
            if not target.exists():
                _link_or_copy(entry, target)
    return dest


# ================================================================================================== PAM
PAM_BLOCKS = 2
PAM_CLASS = "CogVideoXTransformer3DModelTracking"


def new_pam_released_state(seed: int = 0, num_blocks: int = PAM_BLOCKS) -> tuple[dict, dict]:
    """(state dict, config) of a tiny released PAM transformer: the tiny CogVideoX transformer (the weights of
    :func:`tiny_cogvideox_dir` for the same seed) plus a trained-looking branch under the release's names:
    ``transformer_blocks_copy.<i>`` = main block i + noise, ``combine_linears.<i>`` [D, D] and
    ``initial_combine_linear`` [D, 5D] random (non-zero, so the block order shows in the output)."""
    tr = new_cogvideox_modules(seed)["transformer"]
    sd = {k: v.detach().clone() for k, v in tr.state_dict().items()}
    inner = COGVIDEOX_TRANSFORMER["num_attention_heads"] * COGVIDEOX_TRANSFORMER["attention_head_dim"]
    g = torch.Generator().manual_seed(seed + 11)
    for i in range(num_blocks):
        for k, v in tr.transformer_blocks[i].state_dict().items():
            sd[f"transformer_blocks_copy.{i}.{k}"] = v + 0.05 * torch.randn(v.shape, generator=g)
        sd[f"combine_linears.{i}.weight"] = 0.2 * torch.randn(inner, inner, generator=g)
        sd[f"combine_linears.{i}.bias"] = 0.05 * torch.randn(inner, generator=g)
    sd["initial_combine_linear.weight"] = 0.1 * torch.randn(inner, 5 * inner, generator=g)
    sd["initial_combine_linear.bias"] = 0.05 * torch.randn(inner, generator=g)
    return sd, dict(tr.config)


def save_tiny_matrix_file(cog, path) -> Path:
    """A "trained" MATRIX file for a tiny CogVideoX (v2t layer 0, v2v layer 1: the tiny model has two blocks): its
    ID-map kernels and LoRA non-zero, so the ID map reaches the video. Seeded (global 0, draws 1)."""
    import torch

    from interplay.models.training.matrix import MatrixTask

    torch.manual_seed(0)
    task = MatrixTask(cog, preset="paper", v2t_layers=(0,), v2v_layers=(1,), lora_rank=4)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        task.proj.weight[:, 8:].normal_(0, 0.5, generator=g)
        for n, p in task.lora.denoiser.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2, generator=g)
    task.save_weights(Path(path), task.trainable_state_dict())
    return Path(path)


def tiny_pam_released_dir(seed: int = 0, num_blocks: int = PAM_BLOCKS) -> Path:
    """A tiny PAM checkpoint in the released layout: a WHOLE CogVideoX transformer folder as the release's
    ``save_pretrained`` writes it (diffusers' own sharded writer: ``diffusion_pytorch_model-0000k-of-0000n
    .safetensors`` + ``diffusion_pytorch_model.safetensors.index.json``) with the branch keys among the main ones,
    and a config.json with ``_class_name: CogVideoXTransformer3DModelTracking`` and WITHOUT ``num_tracking_blocks``
    (the block count must be read from the keys). Main weights = :func:`tiny_cogvideox_dir`'s transformer."""

    def build(tmp: Path):
        from diffusers import CogVideoXTransformer3DModel
        from diffusers.models.transformers.cogvideox_transformer_3d import CogVideoXBlock

        sd, _ = new_pam_released_state(seed, num_blocks)
        tr = CogVideoXTransformer3DModel(**COGVIDEOX_TRANSFORMER)
        # the branch modules as the released class has them, so diffusers' writer saves every key
        inner = tr.config.num_attention_heads * tr.config.attention_head_dim
        tr.transformer_blocks_copy = torch.nn.ModuleList([
            CogVideoXBlock(dim=inner, num_attention_heads=tr.config.num_attention_heads,
                           attention_head_dim=tr.config.attention_head_dim, time_embed_dim=tr.config.time_embed_dim,
                           attention_bias=tr.config.attention_bias) for _ in range(num_blocks)])
        tr.combine_linears = torch.nn.ModuleList([torch.nn.Linear(inner, inner) for _ in range(num_blocks)])
        tr.initial_combine_linear = torch.nn.Linear(5 * inner, inner)
        tr.load_state_dict(sd, strict=True)
        tr.save_pretrained(tmp, safe_serialization=True, max_shard_size="100KB")
        conf = json.loads((tmp / "config.json").read_text())
        conf["_class_name"] = PAM_CLASS  # what the release's save_pretrained writes over diffusers' config
        conf.pop("num_tracking_blocks", None)
        (tmp / "config.json").write_text(json.dumps(conf, indent=2))

    spec = dict(transformer=COGVIDEOX_TRANSFORMER, seed=seed, num_blocks=num_blocks, cls=PAM_CLASS, shard="100KB")
    return cached("pam_released", spec, build)
