"""SAM2 / SAM2.1: load from safetensors, segment an image from clicks/boxes, propagate through a video.

Uses the ``sam2`` package (facebookresearch/sam2, an optional dependency) for the architecture and the
predictors; this module only adds safe loading, one in-memory video path and plain-tensor interfaces:

- configs by name (``sam2.1_hiera_t`` ... ``sam2_hiera_l``, the package's own YAML files) or a YAML path whose
  every ``_target_`` is one of SAM2's own classes (nothing else in a config file is ever called);
- weights only from ``.safetensors`` whose keys and shapes must match the config (mismatches are listed);
  official ``.pt`` checkpoints go through ``convert_sam2_checkpoint`` (``torch.load(weights_only=True)``);
- one model (the package's ``SAM2VideoPredictor``, a ``SAM2Base``) serves both the image predictor and
  video propagation; frames are handed over as tensors, never written to lossy JPEGs.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import runtime

# Name -> the YAML inside the sam2 package (the official release names, without ".yaml").
CONFIGS = OrderedDict(
    (name, f"configs/{'sam2.1' if name.startswith('sam2.1') else 'sam2'}/{name}.yaml")
    for name in ("sam2.1_hiera_t", "sam2.1_hiera_s", "sam2.1_hiera_b+", "sam2.1_hiera_l",
                 "sam2_hiera_t", "sam2_hiera_s", "sam2_hiera_b+", "sam2_hiera_l"))

IMG_MEAN = (0.485, 0.456, 0.406)
IMG_STD = (0.229, 0.224, 0.225)

# The video predictor's demo settings, minus hole filling (fill_hole_area > 0 needs the optional CUDA
# extension sam2._C, which pip installs usually lack; see facebookresearch/sam2#131).
_OVERRIDES = {
    "sam_mask_decoder_extra_args": {"dynamic_multimask_via_stability": True,
                                    "dynamic_multimask_stability_delta": 0.05,
                                    "dynamic_multimask_stability_thresh": 0.98},
    "binarize_mask_from_pts_for_mem_enc": True,
    "fill_hole_area": 0,
}


def _sam2_package():
    try:
        import sam2  # noqa: F401
        from hydra.utils import instantiate  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError("SAM2 nodes need the `sam2` package (facebookresearch/sam2): pip install sam2 "
                          f"(import failed: {e})") from e
    import sam2

    return Path(sam2.__path__[0])


def config_names() -> list[str]:
    return list(CONFIGS)


def resolve_config(config: str | os.PathLike) -> Path:
    """A config name from ``CONFIGS`` (".yaml" optional) or a path to a SAM2 model YAML."""
    name = str(config)
    key = name[:-5] if name.endswith(".yaml") else name
    if key in CONFIGS:
        return _sam2_package() / CONFIGS[key]
    p = Path(name).expanduser()
    if p.suffix in (".yaml", ".yml") and p.is_file():
        return p
    raise ValueError(f"`config`: unknown SAM2 config {name!r}; allowed: {', '.join(CONFIGS)}, or the path of a "
                     "SAM2 model .yaml file")


_PREDICTOR = "sam2.sam2_video_predictor.SAM2VideoPredictor"


def _targets(node, where: str = "model"):
    """(path, value) of every ``_target_`` at any depth of a plain (resolved) config container."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "_target_":
                yield where, v
            yield from _targets(v, f"{where}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _targets(v, f"{where}[{i}]")


def allowed_targets() -> frozenset:
    """The classes a SAM2 config may build: every ``_target_`` of the package's own model configs (the CONFIGS
    files) plus the video predictor. Hydra calls whatever a ``_target_`` names, so nothing else may appear."""
    global _ALLOWED
    if _ALLOWED is None:
        from omegaconf import OmegaConf

        found = {_PREDICTOR}
        for rel in CONFIGS.values():
            cfg = OmegaConf.to_container(OmegaConf.load(_sam2_package() / rel), resolve=False)
            found.update(str(v) for _, v in _targets(cfg))
        _ALLOWED = frozenset(found)
    return _ALLOWED


_ALLOWED: frozenset | None = None


def _safe_model_config(path: Path, config) -> dict:
    """The ``model`` section of a SAM2 YAML as a plain dict, refused by name when any ``_target_`` (at any depth)
    is not a SAM2 class or a value would be interpolated again: no code from a config file runs."""
    from omegaconf import OmegaConf

    try:
        cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except Exception as ex:  # YAML syntax, a failing interpolation: the file is not a usable config
        raise ValueError(f"`config`: {path} is not a readable SAM2 model config ({type(ex).__name__}: {ex})") from ex
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), dict):
        raise ValueError(f"`config`: {config} has no `model` section; is it a SAM2 model config?")
    model = cfg["model"]
    allowed = allowed_targets()
    bad = [(w, v) for w, v in _targets(model) if str(v) not in allowed and w != "model"]
    if bad:
        w, v = bad[0]
        raise ValueError(f"`config`: {path.name} asks to build {v!r} at {w}; a SAM2 config may only name SAM2's own "
                         f"classes (those of the package's configs, e.g. sam2.modeling.backbones.hieradet.Hiera). "
                         "Refused: a config file never runs other code. Use a config shipped with sam2 (or one "
                         "written by write_tiny_config) instead.")
    for k in ("_args_", "_partial_", "_convert_", "_recursive_"):
        if any(k in d for d in _dicts(model)):
            raise ValueError(f"`config`: {path.name} sets hydra's {k}, which SAM2 configs never use; refused")
    text = [v for v in _strings(model) if "${" in v]
    if text:
        raise ValueError(f"`config`: {path.name} holds an interpolation {text[0]!r} after resolving; refused")
    return model


