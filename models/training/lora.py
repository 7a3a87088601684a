"""LoRA training through peft on a frozen backbone (the trainer's Task protocol).

The LoRA layers are injected into a *structural copy* of the backbone's denoiser that shares every weight
tensor with the original (``shared_copy``): the input bundle is never mutated (nodes may hand the same
INTERPLAY_BACKBONE to several branches of a graph), costs no extra weight memory, and keeps the frozen
weights bit-identical. ``LoraTask.backbone`` is the bundle with the LoRA live, ready to sample.

Checkpoints use the diffusers LoRA key format: ``transformer.<module path>.lora_A.weight`` /
``lora_B.weight`` (what ``CogVideoXPipeline.load_lora_weights`` reads), with rank, alpha and targets in the
safetensors metadata (``interplay_lora``; alpha defaults to rank, so scale 1 matches diffusers' default).
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import save_file

from ..backbones.base import Backbone
from ..weights import read_safetensors

ADAPTER = "interplay"
# attention projections of diffusers' Attention (CogVideoX, Wan, SVD transformer blocks)
DEFAULT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
PREFIX = {"cogvideox": "transformer", "wan": "transformer", "svd": "unet"}


def shared_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of the module tree whose parameters and buffers ARE the original's tensors."""
    memo = {id(t): t for t in list(module.parameters()) + list(module.buffers())}
    return copy.deepcopy(module, memo)


def lora_config(rank: int = 16, alpha: float | None = None, target_modules=DEFAULT_TARGETS, dropout: float = 0.0):
    from peft import LoraConfig

    if rank < 1:
        raise ValueError(f"LoRA: rank must be >= 1; got {rank}")
    return LoraConfig(r=int(rank), lora_alpha=float(alpha if alpha is not None else rank),
                      target_modules=list(target_modules), lora_dropout=float(dropout), init_lora_weights=True)


def free_adapter_name(module: torch.nn.Module) -> str:
    """``interplay``, or ``interplay_2``, ``_3`` ... when LoRAs are already stacked on ``module``."""
    used = set(getattr(module, "peft_config", None) or {})
    name, i = ADAPTER, 2
    while name in used:
        name, i = f"{ADAPTER}_{i}", i + 1
    return name


def adapter_parameters(module: torch.nn.Module, adapter: str) -> list[torch.nn.Parameter]:
    """The parameters of one adapter (``...lora_A.<adapter>.weight``), not those of other stacked LoRAs."""
    return [p for n, p in module.named_parameters() if ".lora_" in n and n.split(".")[-2] == adapter]


def place_adapter(module: torch.nn.Module, adapter: str, dtype: torch.dtype) -> None:
    """Move one adapter's weights next to the weight of the layer each wraps, in ``dtype``.

    Never ``module.to(...)``: the frozen weights are shared with the source backbone (``shared_copy``), so that
    would convert the source's own tensors (fp8 storage upcast, an offloaded model moved)."""
    from peft.tuners.lora import LoraLayer

    for m in module.modules():
        if isinstance(m, LoraLayer) and adapter in m.lora_A:
            dev = m.get_base_layer().weight.device
            for p in list(m.lora_A[adapter].parameters()) + list(m.lora_B[adapter].parameters()):
                p.data = p.data.to(dev, dtype)


def activate_all(module: torch.nn.Module) -> None:
    """Every stacked adapter runs (peft activates only the newest on injection); all are left frozen."""
    from peft.tuners.lora import LoraLayer

    for m in module.modules():
        if isinstance(m, LoraLayer):
            m.set_adapter(list(m.lora_A.keys()))  # also sets requires_grad on them: undone below
    for n, p in module.named_parameters():
        if ".lora_" in n:
            p.requires_grad_(False)


