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


def test_read_header_gives_dtypes_and_shapes_without_data(tmp_path):
    path = tmp_path / "h.safetensors"
    save_file({"w": torch.zeros(3, 4, dtype=torch.bfloat16), "q": torch.zeros(2, dtype=torch.float8_e4m3fn),
               "s": torch.ones((), dtype=torch.float32)}, str(path))
    assert W.header_info(W.read_header(path)[0]) == {"w": ("bfloat16", (3, 4)), "q": ("float8_e4m3fn", (2,)),
                                                      "s": ("float32", ())}


@pytest.mark.parametrize("kind", sorted(BROKEN))
@pytest.mark.parametrize("reader", [W.read_safetensors, W.read_metadata, W.read_header])
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
    tensors, meta = W.read_header(path, "X")
    assert (W.header_shapes(tensors), meta) == ({"a": (20, 30)}, {"k": "v"})
    broken = BROKEN[kind](tmp_path / "w.safetensors")
    with pytest.raises(W.WeightsFileError, match="is not a readable safetensors file"):
        W.read_header(broken, "Some Loader")
# ------------------------------------------------------------------------------- untrusted headers
import json  # noqa: E402
import time  # noqa: E402

from safetensors.torch import load_file  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils._pytree import tree_leaves  # noqa: E402


class _Allocations(TorchDispatchMode):
    """Bytes of every non-meta tensor any op produces while active: an upper bound of what was allocated."""

    def __init__(self):
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                self.bytes += t.numel() * t.element_size()
        return out


def _refused_at_once(fn, match, max_bytes=16 << 20):
    """fn() is refused (WeightsFileError matching ``match``) within 1 s of CPU and allocates under max_bytes."""
    t0 = time.process_time()
    with _Allocations() as seen, pytest.raises(W.WeightsFileError, match=match) as ei:
        fn()
    cpu = time.process_time() - t0
    assert cpu < 1.0, f"took {cpu:.2f} s of CPU to refuse"
    assert seen.bytes < max_bytes, f"allocated {seen.bytes / 2 ** 20:.0f} MiB before refusing"
    return str(ei.value)


def _with_meta(src, dst, **meta):
    """A copy of the safetensors file ``src`` with its metadata replaced."""
    save_file(load_file(str(src)), str(dst), metadata=meta)
    return dst


KINEMASK_5B = dict(num_attention_heads=48, attention_head_dim=64, vae_channels=16, in_channels=3, downscale_coef=8,
                   time_embed_dim=512, num_layers=8, text_embed_dim=4096, sample_width=90, sample_height=60,
                   sample_frames=49, patch_size=2, max_text_seq_length=226, out_proj=True,
                   use_rotary_positional_embeddings=True, use_learned_positional_embeddings=True)
INTERDYN_RELEASE = dict(in_channels=8, out_channels=4, block_out_channels=[320, 640, 1280, 1280],
                        down_block_types=["CrossAttnDownBlockSpatioTemporal"] * 3 + ["DownBlockSpatioTemporal"],
                        addition_time_embed_dim=256, projection_class_embeddings_input_dim=768, layers_per_block=2,
                        cross_attention_dim=1024, transformer_layers_per_block=1, num_attention_heads=[5, 10, 10, 20],
                        num_frames=25, conditioning_channels=3, conditioning_embedding_out_channels=[16, 32, 96, 256])


@pytest.fixture(scope="module")
def small_files(tmp_path_factory):
    """A tiny KineMask branch file (~100 KB) and a tiny InterDyn branch file, as the pack writes them."""
    d = tmp_path_factory.mktemp("small")
    bb = cbb.random_backbone("tiny", seed=0)
    kb = km.save_branch(km.new_branch(bb.denoiser, num_layers=1, downscale=bb.extra.get("vae_scale_factor_spatial", 8)),
                        d / "km.safetensors")
    ib = idb.save_branch(idb.new_branch(sbb.random_backbone("tiny", seed=0).denoiser), d / "id.safetensors")
    return kb, ib


