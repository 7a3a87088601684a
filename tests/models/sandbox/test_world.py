import math

import pytest

from interplay.models.sandbox.world import GRAVITY, Body, Pusher, World, contact, max_penetration, slide


def _momentum(bodies):
    return (sum(b.mass * b.vx for b in bodies), sum(b.mass * b.vy for b in bodies))


@pytest.mark.parametrize("shapes", [("cylinder", "cylinder"), ("box", "box"), ("box", "cylinder")])
def test_momentum_conserved_across_collision(shapes):
    # frictionless so only the contact changes velocities; off-centre hit for the disc cases
    a = Body(shapes[0], -0.5, 0.0, 0.15, 0.12, 0.2, mass=2.0, vx=1.2, vy=0.1, mu=0.0)
    b = Body(shapes[1], 0.2, 0.05, 0.18, 0.18, 0.2, mass=0.7, vx=-0.3, vy=0.0, mu=0.0)
    w = World([a, b], restitution=0.6)
    p0 = _momentum(w.bodies)
    tr = w.simulate(frames=9, fps=8)
    assert len(tr.events) >= 1, "the bodies must collide in this set-up"
    p1 = _momentum(w.bodies)
    assert math.hypot(p1[0] - p0[0], p1[1] - p0[1]) <= 0.01 * math.hypot(*p0)
    assert (a.vx, a.vy) != (1.2, 0.1)  # something happened


def test_head_on_restitution_matches_closed_form():
    e, m1, m2, u1, u2 = 0.5, 1.0, 3.0, 1.0, 0.0
    a = Body("cylinder", -0.5, 0.0, 0.1, 0.1, 0.2, m1, vx=u1, mu=0.0)
    b = Body("cylinder", 0.0, 0.0, 0.1, 0.1, 0.2, m2, vx=u2, mu=0.0)
    World([a, b], restitution=e).simulate(frames=9, fps=8)
    v1 = (m1 * u1 + m2 * u2 + m2 * e * (u2 - u1)) / (m1 + m2)  # 1-D impact formula
    v2 = (m1 * u1 + m2 * u2 + m1 * e * (u1 - u2)) / (m1 + m2)
    assert a.vx == pytest.approx(v1, abs=1e-9) and b.vx == pytest.approx(v2, abs=1e-9)
    assert a.vy == 0.0 and b.vy == 0.0


@pytest.mark.parametrize("v0,mu,angle", [(1.2, 0.1, 0.0), (0.8, 0.25, 2.0), (1.5, 0.06, -1.0)])
def test_friction_stops_at_closed_form_distance(v0, mu, angle):
    b = Body("box", 0.3, -0.2, 0.1, 0.1, 0.2, 1.0, vx=v0 * math.cos(angle), vy=v0 * math.sin(angle), mu=mu)
    w = World([b])
    t_stop = v0 / (mu * GRAVITY)
    tr = w.simulate(frames=int(t_stop * 8) + 3, fps=8)
    d = v0 * v0 / (2 * mu * GRAVITY)
    assert b.x == pytest.approx(0.3 + d * math.cos(angle), abs=1e-9)
    assert b.y == pytest.approx(-0.2 + d * math.sin(angle), abs=1e-9)
    assert (b.vx, b.vy) == (0.0, 0.0)
    # before rest the closed-form s(t) = v0 t - mu g t^2 / 2 holds too (frame 4 = 0.5 s, clamped to t_stop)
    t = min(tr.times[4], t_stop)
    s = v0 * t - 0.5 * mu * GRAVITY * t * t
    assert math.hypot(tr.pos[4][0][0] - 0.3, tr.pos[4][0][1] + 0.2) == pytest.approx(s, abs=1e-9)


def test_slide_is_step_size_independent():
    a = Body("cylinder", 0, 0, 0.1, 0.1, 0.1, 1.0, vx=1.0, mu=0.2)
    b = Body("cylinder", 0, 0, 0.1, 0.1, 0.1, 1.0, vx=1.0, mu=0.2)
    for _ in range(10):
        slide(a, 0.03)
    for _ in range(300):
        slide(b, 0.001)
    assert a.x == pytest.approx(b.x, abs=1e-12) and a.vx == pytest.approx(b.vx, abs=1e-12)


def test_contact_normals_and_depths():
    c = contact(Body("cylinder", 0, 0, 0.2, 0.2, 1, 1), Body("cylinder", 0.3, 0, 0.2, 0.2, 1, 1))
    assert c == pytest.approx((1.0, 0.0, 0.1))
    c = contact(Body("box", 0, 0, 0.2, 0.1, 1, 1), Body("box", 0.1, 0.15, 0.2, 0.1, 1, 1))
    assert c == pytest.approx((0.0, 1.0, 0.05))
    c = contact(Body("box", 0, 0, 0.2, 0.2, 1, 1), Body("cylinder", 0.3, 0.0, 0.15, 0.15, 1, 1))
    assert c == pytest.approx((1.0, 0.0, 0.05))
    c = contact(Body("cylinder", 0.3, 0.0, 0.15, 0.15, 1, 1), Body("box", 0, 0, 0.2, 0.2, 1, 1))
    assert c == pytest.approx((-1.0, 0.0, 0.05))
    assert contact(Body("box", 0, 0, 0.2, 0.2, 1, 1), Body("cylinder", 0.3, 0.3, 0.1, 0.1, 1, 1)) is None


def test_crowd_never_interpenetrates_after_resolution():
    bodies = [Body("box" if i % 2 else "cylinder", -0.6 + 0.3 * i, 0.05 * (i % 3), 0.1, 0.12, 0.2, 1.0 + i,
                   mu=0.05) for i in range(5)]
    bodies[0].vx = 2.0
    bodies[4].vx = -2.0
    w = World(bodies, restitution=0.3)
    worst = 0.0
    for _ in range(480):
        w.step(1 / 240)
        worst = max(worst, max_penetration(bodies))
    assert worst < 2e-3  # metres; about 0.06 px at 64x64 with the presets' camera
    assert len(w.events) >= 2


def test_pusher_pushes_object_along_its_path():
    box = Body("box", 0.0, 0.0, 0.1, 0.1, 0.2, 1.0, mu=0.1)
    p = Pusher([(0.0, -0.4, 0.0), (1.0, 0.4, 0.0)], radius=0.08)
    w = World([box], pusher=p)
    tr = w.simulate(frames=9, fps=8)
    assert tr.pos[-1][0][0] > 0.3 and abs(tr.pos[-1][0][1]) < 1e-9
    assert tr.pusher_pos[4] == pytest.approx((0.0, 0.0))
    assert tr.events and tr.events[0]["b"] == -1
    # the palm never sinks into the box by more than the solver's slop
    for f in range(9):
        px, _ = tr.pusher_pos[f]
        assert tr.pos[f][0][0] - 0.1 - (px + 0.08) > -1e-3


def test_bad_arguments_raise():
    with pytest.raises(ValueError):
        World([], rate=0)
    with pytest.raises(ValueError):
        World([]).simulate(frames=0, fps=8)
