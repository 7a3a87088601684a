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


def read_safetensors(path, what: str = "weights", keys=None, convert=None) -> tuple[dict, dict]:
    """(tensors, metadata) of a safetensors file, on the CPU.

    ``keys``: a collection of names to read (the others are never read from disk: a branch inside a whole
    transformer file costs only its own bytes); names the file lacks are left out. ``convert(tensor)`` is applied
    to each tensor as it is read (e.g. a cast or a move), so a large file never sits in memory in two forms."""
    from safetensors import safe_open

    path = Path(path)
    _check_file(what, path)
    try:
        sd = {}
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            wanted = None if keys is None else set(keys)
            names = f.keys() if wanted is None else [k for k in f.keys() if k in wanted]
            for k in names:
                t = f.get_tensor(k)
                if convert is not None:
                    try:
                        t = convert(t)
                    except Exception as ex:  # the caller's own error (e.g. out of memory), not the file's
                        raise _ConvertError() from ex
                sd[k] = t
    except _ConvertError as ex:
        raise ex.__cause__
    except Exception as ex:
        raise _unreadable(what, path, ex) from ex
    return sd, meta


class _ConvertError(Exception):
    pass


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


# ------------------------------------------------------------------------------- untrusted headers
# A file's header and metadata are the user's word, not the file's bytes: shapes in the header are backed by the
# tensors (safetensors checks the offsets), but a config in the metadata (or a config.json beside the weights)
# can claim anything. Loaders read the header first, check the config against the shapes and these bounds,
# build on the meta device and compare every key and shape before one byte of weights is allocated.