def _dicts(node):
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from _dicts(v)
    elif isinstance(node, list):
        for v in node:
            yield from _dicts(v)


def _strings(node):
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for v in node.values():
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)


def build_model(config: str | os.PathLike, image_size: int | None = None) -> torch.nn.Module:
    """Instantiate the (random-init) SAM2 video predictor of a config, on CPU in eval mode.

    The config is one shipped with the sam2 package or a YAML whose every ``_target_`` is one of SAM2's own
    classes (:func:`allowed_targets`); anything else is refused before hydra sees it.
    ``image_size`` overrides the model's input resolution (1024 in every release); tests use a small one.
    """
    _sam2_package()
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"model": _safe_model_config(resolve_config(config), config)})
    cfg.model._target_ = _PREDICTOR
    for k, v in _OVERRIDES.items():
        cfg.model[k] = v
    if image_size is not None:
        if image_size % 32:
            raise ValueError(f"image_size must be a multiple of 32; got {image_size}")
        cfg.model.image_size = int(image_size)
    model = instantiate(cfg.model, _recursive_=True)
    model.memory_attention.register_forward_pre_hook(_memory_to_query_dtype, with_kwargs=True)
    return model.eval()


def _memory_to_query_dtype(module, args, kwargs):
    """The video predictor stores mask memories as bfloat16 (it expects CUDA autocast); outside autocast a
    float32 model would then multiply bfloat16 by float32. Bring the memory to the query's dtype."""
    curr = kwargs.get("curr")
    if isinstance(curr, list):
        curr = curr[0]
    if curr is None:
        return None
    for k in ("memory", "memory_pos"):
        v = kwargs.get(k)
        if isinstance(v, torch.Tensor) and v.dtype != curr.dtype:
            kwargs[k] = v.to(curr.dtype)
    return args, kwargs


