"""The branch registry: the one place that knows which control branch kinds exist.

Each ``models/control/<kind>.py`` declares a :class:`BranchKind` with :func:`register` at import: its backbone
family, the control-signal kinds it consumes, and how to build, load, save, detect and attach it, plus its training
task. Samplers, loaders, the training node, the model-folder lists and the trainer ask the registry; nothing else
compares branch kinds. Modules in this folder are imported on first use, so a new method is one new file.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from .base import BoundControl, ControlBranch

_KINDS: dict[str, "BranchKind"] = {}
_LOADED = False
_NOT_BRANCH_MODULES = {"base", "registry"}


@dataclass(frozen=True)
class BranchKind:
    """What the pack knows about one kind of control branch.

    Fields:
        kind: the branch kind ("kinemask", "interdyn", ...), stored in files and in ``ControlBranch.kind``.
        family: the backbone family it attaches to ("cogvideox", "svd", "wan").
        label: display name for messages ("KineMask branch").
        signals: the ``ControlSignal.kind`` values it consumes; empty when it needs no signal.
        attach: ``attach(branch, bound_controls, backbone) -> Attachment``: the forward-contract object for a
            branch and the controls bound to it (all bound to this branch, in the user's order).
        load: ``load(path, dtype=, device=) -> ControlBranch`` for a file or folder of this kind.
        save: ``save(branch, path) -> Path``.
        new: ``new(backbone, **options) -> ControlBranch`` (zero-initialised, for training), or None.
        task: the training task name that trains this kind, or None; ``task_class`` builds it.
        task_class: ``() -> class`` of the Task (imported lazily), or None.
        folder_classes: ``_class_name`` values of released folders' config.json that are this kind.
        detect: ``detect(header_metadata: dict, keys: set[str] | None) -> bool`` for files that carry no kind in
            their metadata (e.g. released checkpoints), or None.
        hint: how to get such a branch, for error messages.
        train_defaults: TrainConfig defaults of the method's recipe (e.g. its optimizer and betas).
    """

    kind: str
    family: str
    label: str
    signals: tuple[str, ...]
    attach: Callable
    load: Callable | None = None
    save: Callable | None = None
    new: Callable | None = None
    task: str | None = None
    task_class: Callable | None = None
    folder_classes: tuple[str, ...] = ()
    detect: Callable | None = None
    hint: str = ""
    train_defaults: dict = field(default_factory=dict)


def register(spec: BranchKind) -> BranchKind:
    if spec.kind in _KINDS and _KINDS[spec.kind] is not spec:
        raise RuntimeError(f"branch kind {spec.kind!r} registered twice")
    _KINDS[spec.kind] = spec
    return spec


def _load_builtin() -> None:
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    pkg = importlib.import_module(__package__)
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if info.name not in _NOT_BRANCH_MODULES and not info.name.startswith("_"):
            importlib.import_module(f"{__package__}.{info.name}")


def kinds(family: str | None = None) -> list[BranchKind]:
    _load_builtin()
    return [s for s in _KINDS.values() if family is None or s.family == family]


def get(kind: str) -> BranchKind:
    _load_builtin()
    if kind not in _KINDS:
        raise ValueError(f"unknown control branch kind {kind!r}; known kinds: {', '.join(sorted(_KINDS))}")
    return _KINDS[kind]


def of(branch: ControlBranch) -> BranchKind:
    return get(branch.kind)


def by_task(task: str) -> BranchKind | None:
    return next((s for s in kinds() if s.task == task), None)


def kind_of_folder_class(class_name: str | None) -> str | None:
    return next((s.kind for s in kinds() if class_name and class_name in s.folder_classes), None)


def kind_of_file(meta: dict, keys: Iterable[str] | None = None) -> str | None:
    """The kind a weights file declares in its header metadata (``kind`` / ``interplay_kind``), else the first
    kind whose ``detect`` recognises it; None when nothing does."""
    declared = meta.get("kind") or meta.get("interplay_kind")
    if declared:
        return str(declared)
    keyset = set(keys) if keys is not None else None
    for s in kinds():
        if s.detect is not None:
            try:
                if s.detect(meta, keyset):
                    return s.kind
            except Exception:  # a detector never crashes a listing
                continue
    return None


def check_pairing(branch: ControlBranch, signal, family: str, where: str) -> BranchKind:
    """The branch attaches to this family and consumes this signal kind; errors name both and the fix."""
    spec = of(branch)
    if spec.family != family:
        raise ValueError(f"{where}: the {spec.label} works on {spec.family} backbones; this sampler runs {family}. "
                         f"Connect it to the {spec.family} sampler, or load a branch made for {family}.")
    if signal is None and spec.signals:
        raise ValueError(f"{where}: the {spec.label} needs a control ({' or '.join(spec.signals)}); connect "
                         f"one{(' (' + spec.hint + ')') if spec.hint else ''}")
    if signal is not None and signal.kind not in spec.signals:
        wanted = " or ".join(spec.signals) if spec.signals else "no control"
        raise ValueError(f"{where}: 'control' is a {signal.kind!r} signal but the {spec.label} takes {wanted}"
                         f"{(' (' + spec.hint + ')') if spec.hint else ''}")
    return spec


def attachments(bound: Iterable[BoundControl], backbone) -> list:
    """One attachment per distinct branch (its bound controls grouped, in first-seen order)."""
    groups: dict[int, list[BoundControl]] = {}
    order: list[int] = []
    for bc in bound:
        k = id(bc.branch.module)
        if k not in groups:
            groups[k] = []
            order.append(k)
        groups[k].append(bc)
    out = []
    for k in order:
        group = groups[k]
        spec = of(group[0].branch)
        out.append(spec.attach(group[0].branch, group, backbone))
    return out


def load(path: Path, kind: str | None = None, **kw) -> ControlBranch:
    """Load a branch file or folder; the kind from the argument, else detected from the file."""
    if kind is None:
        kind = detect_path(path)
        if kind is None:
            known = ", ".join(s.label for s in kinds())
            raise ValueError(f"{path}: not a control branch the pack knows (its metadata names no kind and no "
                             f"detector recognises it; known: {known})")
    spec = get(kind)
    if spec.load is None:
        raise ValueError(f"the {spec.label} cannot be loaded from files")
    return spec.load(path, **kw)


def detect_path(path: Path) -> str | None:
    """The kind of a branch file/folder on disk: a folder's config.json class, or a file's header metadata."""
    import json

    path = Path(path)
    if path.is_dir():
        try:
            cls = json.loads((path / "config.json").read_text()).get("_class_name")
        except (OSError, ValueError, AttributeError):
            return None
        return kind_of_folder_class(cls)
    from ..weights import read_header

    try:
        keys, meta = read_header(path)
    except Exception:
        return None
    return kind_of_file(meta, keys)
