"""`interplay sandbox ...`: make synthetic datasets and check existing ones.

    interplay sandbox make --preset push --n 1000 --size 64x64 --frames 13 --seed 0 [--fps 8] [--workers 2]
                           [--video png|mp4] [--overwrite] OUT/
    interplay sandbox check ROOT/

Clip i is generated from its own seed (derived from --seed and i), so the dataset is the same bytes whatever
--workers is. Finished clips are kept on a re-run (resume) unless --overwrite.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np

from .presets import PRESETS


def clip_seed(seed: int, index: int) -> int:
    """The scene seed of clip ``index`` in a dataset made with ``seed`` (independent of worker count)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def clip_name(index: int) -> str:
    return f"clip_{index:06d}"


def parse_size(text: str) -> tuple[int, int]:
    """'WxH' (as written on the command line, e.g. 720x480) -> (H, W)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size expects WIDTHxHEIGHT such as 64x64 or 720x480; got {text!r}")
    if not (8 <= w <= 4096 and 8 <= h <= 4096):
        raise argparse.ArgumentTypeError(f"--size must be between 8x8 and 4096x4096; got {text!r}")
    return h, w


def _make_one(job) -> tuple[int, float]:
    from .dataset import write_clip
    from .presets import generate_scene

    out, preset, index, seed, size, frames, fps, video = job
    t = time.perf_counter()
    clip = generate_scene(preset, clip_seed(seed, index), size, frames=frames, fps=fps)
    write_clip(clip, Path(out) / clip_name(index), video=video)
    return index, time.perf_counter() - t


def make(out, preset: str = "push", n: int = 1000, size=(64, 64), frames: int = 13, seed: int = 0,
         fps: float = 8.0, workers: int = 1, video: str = "png", overwrite: bool = False,
         progress: bool = True) -> dict:
    """Write ``n`` clips into ``out`` and an index dataset.json; returns the index dict."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    todo = [i for i in range(n) if overwrite or not (out / clip_name(i) / "clip.json").exists()]
    jobs = [(str(out), preset, i, seed, tuple(size), frames, fps, video) for i in todo]
    bar = _bar(len(jobs), f"sandbox {preset}", progress)
    t0 = time.perf_counter()
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            _make_one(job)
            bar.update(1)
    else:
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        with ctx.Pool(workers) as pool:
            for _ in pool.imap_unordered(_make_one, jobs, chunksize=max(1, min(16, len(jobs) // (4 * workers)))):
                bar.update(1)
    bar.close()
    elapsed = time.perf_counter() - t0
    index = dict(format="interplay-sandbox", version=1, preset=preset, n=n, height=size[0], width=size[1],
                 frames=frames, fps=fps, seed=seed, video=video, clips=[clip_name(i) for i in range(n)])
    (out / "dataset.json").write_text(json.dumps(index, indent=1) + "\n")
    return dict(index, written=len(jobs), seconds=elapsed)


class _NoBar:
    def update(self, n=1):
        pass

    def close(self):
        pass


def _bar(total: int, desc: str, enabled: bool):
    if not enabled:
        return _NoBar()
    try:
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit="clip", file=sys.stderr)
    except ImportError:  # pragma: no cover - tqdm ships with the venv
        return _NoBar()


def check(root) -> int:
    """Read every clip; print the malformed ones by file name. Exit code 1 if any."""
    from .dataset import ClipError, list_clips, read_clip

    bad = 0
    clips = list_clips(root)
    for p in clips:
        try:
            read_clip(p)
        except (ClipError, OSError, ValueError) as ex:
            bad += 1
            print(f"malformed: {ex}", file=sys.stderr)
    print(f"{len(clips) - bad} good, {bad} malformed clips in {root}")
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="interplay sandbox", description="synthetic interaction datasets")
    sub = ap.add_subparsers(dest="cmd", required=True)
    mk = sub.add_parser("make", help="generate a dataset folder")
    mk.add_argument("out", help="output folder (one sub-folder per clip)")
    mk.add_argument("--preset", choices=PRESETS, default="push")
    mk.add_argument("--n", type=int, default=1000, help="number of clips")
    mk.add_argument("--size", type=parse_size, default=(64, 64), help="WIDTHxHEIGHT, e.g. 64x64 or 720x480")
    mk.add_argument("--frames", type=int, default=13)
    mk.add_argument("--fps", type=float, default=8.0)
    mk.add_argument("--seed", type=int, default=0)
    mk.add_argument("--workers", type=int, default=max(1, min(os.cpu_count() or 1, 8)),
                    help="processes; the output does not depend on it")
    mk.add_argument("--video", choices=("png", "mp4"), default="png")
    mk.add_argument("--overwrite", action="store_true", help="regenerate clips that already exist")
    mk.add_argument("--quiet", action="store_true", help="no progress bar")
    ck = sub.add_parser("check", help="report malformed clips in a dataset folder")
    ck.add_argument("root")
    a = ap.parse_args(argv)
    if a.cmd == "check":
        return check(a.root)
    if a.n < 1 or a.frames < 1 or a.fps <= 0 or a.workers < 1:
        ap.error("--n, --frames, --workers must be >= 1 and --fps > 0")
    r = make(a.out, a.preset, a.n, a.size, a.frames, a.seed, a.fps, a.workers, a.video, a.overwrite,
             progress=not a.quiet)
    print(f"wrote {r['written']} clips ({a.n} in {a.out}) in {r['seconds']:.1f} s")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
