"""Stage I fallback trajectories: the minimum-jerk profile, SLERP midpoints, exact endpoints, bone-direction
interpolation of 21 joints, MANO finger rotations, rigid attachment after the contact frame, named errors."""
import json

import numpy as np
import pytest
import torch

from interplay.models.conditions import hoi_trajectory as T
from interplay.models.conditions import rotations as rot


def test_min_jerk_profile_values():
    assert T.min_jerk(0.0) == 0.0 and T.min_jerk(1.0) == 1.0
    assert T.min_jerk(0.5) == 0.5                       # 10/8 - 15/16 + 6/32
    assert T.min_jerk(0.25) == 0.103515625              # 10/64 - 15/256 + 6/1024
    assert T.min_jerk(0.75) == 1 - 0.103515625          # symmetric
    h = 1e-5                                            # rest to rest: zero slope at both ends
    assert abs(T.min_jerk(h) / h) < 1e-8 and abs((1 - T.min_jerk(1 - h)) / h) < 1e-8


def _spec(**kw):
    hand = T.canonical_hand(0.0)
    target = T.canonical_hand(1.0)
    d = {"v": 1, "keyframes": [{"frame": 0, "joints": (hand + [0, 0, 0.6]).tolist()},
                               {"frame": 48, "joints": (target + [0.2, -0.1, 0.5]).tolist(),
                                "rotation": [0, 0, np.pi / 2]}]}
    d.update(kw)
    return T.parse_trajectory(json.dumps(d))


def test_joints_trajectory_endpoints_midpoint_and_shape():
    seq = T.make_trajectory(_spec())
    assert seq.num_frames == 49 and seq.fps == 15.0 and seq.meta["non_physical"] is True
    j = seq.hands[0].joints
    start = T.canonical_hand(0.0) + [0, 0, 0.6]
    np.testing.assert_allclose(j[0], start, atol=1e-12)
    # the last keyframe: its own shape, turned by the given rotation about its wrist
    tgt = T.canonical_hand(1.0)
    R_t = rot.axis_angle_to_matrix(torch.tensor([0, 0, np.pi / 2], dtype=torch.float64)).numpy()
    local = (tgt - tgt[0]) @ T.hand_frame(tgt)
    np.testing.assert_allclose(j[48], tgt[0] + [0.2, -0.1, 0.5] + local @ R_t.T, atol=1e-12)
    # wrist: minimum-jerk translation, at s = 0.5 exactly halfway and at s = 0.25 by 0.103515625
    w0, w1 = start[0], tgt[0] + [0.2, -0.1, 0.5]
    np.testing.assert_allclose(j[24, 0], (w0 + w1) / 2, atol=1e-12)
    np.testing.assert_allclose(j[12, 0], w0 + 0.103515625 * (w1 - w0), atol=1e-12)
    # hand rotation: SLERP between the two hand frames: at the midpoint half the relative angle, equally far
    # from both ends (the relative rotation here is close to 180 degrees, so compare angles, not axes)
    angle = lambda A, B: np.linalg.norm(rot.quaternion_to_axis_angle(  # noqa: E731
        rot.matrix_to_quaternion(torch.from_numpy(A.T @ B))).numpy())
    R0, R1, Rm = T.hand_frame(j[0]), T.hand_frame(j[48]), T.hand_frame(j[24])
    assert angle(R0, Rm) == pytest.approx(angle(R0, R1) / 2, abs=1e-9)
    assert angle(Rm, R1) == pytest.approx(angle(R0, R1) / 2, abs=1e-9)
    # bone lengths interpolate linearly (min-jerk eased): the thumb tip bone halfway at frame 24
    ln = lambda x: np.linalg.norm(x[4] - x[3])  # noqa: E731
    assert ln(j[24]) == pytest.approx((ln(j[0]) + ln(j[48])) / 2, abs=1e-12)


def test_linear_easing_and_held_frames():
    seq = T.make_trajectory(T.parse_trajectory(json.dumps({
        "v": 1, "frames": 11, "easing": "linear",
        "keyframes": [{"frame": 2, "joints": T.canonical_hand().tolist()},
                      {"frame": 7, "wrist": [0.5, 0, 0]}]})))
    w = seq.hands[0].joints[:, 0, 0]
    np.testing.assert_allclose(w, [0, 0, 0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.5, 0.5, 0.5], atol=1e-12)
    # a wrist-only keyframe moves the same shape rigidly
    np.testing.assert_allclose(seq.hands[0].joints[10] - [0.5, 0, 0], T.canonical_hand(), atol=1e-12)


