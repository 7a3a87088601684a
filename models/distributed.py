"""The pack's one door to ``torch.distributed``: process-group setup from a ``torchrun`` / ``accelerate launch``
environment, the collectives the trainer and the parallel samplers use, and the DDP / FSDP2 wrappers of a
training task. Everything else in the pack stays single-process code and calls these; outside a launch every
function here is the one-process identity (world size 1, rank 0), so nothing changes for a plain run.

A launch is detected from the environment both launchers set (``WORLD_SIZE`` > 1 with ``RANK``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``). The backend is NCCL when CUDA is present (each process takes GPU ``LOCAL_RANK``),
gloo otherwise (or when ``INTERPLAY_DIST_BACKEND=gloo``); ``INTERPLAY_DIST_TIMEOUT`` (seconds, default 1800) bounds
every collective, so a process that died takes the others down instead of hanging them.
"""
from __future__ import annotations

import datetime
import os
from typing import Iterable, Sequence

import torch
import torch.distributed as dist

TIMEOUT_ENV, BACKEND_ENV = "INTERPLAY_DIST_TIMEOUT", "INTERPLAY_DIST_BACKEND"


# ----------------------------------------------------------------------------------------------- setup
def launched() -> bool:
    """True inside a multi-process launch (torchrun / accelerate launch set WORLD_SIZE)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def init() -> int:
    """Join the launch's process group once (a no-op outside a launch or when already joined); returns the
    world size. On CUDA each process is pinned to GPU ``LOCAL_RANK`` first, so ``torch.device("cuda")`` and the
    pack's ``runtime.compute_device()`` mean that process's own GPU."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    if not launched():
        return 1
    backend = os.environ.get(BACKEND_ENV) or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    timeout = datetime.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, "1800")))
    dist.init_process_group(backend, timeout=timeout)
    return dist.get_world_size()


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size(group=None) -> int:
    return dist.get_world_size(group) if active() else 1


def rank(group=None) -> int:
    return dist.get_rank(group) if active() else 0


def is_main() -> bool:
    """Rank 0 (the process that writes files and prints); True outside a launch."""
    return rank() == 0


def barrier() -> None:
    if active():
        dist.barrier()


def comm_device() -> torch.device:
    """Where collective tensors live: the process's GPU under NCCL, the CPU under gloo."""
    if active() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def new_group(ranks: Sequence[int]):
    """A process group of ``ranks``; every process must call this with the same lists in the same order."""
    return dist.new_group(list(ranks))


# ------------------------------------------------------------------------------------------ collectives
def any_true(flag: bool) -> bool:
    """True on every rank when ``flag`` is True on some rank (a cancel agreed on by all processes)."""
    if not active():
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def sum_float(value: float) -> float:
    """The sum over ranks of a Python number (the step's loss from each rank's micro-batches)."""
    if not active():
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=comm_device())
    dist.all_reduce(t)
    return float(t.item())


def gather_sizes(n: int, group=None) -> list[int]:
    """Every rank's ``n`` (sequence lengths of uneven shards), in rank order of ``group``."""
    if world_size(group) == 1:
        return [int(n)]
    t = torch.tensor([int(n)], dtype=torch.int64, device=comm_device())
    out = [torch.zeros_like(t) for _ in range(world_size(group))]
    dist.all_gather(out, t, group=group)
    return [int(o.item()) for o in out]


def all_gather_cat(x: torch.Tensor, dim: int, group=None, sizes: Sequence[int] | None = None) -> torch.Tensor:
    """The ranks' ``x`` concatenated along ``dim`` in rank order; shards may differ in length along ``dim``
    (``sizes``: every rank's length there, asked for when not given). Pure data movement: no rounding."""
    p = world_size(group)
    if p == 1:
        return x
    dim = dim % x.ndim
    sizes = list(sizes) if sizes is not None else gather_sizes(x.shape[dim], group)
    top = max(sizes)
    dev = x.device
    send = x.to(comm_device())
    if send.shape[dim] < top:  # all_gather needs equal shapes: pad, then cut the padding off again
        pad = list(send.shape)
        pad[dim] = top - send.shape[dim]
        send = torch.cat([send, send.new_zeros(pad)], dim=dim)
    out = [torch.empty_like(send) for _ in range(p)]
    dist.all_gather(out, send.contiguous(), group=group)
    return torch.cat([o.narrow(dim, 0, s) for o, s in zip(out, sizes)], dim=dim).to(dev)


