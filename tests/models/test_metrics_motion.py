"""Global (camera) motion by phase correlation: integer and sub-pixel shifts of a textured image recovered with
the documented sign, channels summed, and the cosine of two motion tracks by hand."""
import numpy as np
import pytest

from interplay.models import metrics as M


def _texture(h=48, w=64, c=3, seed=0):
    rng = np.random.default_rng(seed)
    img = rng.random((c, h, w))
    # smooth a little: phase correlation on white noise is trivially sharp
    return (img + np.roll(img, 1, 1) + np.roll(img, 1, 2) + np.roll(img, (1, 1), (1, 2))) / 4


@pytest.mark.parametrize("dx,dy", [(3, 0), (-5, 2), (0, -7), (11, 4)])
def test_integer_shifts_come_back_with_their_sign(dx, dy):
    a = _texture()
    b = np.roll(a, (dy, dx), axis=(1, 2))  # b(x, y) = a(x - dx, y - dy)
    np.testing.assert_allclose(M.phase_shift(a, b, window=False), [dx, dy], atol=1e-6)
    np.testing.assert_allclose(M.phase_shift(a, b), [dx, dy], atol=0.25)  # the window blurs the peak a little
    np.testing.assert_allclose(M.phase_shift(a[0], b[0], window=False), [dx, dy], atol=1e-6)  # one channel


def test_half_pixel_shift_is_sub_pixel():
    a = _texture(seed=1)
    b = 0.5 * (np.roll(a, 2, axis=2) + np.roll(a, 3, axis=2))  # between 2 and 3 px to the right
    dx, dy = M.phase_shift(a, b, window=False)
    assert 2.2 < dx < 2.8 and abs(dy) < 0.2


def test_global_motion_of_a_panning_video_and_channel_layouts():
    a = _texture(c=3, seed=2)
    video = np.stack([np.roll(a, 2 * f, axis=2) for f in range(4)])  # [F,C,H,W], 2 px right per frame
    want = [[2, 0], [4, 0], [6, 0]]
    np.testing.assert_allclose(M.global_motion(video), want, atol=0.25)
    np.testing.assert_allclose(M.global_motion(video.transpose(0, 2, 3, 1)), want, atol=0.25)  # [F,H,W,3]
    with pytest.raises(ValueError, match="F >= 2"):
        M.global_motion(video[:1])


def test_motion_cosine_by_hand():
    g = np.array([[1.0, 0.0], [2.0, 0.0]])
    assert M.motion_cosine(g, g * 3) == pytest.approx(1.0)
    assert M.motion_cosine(g, -g) == pytest.approx(-1.0)
    assert M.motion_cosine(g, np.array([[0.0, 1.0], [0.0, 2.0]])) == pytest.approx(0.0)
    assert M.motion_cosine(g, np.array([[1.0, 1.0], [2.0, 2.0]])) == pytest.approx(1 / np.sqrt(2))
    assert M.motion_cosine(g, np.zeros_like(g)) == 0.0