def read_header(path, what: str = "weights") -> tuple[dict, dict]:
    """(meta-device tensors with the file's shapes and dtypes, metadata), reading only the header: shape
    inference and key/shape checks run on these before anything is allocated."""
    import torch
    from safetensors import safe_open

    path = Path(path)
    _check_file(what, path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            out = {}
            for k in f.keys():
                sl = f.get_slice(k)
                out[k] = torch.empty(tuple(sl.get_shape()), dtype=_torch_dtype(sl.get_dtype()), device="meta")
    except Exception as ex:
        raise _unreadable(what, path, ex) from ex
    return out, meta


def header_shapes(tensors: dict) -> dict[str, tuple[int, ...]]:
    """{key: shape tuple} of :func:`read_header`'s meta tensors."""
    return {k: tuple(v.shape) for k, v in tensors.items()}


def header_info(tensors: dict) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{key: (torch dtype name, shape tuple)} of :func:`read_header`'s meta tensors."""
    return {k: (str(v.dtype).removeprefix("torch."), tuple(v.shape)) for k, v in tensors.items()}


_DTYPE_NAMES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
                "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
                "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}


def _torch_dtype(name: str):
    import torch

    return getattr(torch, _DTYPE_NAMES.get(name, "uint8"), torch.uint8)


def metadata_json(meta: dict, key: str, path, what: str) -> dict:
    """A JSON object stored in the header metadata under ``key``; a bad or non-object value is reported with the
    file's name (never a raw JSONDecodeError / TypeError)."""
    import json

    try:
        value = json.loads(meta[key])
    except (json.JSONDecodeError, TypeError) as ex:
        raise WeightsFileError(f"{what}: {path}: its {key!r} metadata is not JSON ({ex}); the file was not written "
                               "by a tool this loader knows, or it is damaged: save or download it again") from None
    if not isinstance(value, dict):
        raise WeightsFileError(f"{what}: {path}: its {key!r} metadata must be a JSON object; got "
                               f"{type(value).__name__}. Save or download the file again.")
    return value


def read_json_config(path, what: str) -> dict:
    """A config.json (or sidecar .json) beside weights: a JSON object, or an error naming the file."""
    import json

    path = Path(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as ex:
        raise WeightsFileError(f"{what}: {path} is not valid JSON ({ex}); restore the release's file") from None
    if not isinstance(value, dict):
        raise WeightsFileError(f"{what}: {path} must hold a JSON object; got {type(value).__name__}")
    return value


def check_config(cfg: dict, bounds: dict, path, what: str, *, inferred: dict | None = None) -> dict:
    """Vet a config that came from a file: each key in ``bounds`` (key -> (lo, hi), applied to a number or to
    every number of a list, lists at most 16 long) must be a number in range, and every key the weights' own
    shapes determine (``inferred``) must agree with them; the metadata never overrides the shapes. Returns
    ``{**cfg, **inferred}``."""
    inferred = inferred or {}
    for key, want in inferred.items():
        if key in cfg and cfg[key] != want and not (isinstance(want, tuple) and list(want) == cfg[key]):
            raise WeightsFileError(f"{what}: {path}: its config says {key}={cfg[key]!r} but the weights hold "
                                   f"{key}={want!r}; the config does not describe these weights. Save the file "
                                   "again (or remove the wrong config).")
    out = {**cfg, **inferred}
    for key, (lo, hi) in bounds.items():
        if key not in out or out[key] is None:
            continue
        v = out[key]
        vals = list(v) if isinstance(v, (list, tuple)) else [v]
        ok = len(vals) <= 16 and all(isinstance(x, (int, float)) and not isinstance(x, bool) and lo <= x <= hi
                                     for x in vals)
        if not ok:
            raise WeightsFileError(f"{what}: {path}: config value {key}={v!r} is outside {lo}..{hi}; a file's "
                                   "config is not trusted to size a model. Save the file again.")
    return out


MAX_REBUILT_BYTES = 1 << 30  # tensors a loader computes itself (positional tables), not read from the file


def build_checked(factory, header: dict, path, what: str, *, optional=(), fix: str = ""):
    """Build ``factory()`` on the meta device (nothing allocated) and compare its state-dict keys and shapes with
    the file's ``header`` (from :func:`read_header`); raise naming the first mismatches, else return the meta
    module (materialise it with ``load_state_dict(..., assign=True)``). Keys in ``optional`` (suffixes) may be
    missing from the file (buffers the loader rebuilds); those and the non-persistent buffers together may not
    exceed MAX_REBUILT_BYTES, so a config cannot size a table the file does not hold."""
    import torch

    try:
        with torch.device("meta"):
            module = factory()
    except (TypeError, ValueError, KeyError, AttributeError, IndexError, ZeroDivisionError) as ex:
        raise WeightsFileError(f"{what}: {path}: its config does not build a model ({type(ex).__name__}: {ex}). "
                               + (fix or "Save the file again.")) from ex
    own = module.state_dict()
    missing = [k for k in own if k not in header and not k.endswith(tuple(optional))]
    unexpected = [k for k in header if k not in own]
    wrong = [(k, tuple(header[k].shape), tuple(own[k].shape)) for k in own
             if k in header and tuple(header[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        parts = [f"{what}: {path} does not match the model its config describes:"]
        if wrong:
            parts.append("shapes (key: file -> config) " + "; ".join(f"{k}: {a} -> {b}" for k, a, b in wrong[:4])
                         + (f" (+{len(wrong) - 4} more)" if len(wrong) > 4 else ""))
        if missing:
            parts.append(f"{len(missing)} missing, e.g. " + ", ".join(missing[:4]))
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected, e.g. " + ", ".join(unexpected[:4]))
        raise WeightsFileError(" ".join(parts) + ". " + (fix or "Save the file again."))
    rebuilt = sum(t.numel() * t.element_size() for n, t in list(module.named_parameters())
                  + list(module.named_buffers()) if n not in header)
    if rebuilt > MAX_REBUILT_BYTES:
        raise WeightsFileError(f"{what}: {path}: its config asks for {rebuilt / 2 ** 30:.1f} GiB of tables the "
                               "file does not hold (e.g. positional embeddings from sample sizes); refused. "
                               + (fix or "Save the file again."))
    return module
