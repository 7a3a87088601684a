"""Corrupt and truncated weights files: every loader names the file and the fix, and nothing is unpickled."""
from __future__ import annotations

import pickle
import shutil

import pytest
import torch
from safetensors.torch import save_file

from interplay.models import weights as W
from interplay.models.backbones import cogvideox as cbb
from interplay.models.backbones import svd as sbb
from interplay.models.control import interdyn as idb
from interplay.models.control import kinemask as km
from interplay.models.training import lora as L
from interplay.models.training import trainer as T
from kit import tiny


def _valid(path):
    save_file({"a": torch.arange(600, dtype=torch.float32).reshape(20, 30)}, str(path), metadata={"k": "v"})
    return path


def _truncated(path):
    data = _valid(path).read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _garbage(path):
    path.write_bytes(b"this is not a safetensors file at all")
    return path


def _pickle(path):
    # a torch.save-style pickle renamed .safetensors must be refused by the header check, never unpickled
    path.write_bytes(pickle.dumps({"a": [1, 2, 3]}))
    return path


BROKEN = {"truncated": _truncated, "garbage": _garbage, "pickle": _pickle}


def test_read_valid_file(tmp_path):
    sd, meta = W.read_safetensors(_valid(tmp_path / "ok.safetensors"), "X")
    assert meta == {"k": "v"} and torch.equal(sd["a"], torch.arange(600, dtype=torch.float32).reshape(20, 30))
    assert W.read_metadata(tmp_path / "ok.safetensors") == {"k": "v"}


@pytest.mark.parametrize("kind", sorted(BROKEN))
@pytest.mark.parametrize("reader", [W.read_safetensors, W.read_metadata])
def test_broken_file_named_with_fix(tmp_path, kind, reader):
    path = BROKEN[kind](tmp_path / "w.safetensors")
    with pytest.raises(W.WeightsFileError) as ei:
        reader(path, "Some Loader")
    msg = str(ei.value)
    assert msg.startswith(f"Some Loader: {path} is not a readable safetensors file ({path.stat().st_size} bytes")
    assert "download or save it again" in msg


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="Some Loader: weights file .*nope.safetensors not found"):
        W.read_safetensors(tmp_path / "nope.safetensors", "Some Loader")
    with pytest.raises(FileNotFoundError, match="it is a folder"):
        W.read_metadata(tmp_path, "Some Loader")


LOADERS = {
    "kinemask branch": (lambda p: km.load_branch(p), "KineMask branch"),
    "interdyn branch": (lambda p: idb.load_branch(p), "InterDyn branch"),
    "svd single file": (lambda p: sbb.load_svd(p, dtype="fp32", device="cpu"), "SVD loader"),
    "lora": (lambda p: L.read_lora(p), "LoRA"),
}


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_each_loader_reports_a_corrupt_file(tmp_path, name):
    fn, what = LOADERS[name]
    path = _truncated(tmp_path / "model.safetensors")
    with pytest.raises(W.WeightsFileError, match=f"^{what}.*{path.name} is not a readable safetensors file"):
        fn(path)


def test_cogvideox_single_files_name_the_corrupt_part(tmp_path):
    files = tiny.tiny_cogvideox_files()
    bad = _garbage(tmp_path / "vae.safetensors")
    src = dict(transformer=files["transformer"], vae=bad, text_encoder=files["text_encoder"])
    with pytest.raises(W.WeightsFileError, match=r"^CogVideoX loader \(vae\): .*vae.safetensors is not a readable"):
        cbb.load_cogvideox(src, dtype="fp32", device="cpu")


def test_sam2_weights_corrupt(tmp_path):
    pytest.importorskip("sam2")
    from interplay.models.segmentation.sam2 import load_sam2

    config, good = tiny.tiny_sam2()
    shutil.copy(config, tmp_path / config.name)
    bad = _truncated(tmp_path / "sam2_bad.safetensors")
    with pytest.raises(W.WeightsFileError, match="SAM2.*sam2_bad.safetensors is not a readable"):
        load_sam2(tmp_path / config.name, bad, device="cpu")


def test_corrupt_resume_state_says_how_to_start_over(tmp_path):
    _garbage(tmp_path / T.STATE)
    with pytest.raises(W.WeightsFileError, match="train: resume state .* is corrupt or truncated .*delete it"):
        T.read_state(tmp_path)
    save_file({"x": torch.zeros(1)}, str(tmp_path / T.STATE), metadata={"other": "1"})
    with pytest.raises(ValueError, match="no readable 'state' metadata .*not written by the trainer"):
        T.read_state(tmp_path)


def test_lora_metadata_not_json(tmp_path):
    save_file({"transformer.a.lora_A.weight": torch.zeros(2, 3)}, str(tmp_path / "l.safetensors"),
              metadata={"interplay_lora": "{not json"})
    with pytest.raises(ValueError, match="'interplay_lora' metadata is not JSON"):
        L.read_lora(tmp_path / "l.safetensors")


def _pickled_part(folder, part):
    """Replace <folder>/<part>/*.safetensors by a torch.save pickle of the same tensors (.bin)."""
    from safetensors.torch import load_file

    (f,) = sorted((folder / part).glob("*.safetensors"))
    torch.save(load_file(str(f)), str(f.with_suffix(".bin")))
    f.unlink()


@pytest.fixture
def no_unpickling(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("torch.load was called on a user file")

    monkeypatch.setattr(torch, "load", refuse)


def test_diffusers_folders_never_unpickle(tmp_path, tiny_cogvideox, tiny_svd, no_unpickling):
    cog = tmp_path / "cog"
    shutil.copytree(tiny_cogvideox, cog)
    _pickled_part(cog, "vae")
    with pytest.raises(W.WeightsFileError, match=r"^CogVideoX loader \(vae\): .*vae holds only pickled weights "
                                                  r"\(diffusion_pytorch_model.bin\).*never unpickles"):
        cbb.load_cogvideox(cog, dtype="fp32", device="cpu")
    svd_dir = tmp_path / "svd"
    shutil.copytree(tiny_svd, svd_dir)
    _pickled_part(svd_dir, "image_encoder")  # a transformers part: model.safetensors -> model.bin
    with pytest.raises(W.WeightsFileError, match=r"^SVD loader \(image_encoder\): .*holds only pickled weights"):
        sbb.load_svd(svd_dir, dtype="fp32", device="cpu")


def test_diffusers_folder_with_a_corrupt_part(tmp_path, tiny_cogvideox):
    cog = tmp_path / "cog"
    shutil.copytree(tiny_cogvideox, cog)
    (f,) = sorted((cog / "transformer").glob("*.safetensors"))
    _truncated(f)
    with pytest.raises(W.WeightsFileError, match=r"^CogVideoX loader \(transformer\): the weights in .*transformer "
                                                  r"could not be read.*copy it again"):
        cbb.load_cogvideox(cog, dtype="fp32", device="cpu")
    (f2,) = sorted((cog / "text_encoder").glob("*.safetensors"))
    f.unlink()
    with pytest.raises(FileNotFoundError, match=r"^CogVideoX loader \(transformer\): no .safetensors weights in"):
        cbb.load_cogvideox(cog, dtype="fp32", device="cpu")
    assert f2.is_file()


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_read_header_gives_shapes_and_metadata(tmp_path, kind):
    path = _valid(tmp_path / "ok.safetensors")
    assert W.read_header(path, "X") == ({"a": (20, 30)}, {"k": "v"})
    broken = BROKEN[kind](tmp_path / "w.safetensors")
    with pytest.raises(W.WeightsFileError, match="is not a readable safetensors file"):
        W.read_header(broken, "Some Loader")
