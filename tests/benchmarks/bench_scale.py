"""Scaling benchmark (issue 20): sequence/CFG parallelism over world sizes, the step cache, and the compile / fp8
options against diffusers' own pipeline step, each part in one run.

    python tests/benchmarks/bench_scale.py [--size full|small] [--parts parallel,cache,speed] [--worlds 1,2,4]
                                           [--families cogvideox,svd,wan] [--sample-steps N] [--reps N]
                                           [--compile-backend inductor|eager] --json OUT.json

parallel  one Wan2.2-I2V-A14B expert CFG step (cond + uncond) at 81x480x832 (32,760 video tokens per row) through
          ``sampling.wan.predict_step`` on 1, 2 and 4 processes of a torchrun-style launch this script starts itself
          (one GPU each, NCCL): world 1; "cfg" (the two rows on two GPUs) and "sequence" (Ulysses over the frames)
          at 2; "auto" (cfg 2 x sequence 2) and "sequence" at 4. Median step seconds on rank 0, video tokens per
          second (2 rows x 32,760 / step time), the speed-up over world 1 and its efficiency. Goal (H100): >= 1.8x
          at 2 GPUs with sequence parallelism.
cache     a whole Wan sample (``--sample-steps``, UniPC, CFG 3.5) with the step cache off and on (threshold 0.2):
          seconds, model calls, speed-up, and the relative difference of the latents.
speed     per family the diffusers pipeline's step (CogVideoX-5B-I2V: the transformer on the CFG batch of 2 at
          49x480x720; SVD: the UNet on batch 2 at 14x576x1024; Wan A14B expert: two transformer calls, cond then
          uncond, as WanImageToVideoPipeline runs them) against the pack's step eager, regional compile, fp8, and
          compile + fp8 (``sampling.speed.Speed``): seconds per step and the ratio to diffusers' (> 1: faster).
          Goals (H100): CogVideoX-5B step with the KineMask branch <= 1.45 s bf16, <= 1.35 s fp8 (bench_kinemask);
          SVD + InterDyn <= 0.35 s (bench_interdyn); Wan expert CFG step <= 5.2 s bf16 compiled.
full: CUDA, bf16, random weights at the released configs. small: CPU, fp32, the tiny configs (9x32x32), world
sizes 1 and 2 on gloo, compile with the ``eager`` backend by default: the CPU test of this script.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchtools import ROOT, import_pack, time_call  # noqa: E402

import_pack()
from interplay.models import distributed  # noqa: E402
from interplay.models.backbones import cogvideox as cog  # noqa: E402
from interplay.models.backbones import svd as svdb  # noqa: E402
from interplay.models.backbones import wan  # noqa: E402
from interplay.models.sampling import parallel as P  # noqa: E402
from interplay.models.sampling import wan as SW  # noqa: E402
from interplay.models.sampling.guidance import classifier_free  # noqa: E402
from interplay.models.sampling.speed import Speed, running, with_fp8  # noqa: E402
from interplay.models.sampling.step_cache import DEFAULT_THRESHOLD, StepCache  # noqa: E402

SIZES = {"full": {"wan": (81, 480, 832), "cogvideox": (49, 480, 720), "svd": (14, 576, 1024)},
         "small": {"wan": (9, 32, 32), "cogvideox": (9, 32, 32), "svd": (4, 64, 64)}}
LAYOUTS = {1: ["off"], 2: ["cfg", "sequence"], 4: ["auto", "sequence"]}
GOALS = dict(sequence_speedup_2gpu=1.8, wan_compiled_cfg_step_s=5.2, cogvideox_kinemask_step_s=1.45,
             cogvideox_kinemask_fp8_step_s=1.35, svd_interdyn_step_s=0.35, gpu="H100")


def _median(fn, dev, reps: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    return statistics.median(time_call(fn, dev) for _ in range(reps))


def _rel(a, b) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp(min=1e-12))


def _device(size: str) -> tuple[torch.device, torch.dtype]:
    if size == "full":
        if not torch.cuda.is_available():
            raise SystemExit("bench_scale: --size full needs CUDA")
        return torch.device("cuda", torch.cuda.current_device()), torch.bfloat16
    return torch.device("cpu"), torch.float32


# ------------------------------------------------------------------------------------------ bundles
def wan_bundle(size: str, dev, dtype):
    """Wan2.2-I2V-A14B with one expert (the benchmarks time one expert's step): random weights at the release
    config (full, built on the device) or the tiny one."""
    bb = wan.random_backbone("wan2.2-i2v-a14b", "tiny", dtype=torch.float32, device="cpu")
    if size == "small":
        return bb.replace(experts={})
    from diffusers import WanTransformer3DModel

    with torch.device(dev):
        tr = WanTransformer3DModel(**wan.RELEASE_TRANSFORMERS["wan2.2-i2v-a14b"]).to(dtype).eval()
    tr.requires_grad_(False)
    bb.vae.to(dev)
    return bb.replace(denoiser=tr, experts={}, device=dev, dtype=dtype)


def wan_step_inputs(bb, size: str, seed: int = 1):
    frames, hh, ww = SIZES[size]["wan"]
    g = torch.Generator().manual_seed(seed)
    _, c, f, h, w = wan.latent_shape(bb, frames, hh, ww)
    dev, dtype = bb.device, bb.dtype
    x = torch.randn(1, c, f, h, w, generator=g).to(dev, torch.float32)
    d = bb.denoiser.config.text_dim
    text = {r: torch.randn(1, wan.TEXT_LENGTH, d, generator=g).to(dev, dtype) for r in ("cond", "uncond")}
    parts = {"mask": torch.zeros(1, 4, f, h, w, device=dev), "image": torch.randn(1, c, f, h, w, generator=g).to(dev)}
    return x, SW.WanConds(text=text, parts=parts), f * (h // 2) * (w // 2)


# ------------------------------------------------------------------------------------------ parallel
def parallel_worker(size: str, layouts, reps: int, out: Path) -> None:
    """One rank of a launch: the median CFG step of one expert under each layout; rank 0 writes
    ``out/<world>_<layout>.json``."""
    distributed.init()
    dev, dtype = _device(size)
    bb = wan_bundle(size, dev, dtype)
    x, conds, tokens = wan_step_inputs(bb, size)
    g = classifier_free(3.5)
    for layout in layouts:
        par = P.plan(layout, rows=2, engine="auto")
        with torch.no_grad():
            s = _median(lambda: SW.predict_step(bb, x, 950.0, conds, g, parallel=par), dev, reps)
            v = SW.predict_step(bb, x, 950.0, conds, g, parallel=par)
        if distributed.is_main():
            (out / f"{distributed.world_size()}_{layout}.json").write_text(json.dumps(
                {"s_per_step": s, "tokens": tokens, "cfg": par.cfg if par else 1, "sp": par.sp if par else 1,
                 "engine": par.engine if par else "-", "checksum": float(v.double().abs().mean())}))
    distributed.barrier()


def run_parallel(size: str, worlds, reps: int) -> dict:
    sys.path.insert(0, str(ROOT / "tests"))
    from kit.launch import launch

    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        for world in worlds:
            if size == "full" and world > torch.cuda.device_count():
                res[str(world)] = {"skipped": f"{torch.cuda.device_count()} GPU(s) visible"}
                continue
            if world == 1:  # this process is the world of one
                parallel_worker(size, LAYOUTS[1], reps, Path(tmp))
            else:  # one launch runs every layout of this world size
                args = ["--worker", "parallel", "--size", size, "--layout", ",".join(LAYOUTS[world]), "--reps",
                        reps, "--json", tmp]
                launch(Path(__file__), args, world=world, timeout=3600 if size == "full" else 300,
                       backend=None if size == "full" else "gloo")
            for layout in LAYOUTS[world]:
                r = json.loads((Path(tmp) / f"{world}_{layout}.json").read_text())
                r["tokens_per_s"] = round(2 * r["tokens"] / r["s_per_step"], 1)
                res[f"{world}_{layout}"] = r
    base = res.get("1_off", {}).get("s_per_step")
    for k, r in res.items():
        if base and "s_per_step" in r:
            world = int(k.split("_")[0])
            r["speedup"] = round(base / r["s_per_step"], 3)
            r["efficiency"] = round(base / r["s_per_step"] / world, 3)
            r["s_per_step"] = round(r["s_per_step"], 4)
    sums = {r["checksum"] for r in res.values() if "checksum" in r}
    return {"runs": res, "same_prediction": (max(sums) - min(sums)) <= 1e-3 * max(sums) if sums else None}


# ---------------------------------------------------------------------------------------------- cache
def run_cache(size: str, steps: int) -> dict:
    dev, dtype = _device(size)
    bb = wan_bundle(size, dev, dtype)
    frames, hh, ww = SIZES[size]["wan"]
    g = torch.Generator().manual_seed(0)
    d = bb.denoiser.config.text_dim
    pos, neg = torch.randn(1, wan.TEXT_LENGTH, d, generator=g), torch.randn(1, wan.TEXT_LENGTH, d, generator=g)
    image = torch.rand(1, hh, ww, 3, generator=g)
    out = {}
    lat = {}
    for name, cache in (("off", None), ("on", StepCache(threshold=DEFAULT_THRESHOLD))):
        def run(cache=cache):
            return SW.sample_wan(bb, image, pos, neg, num_frames=frames, steps=steps, cfg=3.5, seed=1,
                                 step_cache=cache)
        run()  # warm-up (kernels, allocator)
        holder = {}
        s = time_call(lambda: holder.setdefault("x", run()), dev)
        lat[name] = holder["x"]
        out[name] = {"seconds": round(s, 3), "model_calls": cache.computed if cache else steps}
    out["speedup"] = round(out["off"]["seconds"] / out["on"]["seconds"], 3)
    out["calls_saved"] = round(1 - out["on"]["model_calls"] / steps, 3)
    out["rel_diff_latents"] = round(_rel(lat["on"], lat["off"]), 5)
    out.update(steps=steps, threshold=DEFAULT_THRESHOLD, family="wan")
    return out


# ---------------------------------------------------------------------------------------------- speed
def _family_step(family: str, size: str, dev, dtype):
    """(bundle, the pack's step(bb), diffusers' pipeline step, head_dim) at the benchmark size."""
    frames, hh, ww = SIZES[size][family]
    g = torch.Generator().manual_seed(3)
    if family == "wan":
        bb = wan_bundle(size, dev, dtype)
        c = bb.denoiser.config
        _, _, f, h, w = wan.latent_shape(bb, frames, hh, ww)
        x = torch.randn(2, c.in_channels, f, h, w, generator=g).to(dev, dtype)
        e = torch.randn(2, wan.TEXT_LENGTH, c.text_dim, generator=g).to(dev, dtype)
        t = torch.tensor([950, 950], device=dev)

        def pack(b):
            return wan.forward(b, x, t, e)

        def ref():  # WanImageToVideoPipeline: cond and uncond, one transformer call each
            return torch.cat([bb.denoiser(x[i:i + 1], t[i:i + 1], e[i:i + 1], return_dict=False)[0] for i in (0, 1)])
        return bb, pack, ref, c.attention_head_dim
    if family == "cogvideox":
        bb = cog.random_backbone("full" if size == "full" else "tiny", dtype=dtype, device=dev,
                                 with_text_encoder=False)
        c = bb.denoiser.config
        f = cog.latent_frames(bb, frames)
        s = bb.extra.get("vae_scale_factor_spatial", 8)
        x = torch.randn(2, f, c.in_channels, hh // s, ww // s, generator=g).to(dev, dtype)
        e = torch.randn(2, c.max_text_seq_length, c.text_embed_dim, generator=g).to(dev, dtype)
        t = torch.tensor([950, 950], device=dev)
        rot = cog.rotary_for(bb.denoiser, f, hh // s, ww // s, dev)

        def pack(b):
            return cog.forward(b, x, t, e, image_rotary_emb=rot)

        def ref():  # CogVideoXImageToVideoPipeline: the CFG batch of 2 in one call
            return bb.denoiser(hidden_states=x, encoder_hidden_states=e, timestep=t, image_rotary_emb=rot,
                               return_dict=False)[0]
        return bb, pack, ref, c.attention_head_dim
    bb = svdb.random_backbone("full" if size == "full" else "tiny", dtype=dtype, device=dev)
    unet = bb.denoiser
    sf = bb.extra["vae_scale_factor"]
    x = torch.randn(2, frames, unet.config.in_channels, hh // sf, ww // sf, generator=g).to(dev, dtype)
    emb = torch.randn(2, 1, unet.config.cross_attention_dim, generator=g).to(dev, dtype)
    tids = svdb.added_time_ids(6, 40, 0.02, 2, dev, dtype)
    t = torch.full((2,), 0.25 * float(torch.tensor(700.0).log()), device=dev)

    def pack(b):
        return svdb.unet_forward(b.denoiser, x, t, emb, tids, bb=b)

    def ref():  # StableVideoDiffusionPipeline: the CFG batch of 2 in one call
        return unet(x, t, encoder_hidden_states=emb, added_time_ids=tids, return_dict=False)[0]
    return bb, pack, ref, 64


def run_speed(size: str, families, reps: int, backend: str) -> dict:
    dev, dtype = _device(size)
    out = {}
    cases = {"eager": Speed(), "compile": Speed(compile=True, compile_options={"backend": backend}),
             "fp8": Speed(fp8="auto"), "compile_fp8": Speed(compile=True, fp8="auto",
                                                             compile_options={"backend": backend})}
    for fam in families:
        bb, pack, ref, head = _family_step(fam, size, dev, dtype)
        with torch.no_grad():
            r = {"diffusers_step_s": _median(ref, dev, reps)}
            want = ref()
            for name, sp in cases.items():
                try:
                    b = with_fp8(bb, sp, f"bench {fam}")
                except ValueError as ex:  # fp8 on hardware without it: recorded, not fatal
                    r[name] = {"refused": str(ex)}
                    continue
                with running(b, [], sp, f"bench {fam}", head):
                    first = time_call(lambda: pack(b), dev)
                    s = _median(lambda: pack(b), dev, reps, warmup=0)
                    err = _rel(pack(b), want)
                r[name] = {"s_per_step": round(s, 4), "first_call_s": round(first, 2),
                           "vs_diffusers": round(r["diffusers_step_s"] / s, 3), "rel_err": float(f"{err:.3g}")}
            r["diffusers_step_s"] = round(r["diffusers_step_s"], 4)
        out[fam] = r
        del bb
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return out


# ----------------------------------------------------------------------------------------------- main
def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=("full", "small"), default="full")
    p.add_argument("--parts", default="parallel,cache,speed")
    p.add_argument("--worlds", default=None, help="world sizes of the parallel part (full: 1,2,4; small: 1,2)")
    p.add_argument("--families", default="cogvideox,svd,wan")
    p.add_argument("--sample-steps", type=int, default=None, help="cache part (full: 40, small: 10)")
    p.add_argument("--reps", type=int, default=None)
    p.add_argument("--compile-backend", default=None, help="torch.compile backend (full: inductor, small: eager)")
    p.add_argument("--json", default=None)
    p.add_argument("--worker", choices=("parallel",), help=argparse.SUPPRESS)
    p.add_argument("--layout", default="off", help=argparse.SUPPRESS)
    a = p.parse_args([str(x) for x in argv] if argv is not None else None)
    full = a.size == "full"
    reps = a.reps or (5 if full else 2)
    if a.worker:
        parallel_worker(a.size, a.layout.split(","), reps, Path(a.json))
        return {}
    res = {"size": a.size, "goals": GOALS, "gpu": torch.cuda.get_device_name() if full else None}
    parts = [x for x in a.parts.split(",") if x]
    if "parallel" in parts:
        worlds = [int(w) for w in (a.worlds or ("1,2,4" if full else "1,2")).split(",")]
        res["parallel"] = run_parallel(a.size, worlds, reps)
    if "cache" in parts:
        res["cache"] = run_cache(a.size, a.sample_steps or (40 if full else 10))
    if "speed" in parts:
        res["speed"] = run_speed(a.size, [f for f in a.families.split(",") if f], reps,
                                 a.compile_backend or ("inductor" if full else "eager"))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