def all_to_all(chunks: Sequence[torch.Tensor], out_shapes: Sequence[Sequence[int]], group=None) -> list[torch.Tensor]:
    """``chunks[j]`` goes to rank j; returns what each rank j sent here (shapes ``out_shapes[j]``, may differ per
    rank). The all-to-all of Ulysses attention when no engine is installed."""
    import math

    dev, dtype = chunks[0].device, chunks[0].dtype
    cd = comm_device()
    # one flat all_to_all_single with split sizes: gloo's list all_to_all wants equal shapes, this one does not
    send = torch.cat([c.reshape(-1) for c in chunks]).to(cd)
    recv_sizes = [math.prod(s) for s in out_shapes]
    recv = torch.empty(sum(recv_sizes), dtype=dtype, device=cd)
    dist.all_to_all_single(recv, send, output_split_sizes=recv_sizes, input_split_sizes=[c.numel() for c in chunks],
                           group=group)
    return [r.view(tuple(s)).to(dev) for r, s in zip(recv.split(recv_sizes), out_shapes)]


def broadcast_(t: torch.Tensor, src: int = 0, group=None) -> torch.Tensor:
    if active():
        dev = t.device
        c = t.to(comm_device())
        dist.broadcast(c, src=src, group=group)
        t.copy_(c.to(dev))
    return t


# --------------------------------------------------------------------------------------- DTensor helpers
def is_sharded(t) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A DTensor gathered to the whole tensor on the CPU (collective: every rank calls it, in the same order);
    a plain tensor detached to the CPU."""
    if is_sharded(t):
        return t.full_tensor().detach().cpu()
    return t.detach().cpu()


def shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``full`` (the same on every rank) cut like the DTensor ``like`` (its mesh and placements); ``full`` itself
    when ``like`` is a plain tensor."""
    if not is_sharded(like):
        return full.to(like.device)
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(full.to(like.device_mesh.device_type), like.device_mesh, like.placements)


# ------------------------------------------------------------------------------------- training wrappers
class TaskModule(torch.nn.Module):
    """A training task as one module, so DDP / FSDP see its weights and wrap its loss: ``forward(batch, generator)``
    is ``task.loss``. ``modules`` are registered (FSDP shards what they hold that its units do not); ``params``
    (DDP) are registered as a list of the task's own Parameter objects, so gradients land where the task reads."""

    def __init__(self, task, modules: Iterable[torch.nn.Module] = (), params: Iterable[torch.nn.Parameter] = ()):
        super().__init__()
        self.task = task
        self.parts = torch.nn.ModuleList(list(modules))
        self.weights = torch.nn.ParameterList(list(params))

    def forward(self, batch, generator):
        return self.task.loss(batch, generator)


def ddp(task, params: list) -> torch.nn.Module:
    """DDP over the task's trainable parameters (control branches, LoRAs): gradients all-reduced (averaged) in
    buckets during the last micro-batch's backward; rank 0's weights broadcast at the start."""
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(TaskModule(task, params=params), find_unused_parameters=True)


def fsdp(task, root: torch.nn.Module, units: Sequence[torch.nn.Module]) -> torch.nn.Module:
    """FSDP2 (``fully_shard``) for a whole-backbone fine-tune: each unit (transformer block) sharded on its own,
    then the task module around ``root`` (the rest of the denoiser's weights), all over one mesh of every rank.
    Parameters become DTensors sharded on dim 0; gradients are reduce-scattered (averaged) after each backward."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(comm_device().type, (world_size(),))
    for u in units:
        fully_shard(u, mesh=mesh)
    return fully_shard(TaskModule(task, modules=[root]), mesh=mesh)


def fsdp_release(wrapper: torch.nn.Module) -> None:
    """After an FSDP run: every unit gathered to full weights and kept so (no resharding after forwards), so the
    trained model samples afterwards like an ordinary one. Collective."""
    from torch.distributed.fsdp import FSDPModule

    mods = [m for m in wrapper.modules() if isinstance(m, FSDPModule)]
    for m in mods:
        m.set_reshard_after_forward(False)
    for m in mods:
        m.unshard()
