"""Wan files: the release facts, what a file is (:func:`identify`), configs read from header shapes, and building
each model on the meta device, checked key by key and shape by shape against its safetensors header before any
weight is read (:func:`plan_single_files`, :func:`plan_folder`, :func:`load_parts`). Used by :func:`.wan.load_wan`.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import runtime
from .wan_memory import WeightStats, fp8_selectable

NODE = "Wan loader"


# ------------------------------------------------------------------------------------- release facts
WAN21_LATENTS_MEAN = [-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134, -0.0715,
                      0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921]
WAN21_LATENTS_STD = [2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526, 2.8652,
                     1.5579, 1.6382, 1.1253, 2.8251, 1.9160]
WAN22_LATENTS_MEAN = [-0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557, -0.1382, 0.0542,
                      0.2813, 0.0891, 0.1570, -0.0098, 0.0375, -0.1825, -0.2246, -0.1207, -0.0698, 0.5109, 0.2665,
                      -0.2108, -0.2158, 0.2502, -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230,
                      -0.0313, -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.0520, 0.3748, 0.0152, 0.1957, 0.1433,
                      -0.2944, 0.3573, -0.0548, -0.1681, -0.0667]
WAN22_LATENTS_STD = [0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013, 0.8158, 1.0344, 0.5894, 1.0901,
                     0.6885, 0.6165, 0.8454, 0.4978, 0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
                     0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093, 0.5709, 0.6065, 0.6415, 0.4944,
                     0.5726, 1.2042, 0.5458, 1.6887, 0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744]
"""Per-channel latent statistics of the Wan2.1 VAE (16) and the Wan2.2 VAE (48), as the releases' configs."""

HEAD_DIM = 128  # every released Wan transformer: num_heads = inner_dim / 128
TEXT_LENGTH = 512  # umT5 tokens; Wan2.1 I2V's cross-attention splits image tokens off at len - 512

_T_COMMON = dict(patch_size=(1, 2, 2), attention_head_dim=HEAD_DIM, text_dim=4096, freq_dim=256,
                 cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=None,
                 added_kv_proj_dim=None, rope_max_seq_len=1024, pos_embed_seq_len=None)
RELEASE_TRANSFORMERS = {
    "wan2.1-t2v-1.3b": dict(_T_COMMON, num_attention_heads=12, in_channels=16, out_channels=16, ffn_dim=8960,
                            num_layers=30),
    "wan2.1-t2v-14b": dict(_T_COMMON, num_attention_heads=40, in_channels=16, out_channels=16, ffn_dim=13824,
                           num_layers=40),
    "wan2.1-i2v-14b": dict(_T_COMMON, num_attention_heads=40, in_channels=36, out_channels=16, ffn_dim=13824,
                           num_layers=40, image_dim=1280, added_kv_proj_dim=5120),
    "wan2.2-i2v-a14b": dict(_T_COMMON, num_attention_heads=40, in_channels=36, out_channels=16, ffn_dim=13824,
                            num_layers=40),
    "wan2.2-t2v-a14b": dict(_T_COMMON, num_attention_heads=40, in_channels=16, out_channels=16, ffn_dim=13824,
                            num_layers=40),
    "wan2.2-ti2v-5b": dict(_T_COMMON, num_attention_heads=24, in_channels=48, out_channels=48, ffn_dim=14336,
                           num_layers=30),
}
"""diffusers ``WanTransformer3DModel`` configs of the Wan-AI releases (per expert for A14B)."""

VAE21 = dict(base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
             temperal_downsample=[False, True, True], dropout=0.0, latents_mean=WAN21_LATENTS_MEAN,
             latents_std=WAN21_LATENTS_STD, scale_factor_temporal=4, scale_factor_spatial=8)
VAE22 = dict(base_dim=160, decoder_base_dim=256, z_dim=48, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
             temperal_downsample=[False, True, True], dropout=0.0, is_residual=True, in_channels=12,
             out_channels=12, patch_size=2, latents_mean=WAN22_LATENTS_MEAN, latents_std=WAN22_LATENTS_STD,
             scale_factor_temporal=4, scale_factor_spatial=16)
UMT5_XXL = dict(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
                layer_norm_epsilon=1e-6, is_encoder_decoder=False, use_cache=False, tie_word_embeddings=False)
CLIP_VISION_H = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                     image_size=224, patch_size=14, projection_dim=1024, hidden_act="gelu", layer_norm_eps=1e-5)
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
UNIPC_DEFAULTS = dict(num_train_timesteps=1000, prediction_type="flow_prediction", use_flow_sigmas=True,
                      solver_order=2, solver_type="bh2", lower_order_final=True, final_sigmas_type="zero",
                      timestep_spacing="linspace")


@dataclass(frozen=True)
class WanKind:
    """What a Wan model does and the release's sampling defaults (Wan-Video configs / generate.py)."""

    name: str
    version: str
    i2v: bool = False  # 36-channel input: noisy latent ++ 4 mask channels ++ image latent
    ti2v: bool = False  # image latent replaces latent frame 0 (its tokens at t = 0)
    clip: bool = False
    experts: int = 1
    boundary: float | None = None
    flow_shift: float = 5.0
    guidance: tuple = (5.0,)  # (high-noise, low-noise) for two experts
    steps: int = 50
    frames: int = 81
    height: int = 480
    width: int = 832
    fps: int = 16
    vae: str = "2.1"


KINDS = {
    "wan2.1-t2v": WanKind("wan2.1-t2v", "2.1", steps=50),
    # generate.py: shift 3.0 for 480p I2V, 5.0 otherwise (see default_shift)
    "wan2.1-i2v": WanKind("wan2.1-i2v", "2.1", i2v=True, clip=True, steps=40),
    "wan2.2-i2v-a14b": WanKind("wan2.2-i2v-a14b", "2.2", i2v=True, experts=2, boundary=0.9, flow_shift=5.0,
                               guidance=(3.5, 3.5), steps=40),
    "wan2.2-t2v-a14b": WanKind("wan2.2-t2v-a14b", "2.2", experts=2, boundary=0.875, flow_shift=12.0,
                               guidance=(4.0, 3.0), steps=40),
    "wan2.2-ti2v": WanKind("wan2.2-ti2v", "2.2", ti2v=True, flow_shift=5.0, guidance=(5.0,), steps=50, frames=121,
                           height=704, width=1280, fps=24, vae="2.2"),
}
EXPERT_NAMES = ("high_noise", "low_noise")


