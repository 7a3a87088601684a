"""LoRA training through peft on a frozen backbone (the trainer's Task protocol).

The LoRA layers are injected into a *structural copy* of the backbone's denoiser that shares every weight
tensor with the original (``shared_copy``): the input bundle is never mutated (nodes may hand the same
INTERPLAY_BACKBONE to several branches of a graph), costs no extra weight memory, and keeps the frozen
weights bit-identical. ``LoraTask.backbone`` is the bundle with the LoRA live, ready to sample.

Checkpoints use the diffusers LoRA key format: ``transformer.<module path>.lora_A.weight`` /
``lora_B.weight`` (what ``CogVideoXPipeline.load_lora_weights`` reads), with rank, alpha and targets in the
safetensors metadata (``interplay_lora``; alpha defaults to rank, so scale 1 matches diffusers' default).

A task can scope the LoRA to named blocks (``lora_layers``: block indices of the family's block list, or full module
paths in ``target_modules``) and train other modules in full beside it (``train_modules``, e.g. a widened
``patch_embed.proj``): float32 masters in their own optimizer group (``train_modules_lr_scale``), saved in the same
file as ``extra.<parameter path>`` with the module names in the metadata; the loader replaces those weights.
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
    from the key paths, alpha from the pack's metadata (else alpha = rank, diffusers' default).

    A file from a run with ``train_modules`` also holds those modules' trained weights (``extra.<parameter path>``
    keys): they replace the copy's weights of those modules whatever ``strength`` is (a replaced weight has no
    "half way"); ``strength`` scales the LoRA's update only. Their names and shapes are checked from the file's
    header before anything is read or allocated."""
    from ..weights import header_info, metadata_json, read_header

    path = Path(path)
    head, raw = read_header(path, "LoRA")
    _, extra_heads = split_extras(head)
    if extra_heads:
        meta0 = metadata_json(raw, "interplay_lora", path, "LoRA") if "interplay_lora" in raw else {}
        check_extras(bb.denoiser, header_info(extra_heads), meta0, path.name)
    sd, meta = read_lora(path)
    sd, extras = split_extras(sd)
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
    with torch.no_grad():  # new Parameters on the copy, in the dtype and place of the weights they replace
        for k, v in extras.items():
            old = den.get_parameter(k)
            _set_parameter(den, k, v.to(old.device, old.dtype), False)
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

    ``lora_layers``: block indices (e.g. [7, 11, 12]); the LoRA then wraps ``target_modules`` inside those blocks
    only (``resolve_targets``). ``train_modules``: module paths trained in full (``check_train_modules``), as
    float32 copies of their own in the shared copy, in a second parameter group at ``train_modules_lr_scale``
    times the learning rate. Both off by default: the run, its config and its file are the plain LoRA's.
    """

    def __init__(self, backbone: Backbone, base: Callable[[Backbone], object], *, rank: int = 16,
                 alpha: float | None = None, target_modules=DEFAULT_TARGETS, dropout: float = 0.0,
                 prefix: str | None = None, generator: torch.Generator | None = None, lora_layers=None,
                 train_modules=(), train_modules_lr_scale: float = 1.0):
        self.source_backbone = backbone
        backbone.denoiser.requires_grad_(False)
        den = shared_copy(backbone.denoiser)
        self.adapter = free_adapter_name(den)
        targets = resolve_targets(den, backbone.family, target_modules, lora_layers)
        self.train_modules = check_train_modules(den, backbone.family, train_modules or (), targets)
        scale = train_modules_lr_scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale < float("inf"):
            raise ValueError(f"LoRA: train_modules_lr_scale must be a number > 0; got {scale!r}")
        add_lora(den, rank, alpha, targets, dropout, adapter=self.adapter, generator=generator)
        place_adapter(den, self.adapter, torch.float32)
        self.lora_params = adapter_parameters(den, self.adapter)
        for p in self.lora_params:
            p.requires_grad_(True)
        self.module_params = make_masters(den, self.train_modules, backbone.dtype)
        self.denoiser = den
        self.backbone = backbone.replace(denoiser=den, loras=tuple(backbone.loras) + (("training", 1.0),))
        self.base = base(self.backbone)
        self.prefix = prefix if prefix is not None else PREFIX.get(backbone.family, "transformer")
        self.hp = dict(rank=int(rank), alpha=float(alpha if alpha is not None else rank),
                       target_modules=list(target_modules), dropout=float(dropout), prefix=self.prefix)
        # recorded only when used, so a run without them keeps its config and file metadata byte for byte
        if lora_layers:
            self.hp["lora_layers"] = sorted({int(i) for i in lora_layers})
        if self.train_modules:
            self.hp.update(train_modules=list(self.train_modules), train_modules_lr_scale=float(scale))

    # -- Task protocol
    def trainable_parameters(self):
        return list(self.lora_params) + list(self.module_params.values())

    def param_groups(self) -> list[dict]:
        """The LoRA, then the fully trained modules at their own learning-rate scale."""
        if not self.module_params:
            return [{"params": list(self.lora_params), "name": "all", "lr_scale": 1.0}]
        return [{"params": list(self.lora_params), "name": "lora", "lr_scale": 1.0},
                {"params": list(self.module_params.values()), "name": "train_modules",
                 "lr_scale": self.hp["train_modules_lr_scale"]}]

    def trainable_state_dict(self) -> dict:
        sd = lora_state_dict(self.denoiser, self.prefix, self.adapter)
        sd.update({f"{EXTRA_PREFIX}.{k}": p.detach().cpu().clone() for k, p in self.module_params.items()})
        return sd

    def load_trainable_state_dict(self, sd: dict) -> None:
        sd, extras = split_extras(sd)
        load_lora_state_dict(self.denoiser, sd, self.prefix, self.adapter)
        if set(extras) != set(self.module_params):
            raise ValueError(f"LoRA: the saved weights train the modules {sorted(extras) or 'none'}; this run trains "
                             f"{sorted(self.module_params) or 'none'}. Use the same train_modules or a new output "
                             "folder.")
        with torch.no_grad():
            for k, p in self.module_params.items():
                if tuple(extras[k].shape) != tuple(p.shape):
                    raise ValueError(f"LoRA: saved {k} has shape {tuple(extras[k].shape)}; the model's is "
                                     f"{tuple(p.shape)}")
                p.copy_(extras[k])

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
        mods = dict(self.denoiser.named_modules())
        for n in self.train_modules:
            mods[n].train()

    def eval(self):
        self.denoiser.eval()

    def enable_gradient_checkpointing(self):
        fn = getattr(self.denoiser, "enable_gradient_checkpointing", None)
        if callable(fn):
            fn()


# ------------------------------------------------------------------ scoping to named layers, extra modules
# The container of the numbered blocks ``lora_layers`` index, per family; SVD's UNet has no single block list
# (down/mid/up blocks of attentions), so it is scoped by full module paths only.
BLOCKS = {"cogvideox": "transformer_blocks", "wan": "blocks"}
# key prefix of the fully trained modules in a LoRA file: no diffusers LoRA key starts with it
EXTRA_PREFIX = "extra"


def _close(name: str, pool) -> str:
    import difflib

    near = difflib.get_close_matches(str(name), sorted(set(pool)), n=1, cutoff=0.5)
    return f" (did you mean {near[0]!r}?)" if near else ""


def _matches(path: str, target: str) -> bool:
    """peft's rule for a target name: the module path itself or its dotted tail."""
    return path == target or path.endswith("." + target)


