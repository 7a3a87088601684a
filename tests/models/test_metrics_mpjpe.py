"""MPJPE after root (wrist) alignment, PAM's hand-pose metric: invariant to a global translation, hand-computed
errors, validity and NaN handling, 2-D and 3-D."""
import numpy as np
import pytest

from interplay.models import metrics as M


def test_root_alignment_removes_a_global_translation():
    g = np.random.default_rng(0).normal(size=(6, 21, 3))
    assert M.mpjpe(g + [0.3, -0.2, 1.0], g) == pytest.approx(0.0, abs=1e-12)
    assert M.mpjpe(g + [0.3, 0, 0], g, root=None) == pytest.approx(0.3)


def test_hand_computed_errors():
    g = np.zeros((2, 21, 3))
    p = g.copy()
    p[0, 5] = [0.021, 0, 0]          # one joint off by 21 mm in frame 0: mean over 21 joints = 1 mm
    p[1, 1:] = [0, 0.003, 0.004]     # frame 1: 20 joints off by 5 mm (the wrist is the root): 100 / 21 mm
    per = M.mpjpe_per_frame(p, g)
    np.testing.assert_allclose(per, [0.001, 0.1 / 21], rtol=1e-12)
    assert M.mpjpe(p, g, valid=[True, False]) == pytest.approx(0.001)
    p2 = np.zeros((3, 21, 2))
    p2[:, 20] = [3.0, 4.0]           # 2-D pixels: 5 px on one joint -> 5 / 21 px
    np.testing.assert_allclose(M.mpjpe_per_frame(p2, np.zeros((3, 21, 2))), 5 / 21)


def test_nan_frames_and_shape_errors():
    g = np.zeros((3, 21, 3))
    p = g.copy()
    p[1, 3] = np.nan                 # the estimator failed on frame 1: not scored
    assert np.isnan(M.mpjpe_per_frame(p, g)[1]) and M.mpjpe(p, g) == 0.0
    assert np.isnan(M.mpjpe(p, g, valid=[False, True, False]))
    with pytest.raises(ValueError, match="must both be"):
        M.mpjpe(np.zeros((3, 21, 3)), np.zeros((4, 21, 3)))
