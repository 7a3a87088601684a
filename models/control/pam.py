"""PAM motion branch: multi-condition control of CogVideoX-5B-I2V by N copied DiT blocks (PAM, seed 002 §5).

As the public code builds it (``CogVideoXTransformer3DModelCombination`` of github GasaiYU/PAM, read for the
order of operations; this is our own code on the family forward's doors):

    per condition slot s in SLOTS = [tracking, normal, depth, seg, hand]   (the released order: it matters)
        map_s   = VAE(video_s) * scaling                          [B, f, C, h, w]   (zeros when disabled)
        first_s = VAE(video_s[0]) * scaling, zero-padded to f     [B, f, C, h, w]   (zeros when disabled)
        tok_s   = backbone.patch_embed(text, map_s ++ first_s)[text tokens dropped]   [B, N, D]
                  (the backbone's own FROZEN patch embedding; 2C = its I2V input; a disabled slot is all-zero
                  latents and still gets the embedding's bias and positions)
    c = initial_combine_linear(hidden.repeat(1, 1, 5) + cat(tok_s))            Linear(5D -> D), zero-init
    after main block i < N:                         (text = the main stream's text after block i)
        c, _   = transformer_blocks_copy[i](c, text, temb, rotary)             copy i = main block i at init
        c      = combine_linears[i](c)                                          Linear(D -> D), zero-init
        hidden = hidden + weight * c

The PROJECTED output c feeds the next copy block (the code's ``condition_maps = self.combine_linears[i](
condition_maps)``, then ``hidden_states = hidden_states + condition_maps``), not a ControlNet residual off a
branch stream; the spec's pseudo-code in §5.2 writes the un-projected order, the released weights were trained
with this one (tests/models/control/test_pam.py checks it against a hand-written forward). Everything is zero at
init, so an untrained branch leaves the backbone's output bit-identical.

N is 12 in every released script (the released class defaults to 18; here 12) and is read from the weights
when loading. State-dict names equal the release's (``transformer_blocks_copy.<i>.*``, ``combine_linears.<i>.*``,
``initial_combine_linear.*``), so the pack's own branch file is exactly the trained part of a released folder.

The control signal (kind "hoi", :func:`hoi_signal`): the five condition videos stacked on channels in slot order,
[F, H, W, 3*5] float 0..1 (ComfyUI IMAGE range; the VAE encode maps it to [-1, 1], the code's x/127.5 - 1),
``meta = {"slots": SLOTS, "enabled": [bool]*5, "seed": int}``. A disabled slot's channels are zero and ignored:
its latents are exactly zero. The released weights were trained with tracking and normal always zero (and
depth, seg, hand each dropped 20% of the time), so leave those two disabled for them. Conditions are the same on
every CFG row (guidance acts on the text only); on control-guidance "no_control" rows every slot is disabled.
The VAE encodes each condition once per signal (posterior sample from a CPU generator seeded by
``meta["seed"]``, as the code samples); the condition tokens are cached across steps.

Released checkpoints (:func:`load_released`): a whole CogVideoX transformer folder (diffusers layout, possibly
sharded with an index json, ``_class_name: CogVideoXTransformer3DModelTracking``, often no block count) whose
main weights are CogVideoX-5B-I2V's. Told apart by keys and the combining projection's shape: PAM has
``initial_combine_linear.weight`` [D, 5D]; DiffusionAsShader's class of the same name has [D, D] (refused by
name); a plain CogVideoX has no such keys.

Shapes: B batch, F pixel frames, f latent frames, C latent channels, h, w latent size, N video tokens, D width.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..backbones.base import Attachment, cast, plain_state_dict
from . import registry
from .base import ControlBranch, ControlSignal

KIND, SIGNAL, TASK = "pam", "hoi", "pam_branch"
SLOTS = ("tracking", "normal", "depth", "seg", "hand")
RELEASED_USED = ("depth", "seg", "hand")  # --used_conditions of every released training script
RELEASED_CLASSES = ("CogVideoXTransformer3DModelTracking", "CogVideoXTransformer3DModelCombination")
BRANCH_PREFIXES = ("transformer_blocks_copy.", "combine_linears.", "initial_combine_linear.")
NEGATIVE_PROMPT = ("The video is not of a high quality, it has a low resolution. Watermark present in each frame. "
                   "The background is solid. Strange body and strange trajectory. Distortion.")
SIM_PROMPT = "A man is in a lab trying to grasp something."
# testing/evaluation_*.py of the release: what the CogVideoX sampler should be set to for PAM (its own defaults
# are KineMask's and stay unchanged; the node DESCRIPTIONs and README say this)
SAMPLER_SETTINGS = dict(scheduler="dpm", steps=50, cfg=6.0, dynamic_cfg=True, seed=42, num_frames=49, height=480,
                        width=720, control_weight=1.0, negative=NEGATIVE_PROMPT)
DEFAULT_SEED = 42

try:
    from diffusers.configuration_utils import ConfigMixin, register_to_config
    from diffusers.models.modeling_utils import ModelMixin
except ImportError:  # pragma: no cover
    raise


# ------------------------------------------------------------------------------------------ the branch
class PAMBranch(ModelMixin, ConfigMixin):
    """The trained part of PAM (ComfyUI type INTERPLAY_BRANCH via :class:`ControlBranch`, kind "pam").

    ``combine(hidden [B,N,D], tokens [B|1,N,S*D]) -> c [B,N,D]``; ``step(i, c, text [B,T,D], temb, rotary)
    -> combine_linears[i](copy_block_i(c, text)) [B,N,D]`` (the residual for main block i and the next copy
    block's input). The condition tokens come from the backbone's patch embedding (:func:`condition_tokens`).
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(self, num_blocks: int = 12, num_attention_heads: int = 48, attention_head_dim: int = 64,
                 time_embed_dim: int = 512, dropout: float = 0.0, activation_fn: str = "gelu-approximate",
                 attention_bias: bool = True, norm_elementwise_affine: bool = True, norm_eps: float = 1e-5,
                 num_slots: int = len(SLOTS)):
        super().__init__()
        from diffusers.models.transformers.cogvideox_transformer_3d import CogVideoXBlock

        if num_blocks < 1:
            raise ValueError(f"PAM branch: num_blocks must be >= 1; got {num_blocks}")
        if num_slots != len(SLOTS):
            raise ValueError(f"PAM branch: num_slots must be {len(SLOTS)} ({', '.join(SLOTS)}); got {num_slots}")
        inner = num_attention_heads * attention_head_dim
        self.transformer_blocks_copy = nn.ModuleList([
            CogVideoXBlock(dim=inner, num_attention_heads=num_attention_heads, attention_head_dim=attention_head_dim,
                           time_embed_dim=time_embed_dim, dropout=dropout, activation_fn=activation_fn,
                           attention_bias=attention_bias, norm_elementwise_affine=norm_elementwise_affine,
                           norm_eps=norm_eps) for _ in range(num_blocks)])
        self.combine_linears = nn.ModuleList([nn.Linear(inner, inner) for _ in range(num_blocks)])
        self.initial_combine_linear = nn.Linear(num_slots * inner, inner)
        for lin in [*self.combine_linears, self.initial_combine_linear]:
            if lin.weight.device.type != "meta":
                nn.init.zeros_(lin.weight)
                nn.init.zeros_(lin.bias)
        self.gradient_checkpointing = False

    @property
    def inner_dim(self) -> int:
        return self.config.num_attention_heads * self.config.attention_head_dim

    @classmethod
    def from_transformer(cls, transformer, num_blocks: int = 12) -> "PAMBranch":
        """A new branch for ``transformer`` (CogVideoXTransformer3DModel): copy i = main block i (i < N), both
        projections zero. Built on the meta device and filled with copies, so nothing is initialised twice."""
        c = transformer.config
        if not 1 <= num_blocks <= c.num_layers:
            raise ValueError(f"PAM branch: num_blocks must be 1..{c.num_layers} (the backbone's blocks); got "
                             f"{num_blocks}")
        kw = dict(num_blocks=num_blocks, num_attention_heads=c.num_attention_heads,
                  attention_head_dim=c.attention_head_dim, time_embed_dim=c.time_embed_dim, dropout=c.dropout,
                  activation_fn=c.activation_fn, attention_bias=c.attention_bias,
                  norm_elementwise_affine=c.norm_elementwise_affine, norm_eps=c.norm_eps)
        with torch.device("meta"):
            branch = cls(**kw)
        p = next(transformer.parameters())
        src = plain_state_dict(transformer)  # LoRA-free names: the copies are the frozen weights
        sd = {}
        for k, v in branch.state_dict().items():
            if k.startswith("transformer_blocks_copy."):
                sd[k] = src["transformer_blocks." + k[len("transformer_blocks_copy."):]].detach().clone()
            else:
                sd[k] = torch.zeros(v.shape, dtype=p.dtype, device=p.device)
        branch.load_state_dict(sd, strict=True, assign=True)
        return branch

    # ------------------------------------------------------------------------------------------- forward
    def combine(self, hidden: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        s = self.config.num_slots
        return self.initial_combine_linear(hidden.repeat(1, 1, s) + tokens.to(hidden.dtype))

    def step(self, i: int, c: torch.Tensor, text: torch.Tensor, temb: torch.Tensor, rotary=None) -> torch.Tensor:
        block = self.transformer_blocks_copy[i]
        text = text.to(c.dtype)
        if torch.is_grad_enabled() and self.gradient_checkpointing:
            c, _ = self._gradient_checkpointing_func(block, c, text, temb, rotary)
        else:
            c, _ = block(hidden_states=c, encoder_hidden_states=text, temb=temb, image_rotary_emb=rotary)
        return self.combine_linears[i](c)


# ------------------------------------------------------------------------------------ the conditions
def check_backbone(bb, where: str = "PAM branch") -> None:
    """PAM drives a CogVideoX image-to-video backbone without temporal patches (5B-I2V)."""
    if bb.family != "cogvideox":
        raise ValueError(f"{where}: the backbone is {bb.family}; PAM works on CogVideoX-5B-I2V")
    if bb.layout is None or not bb.layout.has("image"):
        raise ValueError(f"{where}: the backbone ({bb.variant}) is text-to-video; PAM's conditions are embedded like "
                         "the I2V input (map latent ++ first-frame latent) and need an image-to-video release")
    if bb.denoiser.config.patch_size_t is not None:
        raise ValueError(f"{where}: CogVideoX 1.5 ({bb.variant}) patches time; PAM was built on CogVideoX-5B-I2V")


def _slot_videos(conditions) -> dict:
    """{slot: video or None} from a dict or an object with slot-named attributes (HOIConditions)."""
    get = conditions.get if isinstance(conditions, dict) else (lambda k, d=None: getattr(conditions, k, d))
    if isinstance(conditions, dict):
        unknown = sorted(set(conditions) - set(SLOTS) - {"fps"})
        if unknown:
            raise ValueError(f"PAM conditions: unknown slot(s) {unknown}; the slots are {', '.join(SLOTS)}")
    return {s: get(s, None) for s in SLOTS}


def hoi_signal(conditions, weight: float = 1.0, start: float = 0.0, end: float = 1.0,
               seed: int = DEFAULT_SEED) -> ControlSignal:
    """The PAM control signal from condition videos by slot name.

    ``conditions``: a dict ``{slot: IMAGE [F,H,W,3] 0..1 or None}`` or any object with those attributes (e.g.
    ``HOIConditions(depth, seg, hand, tracking=None, normal=None, fps)``); None = disabled. All given videos must
    share F, H, W. -> ControlSignal(kind "hoi", video [F,H,W,15] 0..1 in SLOTS order (disabled slots zero),
    meta {"slots", "enabled", "seed"}, "fps" when the conditions carry it)."""
    vids = _slot_videos(conditions)
    given = {s: v for s, v in vids.items() if v is not None}
    if not given:
        raise ValueError(f"PAM conditions: every slot is empty; give at least one of {', '.join(SLOTS)} "
                         f"(the released weights use {', '.join(RELEASED_USED)})")
    shape = None
    for s, v in given.items():
        if not isinstance(v, torch.Tensor) or v.ndim != 4 or v.shape[-1] != 3:
            got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            raise ValueError(f"PAM conditions: {s!r} must be an IMAGE video [F,H,W,3]; got {got}")
        if shape is None:
            shape, first = tuple(v.shape[:3]), s
        elif tuple(v.shape[:3]) != shape:
            raise ValueError(f"PAM conditions: {s!r} is {v.shape[0]} frames of {v.shape[1]}x{v.shape[2]} but "
                             f"{first!r} is {shape[0]} frames of {shape[1]}x{shape[2]}; render every condition "
                             "with the same frame count and size")
        lo, hi = float(v.min()), float(v.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise ValueError(f"PAM conditions: {s!r} has values in [{lo:.3g}, {hi:.3g}]; expected IMAGE range 0..1 "
                             "(a [-1, 1] video: pass (x + 1) / 2)")
    video = torch.zeros(*shape, 3 * len(SLOTS))
    for k, s in enumerate(SLOTS):
        if s in given:
            video[..., 3 * k:3 * k + 3] = given[s].detach().float().cpu().clamp(0, 1)
    meta = {"slots": list(SLOTS), "enabled": [s in given for s in SLOTS], "seed": int(seed)}
    fps = conditions.get("fps") if isinstance(conditions, dict) else getattr(conditions, "fps", None)
    if fps is not None:
        meta["fps"] = float(fps)
    return ControlSignal(video, SIGNAL, float(weight), float(start), float(end), meta=meta)


def unpack_signal(signal: ControlSignal) -> dict:
    """{slot: [F,H,W,3] or None} from a "hoi" signal (slots reordered by name when the meta lists another order)."""
    meta = signal.meta or {}
    slots = list(meta.get("slots", SLOTS))
    enabled = list(meta.get("enabled", [True] * len(slots)))
    v = signal.video
    if sorted(slots) != sorted(SLOTS) or len(enabled) != len(slots) or v.shape[-1] != 3 * len(slots):
        raise ValueError(f"PAM branch: the control is not a PAM condition stack (meta slots {slots}, "
                         f"{v.shape[-1]} channels); build it with PAM Control / hoi_signal ({', '.join(SLOTS)}, "
                         "3 channels each)")
    out = {}
    for k, s in enumerate(slots):
        out[s] = v[..., 3 * k:3 * k + 3] if enabled[k] else None
    return {s: out[s] for s in SLOTS}


@torch.no_grad()
def encode_conditions(bb, videos: dict, generator: torch.Generator | None = None):
    """Condition videos -> (maps, firsts), each [B,S,f,C,h,w] scaled like the pipeline's latents, slots in SLOTS
    order: ``maps[:, s]`` = the video's latent, ``firsts[:, s]`` = its first frame's latent zero-padded to f
    frames (the I2V image latent of :func:`cog.image_condition`). A None slot is zeros in both.

    ``videos``: {slot: [B,F,H,W,3] 0..1 or None} (all given ones the same shape). ``generator``: sample the
    posteriors (the code samples); None takes the posterior mode."""
    from ..backbones import cogvideox as cog

    given = {s: v for s, v in videos.items() if v is not None}
    if not given:
        raise ValueError("PAM conditions: no condition video to encode")
    ref = next(iter(given.values()))
    B, F = ref.shape[0], ref.shape[1]
    f = cog.latent_frames(bb, F)
    maps, firsts = [None] * len(SLOTS), [None] * len(SLOTS)
    for k, s in enumerate(SLOTS):
        v = given.get(s)
        if v is None:
            continue
        v = v.float()
        maps[k] = cog.encode_frames(bb, v, generator=generator)
        firsts[k] = cog.image_condition(bb, v[:, 0], maps[k].shape[1], generator=generator)
    lat = next(m for m in maps if m is not None)
    zero = torch.zeros_like(lat)
    if lat.shape[1] != f:
        raise ValueError(f"PAM conditions: {F} frames encode to {lat.shape[1]} latent frames, expected {f}")
    return (torch.stack([m if m is not None else zero for m in maps], dim=1),
            torch.stack([m if m is not None else zero for m in firsts], dim=1))


def condition_input(bb, maps: torch.Tensor, firsts: torch.Tensor) -> torch.Tensor:
    """[B,S,f,C,h,w] maps and first-frame latents -> [B,S,f,C_in,h,w] as the backbone's input layout assembles
    them (the map in the noisy-latent channels, the first frame in the image channels, any further parts zero)."""
    b, s = maps.shape[:2]
    x = bb.layout.assemble({"noise": maps.flatten(0, 1), "image": firsts.flatten(0, 1)}, dim=2)
    return x.view(b, s, *x.shape[1:])


def condition_tokens(bb, cond_in: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """[B,S,f,C_in,h,w] -> [B, N, S*D]: each slot through the backbone's frozen patch embedding (with the text,
    whose tokens are then dropped, exactly as the release; the learned positions need its length)."""
    tr = bb.denoiser
    b = cond_in.shape[0]
    text = text[:1].expand(b, *text.shape[1:]) if text.shape[0] != b else text
    n_text = text.shape[1]
    toks = []
    for s in range(cond_in.shape[1]):
        hs = tr.embedding_dropout(tr.patch_embed(text, cond_in[:, s].to(text.dtype)))
        toks.append(hs[:, n_text:])
    return torch.cat(toks, dim=-1)


# ------------------------------------------------------------------------------ the forward contract
@dataclass
class HOIEntry:
    """One control through the branch: condition videos (encoded on first use) or their latents.

    Fields: weight (float), start/end (step fractions), videos {slot: [1|B,F,H,W,3] 0..1 or None}, latents
    [1|B,S,f,C_in,h,w] (layout-assembled; set directly by trainers), seed (posterior samples of the encode)."""

    weight: float = 1.0
    start: float = 0.0
    end: float = 1.0
    videos: dict | None = None
    latents: torch.Tensor | None = None
    seed: int = DEFAULT_SEED
    frames: int | None = None
    _tokens: dict = field(default_factory=dict, repr=False)


class PAMAttachment(Attachment):
    """PAM on the CogVideoX forward: ``after_embed`` builds the branch stream c from the video tokens and the
    condition tokens, ``after_block`` i < N runs copy block i on c with the main stream's text, projects it and
    adds ``weight * c`` to the video tokens. Several controls through one branch run one stream each.

    ``reuse``: cache the condition tokens across calls (sampling); trainers pass per-batch latents with
    ``reuse=False``. On "no_control" rows (control guidance) every slot is disabled (all-zero latents)."""

    def __init__(self, module: PAMBranch, entries, reuse: bool = True):
        self.module = module
        self.entries = list(entries)
        self.reuse = reuse
        self._zero = {}

    @classmethod
    def from_bound(cls, branch: ControlBranch, bound, backbone=None) -> "PAMAttachment":
        if backbone is not None:
            check_backbone(backbone)
        entries = []
        for bc in bound:
            vids = {s: (v[None] if v is not None else None) for s, v in unpack_signal(bc.signal).items()}
            entries.append(HOIEntry(weight=bc.weight, start=bc.start, end=bc.end, videos=vids,
                                    seed=int((bc.signal.meta or {}).get("seed", DEFAULT_SEED)),
                                    frames=int(bc.signal.video.shape[0])))
        return cls(branch.module, entries)

    @classmethod
    def from_latents(cls, module: PAMBranch, latents: torch.Tensor, weight: float = 1.0,
                     reuse: bool = True) -> "PAMAttachment":
        """An attachment on condition latents already assembled ([1|B,S,f,C_in,h,w], :func:`condition_input`)."""
        return cls(module, [HOIEntry(weight=weight, latents=latents)], reuse=reuse)

    def modules(self):
        return [self.module]

    def active(self, step) -> list:
        return [e for e in self.entries if e.weight != 0
                and (step is None or e.start <= step[0] / max(step[1], 1) < e.end)]

    # -- conditions
    def _latents(self, e: HOIEntry, ctx) -> torch.Tensor:
        bb = ctx.bb
        if e.latents is None:
            check_backbone(bb)
            if all(v is None for v in (e.videos or {}).values()):  # every slot disabled: all-zero latents
                e.latents = torch.zeros((1, len(SLOTS), *ctx.latent_in.shape[1:]), device=bb.device, dtype=bb.dtype)
            else:
                gen = torch.Generator().manual_seed(int(e.seed))
                maps, firsts = encode_conditions(bb, e.videos, generator=gen)
                e.latents = condition_input(bb, maps, firsts)
        lat = e.latents
        x = ctx.latent_in
        if tuple(lat.shape[2:3]) + tuple(lat.shape[-2:]) != (x.shape[1], x.shape[3], x.shape[4]):
            vs = bb.extra.get("vae_scale_factor_spatial", 8)
            fr = f"{e.frames} frames" if e.frames else f"{lat.shape[2]} latent frames"
            raise ValueError(f"PAM branch: the conditions are {fr} of {lat.shape[-2] * vs}x{lat.shape[-1] * vs} but "
                             f"the generation is {x.shape[1]} latent frames of {x.shape[3] * vs}x{x.shape[4] * vs}; "
                             "render the conditions with the sampler's frame count and size")
        return lat

    def _zero_tokens(self, ctx, like: torch.Tensor) -> torch.Tensor:
        key = (str(like.device), like.dtype)
        if key not in self._zero:
            z = torch.zeros((1, *like.shape[1:]), device=like.device, dtype=like.dtype)
            self._zero = {key: condition_tokens(ctx.bb, z, ctx.text_in)}
        return self._zero[key]

    def _tokens(self, e: HOIEntry, ctx) -> torch.Tensor:
        dev, dt = ctx.latent_in.device, ctx.bb.dtype
        key = (str(dev), dt)
        tok = e._tokens.get(key) if self.reuse else None
        if tok is None:
            lat = self._latents(e, ctx).to(dev, dt)
            with torch.no_grad():  # the patch embedding is frozen: tokens carry no gradient
                tok = condition_tokens(ctx.bb, lat, ctx.text_in)
            if self.reuse:
                e._tokens = {key: tok}
        if "no_control" not in ctx.rows:
            return tok
        zero = self._zero_tokens(ctx, self._latents(e, ctx).to(dev, dt))
        parts = []
        for name, sl in ctx.rows.items():
            n = len(range(*sl.indices(ctx.batch)))
            src = zero if name == "no_control" else tok
            parts.append(src.expand(n, *src.shape[1:]) if src.shape[0] == 1 else src[sl])
        return torch.cat(parts)

    # -- doors
    def after_embed(self, ctx, hidden):
        st = ctx.state_of(self)
        st["streams"] = []
        for e in self.active(ctx.extra.get("step")):
            st["streams"].append([self.module.combine(hidden, self._tokens(e, ctx)), e.weight])
        return hidden

    def after_block(self, ctx, i, hidden):
        streams = ctx.state_of(self).get("streams")
        if not streams or i >= self.module.config.num_blocks:
            return hidden
        for s in streams:
            s[0] = self.module.step(i, s[0], ctx.text, ctx.temb, ctx.rotary)
            hidden = hidden + s[0].to(hidden.dtype) * s[1]
        return hidden


# ------------------------------------------------------------------------------------------------- files
def new_branch(transformer, *, num_blocks: int = 12) -> ControlBranch:
    """A fresh zero-initialised branch on ``transformer`` as a :class:`ControlBranch`."""
    m = PAMBranch.from_transformer(transformer, num_blocks=num_blocks)
    return ControlBranch(kind=KIND, family="cogvideox", module=m, config=_clean_config(m.config), source="init")


def _clean_config(cfg) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(cfg).items() if not k.startswith("_")}


def branch_metadata(module: PAMBranch, **extra) -> dict:
    return {"format": "pt", "kind": KIND, "family": "cogvideox",
            "interplay_config": json.dumps(_clean_config(module.config)), **extra}


def save_branch(branch, path) -> Path:
    """The pack's branch file: only the trained parameters (copies, combine_linears, initial_combine_linear)
    under the release's names, the config JSON in the metadata (``interplay_config``, ``kind``); atomic."""
    from safetensors.torch import save_file

    m = branch.module if isinstance(branch, ControlBranch) else branch
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().contiguous().cpu() for k, v in m.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(sd, str(tmp), metadata=branch_metadata(m))
    tmp.replace(path)
    return path


@dataclass
class Found:
    """What :func:`inspect_weights` found. layout: "pam_file" (the pack's branch file), "pam" (a released PAM
    transformer: folder or single file), "das" (DiffusionAsShader), "plain" (a CogVideoX transformer with no
    branch), "unknown". ``shapes``: key -> shape from the headers; ``files``: key -> file; ``config``: the
    branch config (pam layouts); ``message``: one line for the UI."""

    layout: str
    path: Path
    shapes: dict
    files: dict
    meta: dict
    folder_config: dict
    config: dict | None
    message: str


def _folder_of(path: Path) -> Path:
    """A released folder is the transformer folder itself or a pipeline folder holding it in transformer/."""
    if (path / "config.json").is_file() or not (path / "transformer" / "config.json").is_file():
        return path
    return path / "transformer"


def _weight_files(folder: Path, where: str) -> list[Path]:
    idx = sorted(folder.glob("*.safetensors.index.json"))
    if idx:
        try:
            wm = json.loads(idx[0].read_text()).get("weight_map", {})
            names = sorted(set(wm.values()))
        except (OSError, ValueError, AttributeError) as ex:
            raise ValueError(f"{where}: {idx[0]} is not a readable shard index ({ex}); download it again") from ex
        bad = [n for n in names if not isinstance(n, str) or Path(n).name != n]
        if bad:  # an index names files of this folder only: never follow a path out of it
            raise ValueError(f"{where}: {idx[0].name} lists files outside the folder ({bad[:2]}); refusing it")
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise FileNotFoundError(f"{where}: {folder} lacks the shard(s) {missing[:3]} listed in {idx[0].name}; "
                                    "the download is incomplete: copy every diffusion_pytorch_model-*.safetensors")
        return [folder / n for n in names]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{where}: no .safetensors weights in {folder} (expected config.json and "
                                "diffusion_pytorch_model*.safetensors)")
    return files


def _max_index(shapes: dict, prefix: str) -> int:
    idx = {int(k[len(prefix):].split(".")[0]) for k in shapes if k.startswith(prefix)}
    if idx and idx != set(range(max(idx) + 1)):
        raise ValueError(f"PAM branch: {prefix}<i> indices are not 0..{max(idx)} (found {sorted(idx)[:6]}...)")
    return max(idx) + 1 if idx else 0


def branch_config_from_shapes(shapes: dict, folder_config: dict | None = None) -> dict:
    """The branch config from tensor shapes (N from the copies' indices; what shapes cannot tell from the
    folder's config.json, else the release values)."""
    fc = folder_config or {}
    w = shapes["initial_combine_linear.weight"]
    inner = w[0]
    n = _max_index(shapes, "transformer_blocks_copy.")
    n_lin = _max_index(shapes, "combine_linears.")
    if n == 0 or n != n_lin:
        raise ValueError(f"PAM branch: {n} copied blocks but {n_lin} combine_linears; a PAM checkpoint has one "
                         "combining projection per copied block")
    b0 = "transformer_blocks_copy.0."
    head_dim = shapes[b0 + "attn1.norm_q.weight"][0]
    return dict(num_blocks=n, num_attention_heads=inner // head_dim, attention_head_dim=head_dim,
                time_embed_dim=shapes[b0 + "norm1.linear.weight"][1], dropout=float(fc.get("dropout", 0.0)),
                activation_fn=str(fc.get("activation_fn", "gelu-approximate")),
                attention_bias=(b0 + "attn1.to_q.bias") in shapes,
                norm_elementwise_affine=(b0 + "norm1.norm.weight") in shapes,
                norm_eps=float(fc.get("norm_eps", 1e-5)), num_slots=w[1] // inner)


def inspect_weights(path, where: str = "PAM branch") -> Found:
    """Read headers only (no tensor) and say what ``path`` (a folder or a .safetensors file) holds."""
    from ..weights import header_shapes, read_header

    path = Path(path)
    fconf: dict = {}
    if path.is_dir():
        folder = _folder_of(path)
        cfg_file = folder / "config.json"
        if cfg_file.is_file():
            try:
                fconf = json.loads(cfg_file.read_text())
            except ValueError as ex:
                raise ValueError(f"{where}: {cfg_file} is not valid JSON ({ex})") from ex
            if not isinstance(fconf, dict):
                raise ValueError(f"{where}: {cfg_file} is not a JSON object")
        files = _weight_files(folder, where)
    elif path.is_file():
        folder, files = path.parent, [path]
    else:
        raise FileNotFoundError(f"{where}: {str(path)!r} not found (a released PAM transformer folder, or a "
                                ".safetensors branch file)")
    shapes, where_is, meta = {}, {}, {}
    for fp in files:
        tensors, m = read_header(fp, where)
        for k, s in header_shapes(tensors).items():
            if k in where_is:
                raise ValueError(f"{where}: tensor {k} is in both {where_is[k].name} and {fp.name}; keep one copy "
                                 "of the weights in the folder")
            shapes[k], where_is[k] = s, fp
        meta = meta or m
    cls = fconf.get("_class_name")
    has_branch = "initial_combine_linear.weight" in shapes
    if meta.get("kind") or meta.get("interplay_kind"):
        kind = meta.get("kind") or meta.get("interplay_kind")
        if kind != KIND:
            return Found("unknown", path, shapes, where_is, meta, fconf, None,
                         f"{path.name} holds a {kind!r} branch, not a PAM branch")
        cfg = json.loads(meta["interplay_config"]) if "interplay_config" in meta else None
        return Found("pam_file", path, shapes, where_is, meta, fconf, cfg,
                     f"PAM branch file ({(cfg or {}).get('num_blocks', '?')} copied blocks)")
    if has_branch:
        w = shapes["initial_combine_linear.weight"]
        if len(w) != 2 or w[0] == 0 or w[1] % w[0]:
            return Found("unknown", path, shapes, where_is, meta, fconf, None,
                         f"{path.name}: initial_combine_linear.weight is {list(w)}, neither PAM's [D, 5D] nor "
                         "DiffusionAsShader's [D, D]")
        slots = w[1] // w[0]
        if slots == 1:
            return Found("das", path, shapes, where_is, meta, fconf, None, (
                f"{path.name} is a DiffusionAsShader transformer (class {cls or 'CogVideoXTransformer3DModelTracking'}"
                f", the same name as PAM's): its initial_combine_linear is {list(w)} (one 3-D tracking video) where "
                f"PAM's is [{w[0]}, {5 * w[0]}] (five condition slots). DiffusionAsShader's tracking control is "
                "not supported by the pack; use a PAM checkpoint (huggingface.co/GasaiYU/PAM: dexycb_all_cond, "
                "oakink2_all_cond)."))
        if slots != len(SLOTS):
            return Found("unknown", path, shapes, where_is, meta, fconf, None,
                         f"{path.name}: initial_combine_linear.weight is {list(w)} ({slots} slots); PAM has "
                         f"{len(SLOTS)} ({', '.join(SLOTS)})")
        cfg = branch_config_from_shapes(shapes, fconf)
        main = _max_index(shapes, "transformer_blocks.")
        return Found("pam", path, shapes, where_is, meta, fconf, cfg, (
            f"released PAM transformer ({cls or 'no class name'}): {cfg['num_blocks']} copied blocks"
            + (f" of {main}" if main else "") + f", {len(SLOTS)} condition slots [{', '.join(SLOTS)}], "
            f"initial_combine_linear {list(w)}" + ("" if "num_tracking_blocks" in fconf else
                                                     " (block count read from the weights)")))
    if "patch_embed.proj.weight" in shapes and "transformer_blocks.0.attn1.norm_q.weight" in shapes:
        return Found("plain", path, shapes, where_is, meta, fconf, None, (
            f"{path.name} is a plain CogVideoX transformer ({cls or 'no class name'}; no transformer_blocks_copy, "
            "combine_linears or initial_combine_linear): load it as the backbone with the CogVideoX Loader and make "
            "a new PAM branch from it (PAM Branch Loader: new)"))
    return Found("unknown", path, shapes, where_is, meta, fconf, None,
                 f"{path.name} holds neither a PAM branch nor a CogVideoX transformer")


def _read(found: Found, keys, where: str, convert=None) -> dict:
    from ..weights import read_safetensors

    by_file: dict = {}
    for k in keys:
        by_file.setdefault(found.files[k], []).append(k)
    sd = {}
    for fp, ks in by_file.items():
        part, _ = read_safetensors(fp, where, keys=ks, convert=convert)
        sd.update(part)
    return sd


def _build_checked(cfg: dict, shapes: dict, path: Path, where: str, branch_only: bool = False) -> PAMBranch:
    """The branch on the meta device, its keys and shapes checked against the header before anything is read."""
    import inspect

    known = set(inspect.signature(PAMBranch.__init__).parameters) - {"self"}
    with torch.device("meta"):
        m = PAMBranch(**{k: v for k, v in cfg.items() if k in known})
    own = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    file_keys = set(shapes) if branch_only else {k for k in shapes if k.startswith(BRANCH_PREFIXES)}
    missing = sorted(set(own) - file_keys)
    unexpected = sorted(file_keys - set(own))
    wrong = [(k, tuple(shapes[k]), own[k]) for k in own if k in shapes and tuple(shapes[k]) != own[k]]
    if missing or unexpected or wrong:
        parts = [f"{where}: {path.name} does not match the PAM branch its config describes ({cfg.get('num_blocks')} "
                 f"blocks, width {m.inner_dim})."]
        if wrong:
            parts.append("shapes (key: file -> expected): " + "; ".join(f"{k}: {a} -> {b}" for k, a, b in wrong[:4]))
        if missing:
            parts.append(f"missing {len(missing)} keys, e.g. {missing[:4]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys, e.g. {unexpected[:4]}")
        parts.append("Fix: use the file the pack or the PAM release wrote, unchanged.")
        raise ValueError(" ".join(parts))
    return m


def _materialise(m: PAMBranch, sd: dict, dtype, device) -> PAMBranch:
    m.load_state_dict(sd, strict=True, assign=True)
    m.requires_grad_(False).eval()
    if dtype is not None or device is not None:
        cast(m, device=device, dtype=dtype)
    return m


def load_branch(path, *, dtype=None, device=None, where: str = "PAM branch") -> ControlBranch:
    """Load a PAM branch: the pack's branch file, or a released PAM transformer (folder or single file) of which
    only the branch's tensors are read. DiffusionAsShader and plain CogVideoX transformers are refused by name."""
    return load_released(path, dtype=dtype, device=device, where=where)[0]


def load_released(path, *, dtype=None, device=None, with_transformer: bool = False, where: str = "PAM branch"):
    """(ControlBranch, transformer or None, Found) from a released PAM transformer folder (or the pack's file).

    With ``with_transformer`` the folder's main weights (CogVideoX-5B-I2V's) are loaded too, into a
    CogVideoXTransformer3DModel built on the meta device, in the same pass over the shards (every tensor is read
    once, cast to ``dtype`` and moved to ``device`` as it is read); hand it to ``load_cogvideox(...,
    transformer=)`` to get a backbone without reading another transformer."""
    path = Path(path)
    found = inspect_weights(path, where)
    if found.layout in ("das", "plain", "unknown"):
        raise ValueError(f"{where}: {found.message}")
    if found.layout == "pam_file":
        cfg = found.config
        if cfg is None:
            raise ValueError(f"{where}: {path.name} declares kind 'pam' but has no interplay_config metadata")
        if with_transformer:
            raise ValueError(f"{where}: {path.name} is a branch file; it holds no backbone weights")
    else:
        cfg = found.config
    m = _build_checked(cfg, found.shapes, path, where, branch_only=found.layout == "pam_file")
    dev = torch.device(device) if device is not None else None

    def convert(t):  # cast and place each tensor as it is read: the file never sits in memory twice
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        return t.to(dev) if dev is not None else t

    keys = [k for k in found.shapes if k.startswith(BRANCH_PREFIXES)]
    tr = None
    if with_transformer:
        tr, main_keys = _meta_transformer(found, where)
        sd = _read(found, keys + main_keys, where, convert=convert)
        from ..backbones import cogvideox as cog

        cog._load_checked(tr, {k: sd.pop(k) for k in main_keys}, path,
                          "Fix: the folder's main weights must be a whole CogVideoX transformer.")
        cog._fix_buffers(tr, dict(tr.config))
        tr.requires_grad_(False).eval()
    else:
        sd = _read(found, keys, where, convert=convert)
    m = _materialise(m, sd, dtype, device)
    source = str(path)
    branch = ControlBranch(kind=KIND, family="cogvideox", module=m, config=_clean_config(m.config), source=source)
    return branch, tr, found


def _meta_transformer(found: Found, where: str):
    """A CogVideoXTransformer3DModel on the meta device for the folder's main weights, and their keys."""
    import inspect

    from diffusers import CogVideoXTransformer3DModel

    from ..backbones import cogvideox as cog

    main = [k for k in found.shapes if not k.startswith(BRANCH_PREFIXES)]
    fake = {k: torch.empty(found.shapes[k], device="meta") for k in main}
    cfg = cog.infer_transformer_config(fake, found.path)
    known = set(inspect.signature(CogVideoXTransformer3DModel.__init__).parameters) - {"self"}
    cfg.update({k: v for k, v in found.folder_config.items() if k in known})
    with torch.device("meta"):
        tr = CogVideoXTransformer3DModel(**cfg)
    return tr, main


def released_folder(path) -> Path | None:
    """``path`` (or its transformer/ sub-folder) when its config.json names a released PAM class, else None;
    DiffusionAsShader's folders carry the same name and are told apart on loading."""
    path = Path(path)
    folder = _folder_of(path)
    try:
        cls = json.loads((folder / "config.json").read_text()).get("_class_name")
    except (OSError, ValueError, AttributeError):
        return None
    return folder if cls in RELEASED_CLASSES else None


# ------------------------------------------------------------------------------------------- registry
def _new(backbone, num_blocks: int = 12, **kw) -> ControlBranch:
    check_backbone(backbone)
    return new_branch(backbone.denoiser, num_blocks=num_blocks, **kw)


def _detect(meta: dict, keys) -> bool:
    # a released PAM transformer saved as one bare file, or our file without its metadata
    return keys is not None and {"initial_combine_linear.weight", "combine_linears.0.weight"} <= set(keys)


def _task_class():
    from ..training.pam import PAMTask

    return PAMTask


registry.register(registry.BranchKind(
    kind=KIND, family="cogvideox", label="PAM motion branch", signals=(SIGNAL,),
    attach=PAMAttachment.from_bound, load=load_branch, save=save_branch, new=_new, task=TASK,
    task_class=_task_class, folder_classes=RELEASED_CLASSES, detect=_detect,
    hint="render depth / seg / hand-keypoint videos and connect them to PAM Control",
    # the released trainer (scripts/train_*_motion.sh): AdamW (0.9, 0.95), wd 1e-3, lr 1e-4, cosine with
    # restarts (1 cycle), 100 warm-up steps, clip 1.0
    train_defaults={"betas": (0.9, 0.95), "weight_decay": 1e-3, "lr": 1e-4, "schedule": "cosine_restarts",
                    "restarts": 1, "warmup": 100, "clip_norm": 1.0}))
