"""SAM2 loading, conversion, image segmentation and video propagation on a tiny random-init SAM2.1.

The tiny model keeps the sam2.1_hiera_t architecture (Hiera trunk, FPN neck, memory attention/encoder)
at toy widths and a 128 px input; random weights make masks arbitrary, so the tests check plumbing
against the sam2 package's own predictors (exact equality), identities and the documented errors.
"""
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("sam2")

from interplay.models.segmentation import sam2 as S  # noqa: E402


def build_tiny_sam2(folder: Path) -> tuple[str, Path]:
    """The toy sam2.1_hiera_t YAML plus its seeded random weights. Returns (yaml, safetensors)."""
    yaml = S.write_tiny_config(folder / "sam2.1_hiera_tiny_test.yaml")
    torch.manual_seed(0)
    model = S.build_model(str(yaml))
    weights = S.save_sam2_weights(model, folder / "sam2.1_hiera_tiny_test.safetensors")
    return str(yaml), weights


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_sam2(tmp_path_factory.mktemp("sam2"))


@pytest.fixture(scope="module")
def sam(tiny):
    return S.load_sam2(*tiny, device="cpu")


def _scene(F=4, H=48, W=64):
    """A bright square moving right by 3 px per frame on a dark textured background."""
    g = torch.Generator().manual_seed(0)
    fr = torch.rand(F, H, W, 3, generator=g) * 0.2
    for f in range(F):
        fr[f, 16:30, 10 + 3 * f:24 + 3 * f] = torch.tensor([0.9, 0.8, 0.2])
    return fr


def test_config_names_and_errors():
    assert S.config_names()[:4] == ["sam2.1_hiera_t", "sam2.1_hiera_s", "sam2.1_hiera_b+", "sam2.1_hiera_l"]
    assert S.resolve_config("sam2.1_hiera_t.yaml").name == "sam2.1_hiera_t.yaml"
    assert S.resolve_config("sam2_hiera_l").parent.name == "sam2"
    with pytest.raises(ValueError, match=r"`config`: unknown SAM2 config 'sam3'; allowed: sam2.1_hiera_t, .*sam2_hiera_l"):
        S.resolve_config("sam3")


class _Payload:
    """Unpickling this creates ``marker``: proof that a pickle's code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


HOSTILE = """model:
  _target_: sam2.modeling.sam2_base.SAM2Base
  image_encoder:
    _target_: torch.load
    f: {pickle}
    weights_only: false
  memory_attention:
    _target_: sam2.modeling.memory_attention.MemoryAttention
    d_model: 256
"""


def test_a_config_never_runs_code(tmp_path, tiny):
    """The issue's YAML: SAM2Base at the top, a nested ``_target_: torch.load`` of a pickle with
    ``weights_only: false``. It is refused by name and the pickle's payload never runs; the package's own
    configs and the pack's tiny config still build."""
    marker = tmp_path / "payload_ran"
    torch.save(_Payload(marker), tmp_path / "evil.pt")
    (tmp_path / "sam2").mkdir()
    cfg = tmp_path / "sam2" / "evil.yaml"
    cfg.write_text(HOSTILE.format(pickle=tmp_path / "evil.pt"))
    with pytest.raises(Exception) as ei:
        S.build_model(str(cfg))
    assert not marker.exists(), "the pickle's payload ran"
    assert isinstance(ei.value, ValueError)
    assert "evil.yaml asks to build 'torch.load' at model.image_encoder;" in str(ei.value)
    # the Load SAM2 node refuses it the same way (a YAML dropped into models/sam2)
    from interplay.models import runtime
    from interplay.nodes.segmentation import InterplaySam2Loader

    runtime.set_models_root(tmp_path)
    import shutil

    shutil.copy(tiny[1], tmp_path / "sam2" / "sam2.1_hiera_tiny_x.safetensors")
    with pytest.raises(ValueError, match="Load SAM2: `config`: evil.yaml asks to build 'torch.load'"):
        InterplaySam2Loader().load("sam2.1_hiera_tiny_x.safetensors", config="evil.yaml", device="cpu")
    assert not marker.exists()
    # hydra's other doors and a re-interpolation are shut too
    for body, what in (("  _args_: [1]\n", "_args_"), ("  x: {_target_: os.system, _args_: [id]}\n", "os.system"),
                       ("  y: [{_target_: builtins.eval}]\n", "builtins.eval"),
                       ("  z: \"${oc.create:'{_target_: torch.load}'}\"\n", "torch.load"),
                       ("  w: \\${oc.env:HOME}\n", "interpolation")):
        cfg.write_text("model:\n  _target_: sam2.modeling.sam2_base.SAM2Base\n" + body)
        with pytest.raises(ValueError, match=what.replace(".", r"\.")):
            S.build_model(str(cfg))
    assert "sam2.modeling.backbones.hieradet.Hiera" in S.allowed_targets() and "torch.load" not in S.allowed_targets()
    assert S.build_model(tiny[0]) is not None


