"""The speed options every sampler takes (one :class:`Speed`, the same node inputs on every sampler node):

- ``compile``: regional ``torch.compile`` of the transformer blocks (``cogvideox.compile_blocks``,
  ``wan.compile_blocks``, ``svd.compile_blocks``: each repeated block compiled once and reused, so the first
  compile takes seconds to a minute, not the whole model's many minutes). Compiled for the call and restored after,
  so the bundle others hold stays eager. Attachments that use attention slots swap processors on every forward,
  which recompiles: compile pays for runs whose attachments only use the other doors.
- ``fp8``: the token-wise Linears in fp8 (``models/fp8.py``: torchao when installed and the GPU has fp8 tensor
  cores, else the pack's W8A8; refused with the reason on GPUs without them). The bundle is not changed: the first
  call makes an fp8 copy of the denoiser (sharing all other weights) and keeps it on the bundle for later calls.
- ``attention``: the SDPA backend ("auto" keeps each sampler's own choice; "flash", "efficient", "cudnn",
  "math" force one); one that cannot run on this device and dtype is refused with the reason before sampling.
Defaults (off, off, auto) run exactly the samplers' old code.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

from ..backbones.base import Backbone

FP8 = ("off", "auto", "torchao", "pack")
ATTENTION = ("auto", "flash", "efficient", "cudnn", "math")
NEEDS = {"flash": "fp16/bf16 on a CUDA GPU (sm80+), or the CPU",
         "efficient": "a CUDA GPU",
         "cudnn": "a CUDA GPU with cuDNN attention (sm80+, cuDNN 9)",
         "math": "nothing"}


@dataclass(frozen=True)
class Speed:
    """compile: regional torch.compile; fp8: off | auto | torchao | pack; attention: auto | flash | efficient |
    cudnn | math. ``compile_options`` go to torch.compile (e.g. {"mode": "max-autotune"})."""

    compile: bool = False
    fp8: str = "off"
    attention: str = "auto"
    compile_options: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.fp8 not in FP8:
            raise ValueError(f"speed: fp8 must be one of {', '.join(FP8)}; got {self.fp8!r}")
        if self.attention not in ATTENTION:
            raise ValueError(f"speed: attention must be one of {', '.join(ATTENTION)}; got {self.attention!r}")

    @property
    def default(self) -> bool:
        return not self.compile and self.fp8 == "off" and self.attention == "auto"


def _denoisers(bb: Backbone) -> dict:
    return {"denoiser": bb.denoiser, **bb.experts}


def with_fp8(bb: Backbone, speed: Speed | None, where: str) -> Backbone:
    """The bundle to sample with: ``bb`` itself, or (fp8 on) a copy whose denoiser(s) have fp8 Linears."""
    if speed is None or speed.fp8 == "off":
        return bb
    from .. import fp8

    placement = bb.extra.get("placement")
    if getattr(placement, "mode", "none") != "none" or bb.offload != "none":
        raise ValueError(f"{where}: fp8 compute needs the model resident on the GPU; the loader offloads it "
                         f"({getattr(placement, 'mode', None) or bb.offload}). Load with offload/memory mode 'none', "
                         "or set fp8 off (the loader's fp8 storage mode halves weight memory instead)")
    chosen = fp8.backend(speed.fp8, bb.device, where)
    cache = bb.extra.setdefault("_fp8_copies", {})
    out = {}
    for name, m in _denoisers(bb).items():
        key = (id(m), chosen)
        if key not in cache:  # the module is kept with its copy, so its id cannot be reused while cached
            cache[key] = (m, fp8.convert(m, bb.device, chosen, where)[0])
        out[name] = cache[key][1]
    experts = {k: v for k, v in out.items() if k != "denoiser"}
    return bb.replace(denoiser=out["denoiser"], experts=experts)


def check_attention(name: str, device, dtype, head_dim: int, where: str) -> None:
    """Refuse an SDPA backend that has no kernel for this device, dtype and head size (tried on a tiny input)."""
    if name == "auto":
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
               "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}[name]
    q = torch.zeros(1, 2, 8, int(head_dim), dtype=dtype, device=device)
    try:
        with sdpa_kernel([backend]):
            torch.nn.functional.scaled_dot_product_attention(q, q, q)
    except RuntimeError as ex:
        raise ValueError(f"{where}: attention '{name}' cannot run here ({torch.device(device).type}, {dtype}, head "
                         f"size {head_dim}); it needs {NEEDS[name]}. Use 'auto' (torch picks a kernel that runs). "
                         f"[{str(ex).splitlines()[0][:160]}]") from None


@contextlib.contextmanager
def attention_backend(name: str):
    """SDPA restricted to one backend for the block ("auto": unchanged)."""
    if name == "auto":
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
               "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}[name]
    with sdpa_kernel([backend]):
        yield


@contextlib.contextmanager
def compiled(bb: Backbone, attachments, speed: Speed | None):
    """The family's regional compile for the block, every module's eager call restored after (the bundle and the
    attachments' modules are shared with other nodes)."""
    if speed is None or not speed.compile:
        yield
        return
    from ..backbones import cogvideox, svd, wan

    mods = [m for d in _denoisers(bb).values() for m in d.modules()]
    mods += [m for a in attachments for root in a.modules() for m in root.modules()]
    saved = [(m, m._compiled_call_impl) for m in mods]
    family = {"cogvideox": cogvideox, "svd": svd, "wan": wan}[bb.family]
    try:
        family.compile_blocks(bb, attachments, **speed.compile_options)
        yield
    finally:
        for m, impl in saved:
            m._compiled_call_impl = impl


@contextlib.contextmanager
def running(bb: Backbone, attachments, speed: Speed | None, where: str, head_dim: int):
    """compile + the SDPA backend for the sampling loop (checked first); a no-op with the defaults."""
    if speed is None or speed.default:
        yield
        return
    check_attention(speed.attention, bb.device, bb.dtype, head_dim, where)
    with compiled(bb, attachments, speed), attention_backend(speed.attention):
        yield
