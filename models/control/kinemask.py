"""KineMask control branch: a ControlNet over the first N CogVideoX blocks driven by the velocity-mask video.

Layout (KineMask appendix: 8 layers, downscale 8, weight 0.5; the TheDenk/cogvideox-controlnet design):
    control [B,F,3,H,W] in [-1,1] --PixelUnshuffle(d)--> [B*F, 3d^2, h, w]
    --1x1 conv + GroupNorm(2) + ReLU--> 3d^2/2 ch --time /2 (frame 0 kept apart)-->
    --1x1 conv + GroupNorm(2) + ReLU--> 3d^2/4 ch --time /2 (frame 0 kept apart)--> [B, f, 3d^2/4, h, w]
    ++ noisy latent (C channels, never the image latent) --> own CogVideoXPatchEmbed (+ text) --> N CogVideoXBlocks
    --> block i's video tokens --out_projs[i] (zero-init Linear)--> residual added to backbone block i (i < N).

State-dict names and shapes equal the public CogVideoX ControlNet checkpoints (``CogVideoXControlnet`` of
TheDenk/cogvideox-controlnet: ``controlnet_encode_first.0/1``, ``controlnet_encode_second.0/1``,
``patch_embed.*``, ``time_embedding.*``, ``transformer_blocks.<i>.*``), because the same diffusers submodules sit
under the same names. The one addition is ``out_projs.<i>`` (zero-initialised so an untrained branch leaves the
backbone unchanged); files without them (the public checkpoints) load with ``out_proj=False``: residuals added
directly, as there.

Shapes: B batch, F pixel frames, f latent frames, C latent channels, H, W pixels, h = H/d, w = W/d, N tokens.
"""
from __future__ import annotations

import inspect
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones.base import Attachment, cast, init_generator, plain_state_dict, seeded_init
from . import registry
from .base import ControlBranch

KIND = "kinemask"


