"""GameCraft camera encoder: Plücker ray maps -> tokens added to the video tokens after the patch embedding.

The design of GameCraft-1's CameraNet (hymm_sp/modules/cameranet.py), which GameCraft-2 adopts, sized from the
backbone (hidden 5120 and patch (1,2,2) for Wan2.2-A14B):

    plucker [B,F,6,H,W] --PixelUnshuffle(d)--> [B*F, 6d^2, H/d, W/d]         (d = the VAE's spatial factor, 8)
    --Conv1x1 6d^2 -> 3d^2 + GroupNorm(2) + ReLU-- --time /2 (frame 0 kept apart)--
    --Conv1x1 3d^2 -> 3d^2/2 + GroupNorm(2) + ReLU-- --time /2 (frame 0 kept apart)--   4x in time: 4n+1 -> n+1
    --Conv1x1 -> out_channels (16), zero-initialised--> [B,16,T,h,w]
    --Conv3d 16 -> hidden, kernel = stride = the backbone's patch size--> [B,hidden,T/pt,h/ph,w/pw]
    x scale (a learnable scalar, 1 at init)

The output has the layout of the backbone's ``patch_embedding`` output (Wan: Conv3d -> [B, dim, T, h', w']), so a
hook after that layer adds it as is, before the tokens are flattened (``tokens()`` gives the flattened
[B, T h' w', hidden] form). All zero at init: an untrained encoder leaves the backbone unchanged.

Everything but the time compression works frame by frame, and the compression pairs frames (1,2), (3,4), ...
after frame 0, so encoding a causal block's own frames (block 0: 9 frames, later blocks 12) gives exactly the
rows of encoding the whole 4n+1-frame video: a block sampler can encode block by block.

State-dict names follow GameCraft-1's CameraNet (``encode_first``, ``encode_second``, ``final_proj``,
``camera_in.proj``, ``scale``), so its weights load once converted to safetensors (they are HunyuanVideo-sized:
hidden 3072).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

from ..backbones.base import Attachment, cast
from . import registry
from .base import ControlBranch
from .kinemask import _compress_time, time_halvings

from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

KIND = "gamecraft_camera"
FAMILY = "wan"
NAME = "GameCraft camera encoder"

# The time compression is KineMask's ``_compress_time`` (imported above), the same maths as GameCraft-1's
# ``CameraNet.compress_time`` with one difference: GameCraft-1 special-cases exactly 34 and 66 input frames as two
# concatenated clips (history + current), each keeping its own first frame apart; here a frame count is always one
# clip. GameCraft-2's causal blocks (9 frames, then 12) never form such pairs, and a two-clip input is two calls.
# For every other count both average the same pairs (GameCraft-1 by avg_pool1d(2, 2), KineMask by a mean over
# pairs: the same (a + b) / 2); tests/models/control/test_gamecraft.py checks both against hand-made tensors.


class _PatchProjection(nn.Module):
    """GameCraft-1's ``camera_in`` (a PatchEmbed): one Conv3d whose kernel and stride are the patch size."""

    def __init__(self, in_channels: int, hidden_size: int, patch_size: tuple[int, int, int]):
        super().__init__()
        self.proj = nn.Conv3d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class GameCraftCameraEncoder(ModelMixin, ConfigMixin):
    """Plücker maps [B,F,6,H,W] -> camera tokens [B, hidden, T/pt, H/(d ph), W/(d pw)], zero at init.

    Config: hidden_size (the backbone's token width), in_channels (6 Plücker channels), downscale_coef (the VAE's
    spatial factor), out_channels (16, GameCraft-1's), patch_size (the backbone's (pt, ph, pw)),
    temporal_compression_ratio (the VAE's, 1, 2 or 4: how many times time is halved).
    """

    @register_to_config
    def __init__(self, hidden_size: int = 5120, in_channels: int = 6, downscale_coef: int = 8,
                 out_channels: int = 16, patch_size: tuple = (1, 2, 2), temporal_compression_ratio: int = 4):
        super().__init__()
        patch = _check_config(dict(hidden_size=hidden_size, in_channels=in_channels, downscale_coef=downscale_coef,
                                   out_channels=out_channels, patch_size=patch_size,
                                   temporal_compression_ratio=temporal_compression_ratio))["patch_size"]
        c0 = in_channels * downscale_coef ** 2
        self.unshuffle = nn.PixelUnshuffle(downscale_coef)
        self.encode_first = nn.Sequential(nn.Conv2d(c0, c0 // 2, 1), nn.GroupNorm(2, c0 // 2), nn.ReLU())
        self.encode_second = nn.Sequential(nn.Conv2d(c0 // 2, c0 // 4, 1), nn.GroupNorm(2, c0 // 4), nn.ReLU())
        self.final_proj = nn.Conv2d(c0 // 4, out_channels, 1)
        self.scale = nn.Parameter(torch.ones(1))
        self.camera_in = _PatchProjection(out_channels, hidden_size, tuple(patch))
        # GameCraft-1's initialisation: He-normal 1x1 convs, zero final projection, Xavier patch projection.
        for conv in (self.encode_first[0], self.encode_second[0]):
            nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / conv.in_channels))
            nn.init.zeros_(conv.bias)
        nn.init.zeros_(self.final_proj.weight)
        nn.init.zeros_(self.final_proj.bias)
        w = self.camera_in.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.camera_in.proj.bias)

    @classmethod
    def from_backbone_config(cls, inner_dim: int, patch_size=(1, 2, 2), vae_scale_factor_spatial: int = 8,
                             vae_scale_factor_temporal: int = 4, out_channels: int = 16) -> "GameCraftCameraEncoder":
        """An encoder for a backbone with token width ``inner_dim`` and patch ``patch_size`` behind a VAE with these
        factors (Wan2.2-A14B: 5120, (1,2,2), 8, 4; Wan2.1-1.3B: 1536)."""
        return cls(hidden_size=int(inner_dim), downscale_coef=int(vae_scale_factor_spatial),
                   out_channels=int(out_channels), patch_size=tuple(int(p) for p in patch_size),
                   temporal_compression_ratio=int(vae_scale_factor_temporal))

    # ------------------------------------------------------------------------------------------ shapes
    def latent_frames(self, frames: int) -> int:
        """Frames after the time compression (9 -> 3, 12 -> 3, 4n+1 -> n+1 at the Wan VAE's 4x)."""
        for _ in range(time_halvings(self.config.temporal_compression_ratio)):
            frames = 1 + (frames - 1) // 2 if frames % 2 == 1 else frames // 2
        return frames

    def _check_input(self, plucker: torch.Tensor) -> None:
        c = self.config
        if plucker.ndim != 5 or plucker.shape[2] != c.in_channels:
            raise ValueError(f"{NAME}: expected Plücker maps [B,F,{c.in_channels},H,W]; got {tuple(plucker.shape)}")
        pt, ph, pw = c.patch_size
        h, w = plucker.shape[-2:]
        if h % (c.downscale_coef * ph) or w % (c.downscale_coef * pw):
            raise ValueError(f"{NAME}: maps of {w}x{h} px do not divide into {c.downscale_coef * pw}x"
                             f"{c.downscale_coef * ph} patches (VAE factor x patch); give the generated size")
        t = self.latent_frames(plucker.shape[1])
        if t % pt:
            raise ValueError(f"{NAME}: {plucker.shape[1]} frames compress to {t} latent frames, not a multiple of "
                             f"the temporal patch {pt}")

    # ----------------------------------------------------------------------------------------- forward
    def encode(self, plucker: torch.Tensor) -> torch.Tensor:
        """[B,F,6,H,W] -> the features before the patch projection [B, out_channels, T, H/d, W/d]."""
        self._check_input(plucker)
        b, frames = plucker.shape[:2]
        n = time_halvings(self.config.temporal_compression_ratio)
        x = self.unshuffle(plucker.to(self.final_proj.weight.dtype).flatten(0, 1))
        x = self.encode_first(x)
        if n >= 1:
            x = _compress_time(x, frames)
        x = self.encode_second(x)
        if n >= 2:
            x = _compress_time(x, x.shape[0] // b)
        x = self.final_proj(x)
        return x.view(b, x.shape[0] // b, *x.shape[1:]).transpose(1, 2)

    def forward(self, plucker: torch.Tensor) -> torch.Tensor:
        """Plücker maps [B,F,6,H,W] -> [B, hidden, T/pt, H/(d ph), W/(d pw)] (the patch embedding's layout)."""
        # 1. pixel-unshuffle, 1x1 convolutions, 4x time compression, zero-init projection
        x = self.encode(plucker)
        # 2. patchify to the backbone's token width, times the learnable scale
        return self.camera_in(x) * self.scale

    def tokens(self, plucker: torch.Tensor) -> torch.Tensor:
        """The same as flattened tokens [B, T' h' w', hidden] (frame-major, as Wan flattens its patches)."""
        return self.forward(plucker).flatten(2).transpose(1, 2)


# ---------------------------------------------------------------------------------------------- config
_BOUNDS = {"hidden_size": 65536, "in_channels": 64, "downscale_coef": 32, "out_channels": 4096}


def _check_config(cfg: dict, where: str = NAME) -> dict:
    """Validate constructor arguments (also a file's metadata, before anything is built)."""
    out = dict(cfg)
    for k, hi in _BOUNDS.items():
        v = out.get(k)
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= hi:
            raise ValueError(f"{where}: {k} must be a whole number in 1..{hi}; got {v!r}")
    p = out.get("patch_size")
    if (not isinstance(p, (list, tuple)) or len(p) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 16 for v in p)):
        raise ValueError(f"{where}: patch_size must be three whole numbers in 1..16 (pt, ph, pw); got {p!r}")
    out["patch_size"] = tuple(p)
    try:
        time_halvings(out.get("temporal_compression_ratio"))
    except (ValueError, TypeError):
        raise ValueError(f"{where}: temporal_compression_ratio must be 1, 2 or 4 (the VAE's); got "
                         f"{out.get('temporal_compression_ratio')!r}") from None
    c0 = out["in_channels"] * out["downscale_coef"] ** 2
    if c0 % 8:
        raise ValueError(f"{where}: in_channels * downscale_coef^2 = {c0} must be a multiple of 8 (two halvings "
                         "into GroupNorm(2) groups)")
    return out


def _clean_config(cfg) -> dict:
    d = {k: v for k, v in dict(cfg).items() if not k.startswith("_")}
    d["patch_size"] = list(d["patch_size"])
    return d


def infer_config(shapes: dict) -> dict:
    """Config from a file's tensor shapes (a converted GameCraft-1 CameraNet has no metadata)."""
    try:
        proj = shapes["camera_in.proj.weight"]
        first = shapes["encode_first.0.weight"]
    except KeyError as e:
        raise ValueError(f"{NAME}: not a camera-encoder file (missing {e}; expected encode_first.0.weight, "
                         "camera_in.proj.weight, final_proj.weight)") from None
    in_ch = 6
    d = int(round(math.sqrt(first[1] / in_ch)))
    return dict(hidden_size=int(proj[0]), in_channels=in_ch, downscale_coef=d, out_channels=int(proj[1]),
                patch_size=tuple(int(v) for v in proj[2:]), temporal_compression_ratio=4)


# ----------------------------------------------------------------------------------------------- files
def new_encoder(inner_dim: int, patch_size=(1, 2, 2), vae_scale_factor_spatial: int = 8,
                vae_scale_factor_temporal: int = 4, *, family: str = FAMILY) -> ControlBranch:
    """A fresh (zero-output) encoder wrapped as a :class:`ControlBranch` of kind "gamecraft_camera"."""
    m = GameCraftCameraEncoder.from_backbone_config(inner_dim, patch_size, vae_scale_factor_spatial,
                                                    vae_scale_factor_temporal)
    return ControlBranch(kind=KIND, family=family, module=m, config=_clean_config(m.config), source="init")


def save_encoder(encoder, path) -> Path:
    """One safetensors file, config JSON in the metadata (``interplay_config``, ``kind``, ``family``); atomic."""
    from ..training.trainer import save_safetensors_atomic

    family = encoder.family if isinstance(encoder, ControlBranch) else FAMILY
    m = encoder.module if isinstance(encoder, ControlBranch) else encoder
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": "pt", "kind": KIND, "family": family, "interplay_config": json.dumps(_clean_config(m.config))}
    save_safetensors_atomic(m.state_dict(), path, metadata=meta)
    return path


def load_encoder(path, *, dtype=None, device=None) -> ControlBranch:
    """Load an encoder file: the config comes from its metadata (or, without one, from its shapes), the module is
    built on the meta device and its shapes compared with the file's header before any weight is read."""
    from ..weights import header_shapes, read_header, read_safetensors

    path = Path(path)
    tensors, meta = read_header(path, NAME)
    shapes = header_shapes(tensors)
    kind = meta.get("kind", KIND)
    if kind != KIND:
        raise ValueError(f"{NAME}: {path.name} holds a {kind!r} file, not a camera encoder ({KIND!r})")
    if "interplay_config" in meta:
        try:
            cfg = json.loads(meta["interplay_config"])
        except json.JSONDecodeError as e:
            raise ValueError(f"{NAME}: {path.name} has unreadable config metadata ({e.msg}); save it again") from None
        if not isinstance(cfg, dict):
            raise ValueError(f"{NAME}: {path.name}'s config metadata is not an object")
    else:
        cfg = infer_config(shapes)
    known = ("hidden_size", "in_channels", "downscale_coef", "out_channels", "patch_size",
             "temporal_compression_ratio")
    cfg = _check_config({k: cfg.get(k) for k in known}, f"{NAME} ({path.name})")
    with torch.device("meta"):
        m = GameCraftCameraEncoder(**cfg)
    want = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    missing = sorted(set(want) - set(shapes))
    extra = sorted(set(shapes) - set(want))
    bad = [(k, shapes[k], want[k]) for k in want if k in shapes and tuple(shapes[k]) != want[k]]
    if missing or extra or bad:
        parts = [f"{k}: file {a} expected {b}" for k, a, b in bad[:4]]
        if missing:
            parts.append(f"missing {missing[:4]}")
        if extra:
            parts.append(f"unexpected {extra[:4]}")
        raise ValueError(f"{NAME}: {path.name} does not match its config {cfg}: " + "; ".join(parts))
    sd, _ = read_safetensors(path, NAME)
    m.load_state_dict(sd, strict=True, assign=True)
    m.requires_grad_(False).eval()
    if dtype is not None or device is not None:
        cast(m, device=device, dtype=dtype)
    return ControlBranch(kind=KIND, family=meta.get("family", FAMILY), module=m, config=_clean_config(m.config),
                         source=str(path))


# ------------------------------------------------------------------------------------------ the signal
SIGNAL = "camera"
UNCOND_ROWS = ("uncond", "no_control")  # rows that see the identity-pose embedding (GameCraft's unconditional)


def camera_signal(trajectory, height: int, width: int, *, weight: float = 1.0, start: float = 0.0,
                  end: float = 1.0):
    """A ControlSignal of kind "camera" for a CameraTrajectory.

    The signal's ``meta["camera"]`` holds the trajectory itself: the attachment computes exact Plücker rays from
    its poses at the size and for the frames each forward generates (a causal block, a whole clip, a continued
    session), so nothing is resampled. ``video`` holds the same rays at 1/8 of ``height`` x ``width``
    ([F, H/8, W/8, 6], one ray per latent pixel: small, for inspection and for code that only reads videos);
    ``meta["recompute"]`` tells the samplers not to resize it. A "camera" signal without a trajectory in its meta
    (Plücker maps made elsewhere, [F, H, W, 6]) is read from ``video`` instead (resized to the generation size).
    """
    from .base import ControlSignal

    h, w = max(1, int(height) // 8), max(1, int(width) // 8)
    rays = trajectory.plucker(h, w).permute(0, 2, 3, 1).contiguous()  # [F, h, w, 6]
    return ControlSignal(video=rays, kind=SIGNAL, weight=float(weight), start=float(start), end=float(end),
                         meta={"camera": trajectory, "recompute": True, "height": int(height), "width": int(width),
                               "fps": float(trajectory.fps), "start_frame": int(trajectory.start_frame)})


def pixel_frames(a: int, b: int, temporal: int = 4) -> tuple[int, int]:
    """Absolute pixel frames (first, last inclusive) of latent frames [a, b) under a causal VAE of ``temporal``x:
    latent 0 is pixel 0, latent k >= 1 is pixels temporal(k-1)+1 .. temporal k. The camera encoder compresses time
    the same way, so the encoder on these frames gives exactly latent rows a..b-1 of the whole clip's encoding."""
    if not 0 <= a < b:
        raise ValueError(f"latent frame range must satisfy 0 <= a < b; got [{a}, {b})")
    return (0 if a == 0 else temporal * (a - 1) + 1), temporal * (b - 1)


def identity_trajectory_like(trajectory):
    """The same frames with every pose the identity (GameCraft's unconditional camera)."""
    from ..conditions.camera import CameraTrajectory

    eye = torch.eye(4, dtype=torch.float64).expand(trajectory.num_frames, 4, 4).clone()
    return CameraTrajectory(c2w=eye, intrinsics=trajectory.intrinsics, fps=trajectory.fps, grid=trajectory.grid,
                            start_frame=trajectory.start_frame, source="poses")


# -------------------------------------------------------------------------------------------- attachment
class GameCraftCameraAttachment(Attachment):
    """The camera encoder on the forward contract: its tokens added to the video tokens right after the patch
    embedding (``after_embed``), GameCraft's ``img = img_in(x) + camera_latents``.

    Which frames: the forward's latent frames [rope_offset, rope_offset + f) (``ctx.extra["rope_offset"]``, 0 for a
    whole clip), so a causal sampler's block at its absolute position gets the tokens of its own pixel frames
    (:func:`pixel_frames`); rays are computed at the generated size (latent grid x the VAE factor). Rows: the
    guided step's "uncond" and "no_control" rows get the identity-pose embedding (GameCraft's unconditional
    camera), every other row the commanded camera. Tokens are computed once per (frames, size, device, dtype) and
    reused by every step of a block. Several entries (camera signals) add up, each times its weight, in its step
    range.

    ``entries``: (source, weight, start, end) where source is a CameraTrajectory, a Plücker video [F, H', W', 6]
    (absolute frames from 0), or a batch of Plücker maps [B, F, 6, H, W] (training: one camera per sample,
    already at the size, frames 0..F-1).
    """

    def __init__(self, module: GameCraftCameraEncoder, entries, *, vae_scale: int | None = None):
        self.module = module
        self.entries = [dict(src=s, weight=w, start=a, end=b) for s, w, a, b in entries]
        self.vae_scale = vae_scale
        self._memo: dict = {}

    @classmethod
    def from_bound(cls, branch: ControlBranch, bound, backbone=None) -> "GameCraftCameraAttachment":
        m = branch.module
        vs = None
        if backbone is not None:
            vs = int(backbone.extra.get("vae_scale_factor_spatial", 8))
            _check_fits(m, backbone)
        entries = []
        for bc in bound:
            sig = bc.signal
            src = sig.meta.get("camera") if isinstance(sig.meta, dict) else None
            entries.append((src if src is not None else sig.video, bc.weight, bc.start, bc.end))
        return cls(m, entries, vae_scale=vs)

    @classmethod
    def from_plucker(cls, module: GameCraftCameraEncoder, plucker: torch.Tensor, weight=1.0):
        """Per-sample Plücker maps [B, F, 6, H, W] (training batches)."""
        return cls(module, [(plucker, weight, 0.0, 1.0)])

    def modules(self):
        return [self.module]

    def active(self, step) -> list:
        return [e for e in self.entries if e["weight"] != 0
                and (step is None or e["start"] <= step[0] / max(step[1], 1) < e["end"])]

    # ----------------------------------------------------------------------------------------- rays
    def _rays(self, src, first: int, last: int, height: int, width: int, identity: bool) -> torch.Tensor:
        """Plücker maps [F, 6, H, W] (float32, CPU) of absolute pixel frames first..last."""
        from ..conditions.camera import CameraTrajectory

        n = last - first + 1
        if isinstance(src, CameraTrajectory):
            lo, hi = first - src.start_frame, last + 1 - src.start_frame
            if lo < 0 or hi > src.num_frames:
                raise ValueError(f"{NAME}: the forward needs camera frames {first}..{last} but the camera covers "
                                 f"{src.start_frame}..{src.start_frame + src.num_frames - 1}; give a camera path "
                                 "as long as the video (Key Timeline num_frames, or more keys)")
            if identity:
                src = identity_trajectory_like(src)
            return src.plucker(height, width, rows=slice(lo, hi))
        video = src  # [F, H', W', 6]
        if video.ndim != 4 or video.shape[-1] != self.module.config.in_channels:
            raise ValueError(f"{NAME}: a camera control video must be Plücker maps [F,H,W,6]; got "
                             f"{tuple(video.shape)}")
        if last >= video.shape[0]:
            raise ValueError(f"{NAME}: the forward needs camera frames {first}..{last} but the control has "
                             f"{video.shape[0]} frames; make it as long as the video")
        part = video[first:last + 1].float()
        if identity:
            from ..conditions.camera import Intrinsics, plucker_rays

            eye = torch.eye(4, dtype=torch.float64).expand(n, 4, 4)
            return plucker_rays(eye, Intrinsics(), height, width)
        if tuple(part.shape[1:3]) != (height, width):
            from ..video_io import fit_frames

            part = fit_frames(part, height, width)
        return part.permute(0, 3, 1, 2).contiguous()

    def _tokens(self, ctx, e, identity: bool) -> torch.Tensor:
        """Camera tokens [1 or B, N, D] of entry e for this forward's frames."""
        x = ctx.latent_in
        f, h, w = x.shape[2:]
        src = e["src"]
        if isinstance(src, torch.Tensor) and src.ndim == 5:  # per-sample maps of a training batch
            if identity:
                key = ("batch_identity", id(src), x.device, x.dtype)
                if key not in self._memo:
                    from ..conditions.camera import Intrinsics, plucker_rays

                    eye = torch.eye(4, dtype=torch.float64).expand(src.shape[1], 4, 4)
                    one = plucker_rays(eye, Intrinsics(), src.shape[-2], src.shape[-1])[None]
                    self._memo[key] = self.module.tokens(one.to(x.device, x.dtype))
                return self._memo[key]
            return self.module.tokens(src.to(x.device, x.dtype))
        off = int(ctx.extra.get("rope_offset", 0) or 0)
        vs = self.vae_scale or self.module.config.downscale_coef
        first, last = pixel_frames(off, off + f, self.module.config.temporal_compression_ratio)
        key = (id(src), identity, first, last, h * vs, w * vs, x.device, x.dtype)
        tok = self._memo.get(key)
        if tok is None:
            if len(self._memo) > 16:  # a long rollout: keep the memo to the recent blocks
                self._memo.clear()
            rays = self._rays(src, first, last, h * vs, w * vs, identity)
            tok = self.module.tokens(rays[None].to(x.device, x.dtype))
            self._memo[key] = tok
        return tok

    def after_embed(self, ctx, hidden):
        active = self.active(ctx.extra.get("step"))
        if not active:
            return hidden
        b = ctx.batch
        uncond = ctx.row_mask(*UNCOND_ROWS)
        total = None
        for e in active:
            cond = self._tokens(ctx, e, identity=False)
            cond = cond.expand(b, -1, -1) if cond.shape[0] == 1 else cond
            if bool(uncond.any()):
                ident = self._tokens(ctx, e, identity=True)
                ident = ident.expand(b, -1, -1) if ident.shape[0] == 1 else ident
                m = uncond.to(cond.device).view(b, 1, 1)
                cond = torch.where(m, ident, cond)
            part = cond * e["weight"]
            total = part if total is None else total + part
        if total.shape[1] != hidden.shape[1]:
            raise ValueError(f"{NAME}: {total.shape[1]} camera tokens for {hidden.shape[1]} video tokens; the "
                             "encoder's patch or VAE factor does not match the backbone")
        return hidden + total.to(hidden.dtype)


def _check_fits(module: GameCraftCameraEncoder, backbone) -> None:
    """The encoder's token width, patch and VAE factors are the backbone's (named error otherwise)."""
    c = module.config
    tr = backbone.denoiser.config
    inner = int(tr.num_attention_heads * tr.attention_head_dim)
    want = dict(hidden_size=inner, patch_size=tuple(tr.patch_size),
                downscale_coef=int(backbone.extra.get("vae_scale_factor_spatial", c.downscale_coef)),
                temporal_compression_ratio=int(backbone.extra.get("vae_scale_factor_temporal",
                                                                  c.temporal_compression_ratio)))
    have = dict(hidden_size=c.hidden_size, patch_size=tuple(c.patch_size), downscale_coef=c.downscale_coef,
                temporal_compression_ratio=c.temporal_compression_ratio)
    bad = [f"{k} {have[k]} (backbone {want[k]})" for k in want if have[k] != want[k]]
    if bad:
        raise ValueError(f"{NAME}: this encoder was made for another backbone: {', '.join(bad)}. Load the encoder "
                         f"trained for {backbone.variant}, or make a new one from this backbone")


# ------------------------------------------------------------------------------------------ registry
def _new(backbone, **kw) -> ControlBranch:
    tr = backbone.denoiser.config
    e = backbone.extra
    br = new_encoder(int(tr.num_attention_heads * tr.attention_head_dim), tuple(tr.patch_size),
                     int(e.get("vae_scale_factor_spatial", 8)), int(e.get("vae_scale_factor_temporal", 4)))
    cast(br.module, backbone.device, backbone.dtype)
    return br


def _detect(meta: dict, keys) -> bool:
    return keys is not None and "camera_in.proj.weight" in keys and "encode_first.0.weight" in keys


def _task_class():
    from ..training.gamecraft import GameCraftCameraTask

    return GameCraftCameraTask


registry.register(registry.BranchKind(
    kind=KIND, family=FAMILY, label=NAME, signals=(SIGNAL,), attach=GameCraftCameraAttachment.from_bound,
    load=load_encoder, save=save_encoder, new=_new, task="gamecraft_camera", task_class=_task_class,
    detect=_detect, hint="build it with Key Timeline or Camera From Poses, then Camera Control",
    train_defaults={"betas": (0.9, 0.999)}))
