"""The loaded-backbone bundle every family returns and every sampler and trainer takes, and the model-forward
contract every family implements.

The contract (see :class:`Attachment`): a family's denoiser forward (``cogvideox.forward``, ``svd.unet_forward``,
``wan.forward``) takes a list of attachments and opens the same doors to each, in this order:

1. ``begin(ctx)``: before anything runs; ``ctx`` holds the assembled input, timesteps, text/context stream and
   the batch rows. A ControlNet-style branch computes its residuals here.
2. ``after_embed(ctx, hidden)``: the video tokens (transformers) or the ``conv_in`` features (the SVD UNet) right
   after the input embedding; return them, changed or not (GameCraft's camera tokens, PAM's combination).
3. ``after_block(ctx, i, hidden)``: after block ``i`` of the family's block list; the text stream is in
   ``ctx.text`` (transformers) and the skip list in ``ctx.skips`` (the UNet, where the down blocks are
   0..n-1, the mid block n and the up blocks follow); return the (changed) hidden states.
4. ``attention(ctx, layer, q, k, v, call)``: for the layers an attachment lists in ``attention_layers(ctx)``
   (module names of attention layers in the denoiser, see each family's ``attention_layers``), the family swaps in
   a slot that computes q, k, v exactly as diffusers does and passes them down a chain; ``call(q, k, v)`` runs the
   rest of the chain (finally SDPA). Observe by calling ``call`` and looking; replace by returning something else.
5. ``end(ctx, out)``: the model output; return it.

With no attachments every family forward equals the diffusers model's own forward (tests). Several attachments
compose: they are called in list order at each door and their changes accumulate.

``InputLayout`` declares which input channels hold what (noise, image latent, masks, extra conditions), so
samplers and trainers assemble inputs by name instead of guessing from channel counts.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch

from .. import runtime

FAMILIES = ("svd", "cogvideox", "wan")


# ------------------------------------------------------------------------------------------- input layout
@dataclass(frozen=True)
class InputLayout:
    """The denoiser's input channels, in order: ``parts`` = ((name, channels), ...).

    Names in use: "noise" (the noisy latent, always first), "image" (the image-condition latent: CogVideoX-I2V,
    SVD), "mask" (Wan's 4-channel first-frame indicator), "id_map" (MATRIX's widened projection), or a method's
    own. ``assemble`` concatenates given parts along the channel axis and fills missing ones with zeros, so a
    widened projection whose extra channels get no input behaves exactly like the narrow one.
    """

    parts: tuple[tuple[str, int], ...]

    def __post_init__(self):
        names = [n for n, _ in self.parts]
        if not names or names[0] != "noise":
            raise ValueError(f"input layout must start with 'noise'; got {names}")
        if len(set(names)) != len(names):
            raise ValueError(f"input layout names must be unique; got {names}")

    @property
    def channels(self) -> int:
        return sum(c for _, c in self.parts)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.parts)

    def has(self, name: str) -> bool:
        return name in self.names

    def size(self, name: str) -> int:
        return dict(self.parts)[name]

    def slice(self, name: str) -> slice:
        start = 0
        for n, c in self.parts:
            if n == name:
                return slice(start, start + c)
            start += c
        raise KeyError(f"input layout has no {name!r} part; parts: {self.names}")

    def widened(self, name: str, channels: int) -> "InputLayout":
        """This layout with one more part appended (a widened input projection)."""
        return InputLayout(self.parts + ((name, int(channels)),))

    def assemble(self, parts: dict, dim: int) -> torch.Tensor:
        """Concatenate ``parts[name]`` in layout order along ``dim``; a missing part is zeros shaped like "noise"
        with that part's channel count. Unknown names are refused by name."""
        unknown = sorted(set(parts) - set(self.names))
        if unknown:
            raise ValueError(f"input parts {unknown} are not in the denoiser's layout {self.names}")
        noise = parts["noise"]
        out = []
        for n, c in self.parts:
            t = parts.get(n)
            if t is None:
                shape = list(noise.shape)
                shape[dim] = c
                t = noise.new_zeros(shape)
            elif t.shape[dim] != c:
                raise ValueError(f"input part {n!r} has {t.shape[dim]} channels; the layout {self.parts} wants {c}")
            out.append(t.to(noise.dtype))
        return out[0] if len(out) == 1 else torch.cat(out, dim=dim)

    def to_json(self) -> list:
        return [[n, c] for n, c in self.parts]

    @classmethod
    def from_json(cls, value) -> "InputLayout":
        try:
            return cls(tuple((str(n), int(c)) for n, c in value))
        except (TypeError, ValueError) as ex:
            raise ValueError(f"input layout must be a list of [name, channels]; got {value!r}") from ex