def test_a_small_file_claiming_5b_dims_is_refused_before_any_allocation(small_files, tmp_path):
    kb, ib = small_files
    assert kb.stat().st_size < 200_000
    cfg = {**json.loads(W.read_metadata(kb)["interplay_config"]), **KINEMASK_5B}
    big = _with_meta(kb, tmp_path / "km5b.safetensors", kind="kinemask", interplay_config=json.dumps(cfg))
    msg = _refused_at_once(lambda: km.load_branch(big), "KineMask branch: .*km5b.safetensors")
    assert "num_attention_heads=48 but the weights hold num_attention_heads=" in msg
    # InterDyn: the release's config over a tiny file (main built the 943 MB model, then compared)
    big = _with_meta(ib, tmp_path / "id_release.safetensors", interplay_kind="interdyn",
                     config=json.dumps(INTERDYN_RELEASE), residual_rule="once")
    msg = _refused_at_once(lambda: idb.load_branch(big), "InterDyn branch: .*id_release.safetensors does not match")
    assert "shapes (key: file -> config)" in msg
    # a table the file does not hold, sized by in-bounds sample sizes: refused before it is built
    cfg = {**json.loads(W.read_metadata(kb)["interplay_config"]), "use_learned_positional_embeddings": True,
           "sample_width": 4096, "sample_height": 4096, "sample_frames": 4096}
    big = _with_meta(kb, tmp_path / "km_table.safetensors", kind="kinemask", interplay_config=json.dumps(cfg))
    _refused_at_once(lambda: km.load_branch(big), r"GiB of tables the file does not hold")
    assert km.load_branch(kb).module.config.num_layers == 1  # the honest file still loads


def test_transformer_metadata_cannot_override_the_shapes(tmp_path):
    files = tiny.tiny_cogvideox_files()
    tr = files["transformer"]
    for key, value, match in (("num_layers", 100000, "num_layers=100000 but the weights hold num_layers=2"),
                              ("sample_width", 10 ** 6, "sample_width=1000000 is outside 1..4096"),
                              ("attention_head_dim", 4096, "attention_head_dim=4096 but the weights hold")):
        bad = _with_meta(tr, tmp_path / f"tr_{key}.safetensors", config=json.dumps({key: value}))
        src = dict(files, transformer=bad)
        _refused_at_once(lambda: cbb.load_cogvideox(src, dtype="fp32", device="cpu"),
                         rf"CogVideoX loader \(transformer\): .*tr_{key}.safetensors: .*{match}")


def _bad_metadata_cases(kb, ib, lora_file, tr):
    """(loader, file, metadata) whose metadata is not JSON, not an object, or of the wrong type."""
    return [
        (km.load_branch, kb, {"kind": "kinemask", "interplay_config": "{not json"}),
        (km.load_branch, kb, {"kind": "kinemask", "interplay_config": "[1, 2]"}),
        (km.load_branch, kb, {"kind": "kinemask", "interplay_config": json.dumps({"num_layers": "8"})}),
        (km.load_branch, kb, {"kind": "kinemask", "interplay_config": json.dumps({"sample_width": [1] * 99})}),
        (idb.load_branch, ib, {"config": "{not json"}),
        (idb.load_branch, ib, {"config": "[1]"}),
        (idb.load_branch, ib, {"config": json.dumps({"block_out_channels": "wide"})}),
        (idb.load_branch, ib, {"config": json.dumps({"down_block_types": ["os.system"]})}),
        (L.read_lora, lora_file, {"interplay_lora": "[1]"}),
        (L.read_lora, lora_file, {"interplay_lora": json.dumps({"alpha": "strong"})}),
        (L.read_lora, lora_file, {"interplay_lora": json.dumps({"prefix": 3})}),
        (L.read_lora, lora_file, {"lora_adapter_metadata": "[1]"}),
        (L.read_lora, lora_file, {"lora_adapter_metadata": json.dumps({"lora_alpha": [1]})}),
        (lambda p: cbb.load_cogvideox(dict(tiny.tiny_cogvideox_files(), transformer=p), dtype="fp32", device="cpu"),
         tr, {"config": "[]"}),
        (lambda p: cbb.load_cogvideox(dict(tiny.tiny_cogvideox_files(), transformer=p), dtype="fp32", device="cpu"),
         tr, {"config": json.dumps({"sample_frames": "many"})}),
    ]


