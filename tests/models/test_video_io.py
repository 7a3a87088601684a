from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from interplay.models import video_io as vio

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def moving_square(frames=12, h=48, w=64, size=12, step=3):
    """Textured background with a bright square moving right `step` px per frame: float32 [F,H,W,3]."""
    yy, xx = np.mgrid[0:h, 0:w]
    bg = np.stack([0.3 + 0.2 * np.sin(xx / 7.0), 0.3 + 0.2 * np.cos(yy / 5.0), 0.4 + 0 * xx], -1)
    out = np.repeat(bg[None], frames, 0).astype(np.float32)
    for t in range(frames):
        x0 = 4 + step * t
        out[t, 10:10 + size, x0:x0 + size] = (0.95, 0.8, 0.1)
    return torch.from_numpy(out)


def psnr(a, b):
    mse = float(((a - b) ** 2).mean())
    return 10 * np.log10(1.0 / mse)


def test_mp4_round_trip_frame_count_fps_and_quality(tmp_path):
    v = moving_square()
    p = vio.save_video(v, tmp_path / "sq.mp4", fps=12, crf=18)
    assert p.exists() and p.stat().st_size > 0
    back, fps = vio.load_video(p)
    assert back.shape == v.shape and back.dtype == torch.float32
    assert fps == pytest.approx(12.0)
    assert psnr(back, v) > 30


def test_mp4_fractional_fps(tmp_path):
    p = vio.save_video(moving_square(frames=5), tmp_path / "a.mp4", fps=7.5)
    _, fps = vio.load_video(p)
    assert fps == pytest.approx(7.5, abs=1e-6)


def test_mp4_odd_size_is_padded_by_one(tmp_path):
    v = moving_square(frames=4, h=33, w=47)
    back, _ = vio.load_video(vio.save_video(v, tmp_path / "odd.mp4", fps=8))
    assert back.shape == (4, 34, 48, 3)  # padded to even for yuv420p
    # The replicated row/column costs nothing: same quality as the even 34x48 clip (4:2:0 chroma of the saturated
    # square, not the codec, is what limits PSNR at this tiny size).
    even = moving_square(frames=4, h=34, w=48)
    back_even, _ = vio.load_video(vio.save_video(even, tmp_path / "even.mp4", fps=8))
    assert psnr(back[:, :33, :47], v) > 28
    assert abs(psnr(back[:, :33, :47], v) - psnr(back_even, even)) < 0.5


def test_webp_lossless_round_trip_is_exact(tmp_path):
    v = moving_square(frames=6, h=33, w=47)
    u8 = vio.to_uint8(v)
    back, fps = vio.load_video(vio.save_video(v, tmp_path / "sq.webp", fps=10))
    assert fps == pytest.approx(10.0)
    assert np.array_equal(vio.to_uint8(back), u8)


def test_load_window_start_every_nth_max_frames_and_size(tmp_path):
    v = moving_square(frames=10)
    p = vio.save_video(v, tmp_path / "sq.webp", fps=10)
    back, fps = vio.load_video(p, max_frames=3, start=1, every_nth=2)
    assert fps == pytest.approx(5.0)  # real speed kept: every 2nd frame at half the rate
    assert np.array_equal(vio.to_uint8(back), vio.to_uint8(v)[[1, 3, 5]])
    small, _ = vio.load_video(p, max_frames=2, size=(24, 32))
    assert small.shape == (2, 24, 32, 3)
    mp4 = vio.save_video(v, tmp_path / "sq.mp4", fps=10)
    back, fps = vio.load_video(mp4, start=2, every_nth=3)
    assert back.shape[0] == 3 and fps == pytest.approx(10 / 3)  # frames 2, 5, 8
    assert psnr(back, v[[2, 5, 8]]) > 30


