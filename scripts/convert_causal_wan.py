#!/usr/bin/env python
"""Convert a Self-Forcing / LongLive causal Wan2.1-T2V-1.3B generator checkpoint (.pt) to safetensors for the Wan
Loader and the GameCraft Sampler (which then runs it causally: mode auto).

    python scripts/convert_causal_wan.py self_forcing_dmd.pt ComfyUI/models/diffusion_models/self_forcing_dmd.safetensors
    python scripts/convert_causal_wan.py longlive_base.pt out.safetensors --source longlive --dtype bf16

The .pt is opened with torch.load(weights_only=True) only (tensors and plain containers; no code runs). See
models/backbones/wan_causal.py for the key layout and what is refused.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path, help="the original .pt checkpoint")
    ap.add_argument("dst", type=Path, help="the .safetensors file to write")
    ap.add_argument("--which", default="auto", help="checkpoint entry (auto: generator_ema, else generator)")
    ap.add_argument("--source", default="self_forcing", help="recorded in the metadata (self_forcing, longlive)")
    ap.add_argument("--block-latent-frames", type=int, default=3, help="the block size it was trained with")
    ap.add_argument("--dtype", default="keep", choices=["keep", "bf16", "fp16", "fp32"])
    args = ap.parse_args(argv)
    try:
        from interplay.models.backbones.wan_causal import convert_causal_checkpoint
    except ImportError:  # run from inside the pack folder without it installed as "interplay"
        import importlib

        pkg = Path(__file__).resolve().parents[1]
        sys.path.insert(0, str(pkg.parent))
        convert_causal_checkpoint = importlib.import_module(f"{pkg.name}.models.backbones.wan_causal") \
            .convert_causal_checkpoint
    try:
        out = convert_causal_checkpoint(args.src, args.dst, which=args.which, source=args.source,
                                        block_latent_frames=args.block_latent_frames, dtype=args.dtype)
    except (ValueError, FileNotFoundError) as e:
        print(e, file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