def test_load_is_the_saved_model_and_mismatches_are_listed(tiny, sam, tmp_path):
    from safetensors.torch import load_file, save_file

    yaml, weights = tiny
    sd = load_file(str(weights))
    for k, v in sam.model.state_dict().items():
        assert torch.equal(v, sd[k]), k
    assert sam.source == str(weights) and sam.image_size == 128 and sam.dtype == torch.float32
    bad = dict(sd)
    bad.pop("no_mem_embed")
    bad["obj_ptr_tpos_proj.weight"] = torch.zeros(3, 3)
    bad["extra.weight"] = torch.zeros(2)
    save_file(bad, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError) as e:
        S.load_sam2(yaml, tmp_path / "bad.safetensors", device="cpu")
    msg = str(e.value)
    assert "`weights`: bad.safetensors does not fit config" in msg
    assert "1 missing: no_mem_embed (1, 1, 32)" in msg and "1 unexpected: extra.weight (2,)" in msg
    assert "obj_ptr_tpos_proj.weight file (3, 3) vs config (16, 32)" in msg
    (tmp_path / "x.pt").write_bytes(b"not used")
    with pytest.raises(ValueError, match=r"`weights`: x.pt is not a .safetensors file.*weights_only=True"):
        S.load_sam2(yaml, tmp_path / "x.pt", device="cpu")
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        S.load_sam2(yaml, tmp_path / "missing.safetensors", device="cpu")


