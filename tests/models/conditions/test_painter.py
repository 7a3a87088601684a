import json

import pytest
import torch

from interplay.models.conditions.painter import (check_num_frames, drawing_preview, drawing_to_control,
                                                 masks_for_drawing, mask_arrow, parse_drawing, velocity_control)
from interplay.models.conditions.velocity import arrow_velocity, first_frame_only, velocity_video, Arrow

# A 64x48 image: diagonal 80 px, so with length_scale 0.2 an arrow of 16 px means 1 m/s.
H, W = 48, 64
KNOWN = {"v": 1, "objects": [
    {"arrow": {"x0": 10, "y0": 20, "x1": 30, "y1": 20}},                       # right, 20 px -> 1.25 m/s
    {"arrow": {"x0": 40, "y0": 30, "x1": 40, "y1": 18}, "speed": 0.75,          # up, explicit 0.75 m/s
     "points": [[42, 31, 1], [60, 40, 0]]},
]}


def _masks():
    m = torch.zeros(2, H, W)
    m[0, 15:25, 5:20] = 1
    m[1, 25:35, 15:45] = 1
    m[1, 20:25, 15:20] = 1  # overlaps object 0 on rows 20..24, cols 15..19: the later object wins
    return m


def test_known_drawing_gives_exact_control_numbers():
    d = parse_drawing(json.dumps(KNOWN), (H, W))
    assert d.velocities() == [(1.25, 0.0, 0.0), (0.0, 0.75, 0.0)]
    m = _masks()
    ctrl = drawing_to_control(d, m, num_frames=5, v_ref=1.5)
    v = ctrl.video
    assert ctrl.kind == "velocity" and v.shape == (5, H, W, 3)
    only0 = (m[0] > 0) & ~(m[1] > 0)
    torch.testing.assert_close(v[0][only0], torch.tensor([1.25 / 1.5, 0, 0]).expand(int(only0.sum()), 3))
    torch.testing.assert_close(v[0][m[1] > 0], torch.tensor([0, 0.5, 0]).expand(int((m[1] > 0).sum()), 3))
    assert v[0, 20, 17].tolist() == [0.0, 0.5, 0.0]  # overlap: drawing order, later wins
    assert v[0][(m.sum(0) == 0)].abs().sum() == 0
    assert v[1:].abs().sum() == 0  # inference condition: only frame 0
    assert int((v[0] != 0).any(-1).sum()) == int((m.sum(0) > 0).sum())
    # the same as the shared encoding applied to every frame then truncated
    ref = first_frame_only(velocity_video(m[:, None].expand(2, 5, H, W), torch.tensor(d.velocities()), 1.5))
    assert torch.equal(v, ref)
    assert ctrl.meta["velocities"] == [[1.25, 0.0, 0.0], [0.0, 0.75, 0.0]]


def test_drawing_coordinates_scale_to_the_image():
    big = json.loads(json.dumps(KNOWN))
    big.update(width=W * 2, height=H * 2)
    for o in big["objects"]:
        o["arrow"] = {k: v * 2 for k, v in o["arrow"].items()}
        if "points" in o:
            o["points"] = [[x * 2, y * 2, lab] for x, y, lab in o["points"]]
    d = parse_drawing(json.dumps(big), (H, W))
    a = d.objects[0].arrow
    assert (a.x0, a.y0, a.x1, a.y1) == (10, 20, 30, 20)
    assert d.objects[1].points == ((42, 31, 1), (60, 40, 0))
    assert d.velocities() == parse_drawing(json.dumps(KNOWN), (H, W)).velocities()
    assert d.prompts(1) == ([[40, 30], [42, 31], [60, 40]], [1, 1, 0])


def test_json_round_trip():
    d = parse_drawing(json.dumps(KNOWN), (H, W))
    assert parse_drawing(d.to_json(), (H, W)) == d


@pytest.mark.parametrize("text,needle", [
    ("", "draw at least one arrow"),
    ("{not json", "not valid JSON"),
    ('{"v": 2, "objects": []}', "allowed: 1"),
    ('{"v": 1, "objects": []}', "no objects"),
    ('{"v": 1, "objects": [{"arrow": {"x0": 1, "y0": 2, "x1": 3}}]}', "misses y1"),
    ('{"v": 1, "objects": [{"arrow": {"x0": 1, "y0": 2, "x1": 3, "y1": "a"}}]}', "y1 must be a finite number"),
    ('{"v": 1, "objects": [{"arrow": {"x0": 100, "y0": 2, "x1": 3, "y1": 4}}]}', "outside the 64x48 image"),
    ('{"v": 1, "objects": [{"arrow": {"x0": 1, "y0": 2, "x1": 1, "y1": 2}}]}', "zero length"),
    ('{"v": 1, "objects": [{"arrow": {"x0": 1, "y0": 2, "x1": 3, "y1": 4}, "points": [[1, 2, 5]]}]}',
     "label 1 (positive) or 0 (negative)"),
    ('{"v": 1, "objects": [{"arrow": {"x0": 1, "y0": 2, "x1": 3, "y1": 4}, "speed": -1}]}', "must be >= 0"),
])
def test_invalid_drawing_names_the_input_and_the_schema(text, needle):
    with pytest.raises(ValueError) as e:
        parse_drawing(text, (H, W))
    msg = str(e.value)
    assert msg.startswith("`drawing`:") and needle in msg and '"objects"' in msg


