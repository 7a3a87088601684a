"""The speed inputs every sampler node takes, last and optional (defaults: the old outputs, bitwise): the step
cache, regional compile, fp8 compute, the SDPA backend, and (CogVideoX, Wan) how a torchrun launch splits the work."""
from __future__ import annotations

from ..models.sampling.speed import ATTENTION, FP8
from ..models.sampling.step_cache import DEFAULT_THRESHOLD

PARALLEL = ["auto", "off", "cfg", "sequence"]

SPEED_INPUTS = {
    "step_cache": ("BOOLEAN", {"default": False, "tooltip": "Skip the model on steps whose prediction is expected to "
                               "change little and reuse the last one (EasyCache's signal, measured on the run "
                               "itself). Off: every step runs the model (the exact old output)."}),
    "cache_threshold": ("FLOAT", {"default": DEFAULT_THRESHOLD, "min": 0.01, "max": 2.0, "step": 0.01,
                                  "tooltip": "How much predicted change the cache lets accumulate before it runs the "
                                  "model again; higher skips more. 0.2: on the sandbox demo 56% of the calls skipped "
                                  "at the uncached IoU."}),
    "compile": ("BOOLEAN", {"default": False, "tooltip": "torch.compile the transformer blocks (regional: the first "
                            "run compiles for up to a minute, later ones are faster). Needs a working compiler."}),
    "fp8": (list(FP8), {"default": "off", "tooltip": "fp8 matmuls in attention and feed-forward: auto = torchao when "
                        "installed, else the pack's W8A8. Needs an fp8 GPU (Ada/Hopper, compute capability 8.9+); "
                        "emulated (slow) on the CPU. Keeps an fp8 copy of those layers on the backbone."}),
    "attention": (list(ATTENTION), {"default": "auto", "tooltip": "SDPA kernel: auto lets torch (and the sampler) "
                                    "pick; flash / efficient / cudnn / math force one, refused with the reason where "
                                    "it cannot run."}),
}
PARALLEL_INPUT = {
    "parallel": (PARALLEL, {"default": "auto", "tooltip": "Only under torchrun (several GPUs, every process running "
                            "the graph): cfg splits the guidance rows over the GPUs, sequence splits the frames "
                            "(Ulysses attention), auto does cfg on 2 and both on 4. One process: no effect."}),
}


def speed_settings(node: str, step_cache=False, cache_threshold=DEFAULT_THRESHOLD, compile=False,
                   fp8="off", attention="auto"):
    """(StepCache or None, Speed or None) from the node inputs; bad values are named."""
    from ..models.sampling.speed import Speed
    from ..models.sampling.step_cache import StepCache

    try:
        cache = StepCache(threshold=float(cache_threshold)) if step_cache else None
        speed = Speed(compile=bool(compile), fp8=fp8, attention=attention)
    except ValueError as ex:
        raise ValueError(f"{node}: {ex}") from None
    return cache, (None if speed.default else speed)