def _compress_time(x: torch.Tensor, frames: int) -> torch.Tensor:
    """[B*F, C, h, w] -> [B*F', C, h, w], averaging frame pairs; with odd F frame 0 stays alone (causal VAE)."""
    bf, c, h, w = x.shape
    b = bf // frames
    x = x.view(b, frames, c, h, w)
    if frames % 2 == 1:
        rest = x[:, 1:]
        if rest.shape[1] > 0:
            rest = rest.reshape(b, (frames - 1) // 2, 2, c, h, w).mean(2)
        x = torch.cat([x[:, :1], rest], dim=1)
    else:
        x = x.reshape(b, frames // 2, 2, c, h, w).mean(2)
    return x.flatten(0, 1)


def time_halvings(temporal_compression_ratio: int) -> int:
    """How many times the control encoder halves time to match the VAE: 1 -> 0, 2 -> 1, 4 -> 2 (released)."""
    t = int(temporal_compression_ratio)
    if t not in (1, 2, 4):
        raise ValueError(f"KineMask branch: temporal_compression_ratio must be 1, 2 or 4 (the VAE's); got {t}")
    return t.bit_length() - 1


def compressed_frames(frames: int, temporal_compression_ratio: int = 4) -> int:
    """Frame count after the control encoder's time compressions (49 -> 25 -> 13 at the released 4x)."""
    for _ in range(time_halvings(temporal_compression_ratio)):
        frames = 1 + (frames - 1) // 2 if frames % 2 == 1 else frames // 2
    return frames


try:
    from diffusers.configuration_utils import ConfigMixin, register_to_config
    from diffusers.models.modeling_utils import ModelMixin
except ImportError:  # pragma: no cover
    raise


class KineMaskBranch(ModelMixin, ConfigMixin):
    """The control branch (ComfyUI type INTERPLAY_BRANCH via :class:`ControlBranch`, kind "kinemask").

    Config names follow the public ``CogVideoXControlnet`` (so its config.json loads as is), plus
    ``text_embed_dim``, ``max_text_seq_length``, ``patch_bias``, ``patch_size_t`` (taken from the backbone)
    and ``out_proj``.
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(self, num_attention_heads: int = 30, attention_head_dim: int = 64, vae_channels: int = 16,
                 in_channels: int = 3, downscale_coef: int = 8, flip_sin_to_cos: bool = True, freq_shift: int = 0,
                 time_embed_dim: int = 512, num_layers: int = 8, dropout: float = 0.0, attention_bias: bool = True,
                 sample_width: int = 90, sample_height: int = 60, sample_frames: int = 49, patch_size: int = 2,
                 temporal_compression_ratio: int = 4, max_text_seq_length: int = 226,
                 activation_fn: str = "gelu-approximate", timestep_activation_fn: str = "silu",
                 norm_elementwise_affine: bool = True, norm_eps: float = 1e-5,
                 spatial_interpolation_scale: float = 1.875, temporal_interpolation_scale: float = 1.0,
                 use_rotary_positional_embeddings: bool = False, use_learned_positional_embeddings: bool = False,
                 text_embed_dim: int = 4096, out_proj: bool = True):
        super().__init__()
        from diffusers.models.embeddings import CogVideoXPatchEmbed, TimestepEmbedding, Timesteps
        from diffusers.models.transformers.cogvideox_transformer_3d import CogVideoXBlock

        inner = num_attention_heads * attention_head_dim
        time_halvings(temporal_compression_ratio)  # fail early on a ratio the control encoder cannot mirror
        c0 = in_channels * downscale_coef ** 2
        chans = [c0, c0 // 2, c0 // 4]
        self.unshuffle = nn.PixelUnshuffle(downscale_coef)
        self.controlnet_encode_first = nn.Sequential(nn.Conv2d(chans[0], chans[1], 1), nn.GroupNorm(2, chans[1]),
                                                     nn.ReLU())
        self.controlnet_encode_second = nn.Sequential(nn.Conv2d(chans[1], chans[2], 1), nn.GroupNorm(2, chans[2]),
                                                      nn.ReLU())
        self.patch_embed = CogVideoXPatchEmbed(
            patch_size=patch_size, in_channels=vae_channels + chans[2], embed_dim=inner,
            text_embed_dim=text_embed_dim, bias=True, sample_width=sample_width, sample_height=sample_height,
            sample_frames=sample_frames, temporal_compression_ratio=temporal_compression_ratio,
            max_text_seq_length=max_text_seq_length, spatial_interpolation_scale=spatial_interpolation_scale,
            temporal_interpolation_scale=temporal_interpolation_scale,
            use_positional_embeddings=not use_rotary_positional_embeddings,
            use_learned_positional_embeddings=use_learned_positional_embeddings)
        self.embedding_dropout = nn.Dropout(dropout)
        self.time_proj = Timesteps(inner, flip_sin_to_cos, freq_shift)
        self.time_embedding = TimestepEmbedding(inner, time_embed_dim, timestep_activation_fn)
        self.transformer_blocks = nn.ModuleList([
            CogVideoXBlock(dim=inner, num_attention_heads=num_attention_heads, attention_head_dim=attention_head_dim,
                           time_embed_dim=time_embed_dim, dropout=dropout, activation_fn=activation_fn,
                           attention_bias=attention_bias, norm_elementwise_affine=norm_elementwise_affine,
                           norm_eps=norm_eps) for _ in range(num_layers)])
        if out_proj:
            self.out_projs = nn.ModuleList([nn.Linear(inner, inner) for _ in range(num_layers)])
            for lin in self.out_projs:
                nn.init.zeros_(lin.weight)
                nn.init.zeros_(lin.bias)
        else:
            self.out_projs = None
        self.gradient_checkpointing = False

    # ----------------------------------------------------------------------------------------- building
    @classmethod
    def from_transformer(cls, transformer, num_layers: int = 8, downscale: int = 8, in_channels: int = 3,
                         out_proj: bool = True, init_blocks: bool = True,
                         generator: torch.Generator | None = None) -> "KineMaskBranch":
        """A branch sized like ``transformer`` (a CogVideoXTransformer3DModel): blocks, text projection, time
        embedding (and learned positions) copied from its first ``num_layers`` blocks; the patch-embedding
        projection is new (more input channels); out projections zero. Whatever is not copied (the control
        encoder) is drawn from ``generator`` (default: backbones.base.init_generator(0)), never the global RNG."""
        c = transformer.config
        if num_layers > c.num_layers:
            raise ValueError(f"KineMask branch: num_layers {num_layers} exceeds the backbone's {c.num_layers} blocks")
        vae_channels = c.out_channels
        with torch.random.fork_rng(devices=[]):  # the default init is redrawn below: keep the global RNG unmoved
            branch = cls(num_attention_heads=c.num_attention_heads, attention_head_dim=c.attention_head_dim,
                         vae_channels=vae_channels, in_channels=in_channels, downscale_coef=downscale,
                         flip_sin_to_cos=c.flip_sin_to_cos, freq_shift=c.freq_shift, time_embed_dim=c.time_embed_dim,
                         num_layers=num_layers, attention_bias=c.attention_bias, sample_width=c.sample_width,
                         sample_height=c.sample_height, sample_frames=c.sample_frames, patch_size=c.patch_size,
                         temporal_compression_ratio=c.temporal_compression_ratio,
                         max_text_seq_length=c.max_text_seq_length, activation_fn=c.activation_fn,
                         timestep_activation_fn=c.timestep_activation_fn,
                         norm_elementwise_affine=c.norm_elementwise_affine, norm_eps=c.norm_eps,
                         spatial_interpolation_scale=c.spatial_interpolation_scale,
                         temporal_interpolation_scale=c.temporal_interpolation_scale,
                         use_rotary_positional_embeddings=c.use_rotary_positional_embeddings,
                         use_learned_positional_embeddings=c.use_learned_positional_embeddings,
                         text_embed_dim=c.text_embed_dim, out_proj=out_proj)
        src = plain_state_dict(transformer) if init_blocks else {}
        own = branch.state_dict()
        copy = {k: v for k, v in src.items() if k in own and own[k].shape == v.shape
                and not k.startswith("patch_embed.proj.")
                and (not k.startswith("transformer_blocks.") or int(k.split(".")[1]) < num_layers)}
        seeded_init(branch, generator if generator is not None else init_generator(0), skip=copy)
        if branch.out_projs is not None:
            for lin in branch.out_projs:
                torch.nn.init.zeros_(lin.weight)
                torch.nn.init.zeros_(lin.bias)
        p = next(transformer.parameters())
        cast(branch, device=p.device, dtype=p.dtype)
        if init_blocks:
            branch.load_state_dict(copy, strict=False)
            # the latent half of the new patch projection starts as the backbone's noisy-latent filter
            w = transformer.patch_embed.proj.weight
            with torch.no_grad():
                if w.ndim == branch.patch_embed.proj.weight.ndim:
                    branch.patch_embed.proj.weight.zero_()
                    branch.patch_embed.proj.weight[:, :vae_channels] = w[:, :vae_channels]
                    branch.patch_embed.proj.bias.copy_(transformer.patch_embed.proj.bias)
        return branch

    # ------------------------------------------------------------------------------------------ forward
    def encode_control(self, control: torch.Tensor) -> torch.Tensor:
        """control [B,F,3,H,W] in [-1,1] -> [B,f,3d^2/4,h,w]."""
        b, frames = control.shape[:2]
        n = time_halvings(self.config.temporal_compression_ratio)  # 2 as released (the VAE's 4x)
        x = self.unshuffle(control.flatten(0, 1))
        x = self.controlnet_encode_first(x)
        if n >= 1:
            x = _compress_time(x, frames)
        frames = x.shape[0] // b
        x = self.controlnet_encode_second(x)
        if n >= 2:
            x = _compress_time(x, frames)
        return x.view(b, x.shape[0] // b, *x.shape[1:])

    def forward(self, latent_in: torch.Tensor, control: torch.Tensor, prompt_embeds: torch.Tensor,
                timestep: torch.Tensor, rotary=None, control_features: torch.Tensor | None = None
                ) -> list[torch.Tensor]:
        """Residuals for backbone blocks 0..N-1, each [B, f*h/p*w/p, inner].

        Args:
            latent_in: [B,f,C or 2C,h,w] the backbone's input; only the first ``vae_channels`` (the noisy
                latent) are used.
            control: [B,F,3,H,W] in [-1,1] (ignored when ``control_features`` [B,f,c,h,w] is given, e.g. the
                same encoded control reused across steps).
            prompt_embeds: [B,T,D]; timestep: [B]; rotary: the backbone's (cos, sin) or None.
        """
        x = latent_in[:, :, : self.config.vae_channels]
        feats = control_features if control_features is not None else self.encode_control(control.to(x.dtype))
        if feats.shape[1] != x.shape[1] or feats.shape[-2:] != x.shape[-2:]:
            raise ValueError(
                f"KineMask branch: control encodes to {feats.shape[1]} frames of {tuple(feats.shape[-2:])} but the "
                f"latent has {x.shape[1]} frames of {tuple(x.shape[-2:])}; the control video must have the "
                f"generated frame count and size (downscale {self.config.downscale_coef} = the VAE's).")
        if feats.shape[0] != x.shape[0]:  # one control for the CFG pair
            feats = feats.expand(x.shape[0], *feats.shape[1:])
        x = torch.cat([x, feats.to(x.dtype)], dim=2)
        t_emb = self.time_proj(timestep).to(dtype=x.dtype)
        emb = self.time_embedding(t_emb)
        h = self.embedding_dropout(self.patch_embed(prompt_embeds, x))
        n_text = prompt_embeds.shape[1]
        enc, h = h[:, :n_text], h[:, n_text:]
        outs = []
        for i, block in enumerate(self.transformer_blocks):
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                h, enc = self._gradient_checkpointing_func(block, h, enc, emb, rotary)
            else:
                h, enc = block(hidden_states=h, encoder_hidden_states=enc, temb=emb, image_rotary_emb=rotary)
            outs.append(self.out_projs[i](h) if self.out_projs is not None else h)
        return outs


# ------------------------------------------------------------------------------------------------- files
def new_branch(transformer, *, num_layers: int = 8, downscale: int = 8, **kw) -> ControlBranch:
    """A fresh trainable branch on ``transformer`` wrapped as a :class:`ControlBranch` (``generator=``: the run's
    init generator; the same generator state gives the same branch)."""
    m = KineMaskBranch.from_transformer(transformer, num_layers=num_layers, downscale=downscale, **kw)
    return ControlBranch(kind=KIND, family="cogvideox", module=m, config=dict(m.config), source="init")


def _clean_config(cfg) -> dict:
    return {k: v for k, v in dict(cfg).items() if not k.startswith("_")}


def branch_state_dict(m) -> dict:
    """What a branch file holds: the branch's parameters, all of them trained. Its only persistent buffer,
    ``patch_embed.pos_embedding`` (the learned positional table of 5B-I2V-style backbones, 109 MB in fp16 at 5B),
    is a frozen copy of the backbone's; the branch reads the backbone's table when it runs
    (:func:`use_backbone_positions`), so files never carry it."""
    return dict(m.named_parameters())


def use_backbone_positions(m, transformer) -> None:
    """Point the branch's learned positional table at its backbone's (a shared tensor, not a copy): the table is
    never trained, a branch made by from_transformer starts with the backbone's, and a loaded file holds none."""
    own = getattr(m, "patch_embed", None)  # model_forward also takes other modules as a branch (combined ones)
    table = getattr(transformer.patch_embed, "pos_embedding", None)
    if (own is not None and getattr(own, "use_learned_positional_embeddings", False) and table is not None
            and own.pos_embedding.shape == table.shape and own.pos_embedding is not table):
        own.pos_embedding = table


def save_branch(branch, path) -> Path:
    """Write one safetensors file of :func:`branch_state_dict` with the config JSON in its metadata
    (``interplay_config``, ``kind``, ``family``)."""
    from safetensors.torch import save_file

    m = branch.module if isinstance(branch, ControlBranch) else branch
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().contiguous().cpu() for k, v in branch_state_dict(m).items()}
    meta = {"format": "pt", "kind": KIND, "family": "cogvideox",
            "interplay_config": json.dumps(_clean_config(m.config))}
    tmp = path.with_name(path.name + ".tmp")
    save_file(sd, str(tmp), metadata=meta)
    tmp.replace(path)
    return path


