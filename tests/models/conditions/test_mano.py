"""MANO: the converter (npz, and the original pickle through the restricted unpickler, which refuses code) and the
LBS layer on a synthetic MANO-shaped model, checked against motions worked out by hand."""
import pickle
import sys
import types

import numpy as np
import pytest
import torch

from interplay.models.conditions import mano as M
from interplay.models.conditions.rotations import axis_angle_to_matrix
from kit.hoi_data import synthetic_mano

def test_rest_pose_gives_template_joints_in_drawing_order():
    a = synthetic_mano()
    model = M.ManoModel(a)
    verts, joints = model(torch.zeros(1, 48))
    np.testing.assert_allclose(verts[0].numpy(), a["v_template"], atol=1e-6)
    J = a["J_regressor"] @ a["v_template"]
    # drawing order: wrist, thumb MCP (MANO joint 13) .. tip (vertex 745), index (1, 2, 3, vertex 317), ...
    np.testing.assert_allclose(joints[0, 0].numpy(), J[0], atol=1e-6)
    np.testing.assert_allclose(joints[0, 1].numpy(), J[13], atol=1e-6)
    np.testing.assert_allclose(joints[0, 4].numpy(), a["v_template"][745], atol=1e-6)
    np.testing.assert_allclose(joints[0, 8].numpy(), a["v_template"][317], atol=1e-6)
    np.testing.assert_allclose(joints[0, 17].numpy(), J[7], atol=1e-6)       # little MCP = MANO joint 7
    np.testing.assert_allclose(joints[0, 20].numpy(), a["v_template"][673], atol=1e-6)
    t = torch.tensor([[0.1, -0.2, 0.3]])
    v2, j2 = model(torch.zeros(1, 48), trans=t)
    np.testing.assert_allclose((v2 - verts).numpy(), np.broadcast_to(t.numpy(), verts.shape), atol=1e-6)
    v3, j3 = model(torch.zeros(1, 48), trans=t, center_idx=0)
    np.testing.assert_allclose(j3[0, 0].numpy(), t[0].numpy(), atol=1e-6)   # wrist-centred, then translated


def test_global_and_finger_rotations_move_vertices_rigidly_about_their_joint():
    a = synthetic_mano()
    model = M.ManoModel(a)
    v, J = a["v_template"], a["J_regressor"] @ a["v_template"]
    R = axis_angle_to_matrix(torch.tensor([0.2, -0.5, 0.9], dtype=torch.float64)).numpy()
    pose = torch.zeros(1, 48)
    pose[0, :3] = torch.tensor([0.2, -0.5, 0.9])
    verts, _ = model(pose)
    np.testing.assert_allclose(verts[0].numpy(), (v - J[0]) @ R.T + J[0], atol=1e-5)  # about the wrist
    pose = torch.zeros(1, 48)
    pose[0, 3:6] = torch.tensor([0.2, -0.5, 0.9])                                        # joint 1 (index1)
    verts, _ = model(pose)
    owner = np.arange(778) % 16
    for k in (1, 2, 3):  # index1 and its children turn about joint 1; everything else stays
        np.testing.assert_allclose(verts[0].numpy()[owner == k], (v[owner == k] - J[1]) @ R.T + J[1], atol=1e-5)
    np.testing.assert_allclose(verts[0].numpy()[owner == 4], v[owner == 4], atol=1e-6)


def test_shape_and_pose_blend_shapes():
    a = synthetic_mano()
    a["posedirs"][0, 0, 0] = 1.0                 # vertex 0 (skinned to the unrotated wrist) moves with (R1 - I)[0, 0]
    model = M.ManoModel(a)
    pose = torch.zeros(1, 48)
    pose[0, 3] = 0.5                             # joint 1 about x: R1[0, 0] = 1, so feature 0 is 0
    pose[0, 4] = 0.7                             # ... and about y: R1[0, 0] = cos(|(0.5, 0.7, 0)|)
    verts, _ = model(pose)
    th = np.hypot(0.5, 0.7)
    R1 = axis_angle_to_matrix(torch.tensor([0.5, 0.7, 0.0], dtype=torch.float64)).numpy()
    assert verts[0, 0, 0].item() == pytest.approx(a["v_template"][0, 0] + (R1[0, 0] - 1), abs=1e-6)
    assert R1[0, 0] == pytest.approx(1 - (1 - np.cos(th)) * (0.49 / th ** 2), abs=1e-12)
    betas = torch.zeros(1, 10)
    betas[0, 3] = 2.0
    vb, _ = model(torch.zeros(1, 48), betas=betas)
    np.testing.assert_allclose(vb[0].numpy(), a["v_template"] + 2.0 * a["shapedirs"][..., 3], atol=1e-6)


