import base64
import io
import json

import pytest
import torch

from interplay.nodes.painter import InterplayArrowPainter, InterplayVelocityControl

H, W = 48, 64  # diagonal 80 px: an arrow of 16 px is 1 m/s


def _mask(y0, y1, x0, x1):
    m = torch.zeros(H, W)
    m[y0:y1, x0:x1] = 1
    return m


def test_arrow_painter_node_from_json_and_masks():
    img = torch.rand(2, H, W, 3)
    drawing = json.dumps({"v": 1, "width": W, "height": H, "objects": [
        {"arrow": {"x0": 10, "y0": 20, "x1": 10, "y1": 36}},          # down 16 px -> vy = -1 m/s
        {"arrow": {"x0": 40, "y0": 30, "x1": 20, "y1": 30}, "speed": 3.0}]})  # left, clips at v_ref 1.5
    masks = torch.stack([_mask(15, 25, 5, 15), _mask(25, 35, 35, 45)])
    out = InterplayArrowPainter().paint(img, drawing, 9, 1.5, masks=masks, weight=0.7, start=0.1, end=0.9)
    ctrl, m, preview = out["result"]
    assert ctrl.video.shape == (9, H, W, 3) and ctrl.kind == "velocity"
    assert (ctrl.weight, ctrl.start, ctrl.end) == (0.7, 0.1, 0.9)
    torch.testing.assert_close(ctrl.video[0, 20, 10], torch.tensor([0.0, -1 / 1.5, 0.0]))
    torch.testing.assert_close(ctrl.video[0, 30, 40], torch.tensor([-1.0, 0.0, 0.0]))  # 3 m/s clipped
    assert ctrl.video[1:].abs().sum() == 0 and ctrl.video[0, 0, 0].abs().sum() == 0
    assert torch.equal(m, masks) and m.dtype == torch.float32
    assert preview.shape == (1, H, W, 3)
    ui = out["ui"]
    assert ui["interplay_size"] == [W, H]
    from PIL import Image
    assert Image.open(io.BytesIO(base64.b64decode(ui["interplay_bg"][0]))).size == (W, H)


@pytest.mark.parametrize("drawing,needle", [
    ("", "`drawing`: is empty"),
    ('{"v":1,"objects":[]}', "`drawing`: has no objects"),
    ("[1,2]", "`drawing`: must be a JSON object"),
])
def test_arrow_painter_invalid_drawing_names_node_input_and_schema(drawing, needle):
    with pytest.raises(ValueError) as e:
        InterplayArrowPainter().paint(torch.rand(1, H, W, 3), drawing, 9, 1.5, masks=_mask(0, 5, 0, 5)[None])
    assert str(e.value).startswith("Arrow Painter: ") and needle in str(e.value) and '"arrow"' in str(e.value)


def test_arrow_painter_errors_for_frames_masks_and_missing_segmenter():
    d = json.dumps({"v": 1, "objects": [{"arrow": {"x0": 10, "y0": 20, "x1": 30, "y1": 20}}]})
    img = torch.rand(1, H, W, 3)
    with pytest.raises(ValueError, match=r"Arrow Painter: `num_frames` must be 8k\+1"):
        InterplayArrowPainter().paint(img, d, 48, 1.5, masks=_mask(15, 25, 5, 15)[None])
    with pytest.raises(ValueError, match=r"Arrow Painter: object 0 .*empty"):
        InterplayArrowPainter().paint(img, d, 9, 1.5, masks=torch.zeros(1, H, W))
    with pytest.raises(ValueError, match=r"Arrow Painter: no object masks: connect a SAM2 model to `sam2`"):
        InterplayArrowPainter().paint(img, d, 9, 1.5)
    with pytest.raises(ValueError, match=r"`start` and `end`"):
        InterplayArrowPainter().paint(img, d, 9, 1.5, masks=_mask(15, 25, 5, 15)[None], start=0.5, end=0.5)


def test_velocity_control_node_numbers():
    m = torch.stack([_mask(10, 20, 30, 40), _mask(30, 40, 5, 15)])
    ctrl, preview = InterplayVelocityControl().build(m, 0.75, -0.3, 0.15, 9, 1.5)
    for y, x in ((15, 35), (35, 10)):
        torch.testing.assert_close(ctrl.video[0, y, x], torch.tensor([0.5, -0.2, 0.1]))
    assert ctrl.video[1:].abs().sum() == 0 and int((ctrl.video[0] != 0).any(-1).sum()) == 200
    assert preview.shape == (1, H, W, 3)
    with pytest.raises(ValueError, match=r"Velocity Control: `mask` 1 is empty"):
        InterplayVelocityControl().build(torch.stack([m[0], torch.zeros(H, W)]), 1.0, 0.0, 0.0, 9, 1.5)
    with pytest.raises(ValueError, match=r"Velocity Control: `image` is 32x48 but `mask` is 64x48"):
        InterplayVelocityControl().build(m, 1.0, 0.0, 0.0, 9, 1.5, image=torch.rand(1, 48, 32, 3))


def test_painter_and_velocity_nodes_agree():
    """The same velocity from an arrow and from numbers encodes to the same control."""
    m = _mask(10, 20, 30, 40)[None]
    d = json.dumps({"v": 1, "objects": [{"arrow": {"x0": 35, "y0": 15, "x1": 47, "y1": 31}}]})  # 12,-16: 20 px
    a = InterplayArrowPainter().paint(torch.rand(1, H, W, 3), d, 9, 1.5, masks=m)["result"][0]
    b = InterplayVelocityControl().build(m, 0.75, -1.0, 0.0, 9, 1.5)[0]
    torch.testing.assert_close(a.video, b.video)


def test_node_metadata_is_complete():
    for cls in (InterplayArrowPainter, InterplayVelocityControl):
        spec = cls.INPUT_TYPES()
        for group in spec.values():
            for name, (typ, *opts) in group.items():
                assert opts and opts[0].get("tooltip"), f"{cls.__name__}.{name} has no tooltip"
        assert cls.DESCRIPTION and cls.CATEGORY == "Interplay/conditions"


def test_the_painter_is_an_output_node_so_cached_runs_resend_its_image():
    """ComfyUI re-sends the UI of a cached run only for output nodes (checked against a real server: on the
    second queue of an unchanged sandbox_push only nodes 9, 10, 11 got "executed"); the canvas needs that image."""
    from pathlib import Path

    from interplay.nodes import NODE_CLASS_MAPPINGS, graph

    prompt = graph.load_workflow(Path(__file__).resolve().parents[2] / "workflows" / "api" / "sandbox_push.json",
                                 NODE_CLASS_MAPPINGS)
    painters = [k for k, v in prompt.items() if v["class_type"] == "InterplayArrowPainter"]
    assert painters and set(painters) <= set(graph.output_nodes(prompt, NODE_CLASS_MAPPINGS))
