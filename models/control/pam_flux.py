"""PAM's appearance stage: the two 6-channel XLabs-style Flux ControlNets (seed 002 §4.2).

As the public code builds them (github GasaiYU/PAM ``appearance_gen``: ``DoubleControl(controlnet1,
controlnet2)`` of two x-flux ``ControlNetFlux`` with ``controlnet_depth=2, condition_in_channels=6``; read for the
layout, this is our own code):

    physical  = controlnet1( cat(depth, normal) )      normal is black (-1) in every released run
    semantic  = controlnet2( cat(hand_keypoints, seg) )
    each: hint [B,6,H,W] in [-1,1] -> input_hint_block (8 Conv2d 3x3 with SiLU, 6->16, three stride 2: /8, the last
          zero-initialised) -> 2x2 patches (64) -> pos_embed_input (64 -> D) added to img_in(latent tokens);
          then 2 Flux double-stream blocks; controlnet_blocks[i] (D -> D, zero-init) of each block's image tokens
    frozen FLUX.1-dev:  img += res[i % 2] after double block i (all 19), res = physical + semantic (gains 1, 1)

Released file: the training script saves ``DoubleControl.state_dict()`` (keys ``controlnet1.*`` and
``controlnet2.*``, each the x-flux ``ControlNetFlux`` names) as a pickle ``controlnet.bin``. The pack reads
safetensors only; :func:`convert_release` turns that pickle into a safetensors file once (tensors only:
``torch.load(weights_only=True)``, no code runs), like SAM2 Convert. :func:`load_pam_flux` then reads
``controlnet1.*`` / ``controlnet2.*`` from one file (or two files holding one ControlNet each, bare names),
infers every size from the header's shapes (nothing from a config), builds both on the meta device, compares
every key and shape, and only then reads the tensors.

:class:`XLabsControlNet` keeps the x-flux parameter names exactly, and its ``forward`` follows ComfyUI's
XLabs-ControlNet call (``x, timesteps, context, y, guidance, hint`` in [0,1] -> ``{"input": 19 residuals}``), so
inside ComfyUI it is wrapped as a core ControlNet (``comfy.controlnet.ControlNet``) for the core Apply
ControlNet nodes; chaining the two at strength 1.0 adds them, which is PAM's sum. The hints are plain IMAGEs of
6 channels (:func:`stack_hint`).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

PREFIXES = ("controlnet1.", "controlnet2.")
NAMES = ("physical", "semantic")  # controlnet1: cat(depth, normal); controlnet2: cat(hand keypoints, seg)
HINT_CHANNELS = 6
MAIN_DOUBLE_BLOCKS = 19  # FLUX.1-dev's double-stream blocks: the residuals repeat cyclically over them
# FLUX.1-dev's rotary theta (not in the file's shapes); the axes split the head dim 1/8, 7/16, 7/16 (axes_dim)
THETA = 10000
# sizes a file may claim (a file is not trusted to size a model): FLUX.1-dev is 3072 wide, 24 heads, 2 blocks
BOUNDS = {"hidden_size": (8, 8192), "num_heads": (1, 128), "depth": (1, 19), "in_channels": (4, 256),
          "vec_in_dim": (1, 8192), "context_in_dim": (1, 16384), "mlp_hidden": (1, 65536),
          "hint_channels": (1, 64)}


def axes_dim(head_dim: int) -> list[int]:
    """The rotary split of a head (FLUX.1-dev: 128 -> [16, 56, 56]); every part even."""
    if head_dim % 32:
        raise ValueError(f"head dim {head_dim} is not a multiple of 32 (Flux splits it 1/8, 7/16, 7/16)")
    a = head_dim // 8
    return [a, (head_dim - a) // 2, (head_dim - a) // 2]


# ------------------------------------------------------------------------------------------ the Flux parts
class _MLPEmbedder(nn.Module):
    def __init__(self, in_dim: int, hidden: int):
        super().__init__()
        self.in_layer = nn.Linear(in_dim, hidden)
        self.out_layer = nn.Linear(hidden, hidden)

    def forward(self, x):
        return self.out_layer(F.silu(self.in_layer(x)))


class _RMSNorm(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6)).to(x.dtype) * self.scale.to(x.dtype)


class _QKNorm(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.query_norm = _RMSNorm(dim)
        self.key_norm = _RMSNorm(dim)


class _SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, qkv_bias: bool):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.norm = _QKNorm(dim // heads)
        self.proj = nn.Linear(dim, dim)

    def qkv_heads(self, x):
        B, L, _ = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.heads, -1).permute(2, 0, 3, 1, 4)  # each [B, H, L, Dh]
        return self.norm.query_norm(q), self.norm.key_norm(k), v


class _Modulation(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.lin = nn.Linear(dim, 6 * dim)

    def forward(self, vec):
        return self.lin(F.silu(vec))[:, None, :].chunk(6, dim=-1)  # shift, scale, gate (attention), then (MLP)


def _rope(ids: torch.Tensor, dims: list[int], theta: int = THETA) -> torch.Tensor:
    """[B, L, 3] positions -> [B, 1, L, Dh/2, 2, 2] rotation matrices (Flux's EmbedND)."""
    out = []
    for i, d in enumerate(dims):
        scale = torch.arange(0, d, 2, dtype=torch.float64, device=ids.device) / d
        ang = ids[..., i].double()[..., None] * (1.0 / theta ** scale)
        out.append(torch.stack([ang.cos(), -ang.sin(), ang.sin(), ang.cos()], -1).view(*ang.shape, 2, 2))
    return torch.cat(out, dim=-3).float()[:, None]


def _apply_rope(x: torch.Tensor, pe: torch.Tensor) -> torch.Tensor:
    xp = x.float().reshape(*x.shape[:-1], -1, 1, 2)
    return (pe[..., 0] * xp[..., 0] + pe[..., 1] * xp[..., 1]).reshape(x.shape).to(x.dtype)


class _DoubleStreamBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_hidden: int, qkv_bias: bool):
        super().__init__()
        for s in ("img", "txt"):
            setattr(self, f"{s}_mod", _Modulation(dim))
            setattr(self, f"{s}_norm1", nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6))
            setattr(self, f"{s}_attn", _SelfAttention(dim, heads, qkv_bias))
            setattr(self, f"{s}_norm2", nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6))
            setattr(self, f"{s}_mlp", nn.Sequential(nn.Linear(dim, mlp_hidden), nn.GELU(approximate="tanh"),
                                                    nn.Linear(mlp_hidden, dim)))

    def forward(self, img, txt, vec, pe):
        mods, qkv = {}, []
        for s, x in (("txt", txt), ("img", img)):  # text tokens first in the joint attention, as Flux orders them
            m = getattr(self, f"{s}_mod")(vec)
            mods[s] = m
            qkv.append(getattr(self, f"{s}_attn").qkv_heads((1 + m[1]) * getattr(self, f"{s}_norm1")(x) + m[0]))
        q, k, v = (torch.cat([qkv[0][i], qkv[1][i]], dim=2) for i in range(3))
        q, k = _apply_rope(q, pe), _apply_rope(k, pe)
        att = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
        n = txt.shape[1]
        outs = []
        for s, x, a in (("txt", txt, att[:, :n]), ("img", img, att[:, n:])):
            m = mods[s]
            x = x + m[2] * getattr(self, f"{s}_attn").proj(a)
            x = x + m[5] * getattr(self, f"{s}_mlp")((1 + m[4]) * getattr(self, f"{s}_norm2")(x) + m[3])
            outs.append(x)
        return outs[1], outs[0]