def resolve_targets(module: torch.nn.Module, family: str, target_modules, lora_layers=None) -> list[str]:
    """The target list handed to peft. Without ``lora_layers``: ``target_modules`` as given (short names such as
    ``to_q`` match every layer that has one, full paths one module, which must exist). With ``lora_layers`` (block
    indices): the full paths ``<blocks>.<i>.<...>.<target>`` of each target inside each named block (CogVideoX
    ``transformer_blocks``, Wan ``blocks``). Unknown names are refused with the closest module name."""
    targets = [str(t) for t in target_modules]
    paths = [n for n, _ in module.named_modules() if n]
    if not targets:
        raise ValueError("LoRA: target_modules is empty; name module names such as to_q, to_k, to_v, to_out.0")
    if not lora_layers:
        # a full path (it starts at one of the model's top-level modules) must exist; short names keep peft's
        # rule (every layer that has one; add_lora refuses a list of which none exists), as saved runs had it
        tops = {p.split(".", 1)[0] for p in paths}
        for t in targets:
            if t.split(".", 1)[0] in tops and "." in t and t not in paths:
                raise ValueError(f"LoRA: target module {t!r} is not in this {family} model{_close(t, paths)}")
        return targets
    container = BLOCKS.get(family)
    if container is None:
        raise ValueError(f"LoRA: lora_layers needs a model with one numbered block list (CogVideoX, Wan); this "
                         f"{family} model has none: give full module paths in target_modules instead, e.g. "
                         "mid_block.attentions.0.transformer_blocks.0.attn1.to_q")
    blocks = dict(module.named_modules()).get(container)
    n = len(blocks) if isinstance(blocks, torch.nn.ModuleList) else 0
    layers = []
    for i in lora_layers:
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n:
            raise ValueError(f"LoRA: lora_layers entry {i!r} is not a block of this {family} model; it has {n} "
                             f"blocks ({container}.0 .. {container}.{n - 1})")
        if i not in layers:
            layers.append(i)
    out = []
    for i in sorted(layers):
        head = f"{container}.{i}."
        inner = [p[len(head):] for p in paths if p.startswith(head)]
        for t in targets:
            hits = [head + p for p in inner if _matches(p, t)]
            if not hits:
                raise ValueError(f"LoRA: target module {t!r} is not in block {container}.{i} of this {family} model"
                                 f"{_close(t, inner + [p.rsplit('.', 1)[-1] for p in inner])}")
            out += [h for h in hits if h not in out]
    return out


