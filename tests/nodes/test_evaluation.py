import json

import numpy as np
import pytest
import torch

from interplay.models import runtime
from interplay.nodes import evaluation as ne

S, F, H, W = 20, 6, 48, 80


def scene(vx=4, extra=0):
    """Textured square moving vx px/frame over a textured background (`extra` px further from frame 1):
    IMAGE [F,H,W,3], MASK [F,H,W]."""
    import cv2

    def tex(h, w, seed, s):
        t = cv2.GaussianBlur(np.random.default_rng(seed).random((h, w, 3)).astype(np.float32), (0, 0), s)
        return (t - t.min()) / (t.max() - t.min())

    bg, obj = 0.1 + 0.5 * tex(H, W, 0, 2.0), 0.45 + 0.55 * tex(S, S, 1, 1.5)
    vid = np.repeat(bg[None], F, 0)
    m = np.zeros((F, H, W), np.float32)
    for t in range(F):
        x = 10 + vx * t + (extra if t else 0)
        vid[t, 14:14 + S, x:x + S] = obj
        m[t, 14:14 + S, x:x + S] = 1
    return torch.from_numpy(vid), torch.from_numpy(m)


def test_identical_and_shifted_with_full_mask():
    ref, mask = scene()
    out = ne.InterplayEvaluateVideo().evaluate(ref, ref, mask, True, "none", "runs/eval")
    text, iou, direc, epe, mf, psnr, ssim = out["result"]
    assert (iou, epe, mf, psnr) == (pytest.approx(1.0), pytest.approx(0.0), pytest.approx(2.0), 100.0)
    assert direc == pytest.approx(0.0, abs=1e-6) and ssim == pytest.approx(1.0)
    rep = json.loads(text)
    assert rep["v"] == 1 and rep["iou"] == pytest.approx(1.0)
    saved = runtime.output_directory() / "runs" / "eval_00001_.json"
    assert json.loads(saved.read_text()) == rep
    assert "iou 1.000" in out["ui"]["text"][0]
    k = 4
    gen, _ = scene(extra=k)
    _, iou, _, epe, _, _, _ = ne.InterplayEvaluateVideo().evaluate(gen, ref, mask, True, "none", "")["result"]
    assert iou == pytest.approx((S - k) / (S + k)) and epe == pytest.approx(k)
    lk = ne.InterplayEvaluateVideo().evaluate(gen, ref, mask, True, "none", "", method="lk")
    assert json.loads(lk["result"][0])["options"]["method"] == "lk" and lk["result"][1] == pytest.approx(iou)


def test_one_frame_mask_is_tracked_through_reference():
    ref, mask = scene()
    gen, _ = scene(extra=4)
    full = ne.InterplayEvaluateVideo().evaluate(gen, ref, mask, True, "none", "")["result"]
    one = ne.InterplayEvaluateVideo().evaluate(gen, ref, mask[:1], True, "none", "")["result"]
    np.testing.assert_allclose(one[1:], full[1:], atol=1e-9)
    with_first = ne.InterplayEvaluateVideo().evaluate(gen, ref, mask, False, "none", "")["result"]
    assert with_first[1] == pytest.approx((1 + (F - 1) * (S - 4) / (S + 4)) / F)  # frame 0 counts as IoU 1


def test_named_errors():
    ref, mask = scene()
    node = ne.InterplayEvaluateVideo()
    with pytest.raises(ValueError, match="InterplayEvaluateVideo.*reference_mask"):
        node.evaluate(ref, ref, mask[:, :10], True, "none", "")
    with pytest.raises(ValueError, match="frame 0 is empty"):
        node.evaluate(ref, ref, torch.zeros_like(mask), True, "none", "")
    with pytest.raises(ValueError, match="'generated'"):
        node.evaluate(ref[0], ref, mask, True, "none", "")


def test_metadata():
    spec = ne.InterplayEvaluateVideo.INPUT_TYPES()
    assert all("tooltip" in v[1] for cat in spec.values() for v in cat.values())
    assert ne.NODE_DISPLAY_NAME_MAPPINGS["InterplayEvaluateVideo"] == "Evaluate Video (Interplay)"
