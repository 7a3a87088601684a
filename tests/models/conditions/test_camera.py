import math

import pytest
import torch

from interplay.models.conditions.camera import (CameraState, Intrinsics, Motion, camera_from_poses,
                                                camera_from_timeline, plucker_rays, trajectory_preview,
                                                wan_fun_camera_embedding)
from interplay.models.conditions.keys import BlockGrid, parse_timeline

H, W = 6, 8  # small maps: every pixel is checked against the hand formula


def _tl(keys, frames, mouse=None):
    seg = {"keys": keys, "frames": frames}
    if mouse:
        seg["mouse"] = mouse
    return parse_timeline({"v": 1, "segments": [seg]})


def _cam_dir(x, y, fx=0.50505, fy=0.8979, cx=0.5, cy=0.5):
    """normalize(K^-1 [x+0.5, y+0.5, 1]) by hand, K from GameCraft's normalised intrinsics at W x H."""
    u = ((x + 0.5) - cx * W) / (fx * W)
    v = ((y + 0.5) - cy * H) / (fy * H)
    n = math.sqrt(u * u + v * v + 1.0)
    return u / n, v / n, 1.0 / n


def test_pure_translation_poses_and_plucker_match_hand_values():
    s, k = 0.05, 5
    cam = camera_from_timeline(_tl(["W"], k), Motion(move_speed=s))
    assert cam.num_frames == k + 1 and cam.start_frame == 0
    for f in range(k + 1):
        want = torch.eye(4, dtype=torch.float64)
        want[2, 3] = f * s  # straight along frame 0's +z (OpenCV forward)
        assert torch.allclose(cam.c2w[f], want, atol=1e-12, rtol=0)
        inv = torch.eye(4, dtype=torch.float64)
        inv[2, 3] = -f * s
        assert torch.allclose(cam.w2c[f], inv, atol=1e-12, rtol=0)
    p = cam.plucker(H, W)
    assert p.shape == (k + 1, 6, H, W) and p.dtype == torch.float32
    for f in (0, 3, k):
        t = f * s
        for y in range(H):
            for x in range(W):
                dx, dy, dz = _cam_dir(x, y)
                # o x d with o = (0, 0, t): (-t dy, t dx, 0)
                want = torch.tensor([-t * dy, t * dx, 0.0, dx, dy, dz])
                assert torch.allclose(p[f, :, y, x].double(), want.double(), atol=1e-6, rtol=0), (f, x, y)


def test_pure_yaw_poses_and_plucker_match_hand_values():
    tau, k = 2.5, 4  # RIGHT: + yaw, the view turns toward +x
    cam = camera_from_timeline(_tl(["RIGHT"], k), Motion(turn_speed=tau))
    p = cam.plucker(H, W, dtype=torch.float64)
    for f in range(k + 1):
        a = math.radians(f * tau)
        R = torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]],
                         dtype=torch.float64)
        assert torch.allclose(cam.c2w[f, :3, :3], R, atol=1e-12, rtol=0)
        assert torch.equal(cam.c2w[f, :3, 3], torch.zeros(3, dtype=torch.float64))
        assert cam.yaw[f] == pytest.approx(f * tau) and cam.pitch[f] == 0
        assert torch.equal(p[f, :3], torch.zeros(3, H, W, dtype=torch.float64))  # o = 0: no moment
        for y in range(H):
            for x in range(W):
                dx, dy, dz = _cam_dir(x, y)
                want = torch.tensor([math.cos(a) * dx + math.sin(a) * dz, dy, -math.sin(a) * dx + math.cos(a) * dz],
                                    dtype=torch.float64)
                assert torch.allclose(p[f, 3:, y, x], want, atol=1e-6, rtol=0)
    left = camera_from_timeline(_tl(["LEFT"], k), Motion(turn_speed=tau))
    assert left.yaw[-1] == pytest.approx(-k * tau)
    # float32 maps agree with the float64 ones to 1e-6 as well
    assert torch.allclose(cam.plucker(H, W).double(), p, atol=1e-6, rtol=0)


def test_key_combinations_sum_and_follow_the_heading():
    m = Motion(move_speed=0.1, turn_speed=1.0)
    wd = camera_from_timeline(_tl(["W", "D"], 1), m).positions[-1]
    assert torch.allclose(wd, torch.tensor([0.1, 0.0, 0.1], dtype=torch.float64))
    a = camera_from_timeline(_tl(["A"], 3), m).positions[-1]
    d = camera_from_timeline(_tl(["D"], 3), m).positions[-1]
    assert torch.allclose(a, -d) and d[0] == pytest.approx(0.3)
    s = camera_from_timeline(_tl(["S"], 2), m).positions[-1]
    assert s.tolist() == pytest.approx([0, 0, -0.2])
    # 90 degrees right, then W: moves along frame 0's +x
    cam = camera_from_timeline(parse_timeline({"v": 1, "segments": [{"keys": ["RIGHT"], "frames": 90},
                                                                     {"keys": ["W"], "frames": 2}]}), m)
    assert cam.positions[-1].tolist() == pytest.approx([0.2, 0.0, 0.0], abs=1e-12)
    # moving uses the heading at the start of each step: W+RIGHT's first step goes straight ahead
    wr = camera_from_timeline(_tl(["W", "RIGHT"], 2), Motion(move_speed=1.0, turn_speed=30.0))
    assert wr.positions[1].tolist() == pytest.approx([0, 0, 1])
    assert wr.positions[2].tolist() == pytest.approx([0.5, 0, 1 + math.sqrt(3) / 2])


