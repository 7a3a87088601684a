#!/usr/bin/env python
"""MATRIX acceptance run: a short LoRA training with SGA/SPA against the same training without them (lambdas 0),
scored by AAS on held-out sandbox `multi` scenes, over one or more training seeds.

    python scripts/matrix_acceptance.py --data DIR [--train-seeds 0-63] [--heldout-seeds 1000-1031] \
        [--seeds 0,1,2] [--steps 200] [--json docs/matrix_acceptance.json]
    python scripts/matrix_acceptance.py --train DIR --heldout DIR [...]   # clips you made yourself

``--data`` writes the `multi` clips (64 x 64, 9 frames, the embedded demo model's size) for the two scene-seed
ranges under DIR/train and DIR/heldout unless they are there; the ranges must not overlap. Each training seed
trains twice from the same starting point (the demo backbone, the same LoRA / projection / decoder init, data order
and noise), so the only difference is the alignment losses. AAS (spec §2.4: softmax maps, heads averaged, raw mass
inside the token-resolution mask track; ``control.matrix_analysis.video_aas``) is the mean over held-out clips and
timesteps: the v2t variants at the v2t layers, the v2v variants at the v2v layers. The report has both runs per
seed, their means over seeds, the differences and the plain backbone's numbers for scale. The tests run a smaller
:func:`compare`.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("noun_v2t", "verb_v2t", "noun_v2v", "verb_v2v")


def _scores(bb, videos, v2t, v2v, timesteps, max_length):
    from interplay.models.control import matrix_analysis as MA

    layers = sorted(set(v2t) | set(v2v))
    per = {v: [] for v in MA.VARIANTS}
    for i, vid in enumerate(videos):
        res = MA.video_aas(bb, vid, layers, timesteps=timesteps, seed=1000 + i, max_length=max_length)
        for var, vals in res.items():
            cols = [layers.index(l) for l in (v2t if var.endswith("v2t") else v2v)]
            if np.isfinite(vals).all():
                per[var].append(float(np.mean(vals[cols])))
    return {var: (float(np.mean(v)) if v else None) for var, v in per.items()} | {
        "n": {var: len(v) for var, v in per.items()}}


def make_data(root, train_seeds, heldout_seeds, *, size=(64, 64), frames: int = 9) -> tuple[Path, Path]:
    """Sandbox `multi` clips for the two scene-seed lists under root/train and root/heldout (kept if present)."""
    from interplay.models.sandbox.dataset import write_clip
    from interplay.models.sandbox.presets import generate_scene

    both = set(train_seeds) & set(heldout_seeds)
    if both:
        raise ValueError(f"matrix_acceptance: scene seeds {sorted(both)[:5]} are in both the training and the "
                         "held-out range; give disjoint ranges")
    root = Path(root)
    for part, seeds in (("train", train_seeds), ("heldout", heldout_seeds)):
        for s in seeds:
            d = root / part / f"clip{s:06d}"
            if not (d / "clip.json").exists():
                write_clip(generate_scene("multi", seed=int(s), size=tuple(size), frames=frames), d)
    return root / "train", root / "heldout"


def _clip_seeds(folder, names):
    return [json.loads((Path(folder) / n / "clip.json").read_text())["seed"] for n in names]


def compare(train_dir, heldout_dir, *, model=None, bb=None, v2t=(1, 3), v2v=(2,), steps: int = 200,
            lr: float = 1e-3, rank: int = 16, lambda_sga: float = 1.0, lambda_spa: float = 1.0,
            decoder_lr_scale: float = 1.0, target_scale: float = 1.0, max_text_length: int = 32,
            timesteps=(700, 500, 300), seeds=(0,),
            out_dir=None, heldout_videos: int | None = None, before: bool = True, log=print) -> dict:
    """Train twice per seed (with / without SGA+SPA) and score every run on the held-out clips; returns the report
    (JSON-able): settings, clip seeds, ``runs`` (per training seed: with, without), ``with`` / ``without`` (means over
    seeds per variant), ``gain`` (with - without, mean and per seed) and ``before`` (the plain backbone)."""
    import tempfile

    import torch

    from interplay.models.backbones import cogvideox as cvx
    from interplay.models.control import matrix_analysis as MA
    from interplay.models.sandbox.dataset import SandboxDataset
    from interplay.models.training.matrix import MatrixTask, load_matrix
    from interplay.models.training.trainer import TrainConfig, train

    model = Path(model or ROOT / "models" / "demo" / "cogvideox_push")
    if bb is None:
        bb = cvx.load_cogvideox(model, dtype=torch.float32, device="cpu")
    ds = SandboxDataset(train_dir)
    held = MA.videos_from_dataset(heldout_dir, max_videos=heldout_videos)
    train_seeds = _clip_seeds(train_dir, [ds[i]["name"] for i in range(len(ds))])
    held_seeds = _clip_seeds(heldout_dir, [v.name for v in held])
    if set(train_seeds) & set(held_seeds):
        raise ValueError("matrix_acceptance: the held-out clips share scene seeds with the training clips")
    out_root = Path(out_dir or tempfile.mkdtemp(prefix="matrix_acceptance_"))
    report = {"model": str(model.relative_to(ROOT)) if model.is_relative_to(ROOT) else model.name,
              "train_clips": len(ds), "train_scene_seeds": train_seeds,
              "heldout": [v.name for v in held], "heldout_scene_seeds": held_seeds,
              "settings": dict(preset="paper", v2t=list(v2t), v2v=list(v2v), steps=steps, lr=lr, rank=rank,
                               alpha=rank, lambda_sga=lambda_sga, lambda_spa=lambda_spa,
                               decoder_lr_scale=decoder_lr_scale, target_scale=target_scale,
                               max_text_length=max_text_length,
                               aas_timesteps=list(timesteps), aas_maps="softmax, heads mean",
                               training_seeds=list(seeds), torch_threads=torch.get_num_threads()),
              "runs": {}}
    t0 = time.time()
    if before:  # the backbone before training, for scale (no ID-map input)
        report["before"] = _scores(bb, held, v2t, v2v, timesteps, max_text_length)
    for seed in seeds:
        runs = {}
        for name, (ls, lp) in (("with", (lambda_sga, lambda_spa)), ("without", (0.0, 0.0))):
            torch.manual_seed(seed)  # the same LoRA / projection / decoder init in both runs
            task = MatrixTask(bb, preset="paper", v2t_layers=v2t, v2v_layers=v2v, lora_rank=rank, lora_alpha=rank,
                              lambda_sga=ls, lambda_spa=lp, decoder_lr_scale=decoder_lr_scale,
                              target_scale=target_scale, max_text_length=max_text_length)
            res = train(task, ds, TrainConfig(steps=steps, lr=lr, seed=seed, checkpoint_every=0),
                        out_root / f"seed{seed}" / name, resume=False, desc=f"MATRIX seed {seed} {name} SGA/SPA")
            runs[name] = _scores(load_matrix(bb, res.checkpoint), held, v2t, v2v, timesteps, max_text_length)
            runs[name]["loss_last10"] = float(np.mean(res.losses[-10:]))  # with: L_DM + lambda (SGA + SPA)
            log(f"seed {seed} {name}: {runs[name]} ({time.time() - t0:.0f} s)")
        report["runs"][str(seed)] = runs
    for name in ("with", "without"):
        report[name] = {v: _mean([r[name][v] for r in report["runs"].values()]) for v in VARIANTS}
    report["gain"] = {v: {"mean": _mean([r["with"][v] - r["without"][v] for r in report["runs"].values()
                                         if r["with"][v] is not None and r["without"][v] is not None]),
                          "per_seed": [None if r["with"][v] is None or r["without"][v] is None
                                       else r["with"][v] - r["without"][v] for r in report["runs"].values()]}
                      for v in VARIANTS}
    report["seconds"] = round(time.time() - t0, 1)
    return report


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return float(np.mean(xs)) if xs else None


def _seed_list(s: str) -> list[int]:
    """'0-3,7' -> [0, 1, 2, 3, 7]."""
    out = []
    for part in s.replace(" ", "").split(","):
        if "-" in part:
            a, b = part.split("-")
            out += list(range(int(a), int(b) + 1))
        elif part:
            out.append(int(part))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="write (or reuse) the multi clips here: DATA/train, DATA/heldout")
    p.add_argument("--train-seeds", default="0-63", help="scene seeds of the training clips (with --data)")
    p.add_argument("--heldout-seeds", default="1000-1031", help="scene seeds of the held-out clips (with --data)")
    p.add_argument("--train", help="sandbox-format training clips (instead of --data)")
    p.add_argument("--heldout", help="held-out clips (instead of --data; other scene seeds)")
    p.add_argument("--model", help="CogVideoX diffusers folder (default: the embedded demo model)")
    p.add_argument("--seeds", default="0", help="training seeds, e.g. 0,1,2 (each trains both runs)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--lambda-sga", type=float, default=1.0)
    p.add_argument("--lambda-spa", type=float, default=1.0)
    p.add_argument("--decoder-lr-scale", type=float, default=1.0)
    p.add_argument("--target-scale", type=float, default=1.0, help="decoder output / targets vs the pixel grid")
    p.add_argument("--v2t", default="1,3")
    p.add_argument("--v2v", default="2")
    p.add_argument("--timesteps", default="700,500,300", help="AAS timesteps")
    p.add_argument("--heldout-videos", type=int)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (float sums depend on it)")
    p.add_argument("--out", help="run folders (default: a temporary folder)")
    p.add_argument("--json", help="write the report here")
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    if a.data:
        train_dir, held_dir = make_data(a.data, _seed_list(a.train_seeds), _seed_list(a.heldout_seeds))
    elif a.train and a.heldout:
        train_dir, held_dir = a.train, a.heldout
    else:
        p.error("give --data DIR, or both --train and --heldout")
    ints = lambda s: tuple(int(x) for x in s.split(",") if x)  # noqa: E731
    rep = compare(train_dir, held_dir, model=a.model, v2t=ints(a.v2t), v2v=ints(a.v2v), steps=a.steps, lr=a.lr,
                  rank=a.rank, lambda_sga=a.lambda_sga, lambda_spa=a.lambda_spa,
                  decoder_lr_scale=a.decoder_lr_scale, target_scale=a.target_scale, timesteps=ints(a.timesteps),
                  seeds=_seed_list(a.seeds),
                  out_dir=a.out, heldout_videos=a.heldout_videos)
    rep["command"] = "python scripts/matrix_acceptance.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = json.dumps(rep, indent=1)
    print(text)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
