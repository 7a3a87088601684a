"""Training run configs (TOML or JSON) and the builders shared by `interplay train` and the training node.

    task = "kinemask_branch"        # kinemask_branch | cogvideox_backbone | lora | matrix_lora | interdyn_branch |
                                    # gamecraft_camera | wan_backbone | self_forcing
    out_dir = "runs/kinemask-s1"    # relative paths are relative to the config file
    resume = true

    [backbone]                      # family follows from the task
    source = "models/diffusers/CogVideoX-5b-I2V"   # a diffusers folder, or a table of single files:
    # source = { transformer = "...", vae = "...", text_encoder = "...", tokenizer = "..." }
    # random = "tiny"               # instead of source: a random-weight backbone (tests, from-scratch demo)
    dtype = "auto"                  # auto | bf16 | fp16 | fp32 (train whole backbones in fp32)

    [dataset]
    root = "data/push"              # a folder of clips in the sandbox format
    frames = 9                      # optional: first F frames of every clip
    size = [64, 64]                 # optional: resize (H, W)

    [options]                       # the task's own arguments, e.g. for kinemask_branch:
    stage = 2
    branch = "runs/kinemask-s1/checkpoint.safetensors"   # continue a branch (stage 2 after stage 1)
    # lora: rank, alpha, target_modules, dropout; lora_layers = [7, 11, 12] (blocks the LoRA wraps, default all);
    # train_modules = ["patch_embed.proj"] (trained in full beside it) at train_modules_lr_scale x lr

    [train]                         # TrainConfig fields
    steps = 1000
    lr = 1e-4
    betas = [0.9, 0.95]
"""
from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path

from .trainer import TrainConfig

# tasks that train no control branch; branch tasks come from the branch registry (control/<kind>.py)
BASE_TASKS = {"cogvideox_backbone": "cogvideox", "lora": "cogvideox", "wan_backbone": "wan", "matrix_lora": "cogvideox",
              "self_forcing": "wan"}
TOP_KEYS = ("task", "out_dir", "resume", "backbone", "dataset", "options", "train")
BACKBONE_KEYS = ("source", "random", "dtype", "device", "seed", "family")
DATASET_KEYS = ("root", "frames", "size", "hoi")
LORA_KEYS = ("rank", "alpha", "target_modules", "dropout", "lora_layers", "train_modules", "train_modules_lr_scale")


def tasks() -> tuple[str, ...]:
    """Every training task: the registry's branch tasks, then the whole-backbone and LoRA tasks."""
    from ..control import registry

    return tuple(s.task for s in registry.kinds() if s.task) + tuple(BASE_TASKS)


def branch_tasks() -> tuple[str, ...]:
    from ..control import registry

    return tuple(s.task for s in registry.kinds() if s.task)


def task_family(task: str) -> str:
    from ..control import registry

    spec = registry.by_task(task)
    if spec is not None:
        return spec.family
    if task in BASE_TASKS:
        return BASE_TASKS[task]
    raise ValueError(f"unknown training task {task!r}; expected one of {', '.join(tasks())}")


@dataclass
class RunConfig:
    task: str
    out_dir: Path
    backbone: dict
    dataset: dict
    options: dict = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    resume: bool = True
    where: str = "config"


def _err(where: str, key: str, msg: str) -> ValueError:
    return ValueError(f"{where}: '{key}' {msg}")


def _check_keys(d: dict, allowed, where: str, section: str) -> None:
    if not isinstance(d, dict):
        raise ValueError(f"{where}: [{section}] must be a table/object; got {type(d).__name__}")
    bad = sorted(set(d) - set(allowed))
    if bad:
        raise ValueError(f"{where}: unknown key(s) {', '.join(repr(b) for b in bad)} in "
                         f"{'[' + section + ']' if section else 'the top level'}; expected some of {', '.join(allowed)}")


