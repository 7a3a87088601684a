"""HOI sequences from datasets: DexYCB label folders, OakInk2 preview exports and sandbox clips.

DexYCB (dex-ycb.github.io; layout of NVlabs/dex-ycb-toolkit): ``<subject>/<sequence>/<camera serial>/`` holds
``labels_%06d.npz`` per frame (PAM's loader takes any ``label*`` file, sorted by its number) with ``seg`` [H,W]
uint8 (0 background, 1..21 YCB id, 255 hand), ``joint_3d`` [1,21,3] (camera frame, metres), ``joint_2d``
[1,21,2] (pixels; -1 where no hand), ``pose_m`` [1,51] (MANO: 48 PCA pose, 3 translation), ``pose_y`` [K,3,4]
(object poses, camera frame) and optionally ``aligned_depth_to_color_%06d.png`` (uint16 mm). ``<sequence>/meta.yml``
gives ``ycb_ids`` (the order of pose_y) and ``mano_sides``; ``calibration/`` above gives intrinsics and betas.
No MANO is needed: seg, joints and keypoints come straight from the labels, as PAM's dataloader takes them.

OakInk2 (``anno_preview/<seq>.pkl``) is a pickle of torch tensors, which the pack never unpickles: export the
fields once where the OakInk2 toolkit already loads them (snippet in HOI_FORMAT.md) to an .npz with
``cam_intr`` [F,3,3], ``cam_extr`` [F,4,4] (world to camera, one camera), ``lh_pose_coeffs`` / ``rh_pose_coeffs``
[F,16,4] (quaternions w,x,y,z), ``lh_betas`` / ``rh_betas`` [F,10], ``lh_tsl`` / ``rh_tsl`` [F,3], ``obj_ids``
[K] (strings), ``obj_transf`` [K,F,4,4] (object to world), optional ``frame_ids`` [F] and ``image_size`` (H, W)
(default 480 x 848). Hands are MANO parameters (manotorch conventions: quaternions, flat hand mean, centred
on the wrist, then translated), so rendering them needs the converted MANO models; objects use
``<mesh_root>/<obj_id>/*.obj`` meshes. Labels follow PAM's OakInk2 renderer: objects 2, 3, ... in order.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .hoi import (HAND_LABEL, HandTrack, HOICamera, HOIFormatError, HOISequence, ManoParams, ObjectTrack,
                  box_mesh, cylinder_mesh, read_obj)

YCB_CLASSES = {1: "002_master_chef_can", 2: "003_cracker_box", 3: "004_sugar_box", 4: "005_tomato_soup_can",
               5: "006_mustard_bottle", 6: "007_tuna_fish_can", 7: "008_pudding_box", 8: "009_gelatin_box",
               9: "010_potted_meat_can", 10: "011_banana", 11: "019_pitcher_base", 12: "021_bleach_cleanser",
               13: "024_bowl", 14: "025_mug", 15: "035_power_drill", 16: "036_wood_block", 17: "037_scissors",
               18: "040_large_marker", 19: "051_large_clamp", 20: "052_extra_large_clamp", 21: "061_foam_brick"}
DEXYCB_FPS = 30.0
OAKINK2_SIZE = (480, 848)
_NUM = re.compile(r"(\d+)")


def _yaml(path: Path) -> dict:
    try:
        import yaml
    except ImportError:  # PyYAML is optional: the labels alone are enough
        return {}
    try:
        return yaml.safe_load(path.read_text()) or {}
    except Exception as ex:
        raise HOIFormatError(f"{path}: unreadable YAML ({ex})") from ex


def label_files(folder) -> list[Path]:
    """A DexYCB camera folder's label files (``label*.npz``), sorted by the number in their names."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"DexYCB folder {folder} not found")
    files = [p for p in folder.iterdir() if p.name.startswith("label") and p.suffix == ".npz"]
    if not files:
        raise HOIFormatError(f"{folder}: no labels_*.npz files; expected a DexYCB camera folder "
                             "(<subject>/<sequence>/<serial>/)")
    return sorted(files, key=lambda p: int(_NUM.findall(p.stem)[-1]) if _NUM.findall(p.stem) else -1)


def intrinsics_from_labels(j3d: np.ndarray, j2d: np.ndarray) -> np.ndarray | None:
    """K [3,3] from joint_3d / joint_2d pairs by least squares (u = fx x/z + cx, v = fy y/z + cy): DexYCB's
    joint_2d are these projections, so the fit is exact; None when no frame has a hand."""
    ok = (j2d > -1).all(-1) & (j3d[..., 2] > 1e-6)
    if ok.sum() < 2:
        return None
    x, y = j3d[ok][:, 0] / j3d[ok][:, 2], j3d[ok][:, 1] / j3d[ok][:, 2]
    fx, cx = np.linalg.lstsq(np.c_[x, np.ones_like(x)], j2d[ok][:, 0], rcond=None)[0]
    fy, cy = np.linalg.lstsq(np.c_[y, np.ones_like(y)], j2d[ok][:, 1], rcond=None)[0]
    return np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])