# ----------------------------------------------------------------------------------- forward contract
@dataclass
class ForwardContext:
    """What every door of a denoiser forward sees (one per forward call).

    Fields:
        bb: the Backbone.
        latent_in: the assembled model input (CogVideoX/Wan [B,f,C,h,w], SVD [B,F,C,h,w]).
        timestep: [B], or [B, N] per-token timesteps where the family supports them (Wan).
        text_in: the raw text/context input ([B,T,D] prompt embeddings; SVD: image embeddings [B,1,D]).
        text: the text stream as it flows (transformers; updated before each ``after_block``).
        temb: the time embedding the blocks use.
        rotary: the rotary embedding (cos, sin) or None.
        grid: token grid (frames, height, width) of the video tokens after patching.
        rows: batch row name -> slice (set by the guided step: "uncond", "cond", "no_control", ...; a plain call
            has {"all": slice(None)}); attachments use it to act on some rows only.
        skips: the UNet's skip tensors (SVD), a list attachments may change in ``after_block``.
        extra: family inputs (SVD: ``time_ids``; CogVideoX: ``ofs``).
        state: scratch space, one dict per attachment (``ctx.state_of(att)``).
    """

    bb: "Backbone"
    latent_in: torch.Tensor
    timestep: torch.Tensor
    text_in: torch.Tensor | None = None
    text: torch.Tensor | None = None
    temb: torch.Tensor | None = None
    rotary: Any = None
    grid: tuple[int, int, int] | None = None
    rows: dict = field(default_factory=lambda: {"all": slice(None)})
    skips: list | None = None
    extra: dict = field(default_factory=dict)
    state: dict = field(default_factory=dict)

    def state_of(self, att) -> dict:
        return self.state.setdefault(id(att), {})

    @property
    def batch(self) -> int:
        return int(self.latent_in.shape[0])

    def row_mask(self, *names: str) -> torch.Tensor:
        """[B] bool: True on the batch rows of the given row names."""
        m = torch.zeros(self.batch, dtype=torch.bool)
        for n in names:
            if n in self.rows:
                m[self.rows[n]] = True
        return m


class Attachment:
    """Something that enters a denoiser forward through the family's doors (see the module docstring).

    Subclass and override only what you use; the defaults change nothing. A control branch's registry entry turns
    (branch, signals) into one of these; samplers and trainers pass a list of them to the family forward.
    """

    def attention_layers(self, ctx: ForwardContext) -> Iterable[str]:
        """Names of the attention layers whose slot this attachment uses (``attention`` is called only there)."""
        return ()

    def begin(self, ctx: ForwardContext) -> None:
        pass

    def after_embed(self, ctx: ForwardContext, hidden: torch.Tensor) -> torch.Tensor:
        return hidden

    def after_block(self, ctx: ForwardContext, i: int, hidden: torch.Tensor) -> torch.Tensor:
        return hidden

    def attention(self, ctx: ForwardContext, layer: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  call: Callable) -> torch.Tensor:
        return call(q, k, v)

    def end(self, ctx: ForwardContext, out: torch.Tensor) -> torch.Tensor:
        return out

    def modules(self) -> list[torch.nn.Module]:
        """Modules the attachment runs (moved with the denoiser under offload, compiled with it)."""
        return []

    def guidance_rows(self) -> list[tuple[str, str, Any]]:
        """Extra batch rows this attachment needs, as (row name, the row whose inputs it copies, scale): the guided
        step adds ``scale * (like - row)`` (a PAG-style perturbation pass: the attachment acts on its own row,
        e.g. ``("perturbed", "cond", 1.0)``). Empty for ordinary controls."""
        return []


