"""The only bridge between the engine (models/) and ComfyUI's internals.

Engine code reports and yields through these calls and nothing else:

- ``compute_device()``, ``offload_device()``, ``default_dtype(device)``, ``empty_cache()``, ``free_memory(device)``
- ``progress(total, desc)``: a reporter whose every update is also the cancel point. Inside ComfyUI it
  drives ``comfy.utils.ProgressBar`` (with optional JPEG previews); outside it draws a terminal bar.
- ``check_interrupt()`` and ``Interrupted`` (ComfyUI's own exception class when ComfyUI is present).
- model folders: ``model_folders(kind)``, ``list_models(kind)``, ``model_path(kind, name)``. Inside
  ComfyUI they are ``folder_paths``; outside, ``<root>/<kind>`` with the root taken from
  ``set_models_root()`` (the CLI's ``--models-dir``), else ``$INTERPLAY_MODELS_DIR``, else ``./models`` (or
  ``./user_models`` when ``./models`` is this pack's own engine folder, i.e. run from the repository root).
- output/temp/input directories for nodes that read and write files, and the path rule every node input
  that names a file obeys: ``confined_path`` / ``path_guard`` (see "the path rule" below).

Nothing here imports ``comfy`` or ``folder_paths`` at module level; ComfyUI is detected lazily, so the
engine imports and runs the same with or without it.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterable

import torch

# Sub-folder names shared by ComfyUI and the standalone layout. sam2 and interplay are ours and get
# registered with ComfyUI by register_model_folders(); the others are ComfyUI's own keys.
MODEL_FOLDERS = (
    "diffusion_models",
    "vae",
    "text_encoders",
    "clip_vision",
    "checkpoints",
    "controlnet",
    "loras",
    "diffusers",
    "sam2",
    "interplay",
)
PACK_FOLDERS = ("sam2", "interplay")
WEIGHT_EXTENSIONS = (".safetensors", ".sft")

_models_root: Path | None = None
_output_dir: Path | None = None
_input_dir: Path | None = None
_interrupt = threading.Event()
_force_standalone = False  # tests flip this to exercise the standalone path with ComfyUI importable


def _comfy():
    """Return (model_management, utils, folder_paths) when running inside ComfyUI, else None."""
    if _force_standalone:
        return None
    if "comfy.model_management" not in sys.modules and "folder_paths" not in sys.modules:
        # Inside ComfyUI both are imported long before any custom node; never import them ourselves
        # from a plain Python process (a stray `comfy` package on sys.path must not switch modes).
        return None
    try:
        import comfy.model_management as mm  # type: ignore
        import comfy.utils as cu  # type: ignore
        import folder_paths  # type: ignore
    except Exception:  # pragma: no cover - partial ComfyUI installs
        return None
    return mm, cu, folder_paths


def in_comfyui() -> bool:
    return _comfy() is not None


def comfy_resource(*parts: str) -> Path | None:
    """A path inside ComfyUI's own ``comfy`` package (e.g. its bundled tokenizer folders) when running inside
    ComfyUI, else None."""
    if _comfy() is None:
        return None
    import importlib.util

    spec = importlib.util.find_spec("comfy")
    if not spec or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)


# --------------------------------------------------------------------------------------------- errors
class Interrupted(Exception):
    """Raised at a progress update after a cancel. Inside ComfyUI this name is rebound to ComfyUI's own
    InterruptProcessingException (see bind_comfyui), so ``except runtime.Interrupted`` catches a UI cancel;
    engine code catches it to clean up (save a checkpoint) and re-raises."""


def bind_comfyui() -> bool:
    """Adopt ComfyUI's interrupt exception when running inside ComfyUI. Called at import; idempotent."""
    global Interrupted
    c = _comfy()
    if c is None:
        return False
    Interrupted = c[0].InterruptProcessingException
    return True


def request_interrupt() -> None:
    """Standalone cancel (the headless runner's Ctrl-C); inside ComfyUI use its /interrupt."""
    _interrupt.set()


def clear_interrupt() -> None:
    _interrupt.clear()


def check_interrupt() -> None:
    c = _comfy()
    if c is not None:
        c[0].throw_exception_if_processing_interrupted()
    if _interrupt.is_set():
        _interrupt.clear()
        raise Interrupted("interrupted")