def _timestep_embedding(t: torch.Tensor, dim: int = 256, max_period: int = 10000) -> torch.Tensor:
    t = 1000.0 * t.float()
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None] * freqs[None]
    return torch.cat([args.cos(), args.sin()], dim=-1)


# ------------------------------------------------------------------------------------------ the ControlNet
class XLabsControlNet(nn.Module):
    """One XLabs ``ControlNetFlux`` (x-flux parameter names) with a ``hint_channels`` hint encoder (PAM: 6)."""

    def __init__(self, hidden_size: int = 3072, num_heads: int = 24, depth: int = 2, in_channels: int = 64,
                 vec_in_dim: int = 768, context_in_dim: int = 4096, mlp_hidden: int = 12288,
                 hint_channels: int = HINT_CHANNELS, qkv_bias: bool = True, guidance_embed: bool = True):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden size {hidden_size} is not divisible by {num_heads} heads")
        self.config = dict(hidden_size=hidden_size, num_heads=num_heads, depth=depth, in_channels=in_channels,
                           vec_in_dim=vec_in_dim, context_in_dim=context_in_dim, mlp_hidden=mlp_hidden,
                           hint_channels=hint_channels, qkv_bias=qkv_bias, guidance_embed=guidance_embed)
        self.axes = axes_dim(hidden_size // num_heads)
        self.img_in = nn.Linear(in_channels, hidden_size)
        self.time_in = _MLPEmbedder(256, hidden_size)
        self.vector_in = _MLPEmbedder(vec_in_dim, hidden_size)
        self.guidance_in = _MLPEmbedder(256, hidden_size) if guidance_embed else nn.Identity()
        self.txt_in = nn.Linear(context_in_dim, hidden_size)
        self.double_blocks = nn.ModuleList([_DoubleStreamBlock(hidden_size, num_heads, mlp_hidden, qkv_bias)
                                            for _ in range(depth)])
        self.controlnet_blocks = nn.ModuleList([nn.Linear(hidden_size, hidden_size) for _ in range(depth)])
        self.pos_embed_input = nn.Linear(in_channels, hidden_size)
        convs = [nn.Conv2d(hint_channels, 16, 3, padding=1)] + [
            nn.Conv2d(16, 16, 3, padding=1, stride=2 if i in (1, 3, 5) else 1) for i in range(7)]
        layers = []
        for i, c in enumerate(convs):
            layers += [c] if i == len(convs) - 1 else [c, nn.SiLU()]
        self.input_hint_block = nn.Sequential(*layers)  # indices 0, 2, ..., 14 hold the convs, as in x-flux
        for m in (*self.controlnet_blocks, convs[-1]):  # the zero-initialised parts of a new ControlNet
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    @property
    def dtype(self) -> torch.dtype:  # ComfyUI's ControlNet wrapper casts its inputs to this
        return self.img_in.weight.dtype

    def residuals(self, img, img_ids, hint, txt, txt_ids, timesteps, y, guidance=None) -> tuple:
        """x-flux's ``ControlNetFlux.forward``: latent tokens [B,L,in], hint [B,C,8h,8w] in [-1,1] -> one
        [B,L,D] residual per ControlNet block."""
        h = self.input_hint_block(hint)
        B, C, hh, ww = h.shape
        h = h.view(B, C, hh // 2, 2, ww // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(B, (hh // 2) * (ww // 2), C * 4)
        x = self.img_in(img) + self.pos_embed_input(h)
        vec = self.time_in(_timestep_embedding(timesteps).to(x.dtype))
        if self.config["guidance_embed"]:
            if guidance is None:
                raise ValueError("PAM Flux ControlNet: a guidance-distilled ControlNet needs 'guidance' (PAM: 4.0)")
            vec = vec + self.guidance_in(_timestep_embedding(guidance).to(x.dtype))
        vec = vec + self.vector_in(y[:, :self.config["vec_in_dim"]])
        t = self.txt_in(txt)
        pe = _rope(torch.cat([txt_ids, img_ids], dim=1), self.axes)
        out = []
        for blk, lin in zip(self.double_blocks, self.controlnet_blocks):
            x, t = blk(x, t, vec, pe)
            out.append(lin(x))
        return tuple(out)

    def forward(self, x, timesteps, context, y=None, guidance=None, hint=None, **kwargs):
        """ComfyUI's XLabs ControlNet call: latent x [B,16,h,w], hint [B,C,8h,8w] in [0,1] ->
        {"input": 19 residuals}, the ControlNet's blocks repeated cyclically over FLUX.1-dev's double blocks."""
        B, _, h, w = x.shape
        ph, pw = (-h) % 2, (-w) % 2
        x = F.pad(x, (0, pw, 0, ph), mode="circular") if ph or pw else x
        hl, wl = x.shape[2] // 2, x.shape[3] // 2
        img = x.view(B, x.shape[1], hl, 2, wl, 2).permute(0, 2, 4, 1, 3, 5).reshape(B, hl * wl, -1)
        ids = torch.zeros(hl, wl, 3, device=x.device, dtype=x.dtype)
        ids[..., 1] += torch.arange(hl, device=x.device, dtype=x.dtype)[:, None]
        ids[..., 2] += torch.arange(wl, device=x.device, dtype=x.dtype)[None, :]
        img_ids = ids.reshape(1, hl * wl, 3).expand(B, -1, -1)
        txt_ids = torch.zeros(B, context.shape[1], 3, device=x.device, dtype=x.dtype)
        if y is None:
            y = torch.zeros(B, self.config["vec_in_dim"], device=x.device, dtype=x.dtype)
        res = self.residuals(img, img_ids, hint * 2.0 - 1.0, context, txt_ids, timesteps, y, guidance)
        reps = math.ceil(MAIN_DOUBLE_BLOCKS / len(res))
        return {"input": (res * reps)[:MAIN_DOUBLE_BLOCKS]}


@dataclass
class PAMFluxControl:
    """The two ControlNets of PAM's appearance stage and where they came from."""
    physical: XLabsControlNet  # controlnet1: cat(depth, normal)
    semantic: XLabsControlNet  # controlnet2: cat(hand keypoints, seg)
    config: dict
    source: str
    message: str


# ------------------------------------------------------------------------------------------ loading
def config_from_shapes(shapes: dict, where: str, path) -> dict:
    """Every size of one ControlNet from its (bare) key shapes; a file that is not an XLabs ControlNet is named."""
    from ..weights import WeightsFileError

    need = ("img_in.weight", "pos_embed_input.weight", "input_hint_block.0.weight", "txt_in.weight",
            "vector_in.in_layer.weight", "double_blocks.0.img_attn.norm.query_norm.scale",
            "double_blocks.0.img_mlp.0.weight", "controlnet_blocks.0.weight")
    lacking = [k for k in need if k not in shapes]
    if lacking:
        raise WeightsFileError(f"{where}: {path} is not an XLabs Flux ControlNet (no {', '.join(lacking[:3])})")
    depth = 1 + max(int(m.group(1)) for k in shapes if (m := re.match(r"double_blocks\.(\d+)\.", k)))
    hidden, in_ch = shapes["img_in.weight"]
    head = shapes["double_blocks.0.img_attn.norm.query_norm.scale"][0]
    return dict(hidden_size=int(hidden), num_heads=int(hidden // max(head, 1)), depth=int(depth),
                in_channels=int(in_ch), vec_in_dim=int(shapes["vector_in.in_layer.weight"][1]),
                context_in_dim=int(shapes["txt_in.weight"][1]),
                mlp_hidden=int(shapes["double_blocks.0.img_mlp.0.weight"][0]),
                hint_channels=int(shapes["input_hint_block.0.weight"][1]),
                qkv_bias="double_blocks.0.img_attn.qkv.bias" in shapes,
                guidance_embed="guidance_in.in_layer.weight" in shapes)


def _split(header: dict, path, where: str) -> dict:
    """{prefix: {bare key: meta tensor}} of a DoubleControl file; names what else the file is."""
    from ..weights import WeightsFileError

    keys = list(header)
    parts = {p: {k[len(p):]: v for k, v in header.items() if k.startswith(p)} for p in PREFIXES}
    if all(parts.values()):
        other = [k for k in keys if not k.startswith(PREFIXES)]
        if other:
            raise WeightsFileError(f"{where}: {path} holds keys outside controlnet1./controlnet2. (e.g. "
                                   f"{other[:3]}); expected PAM's DoubleControl file unchanged")
        return parts
    if any(k.startswith(("transformer_blocks_copy.", "initial_combine_linear.")) for k in keys):
        raise WeightsFileError(f"{where}: {path} is PAM's motion branch (CogVideoX), not its appearance "
                               "ControlNets; load it with PAM Branch Loader")
    if any(k.startswith("module.controlnet1.") for k in keys):
        raise WeightsFileError(f"{where}: {path} holds an accelerate-wrapped state ('module.controlnet1.'); save "
                               "the unwrapped DoubleControl (convert the release's controlnet.bin)")
    if "input_hint_block.0.weight" in header:
        raise WeightsFileError(f"{where}: {path} holds ONE Flux ControlNet; PAM's appearance stage has two "
                               "(controlnet1 = depth+normal, controlnet2 = keypoints+seg): give the file with both, or "
                               "the two files")
    raise WeightsFileError(f"{where}: {path} is not PAM's appearance ControlNet file (no controlnet1.*/"
                           "controlnet2.* keys)")


def _check_one(shapes_meta: dict, path, where: str, name: str) -> tuple[dict, XLabsControlNet]:
    from ..weights import WeightsFileError, build_checked, check_config, header_shapes

    shapes = header_shapes(shapes_meta)
    cfg = check_config(config_from_shapes(shapes, where, path), BOUNDS, path, where)
    if cfg["hint_channels"] != HINT_CHANNELS:
        raise WeightsFileError(f"{where}: {path}: the {name} ControlNet's hint encoder takes {cfg['hint_channels']} "
                               f"channels; PAM's take {HINT_CHANNELS} (two images stacked). This is another "
                               "XLabs ControlNet: use ComfyUI's own ControlNet loader for it")
    if cfg["hidden_size"] % cfg["num_heads"] or (cfg["hidden_size"] // cfg["num_heads"]) % 32:
        raise WeightsFileError(f"{where}: {path}: head dim {cfg['hidden_size']}/{cfg['num_heads']} is not a "
                               "Flux head (a multiple of 32)")
    meta = build_checked(lambda: XLabsControlNet(**cfg), shapes_meta, path, f"{where} ({name})",
                         fix="Use PAM's released appearance file, converted unchanged.")
    return cfg, meta


def load_pam_flux(path, path2=None, *, dtype=None, device=None, where: str = "PAM Flux ControlNet") -> PAMFluxControl:
    """PAM's two ControlNets from one DoubleControl safetensors file (``controlnet1.*``, ``controlnet2.*``) or from
    two files holding one ControlNet each (``path`` physical, ``path2`` semantic). Sizes come from the header;
    both are built on the meta device and compared key by key before any tensor is read."""
    from ..weights import WeightsFileError, read_header, read_safetensors

    path = Path(path)
    for p in (path, path2):
        if p is not None and Path(p).suffix.lower() != ".safetensors":
            raise WeightsFileError(f"{where}: {Path(p).name} is not a .safetensors file; the pack never unpickles. "
                                   "Convert the release's controlnet.bin once with PAM Flux Convert")
    if path2 is None:
        header, _ = read_header(path, where)
        parts = _split(header, path, where)
        srcs = [(path, PREFIXES[0]), (path, PREFIXES[1])]
    else:
        h1, _ = read_header(path, where)
        h2, _ = read_header(Path(path2), where)
        for h, p in ((h1, path), (h2, Path(path2))):
            if any(k.startswith(PREFIXES) for k in h):
                raise WeightsFileError(f"{where}: {p.name} holds both ControlNets; give it alone as the first file")
        parts = {PREFIXES[0]: h1, PREFIXES[1]: h2}
        srcs = [(path, ""), (Path(path2), "")]
    built = [_check_one(parts[p], src[0], where, n) for p, src, n in zip(PREFIXES, srcs, NAMES)]
    if built[0][0] != built[1][0]:
        raise WeightsFileError(f"{where}: the two ControlNets differ in size ({built[0][0]} vs {built[1][0]}); "
                               "expected PAM's pair")
    nets = []
    for (cfg, meta), (src, prefix) in zip(built, srcs):
        sd, _ = read_safetensors(src, where, keys=[prefix + k for k in meta.state_dict()])
        meta.load_state_dict({k[len(prefix):]: v for k, v in sd.items()}, strict=True, assign=True)
        if dtype is not None or device is not None:
            meta.to(device=device, dtype=dtype)
        nets.append(meta.requires_grad_(False).eval())
    cfg = built[0][0]
    n = sum(p.numel() for p in nets[0].parameters())
    msg = (f"PAM appearance ControlNets: 2 x XLabs Flux ControlNet ({cfg['depth']} double blocks, width "
           f"{cfg['hidden_size']}, {cfg['hint_channels']}-channel hints, {n / 1e6:.1f} M parameters each) from "
           + (path.name if path2 is None else f"{path.name} + {Path(path2).name}"))
    return PAMFluxControl(nets[0], nets[1], cfg, str(path), msg)


def convert_release(src, dst) -> Path:
    """PAM's ``controlnet.bin`` (a torch pickle of ``DoubleControl.state_dict()``) -> safetensors, once. Read with
    ``torch.load(weights_only=True)`` (plain tensors only; no code runs) and checked to be a DoubleControl state
    before writing."""
    import os

    from safetensors.torch import save_file

    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise FileNotFoundError(f"PAM Flux Convert: {src} not found")
    try:
        sd = torch.load(str(src), map_location="cpu", weights_only=True)
    except Exception as ex:
        raise ValueError(f"PAM Flux Convert: {src.name} is not a weights-only torch file ({type(ex).__name__}: "
                         f"{ex}); only the release's controlnet.bin (plain tensors) is accepted") from ex
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"PAM Flux Convert: {src.name} is not a state dict of tensors")
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    if not all(k.startswith(PREFIXES) for k in sd) or not all(any(k.startswith(p) for k in sd) for p in PREFIXES):
        raise ValueError(f"PAM Flux Convert: {src.name} is not PAM's DoubleControl state (controlnet1.*, "
                         "controlnet2.*)")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_suffix(dst.suffix + ".tmp")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp), metadata={"source": src.name,
                                                                            "format": "pam_double_control"})
    os.replace(tmp, dst)
    return dst


def stack_hint(a: torch.Tensor, b: torch.Tensor | None = None, where: str = "PAM Flux Hint") -> torch.Tensor:
    """Two IMAGE batches [B,H,W,3] (0..1) -> one 6-channel hint [B,H,W,6] in PAM's channel order (a first).
    ``b`` None is black, PAM's dropped / unused condition (the normal map in every released run)."""
    if a.ndim != 4 or a.shape[-1] != 3:
        raise ValueError(f"{where}: expected an IMAGE batch [B,H,W,3]; got {tuple(a.shape)}")
    if b is None:
        b = torch.zeros_like(a)
    if b.shape != a.shape:
        raise ValueError(f"{where}: the two images must have one shape; got {tuple(a.shape)} and {tuple(b.shape)}")
    return torch.cat([a, b.to(a.dtype)], dim=-1)
