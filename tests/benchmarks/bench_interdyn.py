"""InterDyn step benchmark: SVD UNet + InterDyn branch + CFG versus the diffusers reference UNet step alone.

    python tests/benchmarks/bench_interdyn.py [--size full|small] [--compile] [--json OUT.json]

full (CUDA, bf16, random weights at the real SVD config, built directly on the GPU): one CFG step (batch 2)
at 14x576x1024 and 14x256x384 (the released model's size), for
  ref_eager     diffusers UNetSpatioTemporalConditionModel.forward alone,
  ref_compiled  the same under torch.compile (with --compile),
  pack_eager    the pack's step: InterDyn branch + UNet with the residual quirk (edm.model_forward),
  pack_compiled the same under torch.compile (with --compile);
timed interleaved (A B A B) with CUDA events, median of N after warm-up; TFLOP/step from FlopCounterMode on
the eager paths; peak VRAM per case; the relative error of the pack's zero-branch output against the
reference; and a full 50-step sample (+ image encode and VAE decode, real-size VAE and ViT-H) at each size.
small (CPU, fp32): the tiny config at 4x64x64, 2 timed reps: the CPU test of this script.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchtools import import_pack, sync as _sync, time_call as _time  # noqa: E402

import_pack()
from interplay.models.backbones import svd  # noqa: E402
from interplay.models.control import interdyn  # noqa: E402
from interplay.models.sampling import edm  # noqa: E402

SIZES = {"full": [(14, 576, 1024), (14, 256, 384)], "small": [(4, 64, 64)]}


def _flops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops() / 1e12


def _peak(fn, dev) -> float | None:
    if dev.type != "cuda":
        return None
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2 ** 30


def make_inputs(bb, frames, H, W, seed=0):
    g = torch.Generator().manual_seed(seed)
    h, w = H // 8, W // 8
    d = bb.denoiser.config.cross_attention_dim
    dev, dt = bb.device, bb.dtype
    return dict(
        inp=torch.randn(2, frames, 8, h, w, generator=g).to(dev, dt),
        t=torch.full((2,), 0.25 * float(torch.tensor(10.0).log()), device=dev),
        emb=torch.randn(2, 1, d, generator=g).to(dev, dt),
        tids=svd.added_time_ids(6, 40, 0.02, 2, dev, dt),
        control=(torch.rand(2, frames, 3, H, W, generator=g) * 2 - 1).to(dev, dt),
    )


def bench_size(bb, branch, frames, H, W, args, dev) -> dict:
    x = make_inputs(bb, frames, H, W)
    unet = bb.denoiser

    def ref_eager():
        return unet(x["inp"], x["t"], x["emb"], x["tids"]).sample

    att = [interdyn.InterDynAttachment(branch, [(x["control"], 1.0, 0.0, 1.0)])]

    def pack_eager():
        return edm.model_forward(bb, x["inp"], x["t"], x["emb"], x["tids"], attachments=att)

    cases = {"ref_eager": ref_eager, "pack_eager": pack_eager}
    compile_s = {}
    if args.compile:
        ref_c = torch.compile(unet, dynamic=False)

        def pack_fwd(inp, t, emb, tids, control):
            return edm.model_forward(bb, inp, t, emb, tids,
                                     attachments=[interdyn.InterDynAttachment(branch, [(control, 1.0, 0.0, 1.0)])])
        pack_c = torch.compile(pack_fwd, dynamic=False)
        cases["ref_compiled"] = lambda: ref_c(x["inp"], x["t"], x["emb"], x["tids"]).sample
        cases["pack_compiled"] = lambda: pack_c(x["inp"], x["t"], x["emb"], x["tids"], x["control"])

    out = {"frames": frames, "height": H, "width": W, "batch": 2, "cases": {}}
    with torch.inference_mode():
        # numerical check: zero-initialised branch -> the pack equals the reference
        zero_err = None
        if args.check:
            zb = interdyn.new_branch(unet, residual_rule="quirk")
            zout = edm.model_forward(bb, x["inp"], x["t"], x["emb"], x["tids"],
                                     attachments=[interdyn.InterDynAttachment(zb, [(x["control"], 1.0, 0.0, 1.0)])])
            ref = ref_eager().float()
            zero_err = float((zout.float() - ref).norm() / ref.norm())
            del zb, zout
        out["zero_branch_rel_err"] = zero_err
        for name, fn in cases.items():
            t0 = time.perf_counter()
            for _ in range(args.warmup):
                fn()
            _sync(dev)
            compile_s[name] = time.perf_counter() - t0
        times = {k: [] for k in cases}
        for _ in range(args.reps):  # interleaved A B A B
            for name, fn in cases.items():
                times[name].append(_time(fn, dev))
        flops = {"ref": _flops(ref_eager), "pack": _flops(pack_eager)}
        if "pack_compiled" in cases:
            a, b = cases["pack_compiled"]().float(), pack_eager().float()
            out["compiled_rel_err"] = float((a - b).norm() / b.norm())
        for name, fn in cases.items():
            med = statistics.median(times[name])
            tf = flops["pack" if name.startswith("pack") else "ref"]
            out["cases"][name] = {"s_per_step": med, "min": min(times[name]), "max": max(times[name]),
                                  "tflop_per_step": tf, "tflops": tf / med, "peak_gib": _peak(fn, dev),
                                  "warmup_s": compile_s[name]}
    c = out["cases"]
    best = min((v["s_per_step"], k) for k, v in c.items() if k.startswith("pack"))
    out["pack_best"] = best[1]
    out["ratio_vs_ref_eager"] = c["ref_eager"]["s_per_step"] / best[0]
    if "ref_compiled" in c:
        out["ratio_vs_ref_compiled"] = c["ref_compiled"]["s_per_step"] / best[0]
    out["branch_overhead_eager"] = c["pack_eager"]["s_per_step"] / c["ref_eager"]["s_per_step"] - 1
    return out


def full_sample(bb, branch, frames, H, W, steps, compile_, dev) -> dict:
    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, H, W, 3, generator=g)
    control = torch.rand(frames, H, W, 3, generator=g) * 2 - 1
    _sync(dev)
    t0 = time.perf_counter()
    lat = edm.sample_svd(bb, image, control=control, branch=branch, num_frames=frames, steps=steps, seed=0,
                         compile=compile_)
    _sync(dev)
    t1 = time.perf_counter()
    vid = svd.decode_latents(bb, lat)
    _sync(dev)
    t2 = time.perf_counter()
    assert vid.shape == (1, frames, H, W, 3)
    return {"steps": steps, "sample_s": t1 - t0, "decode_s": t2 - t1, "total_s": t2 - t0, "compiled": compile_}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=("full", "small"), default="full")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile paths")
    ap.add_argument("--json", default=None, help="write results here")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--sample-steps", type=int, default=None, help="full-sample steps (default 50; 0 skips)")
    ap.add_argument("--no-check", dest="check", action="store_false")
    args = ap.parse_args(argv)
    full = args.size == "full"
    if full and not torch.cuda.is_available():
        ap.error("--size full needs CUDA; use --size small on CPU")
    dev = torch.device("cuda" if full else "cpu")
    dt = torch.bfloat16 if full else torch.float32
    args.reps = args.reps or (7 if full else 2)
    args.warmup = args.warmup or (3 if full else 1)
    sample_steps = args.sample_steps if args.sample_steps is not None else (50 if full else 2)
    if full:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    t0 = time.perf_counter()
    bb = svd.random_backbone("full_all" if full else "tiny", dtype=dt, device=dev)
    branch = interdyn.new_branch(bb.denoiser, residual_rule="quirk")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-zero zero-convs so the residual path does real work
        for p in list(branch.module.controlnet_down_blocks.parameters()) + \
                list(branch.module.controlnet_mid_block.parameters()):
            p.copy_((torch.randn(p.shape, generator=g) * 1e-3).to(p.device, p.dtype))
    branch.module.requires_grad_(False).eval()
    result = {"device": torch.cuda.get_device_name() if full else "cpu", "dtype": str(dt),
              "torch": torch.__version__, "build_s": time.perf_counter() - t0, "sizes": []}
    for frames, H, W in SIZES[args.size]:
        r = bench_size(bb, branch, frames, H, W, args, dev)
        if sample_steps:
            r["full_sample"] = full_sample(bb, branch, frames, H, W, sample_steps, args.compile, dev)
        result["sizes"].append(r)
        c = r["cases"]
        line = " ".join(f"{k} {v['s_per_step']:.4f}s/{v['tflops']:.0f}TF/s" for k, v in c.items())
        print(f"{frames}x{H}x{W}: {line}; best {r['pack_best']} ratio vs ref eager {r['ratio_vs_ref_eager']:.2f}"
              + (f", vs compiled {r['ratio_vs_ref_compiled']:.2f}" if "ratio_vs_ref_compiled" in r else ""),
              flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