def check_train_modules(module: torch.nn.Module, family: str, names, lora_targets) -> list[str]:
    """``names`` checked: module paths of ``module`` that hold parameters, none inside or around another one or a
    layer the LoRA wraps (a module is either adapted or trained in full)."""
    mods = dict(module.named_modules())
    out = []
    for name in names:
        name = str(name)
        if name not in mods or not name:
            raise ValueError(f"LoRA: train_modules entry {name!r} is not a module of this {family} model"
                             f"{_close(name, [p for p in mods if p])}; give a full module path such as "
                             "patch_embed.proj")
        if not any(True for _ in mods[name].parameters()):
            raise ValueError(f"LoRA: train_modules entry {name!r} has no weights to train")
        for other in out:
            if other == name or name.startswith(other + ".") or other.startswith(name + "."):
                raise ValueError(f"LoRA: train_modules lists {other!r} and {name!r}; one contains the other")
        lora = [p for p in mods if p and any(_matches(p, t) for t in lora_targets)]
        clash = next((p for p in lora if p == name or p.startswith(name + ".") or name.startswith(p + ".")), None)
        if clash is not None:
            raise ValueError(f"LoRA: train_modules entry {name!r} overlaps the LoRA layer {clash!r}; train a module "
                             "in full or adapt it, not both (narrow target_modules or lora_layers)")
        for m in mods[name].modules():
            hooks = getattr(m, "_diffusers_hook", None)
            if hooks is not None and hooks.get_hook("layerwise_casting") is not None:
                raise ValueError(f"LoRA: train_modules entry {name!r} is stored in fp8 (layerwise casting); load "
                                 "the backbone in bf16 or fp32 to train it in full")
        out.append(name)
    return out


def module_parameters(module: torch.nn.Module, names) -> dict[str, torch.nn.Parameter]:
    """{full parameter path: parameter} of the modules ``names`` of ``module``, in a fixed order."""
    mods = dict(module.named_modules())
    return {f"{n}.{k}": p for n in names for k, p in mods[n].named_parameters()}


