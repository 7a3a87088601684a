"""Wan step benchmark: one Wan2.2-I2V-A14B expert step (CFG batch 2) through the pack's family forward versus the
diffusers transformer call, eager and compiled, plus the expert swap and the peak memory of every memory mode.

    python tests/benchmarks/bench_wan.py [--size full|small] [--compile] [--modes none,model,blocks,fp8]
                                         [--blocks-on-gpu K] [--reps N] --json OUT.json

full (CUDA, bf16, random weights at the Wan2.2-I2V-A14B expert config, built on the GPU): 81x480x832 (latent
21x60x104, 32,760 video + 512 text tokens), batch 2 (cond and uncond) for
  ref_eager         diffusers WanTransformer3DModel.forward (default SDPA backend),
  pack_eager        wan.forward with no attachment (cuDNN attention preferred): must equal ref_eager,
  pack_slots_eager  wan.forward with an observer in every attention slot (the contract's slot path),
  ref_compiled      torch.compile(transformer) (with --compile),
  pack_compiled     regional compile of every block (wan.compile_blocks) (with --compile).
Eager cases are timed interleaved with CUDA events, median of N after 2 warm-ups; compile time is the first call.
TFLOP/step is analytic (checked against FlopCounterMode at the small size). Memory modes (``--modes``), each one
step of each expert through ``use_expert`` as the sampler runs them: "none" (both experts resident), "model" (the
idle expert parked on the CPU: the swap time is the placement log's), "blocks" (block swap with K resident
blocks), "fp8" (fp8 e4m3 block weights upcast per layer); seconds per step, swap seconds and peak memory.
Reference (issue 17, H100): 6.64 s eager, 5.65 s compiled per CFG step; goal <= 5.2 s bf16 compiled.
small (CPU, fp32): the tiny config at 9x32x32, 2 reps: the CPU test of this script.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

H100_BF16_PEAK = 989.0  # TFLOP/s dense (SXM)
REFERENCE = dict(eager_s=6.64, compiled_s=5.65, goal_compiled_s=5.2, gpu="H100")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchtools import import_pack, sync as _sync, time_call as _time  # noqa: E402

import_pack()
from interplay.models.backbones import base as B  # noqa: E402
from interplay.models.backbones import wan  # noqa: E402
from interplay.models.sampling.cogvideox import fast_attention  # noqa: E402

SIZES = {"full": (81, 480, 832), "small": (9, 32, 32)}
MODES = ("none", "model", "blocks", "fp8")


def step_flops(cfg, n_video: int, n_text: int, batch: int) -> float:
    """Analytic TFLOP of one forward: per block the self-attention projections (4 D^2 per token) and scores
    (4 N^2 D), the cross-attention q/out projections on the video (2 D^2), k/v on the text (2 D^2 per text
    token) and scores (4 N T D), the FFN (2 D ffn per token); plus the patch embedding, the text embedder and
    the output projection; times 2 FLOP per multiply-add."""
    d = cfg.num_attention_heads * cfg.attention_head_dim
    p = 1
    for s in cfg.patch_size:
        p *= s
    n, t = n_video, n_text
    per = 2 * n * (4 * d * d + 2 * d * cfg.ffn_dim) + 2 * n * 2 * d * d + 2 * t * 2 * d * d
    per += 4 * n * n * d + 4 * n * t * d
    total = cfg.num_layers * per
    total += 2 * n * cfg.in_channels * p * d + 2 * n * d * cfg.out_channels * p
    total += 2 * t * (cfg.text_dim * d + d * d)
    return batch * total / 1e12


def counted_flops(fn) -> float:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops() / 1e12


def _peak(fn, dev):
    if dev.type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)


def _rel(a, b) -> float:
    a, b = a.float(), b.float()
    return float((a - b).norm() / b.norm().clamp(min=1e-12))


def _case(times, tflop, peak, first=None):
    med = statistics.median(times)
    out = dict(s_per_step=round(med, 4), min=round(min(times), 4), max=round(max(times), 4), reps=len(times),
               tflop_per_step=float(f"{tflop:.6g}"), tflops=float(f"{tflop / med:.4g}"),
               frac_bf16_peak=round(tflop / med / H100_BF16_PEAK, 4), peak_gib=peak)
    if first is not None:
        out["first_call_s"] = round(first, 2)
    return out


class Observer(B.Attachment):
    """Sits in every attention slot and changes nothing (the cost of the contract's slot path)."""

    def __init__(self, layers):
        self.layers = list(layers)

    def attention_layers(self, ctx):
        return self.layers


def inputs(bb, size: str, dev, dtype, seed: int = 1):
    frames, hh, ww = SIZES[size]
    tr = bb.denoiser
    c = tr.config
    g = torch.Generator().manual_seed(seed)
    _, _, f, h, w = wan.latent_shape(bb, frames, hh, ww)
    x = torch.randn(2, c.in_channels, f, h, w, generator=g).to(dev, dtype)
    e = torch.randn(2, wan.TEXT_LENGTH, c.text_dim, generator=g).to(dev, dtype)
    t = torch.tensor([950, 950], device=dev)
    return dict(x=x, e=e, t=t, frames=frames, h=hh, w=ww)


def _mode_bundle(bb, mode, dev, blocks_on_gpu):
    """The same experts placed for a memory mode (in place: modes run one after the other, fp8 last)."""
    from interplay.models.backbones.offload import BlockSwap, store_fp8

    pl = bb.extra["placement"]
    cpu = torch.device("cpu")
    experts = wan.expert_modules(bb)
    for n in list(pl.resident):  # back to a clean state: everything parked or resident as the mode wants
        (pl.swaps[n].park() if n in pl.swaps else None)
    for sw in pl.swaps.values():
        sw.remove()
    pl.swaps.clear()
    pl.log.clear()
    pl.resident.clear()
    if mode in ("none", "fp8"):
        pl.mode = "none"
        for n, m in experts.items():
            m.to(dev)
            pl.resident.add(n)
        if mode == "fp8":
            for m in experts.values():
                store_fp8(m, bb.dtype, lambda name, p: wan.fp8_selectable(name) and p.ndim == 2)
            bb.storage_dtype = torch.float8_e4m3fn
    else:
        pl.mode = mode
        for m in experts.values():
            m.to(cpu)
            if dev.type == "cuda":  # pinned host memory: the transfer the swap times is a real DMA
                for p in list(m.parameters()) + list(m.buffers()):
                    p.data = p.data.pin_memory()
        if mode == "blocks":
            for n, m in experts.items():
                pl.swaps[n] = BlockSwap(m, m.blocks, blocks_on_gpu, dev, cpu)
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return bb


def run_modes(bb, inp, dev, modes, blocks_on_gpu, reps, ref_out):
    """Per memory mode: a high-noise step, the switch, a low-noise step (as the sampler at the boundary)."""
    out = {}
    x, e, t = inp["x"], inp["e"], inp["t"]
    for mode in modes:
        _mode_bundle(bb, mode, dev, blocks_on_gpu)
        pl = bb.extra["placement"]
        steps = {"high_noise": [], "low_noise": []}
        peak = 0.0
        res = None
        for r in range(reps + 1):  # the first round warms up (and makes the first swap in)
            for name in wan.expert_modules(bb):
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                t0 = time.perf_counter()
                with wan.use_expert(bb, name), fast_attention(dev):
                    y = wan.forward(bb, x, t, e, expert=name)
                _sync(dev)
                dt = time.perf_counter() - t0
                if dev.type == "cuda":
                    peak = max(peak, torch.cuda.max_memory_allocated() / 2 ** 30)
                if r > 0:
                    steps[name].append(dt)
                if name == "high_noise" and r == 0:
                    res = y
        swaps = [s for n, s in pl.log]
        out[mode] = dict(s_per_step={n: round(statistics.median(v), 4) for n, v in steps.items() if v},
                         swaps=len(swaps), swap_s=round(statistics.median(swaps), 3) if swaps else 0.0,
                         peak_gib=round(peak, 2) if dev.type == "cuda" else None,
                         rel_err_vs_none=_rel(res, ref_out))
        if mode == "blocks":
            out[mode]["blocks_on_gpu"] = blocks_on_gpu
            out[mode]["block_moves"] = {n: s.counters.moves_in for n, s in pl.swaps.items()}
    _mode_bundle(bb, "none", dev, blocks_on_gpu)
    return out


def run(size="full", compile_=False, modes=MODES, blocks_on_gpu=None, reps=None):
    dev = torch.device("cuda" if size == "full" else "cpu")
    if size == "full" and not torch.cuda.is_available():
        raise SystemExit("bench_wan: --size full needs CUDA")
    dtype = torch.bfloat16 if size == "full" else torch.float32
    reps = reps or (5 if size == "full" else 2)
    t0 = time.perf_counter()
    bb = wan.random_backbone("wan2.2-i2v-a14b", "full" if size == "full" else "tiny", dtype=dtype, device=dev, seed=0)
    build_s = time.perf_counter() - t0
    tr = bb.denoiser
    cfg = tr.config
    inp = inputs(bb, size, dev, dtype)
    x, e, t = inp["x"], inp["e"], inp["t"]
    f, h, w = x.shape[2:]
    n_video = f * (h // cfg.patch_size[1]) * (w // cfg.patch_size[2])
    n_text = e.shape[1]
    blocks_on_gpu = cfg.num_layers // 2 if blocks_on_gpu is None else blocks_on_gpu
    fl = step_flops(cfg, n_video, n_text, 2)
    obs = Observer(wan.attention_layers(bb))

    def ref():
        return tr(x, t, e, return_dict=False)[0]

    def pack():
        with fast_attention(dev):
            return wan.forward(bb, x, t, e)

    def pack_slots():
        with fast_attention(dev):
            return wan.forward(bb, x, t, e, attachments=[obs])

    res = dict(size=size, device=torch.cuda.get_device_name() if dev.type == "cuda" else "cpu", dtype=str(dtype),
               torch=torch.__version__, frames=inp["frames"], height=inp["h"], width=inp["w"],
               latent=[cfg.out_channels, f, h, w], tokens=dict(video=n_video, text=n_text), batch=2,
               expert_params=sum(p.numel() for p in tr.parameters()), build_s=round(build_s, 1), cases={},
               reference=REFERENCE)
    try:
        import diffusers

        res["diffusers"] = diffusers.__version__
    except Exception:  # pragma: no cover
        pass
    cases = res["cases"]
    with torch.no_grad():
        fns = dict(ref_eager=ref, pack_eager=pack, pack_slots_eager=pack_slots)
        outs = {k: fn() for k, fn in fns.items()}
        for fn in fns.values():
            fn()
        _sync(dev)
        times = {k: [] for k in fns}
        for _ in range(reps):
            for k, fn in fns.items():
                times[k].append(_time(fn, dev))
        for k, fn in fns.items():
            cases[k] = _case(times[k], fl, _peak(fn, dev))
        ref_out = outs["ref_eager"]
        res["rel_err"] = dict(pack_eager=_rel(outs["pack_eager"], ref_out),
                              pack_slots_eager=_rel(outs["pack_slots_eager"], ref_out))
        del outs
        if size == "small":
            res["flops_check"] = dict(analytic=fl, counted=counted_flops(ref))
        if compile_:
            ref_c = torch.compile(tr, dynamic=False)

            def ref_compiled():
                return ref_c(x, t, e, return_dict=False)[0]

            first = _time(ref_compiled, dev)
            ref_compiled()
            out = ref_compiled()
            cases["ref_compiled"] = _case([_time(ref_compiled, dev) for _ in range(reps)], fl,
                                          _peak(ref_compiled, dev), first)
            res["rel_err"]["ref_compiled"] = _rel(out, ref_out)
            del ref_c, out
            torch._dynamo.reset()
            res["compiled_blocks"] = wan.compile_blocks(bb)
            first = _time(pack, dev)
            pack()
            out = pack()
            cases["pack_compiled"] = _case([_time(pack, dev) for _ in range(reps)], fl, _peak(pack, dev), first)
            res["rel_err"]["pack_compiled"] = _rel(out, ref_out)
            del out
        ref_t = cases["ref_eager"]["s_per_step"]
        res["ratios_vs_ref_eager"] = {k: round(ref_t / v["s_per_step"], 3) for k, v in cases.items()}
        bf16 = {k: v["s_per_step"] for k, v in cases.items() if k.startswith("pack")}
        best = min(bf16, key=bf16.get)
        res["goal"] = dict(best_case=best, best_s=bf16[best], goal_s=REFERENCE["goal_compiled_s"],
                           met=bf16[best] <= REFERENCE["goal_compiled_s"] if size == "full" else None)
        if modes:
            res["modes"] = run_modes(bb, inp, dev, modes, blocks_on_gpu, reps, ref_out)
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=list(SIZES), default="full")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (reference and pack)")
    ap.add_argument("--modes", default=",".join(MODES), help="memory modes to measure (comma list, '' for none)")
    ap.add_argument("--blocks-on-gpu", type=int, default=None, help="resident blocks for the 'blocks' mode")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    modes = [m for m in a.modes.split(",") if m]
    bad = sorted(set(modes) - set(MODES))
    if bad:
        ap.error(f"unknown memory modes {bad}; choose from {list(MODES)}")
    res = run(a.size, compile_=a.compile, modes=modes, blocks_on_gpu=a.blocks_on_gpu, reps=a.reps)
    text = json.dumps(res, indent=2)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(text)
    print(text)
    return res


if __name__ == "__main__":
    main()