def test_attached_object_keeps_its_wrist_relative_pose():
    box = np.eye(4)
    box[:3, 3] = [0.12, 0.0, 0.62]
    seq = T.make_trajectory(_spec(objects=[{"label": 14, "primitive": {"type": "box", "size": [0.06] * 3},
                                            "pose": box.tolist()}], attach={"object": 0, "frame": 20}))
    pose, j = seq.objects[0].pose, seq.hands[0].joints
    np.testing.assert_allclose(pose[:21], np.broadcast_to(box, (21, 4, 4)), atol=1e-12)  # still before contact

    def wrist(f):
        m = np.eye(4)
        m[:3, :3], m[:3, 3] = T.hand_frame(j[f]), j[f, 0]
        return m

    rel = np.linalg.inv(wrist(20)) @ pose[20]
    for f in (21, 33, 48):
        np.testing.assert_allclose(np.linalg.inv(wrist(f)) @ pose[f], rel, atol=1e-9)
    R = pose[48, :3, :3]
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)  # still a rotation


def test_object_keyframes_slerp_and_translate():
    end = np.eye(4)
    end[:3, :3] = rot.axis_angle_to_matrix(torch.tensor([np.pi / 2, 0, 0], dtype=torch.float64)).numpy()
    end[:3, 3] = [1.0, 0, 0]
    seq = T.make_trajectory(_spec(objects=[{"label": 3, "pose": np.eye(4).tolist(),
                                            "keyframes": [{"frame": 48, "pose": end.tolist()}]}]))
    mid = seq.objects[0].pose[24]
    want = rot.axis_angle_to_matrix(torch.tensor([np.pi / 4, 0, 0], dtype=torch.float64)).numpy()
    np.testing.assert_allclose(mid[:3, :3], want, atol=1e-12)
    np.testing.assert_allclose(mid[:3, 3], [0.5, 0, 0], atol=1e-12)


def test_mano_mode_slerps_each_finger_joint():
    fingers = np.zeros(45)
    fingers[3:6] = [np.pi / 2, 0, 0]    # finger joint 2 turns 90 degrees about x at the end
    spec = T.parse_trajectory(json.dumps({"v": 1, "hand": {"mode": "mano"}, "keyframes": [
        {"frame": 0, "wrist": [0, 0, 0.5]}, {"frame": 48, "wrist": [0.1, 0, 0.5], "fingers": fingers.tolist(),
                                             "quat": [np.cos(np.pi / 6), 0, np.sin(np.pi / 6), 0]}]}))
    seq = T.make_trajectory(spec)
    m = seq.hands[0].mano
    assert m.pose.shape == (49, 48) and m.pose_space == "axis_angle" and seq.hands[0].joints is None
    np.testing.assert_allclose(m.pose[24, 6:9], [np.pi / 4, 0, 0], atol=1e-12)
    np.testing.assert_allclose(m.pose[48, 6:9], [np.pi / 2, 0, 0], atol=1e-12)
    np.testing.assert_allclose(m.pose[24, :3], [0, np.pi / 3 / 2, 0], atol=1e-12)   # 60 degrees about y, halved
    np.testing.assert_allclose(m.trans[24], [0.05, 0, 0.5], atol=1e-12)
    spec.attach, spec.objects = {"object": 0, "frame": 10}, [{"label": 1}]
    with pytest.raises(ValueError, match="needs the MANO model"):
        T.make_trajectory(spec)


def test_named_errors():
    with pytest.raises(ValueError, match=r"keyframes_json: keyframes\[1\].frame 60 is outside 0..48"):
        T.parse_trajectory(json.dumps({"v": 1, "keyframes": [{"frame": 0}, {"frame": 60}]}))
    with pytest.raises(ValueError, match='"v": 1'):
        T.parse_trajectory(json.dumps({"keyframes": []}))
    with pytest.raises(ValueError, match="needs 'joints'"):
        T.make_trajectory(T.parse_trajectory(json.dumps({"v": 1, "keyframes": [{"frame": 0, "wrist": [0, 0, 0]}]})))
    with pytest.raises(ValueError, match="has keyframes at"):
        T.make_trajectory(_spec(objects=[{"label": 1, "keyframes": [{"frame": 30, "pose": np.eye(4).tolist()}]}],
                                attach={"object": 0, "frame": 20}))
    with pytest.raises(ValueError, match="no hand keyframes"):
        T.make_trajectory(T.parse_trajectory(""))
