"""Training nodes: a control branch (KineMask, InterDyn), a LoRA, or a whole tiny CogVideoX, headless.

They run inside a queued graph (OUTPUT_NODE: queueing through the API is enough) and write to
``models/interplay/<output_name>/`` (the first ``interplay`` model folder, so the trained file shows up in the
branch loaders as ``interplay/<output_name>/checkpoint.safetensors``): checkpoint.safetensors (+ _ema), the
resumable state.safetensors, losses.csv and loss_curve.png. Re-queueing with the same output_name and
``resume`` on continues from the last checkpoint (or returns at once when the run is complete). Cancel stops
after the current step with a checkpoint saved; ComfyUI then reports the prompt as interrupted.

Each node returns the trained weights as a pack type so the same graph can sample with them right away, and
the loss curve as an IMAGE.
"""
from __future__ import annotations

import copy
import dataclasses
import inspect
import json
from pathlib import Path

from ..models import runtime
from ..models.backbones.base import cast


def _branch_tasks() -> list[str]:
    from ..models.training.config import branch_tasks

    return list(branch_tasks())


# ------------------------------------------------------------------------------------------- helpers
def resolve_dataset(node: str, dataset_dir: str) -> Path:
    """A name under ComfyUI's input/ or output/ folders, or an absolute folder inside the pack's folders
    (runtime.confined_path)."""
    if not dataset_dir or not dataset_dir.strip():
        raise ValueError(f"{node}: 'dataset_dir' is empty; give a folder of clips in the sandbox format "
                         "(e.g. one written by the Sandbox nodes or `interplay sandbox make`)")
    p = runtime.confined_path(dataset_dir, node=node, input_name="dataset_dir", search=("input", "output"))
    if p.is_dir():
        return p
    where = str(p) if Path(dataset_dir.strip()).expanduser().is_absolute() else \
        f"{runtime.input_directory()} and {runtime.output_directory()}"
    raise FileNotFoundError(f"{node}: dataset folder {dataset_dir!r} not found; searched {where}")


def output_folder(node: str, output_name: str) -> Path:
    """models/interplay/<output_name>; the name may have sub-folders but never leave the folder."""
    name = (output_name or "").strip()
    if not name:
        raise ValueError(f"{node}: 'output_name' is empty; give a run name such as 'kinemask_push_s1'")
    base = runtime.model_folders("interplay")[0].resolve()
    out = (base / name).resolve()
    if base not in out.parents:
        raise ValueError(f"{node}: 'output_name' {output_name!r} points outside {base}; use a plain name")
    return out


def parse_extra(node: str, text: str) -> tuple[dict, dict, dict]:
    """The ``extra`` JSON input: {"v": 1, "options": {...task options}, "train": {...TrainConfig fields},
    "dataset": {"frames": F, "size": [H, W]}} -> (options, train, dataset)."""
    if not text or not text.strip():
        return {}, {}, {}
    try:
        d = json.loads(text)
    except json.JSONDecodeError as ex:
        raise ValueError(f"{node}: 'extra' is not JSON ({ex}); expected "
                         '{"v": 1, "options": {}, "train": {}, "dataset": {}}') from ex
    if not isinstance(d, dict) or d.get("v") != 1:
        raise ValueError(f'{node}: \'extra\' must be an object with "v": 1; got {text[:120]!r}')
    bad = sorted(set(d) - {"v", "options", "train", "dataset"})
    if bad:
        raise ValueError(f"{node}: 'extra' has unknown key(s) {', '.join(bad)}; expected options, train, dataset")
    parts = [d.get(k, {}) for k in ("options", "train", "dataset")]
    for k, v in zip(("options", "train", "dataset"), parts):
        if not isinstance(v, dict):
            raise ValueError(f"{node}: 'extra'.{k} must be an object; got {v!r}")
    return tuple(dict(p) for p in parts)


def _train_config(node: str, base: dict, overrides: dict):
    from ..models.training.trainer import TrainConfig

    try:
        return TrainConfig.from_dict({**base, **overrides}, where=f"{node} 'extra'.train")
    except (ValueError, TypeError) as ex:
        raise ValueError(f"{node}: {ex}") from ex


def _dataset(node: str, root: Path, frames: int, ds_extra: dict):
    from ..models.sandbox.dataset import SandboxDataset

    bad = sorted(set(ds_extra) - {"frames", "size"})
    if bad:
        raise ValueError(f"{node}: 'extra'.dataset has unknown key(s) {', '.join(bad)}; expected frames, size")
    try:
        return SandboxDataset(root, frames=ds_extra.get("frames", frames or None), size=ds_extra.get("size"))
    except ValueError as ex:
        raise ValueError(f"{node}: {ex} (in 'extra'.dataset or the frames input)") from ex


