"""The path rule on every node: each input that names a file, folder, glob pattern or save name (found from
INPUT_TYPES, not from a list kept here) refuses `..`, an absolute path outside the pack's folders, a symlink that
leads out of them and a glob that reaches out of them, with one message that names the owner's switch and does not
depend on whether the target exists."""
import re

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from interplay import NODE_CLASS_MAPPINGS
from interplay.models import runtime
from interplay.models import video_io as vio

# STRING inputs named like this name a path; every one must carry the marker the walk keys on
PATH_WORDS = {"path", "folder", "dir", "directory", "pattern", "glob", "file", "filename", "prefix", "name"}
READ_KINDS = ("file", "folder", "glob")


def _specs(cls):
    it = cls.INPUT_TYPES()
    for group in ("required", "optional"):
        for name, spec in (it.get(group) or {}).items():
            yield group, name, spec[0], (spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {})


def _image(path, value):
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)


@pytest.fixture
def world(tmp_path):
    """input/, output/, models/<kind>/ with a real probe entry in each, and an outside/ folder holding secrets that
    outward symlinks in every folder point to."""
    out = tmp_path / "outside"
    (out / "secret").mkdir(parents=True)
    _image(out / "secret.png", 200)
    _image(out / "secret" / "0.png", 200)
    save_file({"x": torch.zeros(1)}, str(out / "secret.safetensors"))
    (out / "secret.yaml").write_text("model: {}\n")
    (out / "secret.pt").write_bytes(b"not a pickle")
    models = tmp_path / "models"
    runtime.set_models_root(models)
    runtime.set_output_directory(tmp_path / "output")
    inp = runtime.input_directory()
    (inp / "ok").mkdir(parents=True)
    _image(inp / "ok.png", 50)
    _image(inp / "ok" / "0.png", 50)
    (inp / "evil.png").symlink_to(out / "secret.png")
    (inp / "evil_dir").symlink_to(out / "secret", target_is_directory=True)
    (inp / "ok" / "evil_dir").symlink_to(out / "secret", target_is_directory=True)  # for patterns run in ok/
    (inp / "ok" / "sub").mkdir()
    for kind in runtime.MODEL_FOLDERS:
        d = models / kind
        (d / "probe_svd_video_cog_wan").mkdir(parents=True)
        save_file({"x": torch.zeros(1)}, str(d / "probe_svd_video_cog_wan.safetensors"))
        (d / "evil_svd_video_cog_wan.safetensors").symlink_to(out / "secret.safetensors")
        (d / "evil_svd_video_cog_wan").symlink_to(out / "secret", target_is_directory=True)
    save_file({"x": torch.zeros(1)}, str(models / "sam2" / "sam2.1_hiera_tiny_probe.safetensors"))
    (models / "sam2" / "probe.yaml").write_text("model: {}\n")
    (models / "sam2" / "probe.pt").write_bytes(b"x")
    for ext in ("yaml", "pt"):
        (models / "sam2" / f"evil.{ext}").symlink_to(out / f"secret.{ext}")
    (models / "interplay" / "evil_run").symlink_to(out, target_is_directory=True)
    (tmp_path / "output" / "evil_out").mkdir(parents=True, exist_ok=True)
    (tmp_path / "output" / "evil_out").rmdir()
    (tmp_path / "output" / "evil_out").symlink_to(out, target_is_directory=True)
    return tmp_path


def _valid(cls, name, typ, opts):
    """A value that passes for a sibling input, so the node reaches the input under test."""
    kind = opts.get("interplay_path")
    if isinstance(typ, list):
        probes = [c for c in typ if "probe" in str(c)]
        return probes[0] if probes else (opts.get("default", typ[0] if typ else ""))
    if kind == "file":
        return "ok.png"
    if kind == "folder":
        return "ok"
    if kind == "glob":
        return "*"
    if "default" in opts:
        return opts["default"]
    if typ == "IMAGE":
        return torch.rand(2, 16, 16, 3, generator=torch.Generator().manual_seed(0))
    if typ == "MASK":
        return torch.ones(2, 16, 16)
    return None


def _call(cls, target, value):
    kw = {}
    for group, name, typ, opts in _specs(cls):
        if name == target:
            kw[name] = value
        elif group == "required":
            kw[name] = _valid(cls, name, typ, opts)
    return getattr(cls(), cls.FUNCTION)(**kw)


