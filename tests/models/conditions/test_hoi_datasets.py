"""HOI importers: a DexYCB-layout label folder (written here the way the dataset stores it), an OakInk2 preview
export with MANO hands, and sandbox clips; each rendered into PAM's conditions."""
import numpy as np
import pytest
import torch

from interplay.models.conditions import hoi_datasets as D
from interplay.models.conditions import hoi_render as R
from interplay.models.conditions.mano import ManoModel

from kit.hoi_data import K_TRUE, dexycb_folder, synthetic_mano

def test_dexycb_folder_loads_as_the_labels_give_it(tmp_path):
    cam = dexycb_folder(tmp_path, ids=(3, 14, 21), side="left")
    s = D.load_dexycb(cam)
    assert s.num_frames == 4 and s.fps == 30.0 and s.camera.width == 640 and s.camera.height == 480
    h = s.hands[0]
    assert h.side == "left" and h.valid.tolist() == [True, True, False, True]
    np.testing.assert_allclose(s.camera.K[0], K_TRUE, atol=1e-3)           # fitted from joint_3d -> joint_2d
    assert s.meta["intrinsics"] == "fitted to joint_3d/joint_2d"
    assert [o.label for o in s.objects] == [3, 14, 21] and s.objects[1].name == "025_mug"
    assert h.mano.pose_space == "pca" and h.mano.pose.shape == (4, 48) and not h.mano.flat_hand_mean
    with np.load(cam / "labels_000001.npz") as z:
        np.testing.assert_array_equal(s.seg[1], z["seg"])
        np.testing.assert_array_equal(h.joints_2d[1], z["joint_2d"][0])
    sub = D.load_dexycb(cam, start=1, every_nth=2)
    assert sub.num_frames == 2 and sub.fps == 15.0 and sub.hands[0].valid.tolist() == [True, True]


def test_dexycb_conditions_use_the_annotations(tmp_path):
    cam = dexycb_folder(tmp_path, ids=(3, 14), depth=True, calib=True)
    s = D.load_dexycb(cam)
    np.testing.assert_allclose(s.camera.K[0], [[600, 0, 320.5], [0, 601, 240.5], [0, 0, 1]])
    c = R.render_hoi_conditions(s, size=(480, 720))
    seg = (c.seg.numpy() * 255).round().astype(np.int64)
    pack = seg @ np.array([65536, 256, 1])
    lut = R.seg_lut().astype(np.int64) @ np.array([65536, 256, 1])
    assert set(np.unique(pack).tolist()) == {lut[0], lut[3], lut[14], lut[255]}
    # the label map is the annotation, resized 640 -> 720 with nearest: column x reads floor(x * 640 / 720)
    lab = c.labels.numpy()
    xs = (np.arange(720) * 640) // 720
    np.testing.assert_array_equal(lab[0], s.seg[0][:, xs])
    assert c.hand[2].amax() == 0 and c.hand[0].amax() > 0                  # frame 2 has no hand
    dep = (c.depth.numpy() * 255).round()
    assert dep[lab == 0].max() == 0 and dep[lab > 0].min() > 0 and c.meta["annotated_depth"]


def test_oakink2_export_renders_mano_hands_and_meshes(tmp_path):
    F = 2
    rng = np.random.default_rng(3)
    quat = np.zeros((F, 16, 4))
    quat[..., 0] = 1.0
    E = np.tile(np.eye(4), (F, 1, 1))
    tsl_r, tsl_l = np.tile([0.05, 0.0, 0.5], (F, 1)), np.tile([-0.05, 0.0, 0.5], (F, 1))
    obj = np.tile(np.eye(4), (1, F, 1, 1))
    obj[0, :, :3, 3] = [0.0, 0.08, 0.6]
    np.savez(tmp_path / "seq.npz", cam_intr=np.tile([[400.0, 0, 212], [0, 400.0, 120], [0, 0, 1]], (F, 1, 1)),
             cam_extr=E, rh_pose_coeffs=quat, rh_betas=np.zeros((F, 10)), rh_tsl=tsl_r,
             lh_pose_coeffs=quat, lh_betas=np.zeros((F, 10)), lh_tsl=tsl_l, obj_ids=np.array(["O02@0014@00001"]),
             obj_transf=obj, image_size=np.array([240, 424]))
    (tmp_path / "meshes" / "O02@0014@00001").mkdir(parents=True)
    (tmp_path / "meshes" / "O02@0014@00001" / "m.obj").write_text(
        "".join(f"v {x} {y} {z}\n" for x in (-.03, .03) for y in (-.03, .03) for z in (-.03, .03))
        + "f 1 2 4 3\nf 5 7 8 6\nf 1 5 6 2\nf 3 4 8 7\nf 1 3 7 5\nf 2 6 8 4\n")
    s = D.load_oakink2(tmp_path / "seq.npz", mesh_root=tmp_path / "meshes")
    assert [h.side for h in s.hands] == ["left", "right"] and s.objects[0].label == 2
    with pytest.raises(ValueError, match="MANO model"):
        R.render_hoi_conditions(s, size=(240, 424), style="oakink2")
    a = synthetic_mano(seed=rng.integers(100))
    a["v_template"] = a["v_template"] * 0.5
    mano = {"right": ManoModel(a, "right"), "left": ManoModel(a, "left")}
    c = R.render_hoi_conditions(s, size=(240, 424), style="oakink2", mano=mano, points=4000, min_area=5)
    cols = set(np.unique((c.seg.numpy() * 255).round().astype(np.int64) @ np.array([65536, 256, 1])).tolist())
    want = {0, 61 * 65536 + 230 * 256 + 250, 255 * 65536 + 6 * 256 + 51}    # black, hands, object label 2
    assert cols == want
    # both hands are drawn, each in its own palette (left BASE, right white-red, wrapped), and nothing else
    kp = {tuple(p) for p in np.unique((c.hand[0].numpy() * 255).round().astype(int).reshape(-1, 3), axis=0)}
    left = {R.keypoint_colour(i, R.KP_BASE, True) for i in range(21)}
    right = {R.keypoint_colour(i, R.KP_RIGHT_OAKINK2, True) for i in range(21)}
    assert kp <= left | right | {(0, 0, 0)} and kp & left and kp & right


def test_sandbox_hoi_clip_to_conditions():
    from interplay.models.sandbox.presets import generate_scene

    clip = generate_scene("hoi", 5, (96, 96), frames=5, fps=8)
    s = D.sequence_from_scene(clip)
    assert s.num_frames == 5 and len(s.hands) == 1 and s.objects[0].label == 1
    np.testing.assert_allclose(s.hands[0].joints, clip.hand_joints, atol=1e-6)
    c = R.render_hoi_conditions(s, size=(96, 96), points=4000, min_area=5)
    hand = c.labels.numpy() == 255
    inter, union = (hand & clip.pusher_mask).sum((1, 2)), (hand | clip.pusher_mask).sum((1, 2))
    assert (inter / np.maximum(union, 1))[0] > 0.5   # the capsule proxy covers the sandbox's own hand render
    obj = c.labels.numpy() == 1
    assert ((obj & clip.masks[0]).sum((1, 2)) / np.maximum((obj | clip.masks[0]).sum((1, 2)), 1))[0] > 0.5
    assert torch.equal(c.seg[0][c.labels[0] == 1][0] * 255, torch.tensor([180.0, 120.0, 120.0]))