# Config values no weight shape pins down, bounded so a file's config cannot size a model (or a loop) the file
# does not hold; the shape-pinned ones must agree with the weights (weights.check_config).
CONFIG_BOUNDS = dict(num_attention_heads=(1, 256), attention_head_dim=(1, 1024), vae_channels=(1, 1024),
                     in_channels=(1, 64), downscale_coef=(1, 64), time_embed_dim=(1, 1 << 16), num_layers=(1, 256),
                     dropout=(0, 1), sample_width=(1, 4096), sample_height=(1, 4096), sample_frames=(1, 4096),
                     patch_size=(1, 64), temporal_compression_ratio=(1, 4), max_text_seq_length=(1, 4096),
                     norm_eps=(0, 1), spatial_interpolation_scale=(0, 1e4), temporal_interpolation_scale=(0, 1e4),
                     text_embed_dim=(1, 1 << 16), freq_shift=(-1e4, 1e4))
_WHAT = "KineMask branch"


def infer_branch_config(sd: dict, in_channels: int = 3) -> dict:
    """Config from the weights (tensors or the meta tensors of ``weights.read_header``) of a KineMask/CogVideoX-
    ControlNet file; every value here is pinned by a shape or a key (``in_channels`` is the control video's, 3 in
    every release). Raises KeyError for a file that is not such a branch."""
    pe = sd["patch_embed.proj.weight"]
    first = sd["controlnet_encode_first.0.weight"]
    head_dim = sd["transformer_blocks.0.attn1.norm_q.weight"].shape[0]
    inner = pe.shape[0]
    n = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("transformer_blocks."))
    c0 = first.shape[1]
    d = int(round((c0 / in_channels) ** 0.5))
    return dict(num_attention_heads=inner // head_dim, attention_head_dim=head_dim,
                vae_channels=pe.shape[1] - c0 // 4, downscale_coef=d,
                time_embed_dim=sd["time_embedding.linear_1.weight"].shape[0], num_layers=n,
                patch_size=pe.shape[-1], text_embed_dim=sd["patch_embed.text_proj.weight"].shape[1],
                out_proj=any(k.startswith("out_projs.") for k in sd))