def load_dexycb(folder, *, start: int = 0, every_nth: int = 1, max_frames: int | None = None,
                depth: bool = True, meshes: bool = True) -> HOISequence:
    """An HOISequence of one DexYCB camera folder (see the module docstring). start / every_nth / max_frames
    pick label files (PAM takes every (N // 49)-th of N, i.e. 49 consecutive frames of a 72-frame clip).
    depth: read aligned_depth_to_color_*.png when present. meshes: read the YCB models when the dataset's
    models/ folder is found above."""
    folder = Path(folder)
    files = label_files(folder)[start::max(1, int(every_nth))]
    if max_frames:
        files = files[:int(max_frames)]
    if not files:
        raise HOIFormatError(f"{folder}: no label files left after start={start}, every_nth={every_nth}")
    segs, j3, j2, pm, py = [], [], [], [], []
    for p in files:
        try:
            with np.load(p, allow_pickle=False) as z:
                segs.append(np.asarray(z["seg"], np.uint8))
                j3.append(np.asarray(z["joint_3d"], np.float64).reshape(-1, 21, 3)[0])
                j2.append(np.asarray(z["joint_2d"], np.float64).reshape(-1, 21, 2)[0])
                pm.append(np.asarray(z["pose_m"], np.float64).reshape(-1, 51)[0] if "pose_m" in z.files else None)
                py.append(np.asarray(z["pose_y"], np.float64).reshape(-1, 3, 4) if "pose_y" in z.files else None)
        except KeyError as ex:
            raise HOIFormatError(f"{p}: missing {ex}; a DexYCB label holds seg, joint_3d and joint_2d") from ex
        except Exception as ex:
            raise HOIFormatError(f"{p}: unreadable label file ({type(ex).__name__}: {ex})") from ex
    seg = np.stack(segs)
    F, H, W = seg.shape
    j3, j2 = np.stack(j3), np.stack(j2)
    valid = ~((j2 == -1).all((1, 2)) | (j3 == -1).all((1, 2)))
    meta_file = folder.parent / "meta.yml"
    meta = _yaml(meta_file) if meta_file.is_file() else {}
    side = str((meta.get("mano_sides") or ["right"])[0])
    ycb_ids = [int(i) for i in meta.get("ycb_ids", [])]
    root = next((a for a in folder.parents if (a / "calibration").is_dir()), None)
    K = None
    if root is not None:
        intr = root / "calibration" / "intrinsics" / f"{folder.name}_{W}x{H}.yml"
        if intr.is_file():
            c = _yaml(intr).get("color", {})
            if {"fx", "fy", "ppx", "ppy"} <= set(c):
                K = np.array([[c["fx"], 0, c["ppx"]], [0, c["fy"], c["ppy"]], [0, 0, 1.0]], np.float64)
    k_source = "calibration"
    if K is None:
        K, k_source = intrinsics_from_labels(j3, j2), "fitted to joint_3d/joint_2d"
    if K is None:
        K, k_source = np.array([[615.0, 0, (W - 1) / 2], [0, 615.0, (H - 1) / 2], [0, 0, 1]]), "nominal"
    betas = np.zeros(10)
    if root is not None and meta.get("mano_calib"):
        mc = root / "calibration" / f"mano_{meta['mano_calib'][0]}" / "mano.yml"
        if mc.is_file():
            betas = np.asarray(_yaml(mc).get("betas", betas), np.float64)
    mano = None
    if all(m is not None for m in pm):
        pm = np.stack(pm)
        mano = ManoParams(pm[:, :48], pm[:, 48:51], betas, "pca", flat_hand_mean=False)
    hand = HandTrack(side, np.where(valid[:, None, None], j3, 0.0), j2, valid, mano)
    objects = []
    if all(p is not None for p in py) and len({p.shape[0] for p in py}) == 1:
        poses = np.zeros((F, py[0].shape[0], 4, 4))
        poses[:, :, :3, :] = np.stack(py)
        poses[:, :, 3, 3] = 1
        models = None if (root is None or not meshes) else root / "models"
        for k in range(poses.shape[1]):
            label = ycb_ids[k] if k < len(ycb_ids) else k + 1
            name = YCB_CLASSES.get(label, f"object_{label}")
            v = f = None
            if models is not None and (models / name / "textured_simple.obj").is_file():
                v, f = read_obj(models / name / "textured_simple.obj")
            objects.append(ObjectTrack(label, poses[:, k], v, f, name))
    dep = None
    if depth:
        pngs = [folder / ("aligned_depth_to_color_" + _NUM.findall(p.stem)[-1] + ".png") for p in files]
        if all(p.is_file() for p in pngs):
            from PIL import Image

            dep = np.stack([np.asarray(Image.open(p), np.float32) / 1000.0 for p in pngs])
            if dep.shape != (F, H, W):
                raise HOIFormatError(f"{folder}: depth images {dep.shape[1:]} do not match the labels {(H, W)}")
    return HOISequence(DEXYCB_FPS / max(1, int(every_nth)), HOICamera(K, np.eye(4), W, H), [hand], objects,
                       seg=seg, depth=dep, meta=dict(source="dexycb", folder=folder.name, intrinsics=k_source,
                                                     frames=[p.name for p in files][:3] + ["..."]),
                       num_frames=F)