def heads_qkv(attn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
    """[B, N, heads*d] projections of a diffusers ``Attention`` -> [B, heads, N, d] each, with its per-head QK norm
    (the step the CogVideoX and SVD slot processors share with diffusers' own processors)."""
    b, d = q.shape[0], k.shape[-1] // attn.heads
    q, k, v = (t.view(b, -1, attn.heads, d).transpose(1, 2) for t in (q, k, v))
    if attn.norm_q is not None:
        q = attn.norm_q(q)
    if attn.norm_k is not None:
        k = attn.norm_k(k)
    return q, k, v


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The end of every attention chain: diffusers' call, exactly."""
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, is_causal=False)


def attention_chain(ctx: ForwardContext, layer: str, attachments: Sequence[Attachment], mask=None) -> Callable:
    """call(q, k, v) running each attachment's ``attention`` in list order, then SDPA."""

    def last(q, k, v):
        return sdpa(q, k, v, mask)

    call = last
    for att in reversed(list(attachments)):
        call = (lambda a, nxt: lambda q, k, v: a.attention(ctx, layer, q, k, v, nxt))(att, call)
    return call


@contextlib.contextmanager
def attention_slots(ctx: ForwardContext, attachments: Sequence[Attachment], layers: dict,
                    make_slot: Callable[[str, Callable], Any]):
    """Swap a slot processor into every attention layer some attachment asks for, for the duration of one forward.

    ``layers``: name -> diffusers Attention module (the family's ``attention_layers``); ``make_slot(name, chain)``
    builds the family's slot processor around ``chain`` (from :func:`attention_chain`). Unknown names are
    refused, naming the valid ones. Yields the set of slotted layer names: a family forward must not
    gradient-checkpoint the blocks holding them (backward would recompute those blocks after the slots are
    gone, without the attachments)."""
    wanted: dict[str, list[Attachment]] = {}
    for att in attachments:
        for name in att.attention_layers(ctx) or ():
            if name not in layers:
                some = ", ".join(list(layers)[:4])
                raise ValueError(f"{type(att).__name__} asks for attention layer {name!r}, which this "
                                 f"{ctx.bb.family} denoiser does not have (layers are named like {some}, ...)")
            wanted.setdefault(name, []).append(att)
    saved = []
    try:
        for name, atts in wanted.items():
            mod = layers[name]
            saved.append((mod, mod.processor))
            mod.processor = make_slot(name, lambda mask=None, _n=name, _a=atts: attention_chain(ctx, _n, _a, mask))
        yield set(wanted)
    finally:
        for mod, proc in saved:
            mod.processor = proc


def run_begin(ctx: ForwardContext, attachments: Sequence[Attachment]) -> None:
    for att in attachments:
        att.begin(ctx)


def run_after_embed(ctx: ForwardContext, attachments: Sequence[Attachment], hidden):
    for att in attachments:
        hidden = att.after_embed(ctx, hidden)
    return hidden


def run_after_block(ctx: ForwardContext, attachments: Sequence[Attachment], i: int, hidden):
    for att in attachments:
        hidden = att.after_block(ctx, i, hidden)
    return hidden


def run_end(ctx: ForwardContext, attachments: Sequence[Attachment], out):
    for att in attachments:
        out = att.end(ctx, out)
    return out