@dataclass
class Sam2:
    """A loaded SAM2 (ComfyUI type ``INTERPLAY_SAM2``).

    Fields:
        model: the package's ``SAM2VideoPredictor`` (a ``SAM2Base``) on ``device``.
        config: the config name or YAML path it was built from.
        device, dtype: where it runs; dtype float32, or bfloat16/float16 as CUDA autocast.
        source: the weights file.
    """

    model: torch.nn.Module
    config: str
    device: torch.device
    dtype: torch.dtype = torch.float32
    source: str = "init"
    _image_predictor: object = field(default=None, repr=False)

    @property
    def image_size(self) -> int:
        return int(self.model.image_size)

    def image_predictor(self):
        if self._image_predictor is None:
            from sam2.sam2_image_predictor import SAM2ImagePredictor

            p = SAM2ImagePredictor(self.model)
            s = self.image_size  # the predictor assumes 1024 input: stride 4, 8, 16 feature maps
            p._bb_feat_sizes = [(s // 4, s // 4), (s // 8, s // 8), (s // 16, s // 16)]
            self._image_predictor = p
        return self._image_predictor

    def autocast(self):
        if self.device.type == "cuda" and self.dtype in (torch.bfloat16, torch.float16):
            return torch.autocast("cuda", dtype=self.dtype)
        return torch.autocast(self.device.type, enabled=False)


def _compare_state(expected: dict, got: dict) -> list[str]:
    problems = []
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    shapes = [k for k in expected if k in got and tuple(expected[k].shape) != tuple(got[k].shape)]
    if missing:
        problems.append(f"{len(missing)} missing: " + ", ".join(
            f"{k} {tuple(expected[k].shape)}" for k in missing[:8]) + (" ..." if len(missing) > 8 else ""))
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected: " + ", ".join(
            f"{k} {tuple(got[k].shape)}" for k in unexpected[:8]) + (" ..." if len(unexpected) > 8 else ""))
    if shapes:
        problems.append(f"{len(shapes)} with other shapes: " + ", ".join(
            f"{k} file {tuple(got[k].shape)} vs config {tuple(expected[k].shape)}" for k in shapes[:8])
            + (" ..." if len(shapes) > 8 else ""))
    return problems


def load_sam2(config: str | os.PathLike, weights: str | os.PathLike | None, device=None, dtype=None,
              image_size: int | None = None) -> Sam2:
    """Build ``config`` and load ``weights`` (a .safetensors file; None keeps the random init, for tests).

    Raises ValueError listing missing/unexpected/mis-shaped keys when the file does not fit the config,
    and refuses pickled checkpoints (convert them with ``convert_sam2_checkpoint``).
    """
    device = torch.device(device) if device is not None else runtime.compute_device()
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = build_model(config, image_size=image_size)
    source = "init"
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"`weights`: SAM2 weights file {path} not found")
        if path.suffix not in (".safetensors", ".sft"):
            raise ValueError(f"`weights`: {path.name} is not a .safetensors file. Official .pt checkpoints are "
                             "pickles: convert them once with the Convert SAM2 Checkpoint node (or "
                             "convert_sam2_checkpoint), which loads them with weights_only=True.")
        from ..weights import read_safetensors

        sd = read_safetensors(path, "`weights` (SAM2)")[0]
        if any(k.startswith("model.") for k in sd) and not any(k.startswith("image_encoder.") for k in sd):
            sd = {k[len("model."):]: v for k, v in sd.items()}
        problems = _compare_state(model.state_dict(), sd)
        if problems:
            raise ValueError(f"`weights`: {path.name} does not fit config {config}: " + "; ".join(problems)
                             + ". Pick the config of the same release and size as the weights "
                             "(e.g. sam2.1_hiera_t for sam2.1_hiera_tiny).")
        model.load_state_dict(sd, strict=True)
        source = str(path)
    model.to(device)
    return Sam2(model=model, config=str(config), device=device, dtype=dtype, source=source)


def save_sam2_weights(model: torch.nn.Module, path: str | os.PathLike, metadata: dict | None = None) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(sd, str(tmp), metadata={k: str(v) for k, v in (metadata or {}).items()})
    os.replace(tmp, path)
    return path