def _check_options(node: str, task: str, opts: dict) -> None:
    from ..models.training.config import _check_options

    try:
        _check_options(task, opts, node)
    except ValueError as ex:
        raise ValueError(f"{ex} (in 'extra'.options)") from ex


def _run(task, dataset, cfg, out: Path, resume: bool, desc: str):
    from ..models.training.trainer import curve_image, train

    res = train(task, dataset, cfg, out, resume=resume, desc=desc)
    last = f"{res.losses[-1]:.5f}" if res.losses else "n/a"
    text = (f"{desc}: {res.steps} steps (resumed from {res.resumed_from}), final loss {last}, "
            f"saved {res.checkpoint}")
    return res, curve_image(res.losses), text


TRAIN_INPUTS = {
    "steps": ("INT", {"default": 1000, "min": 1, "max": 1_000_000,
                      "tooltip": "Optimizer steps (KineMask: 1000 per stage)."}),
    "lr": ("FLOAT", {"default": 1e-4, "min": 1e-8, "max": 1.0, "step": 1e-6,
                     "tooltip": "Learning rate (KineMask: 1e-4 AdamW; InterDyn: 1e-5 Adam)."}),
    "batch_size": ("INT", {"default": 1, "min": 1, "max": 256, "tooltip": "Clips per micro-batch."}),
    "grad_accum": ("INT", {"default": 1, "min": 1, "max": 1024,
                           "tooltip": "Micro-batches per optimizer step (effective batch = batch_size x this)."}),
    "precision": (["fp32", "bf16", "fp16"], {"default": "bf16", "tooltip": "Autocast dtype of the compute; "
                  "trainable weights stay fp32. Use fp32 on CPU."}),
    "seed": ("INT", {"default": 0, "min": 0, "max": 2 ** 31 - 1,
                     "tooltip": "Data order and noise; the same seed reproduces a run exactly."}),
    "checkpoint_every": ("INT", {"default": 250, "min": 0, "max": 1_000_000,
                                 "tooltip": "Save every N steps (0: only at the end and on cancel)."}),
    "resume": ("BOOLEAN", {"default": True, "tooltip": "Continue from the output folder's last checkpoint "
                           "if there is one; off starts over (overwriting it)."}),
}
COMMON_TAIL = {
    "extra": ("STRING", {"default": "", "multiline": True, "tooltip": 'Optional JSON {"v": 1, "options": {task '
              'options}, "train": {TrainConfig fields: betas, weight_decay, schedule, warmup, clip_norm, '
              'ema_decay, grad_checkpointing, ...}, "dataset": {"frames": F, "size": [H, W]}}.'}),
}


def _base_train(steps, lr, batch_size, grad_accum, precision, seed, checkpoint_every, **defaults) -> dict:
    return dict(defaults, steps=steps, lr=lr, batch_size=batch_size, grad_accum=grad_accum, precision=precision,
                seed=seed, checkpoint_every=checkpoint_every)


def _common_inputs(name_default: str) -> dict:
    return {
        "backbone": ("INTERPLAY_BACKBONE", {"tooltip": "The frozen backbone (its weights are never changed)."}),
        "dataset_dir": ("STRING", {"default": "sandbox/push", "interplay_path": "folder",
                                   "tooltip": "Folder of clips in the sandbox format: relative to ComfyUI's input/ "
                                   "or output/ folder, or absolute inside its input, output, temp or model "
                                   "folders."}),
        "output_name": ("STRING", {"default": name_default, "interplay_path": "save",
                                   "tooltip": "Run folder under models/interplay/; the same name resumes."}),
        "frames": ("INT", {"default": 0, "min": 0, "max": 1024, "tooltip": "Use the first F frames of each clip "
                       "(0: all; CogVideoX needs 8k+1, e.g. 9, 17, 49)."}),
    }