@dataclass
class Backbone:
    """A frozen video diffusion backbone with its encoders (ComfyUI type ``INTERPLAY_BACKBONE``).

    Fields:
        family: "svd" | "cogvideox" | "wan"; selects the scheduler family, loss and sampler.
        variant: what was detected at load, e.g. "cogvideox-5b-i2v", "svd-xt", "wan2.2-i2v-a14b", "tiny".
        denoiser: the diffusers model (UNetSpatioTemporalConditionModel, CogVideoXTransformer3DModel,
            WanTransformer3DModel). For two-expert Wan, the high-noise expert.
        vae: the family's diffusers autoencoder.
        text_encoder, tokenizer: prompt encoder (T5 / umT5), None for SVD.
        image_encoder, image_processor: CLIP vision encoder (SVD, Wan 2.1 I2V), else None.
        experts: extra denoisers by name (Wan2.2 "low_noise") and the switch boundary in ``extra``.
        scheduler_config: the family scheduler's config (from the folder, else the reference defaults).
        dtype: compute dtype; ``storage_dtype`` may be float8 with upcast at compute.
        device: compute device; ``offload_device`` where idle parts wait when ``offload`` is "model".
        vae_tiling: tile VAE encode/decode to bound memory.
        loras: LoRA adapters applied (names and strengths), for provenance.
        source: what was loaded from where, for error messages and the UI.
        extra: family-specific facts (e.g. ``vae_scale_factor_spatial``).
        layout: the denoiser's :class:`InputLayout` (which input channels are noise, image latent, masks, extra
            conditions), declared by the family loader; ``replace(layout=...)`` after widening a projection.

    Bundles are never mutated by nodes: ``replace()`` returns a shallow copy sharing the weights.
    """

    family: str
    variant: str
    denoiser: torch.nn.Module
    vae: torch.nn.Module | None = None
    text_encoder: torch.nn.Module | None = None
    tokenizer: Any = None
    image_encoder: torch.nn.Module | None = None
    image_processor: Any = None
    experts: dict[str, torch.nn.Module] = field(default_factory=dict)
    scheduler_config: dict = field(default_factory=dict)
    dtype: torch.dtype = torch.float32
    storage_dtype: torch.dtype | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    offload_device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    offload: str = "none"
    vae_tiling: bool = False
    loras: tuple = ()
    source: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    layout: InputLayout | None = None

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"unknown backbone family {self.family!r}; expected one of {FAMILIES}")

    def replace(self, **changes) -> "Backbone":
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        n = sum(p.numel() for p in self.denoiser.parameters())
        return f"{self.family}/{self.variant} denoiser {n / 1e6:.1f}M params, {self.dtype}, {self.device}"


def cast(module: torch.nn.Module, *args, **kwargs) -> torch.nn.Module:
    """``module.to(*args, **kwargs)`` as plain ``nn.Module.to``: diffusers' ``ModelMixin.to`` logs "should be kept
    in float32: []" on every dtype cast, even for models with no such modules. Returns the module."""
    return torch.nn.Module.to(module, *args, **kwargs)


def plain_state_dict(module: torch.nn.Module) -> dict:
    """``module.state_dict()`` without LoRA adapters, peft's ``<layer>.base_layer.<name>`` keys named
    ``<layer>.<name>`` again: the frozen weights as the plain model names them. A control branch initialised from
    a backbone thus gets the same weights whether or not a LoRA is applied to it (peft's names would silently
    match nothing)."""
    return {k.replace(".base_layer.", "."): v for k, v in module.state_dict().items() if ".lora_" not in k}


@contextlib.contextmanager
def on_device(bb: Backbone, *modules):
    """Move offloaded parts (``offload="model"``) to the compute device for the duration of the block, then
    back to the offload device; a no-op otherwise. Shared by every family's encode/denoise/decode stages."""
    if bb.offload != "model":
        yield
        return
    for m in modules:
        if m is not None:
            m.to(bb.device)
    try:
        yield
    finally:
        for m in modules:
            if m is not None:
                m.to(bb.offload_device)
        runtime.empty_cache()


def seeded_init(module: torch.nn.Module, generator: torch.Generator, skip=()) -> torch.nn.Module:
    """Re-initialise every Linear, Conv and Embedding of ``module`` from ``generator`` with PyTorch's default
    distributions (weight kaiming-uniform with a = sqrt(5), bias uniform(+-1/sqrt(fan_in)); embeddings N(0, 1)),
    so a new module depends on the run's seed and not on the global RNG's history. Layers whose parameters are all
    in ``skip`` (names the caller overwrites next, e.g. blocks copied from a backbone) are left alone. Norm layers
    start deterministic (ones/zeros) and are untouched. Zero-initialised layers must be zeroed again after."""
    import math

    skip = set(skip)
    with torch.no_grad():
        for name, m in module.named_modules():
            own = [f"{name}.{n}" if name else n for n, _ in m.named_parameters(recurse=False)]
            if not own or all(n in skip for n in own):
                continue
            if isinstance(m, (torch.nn.Linear, torch.nn.modules.conv._ConvNd)):
                torch.nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=generator)
                if m.bias is not None:
                    fan_in = m.weight[0].numel()
                    bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
                    torch.nn.init.uniform_(m.bias, -bound, bound, generator=generator)
            elif isinstance(m, torch.nn.Embedding):
                torch.nn.init.normal_(m.weight, generator=generator)
    return module


def init_generator(seed: int = 0) -> torch.Generator:
    """The CPU generator new trainable weights (control branches, LoRAs) are drawn from for run seed ``seed``."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + 424_242) % (2 ** 63))