def convert_sam2_checkpoint(pt_path: str | os.PathLike, out_path: str | os.PathLike,
                            config: str | None = None) -> Path:
    """Convert an official SAM2 ``.pt`` ({"model": state_dict}) to ``.safetensors``.

    Loads with ``torch.load(weights_only=True)`` (no arbitrary unpickling). With ``config`` the keys and
    shapes are checked against it before writing.
    """
    pt_path, out_path = Path(pt_path), Path(out_path)
    if not pt_path.is_file():
        raise FileNotFoundError(f"`checkpoint`: {pt_path} not found")
    try:
        obj = torch.load(str(pt_path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"`checkpoint`: {pt_path.name} could not be read as a weights-only torch checkpoint "
                         f"({type(e).__name__}: {e}). Only official SAM2 .pt files (plain tensors) are accepted.") from e
    sd = obj.get("model", obj) if isinstance(obj, dict) else None
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"`checkpoint`: {pt_path.name} is not a SAM2 checkpoint: expected {{'model': state_dict}} "
                         "of tensors as in the official release")
    if config is not None:
        problems = _compare_state(build_model(config).state_dict(), sd)
        if problems:
            raise ValueError(f"`checkpoint`: {pt_path.name} does not fit config {config}: " + "; ".join(problems))
    from safetensors.torch import save_file

    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(out_path.suffix + ".tmp")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp),
              metadata={"source": pt_path.name, "format": "sam2", "config": str(config or "")})
    os.replace(tmp, out_path)
    return out_path


# ------------------------------------------------------------------------------------------- inference
def _as_image(image) -> np.ndarray:
    img = torch.as_tensor(image).float().cpu()
    if img.ndim == 4 and img.shape[0] == 1:
        img = img[0]
    if img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f"image must be [H,W,3] float 0..1; got shape {tuple(img.shape)}")
    return img.clamp(0, 1).numpy()


def _check_prompts(points, labels, box, H, W, where="") -> tuple:
    pts = None if points is None or len(points) == 0 else np.asarray(points, dtype=np.float32).reshape(-1, 2)
    if pts is not None:
        labs = np.ones(len(pts), np.int32) if labels is None else np.asarray(labels, np.int32).reshape(-1)
        if len(labs) != len(pts):
            raise ValueError(f"{where}got {len(pts)} points but {len(labs)} labels")
        if not np.isin(labs, (0, 1)).all():
            raise ValueError(f"{where}point labels must be 1 (positive) or 0 (negative); got {labs.tolist()}")
    else:
        labs = None
    bx = None if box is None else np.asarray(box, dtype=np.float32).reshape(4)
    if pts is None and bx is None:
        raise ValueError(f"{where}needs at least one point or a box")
    if bx is not None and not (bx[2] > bx[0] and bx[3] > bx[1]):
        raise ValueError(f"{where}box must be [x0, y0, x1, y1] with x1 > x0 and y1 > y0; got {bx.tolist()}")
    return pts, labs, bx


def segment_image(sam: Sam2, image, points=None, labels=None, box=None, multimask: bool | None = None) -> torch.Tensor:
    """One mask from clicks and/or a box: bool [H, W].

    Args:
        image: [H,W,3] float 0..1.
        points: [[x, y], ...] image pixels; labels 1 positive / 0 negative (default all positive).
        box: [x0, y0, x1, y1] pixels.
        multimask: ask for three candidates and keep the best scored (default: only for a single click,
            SAM's own advice for ambiguous prompts).
    """
    return segment_objects(sam, image, [dict(points=points, labels=labels, box=box)], multimask=multimask)[0]