def test_pitch_looks_up_is_clamped_and_w_follows_it():
    cam = camera_from_timeline(_tl(["UP"], 100), Motion(turn_speed=1.0))
    assert cam.pitch[30] == 30 and cam.pitch[-1] == 85  # clamped at 85 degrees
    fwd = cam.c2w[30, :3, 2]
    assert fwd.tolist() == pytest.approx([0, -0.5, math.sqrt(3) / 2])  # up is -y in OpenCV axes
    down = camera_from_timeline(_tl(["DOWN"], 10), Motion(turn_speed=1.0))
    assert down.pitch[-1] == -10


def test_mouse_spreads_its_delta_over_the_segment():
    cam = camera_from_timeline(_tl([], 20, [100, -40]), Motion(mouse_sensitivity=0.1))
    assert [float(v) for v in cam.yaw[:3]] == pytest.approx([0, 0.5, 1.0])
    assert float(cam.yaw[-1]) == pytest.approx(10.0) and float(cam.pitch[-1]) == pytest.approx(4.0)  # dy<0: up


def test_space_modes():
    tl = parse_timeline("W, SPACE, W")  # SPACE over block 1: frames 9..20
    jump = camera_from_timeline(tl, Motion(move_speed=0.0, space_mode="jump", jump_height=0.3))
    y = jump.positions[:, 1]
    for s in range(1, 13):
        assert float(y[8 + s]) == pytest.approx(-0.3 * math.sin(math.pi * s / 12), abs=1e-12)
    assert float(y[20]) == pytest.approx(0, abs=1e-12) and float(y[21:].abs().max()) == 0
    assert float(y[14]) == pytest.approx(-0.3)  # the top, mid-block
    none = camera_from_timeline(tl, Motion(space_mode="none"))
    assert float(none.positions[:, 1].abs().max()) == 0 and none.events == ()
    text = camera_from_timeline(tl, Motion(space_mode="text", space_text="jumps over the fence"))
    assert [(e.first, e.last, e.text) for e in text.events] == [(9, 20, "jumps over the fence")]
    assert torch.equal(text.c2w, none.c2w)


def test_continuation_equals_one_long_rollout():
    m = Motion(move_speed=0.07, turn_speed=3.0, mouse_sensitivity=0.2)
    whole = camera_from_timeline(parse_timeline("W+RIGHT*2, D+UP+MOUSE(30,10), W*2"), m)
    part1 = camera_from_timeline(parse_timeline("W+RIGHT*2"), m)
    assert part1.end_state.frame == 20 and part1.num_frames == 21
    part2 = camera_from_timeline(parse_timeline("D+UP+MOUSE(30,10), W*2", start_frame=20), m, start=part1.end_state,
                                 include_start=False)
    assert part2.start_frame == 21 and part2.num_frames == 36
    assert torch.equal(torch.cat([part1.c2w, part2.c2w]), whole.c2w)
    assert part2.end_state == whole.end_state
    assert part2.block_rows(2) == slice(0, 12) and whole.block_rows(2) == slice(21, 33)
    assert torch.equal(part2.plucker(8, 8, part2.block_rows(3)), whole.plucker(8, 8, whole.block_rows(3)))


def test_num_frames_cuts_or_holds_still():
    tl = _tl(["W"], 10)
    m = Motion(move_speed=0.1)
    short = camera_from_timeline(tl, m, num_frames=4)
    assert short.num_frames == 4 and short.end_state.frame == 3
    long = camera_from_timeline(tl, m, num_frames=15)
    assert long.num_frames == 15 and torch.equal(long.c2w[11:], long.c2w[10:11].expand(4, 4, 4))