# --------------------------------------------------------------------------------------------- nodes
class InterplayTrainControlBranch:
    DESCRIPTION = ("Train a control branch on a frozen backbone from a sandbox-format dataset: KineMask "
                   "(CogVideoX, velocity masks; stage 1 all frames, stage 2 keeps an early-biased prefix) or "
                   "InterDyn (SVD, driver masks, 5% image drop). Checkpoints every N steps to "
                   "models/interplay/<output_name>/ and resumes from there; cancel saves before stopping. "
                   "Outputs the trained branch for sampling in the same graph and the loss curve.")
    CATEGORY = "Interplay/training"
    FUNCTION = "train"
    OUTPUT_NODE = True
    RETURN_TYPES = ("INTERPLAY_BRANCH", "IMAGE", "STRING")
    RETURN_NAMES = ("branch", "loss_curve", "checkpoint")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            **_common_inputs("kinemask_branch"),
            "task": (_branch_tasks(), {"default": "kinemask_branch", "tooltip": "kinemask_branch needs a "
                     "CogVideoX I2V backbone, interdyn_branch an SVD backbone."}),
            "stage": ("INT", {"default": 1, "min": 1, "max": 2, "tooltip": "KineMask stage: 1 = velocity mask on "
                              "all frames; 2 = prefix dropout (connect the stage-1 branch)."}),
            **TRAIN_INPUTS,
        }, "optional": {
            "branch": ("INTERPLAY_BRANCH", {"tooltip": "Continue this branch (e.g. stage 2 from stage 1); a new "
                       "zero-initialised branch otherwise. A resumable state in the output folder wins."}),
            **COMMON_TAIL,
        }}

    def train(self, backbone, dataset_dir, output_name, frames, task, stage, steps, lr, batch_size, grad_accum,
              precision, seed, checkpoint_every, resume, branch=None, extra=""):
        from ..models.control import registry
        from ..models.training.config import build_task, task_family

        node = "Train Control Branch"
        data, out = resolve_dataset(node, dataset_dir), output_folder(node, output_name)  # paths first
        fam = task_family(task)
        if backbone.family != fam:
            raise ValueError(f"{node}: task {task!r} trains on a {fam} backbone; the connected backbone "
                             f"is {backbone.family}. Load a {fam} model or pick another task.")
        opts, tr, dse = parse_extra(node, extra)
        spec = registry.by_task(task)
        if "stage" in inspect.signature(spec.task_class().__init__).parameters:
            opts.setdefault("stage", stage)  # the node's stage widget, for tasks with stages
        _check_options(node, task, opts)
        defaults = dict(spec.train_defaults)
        cfg = _train_config(node, _base_train(steps, lr, batch_size, grad_accum, precision, seed,
                                              checkpoint_every, **defaults), tr)
        ds = _dataset(node, data, frames, dse)
        if branch is not None:  # never train the input object in place: other nodes may hold it
            branch = dataclasses.replace(branch, module=copy.deepcopy(branch.module), config=dict(branch.config))
        t = build_task(task, backbone, opts, branch=branch, seed=cfg.seed)
        res, curve, text = _run(t, ds, cfg, out, resume, task)
        trained = t.output() if hasattr(t, "output") else t.branch
        cast(trained.module, backbone.device, backbone.dtype).eval().requires_grad_(False)
        trained.source = str(res.checkpoint)
        return {"ui": {"text": [text]}, "result": (trained, curve, str(res.checkpoint))}


