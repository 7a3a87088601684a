"""A deterministic 2.5-D rigid-body world on a ground plane.

Physics is 2-D in the ground plane (x, y in metres, world z up); heights only matter for rendering.
Shapes: boxes are world-axis-aligned rectangles (they translate, never rotate: infinite moment of inertia, a
deliberate simplification that keeps every contact exact), cylinders are discs. The hand-like pusher is a
kinematic disc (infinite mass) that follows a scripted piecewise-linear path.

Per step (fixed internal rate, default 240 Hz):
1. sliding friction, integrated exactly: constant deceleration mu*g against the velocity until rest, so a body
   with speed v stops after v / (mu g) s having travelled v^2 / (2 mu g) m whatever the step size;
2. the pusher moves to its scripted position;
3. contacts: impulses along the contact normal with restitution e (momentum-conserving between bodies), then
   positional correction split by inverse mass (the centre of mass does not move), a few Gauss-Seidel passes.

Bodies are plain Python floats on purpose: with 2-8 bodies per scene, scalar code is faster than numpy.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

GRAVITY = 9.81  # m/s^2
REST_SPEED = 0.05  # m/s: slower normal approach is resolved without bounce (no jitter on resting contact)


@dataclass
class Body:
    """One rigid body. Boxes: half extents (hx, hy) along world x/y. Cylinders: radius = hx = hy."""

    shape: str  # "box" | "cylinder"
    x: float
    y: float
    hx: float
    hy: float
    height: float
    mass: float
    vx: float = 0.0
    vy: float = 0.0
    mu: float = 0.1  # sliding friction coefficient against the ground

    @property
    def inv_mass(self) -> float:
        return 0.0 if math.isinf(self.mass) else 1.0 / self.mass

    @property
    def radius(self) -> float:
        return self.hx


@dataclass
class Pusher:
    """Kinematic disc along a piecewise-linear path: ``waypoints`` [(t, x, y), ...] sorted by t (seconds).
    Before the first / after the last waypoint it holds still. ``heading`` (radians) is the arm's direction
    from the palm (rendering only)."""

    waypoints: list
    radius: float = 0.07
    height: float = 0.07
    heading: float = 0.0

    def position(self, t: float) -> tuple[float, float]:
        w = self.waypoints
        if t <= w[0][0]:
            return w[0][1], w[0][2]
        for (t0, x0, y0), (t1, x1, y1) in zip(w, w[1:]):
            if t <= t1:
                a = 0.0 if t1 <= t0 else (t - t0) / (t1 - t0)
                return x0 + a * (x1 - x0), y0 + a * (y1 - y0)
        return w[-1][1], w[-1][2]

    def velocity(self, t: float) -> tuple[float, float]:
        w = self.waypoints
        for (t0, x0, y0), (t1, x1, y1) in zip(w, w[1:]):
            if t0 <= t < t1:
                return (x1 - x0) / (t1 - t0), (y1 - y0) / (t1 - t0)
        return 0.0, 0.0

    def as_body(self, t: float) -> Body:
        x, y = self.position(t)
        vx, vy = self.velocity(t)
        return Body("cylinder", x, y, self.radius, self.radius, self.height, math.inf, vx, vy, 0.0)


# ------------------------------------------------------------------------------------------ contacts
def contact(a: Body, b: Body) -> tuple[float, float, float] | None:
    """(nx, ny, depth) with the unit normal pointing from a to b, or None when apart."""
    if a.shape == "cylinder" and b.shape == "cylinder":
        dx, dy = b.x - a.x, b.y - a.y
        d2 = dx * dx + dy * dy
        r = a.hx + b.hx
        if d2 >= r * r:
            return None
        d = math.sqrt(d2)
        if d < 1e-12:
            return 1.0, 0.0, r
        return dx / d, dy / d, r - d
    if a.shape == "box" and b.shape == "box":
        dx, dy = b.x - a.x, b.y - a.y
        ox = a.hx + b.hx - abs(dx)
        oy = a.hy + b.hy - abs(dy)
        if ox <= 0 or oy <= 0:
            return None
        if ox < oy:
            return (1.0 if dx >= 0 else -1.0), 0.0, ox
        return 0.0, (1.0 if dy >= 0 else -1.0), oy
    if a.shape == "box":  # box a, disc b
        return _box_disc(a, b)
    c = _box_disc(b, a)  # disc a, box b: flip the normal
    return None if c is None else (-c[0], -c[1], c[2])


def _box_disc(box: Body, disc: Body) -> tuple[float, float, float] | None:
    dx, dy = disc.x - box.x, disc.y - box.y
    qx = min(max(dx, -box.hx), box.hx)
    qy = min(max(dy, -box.hy), box.hy)
    ex, ey = dx - qx, dy - qy
    d2 = ex * ex + ey * ey
    r = disc.hx
    if d2 > 0:
        if d2 >= r * r:
            return None
        d = math.sqrt(d2)
        return ex / d, ey / d, r - d
    # disc centre inside the box: push out through the nearest face
    fx, fy = box.hx - abs(dx), box.hy - abs(dy)
    if fx < fy:
        return (1.0 if dx >= 0 else -1.0), 0.0, fx + r
    return 0.0, (1.0 if dy >= 0 else -1.0), fy + r


def slide(b: Body, dt: float, g: float = GRAVITY) -> None:
    """Advance one body by dt under constant friction deceleration mu*g (exact, stops at rest)."""
    v = math.hypot(b.vx, b.vy)
    if v == 0.0:
        return
    a = b.mu * g
    ux, uy = b.vx / v, b.vy / v
    if a * dt >= v:  # comes to rest inside this step
        s = v * v / (2 * a)
        b.x += ux * s
        b.y += uy * s
        b.vx = b.vy = 0.0
        return
    s = v * dt - 0.5 * a * dt * dt
    b.x += ux * s
    b.y += uy * s
    v2 = v - a * dt
    b.vx, b.vy = ux * v2, uy * v2


@dataclass
class Trajectory:
    """Sampled state at the output frames. pos/vel: [F][N] lists of (x, y); pusher: [F] (x, y) or None."""

    times: list
    pos: list
    vel: list
    pusher_pos: list
    pusher_vel: list
    events: list = field(default_factory=list)  # dicts: t, a, b (-1 = pusher), impulse (N s), normal


class World:
    """The simulation. ``bodies`` are mutated in place by ``step``."""

    def __init__(self, bodies: list[Body], restitution: float = 0.5, pusher: Pusher | None = None,
                 rate: float = 240.0, iterations: int = 4, slop: float = 1e-4, gravity: float = GRAVITY):
        if rate <= 0:
            raise ValueError(f"simulation rate must be positive (Hz); got {rate}")
        self.bodies = bodies
        self.e = float(restitution)
        self.pusher = pusher
        self.rate = float(rate)
        self.iterations = int(iterations)
        self.slop = float(slop)
        self.g = float(gravity)
        self.t = 0.0
        self.events: list[dict] = []
        self._touching: set = set()

    def momentum(self) -> tuple[float, float]:
        return (sum(b.mass * b.vx for b in self.bodies), sum(b.mass * b.vy for b in self.bodies))

    def step(self, dt: float) -> None:
        for b in self.bodies:
            slide(b, dt, self.g)
        self.t += dt
        everyone = list(self.bodies)
        if self.pusher is not None:
            everyone.append(self.pusher.as_body(self.t))
        n_obj = len(self.bodies)
        touching: set = set()
        impulses: dict = {}
        n = len(everyone)
        for _ in range(self.iterations):
            any_contact = False
            for i in range(n):
                a = everyone[i]
                for j in range(i + 1, n):
                    b = everyone[j]
                    c = contact(a, b)
                    if c is None:
                        continue
                    any_contact = True
                    nx, ny, depth = c
                    ia, ib = a.inv_mass, b.inv_mass
                    if ia + ib == 0:
                        continue
                    key = (i, j if j < n_obj else -1)
                    touching.add(key)
                    vn = (b.vx - a.vx) * nx + (b.vy - a.vy) * ny
                    if vn < 0:
                        e = self.e if -vn > REST_SPEED else 0.0
                        jimp = -(1 + e) * vn / (ia + ib)
                        a.vx -= jimp * nx * ia
                        a.vy -= jimp * ny * ia
                        b.vx += jimp * nx * ib
                        b.vy += jimp * ny * ib
                        impulses[key] = impulses.get(key, 0.0) + jimp
                        impulses[key, "n"] = (nx, ny)
                    corr = max(depth - self.slop, 0.0) / (ia + ib)
                    if corr > 0:
                        a.x -= corr * nx * ia
                        a.y -= corr * ny * ia
                        b.x += corr * nx * ib
                        b.y += corr * ny * ib
            if not any_contact:
                break
        for key in touching - self._touching:  # new contacts only: one event per collision
            if impulses.get(key, 0.0) > 0:
                self.events.append(dict(t=round(self.t, 6), a=key[0], b=key[1], impulse=impulses[key],
                                        normal=list(impulses[key, "n"])))
        self._touching = touching

    def simulate(self, frames: int, fps: float) -> Trajectory:
        """Run from t=0 and sample at k/fps, k = 0..frames-1. The internal step divides the frame interval
        exactly (ceil(rate/fps) sub-steps), so samples land on simulation steps."""
        if frames < 1 or fps <= 0:
            raise ValueError(f"need frames >= 1 and fps > 0; got frames={frames}, fps={fps}")
        sub = max(1, math.ceil(self.rate / fps))
        dt = 1.0 / (fps * sub)
        tr = Trajectory([], [], [], [], [])
        for k in range(frames):
            if k:
                for _ in range(sub):
                    self.step(dt)
            t = k / fps
            tr.times.append(t)
            tr.pos.append([(b.x, b.y) for b in self.bodies])
            tr.vel.append([(b.vx, b.vy) for b in self.bodies])
            if self.pusher is not None:
                tr.pusher_pos.append(self.pusher.position(t))
                tr.pusher_vel.append(self.pusher.velocity(t))
            else:
                tr.pusher_pos.append(None)
                tr.pusher_vel.append(None)
        tr.events = list(self.events)
        return tr


def max_penetration(bodies: list[Body]) -> float:
    """Deepest overlap (m) between any two bodies (0 when none touch)."""
    worst = 0.0
    for i in range(len(bodies)):
        for j in range(i + 1, len(bodies)):
            c = contact(bodies[i], bodies[j])
            if c is not None:
                worst = max(worst, c[2])
    return worst
