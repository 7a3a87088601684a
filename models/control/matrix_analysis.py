"""MATRIX layer analysis (spec seed-004 §2.5): which attention layers ground instances and verbs (v2t) and propagate
first-frame instances (v2v), from a set of videos with mask tracks.

For each video the backbone reconstructs its own clip: the clip's latents are noised at the chosen timesteps (CPU
seeded noise) and denoised once with a :class:`~.matrix_capture.MatrixCapture` on every chosen layer (softmax maps,
heads averaged, the prompt's conditional pass); each map's AAS against its mask track at token resolution is
averaged over the timesteps (the paper records maps while the model regenerates its own video; the one-step
reconstruction of a known clip is that with the clip as the perfect reconstruction). Four variants:

- ``noun_v2t``: mean over the prompt's instances of AAS(A^v2t_id<k>, M_k)
- ``verb_v2t``: mean over its interactions of AAS(A^v2t_verb<k>><j>, M_k | M_j)
- ``noun_v2v``: mean over instances of AAS(A^v2v_id<k>, M_k) (queries: the first-frame mask of k)
- ``verb_v2v``: mean over interactions of AAS(A^v2v_verb<k>><j>, M_k | M_j) (queries: both first-frame masks)

Each variant's [videos x layers] table goes to ``matrix.rank_layers`` (top-k frequency + magnitude rank sum ->
influential layers; with success labels, the success / failure separation -> dominant layers). A video without a
map of some variant (no interaction in its prompt, an instance too small for the token grid) is left out of that
variant.

CLI: ``interplay matrix analyse --data DIR (--model DIR | --random tiny) [...]`` prints a table and writes JSON.
"""
from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from . import matrix as M
from . import matrix_capture as C

VARIANTS = ("noun_v2t", "verb_v2t", "noun_v2v", "verb_v2v")
DEFAULT_TIMESTEPS = (900, 700, 500, 300, 100)


@dataclass
class Video:
    """One analysed clip: frames float [F, H, W, 3] 0..1, ID tracks bool [K, F, H, W], the marked-up prompt."""
    name: str
    frames: torch.Tensor
    tracks: torch.Tensor
    prompt: str
    meta: dict = field(default_factory=dict)


def videos_from_dataset(root, *, frames: int | None = None, size=None, max_videos: int | None = None,
                        markup: str = "paper_spans", objects: str = "auto", interactions_only: bool = True
                        ) -> list[Video]:
    """Sandbox-format clips -> :class:`Video` (prompt markup as the MATRIX trainer makes it)."""
    from ..sandbox.dataset import SandboxDataset
    from ..training.matrix import clip_prompt

    ds = SandboxDataset(root, frames=frames, size=size)
    out = []
    for i in range(len(ds) if max_videos is None else min(len(ds), int(max_videos))):
        it = ds[i]
        text, sel = clip_prompt(it["caption"], it["objects"], it["driven"].tolist(), it["events"], markup=markup,
                                select=objects, interactions_only=interactions_only, num_masks=it["masks"].shape[0],
                                where=f"MATRIX analysis ({it['name']})")
        m = it["masks"] >= 0.5
        out.append(Video(it["name"], it["frames"], m[sel] if sel else m[:0], text))
    return out


def _noised(bb, x0: torch.Tensor, t: int, generator: torch.Generator) -> torch.Tensor:
    from ..training.cogvideox import alphas_cumprod

    a = float(alphas_cumprod(bb)[int(t)])
    n = torch.randn(x0.shape, generator=generator, dtype=torch.float32).to(x0.device)
    return math.sqrt(a) * x0.float() + math.sqrt(1 - a) * n


