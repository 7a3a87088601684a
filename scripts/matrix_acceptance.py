#!/usr/bin/env python
"""MATRIX acceptance run: a short LoRA training with SGA/SPA against the same training without them (lambdas 0),
scored by AAS on held-out sandbox `multi` scenes.

    python scripts/matrix_acceptance.py --train DIR --heldout DIR [--model models/demo/cogvideox_push] \
        [--steps 200] [--v2t 1,3] [--v2v 2] [--json out.json]

Both runs share everything else (data order, noise, LoRA init, the widened projection, decoders), so the only
difference is the alignment losses. AAS (softmax maps, heads averaged; the analysis of control/matrix_analysis.py)
is the mean over held-out clips and timesteps: the v2t variants at the v2t layers, the v2v variants at the v2v layers.
The tests run a smaller version of :func:`compare`.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


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


def compare(train_dir, heldout_dir, *, model=None, bb=None, v2t=(1, 3), v2v=(2,), steps: int = 200,
            lr: float = 1e-3, rank: int = 16, lambda_sga: float = 1.0, lambda_spa: float = 1.0,
            decoder_lr_scale: float = 1.0, max_text_length: int = 32, timesteps=(700, 500, 300), seed: int = 0,
            out_dir=None, heldout_videos: int | None = None, before: bool = True, log=print) -> dict:
    """Train twice (with / without SGA+SPA) and score both on the held-out clips; returns the numbers."""
    import tempfile

    import torch

    from interplay.models.backbones import cogvideox as cvx
    from interplay.models.control import matrix_analysis as MA
    from interplay.models.sandbox.dataset import SandboxDataset
    from interplay.models.training.matrix import MatrixTask, load_matrix
    from interplay.models.training.trainer import TrainConfig, train

    if bb is None:
        bb = cvx.load_cogvideox(model or ROOT / "models" / "demo" / "cogvideox_push", dtype=torch.float32,
                                device="cpu")
    ds = SandboxDataset(train_dir)
    held = MA.videos_from_dataset(heldout_dir, max_videos=heldout_videos)
    out_root = Path(out_dir or tempfile.mkdtemp(prefix="matrix_acceptance_"))
    report = {"train_clips": len(ds), "heldout": [v.name for v in held],
              "heldout_seeds": [json.loads((Path(heldout_dir) / v.name / "clip.json").read_text())["seed"]
                                for v in held],
              "settings": dict(v2t=list(v2t), v2v=list(v2v), steps=steps, lr=lr, rank=rank, lambda_sga=lambda_sga,
                               lambda_spa=lambda_spa, decoder_lr_scale=decoder_lr_scale,
                               max_text_length=max_text_length, timesteps=list(timesteps), seed=seed)}
    t0 = time.time()
    if before:  # the backbone before training, for scale
        report["before"] = _scores(bb, held, v2t, v2v, timesteps, max_text_length)
    for name, (ls, lp) in (("with", (lambda_sga, lambda_spa)), ("without", (0.0, 0.0))):
        torch.manual_seed(seed)  # the same decoder init in both runs
        task = MatrixTask(bb, preset="paper", v2t_layers=v2t, v2v_layers=v2v, lora_rank=rank, lora_alpha=rank,
                          lambda_sga=ls, lambda_spa=lp, decoder_lr_scale=decoder_lr_scale,
                          max_text_length=max_text_length)
        res = train(task, ds, TrainConfig(steps=steps, lr=lr, seed=seed, checkpoint_every=0), out_root / name,
                    resume=False, desc=f"MATRIX {name} SGA/SPA")
        model_bb = load_matrix(bb, res.checkpoint)
        report[name] = _scores(model_bb, held, v2t, v2v, timesteps, max_text_length)
        report[name]["final_loss"] = res.losses[-1]
        log(f"{name}: {report[name]} ({time.time() - t0:.0f} s)")
    report["seconds"] = time.time() - t0
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train", required=True, help="sandbox-format training clips (e.g. multi preset, seed 0)")
    p.add_argument("--heldout", required=True, help="held-out clips (another dataset seed)")
    p.add_argument("--model", help="CogVideoX diffusers folder (default: the embedded demo model)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--lambda-sga", type=float, default=1.0)
    p.add_argument("--lambda-spa", type=float, default=1.0)
    p.add_argument("--decoder-lr-scale", type=float, default=1.0)
    p.add_argument("--v2t", default="1,3")
    p.add_argument("--v2v", default="2")
    p.add_argument("--heldout-videos", type=int)
    p.add_argument("--out", help="run folders (default: a temporary folder)")
    p.add_argument("--json", help="write the numbers here")
    a = p.parse_args(argv)
    ints = lambda s: tuple(int(x) for x in s.split(",") if x)  # noqa: E731
    rep = compare(a.train, a.heldout, model=a.model, v2t=ints(a.v2t), v2v=ints(a.v2v), steps=a.steps, lr=a.lr,
                  rank=a.rank, lambda_sga=a.lambda_sga, lambda_spa=a.lambda_spa,
                  decoder_lr_scale=a.decoder_lr_scale, out_dir=a.out, heldout_videos=a.heldout_videos)
    text = json.dumps(rep, indent=1)
    print(text)
    if a.json:
        Path(a.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
