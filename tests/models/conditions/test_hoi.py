"""HOI sequences: validation with named errors, the generic v1 file format (a hand-written file and both writers),
resampling and the frame-count check, primitive meshes and the OBJ reader, rotation helpers."""
import json

import numpy as np
import pytest
import torch

from interplay.models.conditions import hoi
from interplay.models.conditions import rotations as rot


def _seq(F=5):
    joints = np.random.default_rng(0).normal(size=(F, 21, 3)) * 0.05 + [0, 0, 0.6]
    pose = np.tile(np.eye(4), (F, 1, 1))
    pose[:, 0, 3] = np.linspace(0, 0.4, F)
    return hoi.HOISequence(15.0, hoi.HOICamera(np.diag([500.0, 500.0, 1.0]), np.eye(4), 64, 48),
                           [hoi.HandTrack("right", joints)], [hoi.ObjectTrack(14, pose, *hoi.box_mesh([.1, .1, .1]))])


def test_fields_and_named_errors():
    s = _seq()
    assert s.num_frames == 5 and s.camera.K.shape == (5, 3, 3) and s.camera.world_to_camera.shape == (5, 4, 4)
    assert s.hands[0].valid.all() and s.objects[0].pose.shape == (5, 4, 4)
    cam = hoi.HOICamera(np.eye(3), np.eye(4), 64, 48)
    with pytest.raises(hoi.HOIFormatError, match=r"hands\[0\].joints: expected shape \[\*,21,3\], got \[5, 20, 3\]"):
        hoi.HOISequence(15, cam, [hoi.HandTrack(joints=np.zeros((5, 20, 3)))])
    with pytest.raises(hoi.HOIFormatError, match=r"objects\[0\].pose: 4 frames, the sequence has 5"):
        hoi.HOISequence(15, cam, [hoi.HandTrack(joints=np.zeros((5, 21, 3)))],
                        [hoi.ObjectTrack(3, np.zeros((4, 4, 4)))])
    with pytest.raises(hoi.HOIFormatError, match=r"side: expected 'right' or 'left'"):
        hoi.HOISequence(15, cam, [hoi.HandTrack("up", joints=np.zeros((5, 21, 3)))])
    with pytest.raises(hoi.HOIFormatError, match="label: expected 1..254"):
        hoi.HOISequence(15, cam, [], [hoi.ObjectTrack(255, np.eye(4))], num_frames=2)
    with pytest.raises(hoi.HOIFormatError, match="NaN"):
        hoi.HOISequence(15, cam, [hoi.HandTrack(joints=np.full((2, 21, 3), np.nan))])
    with pytest.raises(hoi.HOIFormatError, match="fps"):
        hoi.HOISequence(0, cam, [], num_frames=3)


def test_reads_a_hand_written_v1_json_with_a_mesh_file(tmp_path):
    (tmp_path / "tri.obj").write_text("# a quad\nv 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nf 1/1 2/2 3/3 4/4\n")
    tree = {"v": 1, "fps": 10, "num_frames": 2,
            "camera": {"K": [[100, 0, 32], [0, 100, 24], [0, 0, 1]], "width": 64, "height": 48},
            "hands": [{"side": "left", "joints": [[[0.0, 0.0, 1.0]] * 21] * 2, "valid": [1, 0]}],
            "objects": [{"label": 2, "name": "quad", "mesh_file": "tri.obj", "pose": np.eye(4).tolist()},
                        {"label": 3, "primitive": {"type": "cylinder", "radius": 0.05, "height": 0.1},
                         "pose": [np.eye(4).tolist()] * 2}]}
    (tmp_path / "a.json").write_text(json.dumps(tree))
    s = hoi.load_hoi(tmp_path / "a.json")
    assert s.fps == 10 and s.num_frames == 2 and s.hands[0].side == "left" and s.hands[0].valid.tolist() == [1, 0]
    v, f = s.objects[0].vertices, s.objects[0].faces
    assert v.shape == (4, 3) and f.tolist() == [[0, 1, 2], [0, 2, 3]]          # fan-triangulated quad
    assert s.objects[1].vertices.shape == (50, 3) and s.objects[1].faces.shape == (96, 3)
    tree["objects"][0]["mesh_file"] = "../tri.obj"
    (tmp_path / "b.json").write_text(json.dumps(tree))
    with pytest.raises(hoi.HOIFormatError, match="without '..'"):
        hoi.load_hoi(tmp_path / "b.json")
    (tmp_path / "c.json").write_text(json.dumps(dict(tree, v=2)))
    with pytest.raises(hoi.HOIFormatError, match='"v": 1'):
        hoi.load_hoi(tmp_path / "c.json")


