"""Reading safetensors files: the one place that opens a user's weights file.

safetensors' own errors ("Error while deserializing header: header too large") name neither the file nor the
fix; every loader reads through here so a missing, truncated or corrupt file is reported by path with what
to do. Only safetensors are read: nothing here unpickles.
"""
from __future__ import annotations

from pathlib import Path


class WeightsFileError(ValueError):
    """A weights file that is not a readable safetensors file (missing files raise FileNotFoundError)."""


def _unreadable(what: str, path: Path, ex: Exception) -> WeightsFileError:
    size = path.stat().st_size if path.exists() else 0
    return WeightsFileError(
        f"{what}: {path} is not a readable safetensors file ({size} bytes; {type(ex).__name__}: {ex}). It is "
        "corrupt or truncated, e.g. an interrupted download or copy: download or save it again. Only "
        ".safetensors files are read; convert pickled .ckpt/.pt files first.")


def _check_file(what: str, path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"{what}: weights file {path} not found" + (" (it is a folder)" if path.is_dir()
                                                                            else ""))


def read_metadata(path, what: str = "weights") -> dict:
    """The safetensors header's metadata (only the header is read); {} when it has none."""
    from safetensors import safe_open

    path = Path(path)
    _check_file(what, path)
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as ex:  # SafetensorError, OSError, ...: all mean the same to the user
        raise _unreadable(what, path, ex) from ex


def read_header(path, what: str = "weights") -> tuple[dict, dict]:
    """({name: shape tuple}, metadata) from the safetensors header alone: no tensor is read, so a loader can
    check a file's shapes against the module it would build before allocating anything."""
    from safetensors import safe_open

    path = Path(path)
    _check_file(what, path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as ex:
        raise _unreadable(what, path, ex) from ex
    return shapes, meta


def read_safetensors(path, what: str = "weights") -> tuple[dict, dict]:
    """(tensors, metadata) of a safetensors file, on the CPU."""
    from safetensors import safe_open

    path = Path(path)
    _check_file(what, path)
    try:
        sd = {}
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            for k in f.keys():
                sd[k] = f.get_tensor(k)
    except Exception as ex:
        raise _unreadable(what, path, ex) from ex
    return sd, meta


def from_pretrained(cls, folder, what: str, **kwargs):
    """``cls.from_pretrained(folder)`` (a diffusers or transformers class) reading safetensors only.

    Without ``use_safetensors=True`` both libraries fall back to a pickled ``.bin`` in the folder and unpickle it;
    here such a folder is refused by name. An unreadable weights file is named with the fix."""
    folder = Path(folder)
    try:
        return cls.from_pretrained(folder, use_safetensors=True, **kwargs)
    except Exception as ex:
        if not (isinstance(ex, OSError) or type(ex).__name__ == "SafetensorError"):
            raise  # a config or shape problem: the library's own message says it best
        if not folder.is_dir():
            raise FileNotFoundError(f"{what}: folder {folder} not found") from ex
        if not any(folder.glob("*.safetensors")):
            pickles = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
            if pickles:
                raise WeightsFileError(
                    f"{what}: {folder} holds only pickled weights ({', '.join(pickles)}). The pack reads "
                    ".safetensors only and never unpickles a file: get the release's .safetensors files, or convert "
                    "these once where you trust them (from_pretrained, then save_pretrained with "
                    "safe_serialization=True).") from ex
            raise FileNotFoundError(f"{what}: no .safetensors weights in {folder}; copy the model's weights file(s) "
                                    f"there ({ex})") from ex
        raise WeightsFileError(f"{what}: the weights in {folder} could not be read ({type(ex).__name__}: {ex}). A "
                               "file is corrupt or incomplete, e.g. an interrupted download or copy: copy it again.") \
            from ex