def test_plucker_invariants_and_user_intrinsics():
    cam = camera_from_timeline(parse_timeline("W+RIGHT+UP*2, A+MOUSE(50,20)"), Motion(move_speed=0.3),
                               intrinsics=Intrinsics.from_pixels(10.0, 12.0, 4.0, 3.5, 16, 12))
    assert cam.intrinsics == Intrinsics(10 / 16, 1.0, 0.25, 3.5 / 12)
    p = cam.plucker(12, 16, dtype=torch.float64)
    d, m = p[:, 3:], p[:, :3]
    assert torch.allclose(d.norm(dim=1), torch.ones_like(d[:, 0]), atol=1e-12)
    assert float((m * d).sum(1).abs().max()) < 1e-12
    # the centre pixel's ray at frame 0 (identity) with these pixel intrinsics: ((4.5-4)/10, (3.5-3.5)/12, 1)
    n = math.sqrt(0.05 ** 2 + 1)
    assert p[0, 3:, 3, 4].tolist() == pytest.approx([0.05 / n, 0, 1 / n])
    assert torch.equal(plucker_rays(torch.eye(4), Intrinsics(), 4, 4)[:, :3], torch.zeros(1, 3, 4, 4))


def test_poses_from_user_matrices():
    # OpenGL: the camera looks down -z; a second camera one unit further along the view
    gl0 = torch.eye(4, dtype=torch.float64)
    gl0[:3, 3] = torch.tensor([5.0, 1.0, 2.0])
    gl1 = gl0.clone()
    gl1[2, 3] -= 1.0
    cam = camera_from_poses([gl0.tolist(), gl1.reshape(-1).tolist()], convention="opengl")
    assert torch.allclose(cam.c2w[0], torch.eye(4, dtype=torch.float64))
    assert cam.c2w[1, :3, 3].tolist() == pytest.approx([0, 0, 1])  # OpenCV forward
    assert cam.source == "poses" and cam.yaw[1] == 0
    absolute = camera_from_poses([gl0.tolist()], relative=False)
    assert torch.equal(absolute.c2w[0], gl0)
    with pytest.raises(ValueError, match="pose 1's rotation is not a rotation"):
        camera_from_poses([torch.eye(4).tolist(), (2 * torch.eye(4)).tolist()])
    with pytest.raises(ValueError, match=r"pose 1 has 3 numbers; expected a camera-to-world 4x4"):
        camera_from_poses([torch.eye(4).tolist(), [1, 2, 3]])
    with pytest.raises(ValueError, match=r"pose 0 is not a matrix of numbers"):
        camera_from_poses([["a"] * 16])
    with pytest.raises(ValueError, match=r"pose 0's last row"):
        camera_from_poses([[1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 1, 1]])


def test_wan_fun_camera_packing_by_index():
    # value = 10 * frame + channel, so every packed entry says where it came from
    f, h, w = 9, 2, 3
    p = (10 * torch.arange(f)[:, None] + torch.arange(6)[None, :]).float()[:, :, None, None].expand(f, 6, h, w)
    emb = wan_fun_camera_embedding(p)
    assert emb.shape == (1, 24, 3, h, w)
    for t in range(3):
        for c in range(6):
            for k in range(4):
                src = max(4 * t + k - 3, 0)  # frame 0 repeated 4 times fills latent frame 0
                assert float(emb[0, 4 * c + k, t, 1, 2]) == 10 * src + c
    with pytest.raises(ValueError, match="4n\\+1 frames"):
        wan_fun_camera_embedding(p[:8])


def test_preview_draws_the_path_in_frame_colours():
    cam = camera_from_timeline(parse_timeline("W*2, W+RIGHT*2"), Motion())
    img = trajectory_preview(cam, 256, 192)
    assert img.shape == (1, 192, 256, 3) and 0 <= float(img.min()) and float(img.max()) <= 1
    px = (img[0] * 255).round()
    blue = ((px[..., 2] > 180) & (px[..., 0] < 90)).sum()   # early frames
    red = ((px[..., 0] > 180) & (px[..., 1] < 90) & (px[..., 2] < 90)).sum()  # late frames
    assert blue > 20 and red > 20
    spin = trajectory_preview(camera_from_timeline(_tl(["LEFT"], 12), Motion()), 128, 96)  # no translation
    assert spin.shape == (1, 96, 128, 3)


def test_grid_and_state_travel_with_the_camera():
    g = BlockGrid(16, 13)
    cam = camera_from_timeline(parse_timeline("W*2", grid=g), Motion(), grid=g, fps=24)
    assert cam.num_frames == 29 and cam.grid is g and cam.fps == 24
    assert cam.block_rows(1) == slice(13, 29)
    d = cam.to_dict()
    assert d["grid"] == {"block_frames": 16, "first_block_frames": 13} and len(d["c2w"]) == 29
    assert d["end_state"]["frame"] == 28 and d["timeline"]["segments"][0]["frames"] == 28
    start = CameraState((1.0, 0.0, 0.0), 90.0, 0.0, 28)
    more = camera_from_timeline(_tl(["W"], 1), Motion(move_speed=1.0), start=start, include_start=False)
    assert more.positions[0].tolist() == pytest.approx([2, 0, 0])