def add_lora(module: torch.nn.Module, rank: int = 16, alpha: float | None = None, target_modules=DEFAULT_TARGETS,
             dropout: float = 0.0, adapter: str = ADAPTER, generator: torch.Generator | None = None) -> torch.nn.Module:
    """Inject LoRA layers into ``module`` in place (B zero-initialised: output unchanged); returns it.
    Adapters already on ``module`` keep running beside the new one. A is drawn from ``generator`` (default:
    backbones.base.init_generator(0)) with peft's own distribution, not from the global RNG peft uses."""
    import math
    import warnings

    from peft import inject_adapter_in_model
    from peft.tuners.lora import LoraLayer

    from ..backbones.base import init_generator

    names = {n.rsplit(".", 1)[-1] for n, _ in module.named_modules()} | {n for n, _ in module.named_modules()}
    if not any(t in names or any(n.endswith("." + t) for n in names) for t in target_modules):
        raise ValueError(f"LoRA: none of the target modules {list(target_modules)} exist in "
                         f"{type(module).__name__}; pick module names such as to_q, to_k, to_v, to_out.0")
    if adapter in (getattr(module, "peft_config", None) or {}):
        raise ValueError(f"LoRA: adapter {adapter!r} is already on this model")
    with warnings.catch_warnings():  # "multiple adapters in the model": stacking is intended here
        warnings.filterwarnings("ignore", message=".*peft_config.*")
        with torch.random.fork_rng(devices=[]):  # peft's own init draws from the global RNG: keep it unmoved
            inject_adapter_in_model(lora_config(rank, alpha, target_modules, dropout), module, adapter_name=adapter)
    g = generator if generator is not None else init_generator(0)
    with torch.no_grad():  # peft's init_lora_weights=True: A kaiming-uniform(a=sqrt(5)), B zero
        for _, m in sorted((n, m) for n, m in module.named_modules() if isinstance(m, LoraLayer)
                           and adapter in m.lora_A):
            a = m.lora_A[adapter].weight
            fresh = torch.empty(a.shape, dtype=torch.float32)  # drawn in fp32 (A may sit in fp8 storage)
            a.copy_(torch.nn.init.kaiming_uniform_(fresh, a=math.sqrt(5), generator=g))
            m.lora_B[adapter].weight.zero_()
    activate_all(module)
    return module


def lora_state_dict(module: torch.nn.Module, prefix: str = "transformer", adapter: str = ADAPTER) -> dict:
    """The LoRA weights in diffusers format (``<prefix>.<path>.lora_A.weight``)."""
    from peft import get_peft_model_state_dict

    sd = get_peft_model_state_dict(module, adapter_name=adapter)
    return {f"{prefix}.{k}" if prefix else k: v.detach().cpu().clone() for k, v in sd.items()}


def load_lora_state_dict(module: torch.nn.Module, sd: dict, prefix: str = "transformer", adapter: str = ADAPTER,
                         source: str = "the file") -> None:
    from peft import set_peft_model_state_dict

    strip = f"{prefix}." if prefix else ""
    inner = {k[len(strip):] if k.startswith(strip) else k: v for k, v in sd.items()}
    try:
        res = set_peft_model_state_dict(module, inner, adapter_name=adapter)
    except RuntimeError as ex:  # size mismatch: a LoRA of another model (2B vs 5B, another width)
        first = str(ex).strip().splitlines()[-1].strip()
        raise ValueError(f"LoRA: {source} does not fit this model's layer sizes ({first}); it was trained for a "
                         "different model") from ex
    missing = [k for k in getattr(res, "unexpected_keys", []) if "lora_" in k]
    if missing:
        raise ValueError(f"LoRA: {len(missing)} weights of {source} match no layer of this model, e.g. "
                         f"{missing[0]}; it was trained for a different model")


def save_lora(sd: dict, path, meta: dict) -> Path:
    path = Path(path)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path),
              metadata={"format": "pt", "interplay_lora": json.dumps(meta)})
    return path


def read_lora(path) -> tuple[dict, dict]:
    """(state dict, interplay_lora metadata or {}) of a LoRA safetensors file. A file saved by diffusers'
    ``save_lora_weights`` carries its peft config as ``lora_adapter_metadata``: its ``lora_alpha`` is used. Bad,
    non-object or wrong-typed metadata is reported with the file's name."""
    import math

    from ..weights import WeightsFileError, metadata_json

    out, raw = read_safetensors(path, "LoRA")
    meta = metadata_json(raw, "interplay_lora", path, "LoRA") if "interplay_lora" in raw else {}
    if "alpha" not in meta and raw.get("lora_adapter_metadata"):
        d = metadata_json(raw, "lora_adapter_metadata", path, "LoRA")
        for prefix in ("", *(f"{p}." for p in sorted(set(PREFIX.values())))):
            if d.get(prefix + "alpha_pattern") or d.get(prefix + "rank_pattern"):
                raise ValueError(f"LoRA: {Path(path).name} sets a different alpha or rank per layer "
                                 "(alpha_pattern/rank_pattern), which this loader does not support")
            if prefix + "lora_alpha" in d:
                meta["alpha"] = d[prefix + "lora_alpha"]
    alpha = meta.get("alpha")
    if alpha is not None and not (isinstance(alpha, (int, float)) and not isinstance(alpha, bool)
                                  and math.isfinite(alpha) and 0 <= alpha <= 1e6):
        raise WeightsFileError(f"LoRA: {path}: its metadata gives alpha {alpha!r}; expected a number in 0..1e6. "
                               "Save the LoRA again.")
    if not isinstance(meta.get("prefix", ""), str):
        raise WeightsFileError(f"LoRA: {path}: its metadata gives prefix {meta['prefix']!r}; expected a string "
                               "such as 'transformer'")
    return out, meta


