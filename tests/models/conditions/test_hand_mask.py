"""Driving-mask renderer: resampling, release crop rules, counterfactual edits, SAM2 tracking, validation."""
import pytest
import torch

from interplay.models.conditions import hand_mask as hm


def _square_masks(F=6, H=24, W=32, size=4):
    m = torch.zeros(F, H, W, dtype=torch.bool)
    for t in range(F):
        m[t, 4:4 + size, 2 + 3 * t:2 + 3 * t + size] = True  # a square moving right 3 px per frame
    return m


def test_frame_indices():
    assert hm.frame_indices(28, 14, src_fps=12, fps=6) == list(range(0, 28, 2))  # release: stride 2
    assert hm.frame_indices(10, 4, src_fps=12, fps=6, start=5) == [5, 7, 9, 9]  # short clip: hold last
    assert hm.frame_indices(20, 14) == [round(i * 19 / 13) for i in range(14)]
    assert hm.frame_indices(20, 14)[0] == 0 and hm.frame_indices(20, 14)[-1] == 19


def test_cover_and_center_crop_like_release():
    assert hm.cover_size(240, 427, 256, 384) == (256, 455)
    assert hm.crop_box(256, 455, 256, 384) == (0, 35)
    m = torch.zeros(2, 240, 427, dtype=torch.bool)
    m[:, 100:140, 0:20] = True  # driver at the left edge
    out = hm.fit_spatial(m, 256, 384, is_mask=True)
    assert out.shape == (2, 256, 384) and out.dtype == torch.bool
    aware = hm.fit_spatial(m, 256, 384, is_mask=True, crop="mask_aware")
    assert int(aware.sum()) > int(out.sum())  # centring on the mask keeps it in view
    empty = torch.zeros(2, 240, 427, dtype=torch.bool)
    assert hm.crop_box(256, 455, 256, 384, "mask_aware", empty) == (0, 35)  # falls back to centre


def test_condition_values_and_colours():
    m = _square_masks()
    c = hm.mask_to_condition(m)
    assert c.shape == (*m.shape, 3) and set(c.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(c[..., 0] > 0, m) and torch.equal(hm.condition_to_mask(c), m)
    two = torch.stack([m, torch.roll(m, 10, dims=1)])
    col = hm.mask_to_condition(two, colors=[(1, 0, 0), (0, 0, 1)])
    y, x = torch.nonzero(m[0])[0].tolist()
    assert col[0, y, x].tolist() == [1.0, -1.0, -1.0]
    assert col[0, 0, 0].tolist() == [-1.0, -1.0, -1.0]


def test_edits():
    m = _square_masks()
    assert not hm.edit_masks(m, "remove")[1:].any() and torch.equal(hm.edit_masks(m, "remove")[0], m[0])
    s = hm.edit_masks(m, "shift", dx=10, dy=0)
    assert torch.equal(s[0], m[0])  # frame 0 stays aligned with the image
    assert torch.equal(s[-1], torch.roll(m[-1], 10, dims=1))  # full offset at the last frame (no wrap here)
    assert torch.equal(s[1], torch.roll(m[1], 2, dims=1))  # ramp: round(10 * 1/5) = 2
    assert torch.equal(hm.edit_masks(m, "time_shift", frames=2)[3], m[1])
    assert torch.equal(hm.edit_masks(m, "time_shift", frames=2)[1], m[0])
    w = hm.edit_masks(m, "time_warp", speed=2.0)
    assert torch.equal(w[1], m[2]) and torch.equal(w[4], m[5]) and torch.equal(w[5], m[5])
    k = hm.edit_masks(m, "keep_frames", frames="0-1, 4")
    assert [bool(k[t].any()) for t in range(6)] == [True, True, False, False, True, False]
    f = hm.edit_masks(m, "freeze_after", frames=2)
    assert torch.equal(f[5], m[2]) and torch.equal(f[1], m[1])
    r = hm.edit_masks(m, "reverse")
    assert torch.equal(r[0], m[0]) and torch.equal(r[1], m[5])
    with pytest.raises(ValueError, match="edit op must be one of"):
        hm.edit_masks(m, "explode")
    assert hm.parse_frames("11-, 2", 14) == [2, 11, 12, 13]


def test_render_resamples_and_previews():
    m = _square_masks(F=28, H=240, W=427, size=40)
    vid = torch.rand(28, 240, 427, 3)
    out = hm.render_driving_mask(m, num_frames=14, height=256, width=384, src_fps=12, fps=6, frames=vid)
    assert out["indices"] == list(range(0, 28, 2))
    assert out["condition"].shape == (14, 256, 384, 3) and out["frames"].shape == (14, 256, 384, 3)
    assert out["preview"].shape == (14, 256, 384, 3)
    assert float(out["condition"].min()) == -1.0 and float(out["condition"].max()) == 1.0
    # the frames and masks got the same crop: a pixel inside the driver keeps the tint in the preview
    y, x = torch.nonzero(out["masks"][3])[0].tolist()
    assert out["preview"][3, y, x, 0] >= out["frames"][3, y, x, 0] * 0.5


def test_fit_condition_resamples_or_rejects():
    v = torch.ones(20, 32, 48, 1)
    out, notes = hm.fit_condition(v, 14, 64, 96, input_name="driving_mask")
    assert out.shape == (14, 64, 96, 3) and any("20 -> 14" in n for n in notes) and any("32x48" in n for n in notes)
    with pytest.raises(ValueError, match="'driving_mask' has 4 channels"):
        hm.fit_condition(torch.zeros(14, 64, 96, 4), 14, 64, 96, input_name="driving_mask")
    with pytest.raises(ValueError, match="'driving_mask' is 64x32 but the target is 64x96"):
        hm.fit_condition(torch.zeros(14, 64, 32, 3), 14, 64, 96, input_name="driving_mask")


def test_sam2_tiny_propagates_through_short_video():
    from interplay.models.segmentation import sam2 as s2
    torch.manual_seed(0)
    sam = s2.load_sam2("sam2.1_hiera_t", None, device="cpu", image_size=128)
    frames = torch.rand(4, 48, 64, 3, generator=torch.Generator().manual_seed(0))
    masks = hm.masks_from_video(sam, frames, {"0": {"box": [10, 10, 30, 30]}})
    assert masks.shape == (4, 48, 64) and masks.dtype == torch.bool
    out = hm.render_driving_mask(masks, num_frames=6, height=64, width=64, frames=frames)
    assert out["indices"] == [0, 1, 1, 2, 2, 3]  # 4 -> 6 frames, spread evenly
    assert torch.equal(out["condition"][..., 0] > 0, out["masks"])
    with pytest.raises(ValueError, match="give clicks or a box on frame 0"):
        hm.masks_from_video(sam, frames, {})