def video_aas(bb, video: Video, layers: Sequence[int], *, timesteps: Sequence[int] = DEFAULT_TIMESTEPS,
              seed: int = 0, mode: str = "softmax", head_reduce: str = "mean", chunk: int = 1024,
              attachments: Sequence = (), palette=None, max_length: int | None = None,
              where: str = "MATRIX analysis") -> dict:
    """{variant: float64 [len(layers)] (NaN when the video has no map of that variant)} for one video, averaged
    over ``timesteps``. ``attachments`` run before the capture (a MATRIX model's controls, a test's plant).
    ``max_length``: prompt tokens (default the transformer's ``max_text_seq_length``, as the samplers encode)."""
    from ..backbones import cogvideox as cvx
    from ..conditions import id_map as I
    from ..conditions import matrix_prompt as P

    if bb.family not in ("cogvideox", "wan"):
        raise ValueError(f"{where}: the layer analysis runs on CogVideoX or Wan; this backbone is {bb.family}")
    is_wan = bb.family == "wan"
    frames = video.frames.float()
    fr, h, w = frames.shape[:3]
    (_wan_check_frames if is_wan else cvx.check_frames)(bb, fr, h, w, node=where)
    rows = P.embedding_rows(bb.text_encoder) if bb.text_encoder is not None else None
    if is_wan:
        length = WAN_TEXT_LENGTH  # Wan's text is always 512 tokens
    else:
        length = int(max_length or getattr(bb.denoiser.config, "max_text_seq_length", 226) or 226)
    mp, toks, tok = P.prepare(video.prompt, bb.tokenizer, max_length=length, rows=rows, where=where)
    tracks = torch.as_tensor(video.tracks).bool()
    targets = C.MapTargets.from_prompt(toks, tracks[:, 0] if tracks.shape[0] else None)
    v2t, v2v = C.layer_names(bb, layers, "v2t"), C.layer_names(bb, layers, "v2v")
    stride = C.token_stride(bb)
    temporal = int(bb.extra.get("vae_scale_factor_temporal", 4))
    gen = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        m0 = tracks[:, :1] if tracks.shape[0] else torch.zeros(0, 1, h, w, dtype=torch.bool)
        idm = I.build_id_map(m0, palette, where=where) if bb.layout.has("id_map") else None
        forward = (_wan_reconstruction if is_wan else _cogvideox_reconstruction)(bb, frames, mp.text, tok, length,
                                                                                 idm)
        sums = {v: np.zeros(len(layers)) for v in VARIANTS}
        counts = {v: 0 for v in VARIANTS}
        lat = None
        for t in timesteps:
            cap = C.MatrixCapture(v2t, v2v, targets, mode=mode, head_reduce=head_reduce, chunk=chunk, row="all",
                                  stride=stride)
            forward(int(t), gen, list(attachments) + [cap])
            if lat is None:
                lat = C.track_grid(tracks, cap.grid, stride, temporal) if tracks.shape[0] else None
            step = _variants(cap, v2t, v2v, lat)
            for var, vals in step.items():
                if vals is not None:
                    sums[var] += vals
                    counts[var] += 1
    return {v: (sums[v] / counts[v]) if counts[v] else np.full(len(layers), np.nan) for v in VARIANTS}


WAN_TEXT_LENGTH = 512


def _wan_check_frames(bb, fr, h, w, node):
    from ..backbones import wan

    wan.check_frames(bb, fr, h, w, node=node)


def _cogvideox_reconstruction(bb, frames, text, tok, length, idm):
    """forward(t, generator, attachments): the clip's latents noised to t (DDPM, a seeded CPU draw), one forward."""
    from ..backbones import cogvideox as cvx

    emb = cvx.encode_prompt(bb.replace(tokenizer=tok), [text], length)
    x0 = cvx.encode_frames(bb, frames[None])
    parts = {"image": cvx.image_condition(bb, frames[:1], x0.shape[1])}
    if idm is not None:
        parts["id_map"] = cvx.image_condition(bb, idm.image, x0.shape[1])

    def forward(t, gen, atts):
        x_t = _noised(bb, x0, t, gen).to(bb.device, bb.dtype)
        latent_in = bb.layout.assemble({"noise": x_t, **parts}, dim=2)
        cvx.forward(bb, latent_in, torch.tensor([int(t)], device=bb.device), emb, attachments=atts)
    return forward


def _wan_reconstruction(bb, frames, text, tok, length, idm):
    """forward(t, generator, attachments): flow matching, x_t = (1 - s) x0 + s n with s = t / 1000 (a seeded CPU
    draw), the input the Wan sampler builds (I2V condition, the ID map as a widened model's part), the expert t
    selects; one forward."""
    from ..backbones import wan
    from ..sampling import flow
    from ..sampling import wan as WS

    fr, h, w = frames.shape[:3]
    emb = wan.encode_prompt(bb.replace(tokenizer=tok), [text])
    x0 = wan.encode_video(bb, frames[None]).float()
    conds = WS.prepare_conds(bb, frames[:1], emb, None, fr, h, w, rows=("cond",))
    if idm is not None:
        plain = bb.replace(extra={**bb.extra, "clip": False})
        conds.parts["id_map"] = wan.i2v_condition(plain, idm.image.float(), fr, h, w).condition
    ntt = bb.extra.get("num_train_timesteps", 1000)

    def forward(t, gen, atts):
        s = float(t) / ntt
        n = torch.randn(x0.shape, generator=gen, dtype=torch.float32).to(x0.device)
        x_t = (1 - s) * x0 + s * n
        expert = flow.expert_for_timestep(float(t), bb.extra.get("boundary"), ntt) if bb.experts else None
        wan.forward(bb, WS.model_input(bb, x_t, conds).to(bb.dtype), torch.tensor([float(t)], device=bb.device),
                    conds.text["cond"], image_embeds=conds.image_embeds, attachments=atts, expert=expert)
    return forward