def apply_lora(bb: Backbone, path, strength: float = 1.0) -> Backbone:
    """A new bundle whose denoiser (a shared-weight copy) runs the LoRA in ``path`` beside any LoRA ``bb``
    already has; ``bb`` and its weights are unchanged.

    Reads the diffusers/peft key format (``<prefix>.<module path>.lora_A.weight`` / ``lora_B.weight``: what this
    pack's trainer and diffusers' ``save_lora_weights`` write). Rank comes from the shapes, the wrapped modules
    from the key paths, alpha from the pack's metadata (else alpha = rank, diffusers' default)."""
    path = Path(path)
    sd, meta = read_lora(path)
    a_keys = [k for k in sd if k.endswith(".lora_A.weight")]
    odd = next((k for k in sd if not k.endswith((".lora_A.weight", ".lora_B.weight"))), None)
    if not a_keys or odd is not None:
        raise ValueError(f"LoRA: {path.name} is not in the diffusers/peft LoRA format (keys like "
                         "transformer.transformer_blocks.0.attn1.to_q.lora_A.weight / .lora_B.weight)"
                         + (f"; it has e.g. {odd!r}" if odd else "; it has no lora_A weights")
                         + ". Kohya-style lora_down/lora_up files: convert them with diffusers first.")
    prefix = meta.get("prefix", PREFIX.get(bb.family, "transformer"))
    strip = f"{prefix}." if prefix else ""
    a_of = {(k[len(strip):] if k.startswith(strip) else k)[: -len(".lora_A.weight")]: k for k in a_keys}
    paths = sorted(a_of)
    ranks = {sd[k].shape[0] for k in a_keys}
    if len(ranks) != 1:
        raise ValueError(f"LoRA: {path.name} mixes ranks {sorted(ranks)}; only one rank per file is supported")
    rank = ranks.pop()
    alpha = float(meta.get("alpha", rank)) * float(strength)  # read_lora vetted it
    den = shared_copy(bb.denoiser)
    adapter = free_adapter_name(den)
    known = {n for n, _ in den.named_modules()}
    absent = [p for p in paths if p not in known]
    if absent:
        raise ValueError(f"LoRA: {len(absent)} of the {len(paths)} layers {path.name} adapts do not exist in this "
                         f"{bb.family} model (e.g. {absent[0]!r}); it was trained for a different model")
    # the file's shapes against the layers before peft allocates anything at the file's rank
    mods = dict(den.named_modules())
    for p in paths:
        lin = mods[p]
        if isinstance(lin, torch.nn.Linear):
            a_key = a_of[p]
            a_shape = tuple(sd[a_key].shape)
            b_shape = tuple(sd.get(a_key[: -len("lora_A.weight")] + "lora_B.weight", torch.empty(0)).shape)
            if a_shape != (rank, lin.in_features) or b_shape != (lin.out_features, rank):
                raise ValueError(f"LoRA: {path.name} does not fit this model's layer sizes ({p}: lora_A {a_shape} / "
                                 f"lora_B {b_shape}, the layer needs ({rank}, {lin.in_features}) / "
                                 f"({lin.out_features}, {rank})); it was trained for a different model")
    add_lora(den, rank, alpha, paths, adapter=adapter)
    load_lora_state_dict(den, sd, prefix, adapter, source=path.name)  # copied, and cast, into the adapter
    place_adapter(den, adapter, bb.dtype)
    den.requires_grad_(False)
    if not bb.denoiser.training:
        den.eval()
    return bb.replace(denoiser=den, loras=tuple(bb.loras) + ((path.name, float(strength)),))


