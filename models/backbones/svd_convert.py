"""Original (Stability "generative-models"/SGM) single-file SVD checkpoints <-> diffusers classes, in memory.

Key layout of ``svd.safetensors`` / ``svd_xt.safetensors`` (as ComfyUI keeps them in ``checkpoints/``):
- ``model.diffusion_model.*``: the VideoUNet (``input_blocks.N.{0,1}``, ``middle_block.{0,1,2}``,
  ``output_blocks.N.{0,1,2}``, ``time_embed``, ``label_emb``, ``out``; resnets with ``in_layers``/``out_layers``/
  ``emb_layers``/``skip_connection``, temporal parts under ``time_stack``, blend ``time_mixer.mix_factor``);
- ``first_stage_model.*``: the VAE (LDM ``encoder.down.N.block.M``; video decoder ``decoder.up.N.block.M`` with
  ``time_stack`` and ``mix_factor``, ``decoder.conv_out.time_mix_conv``);
- ``conditioner.embedders.0.open_clip.model.visual.*``: the OpenCLIP ViT-H/14 image tower (fused ``in_proj``).

The mapping is written once, diffusers name -> original name, from the diffusers model's own key list; loading
inverts it. Configs: the real SVD ones, unless the file's metadata carries ``interplay_configs`` (tiny fixtures).
Only safetensors files are read.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from ..weights import WeightsFileError, build_checked, check_config, metadata_json, read_header, read_safetensors
from .svd_configs import SVD_SCHEDULER_DEFAULTS, SVD_UNET_CONFIG, SVD_VAE_CONFIG, VIT_H_CONFIG  # noqa: F401

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "conditioner.embedders.0.open_clip.model.visual."

_RES = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
        ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection")]
_VAE_RES = [("conv_shortcut", "nin_shortcut")]
_VAE_TIME = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
             ("conv2", "out_layers.3")]
_VAE_ATTN = [("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")]


def _sub(name: str, table) -> str:
    for a, b in table:
        if name == a or name.startswith(a + "."):
            return b + name[len(a):]
    return name


# ------------------------------------------------------------------------------------------------ UNet
def unet_key_to_original(key: str, config) -> str:
    """diffusers UNetSpatioTemporalConditionModel key -> original VideoUNet key (without prefix)."""
    L = config["layers_per_block"]
    simple = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
              "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
              "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
    head, _, leaf = key.rpartition(".")
    if head in simple:
        return f"{simple[head]}.{leaf}"

    def resnet(rest):
        if rest.startswith("spatial_res_block."):
            return _sub(rest[len("spatial_res_block."):], _RES)
        if rest.startswith("temporal_res_block."):
            return "time_stack." + _sub(rest[len("temporal_res_block."):], _RES)
        return rest  # time_mixer.mix_factor

    def attn(rest):
        rest = rest.replace("temporal_transformer_blocks.", "time_stack.")
        return rest.replace("time_pos_embed.linear_1", "time_pos_embed.0").replace("time_pos_embed.linear_2",
                                                                                   "time_pos_embed.2")

    m = re.match(r"down_blocks\.(\d+)\.(resnets|attentions|downsamplers)\.(\d+)\.(.*)", key)
    if m:
        b, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        if kind == "downsamplers":
            return f"input_blocks.{1 + b * (L + 1) + L}.0.op.{rest.split('.', 1)[1]}"
        n = 1 + b * (L + 1) + j
        return f"input_blocks.{n}.0.{resnet(rest)}" if kind == "resnets" else f"input_blocks.{n}.1.{attn(rest)}"
    m = re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)", key)
    if m:
        if m[1] == "attentions":
            return f"middle_block.1.{attn(m[3])}"
        return f"middle_block.{2 * int(m[2])}.{resnet(m[3])}"
    m = re.match(r"up_blocks\.(\d+)\.(resnets|attentions|upsamplers)\.(\d+)\.(.*)", key)
    if m:
        b, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        if kind == "upsamplers":
            has_attn = config["up_block_types"][b].startswith("CrossAttn")
            return f"output_blocks.{b * (L + 1) + L}.{2 if has_attn else 1}.{rest}"
        n = b * (L + 1) + j
        return f"output_blocks.{n}.0.{resnet(rest)}" if kind == "resnets" else f"output_blocks.{n}.1.{attn(rest)}"
    raise KeyError(f"no original name for UNet key {key!r}")


# ------------------------------------------------------------------------------------------------- VAE
def vae_key_to_original(key: str, config) -> str:
    """diffusers AutoencoderKLTemporalDecoder key -> original first-stage key (without prefix)."""
    n = len(config["block_out_channels"])
    simple = {"encoder.conv_norm_out": "encoder.norm_out", "decoder.conv_norm_out": "decoder.norm_out",
              "decoder.time_conv_out": "decoder.conv_out.time_mix_conv"}
    head, _, leaf = key.rpartition(".")
    if head in simple:
        return f"{simple[head]}.{leaf}"
    m = re.match(r"encoder\.down_blocks\.(\d+)\.(resnets|downsamplers)\.(\d+)\.(.*)", key)
    if m:
        if m[2] == "downsamplers":
            return f"encoder.down.{m[1]}.downsample.{m[4]}"
        return f"encoder.down.{m[1]}.block.{m[3]}.{_sub(m[4], _VAE_RES)}"
    m = re.match(r"(encoder|decoder)\.mid_block\.(resnets|attentions)\.(\d+)\.(.*)", key)
    if m:
        if m[2] == "attentions":
            return f"{m[1]}.mid.attn_1.{_sub(m[4], _VAE_ATTN)}"
        return f"{m[1]}.mid.block_{int(m[3]) + 1}.{_video_res(m[4])}"
    m = re.match(r"decoder\.up_blocks\.(\d+)\.(resnets|upsamplers)\.(\d+)\.(.*)", key)
    if m:
        i = n - 1 - int(m[1])
        if m[2] == "upsamplers":
            return f"decoder.up.{i}.upsample.{m[4]}"
        return f"decoder.up.{i}.block.{m[3]}.{_video_res(m[4])}"
    return key  # encoder.conv_in, encoder.conv_out, decoder.conv_in, decoder.conv_out, quant_conv


def _video_res(rest: str) -> str:
    if rest.startswith("spatial_res_block."):
        return _sub(rest[len("spatial_res_block."):], _VAE_RES)
    if rest.startswith("temporal_res_block."):
        return "time_stack." + _sub(rest[len("temporal_res_block."):], _VAE_TIME)
    if rest == "time_mixer.mix_factor":
        return "mix_factor"
    return _sub(rest, _VAE_RES)  # encoder resnets (plain ResnetBlock2D)


# ------------------------------------------------------------------------------------------------ CLIP
def clip_key_to_original(key: str) -> str:
    """transformers CLIPVisionModelWithProjection key -> OpenCLIP visual key (q/k/v map to the fused in_proj)."""
    simple = {"vision_model.embeddings.class_embedding": "class_embedding",
              "vision_model.embeddings.patch_embedding.weight": "conv1.weight",
              "vision_model.embeddings.position_embedding.weight": "positional_embedding",
              "visual_projection.weight": "proj"}
    if key in simple:
        return simple[key]
    for a, b in (("vision_model.pre_layrnorm.", "ln_pre."), ("vision_model.post_layernorm.", "ln_post.")):
        if key.startswith(a):
            return b + key[len(a):]
    m = re.match(r"vision_model\.encoder\.layers\.(\d+)\.(.*)", key)
    if m:
        rest = m[2]
        m2 = re.match(r"self_attn\.[qkv]_proj\.(weight|bias)", rest)
        if m2:
            return f"transformer.resblocks.{m[1]}.attn.in_proj_{m2[1]}"
        rest = _sub(rest, [("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"),
                           ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")])
        return f"transformer.resblocks.{m[1]}.{rest}"
    raise KeyError(f"no OpenCLIP name for CLIP key {key!r}")


def _qkv_index(key: str) -> int:
    return "qkv".index(re.search(r"self_attn\.([qkv])_proj", key)[1])


# ------------------------------------------------------------------------------------------- converters
def _skeleton_keys(cls, config) -> dict:
    with torch.device("meta"):
        model = cls(**config) if not hasattr(cls, "config_class") else cls(cls.config_class(**config))
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def diffusers_to_original(unet_sd: dict, vae_sd: dict, clip_sd: dict | None, unet_config, vae_config) -> dict:
    """Inverse of :func:`original_to_diffusers`: three diffusers state dicts -> one original-layout dict."""
    out = {}
    for k, v in unet_sd.items():
        out[UNET_PREFIX + unet_key_to_original(k, unet_config)] = v
    for k, v in vae_sd.items():
        o = vae_key_to_original(k, vae_config)
        if ".mid.attn_1." in o and v.ndim == 2:
            v = v[:, :, None, None]  # original VAE attention uses 1x1 convs
        out[VAE_PREFIX + o] = v
    if clip_sd:
        fused = {}
        for k, v in clip_sd.items():
            if k.endswith("position_ids"):
                continue
            o = clip_key_to_original(k)
            if "in_proj" in o:
                fused.setdefault(o, [None, None, None])[_qkv_index(k)] = v
            else:
                out[CLIP_PREFIX + o] = v.t().contiguous() if o == "proj" else v
        for o, parts in fused.items():
            out[CLIP_PREFIX + o] = torch.cat(parts, 0)
    return out


def original_to_diffusers(sd: dict, unet_config, vae_config, clip_config=None, strict: bool = True):
    """Original-layout dict -> (unet_sd, vae_sd, clip_sd or None). Missing keys raise ValueError naming them."""
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel

    missing = []
    unet_sd = {}
    for k, shape in _skeleton_keys(UNetSpatioTemporalConditionModel, unet_config).items():
        o = UNET_PREFIX + unet_key_to_original(k, unet_config)
        if o in sd:
            unet_sd[k] = sd[o]
        else:
            missing.append(o)
    vae_sd = {}
    for k, shape in _skeleton_keys(AutoencoderKLTemporalDecoder, vae_config).items():
        o = VAE_PREFIX + vae_key_to_original(k, vae_config)
        if o in sd:
            vae_sd[k] = sd[o].reshape(shape) if sd[o].numel() == _numel(shape) else sd[o]
        elif k.startswith("quant_conv."):  # absent in AutoencodingEngine checkpoints: identity
            c = shape[0]
            vae_sd[k] = torch.eye(c).view(c, c, 1, 1) if k.endswith("weight") else torch.zeros(c)
        else:
            missing.append(o)
    if strict and missing:
        raise ValueError(f"SVD checkpoint lacks {len(missing)} expected keys, e.g. {missing[:6]}; "
                         "is this an SVD img2vid checkpoint in the original layout?")
    clip_sd = None
    if clip_config is not None and any(k.startswith(CLIP_PREFIX) for k in sd):
        clip_sd = openclip_to_hf({k[len(CLIP_PREFIX):]: v for k, v in sd.items() if k.startswith(CLIP_PREFIX)},
                                 clip_config)
    return unet_sd, vae_sd, clip_sd


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def openclip_to_hf(visual: dict, clip_config) -> dict:
    """OpenCLIP visual tower (keys without prefix) -> CLIPVisionModelWithProjection state dict."""
    from transformers import CLIPVisionModelWithProjection

    out = {}
    shapes = _skeleton_keys(CLIPVisionModelWithProjection, clip_config)
    for k, shape in shapes.items():
        if k.endswith("position_ids"):
            continue
        o = clip_key_to_original(k)
        if o not in visual:
            raise ValueError(f"CLIP image encoder weights lack {o!r}")
        v = visual[o]
        if "in_proj" in o:
            v = v.chunk(3, 0)[_qkv_index(k)]
        elif o == "proj":
            v = v.t()
        out[k] = v.contiguous()
    return out


# -------------------------------------------------------------------------------------------- loading
# A file's configs (``interplay_configs`` metadata) are bounded before anything is built from them; the modules
# are then built on the meta device and compared key by key with the converted weights (weights.build_checked).
UNET_BOUNDS = dict(sample_size=(1, 4096), in_channels=(1, 64), out_channels=(1, 64), block_out_channels=(1, 8192),
                   addition_time_embed_dim=(1, 8192), projection_class_embeddings_input_dim=(1, 1 << 16),
                   layers_per_block=(1, 16), cross_attention_dim=(1, 1 << 16), transformer_layers_per_block=(1, 16),
                   num_attention_heads=(1, 256), num_frames=(1, 1024))
VAE_BOUNDS = dict(in_channels=(1, 64), out_channels=(1, 64), block_out_channels=(1, 8192), layers_per_block=(1, 16),
                  latent_channels=(1, 1024), sample_size=(1, 8192), scaling_factor=(0, 1e3))
CLIP_BOUNDS = dict(hidden_size=(1, 1 << 16), intermediate_size=(1, 1 << 18), projection_dim=(1, 1 << 16),
                   num_hidden_layers=(1, 256), num_attention_heads=(1, 256), image_size=(1, 4096),
                   patch_size=(1, 1024), layer_norm_eps=(0, 1))


def _bounded(cfg: dict, bounds: dict, path, what: str) -> dict:
    from ..weights import WeightsFileError, check_config

    for key in ("down_block_types", "up_block_types"):
        v = cfg.get(key, ())
        if not isinstance(v, (list, tuple)) or len(v) > 8 or not all(isinstance(t, str) for t in v):
            raise WeightsFileError(f"{what}: {path}: config {key}={v!r}; expected at most 8 block type names")
    return check_config(cfg, bounds, path, what)


def load_single_file(path, clip_vision=None):
    """Load an original-layout SVD checkpoint into diffusers modules.

    Returns (unet, vae, image_encoder, image_processor(None), scheduler_config). The image encoder comes from
    the checkpoint when it holds one, else from ``clip_vision`` (HF or OpenCLIP layout).
    """
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection


    path = Path(path)
    if path.suffix.lower() not in (".safetensors", ".sft"):
        raise ValueError(f"SVD loader: {path.name} is not a .safetensors file; only safetensors are read "
                         "(convert .ckpt files first)")
    header, meta = read_header(path, "SVD loader")  # configs are checked before the weights are read
    cfgs = metadata_json(meta, "interplay_configs", path, "SVD loader") if "interplay_configs" in meta else {}
    if not any(k.startswith(UNET_PREFIX) for k in header):
        raise ValueError(f"SVD loader: {path.name} has no '{UNET_PREFIX}*' keys; it is not an original-layout "
                         "SVD checkpoint (a diffusers unet file goes in a diffusers folder)")
    unet_cfg = cfgs.get("unet") or dict(SVD_UNET_CONFIG, num_frames=25 if "xt" in path.name.lower() else 14)
    vae_cfg = cfgs.get("vae") or dict(SVD_VAE_CONFIG)
    clip_cfg = cfgs.get("clip") or dict(VIT_H_CONFIG)
    for c in (unet_cfg, vae_cfg, clip_cfg):
        if not isinstance(c, dict):
            raise WeightsFileError(f"SVD loader: {path}: interplay_configs must hold objects; got {c!r}")
    unet_cfg, vae_cfg = _bounded(unet_cfg, UNET_BOUNDS, path, "SVD loader"), _bounded(vae_cfg, VAE_BOUNDS, path,
                                                                                     "SVD loader")
    clip_cfg = check_config(clip_cfg, CLIP_BOUNDS, path, "SVD loader")
    for c in (unet_cfg, vae_cfg):
        for k, v in list(c.items()):
            if isinstance(v, list):
                c[k] = tuple(v)
    try:  # the key mapping runs on the header's meta tensors first: nothing is read for a file that fails it
        unet_h, vae_h, _ = original_to_diffusers(header, unet_cfg, vae_cfg, clip_cfg)
    except KeyError as ex:
        raise WeightsFileError(f"SVD loader: {path}: the weights do not follow the config (no {ex}); pick the "
                               "original svd/svd_xt checkpoint or save it again") from ex
    except ValueError as ex:  # the converter's own checks (missing keys): add which file
        raise WeightsFileError(f"SVD loader: {path}: {ex}") from ex
    fix = "Pick an original SVD img2vid checkpoint (svd.safetensors / svd_xt.safetensors)."
    build_checked(lambda: UNetSpatioTemporalConditionModel(**unet_cfg), unet_h, path, "SVD loader (unet)", fix=fix)
    build_checked(lambda: AutoencoderKLTemporalDecoder(**vae_cfg), vae_h, path, "SVD loader (vae)", fix=fix)
    sd = read_safetensors(path, "SVD loader")[0]
    try:
        unet_sd, vae_sd, clip_sd = original_to_diffusers(sd, unet_cfg, vae_cfg, clip_cfg)
    except KeyError as ex:
        raise WeightsFileError(f"SVD loader: {path}: the weights do not follow the config (no {ex}); pick the "
                               "original svd/svd_xt checkpoint or save it again") from ex
    except ValueError as ex:  # the converter's own checks (missing keys): add which file
        raise WeightsFileError(f"SVD loader: {path}: {ex}") from ex
    del sd
    unet = UNetSpatioTemporalConditionModel(**unet_cfg)
    unet.load_state_dict(unet_sd, strict=True)
    vae = AutoencoderKLTemporalDecoder(**vae_cfg)
    vae.load_state_dict(vae_sd, strict=True)
    if clip_sd is None:
        if clip_vision is None:
            raise ValueError(f"SVD loader: {path.name} holds no CLIP image encoder; pick a clip_vision file "
                             "(CLIP ViT-H/14, e.g. clip_vision_h.safetensors)")
        clip_sd, clip_cfg = load_clip_vision_file(clip_vision, clip_cfg)
        clip_cfg = check_config(clip_cfg, CLIP_BOUNDS, clip_vision, "SVD loader (clip_vision)")
    build_checked(lambda: CLIPVisionModelWithProjection(CLIPVisionConfig(**clip_cfg)), clip_sd,
                  clip_vision if clip_sd is not None and clip_vision is not None else path, "SVD loader (clip_vision)",
                  optional=("position_ids",), fix="Use CLIP ViT-H/14 (clip_vision_h.safetensors).")
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**clip_cfg))
    res = image_encoder.load_state_dict(clip_sd, strict=False)
    bad = [k for k in res.missing_keys if not k.endswith("position_ids")] + list(res.unexpected_keys)
    if bad:
        raise ValueError(f"SVD loader: CLIP image encoder weights do not match ViT config: {bad[:6]}")
    return unet, vae, image_encoder, None, dict(SVD_SCHEDULER_DEFAULTS)


def load_clip_vision_file(path, default_config=None):
    """A clip_vision file in HF layout (vision_model.*, visual_projection.weight) or OpenCLIP layout."""
    path = Path(path)
    sd, meta = read_safetensors(path, "SVD loader (clip_vision)")
    cfg = (metadata_json(meta, "interplay_configs", path, "SVD loader (clip_vision)").get("clip")
           if "interplay_configs" in meta else None) \
        or dict(default_config or VIT_H_CONFIG)
    if any(k.startswith("vision_model.") for k in sd):
        sd = {k: v for k, v in sd.items() if k.startswith(("vision_model.", "visual_projection."))}
        if "interplay_configs" not in meta:
            cfg = infer_clip_config(sd)
        return sd, cfg
    for pre in (CLIP_PREFIX, "visual.", ""):
        vis = {k[len(pre):]: v for k, v in sd.items() if k.startswith(pre)}
        if "conv1.weight" in vis:
            return openclip_to_hf(vis, cfg), cfg
    raise ValueError(f"clip_vision file {path.name}: neither HF CLIP (vision_model.*) nor OpenCLIP (visual.*) keys")


KNOWN_HEADS = {1280: 16, 1024: 16, 768: 12}  # ViT-H/14, ViT-L/14, ViT-B


def infer_clip_config(sd: dict) -> dict:
    """CLIPVisionConfig fields from an HF-layout state dict's shapes. Head counts are not in the shapes: the
    known CLIP widths use their release counts, other widths 16-dim heads."""
    hidden = int(sd["vision_model.embeddings.class_embedding"].numel())
    patch = int(sd["vision_model.embeddings.patch_embedding.weight"].shape[-1])
    npos = int(sd["vision_model.embeddings.position_embedding.weight"].shape[0])
    layers = 1 + max(int(k.split(".")[3]) for k in sd if k.startswith("vision_model.encoder.layers."))
    inter = int(sd["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0])
    proj = int(sd["visual_projection.weight"].shape[0])
    return dict(VIT_H_CONFIG, hidden_size=hidden, intermediate_size=inter, projection_dim=proj,
                num_hidden_layers=layers, num_attention_heads=KNOWN_HEADS.get(hidden, max(1, hidden // 16)),
                image_size=int(round((npos - 1) ** 0.5)) * patch, patch_size=patch)


def save_single_file(bb, path, include_clip: bool = True) -> Path:
    """Write a backbone as an original-layout single file (the tiny fixture; also a real export)."""
    from safetensors.torch import save_file

    path = Path(path)
    unet_cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(bb.denoiser.config).items()
                if not k.startswith("_")}
    vae_cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(bb.vae.config).items()
               if not k.startswith("_")}
    c = bb.image_encoder.config
    clip_cfg = {k: getattr(c, k) for k in VIT_H_CONFIG}
    sd = diffusers_to_original(
        {k: v.detach().float().cpu() for k, v in bb.denoiser.state_dict().items()},
        {k: v.detach().float().cpu() for k, v in bb.vae.state_dict().items()},
        {k: v.detach().float().cpu() for k, v in bb.image_encoder.state_dict().items()} if include_clip else None,
        unet_cfg, vae_cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path),
              metadata={"interplay_configs": json.dumps({"unet": unet_cfg, "vae": vae_cfg, "clip": clip_cfg})})
    return path


def save_clip_vision_file(bb, path) -> Path:
    """The image encoder alone, HF layout (as ComfyUI's clip_vision files)."""
    from safetensors.torch import save_file

    c = bb.image_encoder.config
    sd = {k: v.detach().float().cpu().contiguous() for k, v in bb.image_encoder.state_dict().items()
          if not k.endswith("position_ids")}
    save_file(sd, str(path), metadata={"interplay_configs": json.dumps({"clip": {k: getattr(c, k)
                                                                                for k in VIT_H_CONFIG}})})
    return Path(path)