@torch.inference_mode()
def segment_objects(sam: Sam2, image, prompts: list[dict], multimask: bool | None = None) -> torch.Tensor:
    """Several objects in one image, encoding the image once: bool [N, H, W].

    ``prompts``: one dict(points, labels, box) per object, as in ``segment_image``.
    """
    img = _as_image(image)
    H, W = img.shape[:2]
    checked = [_check_prompts(p.get("points"), p.get("labels"), p.get("box"), H, W,
                              f"object {i}: " if len(prompts) > 1 else "") for i, p in enumerate(prompts)]
    pred = sam.image_predictor()
    out = torch.zeros(len(prompts), H, W, dtype=torch.bool)
    with sam.autocast():
        pred.set_image(img)
        for i, (pts, labs, bx) in enumerate(checked):
            multi = (pts is not None and len(pts) == 1 and bx is None) if multimask is None else multimask
            masks, scores, _ = pred.predict(point_coords=pts, point_labels=labs, box=bx, multimask_output=multi)
            best = int(np.argmax(scores)) if masks.shape[0] > 1 else 0
            out[i] = torch.from_numpy(masks[best] > 0.5)
    return out


def _frames_tensor(sam: Sam2, frames) -> tuple[torch.Tensor, int, int]:
    """[F,H,W,3] 0..1 -> normalised [F,3,S,S] on the model's device (the predictor's own preprocessing,
    done in memory: bilinear antialiased resize instead of JPEG decoding + PIL resize)."""
    x = torch.as_tensor(frames).float().cpu()
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"frames must be [F,H,W,3] float 0..1; got shape {tuple(x.shape)}")
    Fn, H, W = x.shape[:3]
    s = sam.image_size
    x = F.interpolate(x.permute(0, 3, 1, 2).clamp(0, 1), size=(s, s), mode="bilinear", align_corners=False,
                      antialias=True)
    x = (x - torch.tensor(IMG_MEAN)[:, None, None]) / torch.tensor(IMG_STD)[:, None, None]
    return x.to(sam.device), H, W


def _init_state(sam: Sam2, images: torch.Tensor, H: int, W: int) -> dict:
    """The video predictor's inference state for in-memory frames (mirrors SAM2VideoPredictor.init_state,
    which only accepts a JPEG folder or a video path)."""
    state = {"images": images, "num_frames": len(images), "offload_video_to_cpu": False,
             "offload_state_to_cpu": False, "video_height": H, "video_width": W, "device": sam.device,
             "storage_device": sam.device, "point_inputs_per_obj": {}, "mask_inputs_per_obj": {},
             "cached_features": {}, "constants": {}, "obj_id_to_idx": OrderedDict(),
             "obj_idx_to_id": OrderedDict(), "obj_ids": [], "output_dict_per_obj": {},
             "temp_output_dict_per_obj": {}, "frames_tracked_per_obj": {}}
    sam.model._get_image_feature(state, frame_idx=0, batch_size=1)
    return state


@torch.inference_mode()
def propagate_video_objects(sam: Sam2, frames, objects: list[dict]) -> torch.Tensor:
    """Track several objects through a clip: bool [N, F, H, W].

    Args:
        frames: [F,H,W,3] float 0..1.
        objects: per object ``{frame_index: dict(points=[[x,y]], labels=[1|0], box=[x0,y0,x1,y1], mask=[H,W])}``
            (a frame gives points and/or a box, or a mask). Tracking runs forward from the earliest prompted
            frame, then backward from it when that is not frame 0.
    """
    images, H, W = _frames_tensor(sam, frames)
    Fn = images.shape[0]
    if not objects:
        raise ValueError("propagate_video needs at least one object with prompts")
    model = sam.model
    out = torch.zeros(len(objects), Fn, H, W, dtype=torch.bool)
    with sam.autocast():
        state = _init_state(sam, images, H, W)
        first = Fn
        for oid, prompts in enumerate(objects):
            if not prompts:
                raise ValueError(f"object {oid}: no prompts; give points, a box or a mask on at least one frame")
            for f, p in sorted(((int(k), v) for k, v in prompts.items()), key=lambda kv: kv[0]):
                if not 0 <= f < Fn:
                    raise ValueError(f"object {oid}: prompt frame {f} outside the clip's frames 0..{Fn - 1}")
                where = f"object {oid} frame {f}: "
                if p.get("mask") is not None:
                    m = torch.as_tensor(p["mask"]) >= 0.5
                    if tuple(m.shape) != (H, W):
                        raise ValueError(f"{where}mask must be [{H}, {W}]; got {tuple(m.shape)}")
                    if not bool(m.any()):
                        raise ValueError(f"{where}mask is empty")
                    model.add_new_mask(state, f, oid, m)
                else:
                    pts, labs, bx = _check_prompts(p.get("points"), p.get("labels"), p.get("box"), H, W, where)
                    model.add_new_points_or_box(state, f, oid, points=pts, labels=labs, box=bx)
                first = min(first, f)
        total = Fn
        tick = runtime.progress(total, "SAM2 propagate")
        for reverse in (False, True):
            if reverse and first == 0:
                break
            for f, obj_ids, logits in model.propagate_in_video(state, start_frame_idx=first, reverse=reverse):
                for j, oid in enumerate(obj_ids):
                    out[oid, f] = (logits[j, 0] > 0).cpu()
                if not (reverse and f == first):
                    tick.update(1)
        tick.close()
    return out