def _variants(cap: C.MatrixCapture, v2t: list, v2v: list, lat) -> dict:
    out = {}
    for var in VARIANTS:
        noun = var.startswith("noun")
        kind = var[-3:]
        layers = v2t if kind == "v2t" else v2v
        names = sorted({k[2] for k in cap.acc.keys() if k[1] == kind and (k[2].startswith("id") == noun)
                        and not k[2].startswith("word:")})
        if lat is None or not names:
            out[var] = None
            continue
        vals = np.zeros(len(layers))
        for name in names:
            ids = C.target_ids(name)
            tgt = lat[ids[0] - 1]
            for i in ids[1:]:
                tgt = tgt | lat[i - 1]
            for j, layer in enumerate(layers):
                vals[j] += float(M.aas(cap.acc.mean((layer, kind, name, 0)), tgt))
        out[var] = vals / len(names)
    return out


def analyse(bb, videos: Sequence[Video], layers: Sequence[int] | None = None, *,
            timesteps: Sequence[int] = DEFAULT_TIMESTEPS, seed: int = 0, success: dict | None = None,
            top_k: int = 10, n_influential: int = 10, mode: str = "softmax", head_reduce: str = "mean",
            chunk: int = 1024, attachments: Callable | None = None, max_length: int | None = None,
            progress: bool = True) -> dict:
    """The report (JSON-able): {"v": 1, "layers", "timesteps", "videos", "variants": {variant: rank_layers(...)
    .as_dict() + "aas" (the [videos x layers] table) + "videos" (the rows)}}. ``success``: {video name: bool}
    for the dominant-layer statistics. ``attachments(i, video) -> list`` adds attachments per video."""
    from .. import runtime

    if not videos:
        raise ValueError("MATRIX analysis: no videos to analyse")
    layers = list(range(C.num_layers(bb))) if layers is None else [int(i) for i in layers]
    tables = {v: [] for v in VARIANTS}
    names = {v: [] for v in VARIANTS}
    bar = runtime.progress(len(videos), "MATRIX analysis") if progress else None
    for i, vid in enumerate(videos):
        res = video_aas(bb, vid, layers, timesteps=timesteps, seed=seed + i, mode=mode, head_reduce=head_reduce,
                        chunk=chunk, attachments=attachments(i, vid) if attachments else (), max_length=max_length)
        for var, vals in res.items():
            if np.isfinite(vals).all():
                tables[var].append(vals)
                names[var].append(vid.name)
        if bar is not None:
            bar.update(1, text=f"{vid.name}")
    if bar is not None:
        bar.close()
    report = {"v": 1, "layers": layers, "timesteps": [int(t) for t in timesteps], "videos": [v.name for v in videos],
              "mode": mode, "head_reduce": head_reduce, "variants": {}}
    for var in VARIANTS:
        if not tables[var]:
            report["variants"][var] = {"videos": [], "skipped": "no video has a map of this variant"}
            continue
        table = np.stack(tables[var])
        lab = None
        if success:
            lab = [bool(success.get(n, False)) for n in names[var]]
            if all(lab) or not any(lab):
                lab = None  # both outcomes are needed for the separation
        r = M.rank_layers(table, lab, top_k=top_k, n_influential=n_influential, layer_ids=layers)
        report["variants"][var] = {**r.as_dict(), "videos": names[var], "aas": table.tolist()}
    return report


