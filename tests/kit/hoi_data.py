"""Hand-object test data: a synthetic MANO-shaped model (MANO itself is licence-restricted and never in the
repository) and DexYCB-layout label folders written the way the dataset stores them."""
import numpy as np

PARENTS = [0, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14]  # MANO's tree (entry 0 is unused)


def synthetic_mano(seed=0, posedirs=False):
    """A MANO-shaped model: 778 vertices, vertex i skinned only to joint i % 16, joint k at the mean of its
    vertices, random shape blend shapes, orthonormal PCA components."""
    rng = np.random.default_rng(seed)
    V = 778
    v = rng.normal(size=(V, 3)) * 0.05
    owner = np.arange(V) % 16
    weights = np.eye(16)[owner]
    J = np.zeros((16, V))
    for k in range(16):
        J[k, owner == k] = 1.0 / (owner == k).sum()
    comps, _ = np.linalg.qr(rng.normal(size=(45, 45)))
    return dict(v_template=v, shapedirs=rng.normal(size=(V, 3, 10)) * 1e-3,
                posedirs=(rng.normal(size=(V, 3, 135)) * 1e-3) if posedirs else np.zeros((V, 3, 135)),
                J_regressor=J, weights=weights, f=rng.integers(0, V, size=(1538, 3)),
                kintree_table=np.stack([[2 ** 32 - 1] + PARENTS[1:], list(range(16))]).astype(np.int64),
                hands_components=comps, hands_mean=rng.normal(size=45) * 0.1)


K_TRUE = np.array([[616.6, 0, 318.2], [0, 616.1, 243.7], [0, 0, 1.0]])


def dexycb_folder(root, frames=4, ids=(14,), side="right", missing=(2,), depth=False, calib=False):
    """<root>/<subject>/<sequence>/<serial>/labels_%06d.npz as DexYCB stores them (seg 0/ids/255, joint_3d in the
    camera frame, joint_2d its projection, -1 where the hand is missing) plus the sequence's meta.yml."""
    cam = root / "20200709-subject-01" / "20200709_141754" / "836212060125"
    cam.mkdir(parents=True)
    (cam.parent / "meta.yml").write_text(f"num_frames: {frames}\nycb_ids: {list(ids)}\nmano_sides: [{side}]\n"
                                         "mano_calib: [20200709-subject-01]\nycb_grasp_ind: 0\n")
    rng = np.random.default_rng(0)
    for f in range(frames):
        seg = np.zeros((480, 640), np.uint8)
        for k, i in enumerate(ids):
            seg[300:380, 100 + 120 * k:180 + 120 * k] = i
        seg[200:300, 300 + 5 * f:420 + 5 * f] = 255
        j3 = rng.normal(size=(21, 3)) * [0.04, 0.04, 0.02] + [0.02, -0.01, 0.7]
        uv = (j3 / j3[:, 2:]) @ K_TRUE.T
        j2 = uv[:, :2]
        if f in missing:
            j3, j2 = -np.ones((21, 3)), -np.ones((21, 2))
        np.savez(cam / f"labels_{f:06d}.npz", seg=seg, joint_3d=j3[None].astype(np.float32),
                 joint_2d=j2[None].astype(np.float32), pose_m=rng.normal(size=(1, 51)).astype(np.float32),
                 pose_y=np.tile(np.eye(4)[:3], (len(ids), 1, 1)).astype(np.float32))
        if depth:
            from PIL import Image

            Image.fromarray(np.full((480, 640), 700 + f, np.uint16)).save(cam / f"aligned_depth_to_color_{f:06d}.png")
    if calib:
        intr = root / "calibration" / "intrinsics"
        intr.mkdir(parents=True)
        (intr / "836212060125_640x480.yml").write_text("color: {fx: 600.0, fy: 601.0, ppx: 320.5, ppy: 240.5}\n")
    return cam