def _hostile(world, cls, name, typ, opts):
    """(label, value) pairs: `..`, outside absolute, outward symlink, outward glob, for this kind of input."""
    out = world / "outside"
    kind = opts["interplay_path"]
    if kind == "save":
        return [("dotdot", "../escape/x"), ("absolute", str(out / "x")),
                ("symlink", "evil_run/x" if name == "output_name" else "evil_out/x"), ("glob", "../*")]
    if kind == "model":
        fresh = cls.INPUT_TYPES()  # the symlinks are listed like any file: they must still be refused
        group = "required" if name in fresh["required"] else "optional"
        choices = [str(c) for c in fresh[group][name][0]]
        probe = next(c for c in choices if "probe" in c)
        prefix = probe[: probe.index("probe")].rstrip("/")
        join = (lambda v: f"{prefix}/{v}") if prefix else (lambda v: v)
        evil = [c for c in choices if "evil" in c]
        assert evil, f"{cls.__name__}.{name}: the outward symlinks are not among the choices {choices}"
        return ([("dotdot", join("../../outside/secret.safetensors")), ("absolute", join(str(out / "secret.safetensors"))),
                 ("glob", join("../../outside/*"))] + [("symlink", e) for e in evil])
    if kind == "glob":
        return [("dotdot", "../../outside/secret/*"), ("absolute", str(out / "secret") + "/*"),
                ("symlink", "evil_dir/*"), ("glob", "*/../../../outside/secret/*")]
    target = "secret" if kind == "folder" else "secret.png"
    return [("dotdot", f"../outside/{target}"), ("absolute", str(out / target)),
            ("symlink", "evil_dir" if kind == "folder" else "evil.png"), ("glob", "evil_dir/*")]


def _path_inputs():
    for cid, cls in sorted(NODE_CLASS_MAPPINGS.items()):
        for _, name, typ, opts in _specs(cls):
            if opts.get("interplay_path"):
                yield cid, name


def test_every_path_like_input_is_marked(world):
    kinds = {"file", "folder", "glob", "save", "model"}
    for cid, cls in NODE_CLASS_MAPPINGS.items():
        for _, name, typ, opts in _specs(cls):
            mark = opts.get("interplay_path")
            assert mark is None or mark in kinds, f"{cid}.{name}: unknown interplay_path {mark!r}"
            if typ == "STRING" and set(re.split(r"[_\W]+", name)) & PATH_WORDS:
                assert mark, f"{cid}.{name} looks like a path but has no interplay_path marker"
            if isinstance(typ, list) and (any("probe" in str(c) or "evil" in str(c) for c in typ)
                                          or opts.get("model_folder") or opts.get("video_upload")):
                assert mark, f"{cid}.{name} lists files but has no interplay_path marker"
    marked = list(_path_inputs())
    assert ("InterplayLoadVideo", "path") in marked and ("InterplayLoadImageSequence", "pattern") in marked
    assert len(marked) >= 20


@pytest.mark.parametrize("cid,name", list(_path_inputs()))
def test_path_inputs_refuse_leaving_the_folders(world, cid, name):
    cls = NODE_CLASS_MAPPINGS[cid]
    spec = next((typ, opts) for _, n, typ, opts in _specs(cls) if n == name)
    kind = spec[1]["interplay_path"]
    for label, value in _hostile(world, cls, name, *spec):
        with pytest.raises(ValueError) as ei:
            _call(cls, name, value)
        msg = str(ei.value)
        assert "outside" in msg, f"{cid}.{name} {label} {value!r}: {type(ei.value).__name__}: {msg}"
        if kind != "save":
            assert isinstance(ei.value, runtime.PathRefused), f"{cid}.{name} {label}: {msg}"
            assert "INTERPLAY_ALLOW_ANY_PATH=1" in msg
    if kind in READ_KINDS:  # no oracle: an existing and a missing outside target read the same
        there = str(world / "outside" / ("secret" if kind == "folder" else "secret.png"))
        gone = str(world / "outside" / ("gone" if kind == "folder" else "gone.png"))
        if kind == "glob":
            there, gone = there + "/*", gone + "/*"
        msgs = []
        for v in (there, gone):
            with pytest.raises(runtime.PathRefused) as ei:
                _call(cls, name, v)
            msgs.append(str(ei.value).replace(v, "VALUE"))
        assert msgs[0] == msgs[1]


def test_the_switch_lifts_the_rule(world, monkeypatch):
    from interplay.nodes.video import InterplayLoadImageSequence, InterplayLoadVideo

    secret = world / "outside" / "secret.png"
    with pytest.raises(runtime.PathRefused):
        InterplayLoadVideo().load("ok.png", path=str(secret))
    monkeypatch.setenv("INTERPLAY_ALLOW_ANY_PATH", "1")
    frames = InterplayLoadVideo().load("ok.png", path=str(secret))[0]
    assert np.array_equal(vio.to_uint8(frames)[0], np.asarray(Image.open(secret)))
    assert InterplayLoadImageSequence().load("ok", "../../outside/secret/*")[2] == 1