def table_text(report: dict, rows: int = 10) -> str:
    """A plain-text table per variant: the influential layers, best first, with their statistics."""
    lines = []
    for var, r in report["variants"].items():
        if "influential" not in r:
            lines.append(f"{var}: {r.get('skipped', 'no data')}")
            continue
        lines.append(f"{var} ({len(r['videos'])} videos; top-{r['top_k']} frequency + magnitude rank sum)")
        head = f"  {'layer':>5}  {'freq':>4}  {'magnitude':>10}  {'rank_sum':>8}"
        has_sep = bool(r.get("by_separation"))
        lines.append(head + ("  separation" if has_sep else ""))
        for layer in r["influential"][:rows]:
            s = r["layers"][str(layer)]
            row = f"  {layer:>5}  {s['frequency']:>4}  {s['magnitude']:>10.4g}  {s['rank_sum']:>8.1f}"
            if has_sep and "separation" in s:
                row += f"  {s['separation']:>10.4g}"
            lines.append(row)
        if r.get("dominant"):
            lines.append(f"  dominant: {r['dominant']}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ CLI
def build_parser():
    import argparse

    p = argparse.ArgumentParser(prog="interplay matrix", description="MATRIX tools.")
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("analyse", help="rank attention layers by AAS over videos with mask tracks (spec §2.5)",
                       description="Reconstruct each clip at a few timesteps with attention capture on the chosen "
                                   "layers; AAS per layer against the clip's mask tracks; rank_layers per variant.")
    src = a.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="a CogVideoX diffusers folder (e.g. models/diffusers/CogVideoX-5b-I2V)")
    src.add_argument("--random", choices=["tiny", "full"], help="a random-weight CogVideoX (tests, benchmarks)")
    a.add_argument("--data", required=True, help="a sandbox-format dataset folder (clips with masks and captions)")
    a.add_argument("--matrix", help="a MATRIX weights file to apply first (analyse the fine-tuned model)")
    a.add_argument("--layers", default="all", help="'all' or indices/ranges, e.g. 0-20,30 (default all)")
    a.add_argument("--timesteps", default=",".join(str(t) for t in DEFAULT_TIMESTEPS),
                   help="noise levels 0..999 to reconstruct at (default %(default)s)")
    a.add_argument("--videos", type=int, help="analyse only the first N clips")
    a.add_argument("--frames", type=int, help="first F frames of each clip (CogVideoX: 8k+1)")
    a.add_argument("--size", help="resize clips to WIDTHxHEIGHT")
    a.add_argument("--success", help="JSON {clip name: true|false} for the dominant-layer statistics")
    a.add_argument("--top-k", type=int, default=10, help="per-video top-k for the frequency (default 10)")
    a.add_argument("--influential", type=int, default=10, help="how many influential layers (default 10)")
    a.add_argument("--mode", choices=list(M.MODES), default="softmax", help="map read-out (default softmax)")
    a.add_argument("--seed", type=int, default=0, help="noise seed (video i uses seed + i)")
    a.add_argument("--max-text-length", type=int, help="prompt tokens (default: the model's max_text_seq_length)")
    a.add_argument("--device", help="compute device (default: the GPU when present)")
    a.add_argument("--dtype", default="auto", help="auto | bf16 | fp16 | fp32")
    a.add_argument("--json", help="write the report here (default: print it after the table)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from pathlib import Path

    from .. import runtime
    from ..backbones import cogvideox as cvx

    try:
        dev = torch.device(args.device) if args.device else runtime.compute_device()
        if args.random:
            bb = cvx.random_backbone(args.random, dtype=runtime.parse_dtype(args.dtype, dev), device=dev)
        else:
            bb = cvx.load_cogvideox(args.model, dtype=args.dtype, device=dev)
        if args.matrix:
            from ..training.matrix import load_matrix

            bb = load_matrix(bb, args.matrix)
        size = None
        if args.size:
            from ..sandbox.cli import parse_size

            size = parse_size(args.size)
        videos = videos_from_dataset(args.data, frames=args.frames, size=size, max_videos=args.videos)
        layers = C.parse_layers(args.layers, bb, "interplay matrix analyse: --layers")
        steps = [int(t) for t in args.timesteps.split(",") if t.strip()]
        if not steps or any(not 0 <= t < 1000 for t in steps):
            raise ValueError(f"--timesteps must be numbers in 0..999; got {args.timesteps!r}")
        success = json.loads(Path(args.success).read_text()) if args.success else None
        report = analyse(bb, videos, layers, timesteps=steps, seed=args.seed, success=success, top_k=args.top_k,
                         n_influential=args.influential, mode=args.mode, max_length=args.max_text_length)
    except (ValueError, FileNotFoundError) as ex:
        print(f"interplay matrix analyse: {ex}", file=sys.stderr)
        return 2
    print(table_text(report))
    text = json.dumps(report, indent=1)
    if args.json:
        Path(args.json).write_text(text + "\n")
        print(f"report: {args.json}")
    else:
        print(text)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
