"""Reading safetensors files: the one place that opens a user's weights file.

safetensors' own errors ("Error while deserializing header: header too large") name neither the file nor the
fix; every loader reads through here so a missing, truncated or corrupt file is reported by path with what
to do. Only safetensors are read: nothing here unpickles.
"""
from __future__ import annotations

from pathlib import Path

SUFFIXES = (".safetensors", ".sft")


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
