"""PAM's condition encodings: seg palette, HO-3D keypoint drawing, inferno depth, point splatting with a depth test,
and the whole renderer on hand-made scenes (expected pixels worked out by hand in the comments)."""
import numpy as np
import pytest
import torch

from interplay.models.conditions import hoi
from interplay.models.conditions import hoi_render as R
from interplay.models.conditions.hoi_trajectory import canonical_hand

BLACK = (0, 0, 0)


# ------------------------------------------------------------------------------------------ palettes
def test_seg_palette_matches_the_spec():
    lut = R.seg_lut("dexycb")
    assert tuple(lut[255]) == (92, 0, 255)            # hand: ADE20K[149]
    assert tuple(lut[14]) == (8, 255, 51)             # 025_mug
    assert tuple(lut[0]) == BLACK
    assert tuple(lut[1]) == (180, 120, 120) and tuple(lut[21]) == (61, 230, 250)
    oak = R.seg_lut("oakink2")
    assert [tuple(oak[k]) for k in (0, 1, 2, 3, 4, 5)] == [BLACK, (61, 230, 250), (255, 6, 51), (11, 102, 255),
                                                           (255, 7, 71), (255, 9, 224)]
    assert tuple(oak[255]) == (61, 230, 250)          # both hands share label 1


def test_inferno_table_agrees_with_opencv_and_depthcrafter_truncation():
    cv2 = pytest.importorskip("cv2")
    lut = cv2.applyColorMap(np.arange(256, dtype=np.uint8).reshape(1, 256), cv2.COLORMAP_INFERNO)[0][:, ::-1]
    assert np.array_equal(np.rint(R.INFERNO * 255).astype(np.uint8), lut)  # OpenCV rounds matplotlib's table
    assert tuple(R.INFERNO_U8[255]) == (252, 254, 164)  # DepthCrafter floors: 0.998364 * 255 = 254.58 -> 254
    assert tuple(R.INFERNO_U8[0]) == (0, 0, 3)


def test_nearest_resize_640_to_720_adds_no_colour():
    rng = np.random.default_rng(0)
    labels = np.zeros((2, 480, 640), np.uint8)
    for k, lbl in enumerate((3, 14, 21, 255)):
        y, x = rng.integers(0, 400, 2)
        labels[:, y:y + 60, x:x + 90 + 7 * k] = lbl
    small = R.colour_labels(labels)
    big = R.resize_nearest(small, 480, 720)
    assert big.shape == (2, 480, 720, 3)
    pack = lambda c: c.astype(np.int64) @ np.array([65536, 256, 1])  # noqa: E731
    allowed = set(pack(R.seg_lut()[[0, 3, 14, 21, 255]]).tolist())
    assert set(np.unique(pack(big.reshape(-1, 3))).tolist()) <= allowed
    # torch's nearest rule: output column x reads input column floor(x * 640 / 720)
    assert np.array_equal(big[0, :, 719], small[0, :, 639]) and np.array_equal(big[0, :, 9], small[0, :, 8])


# ------------------------------------------------------------------------------------------ keypoints
def _canonical_joints():
    """Wrist (100,100); thumb 1 (140,100), 2 (180,100), 3 far away at (400,300), tip (220,100); index MCP (100,160)
    and its chain down; joints 9..20 all at (600,400) (zero-length limbs are skipped)."""
    j = np.zeros((21, 2))
    j[0], j[1], j[2], j[3], j[4] = (100, 100), (140, 100), (180, 100), (400, 300), (220, 100)
    j[5], j[6], j[7], j[8] = (100, 160), (100, 200), (100, 240), (100, 280)
    j[9:] = (600, 400)
    return j


def test_keypoint_drawing_reproduces_showhandjoints_pixels():
    c = R.draw_hand_keypoints(np.zeros((480, 640, 3), np.uint8), _canonical_joints())
    px = lambda x, y: tuple(int(v) for v in c[y, x])  # noqa: E731
    # limb 0 (0->1): ellipse centre (120,100), semi-axes (20, 6) for the thumb, colour BASE[0] = (139,53,255)
    assert px(120, 100) == (139, 53, 255)
    assert px(120, 106) == (139, 53, 255) and px(120, 94) == (139, 53, 255)
    assert px(120, 107) == BLACK and px(120, 93) == BLACK
    # limb 4 (0->5), vertical: centre (100,130), semi-axes (30, 3), colour BASE[1] = (0,56,255)
    assert px(103, 130) == (0, 56, 255) and px(97, 130) == (0, 56, 255)
    assert px(104, 130) == BLACK and px(96, 130) == BLACK
    # limb 1 (1->2): colour BASE[0] + 35 = (174, 88, 290 -> 255)
    assert px(160, 100) == (174, 88, 255)
    # joint 3 stays visible (its limbs are >= 150 px long, so not drawn): BASE[0] + 105 saturated
    assert px(400, 300) == (244, 158, 255)
    assert px(403, 300) == (244, 158, 255) and px(402, 302) == (244, 158, 255)  # cv2 radius-3 disc
    assert px(404, 300) == BLACK and px(403, 302) == BLACK
    assert px(290, 200) == BLACK                               # limb 2 (297 px) is not drawn
    # joints 9..20 share (600,400): joint 20 is drawn last, BASE[5] = (70,17,145); limbs there have length 0
    assert px(600, 400) == (70, 17, 145)