def _set_parameter(module: torch.nn.Module, path: str, value: torch.Tensor, requires_grad: bool) -> None:
    """Give ``module``'s parameter ``path`` a new Parameter of its own (the shared original stays untouched)."""
    owner, _, leaf = path.rpartition(".")
    setattr(module.get_submodule(owner) if owner else module, leaf,
            torch.nn.Parameter(value, requires_grad=requires_grad))


def _cast_in(module, args, dtype):
    # float32 masters in a lower-precision model: compute in float32, hand back the model's dtype (the LoRA path
    # of peft does the same); autocast casts by itself
    if torch.is_autocast_enabled():
        return None
    return tuple(a.to(dtype) if torch.is_tensor(a) and a.is_floating_point() else a for a in args)


def _cast_out(module, args, out, dtype):
    return out.to(dtype) if torch.is_tensor(out) and out.is_floating_point() else out


def make_masters(module: torch.nn.Module, names, compute_dtype: torch.dtype) -> dict[str, torch.nn.Parameter]:
    """Replace the parameters of the modules ``names`` (in the shared copy ``module``) by float32 copies that
    train; in a model computing in another dtype their inputs run in float32 and their outputs return in it."""
    import functools

    for path, p in module_parameters(module, names).items():
        _set_parameter(module, path, p.detach().to(torch.float32, copy=True), True)
    if compute_dtype != torch.float32:
        mods = dict(module.named_modules())
        for n in names:
            mods[n].register_forward_pre_hook(functools.partial(_cast_in, dtype=torch.float32))
            mods[n].register_forward_hook(functools.partial(_cast_out, dtype=compute_dtype))
    return module_parameters(module, names)


def place_modules(module: torch.nn.Module, names, dtype: torch.dtype) -> None:
    """The trained modules' own weights in ``dtype`` (the copy's parameters: nothing shared is touched)."""
    for p in module_parameters(module, names).values():
        p.data = p.data.to(dtype)


def split_extras(sd: dict) -> tuple[dict, dict]:
    """(LoRA keys, {parameter path: tensor} of the fully trained modules) of a LoRA state dict."""
    head = EXTRA_PREFIX + "."
    return ({k: v for k, v in sd.items() if not k.startswith(head)},
            {k[len(head):]: v for k, v in sd.items() if k.startswith(head)})


def check_extras(module: torch.nn.Module, shapes: dict, meta: dict, source: str) -> None:
    """A file's extra-module entries (``shapes``: {parameter path: (dtype name, shape)} from its header) against
    ``module``: listed in the metadata's train_modules, existing, floating point and of the parameter's shape."""
    if not shapes:
        return
    listed = meta.get("train_modules")
    if not isinstance(listed, list) or not all(isinstance(n, str) and n for n in listed):
        raise ValueError(f"LoRA: {source} holds fully trained modules ({EXTRA_PREFIX}.* keys) but its metadata "
                         "lists no train_modules; save it again with the Train LoRA node")
    params = dict(module.named_parameters())
    for k, (dt, shape) in sorted(shapes.items()):
        if not any(k.startswith(n + ".") for n in listed):
            raise ValueError(f"LoRA: {source} has {EXTRA_PREFIX}.{k}, outside the train_modules its metadata lists "
                             f"({', '.join(listed)})")
        if k not in params:
            raise ValueError(f"LoRA: {source} replaces {k!r}, which this model does not have"
                             f"{_close(k, params)}; it was trained for a different model")
        if not dt.startswith(("float", "bfloat")):
            raise ValueError(f"LoRA: {source} stores {EXTRA_PREFIX}.{k} as {dt}; expected floating point weights")
        if tuple(shape) != tuple(params[k].shape):
            raise ValueError(f"LoRA: {source} does not fit this model's layer sizes ({k}: {tuple(shape)} in the "
                             f"file, {tuple(params[k].shape)} in the model); it was trained for a different model "
                             "(e.g. another input width)")
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
