import math

import numpy as np
import pytest

from interplay.models.sandbox import render as R


def test_look_at_projects_target_to_image_centre_and_axes_are_orthonormal():
    cam = R.look_at(96, 64, target=(0.3, -0.2), yaw=30, pitch=50, distance=3.0)
    uv, z = cam.project(np.array([0.3, -0.2, 0.0]))
    np.testing.assert_allclose(uv, [48.0, 32.0], atol=1e-9)
    assert z == pytest.approx(3.0)
    np.testing.assert_allclose(cam.R @ cam.R.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(cam.R) == pytest.approx(1.0)
    assert cam.C[2] == pytest.approx(3.0 * math.sin(math.radians(50)))
    # K from the vertical fov: half height over tan(fov/2)
    assert cam.K[1, 1] == pytest.approx(32 / math.tan(math.radians(20)))


def test_ground_axes_point_right_and_up_the_image():
    cam = R.look_at(64, 64, yaw=123, pitch=55)
    ax = cam.ground_axes()
    np.testing.assert_allclose(ax @ ax.T, np.eye(3), atol=1e-12)
    p = np.array([0.0, 0.0, 0.0])
    (u0, v0), _ = cam.project(p)
    (u1, v1), _ = cam.project(p + 0.1 * ax[0])
    (u2, v2), _ = cam.project(p + 0.1 * ax[1])
    assert u1 - u0 > 1 and abs(v1 - v0) < 1e-6  # +x: right, horizontal through the centre
    assert v2 - v0 < -1 and abs(u2 - u0) < 1e-6  # +y: up the image (away from the camera)


def test_fill_convex_counts_pixel_centres_and_shared_edges_do_not_overlap():
    r = R.fill_convex(np.array([[2.0, 3.0], [6.0, 3.0], [6.0, 8.0], [2.0, 8.0]]), 16, 16)
    y0, x0, m = r
    assert m.sum() == 4 * 5
    r2 = R.fill_convex(np.array([[6.0, 3.0], [10.0, 3.0], [10.0, 8.0], [6.0, 8.0]])[::-1], 16, 16)  # other winding
    a = np.zeros((16, 16), bool)
    b = np.zeros((16, 16), bool)
    a[y0:y0 + m.shape[0], x0:x0 + m.shape[1]] = m
    a2 = r2[2]
    b[r2[0]:r2[0] + a2.shape[0], r2[1]:r2[1] + a2.shape[1]] = a2
    assert b.sum() == 20 and not (a & b).any()
    assert R.fill_convex(np.array([[-5.0, -5.0], [-1.0, -5.0], [-1.0, -1.0]]), 16, 16) is None


def test_render_frame_ids_and_colours():
    cam = R.look_at(64, 64, yaw=0, pitch=60, distance=3.0)
    g = R.Ground("noise", (0.5, 0.5, 0.5), dict(cell=0.4, angle=0.0, waves=[], salt=0.0))
    grgb, X, Y = R.ground_image(cam, g)
    box = R.Prism(R.box_footprint(0.0, 0.0, 0.2, 0.2), 0.0, 0.3, (1.0, 0.0, 0.0), 1)
    disc = R.Prism(R.disc_footprint(0.0, 0.6, 0.15), 0.0, 0.2, (0.0, 0.0, 1.0), 2)
    rgb, ids = R.render_frame(cam, grgb, X, Y, [box, disc])
    assert rgb.dtype == np.uint8 and ids.dtype == np.int16
    on_box = ids == 1
    assert on_box.sum() > 50 and (ids == 2).sum() > 20
    assert (rgb[on_box][:, 1] == 0).all() and (rgb[on_box][:, 0] > 100).all()  # pure red, shaded
    assert set(np.unique(ids)) == {0, 1, 2}
    # the ground's NaN-free coordinates: the image centre looks at the target
    assert abs(X[32, 32]) < 0.1 and abs(Y[32, 32]) < 0.1
    # contact shadow: ground just around the box is darker than far away
    shadow = R.ground_image(cam, g)[0].copy()
    R.contact_shadows(shadow, X, Y, [box], cam)
    assert shadow.sum() < grgb.sum()


def test_image_velocity_matches_projection_difference():
    cam = R.look_at(64, 64, yaw=40, pitch=50)
    p, v, dt = np.array([0.1, 0.2, 0.1]), np.array([0.5, -0.3, 0.0]), 1e-3
    vi = R.image_velocity(cam, cam, p - v * dt, p + v * dt, 2 * dt)
    (u0, v0), _ = cam.project(p)
    (u1, v1), _ = cam.project(p + v * 0.01)
    np.testing.assert_allclose(vi * 0.01, [u1 - u0, -(v1 - v0)], rtol=1e-3)


def test_ground_texture_is_moderate():
    rng = np.random.default_rng(0)
    cam = R.look_at(64, 64, pitch=50)
    for _ in range(6):
        g = R.Ground.random(rng)
        rgb, _, _ = R.ground_image(cam, g)
        lum = rgb.mean(-1)
        assert 0.25 < lum.mean() < 0.75 and lum.std() < 0.08
