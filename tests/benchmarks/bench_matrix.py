"""MATRIX benchmark: attention-capture overhead per denoising step and its peak memory, and one LoRA training step
(time and memory) per preset, on CogVideoX-5B-I2V (random weights at the release config).

    python tests/benchmarks/bench_matrix.py [--size full|small] [--reps N] [--no-train] --json OUT.json

full (CUDA, bf16, 49x480x720: latent 13x60x90, 17,550 video + 226 text tokens):
  step_plain            the family forward, batch 1 (one CFG row), no attachment
  step_capture_paper    the same with MatrixCapture on the paper's layers (v2t 7, 11; v2v 12), softmax maps of 3
                        token sets and 2 first-frame regions, blockwise (chunk 1024)
  step_capture_all      capture on all 42 layers (the layer analysis); one layer's maps at a time, never the full
                        attention of all layers
  train_paper           one MATRIX training step (forward with the gradient-keeping capture, decoders, backward,
                        AdamW) with the paper preset: LoRA r128 on layers 7, 11, 12, SGA + SPA, gradient
                        checkpointing of the other blocks
  train_code            the same with the code preset's recipe on CogVideoX's joint attention (r16, layers 20, 24 /
                        6, 8, BCE, one shared decoder)
Each: median seconds over N reps after a warm-up, peak VRAM in MiB (max_memory_allocated after a reset) and the
extra peak over the plain step; the size of one capture block and of the full attention of all layers, for scale. Capture maps are also checked against the dense attention of the same q, k at the small size.
small (CPU, fp32): the tiny config at 9x32x32 (the CPU test of this script); peak memory is the operation's extra
tensor bytes (tests/kit/peak_memory.py).
The Wan half (81x480x832) joins when the Wan forward is merged.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchtools import import_pack, sync as _sync, time_call as _time  # noqa: E402

import_pack()
from interplay.models.backbones import cogvideox as cog  # noqa: E402
from interplay.models.control import matrix_capture as C  # noqa: E402

SIZES = {"full": (49, 480, 720), "small": (9, 32, 32)}
LAYERS = {"full": dict(paper=((7, 11), (12,)), code=((20, 24), (6, 8))),
          "small": dict(paper=((0,), (1,)), code=((0, 1), (1,)))}


def _peak_cuda(fn):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated()


def _peak(fn, dev) -> float:
    """MiB: CUDA peak allocated, or on the CPU the extra tensor bytes the call allocates."""
    if dev.type == "cuda":
        return round(_peak_cuda(fn) / 2 ** 20, 1)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from kit.peak_memory import PeakMemory

    with PeakMemory() as pm:
        fn()
    return round(pm.peak / 2 ** 20, 3)


def _median(fn, dev, reps):
    fn()
    _sync(dev)
    return statistics.median(_time(fn, dev) for _ in range(reps))


def _masks(h, w):
    """Two instance tracks: a box moving right and a static box (pixel masks [2, F, H, W])."""
    def track(frames):
        m = torch.zeros(frames, h, w, dtype=torch.bool)
        for f in range(frames):
            x = int(w * 0.1 + f * w * 0.3 / max(frames - 1, 1))
            m[f, h // 4:h // 2, x:x + w // 4] = True
        return m
    return track


def build(size, dev, dtype):
    bb = cog.random_backbone("full" if size == "full" else "tiny", dtype=dtype, device=dev, seed=0)
    frames, hh, ww = SIZES[size]
    vs = bb.extra["vae_scale_factor_spatial"]
    f = cog.latent_frames(bb, frames)
    c = bb.denoiser.config
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, f, c.in_channels, hh // vs, ww // vs, generator=g).to(dev, dtype)
    n_text = c.max_text_seq_length if size == "full" else 16
    e = torch.randn(1, n_text, c.text_embed_dim, generator=g).to(dev, dtype)
    t = torch.tensor([500], device=dev)
    m1 = torch.zeros(hh, ww, dtype=torch.bool)
    m1[hh // 4:hh // 2, ww // 8:ww // 3] = True
    m2 = torch.zeros(hh, ww, dtype=torch.bool)
    m2[hh // 2:, ww // 2:] = True
    targets = C.MapTargets(v2t={"id1": [1, 2], "id2": [4, 5], "verb1>2": [3]}, v2v={"id1": m1, "id2": m2})
    return bb, dict(x=x, e=e, t=t, targets=targets, frames=frames, h=hh, w=ww)


def capture_cases(bb, inp, dev, reps, size):
    res = {}
    cfg = bb.denoiser.config
    n = cfg.num_layers
    paper_t, paper_v = LAYERS[size]["paper"]

    def step(layers_t=None, layers_v=None):
        atts = []
        if layers_t is not None:
            atts = [C.MatrixCapture(C.layer_names(bb, layers_t, "v2t"), C.layer_names(bb, layers_v, "v2v"),
                                    inp["targets"], mode="softmax", chunk=1024, row="all")]
        with torch.no_grad():
            cog.forward(bb, inp["x"], inp["t"], inp["e"], attachments=atts)
        return atts

    cases = {"step_plain": lambda: step(), "step_capture_paper": lambda: step(paper_t, paper_v),
             "step_capture_all": lambda: step(range(n), range(n))}
    base_peak = None
    for name, fn in cases.items():
        s = _median(fn, dev, reps)
        peak = _peak(fn, dev)
        base_peak = peak if base_peak is None else base_peak
        res[name] = dict(s_per_step=round(s, 4), peak_mib=peak, extra_peak_mib=round(peak - base_peak, 3))
    for name in ("step_capture_paper", "step_capture_all"):
        res[name]["overhead"] = round(res[name]["s_per_step"] / res["step_plain"]["s_per_step"] - 1, 4)
    # one block of the capture: [B, H, chunk, N] float32
    tokens = inp["x"].shape[1] * (inp["x"].shape[3] // 2) * (inp["x"].shape[4] // 2) + inp["e"].shape[1]
    res["capture_block_mib"] = round(cfg.num_attention_heads * min(1024, tokens) * tokens * 4 / 2 ** 20, 3)
    res["full_attention_all_layers_mib"] = round(n * cfg.num_attention_heads * tokens * tokens * 4 / 2 ** 20, 1)
    return res


def _batch(inp):
    frames = torch.rand(1, inp["frames"], inp["h"], inp["w"], 3, generator=torch.Generator().manual_seed(2))
    tr = _masks(inp["h"], inp["w"])
    masks = torch.stack([tr(inp["frames"]), tr(inp["frames"]).flip(-1)]).float()
    return {"frames": frames, "masks": [masks], "caption": ["[the red box](1) [pushes](1>2) [the blue box](2)"],
            "objects": [[]], "driven": [[]], "events": [[]]}


def train_cases(bb, inp, dev, reps, size):
    from interplay.models.training.matrix import MatrixTask

    res = {}
    batch = _batch(inp)
    for preset in ("paper", "code"):
        v2t, v2v = LAYERS[size][preset]
        kw = dict(lora_rank=4) if size == "small" else {}
        task = MatrixTask(bb, preset=preset, v2t_layers=v2t, v2v_layers=v2v, markup="paper_spans", **kw)
        if size == "full":
            task.enable_gradient_checkpointing()
        params = task.trainable_parameters()
        opt = torch.optim.AdamW(params, lr=1e-5)
        task.train()

        def one():
            opt.zero_grad(set_to_none=True)
            with torch.autocast(dev.type, dtype=bb.dtype, enabled=dev.type == "cuda"):
                loss = task.loss(batch, torch.Generator().manual_seed(0))
            loss.backward()
            opt.step()

        s = _median(one, dev, reps)
        peak = _peak(one, dev)
        res[f"train_{preset}"] = dict(s_per_step=round(s, 4), peak_mib=peak, terms=task.last_terms,
                                      trainable_m=round(sum(p.numel() for p in params) / 1e6, 3),
                                      lora_rank=task.preset.lora_rank, layers=[list(v2t), list(v2v)])
        task.eval()
        bb.denoiser.gradient_checkpointing = False
        del task, opt
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return res


def check_capture(bb, inp):
    """Captured v2t maps equal the dense softmax of the same q, k (small size)."""
    from interplay.models.backbones.base import Attachment
    from interplay.models.control import matrix as M

    seen = {}

    class Keep(Attachment):
        def attention_layers(self, ctx):
            return [cog.attention_layer(1)]

        def attention(self, ctx, layer, q, k, v, call):
            seen["qk"] = (q.clone(), k.clone())
            return call(q, k, v)

    cap = C.MatrixCapture([cog.attention_layer(1)], [], inp["targets"], chunk=7, row="all")
    with torch.no_grad():
        cog.forward(bb, inp["x"], inp["t"], inp["e"], attachments=[Keep(), cap])
    q, k = seen["qk"]
    p = M.attention_probs(q, k).mean(1)[0]
    nt = inp["e"].shape[1]
    want = p[nt:, inp["targets"].v2t["id1"]].mean(-1).reshape(cap.grid)
    return float((cap.map(cog.attention_layer(1), "v2t", "id1") - want).abs().max())


def run(size="full", reps=None, train=True):
    dev = torch.device("cuda" if size == "full" else "cpu")
    dtype = torch.bfloat16 if size == "full" else torch.float32
    reps = reps or (5 if size == "full" else 2)
    bb, inp = build(size, dev, dtype)
    out = {"size": size, "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
           "frames": inp["frames"], "hw": [inp["h"], inp["w"]], "dtype": str(dtype),
           "tokens": {"video": int(inp["x"].shape[1] * inp["x"].shape[3] * inp["x"].shape[4] // 4),
                      "text": int(inp["e"].shape[1])}, "layers": bb.denoiser.config.num_layers}
    out["capture"] = capture_cases(bb, inp, dev, reps, size)
    if size == "small":
        out["capture_max_err"] = check_capture(bb, inp)
    if train:
        out["train"] = train_cases(bb, inp, dev, max(1, reps // 2), size)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=list(SIZES), default="full")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--no-train", action="store_true")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    res = run(a.size, a.reps, train=not a.no_train)
    text = json.dumps(res, indent=2)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(text)
    print(text)
    return res


if __name__ == "__main__":
    main()
