import json

import numpy as np
import pytest

from interplay.models import video_io as vio
from interplay.models.sandbox import evaluate as ev

S, F, H, W = 20, 7, 64, 96  # object size, frames, frame size


def _texture(h, w, seed, smooth):
    import cv2

    t = cv2.GaussianBlur(np.random.default_rng(seed).random((h, w, 3)).astype(np.float32), (0, 0), smooth)
    return (t - t.min()) / (t.max() - t.min())


def scene(vx=4, vy=1, extra=0, x0=30, y0=20):
    """Textured background, a textured square moving (vx, vy) px/frame; `extra` px further right from frame 1.
    A second, static object (index 1, not driven). Returns frames uint8 [F,H,W,3], masks bool [2,F,H,W]."""
    bg = 0.1 + 0.5 * _texture(H, W, 0, 2.0)
    obj = 0.45 + 0.55 * _texture(S, S, 1, 1.5)
    vid = np.repeat(bg[None], F, 0)
    masks = np.zeros((2, F, H, W), bool)
    for t in range(F):
        x, y = x0 + vx * t + (extra if t else 0), y0 + vy * t
        vid[t, y:y + S, x:x + S] = obj
        masks[0, t, y:y + S, x:x + S] = True
        vid[t, 48:60, 4:16] = (0.9, 0.1, 0.1)
        masks[1, t, 48:60, 4:16] = True
    return vio.to_uint8(vid), masks


def write_reference(folder, frames, masks, driven=(0,), fps=8.0):
    """A reference clip folder: through the sandbox's own write_clip when it exists, else the contract's layout
    (PNG frames, a JSON sidecar with `driven`, an npz with masks)."""
    try:
        from interplay.models.sandbox.dataset import write_clip
        from interplay.models.sandbox.types import SceneClip
    except ImportError:
        write_clip = None
    if write_clip is not None:
        n, f, h, w = masks.shape
        ids = np.zeros((f, h, w), np.int16)
        for i in range(n):
            ids[masks[i]] = i + 1
        z = lambda *shape: np.zeros(shape, np.float32)
        clip = SceneClip(frames=frames, masks=masks, id_map=ids, pusher_mask=np.zeros((f, h, w), bool),
                         vel_world=z(n, f, 3), vel_image=z(n, f, 2), vel_control=z(n, f, 3),
                         objects=[{"shape": "box", "colour": "red", "size": 0.1, "mass": 1.0} for _ in range(n)],
                         driven=list(driven), caption="test", camera={}, fps=fps, seed=0, preset="test",
                         pos_world=z(n, f, 3))
        write_clip(clip, folder)
        return folder
    folder.mkdir(parents=True)
    vio.save_image_sequence(frames, folder / "frames")
    (folder / "clip.json").write_text(json.dumps({"driven": list(driven), "fps": fps}))
    np.savez(folder / "masks.npz", masks=masks)
    return folder


@pytest.fixture
def dirs(tmp_path):
    ref, gen = tmp_path / "ref", tmp_path / "gen"
    gen.mkdir()
    frames, masks = scene()
    write_reference(ref / "clip_000", frames, masks)
    write_reference(ref / "clip_001", frames, masks)
    write_reference(ref / "clip_002", frames, masks)
    return ref, gen, frames, masks


def test_identical_video_scores_perfectly(dirs):
    ref, gen, frames, _ = dirs
    vio.save_video(frames, gen / "clip_000.webp", fps=8)  # lossless: identical frames
    rep = ev.evaluate_folder(gen, ref)
    c = rep["clips"]["clip_000"]
    assert c["iou"] == pytest.approx(1.0)
    assert c["direction_error_deg"] == pytest.approx(0.0, abs=1e-6)
    assert c["endpoint_error_px"] == pytest.approx(0.0)
    assert c["motion_fidelity"] == pytest.approx(2.0)
    assert c["psnr"] == 100.0 and c["ssim"] == pytest.approx(1.0)
    assert [o["object"] for o in c["objects"]] == [0]  # driven only
    assert rep["missing"] == ["clip_001", "clip_002"]
    assert rep["summary"]["iou"] == {"mean": pytest.approx(1.0), "median": pytest.approx(1.0), "n": 1}


def test_shift_opposite_and_all_objects(dirs):
    ref, gen, _, _ = dirs
    k = 4
    shifted, _ = scene(extra=k)
    vio.save_image_sequence(shifted, gen / "clip_000")  # a PNG folder
    opposite, _ = scene(vx=-4, vy=-1)  # same frame 0, opposite motion
    vio.save_video(opposite, gen / "clip_001.webp", fps=8)
    rep = ev.evaluate_folder(gen, ref, driven_only=False)
    a = rep["clips"]["clip_000"]
    assert a["objects"][0]["iou"] == pytest.approx((S - k) / (S + k))
    assert a["objects"][0]["endpoint_error_px"] == pytest.approx(k)
    assert a["objects"][1]["iou"] == pytest.approx(1.0)  # the static object
    assert a["psnr"] < 40
    b = rep["clips"]["clip_001"]["objects"][0]
    assert b["direction_error_deg"] > 170 and b["motion_fidelity"] < 0
    assert rep["summary"]["iou"]["n"] == 2 and rep["missing"] == ["clip_002"]


def test_mp4_and_size_mismatch_resized(dirs):
    ref, gen, frames, _ = dirs
    big = vio.resize_frames(vio.to_float(frames), 2 * H, 2 * W)
    vio.save_video(big, gen / "clip_002.mp4", fps=8, crf=12)
    c = ev.evaluate_folder(gen, ref)["clips"]["clip_002"]
    assert c["resized_from"] == [2 * H, 2 * W]
    assert c["iou"] > 0.9 and c["endpoint_error_px"] < 1.0 and c["psnr"] > 25


def test_bad_generated_file_named_and_cli(dirs, tmp_path, capsys):
    ref, gen, frames, _ = dirs
    vio.save_video(frames, gen / "clip_000.webp", fps=8)
    (gen / "clip_001.mp4").write_bytes(b"junk")
    from interplay.nodes import cli

    out = tmp_path / "rep" / "report.json"
    assert cli.main(["eval", str(gen), str(ref), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "clip_000" in printed and "mean" in printed and "error in clip_001" in printed
    rep = json.loads(out.read_text())  # strict JSON: NaN written as null
    assert "clip_001.mp4" in rep["errors"]["clip_001"]
    assert rep["clips"]["clip_000"]["iou"] == pytest.approx(1.0)
    assert rep["missing"] == ["clip_002"]
    assert cli.main(["eval", str(tmp_path / "nope"), str(ref)]) == 2
    # 500 query points > the 400-pixel object: motion fidelity undefined, written as null
    assert cli.main(["eval", str(gen), str(ref), "--out", str(out), "--mf-points", "500"]) == 0
    rep = json.loads(out.read_text())
    assert rep["clips"]["clip_000"]["motion_fidelity"] is None and rep["options"]["mf_points"] == 500
    assert rep["summary"]["motion_fidelity"]["n"] == 0
