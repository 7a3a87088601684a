"""Against PAM's own validation condition videos (github GasaiYU/PAM val_resources/comb_val, DexYCB; read from
../shared/data/pam-val, never copied into the repository).

What these files show, measured here: the seg and hand-keypoint videos (720x480, MPEG-4) hold the training
encodings with every channel value c stored as 2c mod 256 (e.g. the hand (92,0,255) as (184,0,254); the saving
step of the release doubled the [0,1] values), while the depth video (640x384) holds plain inferno colours. So
they are compared through that map. The clip's DexYCB geometry is not available, so palettes and drawing style
are compared, not pixel positions: the rendered set of label colours of a DexYCB-style frame with the clip's
objects equals the set in the clip, and nearly every pixel of the clip is one of the renderer's colours."""
from pathlib import Path

import numpy as np
import pytest
import torch

from interplay.models.conditions import hoi_datasets as D
from interplay.models.conditions import hoi_render as R
from interplay.models.video_io import load_video

from kit.hoi_data import dexycb_folder

VAL = Path(__file__).resolve().parents[4] / "shared" / "data" / "pam-val"
pytestmark = pytest.mark.skipif(not (VAL / "val_seg_mask.mp4").is_file(),
                                reason="../shared/data/pam-val (PAM's validation videos) not present")
CLIP_LABELS = (0, 3, 14, 18, 21, 255)  # background, 004_sugar_box, 025_mug, 040_large_marker, 061_foam_brick, hand


def _u8(name):
    frames, fps = load_video(VAL / f"{name}.mp4")
    assert fps == 15.0
    return frames.mul_(255).add_(0.5).to(torch.uint8).numpy()


def _stored(c):
    return (2 * np.asarray(c, np.int64)) % 256


def _nearest(px, pal):
    d = ((px[:, None, :].astype(np.int32) - pal[None].astype(np.int32)) ** 2).sum(-1)
    return d.argmin(1), np.sqrt(d.min(1))


def test_seg_palette_of_a_dexycb_frame_matches_the_validation_clip(tmp_path):
    seg = _u8("val_seg_mask")
    assert seg.shape == (49, 480, 720, 3)
    lut = R.seg_lut("dexycb").astype(np.int64)
    codes = np.array([0, 255] + list(range(1, 22)))
    px = seg.reshape(-1, 3)[::37]  # every 37th pixel (a prime stride: no alignment with rows)
    idx, err = _nearest(px, _stored(lut[codes]))
    assert (err <= 20).mean() > 0.99                      # measured 0.9937 (the rest: MPEG-4 ringing at edges)
    assert (_nearest(px, lut[codes])[1] <= 20).mean() < 0.95  # the unmapped palette explains far less (0.937)
    share = np.bincount(idx[err <= 10], minlength=len(codes)) / len(px)
    present = {int(codes[k]) for k in np.flatnonzero(share > 0.001)}
    assert present == set(CLIP_LABELS)
    # our DexYCB path on a frame with the clip's objects produces exactly that set of colours
    cam = dexycb_folder(tmp_path, frames=1, ids=(3, 14, 18, 21), missing=())
    ours = R.render_hoi_conditions(D.load_dexycb(cam), size=(480, 720))
    mine = {tuple(c) for c in np.unique((ours.seg[0].numpy() * 255).round().astype(np.int64).reshape(-1, 3), axis=0)}
    theirs = {tuple(int(v) for v in _stored(lut[k])) for k in present}
    assert {tuple(int(v) for v in _stored(c)) for c in mine} == theirs


def test_keypoint_colours_and_widths_match_the_validation_clip():
    kp = _u8("val_hand_keypoints")
    drawn = kp.max(-1) > 40
    limb = np.array([R.keypoint_colour(i) for i in range(20)])
    joint = np.array([R.keypoint_colour(i) for i in range(21)])
    px = kp[drawn]
    idx, err = _nearest(px, _stored(np.concatenate([limb, joint])))
    assert (err <= 30).mean() > 0.75                     # measured 0.80; thin strokes lose chroma in 4:2:0
    per_limb = np.bincount(idx[(err <= 20) & (idx < 20)], minlength=20)
    assert per_limb.min() > 1000                         # all 20 limb colours are drawn (3,000-10,000 px each)


def test_depth_video_is_foreground_only_inferno_bright_near():
    dep = _u8("val_depth")
    fg = dep.max(-1) > 40
    idx, err = _nearest(dep[fg][::20], R.INFERNO_U8.astype(np.int64))
    assert (err <= 20).mean() > 0.9                      # measured 0.93 (0.82 within 10)
    p5, p50 = np.percentile(idx, [5, 50])
    assert p5 > 60 and 150 < p50 < 220                   # measured 96 / 181: the foreground sits in the bright part
    assert 0.03 < fg.mean() < 0.2                        # masked to hand and objects
