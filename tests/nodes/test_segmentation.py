import json

import pytest
import torch

pytest.importorskip("sam2")

from interplay.models import runtime  # noqa: E402
from interplay.models.segmentation import sam2 as S  # noqa: E402
from interplay.nodes.painter import InterplayArrowPainter  # noqa: E402
from interplay.nodes.segmentation import (InterplaySam2Convert, InterplaySam2Loader,  # noqa: E402
                                          InterplaySam2Propagate, InterplaySam2Segment)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A models root with models/sam2/{tiny.yaml, sam2.1_hiera_tiny_test.safetensors, official-style .pt}."""
    r = tmp_path_factory.mktemp("models")
    d = r / "sam2"
    S.write_tiny_config(d / "tiny.yaml")
    torch.manual_seed(0)
    model = S.build_model(str(d / "tiny.yaml"))
    S.save_sam2_weights(model, d / "sam2.1_hiera_tiny_test.safetensors")
    (d / "sub").mkdir()
    torch.save({"model": model.state_dict()}, d / "sub" / "mine.pt")
    return r


@pytest.fixture
def sam(root):
    runtime.set_models_root(root)
    return InterplaySam2Loader().load("sam2.1_hiera_tiny_test.safetensors", "tiny.yaml", "cpu", "auto")[0]


def _frames(F=3, H=40, W=56):
    fr = torch.rand(F, H, W, 3, generator=torch.Generator().manual_seed(1)) * 0.2
    for f in range(F):
        fr[f, 10:24, 8 + 2 * f:22 + 2 * f] = 0.9
    return fr


def test_loader_lists_weights_and_configs_and_guesses_config(root):
    runtime.set_models_root(root)
    spec = InterplaySam2Loader.INPUT_TYPES()["required"]
    assert spec["weights"][0] == ["sam2.1_hiera_tiny_test.safetensors"]
    assert spec["config"][0][:2] == ["auto", "sam2.1_hiera_t"] and spec["config"][0][-1] == "tiny.yaml"
    assert InterplaySam2Convert.INPUT_TYPES()["required"]["checkpoint"][0] == ["sub/mine.pt"]
    assert S.guess_config("sam2.1_hiera_tiny-fp16.safetensors") == "sam2.1_hiera_t"
    assert S.guess_config("sam2_hiera_base_plus.pt") == "sam2_hiera_b+"
    assert S.guess_config("x/sam2.1_hiera_large.safetensors") == "sam2.1_hiera_l"
    # auto picks sam2.1_hiera_t from the name, which does not fit the toy file: the error lists keys/shapes
    with pytest.raises(ValueError, match=r"Load SAM2: `weights`: sam2.1_hiera_tiny_test.safetensors does not fit "
                                         r"config sam2.1_hiera_t: .*missing"):
        InterplaySam2Loader().load("sam2.1_hiera_tiny_test.safetensors", "auto", "cpu", "auto")
    with pytest.raises(FileNotFoundError, match="searched"):
        InterplaySam2Loader().load("nope.safetensors", "tiny.yaml", "cpu", "auto")


def test_segment_node_matches_engine_and_shapes(sam):
    img = _frames(2)
    prompts = json.dumps({"v": 1, "points": [[14, 16, 1], [50, 35, 0]], "box": [6, 8, 26, 26]})
    m, overlay = InterplaySam2Segment().segment(sam, img, prompts)
    assert m.shape == (2, 40, 56) and m.dtype == torch.float32 and overlay.shape == (2, 40, 56, 3)
    ref = S.segment_image(sam, img[1], points=[[14, 16], [50, 35]], labels=[1, 0], box=[6, 8, 26, 26])
    assert torch.equal(m[1] > 0.5, ref)
    on = m[1] > 0.5
    if on.any():  # overlay = 0.5 frame + 0.5 red where masked, the frame elsewhere
        torch.testing.assert_close(overlay[1][on], img[1][on] * 0.5 + torch.tensor([0.5, 0.1, 0.1]))
    torch.testing.assert_close(overlay[1][~on], img[1][~on])


@pytest.mark.parametrize("prompts,needle", [
    ("", "`prompts` is empty"),
    ('{"v":1}', "needs points and/or a box"),
    ('{"v":1,"points":[[1,2,3]]}', "label 1 positive, 0 negative"),
    ('{"v":1,"box":[5,5,1,9]}', "x1 > x0"),
    ("[]", 'JSON object with "v": 1'),
])
def test_segment_node_prompt_errors(sam, prompts, needle):
    with pytest.raises(ValueError) as e:
        InterplaySam2Segment().segment(sam, _frames(1), prompts)
    assert str(e.value).startswith("SAM2 Segment: ") and needle in str(e.value)


def test_propagate_node_with_clicks_and_with_a_mask(sam):
    fr = _frames(3)
    prompts = json.dumps({"v": 1, "frames": {"0": {"points": [[14, 16, 1]]}, "2": {"box": [12, 10, 26, 24]}}})
    masks, overlay = InterplaySam2Propagate().propagate(sam, fr, prompts)
    assert masks.shape == (3, 40, 56) and overlay.shape == (3, 40, 56, 3)
    ref = S.propagate_video(sam, fr, {0: dict(points=[[14, 16]], labels=[1]), 2: dict(box=[12, 10, 26, 24])})
    assert torch.equal(masks > 0.5, ref)
    mk = torch.zeros(1, 40, 56)
    mk[0, 10:24, 10:24] = 1
    from_mask, _ = InterplaySam2Propagate().propagate(sam, fr, '{"v": 1, "frames": {}}', mask=mk, mask_frame=1)
    assert bool((from_mask[1, 12:22, 12:22] > 0.5).all()) and not bool((from_mask[1, :, 30:] > 0.5).any())
    with pytest.raises(ValueError, match=r"SAM2 Propagate: `prompts`: frame 7 is outside the clip's frames 0..2"):
        InterplaySam2Propagate().propagate(sam, fr, '{"v":1,"frames":{"7":{"points":[[1,1,1]]}}}')
    with pytest.raises(ValueError, match=r"SAM2 Propagate: `prompts` needs a non-empty \"frames\""):
        InterplaySam2Propagate().propagate(sam, fr, '{"v":1,"frames":{}}')
    with pytest.raises(ValueError, match=r"SAM2 Propagate: `mask` is empty"):
        InterplaySam2Propagate().propagate(sam, fr, "", mask=torch.zeros(1, 40, 56))


def test_painter_segments_each_arrow_with_sam2(sam):
    img = _frames(1)
    d = json.dumps({"v": 1, "objects": [{"arrow": {"x0": 14, "y0": 16, "x1": 30, "y1": 16},
                                         "points": [[18, 20, 1]]}]})
    ref = S.segment_image(sam, img[0], points=[[14, 16], [18, 20]], labels=[1, 1])
    if not ref.any():
        pytest.skip("random tiny SAM2 gave an empty mask for this click")
    ctrl, masks, _ = InterplayArrowPainter().paint(img, d, 9, 1.5, sam2=sam)["result"]
    assert torch.equal(masks[0] > 0.5, ref)
    diag = (40 ** 2 + 56 ** 2) ** 0.5
    speed = 16 / (0.2 * diag)
    torch.testing.assert_close(ctrl.video[0][ref], torch.tensor([min(speed / 1.5, 1.0), 0, 0]).expand(int(ref.sum()), 3))


def test_convert_node_writes_safetensors_loadable_by_the_loader(root, sam):
    runtime.set_models_root(root)
    out = InterplaySam2Convert().convert("sub/mine.pt", "none")
    assert out["result"] == ("sub/mine.safetensors",) and out["ui"]["text"] == ["wrote sub/mine.safetensors"]
    again = InterplaySam2Loader().load("sub/mine.safetensors", "tiny.yaml", "cpu", "fp32")[0]
    for k, v in sam.model.state_dict().items():
        assert torch.equal(v, again.model.state_dict()[k]), k
    with pytest.raises(ValueError, match=r"Convert SAM2 Checkpoint: `config`: cannot tell the SAM2 config"):
        InterplaySam2Convert().convert("sub/mine.pt", "auto")


def test_node_metadata_is_complete():
    from interplay.nodes import segmentation as mod

    for cls in mod.NODE_CLASS_MAPPINGS.values():
        for group in cls.INPUT_TYPES().values():
            for name, (typ, *opts) in group.items():
                assert opts and opts[0].get("tooltip"), f"{cls.__name__}.{name}"
        assert cls.DESCRIPTION and cls.CATEGORY == "Interplay/segmentation"
