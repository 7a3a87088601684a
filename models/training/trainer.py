"""The pack's one trainer: any Task (control branch, whole tiny backbone, LoRA) on any dataset of dict items.

A Task owns the model, the loss and which weights train; the trainer owns the loop: optimizer, LR schedule,
gradient accumulation, clipping, mixed precision, EMA, checkpoints, loss log and progress.

Task protocol (duck-typed; ``models/training/interdyn.py``, ``kinemask.py`` and ``lora.py`` implement it):
    trainable_parameters() -> list[Parameter]       what the optimizer updates (everything else is frozen)
    param_groups() -> list[dict]  (optional)       the same parameters split into groups, each
                                                    {"params": [...], "name": str, "lr_scale": float}: the
                                                    group's learning rate is the schedule's times lr_scale
    loss(batch: dict, generator: torch.Generator) -> scalar Tensor   all randomness from the CPU generator
    trainable_state_dict() -> dict[str, Tensor]     the weights a checkpoint holds (the branch's own key names)
    load_trainable_state_dict(sd) -> None
    config() -> dict                                JSON-able; stored beside the weights
  optional:
    save_weights(path, state_dict)                  write ``checkpoint.safetensors`` in the branch loader's
                                                    format (default: safetensors + {"config": json} metadata)
    enable_gradient_checkpointing()                 called when TrainConfig.grad_checkpointing
    fsdp_modules() -> (root, [units])               whole-backbone tasks: FSDP2 shards each unit (block) and the
                                                    root's other weights under a launch; trainable_state_dict()
                                                    must be root.state_dict()
    train() / eval()                                module modes around the loop
    set_step(step)                                  called before each step's losses with the step index
                                                    (0-based; resumes continue it), for tasks that alternate

Output folder ``out_dir``:
    checkpoint.safetensors   trainable weights (loadable by the branch / LoRA loader)
    checkpoint_ema.safetensors   EMA weights, same keys (only with ema_decay > 0)
    state.safetensors        everything needed to resume: weights, optimizer tensors, EMA, RNG states; the
                             rest (step, data cursor, scaler, python/numpy RNG, configs, losses) as JSON in
                             its metadata. No pickle anywhere.
    losses.csv               step,loss,lr (appended every step; rewritten from the state on resume)
    loss_curve.png           the loss curve (also returned as an IMAGE by the node)
Each file is written to a temporary name and moved into place with os.replace, so a kill never leaves a
torn checkpoint. Resume reads only state.safetensors, which is written last.

Determinism: the data order is a function of (seed, epoch) and the number of samples consumed so far, the
loss generator of step s and micro-batch m is seeded with (seed, s, m), and the global torch / CUDA / numpy /
python RNG states are saved, so a run killed and restarted from its last checkpoint ends with exactly the
weights of an uninterrupted run (tested).

Interrupt (ComfyUI cancel, ``runtime.Interrupted``): the trainer saves a checkpoint at the last completed
step and re-raises; ComfyUI reports an interrupted prompt, and re-queueing the same graph resumes.

Several processes (torchrun / accelerate launch; ``models/distributed.py``): micro-batch m of a step runs on rank
m % world (``grad_accum`` a multiple of the world size), so the global batch and its order are the one-process
run's; the global RNG is reseeded per micro-batch (``micro_seed``) so dropout draws the same wherever it runs.
Gradients are averaged by DDP (branches, LoRAs) or reduce-scattered by FSDP2 (tasks with ``fsdp_modules``), the
loss scaled by the world size to keep the one-process sum. Only rank 0 writes; under FSDP every save first gathers
the weights, Adam moments and EMA whole, so the state file is the one-process format and resumes at any world size.
A cancel is agreed on by all ranks at the next step boundary.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import random
import re
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors.torch import save_file

from .. import distributed, runtime
from ..weights import WeightsFileError, read_safetensors

SCHEDULES = ("constant", "cosine", "linear", "cosine_restarts")
PRECISIONS = ("fp32", "bf16", "fp16")
OPTIMIZERS = ("adamw", "adam")
PARALLEL = ("auto", "ddp", "fsdp")
CHECKPOINT, EMA_CHECKPOINT, STATE, LOSSES, CURVE = (
    "checkpoint.safetensors", "checkpoint_ema.safetensors", "state.safetensors", "losses.csv", "loss_curve.png")
STATE_VERSION = 1
# Changing these between a run and its resume would change the data or noise sequence: refuse.
RESUME_FIXED = ("seed", "batch_size", "grad_accum")


@dataclass
class TrainConfig:
    """Hyperparameters. Defaults follow KineMask's appendix (AdamW 1e-4, betas (0.9, 0.95), clip 1.0)."""

    steps: int = 1000
    lr: float = 1e-4
    betas: tuple = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.0
    optimizer: str = "adamw"        # adamw | adam (InterDyn: Adam)
    schedule: str = "constant"      # constant | cosine | linear | cosine_restarts, after `warmup` linear steps
    warmup: int = 0
    min_lr_ratio: float = 0.0       # floor of the decaying schedules, as a fraction of lr
    restarts: int = 1               # cycles of cosine_restarts
    batch_size: int = 1             # per micro-batch
    grad_accum: int = 1             # micro-batches per optimizer step
    clip_norm: float = 1.0          # 0 = no clipping
    precision: str = "fp32"         # fp32 | bf16 | fp16 (autocast; fp16 adds a GradScaler)
    ema_decay: float = 0.0          # 0 = no EMA
    grad_checkpointing: bool = False
    checkpoint_every: int = 250     # 0 = only at the end (and on interrupt)
    log_every: int = 1
    seed: int = 0
    num_workers: int = 0
    parallel: str = "auto"          # multi-process launches: auto | ddp | fsdp (auto: fsdp for whole backbones)

    def __post_init__(self):
        self.betas = tuple(float(b) for b in self.betas)
        self.validate()

    def validate(self) -> None:
        def bad(name, expected):
            raise ValueError(f"TrainConfig: '{name}' must be {expected}; got {getattr(self, name)!r}")
        if self.steps < 1:
            bad("steps", ">= 1")
        if not self.lr > 0:
            bad("lr", "> 0")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            bad("betas", "two numbers in [0, 1)")
        if self.weight_decay < 0:
            bad("weight_decay", ">= 0")
        if self.optimizer not in OPTIMIZERS:
            bad("optimizer", f"one of {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            bad("schedule", f"one of {', '.join(SCHEDULES)}")
        if self.warmup < 0:
            bad("warmup", ">= 0")
        if not 0 <= self.min_lr_ratio <= 1:
            bad("min_lr_ratio", "in [0, 1]")
        if self.restarts < 1:
            bad("restarts", ">= 1")
        if self.batch_size < 1:
            bad("batch_size", ">= 1")
        if self.grad_accum < 1:
            bad("grad_accum", ">= 1")
        if self.clip_norm < 0:
            bad("clip_norm", ">= 0 (0 turns clipping off)")
        if self.precision not in PRECISIONS:
            bad("precision", f"one of {', '.join(PRECISIONS)}")
        if not 0 <= self.ema_decay < 1:
            bad("ema_decay", "in [0, 1) (0 turns EMA off)")
        if self.checkpoint_every < 0:
            bad("checkpoint_every", ">= 0 (0 = only at the end)")
        if self.log_every < 1:
            bad("log_every", ">= 1")
        if self.num_workers < 0:
            bad("num_workers", ">= 0")
        if self.parallel not in PARALLEL:
            bad("parallel", f"one of {', '.join(PARALLEL)}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict, where: str = "TrainConfig") -> "TrainConfig":
        """A config from user data (TOML/JSON, the node's 'extra'): unknown keys and wrongly typed values (a string
        where a number goes) are refused by name before any check compares them."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}; expected some of {', '.join(sorted(names))}")
        d = dict(d)
        for f in fields(cls):
            if f.name in d:
                _check_type(where, f.name, d[f.name], type(f.default))
                if isinstance(f.default, int) and not isinstance(f.default, bool):
                    d[f.name] = int(d[f.name])  # 10.0 from JSON is the whole number 10
        return cls(**d)


def _check_type(where: str, name: str, value, kind: type) -> None:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = {int: isinstance(value, int) and not isinstance(value, bool) or isinstance(value, float)
          and value.is_integer(),
          float: number and math.isfinite(value), bool: isinstance(value, bool), str: isinstance(value, str),
          tuple: isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                          for v in value)}.get(kind, True)
    if not ok:
        expected = {int: "a whole number", float: "a finite number", bool: "true or false", str: "a string",
                    tuple: "a list of numbers"}[kind]
        raise ValueError(f"{where}: '{name}' must be {expected}; got {value!r}")


@dataclass
class TrainResult:
    state_dict: dict
    losses: list
    steps: int
    checkpoint: Path
    ema_state_dict: dict | None = None
    resumed_from: int = 0
    out_dir: Path | None = None
    curve: np.ndarray | None = None  # uint8 [H,W,3] loss curve


# --------------------------------------------------------------------------------------------- schedule
def lr_at(cfg: TrainConfig, step: int) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warmup, then the schedule."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    if cfg.schedule == "constant":
        return cfg.lr
    t = (step - cfg.warmup) / max(cfg.steps - cfg.warmup, 1)
    t = min(max(t, 0.0), 1.0)
    lo = cfg.min_lr_ratio
    if cfg.schedule == "linear":
        f = 1.0 - t
    elif cfg.schedule == "cosine":
        f = 0.5 * (1 + math.cos(math.pi * t))
    else:  # cosine_restarts: `restarts` equal cycles, each decaying from lr (diffusers' hard restarts)
        if t >= 1.0:
            f = 0.0
        else:
            f = 0.5 * (1 + math.cos(math.pi * ((cfg.restarts * t) % 1.0)))
    return cfg.lr * (lo + (1 - lo) * f)


# ------------------------------------------------------------------------------------------------- data
def collate(items: list[dict]) -> dict:
    """Batch dataset items: tensors of equal shape are stacked, numbers become tensors, everything else
    (strings, tensors whose shape differs per clip such as per-object masks [N,F,H,W]) becomes a list."""
    out = {}
    for k in items[0]:
        vals = [it[k] for it in items]
        if all(isinstance(v, torch.Tensor) for v in vals) and all(v.shape == vals[0].shape for v in vals):
            out[k] = torch.stack(vals)
        elif all(isinstance(v, np.ndarray) for v in vals) and all(v.shape == vals[0].shape for v in vals):
            out[k] = torch.from_numpy(np.stack(vals))
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
            out[k] = torch.tensor(vals)
        else:
            out[k] = vals
    return out


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The dataset permutation of one epoch: a pure function of (seed, epoch)."""
    g = torch.Generator().manual_seed((seed * 1_000_003 + epoch * 7_919) % (2 ** 63))
    return torch.randperm(n, generator=g)


def batch_indices(n: int, seed: int, cursor: int, batch_size: int) -> list[int]:
    """Indices of the micro-batch starting at sample ``cursor`` (samples consumed so far, across epochs)."""
    out, cache = [], {}
    for c in range(cursor, cursor + batch_size):
        e, i = divmod(c, n)
        if e not in cache:
            cache[e] = epoch_order(n, seed, e)
        out.append(int(cache[e][i]))
    return out


class _Batches(torch.utils.data.Sampler):
    """Infinite deterministic batch sampler from a cursor (for DataLoader workers)."""

    def __init__(self, n, seed, cursor, batch_size, stride=None):
        self.n, self.seed, self.cursor, self.bs = n, seed, cursor, batch_size
        self.stride = batch_size if stride is None else stride  # a rank of W takes every W-th micro-batch

    def __iter__(self):
        c = self.cursor
        while True:
            yield batch_indices(self.n, self.seed, c, self.bs)
            c += self.stride


def step_generator(seed: int, step: int, micro: int) -> torch.Generator:
    """The CPU generator handed to ``task.loss`` for micro-batch ``micro`` of step ``step``."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 1_009 + micro * 7) % (2 ** 63))


# ---------------------------------------------------------------------------------------- atomic files
def _replace_atomic(tmp: Path, final: Path) -> None:
    os.replace(tmp, final)


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def write_beside(path, suffix: str, write: Callable[[Path], None]) -> Path:
    """Write the file ``<final stem><suffix>`` next to the checkpoint ``path`` a task's save_weights is handed
    (the trainer passes the temporary name :func:`_tmp` makes, or the final one), atomically: ``write(tmp)``
    then a rename. Returns the final path."""
    path = Path(path)
    m = re.fullmatch(r"\.(.+)\.tmp\d+", path.name)
    final = path.with_name(Path(m.group(1) if m else path.name).stem + suffix)
    tmp = _tmp(final)
    write(tmp)
    _replace_atomic(tmp, final)
    return final


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):  # another user's process, or no way to tell: keep its files
        return True
    return True


def remove_stale_tmp(folder: Path) -> list[Path]:
    """Delete the temporary files (``_tmp``: ``.<name>.tmp<pid>``) that a run killed mid-write left in ``folder``,
    only those whose process is gone (a live run may still be writing its own). Returns what was removed."""
    import re

    gone = []
    for p in Path(folder).glob(".*.tmp*"):
        m = re.fullmatch(r"\..+\.tmp(\d+)", p.name)
        if m and p.is_file() and not _pid_alive(int(m.group(1))):
            p.unlink(missing_ok=True)
            gone.append(p)
    return gone


def write_bytes_atomic(path: Path, data: bytes) -> None:
    tmp = _tmp(path)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    _replace_atomic(tmp, path)


def save_safetensors_atomic(tensors: dict, path: Path, metadata: dict | None = None) -> None:
    tmp = _tmp(path)
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    _replace_atomic(tmp, path)


def default_save_weights(task, sd: dict, path: Path) -> None:
    save_file({k: v.detach().contiguous().cpu() for k, v in sd.items()}, str(path),
              metadata={"format": "pt", "config": json.dumps(task.config())})


# ------------------------------------------------------------------------------------ optimizer state
def flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Optimizer state -> (tensors, JSON-able metadata), so it is saved without pickle."""
    sd = opt.state_dict()
    tensors, meta_state = {}, {}
    for pid, st in sd["state"].items():
        meta_state[str(pid)] = {}
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim.{pid}.{k}"] = v
                meta_state[str(pid)][k] = "tensor"
            else:
                meta_state[str(pid)][k] = v
    groups = []
    for g in sd["param_groups"]:
        groups.append({k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()})
    return tensors, {"state": meta_state, "param_groups": groups}


def unflatten_optimizer(tensors: dict, meta: dict) -> dict:
    state = {}
    for pid, st in meta["state"].items():
        state[int(pid)] = {k: (tensors[f"optim.{pid}.{k}"] if v == "tensor" else v) for k, v in st.items()}
    groups = []
    for g in meta["param_groups"]:
        groups.append({k: (tuple(v) if k == "betas" else v) for k, v in g.items()})
    return {"state": state, "param_groups": groups}


def _rng_capture() -> tuple[dict, dict]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    pv, pstate, pgauss = random.getstate()
    meta = {"numpy": [name, int(pos), int(has_gauss), float(gauss)], "python": [pv, list(pstate), pgauss]}
    return tensors, meta


def _rng_restore(tensors: dict, meta: dict) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = sorted(k for k in tensors if k.startswith("rng.cuda."))
    if cuda and torch.cuda.is_available():
        states = [tensors[k] for k in cuda]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
    name, pos, has_gauss, gauss = meta["numpy"]
    np.random.set_state((name, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    pv, pstate, pgauss = meta["python"]
    random.setstate((pv, tuple(pstate), pgauss))


def read_state(out_dir) -> tuple[dict, dict] | None:
    """(tensors, metadata) of ``out_dir/state.safetensors``, or None when there is no state yet."""
    path = Path(out_dir) / STATE
    if not path.exists():
        return None
    fix = "delete it (the run then starts over), use a new output folder, or turn resume off"
    try:
        tensors, header = read_safetensors(path, "train: resume state")
    except WeightsFileError as ex:
        raise WeightsFileError(f"train: resume state {path} is corrupt or truncated ({ex.__cause__}); {fix}") from ex
    try:
        meta = json.loads(header["state"])
    except (KeyError, json.JSONDecodeError) as ex:
        raise ValueError(f"train: {path} has no readable 'state' metadata ({type(ex).__name__}: {ex}); it was not "
                         f"written by the trainer: {fix}") from ex
    return tensors, meta


# ----------------------------------------------------------------------------------------------- curve
def plot_losses(losses, width: int = 640, height: int = 320, title: str = "loss") -> np.ndarray:
    """The loss curve as uint8 [H,W,3]: raw losses (light) and an EMA-smoothed line (dark), log-free axes
    with min/max labels. Drawn with PIL (no matplotlib dependency)."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height), (255, 255, 255))
    d = ImageDraw.Draw(img)
    L, R, T, B = 56, 12, 22, 26
    d.rectangle([L, T, width - R, height - B], outline=(0, 0, 0))
    vals = [float(v) for v in losses if math.isfinite(float(v))]
    d.text((L, 4), f"{title}  steps {len(losses)}" + (f"  last {vals[-1]:.4g}" if vals else ""), fill=(0, 0, 0))
    if vals:
        lo, hi = min(vals), max(vals)
        if hi - lo < 1e-12:
            lo, hi = lo - 0.5, hi + 0.5
        n = len(losses)

        def xy(i, v):
            x = L + (width - R - L) * (i / max(n - 1, 1))
            y = height - B - (height - B - T) * ((v - lo) / (hi - lo))
            return (x, y)

        pts = [xy(i, float(v)) for i, v in enumerate(losses) if math.isfinite(float(v))]
        if len(pts) > 1:
            d.line(pts, fill=(160, 190, 230), width=1)
        sm, ema, beta = [], None, min(0.98, 1 - 1 / max(len(vals) / 10, 1))
        for i, v in enumerate(losses):
            v = float(v)
            if not math.isfinite(v):
                continue
            ema = v if ema is None else beta * ema + (1 - beta) * v
            sm.append(xy(i, ema))
        if len(sm) > 1:
            d.line(sm, fill=(20, 60, 160), width=2)
        elif sm:
            d.ellipse([sm[0][0] - 2, sm[0][1] - 2, sm[0][0] + 2, sm[0][1] + 2], fill=(20, 60, 160))
        d.text((2, T - 2), f"{hi:.3g}", fill=(0, 0, 0))
        d.text((2, height - B - 10), f"{lo:.3g}", fill=(0, 0, 0))
        d.text((L, height - B + 6), "0", fill=(0, 0, 0))
        d.text((width - R - 40, height - B + 6), f"{n}", fill=(0, 0, 0))
    return np.asarray(img, dtype=np.uint8).copy()


def curve_image(losses, **kw) -> torch.Tensor:
    """The loss curve as a ComfyUI IMAGE [1,H,W,3] float32 0..1."""
    return torch.from_numpy(plot_losses(losses, **kw)).float().div(255.0)[None]


# --------------------------------------------------------------------------------------------- the loop
class _Ema:
    """EMA of the trainable parameters (positional, so it needs no names)."""

    def __init__(self, params, decay):
        self.decay = decay
        self.shadow = [p.detach().float().clone() for p in params]

    @torch.no_grad()
    def update(self, params):
        for s, p in zip(self.shadow, params):
            s.mul_(self.decay).add_(p.detach().float(), alpha=1 - self.decay)

    @contextlib.contextmanager
    def swapped(self, params):
        """The EMA weights in the parameters for the duration of the block."""
        saved = [p.detach().clone() for p in params]
        try:
            with torch.no_grad():
                for s, p in zip(self.shadow, params):
                    p.copy_(s.to(p.dtype))
            yield
        finally:
            with torch.no_grad():
                for v, p in zip(saved, params):
                    p.copy_(v)

    def state_dict_of(self, task, params) -> dict:
        """task.trainable_state_dict() evaluated with the EMA weights swapped in."""
        with self.swapped(params):
            return {k: v.detach().cpu().clone() for k, v in task.trainable_state_dict().items()}


def branch_writer(task):
    """The branch registry's ``save`` for the task's branch kind, so a task without its own ``save_weights`` still
    writes a file its branch loader reads; None when there is none."""
    from ..control import registry

    br = getattr(task, "branch", None)
    kind = getattr(br, "kind", None)
    if not isinstance(kind, str) or not hasattr(br, "module"):
        return None
    try:
        return registry.get(kind).save
    except ValueError:
        return None


def optimizer_groups(task, params: list, lr: float) -> list[dict]:
    """The optimizer's parameter groups: the task's ``param_groups()`` when it has them (each checked to list
    exactly the trainable parameters between them), else one group."""
    fn = getattr(task, "param_groups", None)
    if not callable(fn):
        return [{"params": params, "name": "all", "lr_scale": 1.0}]
    groups = []
    for g in fn():
        scale = float(g.get("lr_scale", 1.0))
        if not scale > 0:
            raise ValueError(f"train: parameter group {g.get('name')!r} has lr_scale {scale}; expected > 0")
        groups.append({"params": list(g["params"]), "name": str(g.get("name", f"group{len(groups)}")),
                       "lr": lr * scale, "lr_scale": scale})
    listed = [id(p) for g in groups for p in g["params"]]
    if sorted(listed) != sorted(id(p) for p in params):
        raise ValueError("train: the task's param_groups() must list each trainable parameter exactly once")
    return groups


def _set_mode(task, train: bool) -> None:
    fn = getattr(task, "train" if train else "eval", None)
    if callable(fn):
        fn()


def train(task, dataset, cfg: TrainConfig, out_dir, on_step: Callable | None = None, resume: bool = True,
          desc: str = "train") -> TrainResult:
    """Train ``task`` on ``dataset`` (a map-style dataset of dict items) for ``cfg.steps`` optimizer steps.

    ``on_step(step, loss, lr)`` is called after each optimizer step (1-based step). With ``resume`` and a
    state file in ``out_dir``, training continues from it. Raises runtime.Interrupted after saving when
    cancelled.

    Whatever draws from the global torch RNG inside the loop (dropout, a LoRA's dropout) starts from the run's
    seed (the saved state on resume) in a forked RNG, so the same seed gives the same run whatever the process
    did before, and the caller's RNG is left as it was.
    """
    params = list(task.trainable_parameters())
    device = params[0].device if params else torch.device("cpu")
    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.default_generator.manual_seed(global_seed(cfg.seed))
        if cuda:
            torch.cuda.manual_seed(global_seed(cfg.seed))  # this device only: the others stay untouched
        return _train(task, dataset, cfg, out_dir, on_step, resume, desc)


def global_seed(seed: int) -> int:
    """The global torch RNG's seed inside a fresh run with seed ``seed`` (apart from the data and loss streams)."""
    return (int(seed) * 1_000_003 + 977) % (2 ** 63)


def micro_seed(seed: int, step: int, micro: int) -> int:
    """The global torch RNG's seed for micro-batch ``micro`` of step ``step`` (dropout draws): reseeded per
    micro-batch, so whichever process of a launch runs it, it draws the same numbers."""
    return (int(seed) * 1_000_003 + step * 7_919 + micro * 104_729 + 31) % (2 ** 63)


def _parallel_mode(task, cfg: TrainConfig, world: int) -> str:
    """"none" (one process), "ddp" or "fsdp" (FSDP2: tasks that name their shardable modules, ``fsdp_modules``)."""
    if world == 1:
        return "none"
    if cfg.grad_accum % world:
        raise ValueError(f"train: grad_accum {cfg.grad_accum} with {world} processes; each process takes "
                         f"grad_accum / {world} of a step's micro-batches, so set grad_accum to a multiple of "
                         f"{world} (the global batch per step stays batch_size x grad_accum)")
    can_shard = callable(getattr(task, "fsdp_modules", None))
    mode = cfg.parallel if cfg.parallel != "auto" else ("fsdp" if can_shard else "ddp")
    if mode == "fsdp" and not can_shard:
        raise ValueError(f"train: parallel 'fsdp' needs a task that names its shardable modules (whole-backbone "
                         f"tasks); {task.config().get('task')!r} does not. Use parallel 'ddp' or 'auto'.")
    if mode == "fsdp" and cfg.precision == "fp16":
        raise ValueError("train: fp16 with FSDP is not supported (its loss scaler does not shard); use precision "
                         "bf16 or fp32")
    return mode


def _train(task, dataset, cfg: TrainConfig, out_dir, on_step, resume: bool, desc: str) -> TrainResult:
    cfg.validate()
    world = distributed.init()
    rank, main = distributed.rank(), distributed.is_main()
    mode = _parallel_mode(task, cfg, world)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if main:
        remove_stale_tmp(out)
    n = len(dataset)
    if n < 1:
        raise ValueError("train: the dataset is empty")
    params = list(task.trainable_parameters())
    if not params:
        raise ValueError("train: the task has no trainable parameters")
    if len({id(p) for p in params}) != len(params):
        raise ValueError("train: trainable_parameters() lists a parameter twice")
    for p in params:
        p.requires_grad_(True)
    device = params[0].device
    if cfg.grad_checkpointing and callable(getattr(task, "enable_gradient_checkpointing", None)):
        task.enable_gradient_checkpointing()

    step, cursor, losses, lrs, resumed_from = 0, 0, [], [], 0
    st = read_state(out) if resume else None
    if st is not None:
        tensors, meta = st
        if meta.get("version") != STATE_VERSION:
            raise ValueError(f"train: {out / STATE} has state version {meta.get('version')}; expected "
                             f"{STATE_VERSION}. Use a new output folder or turn resume off.")
        old = meta["train_config"]
        changed = [k for k in RESUME_FIXED if old.get(k) != getattr(cfg, k)]
        if changed:
            raise ValueError(f"train: cannot resume {out}: {', '.join(f'{k} was {old.get(k)!r}, now {getattr(cfg, k)!r}' for k in changed)}. "
                             "Use the same values, a new output folder, or resume off.")
        old_task = meta.get("task_config", {}).get("task")
        if old_task is not None and old_task != task.config().get("task"):
            raise ValueError(f"train: {out} holds a '{old_task}' run; this task is '{task.config().get('task')}'. "
                             "Use a new output folder.")
        # the full weights go in before any wrapper shards them (the state holds unsharded tensors)
        task.load_trainable_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})

    # one process: the task itself; a launch: DDP (branches, LoRAs) or FSDP2 (whole backbones) around it
    model, root = None, None
    if mode == "ddp":
        model = distributed.ddp(task, params)
    elif mode == "fsdp":
        root, units = task.fsdp_modules()
        model = distributed.fsdp(task, root, units)
        params = list(task.trainable_parameters())  # now DTensors, in the same order

    opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    opt = opt_cls(optimizer_groups(task, params, cfg.lr), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                  weight_decay=cfg.weight_decay)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    ema = _Ema(params, cfg.ema_decay) if cfg.ema_decay > 0 else None

    if st is not None:
        opt_sd = unflatten_optimizer(tensors, meta["optimizer"])
        if mode == "fsdp":  # full tensors from the file cut like each parameter's shard
            order = [p for g in opt.param_groups for p in g["params"]]
            for pid, state in opt_sd["state"].items():
                opt_sd["state"][pid] = {k: (distributed.shard_like(v, order[pid]) if isinstance(v, torch.Tensor)
                                            and v.shape == order[pid].shape else v) for k, v in state.items()}
        opt.load_state_dict(opt_sd)
        if meta.get("scaler") and scaler.is_enabled():
            scaler.load_state_dict(meta["scaler"])
        if ema is not None and "ema.0" in tensors:
            ema.shadow = [distributed.shard_like(tensors[f"ema.{i}"].to(device).float(), p.detach().float())
                          for i, p in enumerate(params)]
        _rng_restore(tensors, meta["rng"])
        step, cursor = int(meta["step"]), int(meta["cursor"])
        losses, lrs = list(meta["losses"]), list(meta["lrs"])
        resumed_from = step

    writer = None if callable(getattr(task, "save_weights", None)) else branch_writer(task)

    def current_sd() -> dict:
        """The weights a checkpoint holds, whole: under FSDP gathered from every rank (collective)."""
        if mode == "fsdp":
            return {k: distributed.full_tensor(v).clone() for k, v in root.state_dict().items()}
        return {k: v.detach().cpu().clone() for k, v in task.trainable_state_dict().items()}

    def write_current(path: Path, sd: dict) -> None:
        """Write the task's current weights (``sd``) atomically in the task's / branch's own format."""
        tmp = _tmp(path)
        if writer is None and callable(getattr(task, "save_weights", None)):
            task.save_weights(tmp, sd)
        elif writer is not None:
            writer(task.branch, tmp)
        else:
            default_save_weights(task, sd, tmp)
        _replace_atomic(tmp, path)

    def save(final: bool = False, rng=None) -> None:
        if not main and mode != "fsdp":
            return  # DDP ranks hold rank 0's weights: only rank 0 writes, and nothing needs gathering
        sd = current_sd()
        ot, om = flatten_optimizer(opt)
        if mode == "fsdp":
            ot = {k: distributed.full_tensor(v) for k, v in ot.items()}
        ema_sd, shadow = None, None
        if ema is not None:
            shadow = {f"ema.{i}": distributed.full_tensor(s) for i, s in enumerate(ema.shadow)}
            with ema.swapped(params):
                ema_sd = current_sd()
        if not main:
            return
        write_current(out / CHECKPOINT, sd)
        tensors = {f"model.{k}": v for k, v in sd.items()}
        tensors.update(ot)
        if ema is not None:
            tensors.update(shadow)
            with ema.swapped(params):
                write_current(out / EMA_CHECKPOINT, ema_sd)
        rt, rm = rng if rng is not None else _rng_capture()
        tensors.update(rt)
        meta = {"version": STATE_VERSION, "step": step, "cursor": cursor, "losses": losses, "lrs": lrs,
                "optimizer": om, "scaler": scaler.state_dict() if scaler.is_enabled() else None, "rng": rm,
                "train_config": cfg.to_dict(), "task_config": task.config(), "final": final,
                "world_size": world}
        _write_csv(out / LOSSES, losses, lrs)
        _write_curve(out / CURVE, losses)
        # the state goes last: resume trusts only it, and it is never ahead of the files above
        save_safetensors_atomic(tensors, out / STATE, metadata={"state": json.dumps(meta)})

    if main:
        _write_csv(out / LOSSES, losses, lrs)  # drops lines logged after the checkpoint being resumed

    # Micro-batch m of a step runs on rank m % world: the global batch (batch_size x grad_accum) and its order
    # are the one-process run's, whatever the world size, and so is a resume with another world size.
    mine = [m for m in range(cfg.grad_accum) if m % world == rank]
    loader_iter = None
    if cfg.num_workers > 0:
        sampler = _Batches(n, cfg.seed, cursor + rank * cfg.batch_size, cfg.batch_size,
                           stride=world * cfg.batch_size)
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate,
                                             num_workers=cfg.num_workers)
        loader_iter = iter(loader)

    def next_batch(start: int, micro: int):
        if loader_iter is not None:
            return next(loader_iter)
        return collate([dataset[i] for i in batch_indices(n, cfg.seed, start + micro * cfg.batch_size,
                                                          cfg.batch_size)])

    def interrupted_everywhere() -> bool:
        """A cancel on any rank stops every rank at the same step boundary (a launch cannot stop mid-step)."""
        try:
            runtime.check_interrupt()
            local = False
        except runtime.Interrupted:
            local = True
        return distributed.any_true(local)

    bar = runtime.progress(cfg.steps, desc) if main else None
    if bar is not None:
        bar.value = min(step, bar.total)
    t0, s0 = time.monotonic(), step
    mid_step, step_start = False, None
    cuda_rng = device.type == "cuda"
    _set_mode(task, True)
    try:
        while step < cfg.steps:
            if world > 1 and interrupted_everywhere():
                raise runtime.Interrupted("interrupted")
            # what a save must record if a cancel lands inside this step (before the optimizer update)
            step_start = (cursor, _rng_capture())
            mid_step = True
            lr = lr_at(cfg, step)
            for g in opt.param_groups:
                g["lr"] = lr * g.get("lr_scale", 1.0)
            opt.zero_grad(set_to_none=True)
            if callable(getattr(task, "set_step", None)):  # tasks whose loss alternates by step (Self-Forcing)
                task.set_step(step)
            total = 0.0
            for k, micro in enumerate(mine):
                batch = next_batch(cursor, micro)
                seed = micro_seed(cfg.seed, step, micro)
                torch.default_generator.manual_seed(seed)
                if cuda_rng:
                    torch.cuda.manual_seed(seed)  # this process's GPU only
                last = k == len(mine) - 1
                sync = contextlib.nullcontext() if (mode != "ddp" or last) else model.no_sync()
                with sync:
                    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                        gen = step_generator(cfg.seed, step, micro)
                        loss = task.loss(batch, gen) if model is None else model(batch, gen)
                    if not torch.isfinite(loss.detach()):
                        raise FloatingPointError(f"train: loss is {float(loss)} at step {step + 1}; lower lr "
                                                 "or use fp32/bf16 precision")
                    # DDP and FSDP average gradients over the ranks: scale by the world size so the sum over
                    # all micro-batches / grad_accum is the one-process gradient
                    scaled = loss / cfg.grad_accum if world == 1 else loss * (world / cfg.grad_accum)
                    scaler.scale(scaled).backward()
                total += float(loss.detach()) / cfg.grad_accum
            cursor += cfg.grad_accum * cfg.batch_size
            if world > 1:
                total = distributed.sum_float(total)
            if cfg.clip_norm > 0:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(params, cfg.clip_norm)
            scaler.step(opt)
            scaler.update()
            if ema is not None:
                ema.update(params)
            step += 1
            mid_step = False
            losses.append(total)
            lrs.append(lr)
            if main and (step % cfg.log_every == 0 or step == cfg.steps):
                with open(out / LOSSES, "a", newline="") as f:
                    f.write(f"{step},{total:.8g},{lr:.8g}\n")
            if on_step is not None:
                on_step(step, total, lr)
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.steps:
                save()
            if bar is not None:
                eta = (time.monotonic() - t0) / (step - s0) * (cfg.steps - step)
                text = f"step {step}/{cfg.steps} loss {total:.4f} ETA {runtime._fmt_seconds(eta)}"
                if world == 1:
                    bar.update(1, text=text)
                else:  # the cancel this finds is agreed on at the next step boundary
                    try:
                        bar.update(1, text=text)
                    except runtime.Interrupted:
                        runtime.request_interrupt()
    except runtime.Interrupted:
        if mid_step:  # roll the data cursor and RNG back to the start of the unfinished step
            cursor = step_start[0]
            opt.zero_grad(set_to_none=True)
            save(rng=step_start[1])
        else:
            save()
        raise
    finally:
        _set_mode(task, False)
        if bar is not None:
            bar.close()
    save(final=True)
    sd = current_sd()
    esd = None
    if ema is not None:
        with ema.swapped(params):
            esd = current_sd()
    if mode == "fsdp":
        distributed.fsdp_release(model)  # the trained model samples afterwards as an ordinary one
    return TrainResult(state_dict=sd, losses=list(losses), steps=step, checkpoint=out / CHECKPOINT,
                       ema_state_dict=esd, resumed_from=resumed_from, out_dir=out, curve=plot_losses(losses))


def _write_csv(path: Path, losses, lrs) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["step", "loss", "lr"])
    for i, (l, r) in enumerate(zip(losses, lrs)):
        w.writerow([i + 1, f"{l:.8g}", f"{r:.8g}"])
    write_bytes_atomic(path, buf.getvalue().encode())


def _write_curve(path: Path, losses) -> None:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(plot_losses(losses)).save(buf, format="PNG")
    write_bytes_atomic(path, buf.getvalue())