# -------------------------------------------------------------------------------------------- devices
def compute_device() -> torch.device:
    c = _comfy()
    if c is not None:
        return c[0].get_torch_device()
    forced = os.environ.get("INTERPLAY_DEVICE")
    if forced:
        return torch.device(forced)
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def offload_device() -> torch.device:
    c = _comfy()
    if c is not None:
        return c[0].unet_offload_device()
    return torch.device("cpu")


def default_dtype(device: torch.device | str | None = None) -> torch.dtype:
    """bf16 where the GPU supports it, fp16 on older GPUs, fp32 on CPU."""
    device = torch.device(device) if device is not None else compute_device()
    if device.type == "cpu":
        return torch.float32
    c = _comfy()
    if c is not None:
        mm = c[0]
        if mm.should_use_bf16(device):
            return torch.bfloat16
        return torch.float16 if mm.should_use_fp16(device) else torch.float32
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def parse_dtype(name: str, device: torch.device | None = None) -> torch.dtype:
    """Map a widget value ("auto", "bf16", "fp16", "fp32") to a torch dtype."""
    table = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if name == "auto":
        return default_dtype(device)
    if name not in table:
        raise ValueError(f"dtype must be one of auto, {', '.join(table)}; got {name!r}")
    return table[name]


def empty_cache() -> None:
    c = _comfy()
    if c is not None:
        c[0].soft_empty_cache()
        return
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def free_memory(device: torch.device | str | None = None, want: int | None = None) -> int:
    """Bytes free for new tensors on ``device``: inside ComfyUI its model manager's figure (asking it first to
    unload models until ``want`` bytes are free); standalone torch.cuda.mem_get_info on a GPU (plus what torch's
    cache holds), MemAvailable from /proc/meminfo (or sysconf) on the CPU."""
    device = torch.device(device) if device is not None else compute_device()
    c = _comfy()
    if c is not None:
        mm = c[0]
        if want is not None:
            mm.free_memory(int(want), device)
        return int(mm.get_free_memory(device))
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # no way to tell: do not block the work
        return 1 << 62


def interrupt_aware_sleep(seconds: float) -> None:  # used by tests of the cancel path
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        check_interrupt()
        time.sleep(0.01)


# ------------------------------------------------------------------------------------------- progress
class Progress:
    """Progress reporter. Call ``update(n=1, preview=None, text=None)`` or ``set(value)``.

    Every update checks for an interrupt. ``preview`` is a zero-argument callable returning a PIL image;
    it is only called when a UI can show it (inside ComfyUI), so computing it costs nothing headless.
    """

    def __init__(self, total: int, desc: str = "", stream=None, min_interval: float = 0.1):
        self.total = max(int(total), 1)
        self.value = 0
        self.desc = desc
        self.text = ""
        self.start = time.monotonic()
        self._stream = stream if stream is not None else sys.stderr
        self._last_draw = 0.0
        self._min_interval = min_interval
        c = _comfy()
        self._bar = c[1].ProgressBar(self.total) if c is not None else None

    def update(self, n: int = 1, preview: Callable | None = None, text: str | None = None) -> None:
        self.set(self.value + n, preview=preview, text=text)

    def set(self, value: int, preview: Callable | None = None, text: str | None = None) -> None:
        self.value = min(int(value), self.total)
        if text is not None:
            self.text = text
        if self._bar is not None:
            shown = None
            if preview is not None:
                img = preview()
                if img is not None:
                    shown = ("JPEG", img, 512)
            self._bar.update_absolute(self.value, self.total, shown)
        else:
            self._draw()
        check_interrupt()

    def eta(self) -> float | None:
        if self.value <= 0:
            return None
        elapsed = time.monotonic() - self.start
        return elapsed / self.value * (self.total - self.value)

    def line(self) -> str:
        width = 24
        filled = int(width * self.value / self.total)
        eta = self.eta()
        eta_s = "?" if eta is None else _fmt_seconds(eta)
        parts = [f"{self.desc}" if self.desc else "", f"[{'#' * filled}{'.' * (width - filled)}]",
                 f"{self.value}/{self.total}", f"ETA {eta_s}"]
        if self.text:
            parts.append(self.text)
        return " ".join(p for p in parts if p)

    def _draw(self) -> None:
        now = time.monotonic()
        done = self.value >= self.total
        if not done and now - self._last_draw < self._min_interval:
            return
        self._last_draw = now
        stream = self._stream
        if stream is None or os.environ.get("INTERPLAY_QUIET", "").lower() in ("1", "true", "yes"):
            return
        tty = getattr(stream, "isatty", lambda: False)()
        if tty:
            stream.write("\r" + self.line() + ("\n" if done else ""))
        else:  # logs get a line at the start, every 10 % and at the end, not one per redraw
            decile = 10 * self.value // self.total
            if not (done or self.value == 1 or decile > getattr(self, "_logged_decile", 0)):
                return
            self._logged_decile = decile
            stream.write(self.line() + "\n")
        stream.flush()

    def close(self) -> None:
        if self._bar is None and self.value < self.total:
            stream = self._stream
            if stream is not None and getattr(stream, "isatty", lambda: False)():
                stream.write("\n")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def _fmt_seconds(s: float) -> str:
    s = int(round(s))
    return f"{s // 60}:{s % 60:02d}" if s < 3600 else f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def progress(total: int, desc: str = "") -> Progress:
    return Progress(total, desc)