def test_image_sequence_natural_order(tmp_path):
    v = vio.to_uint8(moving_square(frames=12))
    for i in range(12):  # unpadded numbers: lexical order would put 10, 11 before 2
        Image.fromarray(v[i]).save(tmp_path / f"f{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    assert [f.name for f in vio.list_image_sequence(tmp_path)][:4] == ["f0.png", "f1.png", "f2.png", "f3.png"]
    back, fps = vio.load_video(tmp_path)
    assert fps == vio.DEFAULT_SEQUENCE_FPS
    assert np.array_equal(vio.to_uint8(back), v)
    part, _ = vio.load_image_sequence(tmp_path, pattern="f1*.png")  # f1, f10, f11
    assert np.array_equal(vio.to_uint8(part), v[[1, 10, 11]])


def test_save_image_sequence_round_trip(tmp_path):
    v = moving_square(frames=3)
    files = vio.save_image_sequence(v, tmp_path / "seq")
    assert [f.name for f in files] == ["frame_00000.png", "frame_00001.png", "frame_00002.png"]
    back, _ = vio.load_image_sequence(tmp_path / "seq")
    assert np.array_equal(vio.to_uint8(back), vio.to_uint8(v))


def test_errors_name_the_bad_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        vio.load_video(tmp_path / "missing.mp4")
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"this is not a video")
    with pytest.raises(ValueError, match="broken.mp4"):
        vio.load_video(bad)
    seq = tmp_path / "seq"
    seq.mkdir()
    Image.new("RGB", (8, 8)).save(seq / "a1.png")
    Image.new("RGB", (9, 8)).save(seq / "a2.png")
    with pytest.raises(ValueError, match="a2.png"):
        vio.load_image_sequence(seq)
    assert vio.load_image_sequence(seq, size=(8, 8))[0].shape == (2, 8, 8, 3)
    with pytest.raises(FileNotFoundError, match="no images"):
        vio.load_image_sequence(seq, pattern="*.jpg")
    with pytest.raises(ValueError, match="format"):
        vio.save_video(moving_square(frames=1), tmp_path / "x.avi", fps=8)


def test_counter_path_continues_numbering(tmp_path):
    p1, name1, sub = vio.counter_path(tmp_path, "clips/run", "mp4")
    assert (name1, sub) == ("run_00001_.mp4", "clips") and p1 == tmp_path / "clips" / name1
    p1.write_bytes(b"x")
    (tmp_path / "clips" / "run_00007_.webp").write_bytes(b"x")
    _, name2, _ = vio.counter_path(tmp_path, "clips/run", "mp4")
    assert name2 == "run_00008_.mp4"
    with pytest.raises(ValueError, match="outside"):
        vio.counter_path(tmp_path, "../escape", "mp4")


def test_frames_mask_helpers():
    f = torch.zeros(2, 2, 2, 3)
    f[0, 0, 0] = torch.tensor([1.0, 0.0, 0.0])
    f[1, 1, 1] = 1.0
    lum = vio.frames_to_mask(f, "luminance", None)
    assert lum[0, 0, 0].item() == pytest.approx(0.299) and lum[1, 1, 1].item() == pytest.approx(1.0)
    assert vio.frames_to_mask(f, "luminance", 0.5).sum().item() == 1.0
    assert vio.frames_to_mask(f, "red", 0.5).sum().item() == 2.0
    m = torch.rand(3, 4, 5)
    im = vio.mask_to_frames(m)
    assert im.shape == (3, 4, 5, 3) and torch.equal(vio.frames_to_mask(im, "red", None), m)
    with pytest.raises(ValueError, match="channel"):
        vio.frames_to_mask(f, "alpha")


@pytest.mark.skipif(not (DATA / "interdyn-examples").is_dir(), reason="shared/data/interdyn-examples not present")
def test_real_webm_decodes():
    clips = sorted((DATA / "interdyn-examples").glob("*/video.webm"))
    if not clips:
        pytest.skip("no interdyn-examples/*/video.webm")
    v, fps = vio.load_video(clips[0], max_frames=5)
    assert v.shape[0] == 5 and v.shape[-1] == 3 and 0 < fps < 120
    assert 0.0 <= float(v.min()) and float(v.max()) <= 1.0 and float(v.std()) > 0.01
    m, _ = vio.load_video(clips[0].parent / "mask_hand.webm", max_frames=5)
    hand = vio.frames_to_mask(m, "luminance", 0.5)
    assert 0 < float(hand.mean()) < 0.9  # a hand, not an empty or full frame


def test_undecodable_video_is_named(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video" * 20)
    with pytest.raises(vio.VideoFileError, match=r"could not decode video .*bad.mp4: .*Re-export it"):
        vio.load_video(bad)
    (tmp_path / "fake.webp").write_bytes(b"RIFF....WEBPnothing")
    with pytest.raises(vio.VideoFileError, match="could not decode video .*fake.webp"):
        vio.load_video(tmp_path / "fake.webp")


def test_absolute_glob_pattern_is_named(tmp_path):
    (tmp_path / "seq").mkdir()
    vio.save_image_sequence(torch.zeros(2, 8, 8, 3), tmp_path / "seq")
    with pytest.raises(ValueError, match="pattern '/.*/seq/\\*.png' is an absolute path; it matches file names"):
        vio.list_image_sequence(tmp_path / "seq", str(tmp_path / "seq" / "*.png"))
    assert len(vio.list_image_sequence(tmp_path / "seq", "frame_*.png")) == 2