def test_bad_metadata_names_the_file(small_files, tmp_path):
    kb, ib = small_files
    lora_file = tmp_path / "l.safetensors"
    save_file({"transformer.a.lora_A.weight": torch.zeros(2, 3), "transformer.a.lora_B.weight": torch.zeros(3, 2)},
              str(lora_file))
    tr = tiny.tiny_cogvideox_files()["transformer"]
    for i, (fn, src, meta) in enumerate(_bad_metadata_cases(kb, ib, lora_file, tr)):
        path = _with_meta(src, tmp_path / f"bad{i}.safetensors", **meta)
        with pytest.raises(Exception) as ei:
            fn(path)
        ex = ei.value
        assert isinstance(ex, W.WeightsFileError) and not isinstance(ex, json.JSONDecodeError), \
            f"case {i} {meta}: {type(ex).__name__}: {ex}"
        assert f"bad{i}.safetensors" in str(ex), f"case {i}: the file is not named: {ex}"
    (tmp_path / "folder").mkdir()  # a config.json beside the weights is read the same way
    shutil.copy(ib, tmp_path / "folder" / "diffusion_pytorch_model.safetensors")
    _with_meta(ib, tmp_path / "folder" / "diffusion_pytorch_model.safetensors", format="pt")
    (tmp_path / "folder" / "config.json").write_text("{broken")
    with pytest.raises(W.WeightsFileError, match="InterDyn branch: .*config.json is not valid JSON"):
        idb.load_branch(tmp_path / "folder")


def test_branch_loads_with_or_without_its_frozen_position_table(tmp_path):
    """A learned-position branch (the 5B-I2V layout) loads from a file that holds patch_embed.pos_embedding and
    from one saved without that frozen table (rebuilt as at init, within the bounds)."""
    torch.manual_seed(0)
    m = km.KineMaskBranch(num_attention_heads=2, attention_head_dim=16, vae_channels=4, downscale_coef=4,
                          time_embed_dim=16, num_layers=1, sample_width=4, sample_height=4, sample_frames=5,
                          text_embed_dim=32, max_text_seq_length=8, use_rotary_positional_embeddings=True,
                          use_learned_positional_embeddings=True)
    lean = km.save_branch(m, tmp_path / "lean.safetensors")  # what the pack writes now: no frozen table
    assert "patch_embed.pos_embedding" not in load_file(str(lean))
    full = tmp_path / "full.safetensors"  # what older files hold: the table too
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(full), metadata=W.read_metadata(lean))
    assert "patch_embed.pos_embedding" in load_file(str(full))
    a, b = km.load_branch(full).module, km.load_branch(lean).module
    for name, t in m.state_dict().items():  # loaders hand out float32 unless asked otherwise
        assert torch.equal(a.state_dict()[name], t.float()) and torch.equal(b.state_dict()[name], t.float()), name


def test_svd_single_file_configs_are_checked_before_building(tmp_path):
    """An original-layout SVD file (10 MB) whose interplay_configs claim a UNet 40x as wide (the same keys,
    ~1600x the parameters) is refused before anything is read or built, as is a block count that would drive
    the converter's loops."""
    # diffusers imports its SVD modules lazily on first use (~0.4 s of CPU): done here, so the timed refusal
    # measures the loader's own checks, not Python imports (it measured 0.9-1.4 s in full-suite runs otherwise)
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel  # noqa: F401

    src = tiny.tiny_models_root() / tiny.SVD_CHECKPOINT
    cfgs = json.loads(W.read_metadata(src)["interplay_configs"])
    wide = dict(cfgs["unet"], block_out_channels=[40 * c for c in cfgs["unet"]["block_out_channels"]])
    big = _with_meta(src, tmp_path / "svd_wide.safetensors", interplay_configs=json.dumps({**cfgs, "unet": wide}))
    msg = _refused_at_once(lambda: sbb.load_svd(big, dtype="fp32", device="cpu"),
                           r"SVD loader \(unet\): .*svd_wide.safetensors does not match")
    assert "shapes (key: file -> config)" in msg
    loops = _with_meta(src, tmp_path / "svd_loops.safetensors",
                       interplay_configs=json.dumps({**cfgs, "unet": dict(cfgs["unet"], layers_per_block=100000)}))
    _refused_at_once(lambda: sbb.load_svd(loops, dtype="fp32", device="cpu"), "layers_per_block=100000 is outside")
