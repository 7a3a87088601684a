"""Public causal Wan generators (Self-Forcing's and LongLive's Wan2.1-T2V-1.3B students) -> one safetensors file the
Wan Loader reads, and the marker that tells the GameCraft sampler a transformer is a causal student.

Those checkpoints are PyTorch pickles (``self_forcing_dmd.pt``, ``longlive_base.pt``): a dict whose ``generator``
and ``generator_ema`` entries are the state dict of their ``WanDiffusionWrapper``, i.e. the original Wan layout
(``blocks.0.self_attn.q.weight``, ``head.head.weight``, ...) under ``model.``, sometimes with FSDP/compile
wrappers in the names (``_fsdp_wrapped_module.``, ``_checkpoint_wrapped_module.``, ``_orig_mod.``, ``module.``).
:func:`convert_causal_checkpoint` is the one place the pack opens such a file, with
``torch.load(weights_only=True)`` (tensors and plain containers only; no code runs), strips the wrappers, checks
that every key is a Wan transformer key (a LoRA-only file or another model is refused by name), and writes the
native layout (what ComfyUI keeps in ``diffusion_models/``) with metadata: ``config`` (the head width, which the
loader otherwise takes as the releases' 128) and ``interplay_causal`` (JSON: where it came from, the block size
it was trained with). LongLive's separate LoRA file is not merged here (merge it with their code first).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from . import wan_convert

WHERE = "Causal Wan converter"
CAUSAL_KEY = "interplay_causal"
WRAPPERS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.", "module.")
ENTRIES = ("generator_ema", "generator", "model", "state_dict")


def _strip(key: str) -> str:
    for w in WRAPPERS:
        key = key.replace(w, "")
    if key.startswith("model."):
        key = key[len("model."):]
    if key.startswith("diffusion_model."):
        key = key[len("diffusion_model."):]
    return key


def pick_state_dict(obj, which: str = "auto", name: str = "checkpoint") -> tuple[dict, str]:
    """(state dict, entry used) of a loaded checkpoint: ``which`` "auto" takes generator_ema, then generator, model,
    state_dict, else the object itself when it is a flat dict of tensors."""
    if not isinstance(obj, dict):
        raise ValueError(f"{WHERE}: {name} holds a {type(obj).__name__}, not a dict of weights")
    if which != "auto":
        if which not in obj:
            raise ValueError(f"{WHERE}: {name} has no entry {which!r}; it has {sorted(map(str, obj))[:8]}")
        return obj[which], which
    for k in ENTRIES:
        if isinstance(obj.get(k), dict) and obj[k]:
            return obj[k], k
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj, "(top level)"
    raise ValueError(f"{WHERE}: {name} has none of the entries {ENTRIES} and is not a flat state dict (it has "
                     f"{sorted(map(str, obj))[:8]}); is it a Self-Forcing / LongLive generator checkpoint?")


def native_state_dict(sd: dict, name: str = "checkpoint") -> dict:
    """Wrapper prefixes stripped; every key checked to be a native Wan transformer key."""
    out, bad = {}, []
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            bad.append(f"{k} (a {type(v).__name__})")
            continue
        nk = _strip(str(k))
        if wan_convert.transformer_key_to_diffusers(nk) is None:
            bad.append(k)
            continue
        if nk in out:
            raise ValueError(f"{WHERE}: {name} has two tensors for {nk!r} once wrapper prefixes are removed")
        out[nk] = v
    if bad:
        lora = any("lora" in str(b).lower() for b in bad)
        raise ValueError(f"{WHERE}: {name} has {len(bad)} entries that are not Wan transformer weights, e.g. "
                         f"{bad[:4]}" + ("; it looks like a LoRA file: merge it into its base generator first"
                                         if lora else "; expected a Self-Forcing / LongLive generator"))
    if "patch_embedding.weight" not in out or "head.head.weight" not in out:
        raise ValueError(f"{WHERE}: {name} lacks patch_embedding / head weights; not a whole Wan transformer")
    return out


def convert_causal_checkpoint(src, dst, *, which: str = "auto", source: str = "self_forcing",
                              block_latent_frames: int = 3, head_dim: int = 128, dtype: str = "keep") -> Path:
    """Convert a causal Wan generator checkpoint ``src`` (.pt / .pth) to safetensors at ``dst`` (module docstring).

    Args:
        which: the checkpoint entry ("auto": generator_ema, else generator).
        source: recorded in the metadata ("self_forcing" | "longlive" | any name).
        block_latent_frames: the block size the student was trained with (both: 3).
        head_dim: attention head width (128 in every Wan release; recorded as ``config`` metadata).
        dtype: "keep" | "bf16" | "fp16" | "fp32".
    """
    from safetensors.torch import save_file

    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise FileNotFoundError(f"{WHERE}: no file {src}")
    if dst.suffix != ".safetensors":
        raise ValueError(f"{WHERE}: the output must end in .safetensors; got {dst.name}")
    casts = {"keep": None, "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if dtype not in casts:
        raise ValueError(f"{WHERE}: dtype must be one of {sorted(casts)}; got {dtype!r}")
    try:
        obj = torch.load(str(src), map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # an UnpicklingError names what weights_only refused
        raise ValueError(f"{WHERE}: {src.name} cannot be read as plain weights (torch.load weights_only=True: "
                         f"{str(e).splitlines()[0][:200]})") from None
    sd, entry = pick_state_dict(obj, which, src.name)
    native = native_state_dict(sd, src.name)
    dim = native["patch_embedding.weight"].shape[0]
    if head_dim < 1 or dim % head_dim:
        raise ValueError(f"{WHERE}: head_dim {head_dim} does not divide the model width {dim}")
    cast = casts[dtype]
    tensors = {k: (v.to(cast) if cast is not None and v.is_floating_point() else v).contiguous()
               for k, v in native.items()}
    layers = 1 + max(int(k.split(".")[1]) for k in tensors if k.startswith("blocks."))
    meta = {"config": json.dumps({"attention_head_dim": int(head_dim)}),
            CAUSAL_KEY: json.dumps({"source": source, "entry": entry, "block_latent_frames": int(block_latent_frames),
                                    "from": src.name, "layers": layers, "dim": int(dim),
                                    "parameters": int(sum(math.prod(v.shape) for v in tensors.values()))})}
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(dst)
    return dst


def causal_info(bb) -> dict | None:
    """The ``interplay_causal`` metadata of a loaded backbone's transformer file (None: not a causal student, or
    not loaded from a single file)."""
    from ..weights import read_metadata

    path = (getattr(bb, "source", None) or {}).get("transformer")
    if not path or not Path(path).is_file():
        return None
    raw = read_metadata(path, "Wan transformer").get(CAUSAL_KEY)
    if not raw:
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return {"source": "unknown"}