def release_size(kind: str, resolution: str | None = None) -> tuple[int, int]:
    """(height, width) the release samples at: 720p (720 x 1280) for a Wan2.1 I2V 720p file, else the kind's."""
    if kind == "wan2.1-i2v" and resolution == "720p":
        return 720, 1280
    return KINDS[kind].height, KINDS[kind].width


def default_shift(kind: str, height: int | None = None, width: int | None = None) -> float:
    """The release's flow shift: Wan2.1 I2V uses 3.0 at 480p (832x480 either way) and 5.0 above, as Wan2.1's
    generate.py; every other kind its config's ``sample_shift`` (Wan2.2 I2V-A14B 5.0 at every size)."""
    k = KINDS[kind]
    if kind == "wan2.1-i2v":
        return 3.0 if (height, width) in ((480, 832), (832, 480)) or height is None else 5.0
    return k.flow_shift


# ------------------------------------------------------------------------------------ identification
LOOKS_LIKE = {
    "wan_transformer": "a Wan transformer (ComfyUI/original key names)",
    "wan_transformer_diffusers": "a Wan transformer (diffusers key names)",
    "wan_vace": "a Wan2.1 VACE transformer (not supported)",
    "wan_camera": "a Wan Fun-Camera transformer (not supported)",
    "wan_s2v": "a Wan2.2 S2V (speech-to-video) transformer (not supported)",
    "wan_humo": "a HuMo (Wan) transformer (not supported)",
    "wan_animate": "a Wan2.2 Animate transformer (not supported)",
    "wan_vae21": "the Wan2.1 VAE (wan_2.1_vae, 16 channels)",
    "wan_vae22": "the Wan2.2 VAE (wan2.2_vae, 48 channels)",
    "wan_vae_diffusers": "a Wan VAE (diffusers key names)",
    "umt5": "a umT5 text encoder",
    "t5": "a T5 text encoder (not umT5: CogVideoX/Flux/SD3 use this one)",
    "clip_vision": "a CLIP vision encoder",
    "clip_vision_openclip": "a CLIP vision encoder in open_clip layout (convert it to Hugging Face names)",
    "clip_text": "a CLIP text encoder",
    "cogvideox_transformer": "a CogVideoX transformer",
    "cogvideox_vae": "a CogVideoX VAE",
    "svd_checkpoint": "a Stable Video Diffusion checkpoint (SGM layout)",
    "svd_unet": "a Stable Video Diffusion UNet (diffusers names)",
    "sd_unet": "a Stable Diffusion UNet",
    "sd_vae": "a Stable Diffusion / SVD image VAE",
}
_NATIVE_PREFIXES = ("model.diffusion_model.", "diffusion_model.")


def _strip_prefix(keys, prefixes=_NATIVE_PREFIXES) -> tuple[str, list[str]]:
    keys = list(keys)
    for p in prefixes:
        if keys and all(k.startswith(p) for k in keys):
            return p, [k[len(p):] for k in keys]
    return "", keys


def identify(keys) -> list[str]:
    """What a state dict looks like: the :data:`LOOKS_LIKE` names of every model recognised in its keys (empty
    when nothing is known; two or more when a file mixes models)."""
    ks = set(keys)
    out = []

    def has(*names):
        return all(n in ks for n in names)

    def any_prefix(p):
        return any(k.startswith(p) for k in ks)

    sgm = {k[len("model.diffusion_model."):] for k in ks if k.startswith("model.diffusion_model.")}
    t = sgm or ks
    if "head.modulation" in t or "blocks.0.self_attn.q.weight" in t:
        out.append("wan_transformer")
        for key, name in (("vace_blocks.", "wan_vace"), ("control_adapter.", "wan_camera"),
                          ("casual_audio_encoder.", "wan_s2v"), ("audio_proj.", "wan_humo"),
                          ("face_adapter.", "wan_animate"), ("motion_encoder.", "wan_animate")):
            if any(k.startswith(key) for k in t):
                out[-1] = name
                break
    elif any(k.startswith("model.diffusion_model.input_blocks.") for k in ks) or any_prefix("conditioner.embedders"):
        out.append("svd_checkpoint")
    if has("condition_embedder.time_proj.weight") or has("blocks.0.attn1.to_q.weight", "scale_shift_table"):
        out.append("wan_transformer_diffusers")
    if "decoder.middle.0.residual.0.gamma" in ks:
        out.append("wan_vae22" if "decoder.upsamples.0.upsamples.0.residual.2.weight" in ks else "wan_vae21")
    if "decoder.mid_block.resnets.0.norm1.gamma" in ks:
        out.append("wan_vae_diffusers")
    if "encoder.block.0.layer.0.SelfAttention.q.weight" in ks:
        # umT5 has a relative-attention bias in every block, T5 only in block 0 (one block: cannot tell)
        t5 = "encoder.block.1.layer.0.SelfAttention.q.weight" in ks and \
            "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight" not in ks
        out.append("t5" if t5 else "umt5")
    if any_prefix("vision_model.embeddings.") or has("embeddings.patch_embedding.weight", "pre_layrnorm.weight"):
        out.append("clip_vision")
    if any_prefix("visual.transformer.resblocks.") or any_prefix("transformer.resblocks.") and "visual.proj" in ks:
        out.append("clip_vision_openclip")
    if any_prefix("text_model.embeddings."):
        out.append("clip_text")
    if has("patch_embed.proj.weight") and any_prefix("transformer_blocks."):
        out.append("cogvideox_transformer")
    if any_prefix("decoder.conv_in.conv.") or any_prefix("encoder.conv_in.conv."):
        out.append("cogvideox_vae")
    if any_prefix("down_blocks.") and any_prefix("time_embedding.") and not out:
        tr = any("temporal_transformer_blocks" in k for k in ks) or any_prefix("add_embedding.")
        out.append("svd_unet" if tr else "sd_unet")
    if "decoder.mid_block.resnets.0.norm1.weight" in ks and "wan_vae_diffusers" not in out:
        out.append("sd_vae")
    return out