# ------------------------------------------------------------------------------------- model folders
def set_models_root(path: str | os.PathLike | None) -> None:
    """Standalone models root (the CLI's --models-dir). None falls back to the environment."""
    global _models_root
    _models_root = Path(path).expanduser().resolve() if path is not None else None


def models_root() -> Path:
    if _models_root is not None:
        return _models_root
    env = os.environ.get("INTERPLAY_MODELS_DIR")
    if env:
        return Path(env).expanduser().resolve()
    here = Path("models").resolve()
    # from the repository root ./models is the engine's source: never read or write user weights there
    if here == Path(__file__).resolve().parent:
        return Path("user_models").resolve()
    return here


def register_model_folders() -> None:
    """Inside ComfyUI, add the pack's own folders (models/sam2, models/interplay). Idempotent."""
    c = _comfy()
    if c is None:
        return
    fp = c[2]
    for name in PACK_FOLDERS:
        path = os.path.join(fp.models_dir, name)
        if name not in fp.folder_names_and_paths or path not in fp.folder_names_and_paths[name][0]:
            fp.add_model_folder_path(name, path)


def _check_kind(kind: str) -> None:
    if kind not in MODEL_FOLDERS:
        raise ValueError(f"unknown model folder {kind!r}; expected one of {', '.join(MODEL_FOLDERS)}")


def model_folders(kind: str) -> list[Path]:
    """Every folder searched for models of this kind, in priority order."""
    _check_kind(kind)
    c = _comfy()
    if c is not None:
        fp = c[2]
        try:
            return [Path(p) for p in fp.get_folder_paths(kind)]
        except KeyError:
            return [Path(fp.models_dir) / kind]
    return [models_root() / kind]


def list_models(kind: str, extensions: Iterable[str] | None = WEIGHT_EXTENSIONS,
                folders_only: bool = False) -> list[str]:
    """Relative names of the files (or, with folders_only, sub-folders) under the kind's folders."""
    names: set[str] = set()
    for base in model_folders(kind):
        if not base.is_dir():
            continue
        if folders_only:
            names.update(p.name for p in base.iterdir() if p.is_dir())
            continue
        for p in base.rglob("*"):
            if p.is_file() and (extensions is None or p.suffix.lower() in extensions):
                names.add(p.relative_to(base).as_posix())
    return sorted(names)