def load_oakink2(path, mesh_root=None, fps: float = 30.0) -> HOISequence:
    """An HOISequence of an OakInk2 preview export (.npz; see the module docstring and HOI_FORMAT.md)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"OakInk2 export {path} not found")
    try:
        z = dict(np.load(path, allow_pickle=False))
    except Exception as ex:
        raise HOIFormatError(f"{path}: not a readable .npz without pickles ({type(ex).__name__}: {ex})") from ex
    need = ["cam_intr", "cam_extr"]
    missing = [k for k in need if k not in z]
    if missing:
        raise HOIFormatError(f"{path}: missing {', '.join(missing)} (see HOI_FORMAT.md, OakInk2 export)")
    K, E = z["cam_intr"], z["cam_extr"]
    F = int(K.shape[0]) if K.ndim == 3 else int(E.shape[0])
    H, W = (int(v) for v in z.get("image_size", OAKINK2_SIZE))
    hands = []
    for pre, side in (("lh", "left"), ("rh", "right")):
        if f"{pre}_pose_coeffs" not in z:
            continue
        mano = ManoParams(z[f"{pre}_pose_coeffs"].reshape(F, 16, 4), z[f"{pre}_tsl"].reshape(F, 3),
                          z[f"{pre}_betas"].reshape(-1, 10) if z[f"{pre}_betas"].size > 10 else z[f"{pre}_betas"],
                          "quat", flat_hand_mean=True, center_idx=0)
        hands.append(HandTrack(side, mano=mano))
    objects = []
    ids = [str(s) for s in z.get("obj_ids", [])]
    transf = z.get("obj_transf")
    for k, oid in enumerate(ids):
        v = f = None
        if mesh_root is not None:
            objs = sorted((Path(mesh_root) / oid).glob("*.obj"))
            if objs:
                v, f = read_obj(objs[0])
        objects.append(ObjectTrack(2 + k, transf[k], v, f, oid))
    return HOISequence(fps, HOICamera(K, E, W, H), hands, objects,
                       meta=dict(source="oakink2", style="oakink2", file=path.name), num_frames=F)


def sequence_from_scene(clip) -> HOISequence:
    """An HOISequence of a sandbox SceneClip: its camera (pixel centres shifted to the OpenCV convention), its
    objects as box / cylinder meshes (labels i + 1, the ID map's) with their poses, and, for the 'hoi' preset,
    the hand's 21 joints."""
    cam = clip.camera
    if not cam or "K" not in cam:
        raise HOIFormatError("sandbox clip: no camera in the sidecar")
    H, W = clip.size
    K = np.asarray(cam["K"], np.float64).copy()
    K[0, 2] -= 0.5  # the sandbox puts pixel centres at integer + 0.5
    K[1, 2] -= 0.5
    E = np.asarray(cam["world_to_camera"], np.float64)
    F = clip.num_frames
    objects = []
    for i, o in enumerate(clip.objects):
        sx, sy, h = (float(v) for v in o["size"])
        v, f = box_mesh([sx, sy, h]) if o.get("shape") == "box" else cylinder_mesh(sx / 2, h)
        pose = np.tile(np.eye(4), (F, 1, 1))
        if getattr(clip, "object_pose", None) is not None:
            pose = np.asarray(clip.object_pose[i], np.float64)
        elif clip.pos_world is not None:
            pose[:, :3, 3] = clip.pos_world[i]
        objects.append(ObjectTrack(i + 1, pose, v, f, f"{o.get('colour', '')} {o.get('shape', '')}".strip()))
    hands = []
    joints = getattr(clip, "hand_joints", None)
    if joints is not None:
        hands.append(HandTrack(str(clip.meta.get("hand_side", "right")), np.asarray(joints, np.float64)))
    return HOISequence(float(clip.fps), HOICamera(K, E, W, H), hands, objects,
                       meta=dict(source=f"sandbox:{clip.preset}", seed=int(clip.seed)), num_frames=F)


__all__ = ["load_dexycb", "load_oakink2", "sequence_from_scene", "label_files", "intrinsics_from_labels",
           "YCB_CLASSES", "HAND_LABEL"]