def load_branch(path, *, dtype=None, device=None) -> ControlBranch:
    """Load a branch: our safetensors file, a diffusers folder (config.json + diffusion_pytorch_model
    .safetensors, e.g. the public CogVideoX ControlNets), or a bare safetensors file (config from shapes).

    Nothing is allocated before the file is known to fit: the header is read first, the config (metadata or
    config.json) must agree with the weights' shapes and stay in CONFIG_BOUNDS, the model is built on the meta
    device and every key and shape compared; only then are the weights read and put in place."""
    from ..backbones.cogvideox import _fix_buffers
    from ..weights import (WeightsFileError, build_checked, check_config, metadata_json, read_header,
                           read_json_config, read_safetensors)

    path = Path(path)
    if path.is_dir():
        cfg_file = path / "config.json"
        files = sorted(path.glob("*.safetensors"))
        if not cfg_file.is_file() or not files:
            raise FileNotFoundError(f"{_WHAT}: folder {path} needs config.json and a .safetensors file")
        cfg = read_json_config(cfg_file, _WHAT)
        wfile = files[0]
    elif path.is_file():
        cfg, wfile = None, path
    else:
        raise FileNotFoundError(f"{_WHAT}: {str(path)!r} not found (a .safetensors file or a folder)")
    header, meta = read_header(wfile, _WHAT)
    if cfg is None and "interplay_config" in meta:
        kind = meta.get("kind", KIND)
        if kind != KIND:
            raise ValueError(f"{_WHAT}: {path.name} holds a {kind!r} branch, not a KineMask branch")
        cfg = metadata_json(meta, "interplay_config", wfile, _WHAT)
    cfg = _clean_config(cfg or {})
    in_ch = cfg.get("in_channels", 3)
    check_config({"in_channels": in_ch}, CONFIG_BOUNDS, wfile, _WHAT)
    try:
        shaped = infer_branch_config(header, in_channels=int(in_ch))
    except (KeyError, ValueError) as e:
        raise ValueError(f"{_WHAT}: {path.name} is not a CogVideoX ControlNet/KineMask file (missing {e}; "
                         "expected controlnet_encode_first.0.weight, patch_embed.proj.weight, transformer_blocks.*)")
    defaults = dict(in_channels=3, use_rotary_positional_embeddings=shaped["num_attention_heads"]
                    * shaped["attention_head_dim"] != 1920,
                    use_learned_positional_embeddings="patch_embed.pos_embedding" in header)
    cfg = check_config({**defaults, **cfg}, CONFIG_BOUNDS, wfile, _WHAT, inferred=shaped)
    known = set(inspect.signature(KineMaskBranch.__init__).parameters) - {"self"}
    args = {k: v for k, v in cfg.items() if k in known}
    m = build_checked(lambda: KineMaskBranch(**args), header, wfile, _WHAT, optional=("pos_embedding",),
                      fix="Pick a KineMask branch trained for this backbone, or save it again.")
    sd = read_safetensors(wfile, _WHAT)[0]
    m.load_state_dict(sd, strict=False, assign=True)  # the file's tensors, no random init to throw away
    _fix_buffers(m)
    left = [n for n, t in list(m.named_parameters()) + list(m.named_buffers()) if t.is_meta]
    if left:
        raise WeightsFileError(f"{_WHAT}: {wfile}: {left[0]} was not restored from the file")
    m.requires_grad_(False).eval()
    cast(m, device=device, dtype=dtype if dtype is not None else torch.float32)
    return ControlBranch(kind=KIND, family="cogvideox", module=m, config=dict(cfg), source=str(path))


