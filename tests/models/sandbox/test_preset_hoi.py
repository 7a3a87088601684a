"""The 'hoi' sandbox preset: a hand that pushes or carries an object, with its 21 joints and the object poses kept
per frame (what the HOI renderer turns into PAM's conditions), written and read back in the dataset format."""
import numpy as np
import pytest

from interplay.models.sandbox.dataset import read_clip, write_clip
from interplay.models.sandbox.presets import generate_scene


def _by_mode(mode, size=(48, 48), frames=9):
    for s in range(20):
        c = generate_scene("hoi", s, size, frames=frames, fps=8)
        if c.meta["hoi_mode"] == mode:
            return c
    raise AssertionError(f"no {mode} scene in 20 seeds")


def test_clip_carries_hand_joints_and_object_poses():
    c = generate_scene("hoi", 3, (48, 56), frames=7, fps=8)
    assert c.hand_joints.shape == (7, 21, 3) and c.hand_joints.dtype == np.float32
    assert c.object_pose.shape == (1, 7, 4, 4) and len(c.objects) == 1 and c.driven == []
    np.testing.assert_allclose(c.object_pose[0, :, :3, 3], c.pos_world[0])
    assert c.pusher_mask.any(axis=(1, 2)).all() and (c.masks[0] == (c.id_map == 1)).all()
    assert c.caption.startswith("On a") and " hand " in c.caption
    assert generate_scene("push", 3, (32, 32), frames=3).hand_joints is None


def test_carry_keeps_the_object_on_the_wrist_after_contact():
    c = _by_mode("carry")
    k = c.meta["contact_frame"]
    off = c.pos_world[0] - c.hand_joints[:, 0]
    np.testing.assert_allclose(off[k:], np.broadcast_to(off[k], off[k:].shape), atol=1e-5)
    np.testing.assert_allclose(c.pos_world[0, :k], np.broadcast_to(c.pos_world[0, 0], (k, 3)), atol=1e-6)
    h = c.objects[0]["size"][2]
    assert c.pos_world[0, :, 2].max() > h / 2 + 0.03            # lifted on the way
    assert np.linalg.norm(c.pos_world[0, -1, :2] - c.pos_world[0, 0, :2]) > 0.25  # and carried 0.3-0.6 m


def test_push_moves_the_object_by_physics():
    c = _by_mode("push")
    moved = c.pos_world[0, -1, :2] - c.pos_world[0, 0, :2]
    assert np.linalg.norm(moved) > 0.1 and c.events                # the pusher disc hit it
    tip = c.hand_joints[:, 12, :2]                                    # the middle fingertip leads the motion
    assert np.dot(tip[-1] - tip[0], moved) > 0


def test_hoi_clip_round_trips_through_the_dataset_format(tmp_path):
    c = generate_scene("hoi", 1, (32, 40), frames=5, fps=8)
    back = read_clip(write_clip(c, tmp_path / "clip_000000"))
    np.testing.assert_array_equal(back.hand_joints, c.hand_joints)
    np.testing.assert_array_equal(back.object_pose, c.object_pose)
    assert back.meta["hoi_mode"] == c.meta["hoi_mode"]
    plain = read_clip(write_clip(generate_scene("pusher", 1, (16, 16), frames=2), tmp_path / "p"))
    assert plain.hand_joints is None and plain.object_pose is None


@pytest.mark.parametrize("seed", [0, 1])
def test_same_seed_same_hand(seed):
    a = generate_scene("hoi", seed, (32, 32), frames=5)
    b = generate_scene("hoi", seed, (32, 32), frames=5)
    assert a.hand_joints.tobytes() == b.hand_joints.tobytes() and a.frames.tobytes() == b.frames.tobytes()
