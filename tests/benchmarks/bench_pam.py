"""PAM step benchmark: CogVideoX-5B-I2V + the 12-block PAM motion branch + CFG versus the diffusers reference
transformer step without control, in one run.

    python tests/benchmarks/bench_pam.py [--size full|small] [--compile] [--reps N] [--no-vae] --json OUT.json

full (CUDA, bf16, random weights at the THUDM/CogVideoX-5b-I2V config, built directly on the GPU): one CFG step
(batch 2) at 49x480x720 (latent 13x60x90, 17,550 video + 226 text tokens) for
  ref_eager             diffusers CogVideoXTransformer3DModel.forward (SDPA default backend),
  pack_eager            the pack's step: the family forward with the PAM attachment (12 copied blocks on the
                        branch stream, combining projections, residuals after main blocks 0..11; the condition
                        tokens cached as the sampler caches them), cuDNN attention preferred,
  pack_nocontrol_eager  the same without the branch (overhead check: must equal ref_eager),
  ref_compiled          torch.compile(transformer) (with --compile),
  pack_compiled         regional compile of every block, backbone and copies (with --compile).
The goal: pack_compiled <= 1.3 x ref_compiled (12 of 42 blocks plus the projections are +30% FLOPs: the floor,
reported as ``flop_ratio``). Eager cases are timed interleaved (A B C A B C) with CUDA events, median of N after
2 warm-ups; compile time is the first call. TFLOP/step is analytic (checked against FlopCounterMode at the small
size); TFLOP/s, the fraction of the H100 bf16 dense peak (989) and MFU at 800; peak VRAM per case; relative error
vs ref_eager; the condition encoding (VAE of three condition videos and their first frames, once per sample), a
tiled VAE decode and the 50-step sample wall time estimate.
small (CPU, fp32): the tiny config at 9x32x32, 2 copied blocks, 2 reps: the CPU test of this script.
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
MFU_REF = 800.0
GOAL_RATIO = 1.3

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchtools import import_pack, sync as _sync, time_call as _time  # noqa: E402

import_pack()
from interplay.models.backbones import cogvideox as cog  # noqa: E402
from interplay.models.control import pam as P  # noqa: E402
from interplay.models.sampling import cogvideox as S  # noqa: E402

SIZES = {"full": (49, 480, 720), "small": (9, 32, 32)}
BLOCKS = {"full": 12, "small": 2}


def block_flops(cfg, n_video: int, n_text: int) -> float:
    """FLOPs of one CogVideoX block over the joint sequence (token-wise linears 2*N*params, attention 4*N^2*D)."""
    d = cfg.num_attention_heads * cfg.attention_head_dim
    n = n_video + n_text
    return 2 * n * (4 * d * d + 2 * d * 4 * d) + 4 * n * n * d


def step_flops(cfg, n_video: int, n_text: int, batch: int, branch_blocks: int = 0) -> float:
    """Analytic TFLOP of one forward at batch ``batch``: the backbone (blocks, patch embedding, text projection,
    output) plus, with ``branch_blocks``, the copies and both combining projections (the condition tokens are
    computed once per sample, not per step)."""
    d = cfg.num_attention_heads * cfg.attention_head_dim
    p2 = cfg.patch_size ** 2
    total = cfg.num_layers * block_flops(cfg, n_video, n_text)
    total += 2 * n_video * cfg.in_channels * p2 * d + 2 * n_text * cfg.text_embed_dim * d
    total += 2 * n_video * d * p2 * cfg.out_channels
    if branch_blocks:
        total += branch_blocks * (block_flops(cfg, n_video, n_text) + 2 * n_video * d * d)
        total += 2 * n_video * len(P.SLOTS) * d * d
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
               frac_bf16_peak=round(tflop / med / H100_BF16_PEAK, 4), mfu_800=round(tflop / med / MFU_REF, 4),
               peak_gib=peak)
    if first is not None:
        out["first_call_s"] = round(first, 2)
    return out


def build(size: str, dev, dtype, seed=0):
    """Backbone (random weights, real classes) + PAM branch (random projections) + step inputs."""
    bb = cog.random_backbone("full" if size == "full" else "tiny", dtype=dtype, device=dev, seed=seed,
                             with_text_encoder=False)
    tr = bb.denoiser
    branch = P.PAMBranch.from_transformer(tr, num_blocks=BLOCKS[size])
    g = torch.Generator(device="cpu").manual_seed(seed + 1)
    with torch.no_grad():  # non-zero projections: the timed branch does the work of a trained one
        for lin in [*branch.combine_linears, branch.initial_combine_linear]:
            lin.weight.copy_(torch.randn(lin.weight.shape, generator=g).mul_(0.02).to(lin.weight))
    branch.requires_grad_(False).eval()
    frames, hh, ww = SIZES[size]
    vs = bb.extra["vae_scale_factor_spatial"]
    f = cog.latent_frames(bb, frames)
    c = tr.config
    x = torch.randn(2, f, c.in_channels, hh // vs, ww // vs, generator=g).to(dev, dtype)
    e = torch.randn(2, c.max_text_seq_length if size == "full" else 16, c.text_embed_dim, generator=g).to(dev, dtype)
    t = torch.tensor([500, 500], device=dev)
    lat = torch.randn(1, len(P.SLOTS), f, c.in_channels, hh // vs, ww // vs, generator=g)
    lat[:, :2] = 0  # tracking and normal zero, as released
    return bb, branch, dict(x=x, e=e, t=t, lat=lat.to(dev, dtype), frames=frames, h=hh, w=ww)


def run(size="full", compile_=False, reps=None, vae=True, sample_steps=50):
    dev = torch.device("cuda" if size == "full" else "cpu")
    if size == "full" and not torch.cuda.is_available():
        raise SystemExit("bench_pam: --size full needs CUDA")
    dtype = torch.bfloat16 if size == "full" else torch.float32
    reps = reps or (5 if size == "full" else 2)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    bb, branch, inp = build(size, dev, dtype)
    build_s = time.perf_counter() - t0
    tr = bb.denoiser
    cfg = tr.config
    x, e, t = inp["x"], inp["e"], inp["t"]
    f, h, w = x.shape[1], x.shape[3], x.shape[4]
    rot = cog.rotary_embeddings(cfg, f, h, w, device=dev)
    n_video = f * (h // cfg.patch_size) * (w // cfg.patch_size)
    n_text = e.shape[1]
    att = [P.PAMAttachment.from_latents(branch, inp["lat"])]  # tokens cached on the first call, as in sampling

    def ref():
        return tr(hidden_states=x, encoder_hidden_states=e, timestep=t, image_rotary_emb=rot, return_dict=False)[0]

    def pack():
        with S.fast_attention(dev):
            return cog.forward(bb, x, t, e, attachments=att, image_rotary_emb=rot)

    def pack_nocontrol():
        with S.fast_attention(dev):
            return cog.forward(bb, x, t, e, image_rotary_emb=rot)

    n_blocks = branch.config.num_blocks
    fl_ref = step_flops(cfg, n_video, n_text, 2)
    fl_pack = step_flops(cfg, n_video, n_text, 2, branch_blocks=n_blocks)
    res = dict(size=size, device=torch.cuda.get_device_name() if dev.type == "cuda" else "cpu", dtype=str(dtype),
               torch=torch.__version__, frames=inp["frames"], height=inp["h"], width=inp["w"],
               latent=[f, cfg.out_channels, h, w], tokens=dict(video=n_video, text=n_text), batch=2,
               branch_blocks=n_blocks, backbone_blocks=cfg.num_layers, build_s=round(build_s, 1),
               flop_ratio=round(fl_pack / fl_ref, 4), cases={})
    try:
        import diffusers

        res["diffusers"] = diffusers.__version__
    except Exception:  # pragma: no cover
        pass
    cases = res["cases"]

    with torch.no_grad():
        fns = dict(ref_eager=ref, pack_eager=pack, pack_nocontrol_eager=pack_nocontrol)
        outs = {k: fn() for k, fn in fns.items()}
        for fn in fns.values():
            fn()
        _sync(dev)
        times = {k: [] for k in fns}
        for _ in range(reps):
            for k, fn in fns.items():
                times[k].append(_time(fn, dev))
        peaks = {k: _peak(fn, dev) for k, fn in fns.items()}
        for k, fl in (("ref_eager", fl_ref), ("pack_eager", fl_pack), ("pack_nocontrol_eager", fl_ref)):
            cases[k] = _case(times[k], fl, peaks[k])
        ref_out = outs["ref_eager"]
        res["rel_err"] = dict(pack_nocontrol_eager=_rel(outs["pack_nocontrol_eager"], ref_out),
                              pack_eager_vs_nocontrol=_rel(outs["pack_eager"], outs["pack_nocontrol_eager"]))
        pack_ref_out = outs["pack_eager"]
        del outs
        if size == "small":
            res["flops_check"] = dict(analytic_ref=fl_ref, counted_ref=counted_flops(ref), analytic_pack=fl_pack,
                                      counted_pack=counted_flops(pack))

        if compile_:
            ref_c = torch.compile(tr, dynamic=False)

            def ref_compiled():
                return ref_c(hidden_states=x, encoder_hidden_states=e, timestep=t, image_rotary_emb=rot,
                             return_dict=False)[0]

            first = _time(ref_compiled, dev)
            ref_compiled()
            out = ref_compiled()
            ts = [_time(ref_compiled, dev) for _ in range(reps)]
            cases["ref_compiled"] = _case(ts, fl_ref, _peak(ref_compiled, dev), first)
            res["rel_err"]["ref_compiled"] = _rel(out, ref_out)
            del ref_c, out
            torch._dynamo.reset()
            cog.compile_blocks(bb, att)
            first = _time(pack, dev)
            pack()
            out = pack()
            ts = [_time(pack, dev) for _ in range(reps)]
            cases["pack_compiled"] = _case(ts, fl_pack, _peak(pack, dev), first)
            res["rel_err"]["pack_compiled_vs_pack_eager"] = _rel(out, pack_ref_out)
            del out

        ref_t = cases["ref_eager"]["s_per_step"]
        res["ratios_vs_ref_eager"] = {k: round(v["s_per_step"] / ref_t, 3) for k, v in cases.items()}
        ref_key = "ref_compiled" if "ref_compiled" in cases else "ref_eager"
        pack_key = "pack_compiled" if "pack_compiled" in cases else "pack_eager"
        ratio = cases[pack_key]["s_per_step"] / cases[ref_key]["s_per_step"]
        res["acceptance"] = dict(pack_case=pack_key, ref_case=ref_key, ratio=round(ratio, 3), goal=GOAL_RATIO,
                                 floor=res["flop_ratio"], passed=ratio <= GOAL_RATIO)
        step = cases[pack_key]["s_per_step"]

        if vae:
            res["vae"] = _vae_timing(bb, dev, dtype, inp, f)
        v = res.get("vae", {})
        extra = v.get("encode_image_s", 0.0) + v.get("encode_conditions_s", 0.0) + v.get("decode_tiled_s", 0.0)
        res["full_sample"] = dict(steps=sample_steps, step_case=pack_key, step_s=step,
                                  encode_image_s=v.get("encode_image_s", 0.0),
                                  encode_conditions_s=v.get("encode_conditions_s", 0.0),
                                  decode_s=v.get("decode_tiled_s", 0.0),
                                  total_s=round(sample_steps * step + extra, 2),
                                  note="T5 encoding not included; steps extrapolated from the median step")
    return res


def _vae_timing(bb, dev, dtype, inp, f):
    """Image encode, the three enabled conditions' encode (video + first frame each) and a tiled decode."""
    vae = bb.vae
    vae.enable_tiling()
    bb.vae_tiling = True
    g = torch.Generator().manual_seed(3)
    c = bb.extra["latent_channels"]
    vs = bb.extra["vae_scale_factor_spatial"]
    lat = torch.randn(1, f, c, inp["h"] // vs, inp["w"] // vs, generator=g).to(dev, dtype)
    img = torch.rand(1, inp["h"], inp["w"], 3, generator=g)
    conds = {s: torch.rand(1, inp["frames"], inp["h"], inp["w"], 3, generator=g) for s in P.RELEASED_USED}
    with torch.no_grad():
        cog.decode_latents(bb, lat[:, :2])  # warm-up (kernels, cuDNN plans)
        _sync(dev)
        t0 = time.perf_counter()
        cog.image_condition(bb, img, f)
        _sync(dev)
        enc = time.perf_counter() - t0
        t0 = time.perf_counter()
        maps, _ = P.encode_conditions(bb, conds, generator=torch.Generator().manual_seed(42))
        _sync(dev)
        enc_c = time.perf_counter() - t0
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        frames = cog.decode_latents(bb, lat)
        _sync(dev)
        dec = time.perf_counter() - t0
    out = dict(encode_image_s=round(enc, 3), encode_conditions_s=round(enc_c, 3), decode_tiled_s=round(dec, 3),
               frames=list(frames.shape[1:4]), condition_latents=list(maps.shape))
    if dev.type == "cuda":
        out["decode_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=list(SIZES), default="full")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (reference and pack)")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--no-vae", action="store_true")
    ap.add_argument("--sample-steps", type=int, default=50)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    res = run(a.size, compile_=a.compile, reps=a.reps, vae=not a.no_vae, sample_steps=a.sample_steps)
    text = json.dumps(res, indent=2)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(text)
    print(text)
    return res


if __name__ == "__main__":
    main()