def test_limb_length_bounds_and_missing_hand():
    j = _canonical_joints()
    j[2] = (300, 100)   # limbs 1..3 now all >= 150 px: not drawn
    j[1] = (105, 100)   # limb 0 of length 5: not drawn (5 < L < 150 is strict)
    c5 = R.draw_hand_keypoints(np.zeros((480, 640, 3), np.uint8), j)
    j[1] = (106, 100)   # length 6: ellipse centre (103,100), semi-axes (3, 6)
    c6 = R.draw_hand_keypoints(np.zeros((480, 640, 3), np.uint8), j)
    assert tuple(c6[95, 103]) == (139, 53, 255)  # 5 px above the axis: inside; no joint disc reaches it
    assert tuple(c5[95, 103]) == BLACK
    missing = np.full((21, 2), -1.0)
    assert not R.draw_hand_keypoints(np.zeros((48, 64, 3), np.uint8), missing).any()


def test_reverse_order_puts_the_thumb_on_top():
    j = _canonical_joints()
    j[5], j[6] = (120, 80), (120, 120)  # limb 5 (5->6) crosses limb 0 at (120,100)
    normal = R.draw_hand_keypoints(np.zeros((480, 640, 3), np.uint8), j)
    z = np.ones(21)
    z[0], z[20] = 0.5, 0.6  # wrist nearer than the little fingertip: limbs drawn 19..0
    rev = R.draw_hand_keypoints(np.zeros((480, 640, 3), np.uint8), j, joints_z=z)
    assert tuple(normal[100, 120]) == (35, 91, 255)   # limb 5 = BASE[1] + 35, drawn after the thumb
    assert tuple(rev[100, 120]) == (139, 53, 255)     # the thumb, drawn last


def test_oakink2_variant_widths_palette_and_wrap():
    c = R.draw_hand_keypoints(np.zeros((480, 640, 3), np.uint8), _canonical_joints(), style="oakink2",
                              side="right")
    assert tuple(c[100, 120]) == (255, 0, 0)                 # right-hand BASE[0]
    assert tuple(c[104, 120]) == (255, 0, 0) and tuple(c[105, 120]) == BLACK  # thumb semi-axis 4
    assert tuple(c[130, 102]) == (255, 85, 85) and tuple(c[130, 103]) == BLACK  # others 2
    assert tuple(c[100, 160]) == (34, 35, 35)                # 255 + 35 = 290 wraps to 34 (float canvas cast)
    left = R.draw_hand_keypoints(np.zeros((480, 640, 3), np.uint8), _canonical_joints(), style="oakink2",
                                 side="left")
    assert tuple(left[100, 120]) == (139, 53, 255)


# ------------------------------------------------------------------------------------------ depth
def test_depth_normalisation_of_a_hand_made_video():
    # three depths: 0.5 m (nearest), 0.8 m, and the background plane at 2 m; inverse depths 2, 1.25, 0.5
    d = np.zeros((2, 4, 4))
    d[0, 0, 0], d[1, 3, 3] = 0.5, 0.8
    fg = d > 0
    img = (R.colorize_depth(d, fg, range_mode="background_plane", far=2.0).numpy() * 255).round().astype(int)
    assert tuple(img[0, 0, 0]) == (252, 254, 164)                 # v = 1 -> inferno index 255
    assert tuple(img[1, 3, 3]) == tuple(R.INFERNO_U8[127])        # v = (1.25 - 0.5) / 1.5 = 0.5 -> 127
    assert img[~fg].max() == 0                                     # background exactly black
    both = (R.colorize_depth(d, fg, range_mode="foreground").numpy() * 255).round().astype(int)
    assert tuple(both[1, 3, 3]) == tuple(R.INFERNO_U8[0])         # the farthest foreground pixel -> index 0
    fixed = (R.colorize_depth(d, fg, range_mode="fixed", near=0.5, far=2.0).numpy() * 255).round().astype(int)
    assert np.array_equal(fixed, img)
    auto = (R.colorize_depth(d, fg).numpy() * 255).round().astype(int)  # the farthest point at 0.35: 89.25
    assert tuple(auto[1, 3, 3]) == tuple(R.INFERNO_U8[89]) and tuple(auto[0, 0, 0]) == (252, 254, 164)


def test_depth_of_an_estimator_uses_the_whole_frame_and_is_monotonic():
    disp = np.linspace(0, 1, 64).reshape(1, 8, 8)  # bright = near
    mask = np.zeros((1, 8, 8), bool)
    mask[0, 4:] = True
    img = R.colorize_depth(disp, mask, kind="disparity", range_mode="frame").numpy()
    assert img[0, :4].max() == 0
    lum = img[0, 4:].reshape(-1, 3) @ np.array([0.299, 0.587, 0.114])
    assert (np.diff(lum) >= 0).all()                               # monotonic in 1 / z
    assert tuple((img[0, 7, 7] * 255).round().astype(int)) == (252, 254, 164)  # max over the frame
    with pytest.raises(ValueError, match="metric"):
        R.colorize_depth(disp, mask, kind="disparity", range_mode="background_plane")