def propagate_video(sam: Sam2, frames, prompts: dict) -> torch.Tensor:
    """One object through a clip: bool [F, H, W]; ``prompts`` = {frame: dict(points, labels, box | mask)}."""
    return propagate_video_objects(sam, frames, [prompts])[0]


# ------------------------------------------------------------------------------------- node-facing helpers
_WEIGHT_NAMES = {"tiny": "t", "small": "s", "base_plus": "b+", "base-plus": "b+", "b+": "b+", "large": "l",
                 "t": "t", "s": "s", "l": "l"}


def guess_config(weights_name: str) -> str:
    """The config of an official or Kijai/sam2-safetensors file name ("sam2.1_hiera_tiny-fp16.safetensors"
    -> "sam2.1_hiera_t"); ValueError when the name says nothing."""
    import re

    base = Path(weights_name).name.lower()
    m = re.search(r"(sam2(?:\.1)?)_hiera_(tiny|small|base_plus|base-plus|large|b\+|t|s|l)(?![a-z])", base)
    if not m:
        raise ValueError(f"`config`: cannot tell the SAM2 config from the file name {weights_name!r}; pick the "
                         f"config explicitly (one of {', '.join(CONFIGS)})")
    return f"{m.group(1)}_hiera_{_WEIGHT_NAMES[m.group(2)]}"


PROMPT_SCHEMA = '{"v": 1, "points": [[x, y, 1|0], ...], "box": [x0, y0, x1, y1]} (points and/or box, image pixels)'
VIDEO_PROMPT_SCHEMA = '{"v": 1, "frames": {"0": {"points": [[x, y, 1|0]], "box": [x0, y0, x1, y1]}, ...}}'


def _parse_json(text, input_name: str, schema: str) -> dict:
    import json

    if isinstance(text, dict):
        return text
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"`{input_name}` is empty; expected {schema}")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"`{input_name}` is not valid JSON ({e.msg} at column {e.colno}); expected {schema}") from None
    if not isinstance(data, dict) or data.get("v") != 1:
        raise ValueError(f"`{input_name}` must be a JSON object with \"v\": 1; expected {schema}")
    return data


def _frame_prompt(p, where: str, schema: str) -> dict:
    if not isinstance(p, dict):
        raise ValueError(f"{where} must be an object; expected {schema}")
    out: dict = {}
    pts = p.get("points") or []
    if not isinstance(pts, list) or not all(
            isinstance(q, (list, tuple)) and len(q) in (2, 3) and all(isinstance(c, (int, float)) for c in q)
            and (len(q) == 2 or q[2] in (0, 1)) for q in pts):
        raise ValueError(f"{where}.points must be [[x, y, 1|0], ...] (label 1 positive, 0 negative); got {pts!r}")
    if pts:
        out["points"] = [[float(q[0]), float(q[1])] for q in pts]
        out["labels"] = [int(q[2]) if len(q) == 3 else 1 for q in pts]
    box = p.get("box")
    if box is not None:
        if not (isinstance(box, (list, tuple)) and len(box) == 4 and all(isinstance(c, (int, float)) for c in box)
                and box[2] > box[0] and box[3] > box[1]):
            raise ValueError(f"{where}.box must be [x0, y0, x1, y1] with x1 > x0, y1 > y0; got {box!r}")
        out["box"] = [float(c) for c in box]
    if not out:
        raise ValueError(f"{where} needs points and/or a box; expected {schema}")
    return out


