"""`interplay train CONFIG.toml|json`: the training node's function from a terminal (format in config.py).

    interplay train run.toml [--out DIR] [--steps N] [--models-dir D] [--device cpu|cuda] [--no-resume]

A progress bar shows step, loss and ETA. Ctrl-C stops after the current step with a checkpoint saved (a
second Ctrl-C aborts at once); running the same command again resumes from the output folder.
Exit codes: 0 done, 2 bad config or input, 130 interrupted (checkpoint saved).

The same command runs on several GPUs (or CPU processes) under a launcher, unchanged:

    torchrun --nproc-per-node 4 -m interplay.models.training.cli run.toml      # or: accelerate launch -m ...

DDP for control branches and LoRAs, FSDP2 for whole backbones ([train] parallel = auto | ddp | fsdp). The global
batch per step stays batch_size x grad_accum (each process takes grad_accum / N micro-batches, so grad_accum must
be a multiple of N) in the one-process order; rank 0 writes the files, and the state resumes with any number of
processes.
"""
from __future__ import annotations

import argparse
import signal
import sys

from .. import runtime


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="interplay train", description="Train a control branch, a LoRA or a tiny "
                                "backbone from a TOML/JSON config (see models/training/config.py).")
    p.add_argument("config", help="run config (.toml or .json)")
    p.add_argument("--out", help="output folder (overrides out_dir)")
    p.add_argument("--steps", type=int, help="optimizer steps (overrides [train] steps)")
    p.add_argument("--models-dir", help="models root for relative model names (default $INTERPLAY_MODELS_DIR)")
    p.add_argument("--device", help="compute device (overrides [backbone] device)")
    p.add_argument("--no-resume", action="store_true", help="start over even if the output folder has a state")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from pathlib import Path

    from .config import load_config, run

    if args.models_dir:
        runtime.set_models_root(args.models_dir)
    try:
        rc = load_config(args.config)
        if args.out:
            rc.out_dir = Path(args.out).resolve()
        if args.steps is not None:
            rc.train.steps = args.steps
            rc.train.validate()
        if args.device:
            rc.backbone["device"] = args.device
        if args.no_resume:
            rc.resume = False
    except (ValueError, FileNotFoundError) as ex:
        print(f"interplay train: {ex}", file=sys.stderr)
        return 2

    def on_sigint(signum, frame):  # first Ctrl-C: stop cleanly at the next step; the second aborts
        print("\ninterplay train: stopping after this step (Ctrl-C again to abort)", file=sys.stderr)
        runtime.request_interrupt()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    old = signal.getsignal(signal.SIGINT)
    in_main = _main_thread()
    if in_main:
        signal.signal(signal.SIGINT, on_sigint)
    try:
        res, _ = run(rc)
    except runtime.Interrupted:
        print(f"interplay train: interrupted; checkpoint saved in {rc.out_dir}. Run the same command to resume.",
              file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError) as ex:
        print(f"interplay train: {ex}", file=sys.stderr)
        return 2
    finally:
        if in_main:
            signal.signal(signal.SIGINT, old)
    from .. import distributed

    if not distributed.is_main():  # one report per launch
        return 0
    last = f"{res.losses[-1]:.5f}" if res.losses else "n/a"
    print(f"interplay train: {rc.task} done, {res.steps} steps (resumed from {res.resumed_from}), final loss "
          f"{last}; weights {res.checkpoint}")
    return 0


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