class LoraTask:
    """Train a LoRA on ``backbone.denoiser`` with a base task's loss.

    ``base(bb_with_lora) -> Task`` builds the loss owner (e.g. ``CogVideoXBackboneTask(bb, train=False)``: the
    family's objective on the frozen model); only its ``loss`` is used. LoRA weights train in float32.
    """

    def __init__(self, backbone: Backbone, base: Callable[[Backbone], object], *, rank: int = 16,
                 alpha: float | None = None, target_modules=DEFAULT_TARGETS, dropout: float = 0.0,
                 prefix: str | None = None, generator: torch.Generator | None = None):
        self.source_backbone = backbone
        backbone.denoiser.requires_grad_(False)
        den = shared_copy(backbone.denoiser)
        self.adapter = free_adapter_name(den)
        add_lora(den, rank, alpha, target_modules, dropout, adapter=self.adapter, generator=generator)
        place_adapter(den, self.adapter, torch.float32)
        self.lora_params = adapter_parameters(den, self.adapter)
        for p in self.lora_params:
            p.requires_grad_(True)
        self.denoiser = den
        self.backbone = backbone.replace(denoiser=den, loras=tuple(backbone.loras) + (("training", 1.0),))
        self.base = base(self.backbone)
        self.prefix = prefix if prefix is not None else PREFIX.get(backbone.family, "transformer")
        self.hp = dict(rank=int(rank), alpha=float(alpha if alpha is not None else rank),
                       target_modules=list(target_modules), dropout=float(dropout), prefix=self.prefix)

    # -- Task protocol
    def trainable_parameters(self):
        return list(self.lora_params)

    def trainable_state_dict(self) -> dict:
        return lora_state_dict(self.denoiser, self.prefix, self.adapter)

    def load_trainable_state_dict(self, sd: dict) -> None:
        load_lora_state_dict(self.denoiser, sd, self.prefix, self.adapter)

    def config(self) -> dict:
        base_cfg = self.base.config() if hasattr(self.base, "config") else {}
        return {"task": "lora", "family": self.source_backbone.family, **self.hp, "base": base_cfg}

    def loss(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        return self.base.loss(batch, generator)

    def save_weights(self, path, sd: dict) -> None:
        save_lora(sd, path, {**self.hp, "family": self.source_backbone.family})

    def train(self):
        for m in self.denoiser.modules():
            if "lora" in type(m).__module__:
                m.train()

    def eval(self):
        self.denoiser.eval()

    def enable_gradient_checkpointing(self):
        fn = getattr(self.denoiser, "enable_gradient_checkpointing", None)
        if callable(fn):
            fn()


def add_lora_weights(bb: Backbone, sd: dict, *, alpha: float | None = None, strength: float = 1.0,
                     prefix: str | None = None, name: str = "lora") -> Backbone:
    """``apply_lora`` for weights already read (e.g. the LoRA part of a MATRIX file, which also holds other
    modules): ``sd`` holds only ``<prefix>.<path>.lora_A/B.weight`` keys; alpha defaults to the rank. A new bundle
    over a shared-weight copy; ``bb`` is unchanged."""
    a_keys = [k for k in sd if k.endswith(".lora_A.weight")]
    odd = next((k for k in sd if not k.endswith((".lora_A.weight", ".lora_B.weight"))), None)
    if not a_keys or odd is not None:
        raise ValueError(f"LoRA: {name} holds no LoRA weights" if not a_keys else
                         f"LoRA: {name} has a non-LoRA key {odd!r} among its LoRA weights")
    prefix = PREFIX.get(bb.family, "transformer") if prefix is None else prefix
    strip = f"{prefix}." if prefix else ""
    paths = sorted({(k[len(strip):] if k.startswith(strip) else k)[: -len(".lora_A.weight")] for k in a_keys})
    ranks = {sd[k].shape[0] for k in a_keys}
    if len(ranks) != 1:
        raise ValueError(f"LoRA: {name} mixes ranks {sorted(ranks)}; only one rank per file is supported")
    rank = ranks.pop()
    den = shared_copy(bb.denoiser)
    known = {n for n, _ in den.named_modules()}
    absent = [p for p in paths if p not in known]
    if absent:
        raise ValueError(f"LoRA: {len(absent)} of the {len(paths)} layers {name} adapts do not exist in this "
                         f"{bb.family} model (e.g. {absent[0]!r}); it was trained for a different model")
    adapter = free_adapter_name(den)
    add_lora(den, rank, float(alpha if alpha is not None else rank) * float(strength), paths, adapter=adapter)
    load_lora_state_dict(den, sd, prefix, adapter, source=name)
    place_adapter(den, adapter, bb.dtype)
    den.requires_grad_(False)
    if not bb.denoiser.training:
        den.eval()
    return bb.replace(denoiser=den, loras=tuple(bb.loras) + ((name, float(strength)),))
