"""fp8 compute for every family: the token-wise Linears of a denoiser's attention and feed-forward layers run as
float8 (e4m3) weight x activation matmuls.

Backends, one choice for every family (``backend``):
- "torchao": torchao's dynamic float8 (``Float8DynamicActivationFloat8WeightConfig``, rowwise scales) when torchao
  is installed and the GPU has fp8 tensor cores (compute capability 8.9+: Ada, Hopper, Blackwell);
- "pack": the pack's own W8A8 :class:`FP8Linear` (per-output-channel weight scales, per-row activation scales,
  ``torch._scaled_mm``) on the same GPUs; on the CPU it keeps the fp8 weights and computes the dequantised matmul
  in float32, so the path runs (and is tested) everywhere, without the speed;
- "auto": torchao when it can run, else "pack".
A CUDA GPU below 8.9 (A100, V100, ...) cannot run fp8 matmuls: the request is refused with that message.

``convert`` never changes the model it is given: it returns a copy sharing every weight except the converted
Linears (which hold their fp8 weights: about half the bf16 bytes of those layers more). Per-sample Linears (the
adaLN / time-embedding projections, one row per sample) stay, as do layers whose sizes are not multiples of 16
(what the fp8 kernels take) and a LoRA's own A/B matrices (the layer they wrap converts).
"""
from __future__ import annotations

import copy

import torch

BACKENDS = ("auto", "torchao", "pack")


class FP8Linear(torch.nn.Module):
    """W8A8 e4m3 Linear: per-output-channel weight scales, dynamic per-row activation scales,
    ``torch._scaled_mm`` with rowwise scales on CUDA (bias added after); elsewhere the dequantised weight in a
    plain matmul (same numbers up to the activation rounding). Pays only under torch.compile (which fuses the
    activation quantisation); eager is slower than bf16."""

    def __init__(self, lin: torch.nn.Linear):
        super().__init__()
        w = lin.weight.detach().float()
        scale = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 448.0
        self.register_buffer("weight_fp8", (w / scale).to(torch.float8_e4m3fn))
        self.register_buffer("weight_scale", scale.t().contiguous())  # [1, out] fp32
        self.bias = None if lin.bias is None else torch.nn.Parameter(lin.bias.detach().clone(), requires_grad=False)
        self.in_features, self.out_features = lin.in_features, lin.out_features

    def forward(self, x):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if x2.is_cuda:
            xs = x2.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12) / 448.0
            xq = (x2.float() / xs).to(torch.float8_e4m3fn)
            out = torch._scaled_mm(xq, self.weight_fp8.t(), scale_a=xs, scale_b=self.weight_scale,
                                   out_dtype=x.dtype)
        else:
            w = self.weight_fp8.float() * self.weight_scale.t()
            out = (x2.float() @ w.t()).to(x.dtype)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out.reshape(*shape[:-1], self.out_features)


def torchao_available() -> bool:
    try:
        from torchao.quantization import quantize_  # noqa: F401
    except Exception:
        return False
    return True


def check_device(device, where: str = "fp8") -> None:
    """Refuse a CUDA GPU without fp8 tensor cores, naming it; the CPU runs the pack's emulated path."""
    device = torch.device(device)
    if device.type == "cuda":
        cc = torch.cuda.get_device_capability(device)
        if cc < (8, 9):
            name = torch.cuda.get_device_name(device)
            raise ValueError(f"{where}: fp8 needs a GPU with fp8 tensor cores (compute capability 8.9+: Ada, Hopper "
                             f"or newer); {name} is {cc[0]}.{cc[1]}. Set fp8 to 'off' (bf16 is this GPU's fastest "
                             "path), or store the weights in fp8 in the loader to halve their memory.")
    elif device.type != "cpu":
        raise ValueError(f"{where}: fp8 compute runs on CUDA GPUs (8.9+) and, emulated, on the CPU; the device is "
                         f"{device.type}. Set fp8 to 'off'.")


def backend(name: str, device, where: str = "fp8") -> str:
    """The backend that will run: "torchao" or "pack" (see the module docstring); errors name the fix."""
    if name not in BACKENDS:
        raise ValueError(f"{where}: fp8 must be one of off, {', '.join(BACKENDS)}; got {name!r}")
    check_device(device, where)
    cuda = torch.device(device).type == "cuda"
    if name == "torchao":
        if not torchao_available():
            raise ValueError(f"{where}: fp8 'torchao' needs torchao (pip install torchao, or the pack's 'fp8' extra); "
                             "use fp8 'auto' for the pack's own fp8 path")
        if not cuda:
            raise ValueError(f"{where}: torchao's float8 runs on CUDA GPUs; use fp8 'pack' (emulated on the CPU) or "
                             "'auto'")
        return "torchao"
    if name == "auto" and cuda and torchao_available():
        return "torchao"
    return "pack"


def token_linears(module: torch.nn.Module) -> list[str]:
    """Module paths of the Linears fp8 converts: the projections of every diffusers Attention (q, k, v, out, the
    added image k/v) and FeedForward in ``module``, sizes multiples of 16."""
    from diffusers.models.attention import FeedForward
    from diffusers.models.attention_processor import Attention

    try:  # Wan's attention is its own class in recent diffusers
        from diffusers.models.transformers.transformer_wan import WanAttention
        kinds = (Attention, FeedForward, WanAttention)
    except ImportError:  # pragma: no cover
        kinds = (Attention, FeedForward)
    out = []
    for name, m in module.named_modules():
        if not isinstance(m, kinds):
            continue
        for sub, lin in m.named_modules():
            if "lora_" in sub:  # a LoRA's own small matrices stay in the compute dtype (the layer it wraps converts)
                continue
            if isinstance(lin, torch.nn.Linear) and lin.in_features % 16 == 0 and lin.out_features % 16 == 0:
                out.append(f"{name}.{sub}" if name else sub)
    return sorted(set(out))


def _set(root: torch.nn.Module, path: str, new: torch.nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)


def convert(module: torch.nn.Module, device, name: str = "auto", where: str = "fp8") -> tuple[torch.nn.Module, int]:
    """(a copy of ``module`` with its token-wise Linears in fp8, how many were converted); see the module
    docstring. The copy shares every other weight with ``module``, which is left unchanged."""
    chosen = backend(name, device, where)
    paths = token_linears(module)
    memo = {id(t): t for t in list(module.parameters()) + list(module.buffers())}
    twin = copy.deepcopy(module, memo)  # new modules, the same tensors
    if chosen == "torchao":
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

        wanted = set(paths)
        for p in paths:  # fresh Parameters on the twin, so quantize_ never touches the original's
            lin = twin.get_submodule(p)
            lin.weight = torch.nn.Parameter(lin.weight.detach().clone(), requires_grad=False)
        quantize_(twin, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()),
                  filter_fn=lambda m, fqn: fqn in wanted)
    else:
        for p in paths:
            _set(twin, p, FP8Linear(twin.get_submodule(p)))
    return twin, len(paths)
