"""Score generated videos against sandbox reference clips: `interplay eval GENERATED REFERENCE [--out report.json]`.

REFERENCE holds clip folders in sandbox format (read by models/sandbox/dataset.py read_clip: frames, masks
[N,F,H,W], `driven` object indices). GENERATED holds, for each reference clip <name>, one of <name>.mp4,
<name>.webm, <name>.webp, <name>.gif, or a folder <name>/ (sandbox format, or PNG frames).

Per clip and per scored object (the driven ones by default): tracked-object IoU over frames 1..N (the reference
mask is the clip's; the generated one is the frame-0 mask tracked into the generated video, models.metrics
track_object), direction error in degrees and end-point error in px of the centroid (frame 0 -> last), motion
fidelity (InterDyn); per clip PSNR and SSIM over frames 1..N. Summary: mean and median over clips (NaN skipped)."""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

from .. import metrics as M
from .. import runtime
from .. import video_io as vio

GENERATED_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".webp", ".gif")
METRICS = ("iou", "direction_error_deg", "endpoint_error_px", "motion_fidelity", "psnr", "ssim")


# ---------------------------------------------------------------------------- reading
def _is_clip_folder(p: Path) -> bool:
    return p.is_dir() and any(p.glob("*.json")) and any(p.glob("*.npz"))


def _fallback_read_clip(folder: Path) -> dict:
    """Minimal reader of the contract's clip layout (frames as mp4 or PNGs, a JSON sidecar with `driven`, an npz
    with `masks` [N,F,H,W]), used only while models/sandbox/dataset.py is absent."""
    meta_files = sorted(folder.glob("*.json"))
    meta = json.loads(meta_files[0].read_text())
    with np.load(sorted(folder.glob("*.npz"))[0], allow_pickle=False) as z:
        masks = z["masks"].astype(bool)
    videos = sorted(f for f in folder.iterdir() if f.suffix.lower() in vio.VIDEO_EXTENSIONS)
    if videos:
        frames, fps = vio.load_video(videos[0])
    else:
        sub = folder / "frames"
        frames, fps = vio.load_image_sequence(sub if sub.is_dir() else folder, "*.png",
                                              fps=float(meta.get("fps", vio.DEFAULT_SEQUENCE_FPS)))
    return {"frames": vio.to_uint8(frames), "masks": masks, "driven": list(meta.get("driven", [])),
            "fps": float(meta.get("fps", fps))}


def read_reference(folder) -> dict:
    """A sandbox clip folder -> dict(frames uint8 [F,H,W,3], masks bool [N,F,H,W], driven list[int], fps)."""
    folder = Path(folder)
    try:
        from .dataset import read_clip
    except ImportError:
        read_clip = None
    if read_clip is None:
        return _fallback_read_clip(folder)
    clip = read_clip(folder)
    return {"frames": np.asarray(clip.frames), "masks": np.asarray(clip.masks).astype(bool),
            "driven": list(clip.driven), "fps": float(clip.fps)}


def find_generated(generated_dir, name: str) -> Path | None:
    """The generated video for reference clip `name`: <dir>/<name>.<video suffix> or a folder <dir>/<name>/."""
    d = Path(generated_dir)
    for suf in GENERATED_SUFFIXES:
        if (d / f"{name}{suf}").is_file():
            return d / f"{name}{suf}"
    return d / name if (d / name).is_dir() else None


def read_generated(path) -> np.ndarray:
    """A generated video file or folder (sandbox format or PNG frames) -> frames float [F,H,W,3] 0..1."""
    p = Path(path)
    if _is_clip_folder(p):
        return read_reference(p)["frames"].astype(np.float64) / 255.0
    frames, _ = vio.load_video(p, pattern="*.png") if p.is_dir() else vio.load_video(p)
    return frames.numpy().astype(np.float64)