def model_path(kind: str, name: str, must_exist: bool = True) -> Path:
    """Resolve a model file or folder name inside the kind's folders.

    Names may contain sub-folders but never leave the folder: ``..``, absolute names and symlinks whose target
    lies outside every folder of this kind are refused (unless ``INTERPLAY_ALLOW_ANY_PATH=1``). A refused name
    gets the same message whether or not it exists. ``must_exist=False`` only applies the rule (a missing file
    then gives its path in the first folder).
    """
    _check_kind(kind)
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"no {kind} model name given; put the file in {model_folders(kind)[0]} and pick it")
    searched = model_folders(kind)
    bases = [b.resolve() for b in searched]
    free = any_path_allowed()
    parts = Path(name).parts
    if not free and (Path(name).is_absolute() or ".." in parts):
        raise PathRefused(_refusal(f"model name {name!r}", f"the {kind} folder{'s' if len(bases) > 1 else ''} "
                                   + ", ".join(map(str, bases)), "use a name relative to that folder"))
    cands = [b / name for b in bases]
    if not free:
        for c in cands:  # every candidate before any existence test: no oracle for what lies outside
            if not any(_inside(c, b) for b in bases):
                raise PathRefused(_refusal(
                    f"model name {name!r}", f"the {kind} folder{'s' if len(bases) > 1 else ''} "
                    + ", ".join(map(str, bases)),
                    "it is a symlink to elsewhere: move the file into the folder, or add its folder to ComfyUI's "
                    "extra_model_paths.yaml (headless: --models-dir)"))
    for c in cands:
        if c.exists():
            return c
    if not must_exist:
        return cands[0]
    where = ", ".join(str(s) for s in searched)
    raise FileNotFoundError(f"{kind} model {name!r} not found; searched: {where}. "
                            f"Put the file there (ComfyUI: models/{kind}/) or pass --models-dir.")


# ------------------------------------------------------------------------------------- the path rule
# Node inputs that name files read only inside the folders the pack is given: ComfyUI's input, output and temp
# folders and the model folders (headless: --out, --models-dir, $INTERPLAY_INPUT_DIR). Model names resolve
# inside their own kind's folders (model_path). Symlinks count by their target. One switch lifts the rule.
ALLOW_ANY_PATH_ENV = "INTERPLAY_ALLOW_ANY_PATH"
PATH_ROOTS = ("input", "output", "temp", "models")


class PathRefused(ValueError):
    """A path input that points outside the folders the pack may read (the message names the switch)."""


