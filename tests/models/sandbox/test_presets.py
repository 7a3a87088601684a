import numpy as np
import pytest

from interplay.models.sandbox import render as R
from interplay.models.sandbox.presets import PRESETS, clip_camera, direction_word, generate_scene, object_prisms


def _arrays(c):
    return [c.frames, c.masks, c.id_map, c.pusher_mask, c.vel_world, c.vel_image, c.vel_control, c.pos_world]


@pytest.mark.parametrize("preset", PRESETS)
def test_same_seed_same_bytes_and_shapes(preset):
    a = generate_scene(preset, 11, (40, 56), frames=5, fps=8)
    b = generate_scene(preset, 11, (40, 56), frames=5, fps=8)
    for x, y in zip(_arrays(a), _arrays(b)):
        assert x.tobytes() == y.tobytes()
    assert (a.caption, a.objects, a.driven, a.camera) == (b.caption, b.objects, b.driven, b.camera)
    n = len(a.objects)
    assert a.frames.shape == (5, 40, 56, 3) and a.frames.dtype == np.uint8
    assert a.masks.shape == (n, 5, 40, 56) and a.masks.dtype == bool
    assert a.id_map.dtype == np.int16 and a.pusher_mask.shape == (5, 40, 56)
    assert a.vel_world.shape == (n, 5, 3) and a.vel_image.shape == (n, 5, 2) and a.vel_control.shape == (n, 5, 3)
    for i in range(n):  # masks and ID map are the same raster
        assert (a.masks[i] == (a.id_map == i + 1)).all()
    assert not (a.pusher_mask & (a.id_map > 0)).any()
    c = generate_scene(preset, 12, (40, 56), frames=5, fps=8)
    assert c.frames.tobytes() != a.frames.tobytes()


def test_push_driven_objects_move_visibly_at_64px_9_frames():
    moved = []
    for seed in range(8):
        c = generate_scene("push", seed, (64, 64), frames=9, fps=8)
        assert 2 <= len(c.objects) <= 4 and 1 <= len(c.driven) <= 2 and c.driven == list(range(len(c.driven)))
        assert not c.pusher_mask.any()
        i = 0
        speed = np.linalg.norm(c.vel_world[i, 0])
        assert 0.8 <= speed <= 1.5
        p0, p8 = c.pos_world[i, 0], c.pos_world[i, 8]
        cam = clip_camera(c, 0)
        (u0, v0), _ = cam.project(p0)
        (u1, v1), _ = cam.project(p8)
        moved.append(np.hypot(u1 - u0, v1 - v0))
        # other objects start at rest
        assert np.abs(c.vel_world[len(c.driven):, 0]).max(initial=0) == 0
    assert min(moved) > 5 and np.median(moved) > 10


@pytest.mark.parametrize("preset,seed", [("push", s) for s in range(4)] + [("multi", s) for s in range(4)]
                         + [("pusher", s) for s in range(3)])
def test_no_interpenetration_over_one_pixel_at_64(preset, seed):
    c = generate_scene(preset, seed, (64, 64), frames=13, fps=8)
    for f in range(13):
        cam = clip_camera(c, f)
        fm = R.footprint_masks(object_prisms(c, f), cam)
        n = len(fm)
        for i in range(n):
            for j in range(i + 1, n):
                ov = fm[i] & fm[j]
                if not ov.any():
                    continue
                # an overlap no thicker than one pixel: eroding by a 3x3 cross leaves nothing
                core = ov[1:-1, 1:-1] & ov[:-2, 1:-1] & ov[2:, 1:-1] & ov[1:-1, :-2] & ov[1:-1, 2:]
                assert not core.any(), (preset, seed, f, i, j, int(ov.sum()))


def test_vel_image_and_vel_control_agree_with_mask_motion():
    checked = 0
    for seed in range(6):
        c = generate_scene("push", seed, (128, 128), frames=3, fps=8)
        i = 0
        if not (c.masks[i, 0].sum() > 30 and c.masks[i, 1].sum() > 30):
            continue
        ys, xs = np.nonzero(c.masks[i, 0])
        ys1, xs1 = np.nonzero(c.masks[i, 1])
        d = np.array([xs1.mean() - xs.mean(), -(ys1.mean() - ys.mean())])  # px, +y up
        vi = c.vel_image[i, 0]
        assert np.dot(d, vi) / (np.linalg.norm(d) * np.linalg.norm(vi)) > 0.8
        vc = c.vel_control[i, 0, :2]
        assert np.dot(vc, vi) / (np.linalg.norm(vc) * np.linalg.norm(vi)) > 0.8  # same screen direction
        assert np.linalg.norm(c.vel_control[i, 0]) == pytest.approx(np.linalg.norm(c.vel_world[i, 0]), rel=1e-5)
        assert c.vel_control[i, 0, 2] == 0  # sliding on the ground: nothing out of the plane
        checked += 1
    assert checked >= 3


def test_pusher_preset_only_drives_the_hand():
    c = generate_scene("pusher", 2, (64, 64), frames=9, fps=8)
    assert c.driven == [] and c.pusher_mask[0].sum() > 5
    assert np.abs(c.vel_world[:, 0]).max() == 0  # everything at rest at t=0
    assert np.linalg.norm(c.pos_world[0, -1] - c.pos_world[0, 0]) > 0.1  # the hand moved object 0
    assert c.caption.startswith("On a") and "a hand pushes the" in c.caption.lower()


def test_multi_captions_name_interactions():
    caps = [generate_scene("multi", s, (32, 32), frames=13).caption for s in range(6)]
    assert any(" pushes the " in cap for cap in caps)


def test_camera_preset_moves_the_camera_not_the_objects():
    c = generate_scene("camera", 1, (48, 48), frames=9, fps=8)
    assert np.abs(c.vel_world).max() == 0 and c.driven == []
    assert len(c.camera["keys"]) == 8 and all(k in ("W", "S", "A", "D", "left", "right") for k in c.camera["keys"])
    e0, e8 = np.array(c.camera["world_to_camera"][0]), np.array(c.camera["world_to_camera"][8])
    assert np.abs(e0 - e8).max() > 1e-3
    assert "the camera" in c.caption.lower()
    assert np.abs(c.vel_image).max() > 0.1  # ego-motion shows up as image velocity


def test_scripted_camera_keys_forward_moves_along_heading():
    c = generate_scene("push", 0, (32, 32), frames=5, fps=8, camera_keys=["W"] * 4)
    C = [clip_camera(c, f).C for f in (0, 4)]
    fwd = clip_camera(c, 0).ground_axes()[1]
    np.testing.assert_allclose(C[1] - C[0], 0.6 * 0.5 * fwd, atol=1e-5)  # 0.6 m/s for 0.5 s


def test_direction_words():
    assert direction_word(1, 0) == "to the right"
    assert direction_word(0, -1) == "toward the camera"
    assert direction_word(-1, 0.8) == "away from the camera and to the left"


def test_bad_preset_and_size():
    with pytest.raises(ValueError, match="preset"):
        generate_scene("nope", 0)
    with pytest.raises(ValueError, match="size"):
        generate_scene("push", 0, (4, 4))
