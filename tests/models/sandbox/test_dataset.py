import json
import warnings

import numpy as np
import pytest
import torch

from interplay.models.conditions.velocity import V_REF
from interplay.models.sandbox.dataset import ClipError, SandboxDataset, collate, read_clip, write_clip
from interplay.models.sandbox.presets import generate_scene


@pytest.fixture(scope="module")
def clip():
    return generate_scene("push", 4, (32, 40), frames=5, fps=8)


def test_write_read_round_trip_is_exact(tmp_path, clip):
    write_clip(clip, tmp_path / "c")
    back = read_clip(tmp_path / "c")
    for k in ("frames", "masks", "id_map", "pusher_mask", "vel_world", "vel_image", "vel_control", "pos_world"):
        a, b = getattr(clip, k), getattr(back, k)
        assert a.dtype == b.dtype and a.shape == b.shape and (a == b).all(), k
    assert (back.objects, back.driven, back.caption, back.fps, back.seed, back.preset) == \
        (clip.objects, clip.driven, clip.caption, clip.fps, clip.seed, clip.preset)
    assert back.camera["world_to_camera"] == clip.camera["world_to_camera"]
    side = json.loads((tmp_path / "c" / "clip.json").read_text())
    assert side["format"] == "interplay-sandbox-clip" and side["num_frames"] == 5 and side["width"] == 40


def test_write_is_byte_reproducible(tmp_path, clip):
    write_clip(clip, tmp_path / "a")
    write_clip(generate_scene("push", 4, (32, 40), frames=5, fps=8), tmp_path / "b")
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 5 + 2
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f


def test_mp4_clips_read_back_close(tmp_path, clip):
    write_clip(clip, tmp_path / "m", video="mp4")
    back = read_clip(tmp_path / "m")
    assert back.frames.shape == clip.frames.shape
    assert np.abs(back.frames.astype(int) - clip.frames.astype(int)).mean() < 6
    assert (back.id_map == clip.id_map).all()


def test_dataset_items_and_control_video(tmp_path, clip):
    write_clip(clip, tmp_path / "c0")
    write_clip(generate_scene("pusher", 1, (32, 40), frames=5), tmp_path / "c1")
    ds = SandboxDataset(tmp_path, frames=4)
    assert len(ds) == 2
    it = ds[0]
    assert it["frames"].shape == (4, 32, 40, 3) and it["frames"].dtype == torch.float32
    assert 0 <= it["frames"].min() and it["frames"].max() <= 1
    n = len(clip.objects)
    assert it["masks"].shape == (n, 4, 32, 40) and it["vel_control"].shape == (n, 4, 3)
    # the control video is the one velocity encoding of the driven objects
    i = clip.driven[0]
    on = clip.masks[i, 0]
    if on.any() and all(not clip.masks[j, 0].any() or j == i or not (clip.masks[j, 0] & on).any()
                        for j in clip.driven):
        expect = np.clip(clip.vel_control[i, 0] / V_REF, -1, 1)
        np.testing.assert_allclose(it["control"][0][torch.from_numpy(on)].numpy(),
                                   np.broadcast_to(expect, (on.sum(), 3)), atol=1e-6)
    assert (it["control"][~torch.from_numpy(clip.masks[clip.driven].any(0)[:4])] == 0).all()
    it1 = ds[1]
    assert it1["driven"].numel() == 0 and it1["control"].abs().sum() == 0 and it1["pusher_mask"].sum() > 0
    b = collate([it, it1])
    assert b["frames"].shape == (2, 4, 32, 40, 3) and b["control"].shape == (2, 4, 32, 40, 3)
    assert isinstance(b["masks"], list) and b["caption"] == [it["caption"], it1["caption"]]


def test_dataset_resize_scales_image_velocity(tmp_path, clip):
    write_clip(clip, tmp_path / "c0")
    it = SandboxDataset(tmp_path, size=(16, 20))[0]
    assert it["frames"].shape == (5, 16, 20, 3) and it["masks"].shape[-2:] == (16, 20)
    np.testing.assert_allclose(it["vel_image"].numpy(), clip.vel_image * 0.5, rtol=1e-6)


def test_malformed_clips_are_reported_by_name_and_skipped(tmp_path, clip):
    for name in ("a_good", "b_badjson", "c_nonpz_frames", "d_badnpz", "e_short"):
        write_clip(clip, tmp_path / name)
    (tmp_path / "b_badjson" / "clip.json").write_text("{not json")
    for p in (tmp_path / "c_nonpz_frames" / "frames").iterdir():
        p.unlink()
    (tmp_path / "d_badnpz" / "data.npz").write_bytes(b"garbage")
    side = json.loads((tmp_path / "e_short" / "clip.json").read_text())
    side["num_frames"] = 2
    (tmp_path / "e_short" / "clip.json").write_text(json.dumps(side))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        ds = SandboxDataset(tmp_path, frames=5)
        assert len(ds) == 3  # bad JSON and the short clip are dropped up front
        names = [ds[i]["name"] for i in range(len(ds))]
    assert names == ["a_good", "a_good", "a_good"]  # the two unreadable clips fall through to a good one
    reasons = " | ".join(s[1] for s in ds.skipped)
    for bad in ("b_badjson/clip.json", "c_nonpz_frames/frames", "d_badnpz/data.npz", "e_short/clip.json"):
        assert bad in reasons
    assert any("skipping malformed clip" in str(x.message) for x in w)
    with pytest.raises(ClipError, match="d_badnpz"):
        read_clip(tmp_path / "d_badnpz")


def test_user_clip_with_id_map_only(tmp_path):
    from PIL import Image

    d = tmp_path / "user" / "clip1"
    (d / "frames").mkdir(parents=True)
    for f in range(3):
        Image.fromarray(np.full((8, 8, 3), 40 * f, np.uint8)).save(d / "frames" / f"{f}.png")
    ids = np.zeros((3, 8, 8), np.int16)
    ids[:, 2:4, 2:4] = 1
    ids[:, 5:7, 5:7] = 2
    np.savez(d / "data.npz", id_map=ids)
    (d / "clip.json").write_text(json.dumps({"fps": 12, "caption": "two things", "driven": [1]}))
    c = read_clip(d)
    assert c.masks.shape == (2, 3, 8, 8) and c.masks[1, 0].sum() == 4 and c.fps == 12.0
    it = SandboxDataset(tmp_path / "user")[0]
    assert it["control"].abs().sum() == 0  # no velocities given: zero encoding
    assert it["driven_mask"].sum() == 3 * 4


def test_missing_root_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        SandboxDataset(tmp_path / "nowhere")


@pytest.mark.parametrize("frames,size,match", [
    (-1, None, r"'frames' must be a whole number >= 1 \(0 or none: all frames\); got -1"),
    (2.5, None, "'frames' must be a whole number"), ("9", None, "'frames' must be a whole number"),
    (None, [-5, 3], r"'size' must be \[H, W\], two whole numbers from 8 to 4096; got \[-5, 3\]"),
    (None, [32], "'size' must be"), (None, ["32", 32], "'size' must be"), (None, 32, "'size' must be")])
def test_frames_and_size_are_checked_by_name(push_clips, frames, size, match):
    with pytest.raises(ValueError, match=match):
        SandboxDataset(push_clips, frames=frames, size=size)


def test_frames_zero_means_all_and_whole_floats_pass(push_clips):
    assert SandboxDataset(push_clips, frames=0).frames is None
    ds = SandboxDataset(push_clips, frames=9.0, size=[16.0, 24])
    assert ds.frames == 9 and ds.size == (16, 24) and ds[0]["frames"].shape == (9, 16, 24, 3)