def read_config_file(path) -> dict:
    """Parse a .toml or .json file into a dict (errors name the file and the line)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training config not found: {path} (searched {path.resolve()})")
    text = path.read_text()
    if path.suffix.lower() == ".toml":
        import tomllib

        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as ex:
            raise ValueError(f"{path}: invalid TOML ({ex})") from ex
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as ex:
            raise ValueError(f"{path}: invalid JSON ({ex})") from ex
    raise ValueError(f"{path}: config must be .toml or .json; got {path.suffix!r}")


def _resolve(p, base: Path | None):
    p = Path(str(p)).expanduser()
    return p if p.is_absolute() or base is None else (base / p)


def parse_config(d: dict, base_dir=None, where: str = "config") -> RunConfig:
    """Validate a config dict; relative paths resolve against ``base_dir`` (the config file's folder)."""
    base = Path(base_dir) if base_dir is not None else None
    _check_keys(d, TOP_KEYS, where, "")
    task = d.get("task")
    if task not in tasks():
        raise _err(where, "task", f"must be one of {', '.join(tasks())}; got {task!r}")
    if "out_dir" not in d:
        raise _err(where, "out_dir", "is required (the folder for checkpoints; a rerun resumes from it)")
    bbd = dict(d.get("backbone", {}))
    _check_keys(bbd, BACKBONE_KEYS, where, "backbone")
    if ("source" in bbd) == ("random" in bbd):
        raise _err(where, "backbone.source", "or 'backbone.random' must be given (exactly one)")
    fam = bbd.get("family", task_family(task))
    if fam != task_family(task):
        raise _err(where, "backbone.family", f"must be {task_family(task)!r} for task {task!r}; got {fam!r}")
    bbd["family"] = fam
    if "source" in bbd:
        src = bbd["source"]
        if isinstance(src, dict):
            _check_keys(src, ("transformer", "vae", "text_encoder", "tokenizer"), where, "backbone.source")
            bbd["source"] = {k: (str(_resolve(v, base)) if v else None) for k, v in src.items()}
        else:
            bbd["source"] = str(_resolve(src, base))
    ds = dict(d.get("dataset", {}))
    _check_keys(ds, DATASET_KEYS, where, "dataset")
    if "root" not in ds:
        raise _err(where, "dataset.root", "is required (a folder of clips in the sandbox format)")
    ds["root"] = str(_resolve(ds["root"], base))
    if "size" in ds and (not isinstance(ds["size"], (list, tuple)) or len(ds["size"]) != 2):
        raise _err(where, "dataset.size", f"must be [H, W]; got {ds['size']!r}")
    opts = dict(d.get("options", {}))
    if not isinstance(opts, dict):
        raise _err(where, "options", "must be a table")
    if "branch" in opts and opts["branch"]:
        opts["branch"] = str(_resolve(opts["branch"], base))
    _check_options(task, opts, where)
    tr = d.get("train", {})
    if not isinstance(tr, dict):
        raise _err(where, "train", "must be a table")
    try:
        tcfg = TrainConfig.from_dict(dict(tr), where=f"{where} [train]")
    except TypeError as ex:
        raise ValueError(f"{where} [train]: {ex}") from ex
    resume = d.get("resume", True)
    if not isinstance(resume, bool):
        raise _err(where, "resume", f"must be true or false; got {resume!r}")
    return RunConfig(task=task, out_dir=_resolve(d["out_dir"], base), backbone=bbd, dataset=ds, options=opts,
                     train=tcfg, resume=resume, where=where)


def load_config(path) -> RunConfig:
    path = Path(path)
    return parse_config(read_config_file(path), base_dir=path.parent, where=str(path))


def _task_class(task: str):
    from ..control import registry

    spec = registry.by_task(task)
    if spec is not None:
        return spec.task_class()
    if task == "wan_backbone":
        from .wan import WanBackboneTask

        return WanBackboneTask
    if task == "matrix_lora":
        from .matrix import MatrixTask

        return MatrixTask
    if task == "self_forcing":
        from .self_forcing import SelfForcingTask

        return SelfForcingTask
    from .cogvideox import CogVideoXBackboneTask

    return CogVideoXBackboneTask  # cogvideox_backbone, and the LoRA's base objective


def _check_options(task: str, opts: dict, where: str) -> None:
    params = inspect.signature(_task_class(task).__init__).parameters
    # "student" is a loaded bundle (Python API only: a config names no second model file)
    allowed = {n for n, p in params.items() if p.kind == p.KEYWORD_ONLY} - {"train", "generator", "student"}
    if task in branch_tasks():
        allowed.add("branch")
    if task == "lora":
        allowed |= set(LORA_KEYS)
    bad = sorted(set(opts) - allowed)
    if bad:
        raise ValueError(f"{where}: unknown option(s) {', '.join(repr(b) for b in bad)} in [options] for task "
                         f"{task!r}; expected some of {', '.join(sorted(allowed))}")


# -------------------------------------------------------------------------------------------- builders
def load_backbone(bbd: dict):
    """The Backbone a run trains on (family from the task)."""
    import torch

    fam = bbd["family"]
    dtype = bbd.get("dtype", "auto")
    device = bbd.get("device")
    if fam == "cogvideox":
        from ..backbones import cogvideox as mod

        if "random" in bbd:
            from .. import runtime

            dev = torch.device(device) if device else runtime.compute_device()
            return mod.random_backbone(bbd["random"], dtype=runtime.parse_dtype(dtype, dev), device=dev,
                                       seed=int(bbd.get("seed", 0)))
        return mod.load_cogvideox(bbd["source"], dtype=dtype, device=device)
    if fam == "wan":
        from ..backbones import wan as mod

        if "random" in bbd:  # "tiny" (a tiny Wan2.2 I2V-A14B), or a Wan kind name (its tiny random model)
            from .. import runtime

            dev = torch.device(device) if device else runtime.compute_device()
            kind = "wan2.2-i2v-a14b" if bbd["random"] == "tiny" else str(bbd["random"])
            return mod.random_backbone(kind, "tiny", dtype=runtime.parse_dtype(dtype, dev), device=dev,
                                       seed=int(bbd.get("seed", 0)))
        return mod.load_wan(bbd["source"], dtype=dtype, device=device)
    from ..backbones import svd as mod

    if "random" in bbd:
        from .. import runtime

        dev = torch.device(device) if device else runtime.compute_device()
        return mod.random_backbone(bbd["random"], dtype=runtime.parse_dtype(dtype, dev), device=dev,
                                   seed=int(bbd.get("seed", 0)))
    return mod.load_svd(bbd["source"], dtype=dtype, device=device)


def dataset_options(task: str | None) -> dict:
    """What a task needs from the sandbox reader beyond frames (its class's DATASET_OPTIONS, e.g. PAM's
    {"hoi": True}: render the hand-object clips' condition videos)."""
    return dict(getattr(_task_class(task), "DATASET_OPTIONS", {})) if task else {}


def load_dataset(ds: dict, task: str | None = None):
    from ..sandbox.dataset import SandboxDataset

    opts = {**dataset_options(task), **{k: ds[k] for k in ("hoi",) if k in ds}}
    return SandboxDataset(ds["root"], frames=ds.get("frames"), size=ds.get("size"), **opts)  # it checks them by name


def load_branch_file(task: str, path):
    from ..control import registry

    return registry.load(path, kind=registry.by_task(task).kind)


def build_task(task: str, backbone, options: dict, branch=None, seed: int = 0):
    """A Task for ``task`` on ``backbone``; ``branch`` (a ControlBranch) or options['branch'] (a file) to continue.
    New trainable weights (a new branch, a LoRA) are drawn from the run seed's init generator, so the same seed
    gives the same run whatever the global RNG went through."""
    from ..backbones.base import init_generator

    opts = dict(options)
    path = opts.pop("branch", None)
    gen = init_generator(seed)
    if task in branch_tasks():
        if branch is None and path:
            branch = load_branch_file(task, path)
        return _task_class(task)(backbone, branch, generator=gen, **opts)
    if task == "matrix_lora":
        from .matrix_wan import matrix_task

        return matrix_task(backbone, **opts)  # CogVideoX or Wan by the backbone's family
    if task in ("cogvideox_backbone", "wan_backbone", "self_forcing"):
        return _task_class(task)(backbone, **opts)
    from .lora import LoraTask

    lora = {k: opts.pop(k) for k in LORA_KEYS if k in opts}
    for k, eg in (("lora_layers", "[7, 11, 12]"), ("train_modules", '["patch_embed.proj"]')):
        if k in lora and not isinstance(lora[k], (list, tuple)):  # a bare string or number is a slip
            raise ValueError(f"[options] {k} must be a list, e.g. {eg}; got {lora[k]!r}")
    if "target_modules" in lora:
        lora["target_modules"] = tuple(lora["target_modules"])
    base_cls = _task_class("lora")
    return LoraTask(backbone, lambda bb: base_cls(bb, train=False, **opts), generator=gen, **lora)


def run(rc: RunConfig, on_step=None):
    """Load, build, train. Returns (TrainResult, task)."""
    from .. import distributed
    from .trainer import train

    distributed.init()  # before loading: under a launch each process takes its own GPU
    bb = load_backbone(rc.backbone)
    ds = load_dataset(rc.dataset, rc.task)
    task = build_task(rc.task, bb, rc.options, seed=rc.train.seed)
    res = train(task, ds, rc.train, rc.out_dir, on_step=on_step, resume=rc.resume, desc=rc.task)
    return res, task