# ---------------------------------------------------------------------------- scoring
def _match(gen: np.ndarray, ref_frames: np.ndarray) -> tuple[np.ndarray, dict]:
    """Trim to the shorter clip and resize the generated frames to the reference size; notes what was done."""
    notes = {}
    f = min(len(gen), len(ref_frames))
    if len(gen) != len(ref_frames):
        notes["frames_compared"] = f
        notes["frames_generated"], notes["frames_reference"] = len(gen), len(ref_frames)
    gen = gen[:f]
    h, w = ref_frames.shape[1:3]
    if gen.shape[1:3] != (h, w):
        notes["resized_from"] = list(gen.shape[1:3])
        gen = vio.resize_frames(torch.from_numpy(gen).float(), h, w).numpy().astype(np.float64)
    return gen, notes


def evaluate_clip(generated, reference: dict, *, driven_only: bool = True, tracker: M.Tracker | None = None,
                  method: str = "match", refine: str = "none", skip_first: bool = True,
                  mf_points: int = M.MF_POINTS) -> dict:
    """Score generated frames [F,H,W,3] 0..1 against one reference clip (read_reference's dict). Object metrics
    are averaged over the scored objects; the per-object values are kept under 'objects'. skip_first leaves the
    shared conditioning frame 0 out of IoU, PSNR and SSIM (as InterDyn reports). mf_points: motion-fidelity
    query points (InterDyn: 100; an object with fewer mask pixels gets NaN, so small sandbox clips may want
    fewer)."""
    ref = np.asarray(reference["frames"])
    ref = ref.astype(np.float64) / 255.0 if ref.dtype == np.uint8 else ref.astype(np.float64)
    gen, notes = _match(np.asarray(generated, np.float64), ref)
    F = len(gen)
    ref, masks = ref[:F], np.asarray(reference["masks"], bool)[:, :F]
    ids = list(reference.get("driven", [])) if driven_only else list(range(masks.shape[0]))
    ids = [i for i in ids if 0 <= i < masks.shape[0] and masks[i, 0].any()]
    skip = skip_first and F > 1  # InterDyn excludes the conditioning frame 0
    tracker = tracker or M.default_tracker()
    objects = []
    for i in ids:
        gmasks, _ = M.track_object(gen, masks[i, 0], tracker=tracker, method=method, refine=refine)
        objects.append({
            "object": int(i),
            "iou": float(M.mask_iou(gmasks, masks[i])[int(skip):].mean()),
            "direction_error_deg": M.centroid_direction_error(gmasks, masks[i]),
            "endpoint_error_px": M.endpoint_error(gmasks, masks[i]),
            "motion_fidelity": M.motion_fidelity(gen, ref, masks[i, 0], tracker=tracker, n_points=mf_points),
        })
    out = {k: _nanmean([o[k] for o in objects]) for k in METRICS[:4]}
    out["psnr"] = M.psnr(gen, ref, skip_first=skip)
    out["ssim"] = M.ssim(gen, ref, skip_first=skip) if min(ref.shape[1:3]) >= 11 else float("nan")
    out["objects"] = objects
    out.update(notes)
    return out


def _nanmean(v) -> float:
    v = [x for x in v if x is not None and not math.isnan(x)]
    return float(np.mean(v)) if v else float("nan")


def _summary(clips: dict) -> dict:
    s = {}
    for k in METRICS:
        v = [c[k] for c in clips.values() if k in c and not math.isnan(c[k])]
        s[k] = {"mean": float(np.mean(v)) if v else float("nan"),
                "median": float(np.median(v)) if v else float("nan"), "n": len(v)}
    return s