def parse_image_prompts(text, input_name: str = "prompts") -> dict:
    """``{"v":1,"points":[[x,y,label]],"box":[...]}`` -> dict(points, labels, box) for ``segment_image``."""
    return _frame_prompt(_parse_json(text, input_name, PROMPT_SCHEMA), f"`{input_name}`", PROMPT_SCHEMA)


def parse_video_prompts(text, num_frames: int, input_name: str = "prompts") -> dict[int, dict]:
    """``{"v":1,"frames":{"0":{...}}}`` -> {frame: dict(points, labels, box)} for ``propagate_video``."""
    data = _parse_json(text, input_name, VIDEO_PROMPT_SCHEMA)
    frames = data.get("frames")
    if not isinstance(frames, dict) or not frames:
        raise ValueError(f"`{input_name}` needs a non-empty \"frames\" object; expected {VIDEO_PROMPT_SCHEMA}")
    out = {}
    for k, p in frames.items():
        try:
            f = int(k)
        except (TypeError, ValueError):
            raise ValueError(f"`{input_name}`: frame key {k!r} is not an integer") from None
        if not 0 <= f < num_frames:
            raise ValueError(f"`{input_name}`: frame {f} is outside the clip's frames 0..{num_frames - 1}")
        out[f] = _frame_prompt(p, f"`{input_name}`.frames[{k!r}]", VIDEO_PROMPT_SCHEMA)
    return out


def mask_overlay(frames: torch.Tensor, masks: torch.Tensor, color=(1.0, 0.2, 0.2), alpha: float = 0.5) -> torch.Tensor:
    """frames [F,H,W,3] 0..1 with masks [F,H,W] tinted: IMAGE [F,H,W,3]."""
    fr = torch.as_tensor(frames).float().cpu()
    m = (torch.as_tensor(masks).float().cpu() >= 0.5)[..., None]
    c = torch.tensor(color, dtype=torch.float32)
    return torch.where(m, fr * (1 - alpha) + c * alpha, fr)


def write_tiny_config(path: str | os.PathLike, image_size: int = 128) -> Path:
    """A sam2.1_hiera_t-shaped model YAML at toy widths (~0.9M parameters) for tests and CPU smoke runs.

    Same classes as the release (Hiera trunk, FPN neck, memory attention/encoder, SAM heads); only widths,
    depths and the input size shrink. Global attention sits on a non-pooling block (Hiera requires it).
    """
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(resolve_config("sam2.1_hiera_t"))
    m = cfg.model
    t = m.image_encoder.trunk
    t.embed_dim, t.stages, t.global_att_blocks = 16, [1, 1, 2, 1], [3]
    n = m.image_encoder.neck
    n.d_model, n.position_encoding.num_pos_feats, n.backbone_channel_list = 32, 32, [128, 64, 32, 16]
    a = m.memory_attention
    a.d_model, a.num_layers, a.layer.d_model, a.layer.dim_feedforward = 32, 1, 32, 64
    a.layer.self_attention.embedding_dim = a.layer.cross_attention.embedding_dim = 32
    a.layer.cross_attention.kv_in_dim = 16
    e = m.memory_encoder
    e.out_dim, e.in_dim, e.position_encoding.num_pos_feats = 16, 32, 16
    e.mask_downsampler.embed_dim, e.fuser.layer.dim, e.fuser.num_layers = 32, 32, 1
    m.image_size, m.num_maskmem = int(image_size), 3
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, path)
    return path