# ------------------------------------------------------------------------------ the forward contract
class KineMaskAttachment(Attachment):
    """KineMask on the CogVideoX forward: the branch runs at ``begin`` on the noisy latent, the encoded control,
    the text and the timestep, and residual i is added to the video tokens after backbone block i, times the
    control's weight (a float, or one per branch block).

    ``entries``: ``(video, weight, start, end)`` per control through this branch; ``video`` is [B|1,F,3,H,W] in
    [-1,1] at the generation size, encoded once and reused over steps. Several controls through one branch run
    the branch once each and add the sum of their weighted residuals. On batch rows named "no_control" (control
    guidance) the control is zeroed: the branch sees the encoding of an all-zero video, the "no information"
    input stage-2 dropout trains.
    """

    def __init__(self, module: KineMaskBranch, entries, reuse: bool = True):
        self.module = module
        self.entries = [dict(video=v, weight=w, start=s, end=e, feats=None) for v, w, s, e in entries]
        self.reuse = reuse  # False: a per-batch control (training), encoded inside the branch's own forward
        self._zero = None

    @classmethod
    def from_bound(cls, branch: ControlBranch, bound, backbone=None) -> "KineMaskAttachment":
        if backbone is not None:
            vs = backbone.extra.get("vae_scale_factor_spatial", 8)
            if branch.module.config.downscale_coef != vs:
                raise ValueError(f"KineMask branch: it downscales by {branch.module.config.downscale_coef} but the "
                                 f"VAE by {vs}; load a branch made for this backbone")
        entries = []
        for bc in bound:
            video = bc.signal.video.permute(0, 3, 1, 2)[None]  # [1,F,3,H,W]
            entries.append((video, bc.weight, bc.start, bc.end))
        return cls(branch.module, entries)

    @classmethod
    def from_features(cls, module: KineMaskBranch, features: torch.Tensor, weight=1.0) -> "KineMaskAttachment":
        """An attachment on control features already encoded (``module.encode_control``), e.g. a benchmark's."""
        att = cls(module, [(None, weight, 0.0, 1.0)])
        att.entries[0]["feats"] = features
        return att

    def modules(self):
        return [self.module]

    def _features(self, e, ctx):
        x = ctx.latent_in
        if e["video"] is None:
            return e["feats"]
        if e["feats"] is None or e["feats"].device != x.device or e["feats"].dtype != x.dtype:
            e["feats"] = self.module.encode_control(e["video"].to(x.device, x.dtype))
        return e["feats"]

    def _row_features(self, ctx, fe):
        """Per batch row: the control's features, zero-control features on "no_control" rows."""
        if "no_control" not in ctx.rows:
            return fe
        if self._zero is None or self._zero.device != fe.device or self._zero.dtype != fe.dtype:
            ref = next(e["video"] for e in self.entries if e["video"] is not None)
            self._zero = self.module.encode_control(torch.zeros(ref.shape[1:], dtype=fe.dtype,
                                                                device=fe.device)[None])
        parts = []
        for name, sl in ctx.rows.items():
            n = len(range(*sl.indices(ctx.batch)))
            src = self._zero if name == "no_control" else fe
            parts.append(src.expand(n, *src.shape[1:]))
        return torch.cat(parts)

    def active(self, step) -> list:
        return [e for e in self.entries
                if not (isinstance(e["weight"], (int, float)) and e["weight"] == 0)
                and (step is None or e["start"] <= step[0] / max(step[1], 1) < e["end"])]

    def begin(self, ctx):
        use_backbone_positions(self.module, ctx.bb.denoiser)
        st = ctx.state_of(self)
        active = self.active(ctx.extra.get("step"))
        st["res"] = None
        if not active:
            return
        x, enc, t = ctx.latent_in, ctx.text_in, ctx.timestep
        if len(active) == 1:
            e = active[0]
            if not self.reuse and "no_control" not in ctx.rows:
                res = self.module(x, e["video"].to(x.device, x.dtype), enc, t, rotary=ctx.rotary)
            else:
                fe = self._row_features(ctx, self._features(e, ctx))
                res = self.module(x, None, enc, t, rotary=ctx.rotary, control_features=fe)
            w = e["weight"]
            st["ws"] = list(w) if isinstance(w, (list, tuple)) else [float(w)] * len(res)
        else:
            res = None
            for e in active:
                fe = self._row_features(ctx, self._features(e, ctx))
                r = [r * e["weight"] for r in self.module(x, None, enc, t, rotary=ctx.rotary, control_features=fe)]
                res = r if res is None else [a + b for a, b in zip(res, r)]
            st["ws"] = [1.0] * len(res)
        st["res"] = res

    def after_block(self, ctx, i, hidden):
        st = ctx.state_of(self)
        res, ws = st.get("res"), st.get("ws")
        if res is not None and i < len(res) and ws[i] != 0:
            hidden = hidden + res[i].to(hidden.dtype) * ws[i]
        return hidden


def _new(backbone, num_layers: int = 8, **kw) -> ControlBranch:
    return new_branch(backbone.denoiser, num_layers=num_layers,
                      downscale=backbone.extra.get("vae_scale_factor_spatial", 8), **kw)


def _detect(meta: dict, keys) -> bool:
    # a public CogVideoX ControlNet saved as a bare file: its encoder and patch embedding names
    return keys is not None and "controlnet_encode_first.0.weight" in keys and "patch_embed.proj.weight" in keys


def _task_class():
    from ..training.kinemask import KineMaskTask

    return KineMaskTask


registry.register(registry.BranchKind(
    kind=KIND, family="cogvideox", label="KineMask branch", signals=("velocity",),
    attach=KineMaskAttachment.from_bound, load=load_branch, save=save_branch, new=_new,
    task="kinemask_branch", task_class=_task_class, folder_classes=("CogVideoXControlnet",), detect=_detect,
    hint="paint it with the Arrow Painter or Velocity Control", train_defaults={"betas": (0.9, 0.95)}))
