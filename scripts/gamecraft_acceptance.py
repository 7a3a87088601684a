"""GameCraft-2 acceptance experiment (issue 18): does a trained tiny camera encoder make the generated camera
motion follow the commanded keys better than the encoder zeroed, on held-out sandbox scenes?

    python scripts/gamecraft_acceptance.py --out runs/gamecraft_acceptance      # the full run (~10 min on one core)
    python scripts/gamecraft_acceptance.py --out /tmp/gc --small               # a ~1 min run

Stages (everything from a tiny random Wan2.2 I2V-A14B of the real classes, seeded):
1. Data: ``n_train`` sandbox ``camera`` clips (random key presses, the preset's own) from ``train_seed``; held-out
   scenes from ``test_seed`` (scene seeds checked disjoint from the training ones), each rendered once per
   command (W, S, A, D, left, right held for the whole clip) from the same first frame.
2. The pixels <-> latents map: a PCA patch codec in the Wan latent format, fitted on the training clips
   (:class:`PatchPCACodec` says why not the tiny Wan VAE).
3. The tiny backbone, trained to reconstruct the training clips from their first frame with flow matching (a
   random backbone renders nothing): both experts, one caption for every clip (the camera preset's captions
   name the keys; one caption keeps the camera out of the text).
4. The camera encoder (``gamecraft_camera`` task): with ``train_experts`` the experts are fine-tuned with it
   (GameCraft-2's action-injected training), else frozen (optionally with a LoRA of ``lora_rank``).
5. Held-out evaluation: every (scene, command) generated from the scene's first frame with the trained encoder
   and with the encoder zeroed (its output exactly zero), the same noise for both. Two measures:
   - the global motion of each generated video by phase correlation on the decoded frames
     (``metrics.global_motion``: frames 1.. against frame 0) against the motion of the commanded camera's
     ground-truth render (the sandbox draws what that camera sees): ``motion_cosine`` (1 = the same direction at
     every frame) and the end-point error in pixels; the codec's own round trip of the ground truth is reported
     as the ceiling;
   - :func:`command_agreement` in latent space (0 for a generator that ignores the camera).
   Written to ``results.json`` with the seeds.
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from types import SimpleNamespace
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from interplay.models import metrics as M

COMMANDS = ("W", "S", "A", "D", "left", "right")
CAPTION = "a few objects on a textured ground"


@dataclass
class Config:
    size: int = 64                  # H = W (px)
    frames: int = 9                 # 4n+1 (GameCraft-2's first causal block)
    fps: float = 16.0
    n_train: int = 32
    n_test: int = 24                # held-out scenes (x 6 commands)
    train_seed: int = 1
    test_seed: int = 1001
    backbone_steps: int = 200       # per expert
    backbone_lr: float = 1e-3
    camera_steps: int = 4000
    camera_lr: float = 2e-3
    heads: int = 4                  # transformer width = heads x 16 (the kit's tiny model: 2)
    layers: int = 3
    lora_rank: int = 0
    train_experts: bool = True      # stage 4 fine-tunes the experts with the encoder (GameCraft's stage 1)
    translation_scale: float = 4.0  # sandbox metres -> the encoder's units (GameCraft-1 rescales too)
    batch_size: int = 4
    sample_steps: int = 12
    seed: int = 0                   # weights and training streams
    threads: int = 1


SMALL = dict(size=64, frames=9, n_train=12, n_test=3, heads=2, layers=2, backbone_steps=120, camera_steps=160,
             sample_steps=8)


def _log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(f"[gamecraft-acceptance {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def held_out_clips(cfg: Config):
    """{(scene_seed, command): SceneClip} of the held-out scenes, every command from the same first frame."""
    from interplay.models.sandbox.cli import clip_seed
    from interplay.models.sandbox.presets import generate_scene

    out = {}
    for i in range(cfg.n_test):
        s = clip_seed(cfg.test_seed, i)
        for k in COMMANDS:
            out[(s, k)] = generate_scene("camera", s, (cfg.size, cfg.size), frames=cfg.frames, fps=cfg.fps,
                                         camera_keys=[k] * (cfg.frames - 1))
    return out


class _Dist:
    """The part of diffusers' latent distribution the Wan helpers read (a deterministic codec: std 0)."""

    def __init__(self, z):
        self.mean, self.std = z, torch.zeros_like(z)

    def mode(self):
        return self.mean

    def sample(self, generator=None):
        return self.mean