class _Evil:
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_convert_official_checkpoint_round_trip_and_refuses_pickles(tiny, sam, tmp_path):
    yaml, _ = tiny
    sd = sam.model.state_dict()
    torch.save({"model": sd}, tmp_path / "official.pt")
    out = S.convert_sam2_checkpoint(tmp_path / "official.pt", tmp_path / "sam2" / "conv.safetensors", config=yaml)
    again = S.load_sam2(yaml, out, device="cpu")
    for k, v in sd.items():
        assert torch.equal(v, again.model.state_dict()[k]), k
    torch.save({"model": sd, "extra": _Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match=r"`checkpoint`: evil.pt could not be read as a weights-only"):
        S.convert_sam2_checkpoint(tmp_path / "evil.pt", tmp_path / "evil.safetensors")
    assert not (tmp_path / "evil.safetensors").exists()
    torch.save({"model": {"a": torch.zeros(2)}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"does not fit config .*missing"):
        S.convert_sam2_checkpoint(tmp_path / "other.pt", tmp_path / "o.safetensors", config=yaml)


def test_segment_image_from_a_click_matches_the_sam2_predictor(sam):
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    img = _scene(1)[0]
    m = S.segment_image(sam, img, points=[[16, 22]], labels=[1])
    assert m.dtype == torch.bool and m.shape == (48, 64)
    # the package's own predictor (fresh, same model) on the same prompt: identical mask
    ref = SAM2ImagePredictor(sam.model)
    ref._bb_feat_sizes = [(32, 32), (16, 16), (8, 8)]
    with torch.inference_mode():
        ref.set_image(img.numpy())
        masks, scores, _ = ref.predict(point_coords=np.array([[16, 22]], np.float32),
                                       point_labels=np.array([1]), multimask_output=True)
    assert torch.equal(m, torch.from_numpy(masks[int(np.argmax(scores))] > 0.5))
    # deterministic; a box plus a negative click is accepted and gives a [H,W] mask too
    assert torch.equal(m, S.segment_image(sam, img[None], points=[[16, 22]]))
    mb = S.segment_image(sam, img, points=[[40, 40]], labels=[0], box=[10, 16, 24, 30])
    assert mb.shape == (48, 64) and mb.dtype == torch.bool


def test_segment_objects_encodes_once_and_equals_one_by_one(sam, monkeypatch):
    img = _scene(1)[0]
    prompts = [dict(points=[[16, 22]]), dict(points=[[50, 40], [5, 5]], labels=[1, 0]), dict(box=[10, 16, 24, 30])]
    one_by_one = torch.stack([S.segment_image(sam, img, **p) for p in prompts])
    calls = []
    pred = sam.image_predictor()
    orig = pred.set_image
    monkeypatch.setattr(pred, "set_image", lambda im: (calls.append(1), orig(im))[1])
    together = S.segment_objects(sam, img, prompts)
    assert calls == [1] and torch.equal(together, one_by_one)
    with pytest.raises(ValueError, match="object 1: got 2 points but 1 labels"):
        S.segment_objects(sam, img, [dict(points=[[1, 1]]), dict(points=[[1, 2], [3, 4]], labels=[1])])


@pytest.mark.parametrize("kw,needle", [
    (dict(), "at least one point or a box"),
    (dict(points=[[1, 2], [3, 4]], labels=[1]), "2 points but 1 labels"),
    (dict(points=[[1, 2]], labels=[2]), "labels must be 1 (positive) or 0 (negative)"),
    (dict(box=[10, 10, 5, 20]), "x1 > x0 and y1 > y0"),
])
def test_segment_image_prompt_errors(sam, kw, needle):
    with pytest.raises(ValueError) as e:
        S.segment_image(sam, _scene(1)[0], **kw)
    assert needle in str(e.value)


def test_propagate_matches_the_official_video_predictor(sam, monkeypatch):
    """Our in-memory inference state gives exactly what init_state gives for the same preprocessed frames."""
    import sam2.sam2_video_predictor as vp

    frames = _scene(4)
    prompts = {0: dict(points=[[16, 22]], labels=[1]), 2: dict(box=[16, 16, 30, 30])}
    ours = S.propagate_video(sam, frames, prompts)
    assert ours.shape == (4, 48, 64) and ours.dtype == torch.bool

    images, H, W = S._frames_tensor(sam, frames)
    monkeypatch.setattr(vp, "load_video_frames", lambda **kw: (images, H, W))
    model = sam.model
    with torch.inference_mode():
        state = model.init_state("unused")
        model.add_new_points_or_box(state, 0, 0, points=np.array([[16, 22]], np.float32), labels=np.array([1]))
        model.add_new_points_or_box(state, 2, 0, box=np.array([16, 16, 30, 30], np.float32))
        ref = torch.zeros(4, 48, 64, dtype=torch.bool)
        for f, _, logits in model.propagate_in_video(state):
            ref[f] = logits[0, 0] > 0
    assert torch.equal(ours, ref)


def test_propagate_a_mask_keeps_it_on_the_prompted_frame_and_tracks_both_ways(sam):
    frames = _scene(5)
    mask = torch.zeros(48, 64)
    mask[16:30, 16:30] = 1  # the square at frame 2
    out = S.propagate_video(sam, frames, {2: dict(mask=mask)})
    assert out.shape == (5, 48, 64)
    # a mask prompt is taken as the output on its frame (use_mask_input_as_output_without_sam), up to the
    # 128 px model resolution: the interior is exact
    assert bool(out[2, 18:28, 18:28].all()) and not bool(out[2, :12].any()) and not bool(out[2, :, :12].any())
    iou = (out[2] & (mask > 0)).sum() / (out[2] | (mask > 0)).sum()
    assert float(iou) > 0.85
    # frames before the prompt were visited by the reverse pass: calling twice gives the same result
    assert torch.equal(out, S.propagate_video(sam, frames, {2: dict(mask=mask)}))
    many = S.propagate_video_objects(sam, frames, [{2: dict(mask=mask)}, {0: dict(points=[[5, 5]])}])
    assert many.shape == (2, 5, 48, 64) and torch.equal(many[0, 2], out[2])


def test_propagate_errors(sam):
    frames = _scene(3)
    with pytest.raises(ValueError, match=r"object 0: prompt frame 5 outside the clip's frames 0..2"):
        S.propagate_video(sam, frames, {5: dict(points=[[1, 1]])})
    with pytest.raises(ValueError, match=r"object 0 frame 0: mask is empty"):
        S.propagate_video(sam, frames, {0: dict(mask=torch.zeros(48, 64))})
    with pytest.raises(ValueError, match=r"object 0: no prompts"):
        S.propagate_video(sam, frames, {})
