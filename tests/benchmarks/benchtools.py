"""What both step benchmarks share: importing the pack from a plain checkout and timing a call.

The bench_*.py scripts run as `python tests/benchmarks/bench_x.py` and are loaded from their file by the CPU
tests; either way they put this folder on sys.path and import this module."""
from __future__ import annotations

import importlib
import importlib.util
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def import_pack():
    """``interplay`` installed, or else the checkout's root registered under that name (the folder may be named
    anything: the repo root IS the package)."""
    try:
        return importlib.import_module("interplay")
    except ImportError:
        spec = importlib.util.spec_from_file_location("interplay", ROOT / "__init__.py",
                                                      submodule_search_locations=[str(ROOT)])
        mod = importlib.util.module_from_spec(spec)
        sys.modules["interplay"] = mod
        spec.loader.exec_module(mod)
        return mod


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def time_call(fn, dev) -> float:
    """Seconds one call takes: CUDA events on the GPU, perf_counter on the CPU."""
    if dev.type == "cuda":
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        return a.elapsed_time(b) / 1000
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t