def test_pca_quaternion_and_mean_pose_spaces_agree():
    a = synthetic_mano()
    model = M.ManoModel(a)
    rng = np.random.default_rng(1)
    coeffs = torch.tensor(rng.normal(size=(2, 45)) * 0.3, dtype=torch.float32)
    glob = torch.tensor(rng.normal(size=(2, 3)) * 0.3, dtype=torch.float32)
    fingers = coeffs @ torch.tensor(a["hands_components"], dtype=torch.float32)
    v_pca, j_pca = model(torch.cat([glob, coeffs], 1), pose_space="pca", flat_hand_mean=False)
    aa = torch.cat([glob, fingers + torch.tensor(a["hands_mean"], dtype=torch.float32)], 1)
    v_aa, j_aa = model(aa)
    torch.testing.assert_close(v_pca, v_aa, atol=1e-5, rtol=0)
    from interplay.models.conditions.rotations import axis_angle_to_quaternion

    v_q, _ = model(axis_angle_to_quaternion(aa.reshape(2, 16, 3).double()).float(), pose_space="quat")
    torch.testing.assert_close(v_q, v_aa, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="pose_space"):
        model(aa, pose_space="euler")


def test_convert_npz_to_safetensors_and_load(tmp_path):
    a = synthetic_mano(posedirs=True)
    np.savez(tmp_path / "MANO_RIGHT.npz", **a)
    out = M.convert_mano(tmp_path / "MANO_RIGHT.npz", tmp_path / "mano_right.safetensors")
    model = M.ManoModel.from_file(out)
    assert model.side == "right" and model.faces.shape == (1538, 3)
    pose = torch.tensor(np.random.default_rng(2).normal(size=(1, 48)) * 0.2, dtype=torch.float32)
    torch.testing.assert_close(model(pose)[0], M.ManoModel(a)(pose)[0])
    bad = dict(a, weights=a["weights"][:, :15])
    np.savez(tmp_path / "bad.npz", **bad)
    with pytest.raises(M.ManoFileError, match=r"weights \(778, 15\)"):
        M.convert_mano(tmp_path / "bad.npz", tmp_path / "x.safetensors", side="right")
    with pytest.raises(M.ManoFileError, match="which hand"):
        M.convert_mano(tmp_path / "bad.npz", tmp_path / "x.safetensors")


def _fake_modules(monkeypatch):
    """Stand-ins named like chumpy's and scipy's classes, so a test can write a MANO-style pickle."""
    ch = types.ModuleType("chumpy.ch")
    Ch = type("Ch", (), {"__module__": "chumpy.ch"})
    ch.Ch = Ch
    sp = types.ModuleType("scipy.sparse.csc")
    csc = type("csc_matrix", (), {"__module__": "scipy.sparse.csc"})
    sp.csc_matrix = csc
    for name, mod in (("chumpy", types.ModuleType("chumpy")), ("chumpy.ch", ch), ("scipy", types.ModuleType("scipy")),
                      ("scipy.sparse", types.ModuleType("scipy.sparse")), ("scipy.sparse.csc", sp)):
        monkeypatch.setitem(sys.modules, name, mod)
    return Ch, csc


@pytest.mark.parametrize("protocol", [0, 2])
def test_restricted_unpickler_reads_a_mano_style_pickle(tmp_path, monkeypatch, protocol):
    Ch, csc = _fake_modules(monkeypatch)
    a = synthetic_mano()
    data = {}
    for k, val in a.items():
        if k in ("shapedirs", "posedirs", "v_template", "weights"):
            obj = Ch()
            obj.__dict__.update(x=val, _dirty_vars=set(), label="")  # a chumpy array keeps its value in 'x'
            data[k] = obj
        elif k == "J_regressor":
            m = csc()
            cols = [np.flatnonzero(val[:, j]) for j in range(val.shape[1])]
            m.__dict__.update(_shape=val.shape, format="csc", maxprint=50,
                              data=np.concatenate([val[c, j] for j, c in enumerate(cols)]),
                              indices=np.concatenate(cols).astype(np.int32),
                              indptr=np.r_[0, np.cumsum([len(c) for c in cols])].astype(np.int32))
            data[k] = m
        else:
            data[k] = val
    data["bs_style"] = "lbs"
    (tmp_path / "MANO_LEFT.pkl").write_bytes(pickle.dumps(data, protocol=protocol))
    for name in ("chumpy.ch", "scipy.sparse.csc"):  # reading needs neither package
        monkeypatch.delitem(sys.modules, name)
    got = M.read_mano_source(tmp_path / "MANO_LEFT.pkl")
    for k in M.MANO_KEYS:
        np.testing.assert_array_equal(np.asarray(got[k], np.float64), np.asarray(a[k], np.float64), err_msg=k)
    out = M.convert_mano(tmp_path / "MANO_LEFT.pkl", tmp_path / "mano_left.safetensors")
    assert M.ManoModel.from_file(out).side == "left"


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch pwned_by_mano_pickle",))


def test_restricted_unpickler_refuses_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "MANO_RIGHT.pkl").write_bytes(pickle.dumps({"v_template": _Evil()}, protocol=2))
    with pytest.raises(M.ManoFileError, match="posix.system is not allowed|os.system is not allowed"):
        M.read_mano_source(tmp_path / "MANO_RIGHT.pkl")
    assert not (tmp_path / "pwned_by_mano_pickle").exists()
    (tmp_path / "b.pkl").write_bytes(pickle.dumps({"x": __import__("builtins").eval}, protocol=2))
    with pytest.raises(M.ManoFileError, match=r"builtin__\.eval is not allowed"):
        M.read_mano_pickle(tmp_path / "b.pkl")