def evaluate_folder(generated_dir, reference_dir, *, driven_only: bool = True, tracker: M.Tracker | None = None,
                    method: str = "match", refine: str = "none", mf_points: int = M.MF_POINTS) -> dict:
    """Score every reference clip folder of reference_dir that has a generated video in generated_dir.
    Returns {"v": 1, "generated", "reference", "options", "clips": {name: metrics}, "missing": [names],
    "errors": {name: message}, "summary": {metric: {mean, median, n}}}. A clip that cannot be read is reported
    under "errors" by name and skipped."""
    gdir, rdir = Path(generated_dir), Path(reference_dir)
    for d, what in ((gdir, "generated"), (rdir, "reference")):
        if not d.is_dir():
            raise FileNotFoundError(f"interplay eval: {what} folder not found: {d} (searched {d.resolve()})")
    refs = sorted((p for p in rdir.iterdir() if _is_clip_folder(p)), key=lambda p: vio.natural_key(p.name))
    if not refs:
        raise FileNotFoundError(f"interplay eval: no sandbox clip folders (a .json and an .npz inside) in {rdir}")
    clips, missing, errors = {}, [], {}
    bar = runtime.progress(len(refs), desc="eval")
    for n, r in enumerate(refs):
        g = find_generated(gdir, r.name)
        if g is None:
            missing.append(r.name)
        else:
            try:
                clips[r.name] = evaluate_clip(read_generated(g), read_reference(r), driven_only=driven_only,
                                              tracker=tracker, method=method, refine=refine,
                                              mf_points=mf_points)
                clips[r.name]["generated_file"] = g.name
            except (ValueError, OSError, KeyError) as ex:
                errors[r.name] = f"{type(ex).__name__}: {ex}"
        bar.update(1, text=r.name)
    bar.close()
    return {"v": 1, "generated": str(gdir), "reference": str(rdir),
            "options": {"driven_only": driven_only, "method": method, "refine": refine, "mf_points": mf_points,
                        "frames": "iou/psnr/ssim over 1..N"},
            "clips": clips, "missing": missing, "errors": errors, "summary": _summary(clips)}


# ---------------------------------------------------------------------------- report / CLI
def to_json(report: dict) -> str:
    """JSON with NaN written as null (strict JSON readers reject NaN)."""
    def clean(x):
        if isinstance(x, float):
            return None if math.isnan(x) or math.isinf(x) else x
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        if isinstance(x, (np.floating, np.integer)):
            return clean(x.item())
        return x
    return json.dumps(clean(report), indent=2)


def summary_table(report: dict) -> str:
    cols = ("iou", "direction_error_deg", "endpoint_error_px", "motion_fidelity", "psnr", "ssim")
    heads = ("IoU", "dir err deg", "EPE px", "MF", "PSNR", "SSIM")
    fmt = lambda v: "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"
    rows = [("clip",) + heads]
    for name, c in report["clips"].items():
        rows.append((name,) + tuple(fmt(c.get(k)) for k in cols))
    for stat in ("mean", "median"):
        rows.append((stat,) + tuple(fmt(report["summary"][k][stat]) for k in cols))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(x.ljust(w) if i == 0 else x.rjust(w) for i, (x, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines.insert(len(lines) - 2, "-" * len(lines[0]))
    if report["missing"]:
        lines.append(f"no generated video for {len(report['missing'])} clip(s): {', '.join(report['missing'][:10])}")
    for name, msg in report["errors"].items():
        lines.append(f"error in {name}: {msg}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="interplay eval", description=__doc__.split("\n\n")[0])
    ap.add_argument("generated", help="folder of generated videos named like the reference clips")
    ap.add_argument("reference", help="folder of sandbox clip folders")
    ap.add_argument("--out", help="write the JSON report here")
    ap.add_argument("--all-objects", action="store_true", help="score every object, not only the driven ones")
    ap.add_argument("--refine", choices=("none", "colour"), default="none",
                    help="refine tracked masks by colour similarity to the frame-0 object")
    ap.add_argument("--method", choices=M.TRACK_METHODS, default="match",
                    help="find the object by frame-0 appearance matching (default) or by LK points alone")
    ap.add_argument("--mf-points", type=int, default=M.MF_POINTS,
                    help="motion-fidelity query points (InterDyn: 100; objects with fewer mask pixels are skipped)")
    a = ap.parse_args(argv)
    try:
        report = evaluate_folder(a.generated, a.reference, driven_only=not a.all_objects, method=a.method,
                                 refine=a.refine, mf_points=a.mf_points)
    except FileNotFoundError as ex:
        print(f"error: {ex}", file=sys.stderr)
        return 2
    print(summary_table(report))
    if a.out:
        out = Path(a.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(to_json(report))
        print(f"report written to {out}")
    return 0 if report["clips"] else 1