class InterplayTrainLora:
    DESCRIPTION = ("Train a LoRA (peft, on the attention projections) on a frozen CogVideoX I2V backbone from a "
                   "sandbox-format dataset with the backbone's own v-prediction objective. Saves diffusers-format "
                   "LoRA weights to models/interplay/<output_name>/ (resumable) and outputs the backbone with the "
                   "LoRA applied (the input backbone is not changed) plus the loss curve.")
    CATEGORY = "Interplay/training"
    FUNCTION = "train"
    OUTPUT_NODE = True
    RETURN_TYPES = ("INTERPLAY_BACKBONE", "IMAGE", "STRING")
    RETURN_NAMES = ("backbone", "loss_curve", "checkpoint")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            **_common_inputs("lora"),
            "rank": ("INT", {"default": 16, "min": 1, "max": 512, "tooltip": "LoRA rank."}),
            "alpha": ("FLOAT", {"default": 16.0, "min": 0.0, "max": 4096.0, "tooltip": "LoRA alpha (scale = "
                      "alpha / rank)."}),
            "target_modules": ("STRING", {"default": "to_q,to_k,to_v,to_out.0", "tooltip": "Comma-separated "
                               "module names the LoRA wraps."}),
            **TRAIN_INPUTS,
        }, "optional": dict(COMMON_TAIL)}

    def train(self, backbone, dataset_dir, output_name, frames, rank, alpha, target_modules, steps, lr,
              batch_size, grad_accum, precision, seed, checkpoint_every, resume, extra=""):
        from ..models.training.config import build_task

        node = "Train LoRA"
        data, out = resolve_dataset(node, dataset_dir), output_folder(node, output_name)  # paths first
        if backbone.family != "cogvideox":
            raise ValueError(f"{node}: LoRA training supports CogVideoX backbones; got {backbone.family}")
        targets = [t.strip() for t in target_modules.split(",") if t.strip()]
        if not targets:
            raise ValueError(f"{node}: 'target_modules' is empty; e.g. to_q,to_k,to_v,to_out.0")
        opts, tr, dse = parse_extra(node, extra)
        _check_options(node, "lora", opts)
        opts.update(rank=rank, alpha=alpha, target_modules=targets)
        cfg = _train_config(node, _base_train(steps, lr, batch_size, grad_accum, precision, seed,
                                              checkpoint_every), tr)
        ds = _dataset(node, data, frames, dse)
        t = build_task("lora", backbone, opts, seed=cfg.seed)
        res, curve, text = _run(t, ds, cfg, out, resume, "lora")
        from ..models.training.lora import place_adapter

        for p in t.trainable_parameters():
            p.requires_grad_(False)
        place_adapter(t.denoiser, t.adapter, backbone.dtype)  # the LoRA only: the frozen weights are shared
        t.denoiser.eval()
        bb = t.backbone.replace(loras=tuple(backbone.loras) + ((str(res.checkpoint), 1.0),))
        return {"ui": {"text": [text]}, "result": (bb, curve, str(res.checkpoint))}


class InterplayTrainBackbone:
    DESCRIPTION = ("Train a whole CogVideoX image-to-video transformer (e.g. a tiny sandbox model from a random "
                   "or demo init) from a sandbox-format dataset with the v-prediction objective. The input "
                   "backbone is copied, never changed. Saves a single transformer file (config in its metadata, "
                   "loadable by the CogVideoX loader) to models/interplay/<output_name>/, resumable; outputs the "
                   "trained backbone and the loss curve.")
    CATEGORY = "Interplay/training"
    FUNCTION = "train"
    OUTPUT_NODE = True
    RETURN_TYPES = ("INTERPLAY_BACKBONE", "IMAGE", "STRING")
    RETURN_NAMES = ("backbone", "loss_curve", "checkpoint")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {**_common_inputs("cogvideox_backbone"), **TRAIN_INPUTS},
                "optional": dict(COMMON_TAIL)}

    def train(self, backbone, dataset_dir, output_name, frames, steps, lr, batch_size, grad_accum, precision,
              seed, checkpoint_every, resume, extra=""):
        from ..models.training.config import build_task

        node = "Train Backbone"
        data, out = resolve_dataset(node, dataset_dir), output_folder(node, output_name)  # paths first
        if backbone.family != "cogvideox":
            raise ValueError(f"{node}: backbone training supports CogVideoX; got {backbone.family}")
        if backbone.loras:
            # the saved transformer would carry peft's layer names, which no loader reads
            raise ValueError(f"{node}: the backbone has LoRAs applied ({', '.join(n for n, _ in backbone.loras)}); "
                             "connect the loader's backbone without them, or train a LoRA with Train LoRA instead")
        opts, tr, dse = parse_extra(node, extra)
        _check_options(node, "cogvideox_backbone", opts)
        cfg = _train_config(node, _base_train(steps, lr, batch_size, grad_accum, precision, seed,
                                              checkpoint_every), tr)
        ds = _dataset(node, data, frames, dse)
        bb = backbone.replace(denoiser=copy.deepcopy(backbone.denoiser))
        t = build_task("cogvideox_backbone", bb, opts, seed=cfg.seed)
        res, curve, text = _run(t, ds, cfg, out, resume, "cogvideox_backbone")
        bb.denoiser.eval().requires_grad_(False)
        return {"ui": {"text": [text]}, "result": (bb, curve, str(res.checkpoint))}


NODE_CLASS_MAPPINGS = {
    "InterplayTrainControlBranch": InterplayTrainControlBranch,
    "InterplayTrainLora": InterplayTrainLora,
    "InterplayTrainBackbone": InterplayTrainBackbone,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "InterplayTrainControlBranch": "Train Control Branch (Interplay)",
    "InterplayTrainLora": "Train LoRA (Interplay)",
    "InterplayTrainBackbone": "Train Backbone (Interplay)",
}
