"""GameCraft causal block benchmark: a 4-step block of 3 latent frames with the KV cache (sink + window, clean pass)
versus the same model recomputing the whole context for every step, plus the cache memory per block and the
recache cost.

    python tests/benchmarks/bench_gamecraft.py [--size full|small] [--kind wan2.1-t2v|wan2.2-i2v-a14b]
                                               [--blocks N] [--dtype bf16] --json OUT.json

full (CUDA, random weights at the release config, built on the GPU): 832x480 (latent 60x104, 1,560 tokens per
latent frame), the paper's defaults (block 3, sink 1, window 9, timesteps 1000/937.5/833.33/625, no CFG, the
clean pass); ``--kind wan2.1-t2v`` is the 1.3B causal-student size (Self-Forcing / LongLive; goal >= 16 generated
fps on one H100), ``wan2.2-i2v-a14b`` the 14B expert pair (goal >= 8 fps with fp8; bf16 here). For each block:
  cached     CausalRollout.generate_block: 4 steps attending to the cache + 1 clean pass per expert used,
  recompute  the same 4 steps, each one forward over the last sink + window latent frames and the block, no cache
             (the cost of recomputing the context every step; its numbers are not compared).
Reported: seconds per block (median over blocks after the first, which fills the cache), generated fps (video
frames per block / seconds), forwards per block, cache bytes per latent frame and per block, the cache's bytes at
the end (bounded by sink + window), recache seconds for last_block and window, peak memory (CUDA).
small (CPU, fp32): the tiny config at 32x32, 4 blocks of 3 latent frames, window 6: the CPU test of this script.
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
from benchtools import import_pack, sync as _sync  # noqa: E402

import_pack()
from interplay.models.backbones import wan  # noqa: E402
from interplay.models.backbones.base import on_device  # noqa: E402
from interplay.models.sampling import causal as CS  # noqa: E402
from interplay.models.sampling import flow  # noqa: E402
from interplay.models.sampling.wan import predict_step  # noqa: E402

SIZES = {"full": dict(height=480, width=832, window=9, blocks=6), "small": dict(height=32, width=32, window=6,
                                                                               blocks=4)}


def _peak_reset(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _peak(dev):
    return torch.cuda.max_memory_allocated() / 2 ** 30 if dev.type == "cuda" else None


def recompute_block(r: CS.CausalRollout, ctx_frames: int) -> int:
    """One block without a cache: every step one forward over the last ``ctx_frames`` clean latent frames (t = 0,
    per token) followed by the noisy block, full attention. Returns the forwards run."""
    c = r.config
    n = c.block_latent_frames
    a = r.blocks_done * n
    lo = max(0, a - ctx_frames)
    h, w = r.latent_hw
    shape = (r.batch, r.bb.extra["latent_channels"], n, h, w)
    ctx = torch.cat([r.held[f] for f in range(lo, a)], 2) if a > lo else None
    conds = r.conds(lo, a + n)
    ntt = r.bb.extra.get("num_train_timesteps", 1000)
    x = torch.randn(shape, generator=r.generator).to(r.bb.device)
    forwards = 0
    for i, t in enumerate(c.timesteps):
        name = flow.expert_for_timestep(t, r.boundary, ntt)
        xin = x if ctx is None else torch.cat([ctx.to(x.dtype), x], 2)
        # one timestep for every token: the same cost as per-token timesteps (0 on the context), which the guided
        # step takes only through an I2V token mask; only the cost is measured here
        v = predict_step(r.bb, xin, t, conds, r.guidance[name], expert=name, rope_offset=lo)[:, :, a - lo:]
        forwards += 1
        x0 = x - (t / ntt) * v
        if i < len(c.timesteps) - 1:
            s = c.timesteps[i + 1] / ntt
            x = (1 - s) * x0 + s * torch.randn(shape, generator=r.generator).to(r.bb.device)
    return forwards


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="small", choices=sorted(SIZES))
    ap.add_argument("--kind", default="wan2.1-t2v", choices=["wan2.1-t2v", "wan2.2-i2v-a14b"])
    ap.add_argument("--blocks", type=int, default=None)
    ap.add_argument("--dtype", default=None, help="bf16 | fp32 (default: bf16 on CUDA, fp32 on the CPU)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    cfg_size = SIZES[args.size]
    dev = torch.device("cuda" if args.size == "full" and torch.cuda.is_available() else "cpu")
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype or ("bf16" if dev.type == "cuda" else "fp32")]
    bb = wan.random_backbone(args.kind, "full" if args.size == "full" else "tiny", dtype=dtype, device=dev)
    H, W = cfg_size["height"], cfg_size["width"]
    blocks = args.blocks or cfg_size["blocks"]
    config = CS.CausalConfig(window_latent_frames=cfg_size["window"])
    image = torch.rand(1, H, W, 3, generator=torch.Generator().manual_seed(0)) if bb.extra["i2v"] else None
    dim = bb.denoiser.config.text_dim if hasattr(bb.denoiser.config, "text_dim") else 4096

    def encode(texts):  # random text embeddings: the text encoder is not what is measured
        g = torch.Generator().manual_seed(len(texts[0]))
        return torch.randn(len(texts), 512, dim, generator=g) * 0.1

    def rollout():
        return CS.CausalRollout(bb, config, height=H, width=W, encode=encode, image=image, seed=0)

    n = config.block_latent_frames
    out = {"size": args.size, "kind": args.kind, "device": str(dev), "dtype": str(dtype).replace("torch.", ""),
           "height": H, "width": W, "blocks": blocks, "config": config.to_dict(),
           "tokens_per_latent_frame": (H // 8 // 2) * (W // 8 // 2),
           "video_frames_per_block": 4 * n, "gpu": torch.cuda.get_device_name() if dev.type == "cuda" else None}
    with torch.no_grad(), on_device(bb):
        r = rollout()
        r.set_prompt("a street")
        secs, fw, cache_bytes = [], [], []
        _peak_reset(dev)
        for k in range(blocks):
            f0 = r.forwards
            _sync(dev)
            t = time.perf_counter()
            r.generate_block()
            _sync(dev)
            secs.append(time.perf_counter() - t)
            fw.append(r.forwards - f0)
            cache_bytes.append(r.cache.nbytes())
            assert len(r.cache.frames) <= config.sink_latent_frames + config.window_latent_frames
        peak_cached = _peak(dev)
        steady = secs[1:] or secs
        s_block = statistics.median(steady)
        out["cached"] = {"s_per_block": s_block, "s_per_block_all": secs, "forwards_per_block": fw,
                         "generated_fps": 4 * n / s_block, "peak_gib": peak_cached}
        out["cache"] = {"bytes_per_latent_frame": r.cache_bytes_per_frame(),
                        "bytes_per_block": r.cache_bytes_per_frame() * n,
                        "bytes_after_each_block": cache_bytes, "frames_held": list(r.cache.frames),
                        "bound_frames": config.sink_latent_frames + config.window_latent_frames}
        # recache cost on the full cache: a prompt switch (the config's scope, last_block), then the whole window
        rec = {}
        for scope in ("last_block", "window"):
            f0 = r.forwards
            _sync(dev)
            t = time.perf_counter()
            if scope == "last_block":
                assert r.set_prompt("a dragon appears") == "last_block"
            else:
                r.recache("window")
            _sync(dev)
            rec[scope] = {"seconds": time.perf_counter() - t, "forwards": r.forwards - f0}
        out["recache"] = rec
        # the same model recomputing the context every step (no cache)
        r2 = rollout()
        r2.set_prompt("a street")
        rs = []
        ctx = config.sink_latent_frames + config.window_latent_frames
        _peak_reset(dev)
        for k in range(blocks):
            _sync(dev)
            t = time.perf_counter()
            fwd = recompute_block(r2, ctx)
            _sync(dev)
            rs.append(time.perf_counter() - t)
            # the block's clean latents (random stand-ins: only the cost is measured) become context
            h, w = r2.latent_hw
            for j in range(n):
                r2.held[k * n + j] = torch.randn(1, bb.extra["latent_channels"], 1, h, w).to(dev)
            r2.blocks_done += 1
        s_re = statistics.median(rs[1:] or rs)
        out["recompute"] = {"s_per_block": s_re, "s_per_block_all": rs, "forwards_per_block": fwd,
                            "context_latent_frames": ctx, "generated_fps": 4 * n / s_re, "peak_gib": _peak(dev)}
        out["speedup_cached_vs_recompute"] = s_re / s_block
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