_ROLE_KINDS = {
    "transformer": ("wan_transformer", "wan_transformer_diffusers"),
    "transformer_2": ("wan_transformer", "wan_transformer_diffusers"),
    "vae": ("wan_vae21", "wan_vae22", "wan_vae_diffusers"),
    "text_encoder": ("umt5",),
    "clip_vision": ("clip_vision",),
}
_ROLE_FOLDERS = {"transformer": "diffusion_models", "transformer_2": "diffusion_models", "vae": "vae",
                 "text_encoder": "text_encoders", "clip_vision": "clip_vision"}


def _looks(kinds: list[str]) -> str:
    return " + ".join(LOOKS_LIKE[k] for k in kinds)


def check_role(role: str, path, header: dict) -> str:
    """The kind of file ``path`` holds, when it fits ``role``; else a ValueError saying what it looks like."""
    from .wan_convert import split_scaled_fp8

    weights = split_scaled_fp8(header)[0]
    kinds = identify(weights)
    name = Path(path).name
    if not kinds:
        raise ValueError(f"{NODE}: {role} file {name} is not a model the pack knows (first keys: "
                         f"{sorted(weights)[:4]}). Expected {' or '.join(LOOKS_LIKE[k] for k in _ROLE_KINDS[role])}.")
    if len(kinds) > 1:
        raise ValueError(f"{NODE}: {role} file {name} mixes models: it looks like {_looks(kinds)}. Use the single "
                         f"model file for the {role} (models/{_ROLE_FOLDERS[role]}/).")
    kind = kinds[0]
    if kind not in _ROLE_KINDS[role]:
        where = next((r for r, ks in _ROLE_KINDS.items() if kind in ks), None)
        hint = (f" Put it in {where} (models/{_ROLE_FOLDERS[where]}/)." if where and where != role else
                " The Wan loader takes Wan2.1/Wan2.2 files only.")
        raise ValueError(f"{NODE}: {role} file {name} looks like {LOOKS_LIKE[kind]}, not "
                         f"{' or '.join(LOOKS_LIKE[k] for k in _ROLE_KINDS[role])}.{hint}")
    return kind


