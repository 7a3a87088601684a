"""Weight-memory modes that work on any diffusers/transformers module: fp8 storage with upcast at compute, and
block-wise offload ("block swap") under a GPU budget. Written for the Wan family, family-agnostic by design.

fp8 storage (:func:`store_fp8`): the chosen weights stay in float8_e4m3fn in memory; a forward pre-hook on the
owning module swaps each one for ``weight.to(compute_dtype) * scale`` (scale = 1, or the per-layer
``scale_weight`` of ComfyUI "scaled fp8" files) and the forward hook puts the fp8 tensor back, so the upcast copy
lives only while that layer runs. The state dict at rest is the fp8 one (no second copy anywhere). Unlike
diffusers' ``enable_layerwise_casting``, which casts every parameter of a layer, biases and norms keep their dtype
and per-layer scales are honoured; weights already fp8 in a file are kept as read.

Block swap (:class:`BlockSwap`): the first ``blocks_on_gpu`` blocks of a ModuleList stay on the compute device;
every other block lives on the offload device and is moved in by a forward pre-hook and out again by a forward
hook. Moves go through one ``mover`` (default ``module.to(device, non_blocking=...)``) and are counted, so on a
CPU-only machine (compute = offload = cpu, each move a no-op) the same hooks run and the tests assert the counts
and that outputs are unchanged. Hooks never change numerics: a block computes with the same weights wherever they
were stored.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)


# ------------------------------------------------------------------------------------------------ fp8
def _upcast_pre_hook(module, args):
    stash = {}
    for name, p in module.named_parameters(recurse=False):
        if p.dtype in FP8_DTYPES:
            scale = getattr(module, f"{name}_scale", None)
            w = p.data.to(module._interplay_compute_dtype)
            if scale is not None:
                w = w * scale.to(device=w.device, dtype=w.dtype)
            stash[name] = p.data
            p.data = w
    module._interplay_fp8_stash = stash


def _restore_hook(module, args, output):
    for name, data in getattr(module, "_interplay_fp8_stash", {}).items():
        getattr(module, name).data = data
    module._interplay_fp8_stash = {}
    return output


def store_fp8(model: torch.nn.Module, compute_dtype: torch.dtype, select: Callable[[str, torch.Tensor], bool] | None,
              scales: dict[str, torch.Tensor] | None = None, storage_dtype=torch.float8_e4m3fn) -> int:
    """Keep weights in fp8 and upcast them per layer at compute. Returns how many parameters are stored in fp8.

    Parameters already fp8 (read from an fp8 file) are kept as they are. Others are quantised when ``select(name,
    param)`` is true (plain cast, like ComfyUI's ``fp8_e4m3fn`` files); ``select=None`` quantises nothing new.
    ``scales``: {parameter name: scalar} of a scaled-fp8 file (true weight = fp8 weight x scale); kept as
    non-persistent buffers ``<name>_scale`` on the owning module so they move with it."""
    scales = scales or {}
    owners = {}
    count = 0
    for mod_name, mod in model.named_modules():
        for pname, p in list(mod.named_parameters(recurse=False)):
            full = f"{mod_name}.{pname}" if mod_name else pname
            if p.dtype not in FP8_DTYPES:
                if select is None or not select(full, p):
                    continue
                p.data = p.data.to(storage_dtype)
            if full in scales:
                mod.register_buffer(f"{pname}_scale", scales[full].detach().float().reshape(()), persistent=False)
            owners[id(mod)] = mod
            count += 1
    for mod in owners.values():
        if getattr(mod, "_interplay_fp8_hooked", False):
            mod._interplay_compute_dtype = compute_dtype
            continue
        mod._interplay_compute_dtype = compute_dtype
        mod.register_forward_pre_hook(_upcast_pre_hook)
        mod.register_forward_hook(_restore_hook)
        mod._interplay_fp8_hooked = True
    return count


def fp8_parameter_names(model: torch.nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.dtype in FP8_DTYPES]


# ------------------------------------------------------------------------------------------ block swap
def module_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))


@dataclass
class SwapCounters:
    moves_in: int = 0
    moves_out: int = 0
    bytes_moved: int = 0
    seconds: float = 0.0


def default_mover(module: torch.nn.Module, device: torch.device) -> None:
    module.to(device, non_blocking=device.type == "cuda")


@dataclass
class BlockSwap:
    """Stream ``blocks[blocks_on_gpu:]`` through the compute device one at a time (see module doc).

    ``active`` False (the expert is parked): hooks do nothing and every block stays where :meth:`park` put it.
    :meth:`activate` puts the rest of the model and the resident blocks on ``device``; the streamed blocks wait on
    ``offload_device`` until their forward."""

    model: torch.nn.Module
    blocks: torch.nn.ModuleList
    blocks_on_gpu: int
    device: torch.device
    offload_device: torch.device
    mover: Callable[[torch.nn.Module, torch.device], None] = default_mover
    counters: SwapCounters = field(default_factory=SwapCounters)
    active: bool = False

    def __post_init__(self):
        n = len(self.blocks)
        if not 0 <= self.blocks_on_gpu <= n:
            raise ValueError(f"block swap: blocks_on_gpu must be 0..{n}; got {self.blocks_on_gpu}")
        self.device, self.offload_device = torch.device(self.device), torch.device(self.offload_device)
        self._handles = []
        for i in range(self.blocks_on_gpu, n):
            blk = self.blocks[i]
            # prepend: the block is on the device before any of its own hooks (fp8 upcast) run
            self._handles.append(blk.register_forward_pre_hook(self._pre, prepend=True))
            self._handles.append(blk.register_forward_hook(self._post))

    @property
    def streamed(self) -> list[int]:
        return list(range(self.blocks_on_gpu, len(self.blocks)))

    def _move(self, module, device, inward: bool):
        t0 = time.perf_counter()
        self.mover(module, device)
        self.counters.seconds += time.perf_counter() - t0
        self.counters.bytes_moved += module_bytes(module)
        if inward:
            self.counters.moves_in += 1
        else:
            self.counters.moves_out += 1

    def _pre(self, module, args):
        if self.active:
            self._move(module, self.device, True)

    def _post(self, module, args, output):
        if self.active:
            self._move(module, self.offload_device, False)
        return output

    def _others(self) -> Iterable[torch.nn.Module]:
        """The model's direct children other than the block list (embeddings, head) plus its own parameters."""
        for name, child in self.model.named_children():
            if child is not self.blocks:
                yield child

    def activate(self) -> None:
        for child in self._others():
            self.mover(child, self.device)
        for name, p in self.model.named_parameters(recurse=False):
            p.data = p.data.to(self.device)
        for name, b in self.model.named_buffers(recurse=False):
            setattr(self.model, name, b.to(self.device))
        for i in range(self.blocks_on_gpu):
            self.mover(self.blocks[i], self.device)
        for i in self.streamed:
            self.mover(self.blocks[i], self.offload_device)
        self.active = True

    def park(self) -> None:
        self.active = False
        self.mover(self.model, self.offload_device)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def blocks_for_budget(budget_bytes: int, nonblock_bytes: int, block_bytes: int, num_blocks: int,
                      reserve_bytes: int = 0) -> int:
    """How many blocks can stay resident: budget minus the non-block weights, one streaming slot and
    ``reserve_bytes`` (activations), in whole blocks, clamped to 0..num_blocks."""
    free = budget_bytes - nonblock_bytes - block_bytes - reserve_bytes
    if block_bytes <= 0:
        return num_blocks
    return max(0, min(num_blocks, int(free // block_bytes)))
