"""Reproduce the embedded demo model.

    python -m interplay.models.demo.build --out DIR --work DIR [--threads N] [--eval N] [--set KEY=VALUE]
    python -m interplay.models.demo.build --eval-only [--out MODEL_DIR] --work DIR --eval N
                                          [--eval-modes control,zero,trajectory]

Recipe (every number is in configs.DemoConfig, stored beside the weights):
  1. scenes  sandbox `push` clips (seeds train_seed..), 64x64, 9 frames, kept in memory
  2. vae     AutoencoderKLCogVideoX from scratch on random crops of those clips, then scaling_factor measured
  3. latents every clip encoded once (posterior mean x scaling_factor), plus its frame-0 image latent
  4. backbone CogVideoXTransformer3DModel from scratch, image-to-video, v-prediction, no control
  5. branch  KineMask velocity branch on the frozen backbone: stage 1 all frames, stage 2 prefix dropout
  6. export  a diffusers folder (fp16) + the branch safetensors, loadable by load_cogvideox / load_branch
Stages 4-5 run through the pack's one trainer (models/training/trainer.py); each stage checkpoints into
``--work`` so an interrupted build resumes.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from .. import runtime
from ..backbones.base import cast
from . import configs as C


# ----------------------------------------------------------------------------------------------- scenes
def _scene(args):
    from ..sandbox.presets import generate_scene

    seed, size, frames, fps = args
    return generate_scene("push", seed=seed, size=(size, size), frames=frames, fps=fps)


def make_scenes(cfg: C.DemoConfig, seeds, workers: int = 1) -> list:
    """SceneClips for ``seeds`` (deterministic regardless of ``workers``)."""
    jobs = [(int(s), cfg.size, cfg.frames, cfg.fps) for s in seeds]
    if workers > 1:
        with ProcessPoolExecutor(workers) as ex:
            return list(ex.map(_scene, jobs, chunksize=32))
    return [_scene(j) for j in jobs]


def clip_video(clip) -> torch.Tensor:
    """[3,F,H,W] in [-1,1] (the VAE's layout)."""
    return torch.from_numpy(np.ascontiguousarray(clip.frames)).permute(3, 0, 1, 2).float() / 127.5 - 1.0


def clip_control(clip) -> torch.Tensor:
    """Stage-1 control: velocity masks of the initially moving objects on every frame, [F,H,W,3]."""
    from ..conditions.velocity import velocity_video

    d = list(clip.driven)
    return velocity_video(torch.from_numpy(clip.masks[d]).float(), torch.from_numpy(clip.vel_control[d]).float())


# ----------------------------------------------------------------------------------------------- models
def new_vae(cfg: C.DemoConfig, scaling_factor: float = 1.0):
    from diffusers import AutoencoderKLCogVideoX

    torch.manual_seed(cfg.seed)
    return AutoencoderKLCogVideoX(**C.vae_config(cfg, scaling_factor))


def new_transformer(cfg: C.DemoConfig):
    from diffusers import CogVideoXTransformer3DModel

    torch.manual_seed(cfg.seed + 1)
    return CogVideoXTransformer3DModel(**C.transformer_config(cfg))


def new_text_encoder(tokenizer):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(2)
    return T5EncoderModel(T5Config(**C.t5_config(len(tokenizer)))).eval()


def save_backbone_folder(folder: Path, vae, transformer, text_encoder, tokenizer, dtype=torch.float16) -> Path:
    """Write a diffusers CogVideoXImageToVideoPipeline folder (weights in ``dtype``)."""
    import copy

    from diffusers import CogVideoXDDIMScheduler

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, mod in (("vae", vae), ("transformer", transformer), ("text_encoder", text_encoder)):
        cast(copy.deepcopy(mod), dtype).save_pretrained(folder / name, safe_serialization=True)
    tokenizer.save_pretrained(folder / "tokenizer")
    CogVideoXDDIMScheduler(**C.scheduler_config()).save_pretrained(folder / "scheduler")
    index = {
        "_class_name": "CogVideoXImageToVideoPipeline", "_diffusers_version": "0.32.0",
        "scheduler": ["diffusers", "CogVideoXDDIMScheduler"], "text_encoder": ["transformers", "T5EncoderModel"],
        "tokenizer": ["transformers", "T5TokenizerFast"], "transformer": ["diffusers", "CogVideoXTransformer3DModel"],
        "vae": ["diffusers", "AutoencoderKLCogVideoX"],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder


# ----------------------------------------------------------------------------------------------- stages
def stage_vae(cfg: C.DemoConfig, clips: list, work: Path, log=print, device=None):
    """Train the VAE on random crops (on ``device``, default: CUDA when present); returns the VAE, on the CPU,
    with its measured scaling_factor set."""
    from ..training.vae import VaeTrainConfig, latent_scale, train_vae

    ckpt = work / "vae.safetensors"
    vae = new_vae(cfg)
    if ckpt.exists():
        from safetensors.torch import load_file

        sd = load_file(str(ckpt))
        scale = float(sd.pop("__scaling_factor__"))
        vae.load_state_dict(sd)
        vae.register_to_config(scaling_factor=scale)
        log(f"[vae] resumed from {ckpt} (scaling_factor {scale:.4f})")
        return vae.eval()
    videos = torch.stack([clip_video(c) for c in clips])  # [N,3,F,H,W]
    n, _, _, h, w = videos.shape
    k = cfg.vae_crop

    def batches(step):
        g = torch.Generator().manual_seed(cfg.seed * 7919 + step)
        idx = torch.randint(0, n, (cfg.vae_batch,), generator=g)
        ys = torch.randint(0, h - k + 1, (cfg.vae_batch,), generator=g)
        xs = torch.randint(0, w - k + 1, (cfg.vae_batch,), generator=g)
        return torch.stack([videos[i, :, :, y:y + k, x:x + k] for i, y, x in zip(idx, ys, xs)])

    t0 = time.time()
    losses = train_vae(vae, batches, VaeTrainConfig(steps=cfg.vae_steps, lr=cfg.vae_lr, seed=cfg.seed),
                       device=device or resolve_device("auto"))
    vae = vae.float().cpu().eval()
    scale = latent_scale(vae, (videos[i:i + 16] for i in range(0, min(n, 256), 16)), device=torch.device("cpu"))
    vae.register_to_config(scaling_factor=scale)
    from safetensors.torch import save_file

    sd = {k2: v.contiguous() for k2, v in vae.state_dict().items()}
    sd["__scaling_factor__"] = torch.tensor(scale)
    tmp = ckpt.with_suffix(".tmp")
    save_file(sd, str(tmp))
    os.replace(tmp, ckpt)
    log(f"[vae] {cfg.vae_steps} steps in {time.time() - t0:.0f}s, final loss {np.mean(losses[-50:]):.4f}, "
        f"scaling_factor {scale:.4f}")
    return vae


@torch.no_grad()
def stage_latents(cfg: C.DemoConfig, clips: list, vae, work: Path, name: str = "latents", log=print) -> dict:
    """Encode every clip once: posterior mean and std of the video [N,f,C,h,w] and of its frame 0 [N,1,C,h,w],
    scaled by the VAE's scaling_factor (the layout and scale the tasks' VAE path produces)."""
    path = work / f"{name}.safetensors"
    if path.exists():
        from safetensors.torch import load_file

        return load_file(str(path))
    s = vae.config.scaling_factor
    out = {"lat_mean": [], "lat_std": [], "img_mean": [], "img_std": []}

    def put(prefix, dist):
        out[prefix + "_mean"].append(dist.mean.mul(s).permute(0, 2, 1, 3, 4).contiguous())
        out[prefix + "_std"].append(dist.std.mul(s).permute(0, 2, 1, 3, 4).contiguous())

    for i in range(0, len(clips), 32):
        v = torch.stack([clip_video(c) for c in clips[i:i + 32]])
        put("lat", vae.encode(v).latent_dist)
        put("img", vae.encode(v[:, :, :1]).latent_dist)
    out = {k: torch.cat(v) for k, v in out.items()}
    from safetensors.torch import save_file

    save_file(out, str(path))
    log(f"[latents] {tuple(out['lat_mean'].shape)} mean-std {out['lat_mean'].std():.3f} "
        f"posterior-std {out['lat_std'].mean():.3f}")
    return out


# ----------------------------------------------------------------------------------------------- training
class LatentClips(torch.utils.data.Dataset):
    """Clips encoded once (posterior mean and std of the video and of its frame 0) plus the stage-1 velocity
    control, so training never runs the VAE (the dominant cost on a CPU)."""

    def __init__(self, lat: dict, clips: list | None = None):
        self.lat = lat
        self.masks = self.vels = None
        if clips is not None:
            self.masks = [torch.from_numpy(c.masks[list(c.driven)]) for c in clips]
            self.vels = [torch.from_numpy(c.vel_control[list(c.driven)]).float() for c in clips]

    def __len__(self):
        return self.lat["lat_mean"].shape[0]

    def __getitem__(self, i):
        item = {k: v[i] for k, v in self.lat.items()}
        if self.masks is not None:
            from ..conditions.velocity import velocity_video

            item["control"] = velocity_video(self.masks[i].float(), self.vels[i])
        return item


class _FromLatents:
    """Task mixin: x0 and the frame-0 image latent are drawn from stored posteriors (mean + std * N(0,1)),
    exactly what the tasks' VAE path draws, instead of encoding pixels every step."""

    num_frames = 9

    def _frames(self, batch):
        self._batch = batch
        b = batch["lat_mean"].shape[0]
        return torch.zeros(b, self.num_frames, 1, 1, 3)  # only B and F are read downstream

    def _inputs(self, frames, generator):
        b = self._batch

        def draw(mean, std):
            return mean + std * torch.randn(mean.shape, generator=generator)

        x0 = draw(b["lat_mean"], b["lat_std"]).float().to(self.bb.device)
        img0 = draw(b["img_mean"], b["img_std"])
        img = torch.cat([img0, torch.zeros_like(x0[:, 1:])], dim=1).to(self.bb.device, self.bb.dtype)
        return x0, img


def demo_backbone(cfg: C.DemoConfig, vae, transformer, device=None):
    from ..backbones.cogvideox import assemble_backbone
    from ..tokenizer import build_tokenizer

    tok = build_tokenizer()
    te = new_text_encoder(tok)
    return assemble_backbone(transformer, vae, te, tok, C.scheduler_config(), dtype=torch.float32,
                             device=device or torch.device("cpu"), variant="interplay-demo",
                             source={"kind": "demo-build"})


def _train_cfg(steps, batch, lr, seed, warmup=100, ema=0.0, device=None):
    from ..training.trainer import TrainConfig

    # autocast in the pack's default dtype for the device: bf16 on recent GPUs, fp16 on older ones, fp32 on CPU
    dt = runtime.default_dtype(device if device is not None else "cpu")
    precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dt, "fp32")
    return TrainConfig(steps=steps, batch_size=batch, lr=lr, betas=(0.9, 0.99), weight_decay=0.0,
                       schedule="cosine", warmup=warmup, min_lr_ratio=0.05, clip_norm=1.0, seed=seed,
                       checkpoint_every=250, log_every=50, ema_decay=ema, precision=precision)


def stage_backbone(cfg: C.DemoConfig, bb, data: LatentClips, work: Path, log=print):
    """Train the whole tiny transformer (image-to-video, v-prediction) through the pack's trainer."""
    from ..training.kinemask import CogVideoXBackboneTask
    from ..training.trainer import train

    class Task(_FromLatents, CogVideoXBackboneTask):
        num_frames = cfg.frames

    bb.denoiser.float()
    task = Task(bb, caption=cfg.caption, noise_aug=False, max_text_length=cfg.max_text_len)
    t0 = time.time()
    res = train(task, data, _train_cfg(cfg.backbone_steps, cfg.backbone_batch, cfg.backbone_lr, cfg.seed,
                                       ema=cfg.backbone_ema, device=bb.device), work / "backbone")
    if res.ema_state_dict is not None:  # sample with the EMA weights
        bb.denoiser.load_state_dict(res.ema_state_dict)
    bb.denoiser.requires_grad_(False).eval()
    log(f"[backbone] {res.steps} steps in {time.time() - t0:.0f}s, final loss {np.mean(res.losses[-100:]):.4f}")
    return res


def stage_branch(cfg: C.DemoConfig, bb, data: LatentClips, work: Path, log=print):
    """KineMask branch on the frozen backbone: stage 1 (all frames), then stage 2 (early-biased prefix)."""
    from ..training.kinemask import KineMaskTask
    from ..training.trainer import train

    class Task(_FromLatents, KineMaskTask):
        num_frames = cfg.frames

    before = {k: v.clone() for k, v in bb.denoiser.state_dict().items()}
    t0 = time.time()
    t1 = Task(bb, stage=1, caption=cfg.caption, num_layers=cfg.branch_layers, noise_aug=False,
              max_text_length=cfg.max_text_len, weight=cfg.branch_weight)
    r1 = train(t1, data, _train_cfg(cfg.branch_stage1_steps, cfg.branch_batch, cfg.branch_lr, cfg.seed + 1,
                                    device=bb.device), work / "branch_stage1")
    log(f"[branch stage 1] {r1.steps} steps, final loss {np.mean(r1.losses[-100:]):.4f}")
    t2 = Task(bb, t1.output(), stage=2, caption=cfg.caption, noise_aug=False, max_text_length=cfg.max_text_len,
              weight=cfg.branch_weight)
    r2 = train(t2, data, _train_cfg(cfg.branch_stage2_steps, cfg.branch_batch, cfg.branch_lr * 0.5, cfg.seed + 2,
                                    warmup=20, device=bb.device), work / "branch_stage2")
    log(f"[branch stage 2] {r2.steps} steps, final loss {np.mean(r2.losses[-100:]):.4f}; "
        f"{time.time() - t0:.0f}s in all")
    after = bb.denoiser.state_dict()
    if any(not torch.equal(before[k], after[k]) for k in before):
        raise RuntimeError("the frozen backbone changed while training the branch")
    return t2.output(), (r1, r2)


# ----------------------------------------------------------------------------------------------- export
def export(cfg: C.DemoConfig, bb, branch, out: Path, facts: dict, dtype=torch.float16) -> dict:
    """Write the diffusers folder and the branch file (``dtype`` on disk) plus demo_config.json."""
    import copy

    from ..control.kinemask import save_branch

    out = Path(out)
    for m in (bb.vae, bb.denoiser, bb.text_encoder, branch.module):  # written from the CPU whatever trained them
        m.cpu()
    save_backbone_folder(out / C.BACKBONE_DIR.name, bb.vae, bb.denoiser, bb.text_encoder, bb.tokenizer, dtype)
    m = cast(copy.deepcopy(branch.module), dtype)
    save_branch(m, out / C.BRANCH_FILE.name)
    info = {"config": cfg.to_dict(), **facts}
    (out / "demo_config.json").write_text(json.dumps(info, indent=2))
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return {"bytes": size}


def load_demo(root: Path | None = None, *, dtype=None, device=None):
    """(Backbone, ControlBranch) of the embedded demo model (or of a build output folder ``root``)."""
    from ..backbones.cogvideox import load_cogvideox
    from ..control.kinemask import load_branch

    root = Path(root) if root is not None else C.DEMO_ROOT
    folder, bfile = root / C.BACKBONE_DIR.name, root / C.BRANCH_FILE.name
    if not (folder / "model_index.json").is_file() or not bfile.is_file():
        raise FileNotFoundError(f"the demo model is missing under {root} (expected {folder.name}/ and "
                                f"{bfile.name}); rebuild it with `python -m interplay.models.demo.build`")
    bb = load_cogvideox(folder, dtype=dtype or "fp32", device=device)
    br = load_branch(bfile, dtype=bb.dtype, device=bb.device)
    return bb, br


# ----------------------------------------------------------------------------------------------- evaluation
EVAL_MODES = ("control", "zero", "trajectory", "truth")


def _check_mode(mode: str) -> None:
    if mode not in EVAL_MODES:
        raise ValueError(f"evaluation mode must be one of {', '.join(EVAL_MODES)}; got {mode!r}")


def eval_control(clip, mode: str) -> torch.Tensor:
    """The control video [F,H,W,3] an evaluation mode gives the model for ``clip``:
    "control": the ground-truth initial velocity on frame 0 only (the inference condition, the acceptance's);
    "zero": the control signal zeroed; "trajectory": the ground-truth velocity masks on every frame (stage-1
    input, a diagnostic: how well the model renders a motion it is told in full, i.e. the ceiling for what
    stage 2 must infer from frame 0)."""
    from ..conditions.velocity import first_frame_only

    _check_mode(mode)
    if mode == "truth":
        raise ValueError("the 'truth' mode samples nothing: it writes the reference video itself as mp4")
    full = clip_control(clip)
    if mode == "trajectory":
        return full
    return first_frame_only(full) if mode == "control" else torch.zeros_like(full)


def generate_eval_set(cfg: C.DemoConfig, bb, branch, ref_dir: Path, gen_dirs: dict, n: int = 50, log=print,
                      step_cache=None, stats: dict | None = None):
    """Write ``n`` held-out push scenes (sandbox format) to ``ref_dir`` and, for each mode in ``gen_dirs``
    (see :func:`eval_control`), the generated videos as <clip>.mp4 ... ready for `interplay eval GEN REF`.
    Every mode samples clip i with seed i, so the modes differ only in their control. ``step_cache`` (a
    sampling.step_cache.StepCache) samples with the step cache; ``stats`` (a dict) receives per mode the model calls
    made, the steps and the sampling seconds. Returns the clips."""
    import time as _time
    from ..backbones.cogvideox import decode_latents, encode_prompt
    from ..control.base import ControlSignal
    from ..sampling.cogvideox import sample_cogvideox
    from ..sandbox.dataset import write_clip
    from ..video_io import save_video

    for mode in gen_dirs:  # before anything is written
        _check_mode(mode)
    clips = make_scenes(cfg, range(cfg.heldout_seed, cfg.heldout_seed + n))
    emb = encode_prompt(bb, [cfg.caption], max_length=cfg.max_text_len)
    for d in [ref_dir, *gen_dirs.values()]:
        Path(d).mkdir(parents=True, exist_ok=True)
    stats = {} if stats is None else stats
    stats.update({m: {"calls": 0, "steps": 0, "seconds": 0.0} for m in gen_dirs})
    for i, clip in enumerate(clips):
        name = f"clip_{clip.seed:07d}"
        write_clip(clip, Path(ref_dir) / name)
        image = torch.from_numpy(clip.frames[:1]).float() / 255.0
        for mode, d in gen_dirs.items():
            if mode == "truth":  # the metrics' ceiling: the true video through the same mp4 encoding
                save_video(torch.from_numpy(clip.frames).float() / 255.0, Path(d) / f"{name}.mp4", fps=cfg.fps)
                continue
            sig = ControlSignal(video=eval_control(clip, mode), kind="velocity", weight=cfg.branch_weight)
            t0 = _time.perf_counter()
            lat = sample_cogvideox(bb, image, emb, controls=[sig], branch=branch, num_frames=cfg.frames,
                                   steps=cfg.sample_steps, cfg=cfg.sample_cfg, seed=i, desc=f"{mode} {i}",
                                   step_cache=step_cache)
            st = stats[mode]
            st["seconds"] += _time.perf_counter() - t0
            st["steps"] += cfg.sample_steps
            st["calls"] += step_cache.computed if step_cache is not None else cfg.sample_steps
            frames = decode_latents(bb, lat)[0]
            save_video(frames, Path(d) / f"{name}.mp4", fps=cfg.fps)
        log(f"[eval] {i + 1}/{n} {name}")
    return clips


# The scoring flags of the README's evaluation table (20 motion-fidelity query points: the 64x64 objects are
# small); the printed commands use the same ones.
EVAL_FLAGS = ("--mf-points", "20")


def eval_commands(ev: Path, modes) -> list[str]:
    """One runnable `interplay eval` command per mode: the console script beside this Python (a fresh shell need
    not have the venv on PATH), else ``python -m``; paths quoted for the shell."""
    import shlex
    import sys

    script = Path(sys.executable).with_name("interplay")
    exe = [str(script)] if script.is_file() else [sys.executable, "-m", f"{__package__.split('.')[0]}.nodes.cli"]
    return [shlex.join(exe + ["eval", str(ev / m), str(ev / "reference"), *EVAL_FLAGS,
                              "--out", str(ev / f"{m}.json")]) for m in modes]


def run_eval(cfg: C.DemoConfig, root: Path, work: Path, n: int, modes, device=None,
             step_cache: float = 0.0) -> Path:
    """Load the demo model at ``root`` and write the evaluation sets under ``work``/eval; returns that folder.
    ``step_cache`` > 0 samples with the step cache at that threshold into ``<mode>_cache<threshold>`` folders
    (the reference is shared, so they score against the same clips as the uncached sets)."""
    from ..sampling.step_cache import StepCache

    bb, br = load_demo(root, device=device)
    ev = Path(work) / "eval"
    cache = StepCache(threshold=step_cache) if step_cache > 0 else None
    names = {m: (f"{m}_cache{step_cache:g}" if cache is not None else m) for m in modes}
    stats = {}
    generate_eval_set(cfg, bb, br, ev / "reference", {m: ev / names[m] for m in modes}, n=n, step_cache=cache,
                      stats=stats)
    for m, st in stats.items():
        if st["steps"]:
            print(f"{names[m]}: {st['calls']}/{st['steps']} model calls, {st['seconds']:.1f} s sampling")
    print("evaluate with:\n" + "\n".join(f"  {c}" for c in eval_commands(ev, [names[m] for m in modes])))
    return ev


# ----------------------------------------------------------------------------------------------- main
DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str) -> torch.device:
    """"auto": the pack's compute device (runtime.compute_device: the GPU when torch sees one); "cuda" without a
    visible GPU is an error."""
    if name not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}; got {name!r}")
    if name == "auto":
        return runtime.compute_device()
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda': torch sees no CUDA device here; use 'auto' or 'cpu'")
    return torch.device(name)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m interplay.models.demo.build", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(C.DEMO_ROOT), help="where the exported demo model goes")
    p.add_argument("--work", default="demo_build", help="checkpoints of every stage (resumable)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--eval", type=int, default=50, help="held-out scenes to evaluate after the build (0 = none)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a DemoConfig field")
    p.add_argument("--eval-modes", default="control,zero",
                   help=f"comma-separated, from {', '.join(EVAL_MODES)} (trajectory: the full ground-truth motion, "
                        "a diagnostic ceiling; truth: the reference video itself as mp4, the metrics' own ceiling)")
    p.add_argument("--device", default="auto", choices=DEVICES,
                   help="where the VAE, backbone and branch train and the evaluation samples (auto: the GPU when "
                        "present; training there autocasts in bf16, or fp16 on GPUs without bf16)")
    p.add_argument("--eval-only", action="store_true",
                   help="train nothing: evaluate the model already at --out (default: the embedded demo model)")
    p.add_argument("--step-cache", type=float, default=0.0, metavar="THRESHOLD",
                   help="sample the evaluation with the step cache at this threshold (0: off), into <mode>_cache<T>")
    a = p.parse_args(argv)
    modes = [m.strip() for m in a.eval_modes.split(",") if m.strip()]
    if not modes:
        p.error(f"--eval-modes {a.eval_modes!r}: name at least one of {', '.join(EVAL_MODES)}")
    for m in modes:
        try:
            _check_mode(m)
        except ValueError as e:
            p.error(f"--eval-modes: {e}")
    if a.eval_only and a.eval < 1:
        p.error("--eval-only needs --eval N with N >= 1 (the number of held-out scenes)")
    try:
        device = resolve_device(a.device)
    except ValueError as e:
        p.error(f"--device: {e}")
    if a.threads:
        torch.set_num_threads(a.threads)
    cfg = C.DemoConfig()
    stored = Path(a.out) / "demo_config.json"
    if a.eval_only and stored.is_file():  # sample as the model was built (its steps, cfg, frames ...)
        fields = set(cfg.to_dict())
        try:
            cfg = C.DemoConfig(**{k: v for k, v in json.loads(stored.read_text())["config"].items() if k in fields})
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            p.error(f"{stored} is not a demo config (a 'config' object of DemoConfig fields): {e}; "
                    "remove it to sample with the defaults and --set")
    for kv in a.set:
        k, _, v = kv.partition("=")
        if not hasattr(cfg, k):
            p.error(f"--set {kv}: DemoConfig has no field {k!r}")
        setattr(cfg, k, type(getattr(cfg, k))(v))
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    if a.eval_only:
        try:
            run_eval(cfg, Path(a.out), work, a.eval, modes, device, step_cache=a.step_cache)
        except FileNotFoundError as e:
            print(f"error: {e}")
            return 2
        return 0
    (work / "demo_config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    t0 = time.time()
    facts = {"timings_s": {}}

    def tick(name, since):
        facts["timings_s"][name] = round(time.time() - since, 1)
        return time.time()

    t = time.time()
    clips = make_scenes(cfg, range(cfg.train_seed, cfg.train_seed + cfg.n_train), workers=max(1, os.cpu_count() // 2))
    t = tick("scenes", t)
    vae = stage_vae(cfg, clips, work, device=device)
    t = tick("vae", t)
    lat = stage_latents(cfg, clips, vae, work)
    data = LatentClips(lat, clips)
    del clips
    t = tick("latents", t)
    bb = demo_backbone(cfg, vae, new_transformer(cfg), device=device)
    rb = stage_backbone(cfg, bb, data, work)
    facts["backbone_final_loss"] = float(np.mean(rb.losses[-100:]))
    t = tick("backbone", t)
    branch, (r1, r2) = stage_branch(cfg, bb, data, work)
    facts["branch_stage1_final_loss"] = float(np.mean(r1.losses[-100:]))
    facts["branch_stage2_final_loss"] = float(np.mean(r2.losses[-100:]))
    t = tick("branch", t)
    facts["vae_scaling_factor"] = float(bb.vae.config.scaling_factor)
    facts["total_s"] = round(time.time() - t0, 1)
    size = export(cfg, bb, branch, Path(a.out), facts)
    print(f"exported to {a.out}: {size['bytes'] / 1e6:.1f} MB; {json.dumps(facts)}")
    if a.eval:
        run_eval(cfg, Path(a.out), work, a.eval, modes, device)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