# ----------------------------------------------------------------------------------- config inference
def _count(keys, prefix) -> int:
    idx = {int(m[1]) for k in keys if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return max(idx) + 1 if idx else 0


def transformer_config(shapes: dict[str, tuple], meta_config: dict | None = None, path="transformer") -> dict:
    """``WanTransformer3DModel`` config from diffusers-named shapes {key: shape}. What shapes cannot tell (the
    head width) is the releases' 128 unless the file's ``config`` metadata says otherwise; metadata that
    contradicts the shapes is refused."""
    def need(k):
        if k not in shapes:
            raise ValueError(f"{NODE}: {path} lacks {k}; it is not a complete Wan transformer.")
        return shapes[k]

    pe = need("patch_embedding.weight")
    inner, cin, patch = pe[0], pe[1], tuple(pe[2:])
    out = need("proj_out.weight")[0] // math.prod(patch)
    cfg = dict(_T_COMMON, patch_size=patch, in_channels=cin, out_channels=out,
               text_dim=need("condition_embedder.text_embedder.linear_1.weight")[1],
               freq_dim=need("condition_embedder.time_embedder.linear_1.weight")[1],
               ffn_dim=need("blocks.0.ffn.net.0.proj.weight")[0], num_layers=_count(shapes, "blocks."),
               cross_attn_norm="blocks.0.norm2.weight" in shapes)
    if "condition_embedder.image_embedder.norm1.weight" in shapes:
        cfg["image_dim"] = shapes["condition_embedder.image_embedder.norm1.weight"][0]
        cfg["added_kv_proj_dim"] = need("blocks.0.attn2.add_k_proj.weight")[1]
    if "condition_embedder.image_embedder.pos_embed" in shapes:
        cfg["pos_embed_seq_len"] = shapes["condition_embedder.image_embedder.pos_embed"][1]
    head = HEAD_DIM
    meta_config = dict(meta_config or {})
    if "attention_head_dim" in meta_config:
        head = int(meta_config["attention_head_dim"])
    if inner % head:
        raise ValueError(f"{NODE}: {path} has width {inner}, not a multiple of the head width {head}; it is not a "
                         "released Wan size. A file saved by the pack records attention_head_dim in its metadata.")
    cfg["attention_head_dim"] = head
    cfg["num_attention_heads"] = inner // head
    for k, v in meta_config.items():
        if k in cfg and k not in ("attention_head_dim", "num_attention_heads") and not k.startswith("_"):
            vv = tuple(v) if isinstance(v, list) else v
            if vv != cfg[k] and k in ("in_channels", "out_channels", "num_layers", "ffn_dim", "text_dim",
                                      "freq_dim", "image_dim", "patch_size"):
                raise ValueError(f"{NODE}: {path}'s config metadata says {k}={v} but its weights have {cfg[k]}; the "
                                 "file was edited or mislabelled.")
        elif k in ("eps", "rope_max_seq_len", "qk_norm"):
            cfg[k] = v
    return cfg


def vae_config(shapes: dict[str, tuple], path="vae") -> dict:
    """``AutoencoderKLWan`` config from diffusers-named shapes; latent statistics of the release (16 or 48
    channels; another count is refused since its statistics are unknown)."""
    try:
        base = shapes["encoder.conv_in.weight"][0]
        cin = shapes["encoder.conv_in.weight"][1]
        z = shapes["post_quant_conv.weight"][0]
        dec_out = shapes["decoder.norm_out.gamma"][0]
    except KeyError as ex:
        raise ValueError(f"{NODE}: {path} lacks {ex}; it is not a complete Wan VAE.") from None
    residual = any(".downsampler." in k for k in shapes) or any(re.match(r"encoder\.down_blocks\.\d+\.resnets\.", k)
                                                                 for k in shapes)
    if residual:
        n_levels = _count(shapes, "encoder.down_blocks.")
        outs = [shapes[f"encoder.down_blocks.{i}.resnets.0.conv1.weight"][0] for i in range(n_levels)]
        nrb = _count(shapes, "encoder.down_blocks.0.resnets.")
        tdown = [f"encoder.down_blocks.{i}.downsampler.time_conv.weight" in shapes for i in range(n_levels - 1)]
    else:
        outs, tdown, nrb, per = [], [], 0, []
        n = _count(shapes, "encoder.down_blocks.")
        run = 0
        for i in range(n):
            if f"encoder.down_blocks.{i}.conv1.weight" in shapes:
                run += 1
                last = shapes[f"encoder.down_blocks.{i}.conv1.weight"][0]
            elif f"encoder.down_blocks.{i}.resample.1.weight" in shapes:
                outs.append(last)
                per.append(run)
                run = 0
                tdown.append(f"encoder.down_blocks.{i}.time_conv.weight" in shapes)
        outs.append(last)
        per.append(run)
        nrb = per[0]
        if len(set(per)) != 1:
            raise ValueError(f"{NODE}: {path} has uneven encoder levels {per}; not a Wan VAE.")
    mult = [o // base for o in outs]
    if z not in (16, 48):
        raise ValueError(f"{NODE}: {path} has {z} latent channels; Wan VAEs have 16 (2.1) or 48 (2.2).")
    release = VAE22 if z == 48 else VAE21
    cfg = dict(release, base_dim=base, z_dim=z, dim_mult=mult, num_res_blocks=nrb, temperal_downsample=tdown)
    if residual:
        cfg.update(is_residual=True, in_channels=cin, out_channels=shapes["decoder.conv_out.weight"][0],
                   patch_size=int(round(math.sqrt(cin // 3))) if cin > 3 else None,
                   decoder_base_dim=dec_out // mult[0])
    else:
        for k in ("is_residual", "patch_size", "decoder_base_dim"):
            cfg.pop(k, None)
        cfg.update(in_channels=cin, out_channels=shapes["decoder.conv_out.weight"][0])
    return cfg


def umt5_config(shapes: dict[str, tuple], path="text_encoder") -> dict:
    """``UMT5Config`` kwargs from HF-named shapes (umT5-XXL values for what shapes do not hold)."""
    try:
        vocab, d = shapes["shared.weight"]
        rel = shapes["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
        q = shapes["encoder.block.0.layer.0.SelfAttention.q.weight"]
    except KeyError as ex:
        raise ValueError(f"{NODE}: {path} lacks {ex}; it is not a complete umT5 encoder.") from None
    gated = "encoder.block.0.layer.1.DenseReluDense.wi_0.weight" in shapes
    wi = shapes["encoder.block.0.layer.1.DenseReluDense.wi_0.weight" if gated else
                "encoder.block.0.layer.1.DenseReluDense.wi.weight"]
    buckets, heads = rel
    return dict(UMT5_XXL, vocab_size=vocab, d_model=d, d_kv=q[0] // heads, d_ff=wi[0], num_heads=heads,
                num_layers=_count(shapes, "encoder.block."), relative_attention_num_buckets=buckets,
                # not in the weights: umT5 uses 128 for 32 buckets; small test models 2x buckets
                relative_attention_max_distance=128 if buckets == 32 else 2 * buckets,
                feed_forward_proj="gated-gelu" if gated else "relu", pad_token_id=0, eos_token_id=1,
                decoder_start_token_id=0)


def clip_vision_config(shapes: dict[str, tuple], path="clip_vision") -> dict:
    """``CLIPVisionConfig`` kwargs from ``vision_model.*`` shapes (ViT-H/14 values for what shapes do not hold;
    16 heads for the released widths 1024..1664, else width/16)."""
    p = "vision_model."
    try:
        pe = shapes[p + "embeddings.patch_embedding.weight"]
        pos = shapes[p + "embeddings.position_embedding.weight"]
        fc1 = shapes[p + "encoder.layers.0.mlp.fc1.weight"]
    except KeyError as ex:
        raise ValueError(f"{NODE}: {path} lacks {ex}; it is not a complete CLIP vision encoder.") from None
    hidden, patch = pe[0], pe[2]
    grid = int(round(math.sqrt(pos[0] - 1)))
    heads = {768: 12}.get(hidden, 16 if hidden >= 1024 else max(1, hidden // 16))
    proj = shapes.get("visual_projection.weight", (hidden, hidden))[0]
    return dict(CLIP_VISION_H, hidden_size=hidden, intermediate_size=fc1[0], num_attention_heads=heads,
                num_hidden_layers=_count(shapes, p + "encoder.layers."), image_size=grid * patch, patch_size=patch,
                projection_dim=proj)


def detect_kind(tcfg: dict, n_experts: int, path="transformer") -> str:
    """The :data:`KINDS` name of a transformer config (+ how many experts were given)."""
    cin, cout = tcfg["in_channels"], tcfg["out_channels"]
    if tcfg.get("pos_embed_seq_len"):
        raise ValueError(f"{NODE}: {path} looks like Wan2.1 FLF2V (first-last-frame, img_emb.emb_pos): not "
                         "supported yet. Use Wan2.1 I2V or Wan2.2 I2V-A14B.")
    if cin == 2 * cout + 4 and cout == 16:
        if tcfg.get("image_dim"):
            kind = "wan2.1-i2v"
        else:
            kind = "wan2.2-i2v-a14b"
    elif cin == cout == 16:
        kind = "wan2.2-t2v-a14b" if n_experts == 2 else "wan2.1-t2v"
    elif cin == cout == 48:
        kind = "wan2.2-ti2v"
    else:
        raise ValueError(f"{NODE}: {path} takes {cin} input and gives {cout} output channels: not a Wan T2V (16/16), "
                         "I2V (36/16) or TI2V-5B (48/48) model (Fun-Control 48/16 and camera 32/16 models are not "
                         "supported).")
    if n_experts == 2 and KINDS[kind].experts != 2:
        raise ValueError(f"{NODE}: two transformers given but {path} is {kind}, a one-model release; pick its "
                         "transformer only (transformer_2 is for Wan2.2 A14B's low-noise expert).")
    return kind


def variant_name(kind: str, tcfg: dict) -> str:
    """The release name when the config is the release's (e.g. "wan2.2-i2v-a14b", "wan2.1-t2v-1.3b"), else
    ``<kind>-d<width>x<layers>`` (tiny and custom models)."""
    strip = ("rope_max_seq_len", "pos_embed_seq_len", "eps", "qk_norm")
    mine = {k: (tuple(v) if isinstance(v, list) else v) for k, v in tcfg.items() if k not in strip}
    for name, rel in RELEASE_TRANSFORMERS.items():
        if name.startswith(kind) and all(mine.get(k) == (tuple(v) if isinstance(v, list) else v)
                                         for k, v in rel.items() if k not in strip):
            return name
    return f"{kind}-d{tcfg['num_attention_heads'] * tcfg['attention_head_dim']}x{tcfg['num_layers']}"


# ------------------------------------------------------------------------------------ header reading
@dataclass
class FileInfo:
    """One single file as read from its header: role, kind, {diffusers key: (dtype, shape)}, key map."""

    role: str
    path: Path
    kind: str
    header: dict  # original keys -> (dtype, shape)
    rename: dict  # original key -> diffusers/HF key (weights only)
    scales: dict  # diffusers weight key -> original scale key (scaled fp8)
    metadata: dict

    @property
    def shapes(self) -> dict:
        return {self.rename[k]: self.header[k][1] for k in self.rename}

    @property
    def dtypes(self) -> dict:
        return {self.rename[k]: self.header[k][0] for k in self.rename}

    def numel(self, pred=lambda k: True) -> int:
        return sum(math.prod(s) for k, s in self.shapes.items() if pred(k))


def read_file_info(role: str, path) -> FileInfo:
    """Header-only view of a single file for ``role`` (no tensor data read), with the key map to diffusers/HF
    names; raises the named errors of :func:`check_role` and for keys no map explains."""
    from ..weights import header_info, read_header, read_metadata
    from . import wan_convert as wc

    path = Path(path)
    if not path.is_file():
        kind = _ROLE_FOLDERS[role]
        raise FileNotFoundError(f"{NODE}: {role} file {str(path)!r} not found; searched "
                                f"{[str(p) for p in runtime.model_folders(kind)]}. Put it in models/{kind}/.")
    header = header_info(read_header(path, f"{NODE} ({role})")[0])
    meta = read_metadata(path, f"{NODE} ({role})")
    kind = check_role(role, path, header)
    weights, scales, _ignored = wc.split_scaled_fp8(header)
    prefix, stripped = _strip_prefix(weights)
    rename, unknown = {}, []
    if kind == "wan_transformer":
        for orig, k in zip(weights, stripped):
            new = wc.transformer_key_to_diffusers(k)
            (unknown.append(orig) if new is None else rename.__setitem__(orig, new))
    elif kind in ("wan_vae21", "wan_vae22"):
        m = wc.vae_keys_to_diffusers(stripped)
        for orig, k in zip(weights, stripped):
            (unknown.append(orig) if m[k] is None else rename.__setitem__(orig, m[k]))
    else:  # diffusers / HF names already
        rename = dict(zip(weights, stripped))
    if unknown:
        raise ValueError(f"{NODE}: {role} file {path.name} looks like {LOOKS_LIKE[kind]} but has {len(unknown)} keys "
                         f"no Wan model has, e.g. {unknown[:4]}: a variant the pack does not support, or a merged "
                         "file. Use a released Wan2.1/Wan2.2 file.")
    scale_map = {rename[w]: s for w, s in scales.items() if w in rename}
    return FileInfo(role, path, kind, header, rename, scale_map, meta)


@dataclass
class _Part:
    """One model to build: its config and where its weights are (a FileInfo, or a diffusers/HF folder)."""

    cfg: dict | None
    info: FileInfo | None = None
    folder: Path | None = None


@dataclass
class LoadPlan:
    """Everything known before any weight is read: configs, kind, variant, parameter counts."""

    kind: str
    variant: str
    experts: dict  # name -> _Part
    vae: _Part
    text_encoder: _Part | None
    tokenizer: object  # a folder Path, bytes (spiece model) or None
    clip: _Part | None
    image_processor: Path | None
    scheduler_config: dict
    boundary: float | None
    stats: WeightStats
    file_fp8: bool
    notes: list = field(default_factory=list)
    resolution: str | None = None


def _folder_shapes(folder: Path) -> dict:
    """{key: shape} of every safetensors file in a model folder (headers only)."""
    from ..weights import header_shapes, read_header

    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(header_shapes(read_header(f, f"{NODE} ({folder.name})")[0]))
    return out


def _folder_config(folder: Path, what: str) -> dict:
    cfg = folder / "config.json"
    if not cfg.is_file():
        raise FileNotFoundError(f"{NODE}: {folder} has no config.json; copy the whole {what} folder of the release.")
    return json.loads(cfg.read_text())


def _stats(kind, experts: dict[str, dict], expert_shapes: dict[str, dict], te_params, clip_params, vae_params,
           vcfg) -> WeightStats:
    tcfg = next(iter(experts.values()))
    bp, tot, f8 = {}, {}, {}
    for n, shapes in expert_shapes.items():
        tot[n] = sum(math.prod(s) for s in shapes.values())
        bp[n] = sum(math.prod(s) for k, s in shapes.items() if k.startswith("blocks.0."))
        f8[n] = sum(math.prod(s) for k, s in shapes.items() if fp8_selectable(k) and len(s) == 2)
    return WeightStats(expert_params=tot, block_params=bp, fp8_params=f8, num_blocks=tcfg["num_layers"],
                       text_encoder_params=te_params, clip_params=clip_params, vae_params=vae_params,
                       inner_dim=tcfg["num_attention_heads"] * tcfg["attention_head_dim"], ffn_dim=tcfg["ffn_dim"],
                       heads=tcfg["num_attention_heads"], text_dim=tcfg["text_dim"],
                       latent_channels=vcfg["z_dim"], vae_spatial=int(vcfg.get("scale_factor_spatial") or 8),
                       patch=tuple(tcfg["patch_size"]))


def _resolution_hint(*names) -> str | None:
    text = " ".join(str(n).lower() for n in names if n)
    return "720p" if "720" in text else ("480p" if "480" in text else None)


def plan_folder(path: Path) -> LoadPlan:
    """Read a diffusers Wan folder's configs and headers (no weights)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"{NODE}: {str(path)!r} is not a diffusers folder. Put the model under "
            f"{[str(p) for p in runtime.model_folders('diffusers')]} (transformer/ [+ transformer_2/], vae/, "
            "text_encoder/, tokenizer/, scheduler/) or use single files.")
    missing = [p for p in ("transformer", "vae", "text_encoder", "tokenizer") if not (path / p).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"{NODE}: diffusers folder {path} lacks {', '.join(p + '/' for p in missing)} (expected transformer/ "
            "[+ transformer_2/], vae/, text_encoder/, tokenizer/, scheduler/ as in Wan-AI/Wan2.2-I2V-A14B-Diffusers). "
            "Copy the whole release folder, or use single files.")
    index = json.loads((path / "model_index.json").read_text()) if (path / "model_index.json").is_file() else {}
    names = ["transformer"] + (["transformer_2"] if (path / "transformer_2").is_dir() else [])
    experts, shapes = {}, {}
    for role, ename in zip(names, EXPERT_NAMES):
        cfg = {k: v for k, v in _folder_config(path / role, role).items() if not k.startswith("_")}
        if cfg.get("patch_size") is not None:
            cfg["patch_size"] = tuple(cfg["patch_size"])
        experts[ename] = cfg
        shapes[ename] = _folder_shapes(path / role)
    kind = detect_kind(experts["high_noise"], len(experts), str(path / "transformer"))
    if len(experts) == 2 and experts["high_noise"] != experts["low_noise"]:
        raise ValueError(f"{NODE}: {path}'s transformer/ and transformer_2/ are different architectures; both must "
                         "be experts of one Wan2.2 A14B release.")
    vcfg = {k: v for k, v in _folder_config(path / "vae", "vae").items() if not k.startswith("_")}
    _check_vae_for_kind(kind, vcfg, str(path / "vae"))
    te_shapes = _folder_shapes(path / "text_encoder")
    clip = clip_params = None
    if KINDS[kind].clip:
        if not (path / "image_encoder").is_dir():
            raise FileNotFoundError(f"{NODE}: {path} is Wan2.1 I2V (CLIP image branch) but has no image_encoder/; "
                                    "copy the release's image_encoder/ and image_processor/.")
        clip = _Part(None, folder=path / "image_encoder")
        clip_params = sum(math.prod(s) for s in _folder_shapes(path / "image_encoder").values())
    sched = dict(UNIPC_DEFAULTS, flow_shift=default_shift(kind, *release_size(kind, _resolution_hint(path.name))))
    sc = path / "scheduler" / "scheduler_config.json"
    if sc.is_file():
        sched.update({k: v for k, v in json.loads(sc.read_text()).items() if not k.startswith("_")})
    stats = _stats(kind, experts, shapes, sum(math.prod(s) for s in te_shapes.values()), clip_params or 0,
                   sum(math.prod(s) for s in _folder_shapes(path / "vae").values()), vcfg)
    boundary = index.get("boundary_ratio", KINDS[kind].boundary) if len(experts) == 2 else None
    return LoadPlan(kind=kind, variant=variant_name(kind, experts["high_noise"]),
                    experts={n: _Part(c, folder=path / r) for (n, c), r in zip(experts.items(), names)},
                    vae=_Part(vcfg, folder=path / "vae"), text_encoder=_Part(None, folder=path / "text_encoder"),
                    tokenizer=path / "tokenizer", clip=clip,
                    image_processor=path / "image_processor" if (path / "image_processor").is_dir() else None,
                    scheduler_config=sched, boundary=boundary, stats=stats, file_fp8=False,
                    resolution=_resolution_hint(path.name))


def _check_vae_for_kind(kind: str, vcfg: dict, where: str) -> None:
    want = 48 if KINDS[kind].vae == "2.2" else 16
    if vcfg["z_dim"] != want:
        have = "Wan2.2 VAE (48 channels)" if vcfg["z_dim"] == 48 else "Wan2.1 VAE (16 channels)"
        need = "wan2.2_vae (48 channels)" if want == 48 else "wan_2.1_vae (16 channels)"
        raise ValueError(f"{NODE}: {where} is the {have}, but {kind} needs {need}. Fix: pick "
                         f"{'wan2.2_vae.safetensors' if want == 48 else 'wan_2.1_vae.safetensors'} in vae/.")


def plan_single_files(files: dict) -> LoadPlan:
    """Identify and read the headers of single files (no weights): see :func:`load_wan`."""
    files = {k: v for k, v in files.items() if v not in (None, "")}
    for role in ("transformer", "vae", "text_encoder"):
        if role not in files:
            raise ValueError(f"{NODE}: single-files mode needs a {role} file (models/{_ROLE_FOLDERS[role]}/); "
                             "got none")
    infos = {r: read_file_info(r, files[r]) for r in ("transformer", "transformer_2") if r in files}
    tcfgs = {}
    for r, ename in zip(("transformer", "transformer_2"), EXPERT_NAMES):
        if r in infos:
            meta = infos[r].metadata.get("config")
            tcfgs[ename] = transformer_config(infos[r].shapes, json.loads(meta) if meta else None,
                                              infos[r].path.name)
    kind = detect_kind(tcfgs["high_noise"], len(tcfgs), infos["transformer"].path.name)
    if len(tcfgs) == 2 and tcfgs["high_noise"] != tcfgs["low_noise"]:
        raise ValueError(f"{NODE}: transformer and transformer_2 are different architectures "
                         f"({infos['transformer'].path.name}, {infos['transformer_2'].path.name}); pick the high- and "
                         "low-noise experts of one Wan2.2 A14B release.")
    notes = []
    if len(tcfgs) == 1 and KINDS[kind].experts == 2:
        notes.append("one expert only: it denoises every step (no switch)")
    vinfo = read_file_info("vae", files["vae"])
    vcfg = vae_config(vinfo.shapes, vinfo.path.name)
    _check_vae_for_kind(kind, vcfg, vinfo.path.name)
    tinfo = read_file_info("text_encoder", files["text_encoder"])
    tecfg = umt5_config(tinfo.shapes, tinfo.path.name)
    tok = _find_tokenizer(tinfo, files.get("tokenizer"))
    clip = None
    if KINDS[kind].clip:
        if "clip_vision" not in files:
            raise ValueError(f"{NODE}: {infos['transformer'].path.name} is Wan2.1 I2V, which reads CLIP image "
                             "features: pick clip_vision_h.safetensors (models/clip_vision/) as clip_vision.")
        cinfo = read_file_info("clip_vision", files["clip_vision"])
        ccfg = clip_vision_config(cinfo.shapes, cinfo.path.name)
        want = tcfgs["high_noise"]["image_dim"]
        if ccfg["hidden_size"] != want:
            raise ValueError(f"{NODE}: clip_vision {cinfo.path.name} is {ccfg['hidden_size']} wide, the transformer's "
                             f"image branch takes {want} (ViT-H/14: 1280). Fix: use clip_vision_h.safetensors.")
        clip = _Part(ccfg, info=cinfo)
    elif "clip_vision" in files:
        notes.append(f"clip_vision ignored: {kind} has no CLIP image branch")
    file_fp8 = any(d.startswith("float8") for d in infos["transformer"].dtypes.values())
    stats = _stats(kind, tcfgs, {n: infos[r].shapes for n, r in zip(tcfgs, ("transformer", "transformer_2"))},
                   tinfo.numel(), clip.info.numel() if clip else 0, vinfo.numel(), vcfg)
    return LoadPlan(kind=kind, variant=variant_name(kind, tcfgs["high_noise"]),
                    experts={n: _Part(c, info=infos[r]) for (n, c), r in zip(tcfgs.items(),
                                                                             ("transformer", "transformer_2"))},
                    vae=_Part(vcfg, info=vinfo), text_encoder=_Part(tecfg, info=tinfo), tokenizer=tok, clip=clip,
                    image_processor=None,
                    scheduler_config=dict(UNIPC_DEFAULTS, flow_shift=default_shift(
                        kind, *release_size(kind, _resolution_hint(infos["transformer"].path.name)))),
                    boundary=KINDS[kind].boundary if len(tcfgs) == 2 else None, stats=stats, file_fp8=file_fp8,
                    notes=notes, resolution=_resolution_hint(infos["transformer"].path.name))


def _find_tokenizer(tinfo: FileInfo, tokenizer):
    """The umT5 tokenizer: a folder given or beside the file (``<stem>_tokenizer/``, ``tokenizer/``), else the
    SentencePiece model ComfyUI stores inside the file (``spiece_model``)."""
    te = tinfo.path
    cands = [Path(tokenizer)] if tokenizer else []
    cands += [te.parent / f"{te.stem}_tokenizer", te.parent / "tokenizer"]
    for c in cands:
        if c.is_dir():
            return c
    if "spiece_model" in tinfo.header:
        return "spiece_model"
    raise FileNotFoundError(f"{NODE}: no umT5 tokenizer for {te.name}: the file has no spiece_model and none of "
                            f"{[str(c) for c in cands]} exists. Use ComfyUI's umt5_xxl file (it carries its "
                            "tokenizer) or put the google/umt5-xxl tokenizer folder beside it as "
                            f"{te.stem}_tokenizer/.")


# ----------------------------------------------------------------------------------- materialising
def _check_against_header(model: torch.nn.Module, shapes: dict, path, fix: str, allow_missing=()) -> None:
    """Key set and every shape of a meta-built model against a file's header; a named error listing the first
    mismatches (with expected shapes) and the fix."""
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in own if k not in shapes and k not in allow_missing]
    unexpected = [k for k in shapes if k not in own]
    wrong = [(k, tuple(shapes[k]), own[k]) for k in own if k in shapes and tuple(shapes[k]) != own[k]]
    if missing or unexpected or wrong:
        lines = [f"{NODE}: {Path(path).name} does not match the model its shapes describe."]
        if wrong:
            lines.append("shape mismatches (key: file -> expected): " + "; ".join(
                f"{k}: {a} -> {b}" for k, a, b in wrong[:4]))
        if missing:
            lines.append(f"missing {len(missing)} keys, e.g. " + ", ".join(f"{k} {own[k]}" for k in missing[:4]))
        if unexpected:
            lines.append(f"{len(unexpected)} unexpected keys, e.g. {unexpected[:4]}")
        lines.append(fix)
        raise ValueError(" ".join(lines))


def _keep_fp32(name: str, keep) -> bool:
    return bool(keep) and any(m in name.split(".") for m in keep)


def _materialise(model: torch.nn.Module, info: FileInfo, *, keep_fp8: bool, compute: torch.dtype,
                 keep_fp32=(), tied=None, fill=None) -> dict:
    """Read ``info``'s tensors and assign them into the meta-built ``model`` (checked first). fp8 tensors stay
    fp8 when ``keep_fp8`` (their scales are returned for :func:`.offload.store_fp8`), else are dequantised to
    ``compute``; ones in ``keep_fp32`` modules become float32. Returns {param: scale} of kept fp8 weights."""
    from ..weights import read_safetensors

    sd, _ = read_safetensors(info.path, f"{NODE} ({info.role})")
    tensors = {info.rename[k]: sd.pop(k) for k in list(info.rename)}
    scales = {w: sd[s] for w, s in info.scales.items()}
    for a, b in (tied or {}).items():  # tied weights stored once (umT5 embed_tokens = shared)
        if a not in tensors and b in tensors:
            tensors[a] = tensors[b]
    for k, t in (fill or {}).items():
        tensors.setdefault(k, t)
    kept = {}
    for k, t in tensors.items():
        if t.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
            if _keep_fp32(k, keep_fp32):
                t = t.float() * scales[k].float() if k in scales else t.float()
            elif keep_fp8:
                if k in scales:
                    kept[k] = scales[k]
                continue
            else:
                t = (t.to(compute) * scales[k].to(compute)) if k in scales else t.to(compute)
            tensors[k] = t
    model.load_state_dict(tensors, strict=True, assign=True)
    return kept


def _fix_meta_buffers(model: torch.nn.Module, what: str) -> None:
    """Non-persistent buffers are not in files: rebuild the known ones (Wan RoPE tables, CLIP position ids)."""
    from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

    for name, mod in model.named_modules():
        if isinstance(mod, WanRotaryPosEmbed) and mod.freqs_cos.is_meta:
            new = WanRotaryPosEmbed(mod.attention_head_dim, mod.patch_size, mod.max_seq_len)
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            setattr(parent, name.rsplit(".", 1)[-1], new)
        pid = getattr(mod, "position_ids", None)
        if isinstance(pid, torch.Tensor) and pid.is_meta:
            mod.register_buffer("position_ids", torch.arange(pid.shape[-1]).expand((1, -1)), persistent=False)
    left = [n for n, b in model.named_buffers() if b.is_meta]
    if left:
        raise RuntimeError(f"{NODE}: buffers {left[:4]} of the {what} were not restored")


def _build_transformer(cfg: dict):
    from diffusers import WanTransformer3DModel

    with torch.device("meta"):  # no throw-away random init of billions of weights
        return WanTransformer3DModel(**cfg)


def load_parts(plan: LoadPlan, compute: torch.dtype, storage) -> dict:
    """Materialise every model of a plan (on the CPU). Returns dict(experts=, vae=, text_encoder=, tokenizer=,
    image_encoder=, image_processor=, scales=)."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    from ..weights import from_pretrained

    keep_fp8 = storage is not None
    out = dict(experts={}, scales={})
    for name, part in plan.experts.items():
        if part.folder is not None:
            out["experts"][name] = from_pretrained(WanTransformer3DModel, part.folder, f"{NODE} ({part.folder.name})",
                                                   torch_dtype=compute)
            out["scales"][name] = {}
            continue
        model = _build_transformer(part.cfg)
        _check_against_header(model, part.info.shapes, part.info.path,
                              "Fix: use an unmodified Wan2.1/Wan2.2 transformer file.")
        out["scales"][name] = _materialise(model, part.info, keep_fp8=keep_fp8, compute=compute,
                                           keep_fp32=WanTransformer3DModel._keep_in_fp32_modules)
        _fix_meta_buffers(model, "transformer")
        out["experts"][name] = model
    v = plan.vae
    if v.folder is not None:
        out["vae"] = from_pretrained(AutoencoderKLWan, v.folder, f"{NODE} (vae)")
    else:
        with torch.device("meta"):
            vae = AutoencoderKLWan(**v.cfg)
        _check_against_header(vae, v.info.shapes, v.info.path, "Fix: use wan_2.1_vae or wan2.2_vae unmodified.")
        _materialise(vae, v.info, keep_fp8=False, compute=torch.float32)
        _fix_meta_buffers(vae, "VAE")
        out["vae"] = vae
    out["text_encoder"], out["tokenizer"], out["te_scales"] = _load_text_encoder(plan, compute)
    out["image_encoder"] = out["image_processor"] = None
    if plan.clip is not None:
        out["image_encoder"], out["image_processor"] = _load_clip(plan)
    return out


def _load_text_encoder(plan: LoadPlan, compute):
    from transformers import AutoTokenizer, UMT5Config, UMT5EncoderModel

    from ..weights import from_pretrained

    part = plan.text_encoder
    if part.folder is not None:
        te = from_pretrained(UMT5EncoderModel, part.folder, f"{NODE} (text_encoder)")
        return te, AutoTokenizer.from_pretrained(plan.tokenizer), {}
    with torch.device("meta"):
        te = UMT5EncoderModel(UMT5Config(**part.cfg))
    tied = {"encoder.embed_tokens.weight": "shared.weight"}
    _check_against_header(te, part.info.shapes, part.info.path,
                          "Fix: use umt5_xxl (fp16/bf16/fp8 scaled) from text_encoders/, the encoder Wan was trained "
                          "with.", allow_missing=tied)
    scales = _materialise(te, part.info, keep_fp8=compute != torch.float32, compute=compute, tied=tied)
    _fix_meta_buffers(te, "text encoder")
    if plan.tokenizer == "spiece_model":
        from ..weights import read_safetensors

        sd, _ = read_safetensors(part.info.path, f"{NODE} (text_encoder)")
        tok = SentencePieceTokenizer(bytes(sd["spiece_model"].numpy().tobytes()))
    else:
        tok = AutoTokenizer.from_pretrained(plan.tokenizer)
    return te, tok, scales


def _load_clip(plan: LoadPlan):
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, CLIPVisionModelWithProjection

    from ..weights import from_pretrained

    part = plan.clip
    if part.folder is not None:
        enc = from_pretrained(CLIPVisionModel, part.folder, f"{NODE} (image_encoder)")
        proc = (CLIPImageProcessor.from_pretrained(plan.image_processor) if plan.image_processor else
                _clip_processor(enc.config.image_size))
        return enc, proc
    with torch.device("meta"):  # the ComfyUI clip_vision_h layout: vision_model.* + visual_projection
        enc = CLIPVisionModelWithProjection(CLIPVisionConfig(**part.cfg))
    # a file without the projection (Wan never uses it: it reads the penultimate hidden states) gets zeros
    fill = {} if "visual_projection.weight" in part.info.shapes else {
        "visual_projection.weight": torch.zeros(part.cfg["projection_dim"], part.cfg["hidden_size"])}
    _check_against_header(enc, part.info.shapes, part.info.path, "Fix: use clip_vision_h.safetensors.",
                          allow_missing=tuple(fill))
    _materialise(enc, part.info, keep_fp8=False, compute=torch.float32, fill=fill)
    _fix_meta_buffers(enc, "CLIP vision encoder")
    return enc, _clip_processor(part.cfg["image_size"])


def _clip_processor(size: int):
    """The Wan2.1 I2V release's image processor: shortest side to ``size`` (bicubic), center crop, OpenAI
    CLIP mean/std."""
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                              image_mean=CLIP_MEAN, image_std=CLIP_STD, resample=3)


def cast_module(model: torch.nn.Module, dtype: torch.dtype, keep_fp32=()) -> torch.nn.Module:
    """Floating parameters and buffers to ``dtype`` except fp8 ones (kept) and those of ``keep_fp32`` modules
    (float32, as diffusers' from_pretrained(torch_dtype=...) keeps them)."""
    for name, p in model.named_parameters():
        if p.dtype in (torch.float8_e4m3fn, torch.float8_e5m2) or not p.is_floating_point():
            continue
        want = torch.float32 if _keep_fp32(name, keep_fp32) and dtype != torch.float32 else dtype
        if p.dtype != want:
            p.data = p.data.to(want)
    for mname, mod in model.named_modules():
        for bname, b in list(mod.named_buffers(recurse=False)):
            full = f"{mname}.{bname}" if mname else bname
            if b.is_floating_point() and not _keep_fp32(full, keep_fp32) and b.dtype != dtype:
                mod._buffers[bname] = b.to(dtype)
    return model


# --------------------------------------------------------------------------------------- tokenizer
class SentencePieceTokenizer:
    """umT5's tokenizer from the SentencePiece model ComfyUI stores in the text-encoder file (``spiece_model``):
    pieces + eos (1), truncated to ``max_length`` keeping the eos, padded with 0; the same ids as the release's
    ``T5TokenizerFast`` for the same model."""

    def __init__(self, model_proto: bytes):
        import sentencepiece

        self.sp = sentencepiece.SentencePieceProcessor(model_proto=model_proto)
        self.pad_token_id = max(self.sp.pad_id(), 0)
        self.eos_token_id = self.sp.eos_id()

    def __len__(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.full((len(texts), max_length), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(texts), max_length), dtype=torch.long)
        for i, t in enumerate(texts):
            row = self.sp.encode(t)[: max_length - 1] + [self.eos_token_id]
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        return ids, mask