def test_masks_input_validation_and_empty_mask_error():
    d = parse_drawing(json.dumps(KNOWN), (H, W))
    img = torch.rand(H, W, 3)
    assert torch.equal(masks_for_drawing(d, img, masks=_masks()), _masks() > 0)
    with pytest.raises(ValueError, match=r"`masks`: expected one mask per drawn object.*\[2, 48, 64\].*\(1, 48, 64\)"):
        masks_for_drawing(d, img, masks=_masks()[:1])
    empty = _masks()
    empty[1] = 0
    with pytest.raises(ValueError, match=r"object 1 \(arrow tail at 40, 30\).*empty.*positive clicks"):
        masks_for_drawing(d, img, masks=empty)
    with pytest.raises(ValueError, match=r"no object masks.*`sam2`.*`masks`"):
        masks_for_drawing(d, img)


def test_masks_from_a_segmenter_get_tail_and_clicks(monkeypatch):
    import interplay.models.segmentation.sam2 as sam2mod

    seen = []

    def fake_segment(sam, image, prompts):
        out = torch.zeros(len(prompts), H, W, dtype=torch.bool)
        for i, p in enumerate(prompts):
            seen.append((p["points"], p["labels"]))
            out[i, int(p["points"][0][1]), int(p["points"][0][0])] = True
        return out

    monkeypatch.setattr(sam2mod, "segment_objects", fake_segment)
    d = parse_drawing(json.dumps(KNOWN), (H, W))
    out = masks_for_drawing(d, torch.rand(H, W, 3), sam=object())
    assert seen == [([[10.0, 20.0]], [1]), ([[40.0, 30.0], [42.0, 31.0], [60.0, 40.0]], [1, 1, 0])]
    assert out.shape == (2, H, W) and out[0, 20, 10] and out[1, 30, 40] and int(out.sum()) == 2


def test_num_frames_must_be_8k_plus_1():
    from interplay.models.backbones.cogvideox import frame_count_ok

    assert check_num_frames(49, ok=frame_count_ok) == 49 and check_num_frames(1, ok=frame_count_ok) == 1
    assert check_num_frames(9, ok=frame_count_ok) == 9
    for bad in (0, 5, 13, 48, 50, 2.0):
        with pytest.raises(ValueError, match=r"`num_frames` must be 8k\+1 \(1, 9, 17, \.\.\., 49\)"):
            check_num_frames(bad, ok=frame_count_ok)


def test_velocity_control_and_mask_arrow_invert_arrow_velocity():
    m = torch.zeros(H, W)
    m[10:20, 30:40] = 1  # centroid (34.5, 14.5)
    ctrl = velocity_control(m, [(0.6, -0.3)], num_frames=9)
    torch.testing.assert_close(ctrl.video[0, 15, 35], torch.tensor([0.4, -0.2, 0.0]))
    assert ctrl.video[1:].abs().sum() == 0
    a = mask_arrow(m, (0.6, -0.3))
    assert a[:2] == (34.5, 14.5)
    v = arrow_velocity(Arrow(*a), W, H)
    assert v[0] == pytest.approx(0.6) and v[1] == pytest.approx(-0.3)


def test_preview_draws_masks_and_arrows_on_the_image():
    d = parse_drawing(json.dumps(KNOWN), (H, W))
    img = torch.full((H, W, 3), 0.5)
    p = drawing_preview(img, d, _masks() > 0)
    assert p.shape == (1, H, W, 3) and p.dtype == torch.float32 and 0 <= float(p.min()) and float(p.max()) <= 1
    assert torch.equal(p[0, 0, 0], img[0, 0]) or (p[0, 0, 0] - img[0, 0]).abs().max() < 1 / 255 + 1e-6
    inside = p[0, 28, 25]  # object 1 (green tint 60,180,75 at alpha .45) away from arrows/outline/text
    torch.testing.assert_close(inside, (0.5 * 255 * 0.55 + torch.tensor([60., 180., 75.]) * 0.45).round() / 255)