# ------------------------------------------------------------------------------------------ splatting
def test_splat_projection_occlusion_and_cleanup():
    cam = hoi.HOICamera(np.array([[100.0, 0, 32], [0, 100.0, 24], [0, 0, 1]]), np.eye(4), 64, 48).fit(1)
    uv, z = cam.project(np.array([[0.0, 0.0, 2.0]]), 0)
    assert tuple(uv[0]) == (32.0, 24.0) and z[0] == 2.0            # the optical axis lands on (cx, cy)
    # a near object (label 5) and a far hand (255) over the same pixels: the near one wins everywhere
    grid = np.stack(np.meshgrid(np.linspace(-0.1, 0.1, 21), np.linspace(-0.1, 0.1, 21)), -1).reshape(-1, 2)
    near = np.c_[grid, np.full(len(grid), 1.0)]
    far = np.c_[grid * 3, np.full(len(grid), 2.0)]  # projects 1.5 x wider than the near one
    pts = np.concatenate([far, near])
    uv, z = cam.project(pts, 0)
    lab = np.r_[np.full(len(far), 255), np.full(len(near), 5)].astype(np.uint8)
    zbuf, labels = R.splat(uv, z, lab, 48, 64, radius=2)
    assert labels[24, 32] == 5 and zbuf[24, 32] == 1.0
    assert set(np.unique(labels)) == {0, 5, 255}                  # the far one shows only around the near one
    assert (labels[zbuf == 1.0] == 5).all()
    assert len(R.disc_offsets(2)) == 13 and len(R.disc_offsets(3)) == 29  # cv2.circle's filled discs
    blob = np.zeros((48, 64), np.uint8)
    blob[2:10, 2:7] = 7                                           # 40 px: dropped
    blob[20:30, 20:26] = 9                                        # 60 px: kept
    blob[25, 22] = 0                                              # a hole the 3x3 close fills
    out = R.postprocess_labels(blob, min_area=50)
    assert (out == 7).sum() == 0 and (out == 9).sum() == 60


def _flat_hand(offset):
    """An open hand facing the camera (the canonical hand turned 180 degrees about x), moved by offset."""
    return hoi.HandTrack(joints=(canonical_hand(0.0) @ np.diag([1, -1, -1]) + offset)[None])


def test_render_a_hand_in_front_of_a_box():
    K = np.array([[500.0, 0, 79.5], [0, 500.0, 59.5], [0, 0, 1]])
    box = hoi.box_mesh([0.1, 0.1, 0.1])
    pose = np.eye(4)
    pose[:3, 3] = [0.0, 0.0, 1.05]                                # front face at z = 1.0 m
    seq = hoi.HOISequence(15, hoi.HOICamera(K, np.eye(4), 160, 120), [_flat_hand([-0.19, 0.0, 0.7])],
                          [hoi.ObjectTrack(14, pose, *box)])
    c = R.render_hoi_conditions(seq, size=(120, 180), points=6000, depth_range="background_plane", far=2.0,
                                min_area=10)
    assert c.depth.shape == c.seg.shape == c.hand.shape == (1, 120, 180, 3) and c.depth.dtype == torch.float32
    seg = (c.seg[0].numpy() * 255).round().astype(int)
    colours = {tuple(v) for v in seg.reshape(-1, 3)}
    assert colours == {BLACK, (8, 255, 51), (92, 0, 255)}
    lab = c.labels[0].numpy()
    assert (lab == 14).sum() > 300 and (lab == 255).sum() > 300
    dep = (c.depth[0].numpy() * 255).round().astype(int)
    assert dep[lab == 0].max() == 0                               # background black
    # the box's front face (z = 1.0, away from its rim) through the 2 m background plane: (1 - 0.5) / (s_max - 0.5)
    ys, xs = np.nonzero(lab == 14)
    cy, cx = int(np.median(ys)), int(np.median(xs))
    s_max = 1 / c.depth_raw[0][c.labels[0] == 255].min().item()
    want = R.INFERNO_U8[int(np.floor((1.0 - 0.5) / (s_max - 0.5) * 255))]
    assert tuple(dep[cy, cx]) == tuple(want)
    assert c.hand[0].amax() > 0 and c.mask.shape == (1, 120, 180)
    again = R.render_hoi_conditions(seq, size=(120, 180), points=6000, depth_range="background_plane", far=2.0,
                                    min_area=10)
    assert torch.equal(again.seg, c.seg) and torch.equal(again.depth, c.depth)  # seeded samples


def test_render_rejects_labels_without_a_colour():
    seq = hoi.HOISequence(15, hoi.HOICamera(np.eye(3), np.eye(4), 16, 16), [],
                          [hoi.ObjectTrack(200, np.eye(4), *hoi.box_mesh([1, 1, 1]))], num_frames=1)
    with pytest.raises(ValueError, match="palette"):
        R.render_hoi_conditions(seq, size=(16, 16))