def any_path_allowed() -> bool:
    """True when the owner set INTERPLAY_ALLOW_ANY_PATH=1 (off by default): every path input is then taken as is."""
    return os.environ.get(ALLOW_ANY_PATH_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _refusal(what: str, where: str, fix: str) -> str:
    return (f"{what} points outside {where}; {fix}. To allow any path, the machine's owner sets the environment "
            f"variable {ALLOW_ANY_PATH_ENV}=1 before starting ComfyUI (or the interplay CLI).")


def _inside(path: Path, base: Path) -> bool:
    """Whether path, with every symlink resolved (it need not exist), lies in base (already resolved)."""
    p = Path(os.path.realpath(path))
    return p == base or base in p.parents


def path_roots(allow: Iterable[str] = PATH_ROOTS) -> list[tuple[str, Path]]:
    """(label, resolved folder) of each folder path inputs may read: input, output, temp, and every model
    folder (the models root and each kind's folders, extra_model_paths.yaml ones included)."""
    out: list[tuple[str, Path]] = []
    for label in allow:
        if label == "input":
            out.append(("input", input_directory()))
        elif label == "output":
            out.append(("output", output_directory()))
        elif label == "temp":
            out.append(("temp", temp_directory()))
        elif label == "models":
            c = _comfy()
            out.append(("models", Path(c[2].models_dir) if c is not None else models_root()))
            out += [("models", p) for kind in MODEL_FOLDERS for p in model_folders(kind)]
        else:
            raise ValueError(f"path_roots: unknown folder {label!r}; expected some of {', '.join(PATH_ROOTS)}")
    uniq: list[tuple[str, Path]] = []
    for label, p in out:  # a folder inside one already listed adds nothing (temp in output, kinds in models)
        p = Path(os.path.realpath(p))
        if not any(p == q or q in p.parents for _, q in uniq):
            uniq = [(lq, q) for lq, q in uniq if p not in q.parents] + [(label, p)]
    return uniq


def _where(roots: list[tuple[str, Path]]) -> str:
    return "ComfyUI's input, output, temp and model folders (here " + ", ".join(str(p) for _, p in roots) + ")"


ANNOTATIONS = {"[input]": "input", "[output]": "output", "[temp]": "temp"}


def split_annotation(name: str) -> tuple[str, str | None]:
    """ComfyUI's annotated names (folder_paths.annotated_filepath): ``"clip.mp4 [output]"`` -> ("clip.mp4",
    "output"); also [input] and [temp]. A name without one gives (name, None)."""
    for tag, label in ANNOTATIONS.items():
        if name.endswith(tag):
            return name[: -len(tag)].rstrip(), label
    return name, None


def path_guard(node: str, input_name: str, allow: Iterable[str] = PATH_ROOTS) -> Callable[[Path], Path]:
    """A check(path) -> path that refuses any path (its symlinks resolved) outside the allowed folders, for
    paths found on the way (an image folder's files, a glob's matches). A no-op under the switch."""
    allow = tuple(allow)

    def check(path: Path) -> Path:
        if any_path_allowed():
            return Path(path)
        roots = path_roots(allow)
        if not any(_inside(path, r) for _, r in roots):
            raise PathRefused(f"{node}: " + _refusal(f"{input_name!r} reaches {Path(path).name!r}, which",
                                                      _where(roots), "keep the files themselves in one of them, "
                                                      "not symlinks to elsewhere"))
        return Path(path)

    return check


def confined_path(value, *, node: str, input_name: str, search: Iterable[str] = ("input",),
                  allow: Iterable[str] = PATH_ROOTS) -> Path:
    """The one rule for a node input that names a file or folder (also a folder that a glob runs in).

    ``value``: an absolute path, a name relative to the ``search`` folders (tried in order: the first that exists
    wins, else the first), or an annotated name (``"x.mp4 [output]"``: relative to that folder). The result, with
    every symlink resolved, must lie inside one of the ``allow`` folders (``path_roots``); otherwise PathRefused,
    whose message is the same whether or not the path exists and names the switch (``INTERPLAY_ALLOW_ANY_PATH``).
    Existence is left to the caller (it reports not-found with the folders searched)."""
    allow = tuple(allow)
    text = str(value).strip() if value is not None else ""
    if not text:
        raise ValueError(f"{node}: '{input_name}' is empty; expected a path inside "
                         f"{_where(path_roots(allow))}")
    name, label = split_annotation(text)
    p = Path(name).expanduser()
    if p.is_absolute():
        cands = [p]
    else:
        bases = [label] if label is not None else list(search)
        cands = [dict(path_roots((b,)))[b] / p for b in bases]
    if not any_path_allowed():
        roots = path_roots(allow)
        for c in cands:  # refuse before any existence test: no oracle for what lies outside
            if not any(_inside(c, r) for _, r in roots):
                raise PathRefused(f"{node}: " + _refusal(f"'{input_name}' {text!r}", _where(roots),
                                                          "use a path inside one of them"))
    return next((c for c in cands if c.exists()), cands[0])


def confined_glob(folder, pattern: str, *, node: str, input_name: str, allow: Iterable[str] = PATH_ROOTS) -> None:
    """Refuse a glob pattern whose fixed part leaves the allowed folders (``../secret/*``, ``/elsewhere/*``),
    whether or not anything matches. What it matches is checked file by file with ``path_guard`` while read."""
    if any_path_allowed():
        return
    fixed = []
    for part in Path(str(pattern)).parts:
        if any(ch in part for ch in "*?["):
            break
        fixed.append(part)
    base = Path(*fixed) if fixed else Path(".")
    base = base if base.is_absolute() else Path(folder) / base
    roots = path_roots(allow)
    if not any(_inside(base, r) for _, r in roots):
        raise PathRefused(f"{node}: " + _refusal(f"'{input_name}' {str(pattern)!r}", _where(roots),
                                                  "use a pattern of file names inside the folder, e.g. frame_*.png"))


# ----------------------------------------------------------------------------------------- file i/o
def set_output_directory(path: str | os.PathLike | None) -> None:
    global _output_dir
    _output_dir = Path(path).resolve() if path is not None else None


def output_directory() -> Path:
    c = _comfy()
    if c is not None:
        return Path(c[2].get_output_directory())
    return _output_dir if _output_dir is not None else Path("output").resolve()


def temp_directory() -> Path:
    c = _comfy()
    if c is not None:
        return Path(c[2].get_temp_directory())
    return output_directory() / "temp"


def set_input_directory(path: str | os.PathLike | None) -> None:
    """Standalone input folder (the CLI's --input-dir); None falls back to $INTERPLAY_INPUT_DIR, else ./input."""
    global _input_dir
    _input_dir = Path(path).expanduser().resolve() if path is not None else None


def input_directory() -> Path:
    c = _comfy()
    if c is not None:
        return Path(c[2].get_input_directory())
    if _input_dir is not None:
        return _input_dir
    return Path(os.environ.get("INTERPLAY_INPUT_DIR", "input")).resolve()


bind_comfyui()