@pytest.mark.parametrize("suffix", [".json", ".npz"])
def test_generic_file_round_trip(tmp_path, suffix):
    s = _seq()
    s.hands[0].mano = hoi.ManoParams(np.zeros((5, 48)), np.zeros((5, 3)), np.zeros(10)).check("m", 5)
    back = hoi.load_hoi(hoi.save_hoi(s, tmp_path / f"seq{suffix}"))
    np.testing.assert_array_equal(back.hands[0].joints, s.hands[0].joints)
    np.testing.assert_array_equal(back.objects[0].pose, s.objects[0].pose)
    np.testing.assert_array_equal(back.objects[0].faces, s.objects[0].faces)
    assert back.hands[0].mano.pose.shape == (5, 48) and back.objects[0].label == 14 and back.fps == 15.0
    if suffix == ".npz":
        with np.load(tmp_path / "seq.npz", allow_pickle=False) as z:  # plain arrays, no pickles
            assert "hands.0.joints" in z.files and z["objects.0.pose"].shape == (5, 4, 4)


def test_resample_keeps_time_span_and_check_frames_names_both_counts():
    s = _seq(49)
    r = hoi.resample(s, 25)
    assert r.num_frames == 25 and r.fps == 7.5                      # 15 * 24 / 48
    np.testing.assert_allclose(r.hands[0].joints[12], s.hands[0].joints[24])  # same instant
    np.testing.assert_allclose(r.objects[0].pose[5, 0, 3], s.objects[0].pose[10, 0, 3])
    up = hoi.resample(_seq(3), 5)                                  # halfway frames are the means
    np.testing.assert_allclose(up.hands[0].joints[1], _seq(3).hands[0].joints[:2].mean(0))
    with pytest.raises(hoi.FrameCountError, match="has 49 frames, PAM needs 13"):
        hoi.check_frames(s, 13, "PAM")
    hoi.check_frames(r, 25)


def test_resample_slerps_rotations():
    F = 3
    pose = np.tile(np.eye(4), (F, 1, 1))
    pose[2, :3, :3] = rot.axis_angle_to_matrix(torch.tensor([0, 0, np.pi / 2])).numpy()
    s = hoi.HOISequence(10, hoi.HOICamera(np.eye(3), np.eye(4), 8, 8), [], [hoi.ObjectTrack(1, pose)])
    s.objects[0].pose[1] = np.eye(4)
    r = hoi.resample(s, 5)                                         # frame 3 is halfway between 1 and 2
    want = rot.axis_angle_to_matrix(torch.tensor([0, 0, np.pi / 4])).numpy()
    np.testing.assert_allclose(r.objects[0].pose[3, :3, :3], want, atol=1e-12)


def test_rotation_helpers():
    q45 = rot.slerp(torch.tensor([1.0, 0, 0, 0], dtype=torch.float64),
                    rot.axis_angle_to_quaternion(torch.tensor([0, 0, np.pi / 2], dtype=torch.float64)), 0.5)
    np.testing.assert_allclose(q45.numpy(), [np.cos(np.pi / 8), 0, 0, np.sin(np.pi / 8)], atol=1e-15)
    aa = torch.tensor([[0.3, -1.2, 2.0], [1e-9, 0, 0], [0, np.pi, 0]], dtype=torch.float64)
    Rm = rot.axis_angle_to_matrix(aa)
    np.testing.assert_allclose((Rm @ Rm.transpose(-1, -2)).numpy(), np.tile(np.eye(3), (3, 1, 1)), atol=1e-12)
    np.testing.assert_allclose(rot.quaternion_to_matrix(rot.matrix_to_quaternion(Rm)).numpy(), Rm.numpy(), atol=1e-12)
    np.testing.assert_allclose(rot.quaternion_to_axis_angle(rot.axis_angle_to_quaternion(aa[:1])).numpy(),
                               aa[:1].numpy(), atol=1e-12)
    # Rodrigues by hand: 90 degrees about z takes x to y
    Rz = rot.axis_angle_to_matrix(torch.tensor([0, 0, np.pi / 2], dtype=torch.float64)).numpy()
    np.testing.assert_allclose(Rz @ [1.0, 0, 0], [0, 1, 0], atol=1e-15)
    q = rot.rotation_between(torch.tensor([1.0, 0, 0], dtype=torch.float64), torch.tensor([-1.0, 0, 0],
                                                                                           dtype=torch.float64))
    np.testing.assert_allclose((rot.quaternion_to_matrix(q) @ torch.tensor([1.0, 0, 0], dtype=torch.float64)).numpy(),
                               [-1, 0, 0], atol=1e-12)


def test_box_mesh_is_closed_and_outward():
    v, f = hoi.box_mesh([2.0, 4.0, 6.0])
    assert np.allclose(v.min(0), [-1, -2, -3]) and np.allclose(v.max(0), [1, 2, 3])
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    n = np.cross(b - a, c - a)
    assert (np.einsum("ij,ij->i", n, (a + b + c) / 3) > 0).all()   # every normal points away from the centre
    area = 0.5 * np.linalg.norm(n, axis=1).sum()
    assert area == pytest.approx(2 * (2 * 4 + 2 * 6 + 4 * 6))