class PatchPCACodec(torch.nn.Module):
    """A linear video codec in the Wan latent format (16 channels, 8x space, 4x causal time): frame 0 alone, then
    each group of 4 frames averaged; every 8x8 RGB patch projected on the top-16 principal components of the
    training clips' patches (whitened). Fitted in closed form (:meth:`fit`).

    Why not the tiny Wan VAE: a random one encodes no image (on this preset the command-dependent part of its
    latents is 0.0008 rms of 0.4: the latents hardly change with the content), and training one on two shared
    CPU cores is too slow for this experiment (500 steps left its round trip with a motion cosine of 0.03). The
    backbone, the camera encoder, the training task and the sampler are the real ones; only the pixels <-> latents
    map is this codec."""

    def __init__(self, channels: int = 16, spatial: int = 8, temporal: int = 4):
        super().__init__()
        d = 3 * spatial * spatial
        self.spatial, self.temporal = spatial, temporal
        self.basis = torch.nn.Parameter(torch.zeros(channels, d), requires_grad=False)
        self.centre = torch.nn.Parameter(torch.zeros(d), requires_grad=False)
        self.scale = torch.nn.Parameter(torch.ones(channels), requires_grad=False)

    def _groups(self, x):  # [B,3,F,H,W] -> [B,3,f,H,W]
        t = self.temporal
        rest = x[:, :, 1:]
        rest = rest.reshape(*rest.shape[:2], rest.shape[2] // t, t, *rest.shape[3:]).mean(3)
        return torch.cat([x[:, :, :1], rest], dim=2)

    def _patches(self, x):  # [B,3,f,H,W] -> [B,f,h,w,3 s s]
        b, c, f, H, W = x.shape
        s = self.spatial
        return x.reshape(b, c, f, H // s, s, W // s, s).permute(0, 2, 3, 5, 1, 4, 6).reshape(b, f, H // s, W // s, -1)

    @torch.no_grad()
    def fit(self, videos: torch.Tensor) -> "PatchPCACodec":
        """Principal components of every patch of ``videos`` [N,3,F,H,W] in [-1, 1]."""
        p = self._patches(self._groups(videos)).reshape(-1, self.basis.shape[1]).double()
        self.centre.copy_(p.mean(0))
        _, sv, vt = torch.linalg.svd(p - p.mean(0), full_matrices=False)
        k = self.basis.shape[0]
        self.basis.copy_(vt[:k])
        self.scale.copy_(sv[:k] / (p.shape[0] - 1) ** 0.5)
        return self

    def encode(self, x):
        p = self._patches(self._groups(x.float()))  # [B,f,h,w,D]
        z = ((p - self.centre) @ self.basis.T) / self.scale
        return SimpleNamespace(latent_dist=_Dist(z.permute(0, 4, 1, 2, 3).contiguous()))

    def decode(self, z):
        b, _, f, h, w = z.shape
        s = self.spatial
        p = (z.permute(0, 2, 3, 4, 1) * self.scale) @ self.basis + self.centre  # [B,f,h,w,D]
        x = p.reshape(b, f, h, w, 3, s, s).permute(0, 4, 1, 2, 5, 3, 6).reshape(b, 3, f, h * s, w * s)
        x = torch.cat([x[:, :, :1], x[:, :, 1:].repeat_interleave(self.temporal, dim=2)], dim=2)
        return SimpleNamespace(sample=x)


def tiny_backbone(cfg: Config):
    """A random Wan2.2 I2V-A14B of the real classes: ``wan.random_backbone``'s tiny model, its two experts
    rebuilt ``heads`` x 16 wide and ``layers`` deep when asked (the same seeds)."""
    from diffusers import WanTransformer3DModel

    from interplay.models.backbones import wan

    bb = wan.random_backbone("wan2.2-i2v-a14b", "tiny", seed=cfg.seed)
    if (cfg.heads, cfg.layers) == (2, 2):
        return bb
    tcfg = {k: v for k, v in dict(bb.denoiser.config).items() if not k.startswith("_")}
    tcfg.update(num_attention_heads=cfg.heads, num_layers=cfg.layers, ffn_dim=4 * 16 * cfg.heads)
    made = {}
    for i, n in enumerate(("high_noise", "low_noise")):
        torch.manual_seed(cfg.seed + i)
        made[n] = WanTransformer3DModel(**tcfg).eval().requires_grad_(False)
    return bb.replace(denoiser=made["high_noise"], experts={"low_noise": made["low_noise"]})


def fit_codec(bb, root: Path, quiet: bool):
    """The bundle with the PCA codec fitted on the training clips as its VAE (latents already unit-scaled)."""
    from interplay.models.sandbox.dataset import SandboxDataset

    ds = SandboxDataset(root)
    vids = torch.stack([ds[i]["frames"] for i in range(len(ds))]).permute(0, 4, 1, 2, 3) * 2 - 1
    codec = PatchPCACodec(bb.extra["latent_channels"], bb.extra["vae_scale_factor_spatial"],
                          bb.extra["vae_scale_factor_temporal"]).fit(vids)
    kept = float((codec.scale ** 2).sum())
    total = float(vids.var(dim=(0, 2, 3, 4)).sum() * codec.spatial ** 2)
    _log(f"codec: {codec.basis.shape[0]} components keep {kept / total:.1%} of the patch variance", quiet)
    z = codec.basis.shape[0]
    return bb.replace(vae=codec, extra=dict(bb.extra, latents_mean=[0.0] * z, latents_std=[1.0] * z))


def _train(task, ds, steps, lr, cfg: Config, out: Path, desc: str, quiet: bool) -> list[float]:
    from interplay.models.training.trainer import TrainConfig, train

    res = train(task, ds, TrainConfig(steps=steps, lr=lr, betas=(0.9, 0.99), batch_size=cfg.batch_size,
                                      checkpoint_every=0, seed=cfg.seed, warmup=min(50, steps // 5)),
                out, resume=False, desc=desc)
    _log(f"{desc}: {steps} steps, loss {np.mean(res.losses[:10]):.3f} -> {np.mean(res.losses[-10:]):.3f}", quiet)
    return list(res.losses)


def _zeroed(encoder):
    """A copy whose output is exactly zero (the projection and the patch projection's bias zeroed): the
    encoder as it is at init, i.e. the backbone without camera control."""
    z = copy.deepcopy(encoder)
    with torch.no_grad():
        z.final_proj.weight.zero_()
        z.final_proj.bias.zero_()
        z.camera_in.proj.bias.zero_()
    return z


def command_agreement(generated: torch.Tensor, reference: torch.Tensor, rel_eps: float = 1e-5) -> list[float]:
    """Per command: the cosine between what the generated latents of that command have apart from the mean over
    the scene's commands and what the ground-truth latents have apart from theirs (latent frames 1.., frame 0 is
    the shared image). The content every command shares cancels, so what is compared is the commanded camera's
    own effect; a generator that ignores the camera has no such part and scores 0."""
    g = generated[:, :, 1:].double()
    r = reference[:, :, 1:].double()
    dg, dr = (g - g.mean(0, keepdim=True)).flatten(1), (r - r.mean(0, keepdim=True)).flatten(1)
    out = []
    for a, b, scale in zip(dg, dr, g.flatten(1).norm(dim=1)):
        n = a.norm() * b.norm()
        out.append(0.0 if a.norm() <= rel_eps * scale or n == 0 else float(a @ b / n))
    return out


@torch.no_grad()
def evaluate(bb, encoder, clips: dict, cfg: Config, weight: float = 1.0) -> dict:
    """Generate every held-out (scene, command) with the encoder and with it zeroed; per-clip global motion."""
    from interplay.models.backbones import wan
    from interplay.models.control.gamecraft import GameCraftCameraAttachment
    from interplay.models.sampling.wan import sample_wan
    from interplay.models.sandbox.dataset import camera_poses
    from interplay.models.training.gamecraft import batch_plucker

    emb = wan.encode_prompt(bb, [CAPTION])
    zero = _zeroed(encoder)
    rows = []
    scenes = sorted({s for s, _ in clips})
    for si, s in enumerate(scenes):
        group = [clips[(s, k)] for k in COMMANDS]
        frames = torch.stack([torch.from_numpy(c.frames).float() / 255 for c in group])  # [6,F,H,W,3]
        poses = [camera_poses(c.camera, cfg.frames, c.size) for c in group]
        pl = batch_plucker(torch.stack([p[0] for p in poses]), torch.stack([p[1] for p in poses]),
                           cfg.size, cfg.size, translation_scale=cfg.translation_scale)
        noise = torch.randn(wan.latent_shape(bb, cfg.frames, cfg.size, cfg.size, batch=1),
                            generator=torch.Generator().manual_seed(cfg.seed * 7919 + si)).expand(
                                len(group), -1, -1, -1, -1).contiguous()
        out, lat_of = {}, {}
        for name, enc in (("trained", encoder), ("zeroed", zero)):
            att = GameCraftCameraAttachment.from_plucker(enc, pl, weight)
            lat = sample_wan(bb, frames[:, 0], emb, attachments=[att], num_frames=cfg.frames, height=cfg.size,
                             width=cfg.size, steps=cfg.sample_steps, cfg=1.0, scheduler="euler", latents=noise,
                             desc=f"eval {name}")
            lat_of[name] = lat
            out[name] = wan.decode_latents(bb, lat)
        gt = wan.encode_video(bb, frames)
        recon = wan.decode_latents(bb, gt)
        agree = {name: command_agreement(lat_of[name], gt) for name in ("trained", "zeroed")}
        for j, k in enumerate(COMMANDS):
            ref = M.global_motion(frames[j].numpy())
            row = dict(scene_seed=int(s), command=k, reference=ref.tolist())
            for name in ("trained", "zeroed"):
                g = M.global_motion(out[name][j].numpy())
                row[name] = dict(cosine=M.motion_cosine(g, ref), epe=float(np.linalg.norm(g - ref, axis=1).mean()),
                                 motion=g.tolist(), latent_agreement=agree[name][j])
            r = M.global_motion(recon[j].numpy())
            row["vae_roundtrip"] = dict(cosine=M.motion_cosine(r, ref), epe=float(np.linalg.norm(r - ref, axis=1).mean()))
            rows.append(row)
    summary = {}
    for name in ("trained", "zeroed", "vae_roundtrip"):
        summary[name] = dict(cosine=float(np.mean([r[name]["cosine"] for r in rows])),
                             epe_px=float(np.mean([r[name]["epe"] for r in rows])))
        if name != "vae_roundtrip":
            summary[name]["latent_agreement"] = float(np.mean([r[name]["latent_agreement"] for r in rows]))
    # trained minus zeroed per clip (same scene, command and noise), with its standard error over the clips
    summary["paired"] = {}
    for key in ("cosine", "epe", "latent_agreement"):
        d = np.array([r["trained"][key] - r["zeroed"][key] for r in rows], dtype=np.float64)
        se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
        summary["paired"][key] = dict(mean=float(d.mean()), se=se, clips=len(d))
    return dict(summary=summary, clips=rows)


def run(cfg: Config, out: Path, quiet: bool = False) -> dict:
    """The whole experiment; writes ``out/results.json`` and returns it."""
    from interplay.models.backbones import wan
    from interplay.models.sandbox import cli
    from interplay.models.sandbox.dataset import SandboxDataset
    from interplay.models.training.config import build_task
    from interplay.models.training.wan import EncodedDataset, WanBackboneTask

    torch.set_num_threads(int(cfg.threads))
    t0 = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train_seeds = {cli.clip_seed(cfg.train_seed, i) for i in range(cfg.n_train)}
    test_seeds = {cli.clip_seed(cfg.test_seed, i) for i in range(cfg.n_test)}
    if train_seeds & test_seeds:
        raise ValueError(f"held-out scene seeds overlap the training ones: {sorted(train_seeds & test_seeds)}")
    data = out / "train_clips"
    cli.make(data, "camera", n=cfg.n_train, size=(cfg.size, cfg.size), frames=cfg.frames, seed=cfg.train_seed,
             fps=cfg.fps, progress=False)
    clips = held_out_clips(cfg)
    _log(f"data: {cfg.n_train} training clips, {cfg.n_test} held-out scenes x {len(COMMANDS)} commands", quiet)

    bb = tiny_backbone(cfg)
    bb = fit_codec(bb, data, quiet)
    ds = EncodedDataset(SandboxDataset(data), bb)
    bb_losses = {}
    for expert in ("high_noise", "low_noise"):
        task = WanBackboneTask(bb, expert=expert, caption=CAPTION)
        bb_losses[expert] = _train(task, ds, cfg.backbone_steps, cfg.backbone_lr, cfg, out / f"backbone_{expert}",
                                   f"backbone {expert}", quiet)
        task.eval()
        task.model.requires_grad_(False)
    cam = build_task("gamecraft_camera", bb, {"caption": CAPTION, "lora_rank": cfg.lora_rank,
                                                "translation_scale": cfg.translation_scale,
                                                "train_experts": cfg.train_experts}, seed=cfg.seed)
    cam_losses = _train(cam, ds, cfg.camera_steps, cfg.camera_lr, cfg, out / "camera", "camera encoder", quiet)
    cam.eval()
    res = evaluate(cam.backbone, cam.output().module, clips, cfg)
    res.update(config=asdict(cfg), train_scene_seeds=sorted(train_seeds), test_scene_seeds=sorted(test_seeds),
               losses=dict(backbone={k: [v[0], float(np.mean(v[-10:]))] for k, v in bb_losses.items()},
                           camera=[cam_losses[0], float(np.mean(cam_losses[-10:]))]),
               seconds=time.time() - t0)
    (out / "results.json").write_text(json.dumps(res, indent=1) + "\n")
    s = res["summary"]
    _log(f"held-out latent agreement: trained {s['trained']['latent_agreement']:.3f}, zeroed "
         f"{s['zeroed']['latent_agreement']:.3f}", quiet)
    _log(f"held-out motion cosine: trained {s['trained']['cosine']:.3f}, zeroed {s['zeroed']['cosine']:.3f} "
         f"(VAE round trip {s['vae_roundtrip']['cosine']:.3f}); end-point error px: trained "
         f"{s['trained']['epe_px']:.2f}, zeroed {s['zeroed']['epe_px']:.2f}; {res['seconds']:.0f} s", quiet)
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output folder (clips, checkpoints, results.json)")
    p.add_argument("--small", action="store_true", help="the test's reduced sizes")
    for f in Config.__dataclass_fields__.values():
        kind = (lambda v: v.lower() in ("1", "true", "yes")) if isinstance(f.default, bool) else type(f.default)
        p.add_argument("--" + f.name.replace("_", "-"), type=kind, default=None)
    a = p.parse_args(argv)
    kw = dict(SMALL) if a.small else {}
    kw.update({k: v for k, v in vars(a).items() if k in Config.__dataclass_fields__ and v is not None})
    run(Config(**kw), Path(a.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
