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


def add_lora(module: torch.nn.Module, rank: int = 16, alpha: float | None = None, target_modules=DEFAULT_TARGETS,
             dropout: float = 0.0) -> torch.nn.Module:
    """Inject LoRA layers into ``module`` in place (B zero-initialised: output unchanged); returns it."""
    from peft import inject_adapter_in_model

    names = {n.rsplit(".", 1)[-1] for n, _ in module.named_modules()} | {n for n, _ in module.named_modules()}
    if not any(t in names or any(n.endswith("." + t) for n in names) for t in target_modules):
        raise ValueError(f"LoRA: none of the target modules {list(target_modules)} exist in "
                         f"{type(module).__name__}; pick module names such as to_q, to_k, to_v, to_out.0")
    inject_adapter_in_model(lora_config(rank, alpha, target_modules, dropout), module, adapter_name=ADAPTER)
    return module


def lora_state_dict(module: torch.nn.Module, prefix: str = "transformer") -> dict:
    """The LoRA weights in diffusers format (``<prefix>.<path>.lora_A.weight``)."""
    from peft import get_peft_model_state_dict

    sd = get_peft_model_state_dict(module, adapter_name=ADAPTER)
    return {f"{prefix}.{k}" if prefix else k: v.detach().cpu().clone() for k, v in sd.items()}


def load_lora_state_dict(module: torch.nn.Module, sd: dict, prefix: str = "transformer") -> None:
    from peft import set_peft_model_state_dict

    strip = f"{prefix}." if prefix else ""
    inner = {k[len(strip):] if k.startswith(strip) else k: v for k, v in sd.items()}
    res = set_peft_model_state_dict(module, inner, adapter_name=ADAPTER)
    missing = [k for k in getattr(res, "unexpected_keys", []) if "lora_" in k]
    if missing:
        raise ValueError(f"LoRA: {len(missing)} weights do not match the model, e.g. {missing[0]}")


def save_lora(sd: dict, path, meta: dict) -> Path:
    path = Path(path)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path),
              metadata={"format": "pt", "interplay_lora": json.dumps(meta)})
    return path


def read_lora(path) -> tuple[dict, dict]:
    """(state dict, interplay_lora metadata or {}) of a LoRA safetensors file."""
    out, meta = read_safetensors(path, "LoRA")
    try:
        return out, json.loads(meta.get("interplay_lora", "{}"))
    except json.JSONDecodeError as ex:
        raise ValueError(f"LoRA: {path}: its 'interplay_lora' metadata is not JSON ({ex}); save it again") from ex


def apply_lora(bb: Backbone, path, strength: float = 1.0) -> Backbone:
    """A new bundle whose denoiser (a shared-weight copy) runs the LoRA in ``path``; ``bb`` is unchanged."""
    sd, meta = read_lora(path)
    prefix = meta.get("prefix", PREFIX.get(bb.family, "transformer"))
    rank = meta.get("rank") or next(v.shape[0] for k, v in sd.items() if k.endswith("lora_A.weight"))
    targets = meta.get("target_modules") or sorted({k.split(".lora_")[0].rsplit(".", 1)[-1] for k in sd})
    alpha = float(meta.get("alpha", rank)) * float(strength)
    den = add_lora(shared_copy(bb.denoiser), rank, alpha, targets)
    load_lora_state_dict(den, {k: v.to(bb.dtype) for k, v in sd.items()}, prefix)
    den.to(bb.device, bb.dtype).requires_grad_(False)
    return bb.replace(denoiser=den, loras=tuple(bb.loras) + ((str(Path(path).name), float(strength)),))


class LoraTask:
    """Train a LoRA on ``backbone.denoiser`` with a base task's loss.

    ``base(bb_with_lora) -> Task`` builds the loss owner (e.g. ``CogVideoXBackboneTask(bb, train=False)``: the
    family's objective on the frozen model); only its ``loss`` is used. LoRA weights train in float32.
    """

    def __init__(self, backbone: Backbone, base: Callable[[Backbone], object], *, rank: int = 16,
                 alpha: float | None = None, target_modules=DEFAULT_TARGETS, dropout: float = 0.0,
                 prefix: str | None = None):
        self.source_backbone = backbone
        backbone.denoiser.requires_grad_(False)
        den = add_lora(shared_copy(backbone.denoiser), rank, alpha, target_modules, dropout)
        self.lora_params = [p for n, p in den.named_parameters() if "lora_" in n]
        for p in self.lora_params:
            p.data = p.data.to(backbone.device, torch.float32)
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
        return lora_state_dict(self.denoiser, self.prefix)

    def load_trainable_state_dict(self, sd: dict) -> None:
        load_lora_state_dict(self.denoiser, sd, self.prefix)

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
