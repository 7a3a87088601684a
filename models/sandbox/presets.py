"""Scene families (named presets) and ``generate_scene``: seed -> simulated, rendered SceneClip.

push    1-2 objects start moving (indices 0..k-1 in ``driven``), the others may be hit (KineMask)
pusher  objects at rest; only the hand-like pusher is driven and only its mask is given (InterDyn)
multi   3-6 objects, 2-3 driven, interaction captions "the red box pushes the blue cylinder to the left" (MATRIX)
camera  static scene, camera path scripted from key presses W/A/S/D/left/right (GameCraft)
hoi     a capsule hand reaches an object and either pushes it (physics) or grasps, lifts and carries it
        (kinematic); the clip keeps the hand's 21 joints and the object poses per frame (PAM)

Every random choice comes from one numpy Generator seeded by (seed, preset), so a seed gives the same bytes.
"""
from __future__ import annotations

import math

import numpy as np

from . import render as R
from .types import SceneClip
from ..conditions.hoi_trajectory import canonical_hand, min_jerk
from .world import Body, Pusher, World, contact

PRESETS = ("push", "pusher", "multi", "camera", "hoi")  # append only: the index seeds each preset's stream
SIM_RATE = 240.0  # Hz
COLOURS = {
    "red": (0.85, 0.12, 0.10), "blue": (0.12, 0.30, 0.88), "yellow": (0.95, 0.85, 0.10),
    "orange": (0.98, 0.50, 0.05), "purple": (0.55, 0.18, 0.75), "cyan": (0.10, 0.80, 0.85),
    "pink": (0.98, 0.45, 0.70), "white": (0.96, 0.96, 0.96), "green": (0.15, 0.75, 0.20),
    "black": (0.08, 0.08, 0.09),
}
SKIN = (0.90, 0.70, 0.56)
KEYS = ("W", "S", "A", "D", "left", "right")  # camera actions (GameCraft-style)
CAM_SPEED, CAM_TURN = 0.6, 25.0  # m/s, deg/s while a key is held
KEY_WORDS = {"W": "moves forward", "S": "moves backward", "A": "moves left", "D": "moves right",
             "left": "turns left", "right": "turns right"}


def _rng(seed: int, preset: str) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(PRESETS.index(preset),)))


# ------------------------------------------------------------------------------------------ objects
def _random_bodies(rng, n: int, extent: float, mu: float) -> tuple[list[Body], list[dict]]:
    names = [list(COLOURS)[i] for i in rng.permutation(len(COLOURS))[:n]]
    bodies, objects = [], []
    for k in range(n):
        shape = "box" if rng.random() < 0.5 else "cylinder"
        height = float(rng.uniform(0.15, 0.40))
        if shape == "box":
            hx, hy = float(rng.uniform(0.12, 0.24)), float(rng.uniform(0.12, 0.24))
            volume = 4 * hx * hy * height
        else:
            hx = hy = float(rng.uniform(0.11, 0.21))
            volume = math.pi * hx * hx * height
        mass = float(volume * rng.uniform(300.0, 900.0))  # kg: density of wood to dense plastic
        b = None
        for _ in range(200):  # rejection sampling: no overlap, a gap of >= 5 cm
            x, y = rng.uniform(-extent, extent, 2)
            cand = Body(shape, float(x), float(y), hx + 0.025, hy + 0.025, height, mass)
            if all(contact(cand, Body(o.shape, o.x, o.y, o.hx + 0.025, o.hy + 0.025, 0, 1)) is None for o in bodies):
                b = Body(shape, float(x), float(y), hx, hy, height, mass, mu=float(mu * rng.uniform(0.9, 1.1)))
                break
        if b is None:
            break  # crowded: fewer objects
        bodies.append(b)
        objects.append(dict(shape=shape, colour=names[k], rgb=list(COLOURS[names[k]]),
                            size=[2 * hx, 2 * hy, height], mass=mass, mu=b.mu))
    return bodies, objects


def _aim(rng, bodies: list[Body], i: int, speed: float, p_aim: float = 0.75) -> None:
    """Set body i moving at ``speed``, usually toward another body (so collisions happen)."""
    others = [j for j in range(len(bodies)) if j != i]
    if others and rng.random() < p_aim:
        j = others[int(rng.integers(len(others)))]
        ang = math.atan2(bodies[j].y - bodies[i].y, bodies[j].x - bodies[i].x) + rng.normal(0, 0.25)
    else:
        ang = rng.uniform(0, 2 * math.pi)
    bodies[i].vx, bodies[i].vy = speed * math.cos(ang), speed * math.sin(ang)


# ------------------------------------------------------------------------------------------ camera
def _camera_path(frames: int, fps: float, keys: list[str] | None, yaw0: float = 0.0):
    """Per-frame key presses (length F-1, '' = none) -> function t -> (x, y, yaw) offsets from the start;
    moves are relative to the current heading, which starts at ``yaw0`` degrees."""
    if keys is None:
        return [], None
    keys = list(keys)[: max(frames - 1, 0)]
    keys += [""] * (max(frames - 1, 0) - len(keys))

    def state(t: float):
        x = y = yaw = 0.0
        k, dt = 0, 1.0 / fps
        while k < len(keys) and t > k * dt:
            h = min(dt, t - k * dt)
            key = keys[k]
            yr = math.radians(yaw0 + yaw)
            fwd, left = (math.cos(yr), math.sin(yr)), (-math.sin(yr), math.cos(yr))
            if key in ("W", "S"):
                s = CAM_SPEED * h * (1 if key == "W" else -1)
                x, y = x + s * fwd[0], y + s * fwd[1]
            elif key in ("A", "D"):
                s = CAM_SPEED * h * (1 if key == "A" else -1)
                x, y = x + s * left[0], y + s * left[1]
            elif key in ("left", "right"):
                yaw += CAM_TURN * h * (1 if key == "left" else -1)
            k += 1
        return x, y, yaw

    return keys, state


def _random_keys(rng, frames: int) -> list[str]:
    n = max(frames - 1, 0)
    segs = int(rng.integers(1, 4))
    cuts = sorted(int(c) for c in rng.choice(np.arange(1, max(n, 2)), size=min(segs - 1, max(n - 1, 0)),
                                             replace=False)) if n > 1 else []
    bounds = [0, *cuts, n]
    out: list[str] = []
    last = None
    for a, b in zip(bounds, bounds[1:]):
        key = KEYS[int(rng.integers(len(KEYS)))]
        while key == last:
            key = KEYS[int(rng.integers(len(KEYS)))]
        out += [key] * (b - a)
        last = key
    return out


# ------------------------------------------------------------------------------------------ captions
def direction_word(vx: float, vy: float) -> str:
    """Words for a screen-aligned ground direction (+x right, +y away from the camera)."""
    ax, ay = abs(vx), abs(vy)
    horiz = "to the right" if vx > 0 else "to the left"
    depth = "away from the camera" if vy > 0 else "toward the camera"
    if ax >= ay:
        return horiz if ay < 0.45 * ax else f"{depth} and {horiz}"
    return depth if ax < 0.45 * ay else f"{depth} and {horiz}"


def _name(o: dict) -> str:
    return f"{o['colour']} {o['shape']}"


def _listing(objects: list[dict]) -> str:
    names = [f"{'an' if o['colour'][0] in 'aeiou' else 'a'} {_name(o)}" for o in objects]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _interactions(events, vel_control, objects, fps) -> list[tuple[int, int, str]]:
    """(hitter, hit, direction of the hit object afterwards) for the first collision of each pair."""
    out, seen = [], set()
    F = vel_control.shape[1]
    for ev in events:
        a, b = ev["a"], ev["b"]
        if b < 0 or (a, b) in seen:
            continue
        seen.add((a, b))
        k0 = min(int(math.floor(ev["t"] * fps)), F - 1)
        k1 = min(k0 + 1, F - 1)
        sa, sb = (float(np.hypot(*vel_control[i, k0, :2])) for i in (a, b))
        hitter, hit = (a, b) if sa >= sb else (b, a)
        v = vel_control[hit, k1, :2]
        if float(np.hypot(*v)) < 1e-3:
            continue
        out.append((hitter, hit, direction_word(float(v[0]), float(v[1]))))
    return out


# ------------------------------------------------------------------------------------------ generate
def generate_scene(preset: str = "push", seed: int = 0, size: tuple[int, int] = (64, 64), frames: int = 13,
                   fps: float = 8.0, camera_keys: list[str] | None = None) -> SceneClip:
    """Simulate and render one scene. ``size`` is (H, W). ``camera_keys`` (one key per frame step, from
    W/S/A/D/left/right or '') scripts camera motion for any preset; the camera preset draws its own."""
    if preset not in PRESETS:
        raise ValueError(f"sandbox preset must be one of {', '.join(PRESETS)}; got {preset!r}")
    H, W = int(size[0]), int(size[1])
    if not (8 <= H <= 4096 and 8 <= W <= 4096):
        raise ValueError(f"sandbox size must be between 8x8 and 4096x4096 (H, W); got {size}")
    if frames < 1 or fps <= 0:
        raise ValueError(f"sandbox needs frames >= 1 and fps > 0; got frames={frames}, fps={fps}")
    rng = _rng(seed, preset)
    ground = R.Ground.random(rng)
    yaw = float(rng.uniform(0, 360))
    pitch = float(rng.uniform(45, 60))
    dist = float(rng.uniform(2.8, 3.3))
    target = rng.normal(0, 0.05, 2)
    restitution = float(rng.uniform(0.3, 0.7))
    mu = float(rng.uniform(0.06, 0.12))
    pusher = None
    driven: list[int] = []
    if preset == "push":
        bodies, objects = _random_bodies(rng, int(rng.integers(2, 5)), 0.6, mu)
        k = 1 if len(bodies) < 3 else int(rng.integers(1, 3))
        driven = list(range(k))
        for i in driven:
            _aim(rng, bodies, i, float(rng.uniform(0.8, 1.5)))
    elif preset == "multi":
        bodies, objects = _random_bodies(rng, int(rng.integers(3, 7)), 0.7, mu)
        driven = list(range(min(int(rng.integers(2, 4)), len(bodies))))
        for i in driven:
            _aim(rng, bodies, i, float(rng.uniform(0.8, 1.5)), p_aim=0.9)
    elif preset == "pusher":
        bodies, objects = _random_bodies(rng, int(rng.integers(1, 4)), 0.5, mu)
        pusher = _pusher_for(rng, bodies)
    elif preset == "hoi":
        return _generate_hoi(rng, H, W, frames, fps, seed, ground, yaw, pitch, dist, target, restitution, mu,
                             camera_keys)
    else:  # camera
        bodies, objects = _random_bodies(rng, int(rng.integers(2, 6)), 0.7, mu)
        if camera_keys is None:
            camera_keys = _random_keys(rng, frames)
    keys, cam_state = _camera_path(frames, fps, camera_keys, yaw)

    world = World(bodies, restitution=restitution, pusher=pusher, rate=SIM_RATE)
    tr = world.simulate(frames, fps)
    N, F = len(bodies), frames

    cam0_pos = R.position_for(target, yaw, pitch, dist)

    def cam_at(t: float) -> R.Camera:
        if cam_state is None:
            return R.camera_from(W, H, *cam0_pos, yaw, pitch)
        dx, dy, dyaw = cam_state(t)
        return R.camera_from(W, H, cam0_pos[0] + dx, cam0_pos[1] + dy, cam0_pos[2], yaw + dyaw, pitch)

    frames_rgb = np.zeros((F, H, W, 3), np.uint8)
    ids_all = np.zeros((F, H, W), np.int16)
    pos_world = np.zeros((N, F, 3), np.float32)
    vel_world = np.zeros((N, F, 3), np.float32)
    vel_image = np.zeros((N, F, 2), np.float32)
    vel_control = np.zeros((N, F, 3), np.float32)
    extr = []
    static = cam_state is None
    cached = None
    eps = 1e-3
    for f in range(F):
        t = tr.times[f]
        cam = cam_at(t)
        sides = R.sides_for(cam)
        extr.append(cam.world_to_camera().round(6).tolist())
        if cached is None or not static:
            cached = R.ground_image(cam, ground)
        g_rgb, X, Y = cached
        prisms = []
        for i, b in enumerate(bodies):
            x, y = tr.pos[f][i]
            vx, vy = tr.vel[f][i]
            fp = R.box_footprint(x, y, b.hx, b.hy) if b.shape == "box" else R.disc_footprint(x, y, b.hx, sides)
            prisms.append(R.Prism(fp, 0.0, b.height, COLOURS[objects[i]["colour"]], i + 1))
            p = np.array([x, y, b.height / 2])
            v = np.array([vx, vy, 0.0])
            pos_world[i, f] = p
            vel_world[i, f] = v
            vel_image[i, f] = R.image_velocity(cam_at(t - eps) if not static else cam,
                                               cam_at(t + eps) if not static else cam,
                                               p - v * eps, p + v * eps, 2 * eps) / fps
            vel_control[i, f] = cam.ground_axes() @ v
        if pusher is not None:
            px, py = tr.pusher_pos[f]
            prisms += pusher_prisms(pusher, px, py, sides)
        rgb, ids = R.render_frame(cam, g_rgb, X, Y, prisms)
        frames_rgb[f] = rgb
        ids_all[f] = ids
    pusher_mask = ids_all == -1
    id_map = np.where(ids_all > 0, ids_all, 0).astype(np.int16)
    masks = np.stack([id_map == i + 1 for i in range(N)]) if N else np.zeros((0, F, H, W), bool)

    K0 = cam_at(0.0)
    camera = dict(K=K0.K.round(6).tolist(), world_to_camera=extr, fov_deg=40.0, pitch_deg=pitch, yaw_deg=yaw,
                  distance=dist, keys=keys, convention=("OpenCV pinhole: x right, y down, z forward; world metres, "
                                                        "ground z=0, +z up; world_to_camera per frame"))
    caption = _caption(preset, objects, driven, tr.events, vel_control, fps, ground, keys, pusher, cam_at(0.0))
    return SceneClip(frames=frames_rgb, masks=masks, id_map=id_map, pusher_mask=pusher_mask, vel_world=vel_world,
                     vel_image=vel_image, vel_control=vel_control, objects=objects, driven=driven, caption=caption,
                     camera=camera, fps=float(fps), seed=int(seed), preset=preset, pos_world=pos_world,
                     events=tr.events,
                     meta=dict(restitution=restitution, sim_rate=SIM_RATE, ground=ground.kind,
                               ground_name=_ground_name(ground),
                               pusher=None if pusher is None else dict(waypoints=pusher.waypoints,
                                                                       radius=pusher.radius)))


def pusher_prisms(pusher: Pusher, x: float, y: float, sides: int = R.CYLINDER_SIDES) -> list:
    """The hand: a palm disc on the ground and a forearm hovering back along ``heading``."""
    return [R.Prism(R.disc_footprint(x, y, pusher.radius, sides), 0.0, pusher.height, SKIN, -1),
            R.Prism(R.oriented_footprint(x, y, 0.7, 1.5 * pusher.radius, pusher.heading), 0.04, 0.12, SKIN, -1)]


def clip_camera(clip: SceneClip, f: int = 0) -> R.Camera:
    """The camera of frame f rebuilt from the clip's sidecar (K, world_to_camera)."""
    m = np.asarray(clip.camera["world_to_camera"][f], np.float64)
    rot = m[:3, :3]
    H, W = clip.size
    return R.Camera(np.asarray(clip.camera["K"], np.float64), rot, -rot.T @ m[:3, 3], W, H)


def object_prisms(clip: SceneClip, f: int) -> list:
    """Amodal prisms of the clip's objects at frame f (from pos_world and the object list)."""
    out = []
    for i, o in enumerate(clip.objects):
        x, y, _ = (float(v) for v in clip.pos_world[i, f])
        lx, ly, h = o["size"]
        fp = R.box_footprint(x, y, lx / 2, ly / 2) if o["shape"] == "box" else R.disc_footprint(x, y, lx / 2)
        out.append(R.Prism(fp, 0.0, h, tuple(o["rgb"]), i + 1))
    return out


def _pusher_for(rng, bodies: list[Body]) -> Pusher:
    """A push on object 0: start 0.15-0.3 m from its edge, drive through its centre and beyond, then
    hold still. Approach directions that start inside another body are rejected."""
    b = bodies[0]
    speed = float(rng.uniform(0.6, 1.0))
    for _ in range(50):
        ang = float(rng.uniform(0, 2 * math.pi))
        d = (math.cos(ang), math.sin(ang))
        gap = float(rng.uniform(0.15, 0.3))
        start = (b.x - d[0] * (b.hx + 0.09 + gap), b.y - d[1] * (b.hy + 0.09 + gap))
        probe = Body("cylinder", start[0], start[1], 0.11, 0.11, 0, 1)
        if all(contact(probe, o) is None for o in bodies):
            break
    travel = float(rng.uniform(0.6, 0.9))
    end = (start[0] + d[0] * travel, start[1] + d[1] * travel)
    t1 = travel / speed
    return Pusher([(0.0, *start), (t1, *end)], radius=0.09, height=0.08, heading=ang + math.pi)


def _ground_name(g: R.Ground) -> str:
    return {"tiles": "tiled", "wood": "wooden", "noise": "stone"}[g.kind]


def _caption(preset, objects, driven, events, vel_control, fps, ground, keys, pusher, cam) -> str:
    if not objects:
        return f"an empty {_ground_name(ground)} floor."
    scene = f"On a {_ground_name(ground)} floor there {'is' if len(objects) == 1 else 'are'} {_listing(objects)}."
    hits = _interactions(events, vel_control, objects, fps)
    parts = []
    if preset == "push":
        for i in driven:
            v = vel_control[i, 0]
            s = f"the {_name(objects[i])} moves {direction_word(float(v[0]), float(v[1]))}"
            mine = [h for h in hits if h[0] == i]
            if mine:
                s += " and hits " + " and ".join(f"the {_name(objects[h])}, which slides {w}" for _, h, w in mine)
            parts.append(s)
    elif preset == "multi":
        for i in driven:
            v = vel_control[i, 0]
            parts.append(f"the {_name(objects[i])} moves {direction_word(float(v[0]), float(v[1]))}")
        parts += [f"the {_name(objects[a])} pushes the {_name(objects[b])} {w}" for a, b, w in hits]
    elif preset == "pusher":
        d = np.array(pusher.waypoints[-1][1:]) - np.array(pusher.waypoints[0][1:])
        v = cam.ground_axes()[:2, :2] @ d
        parts.append(f"a hand pushes the {_name(objects[0])} {direction_word(float(v[0]), float(v[1]))}")
        parts += [f"the {_name(objects[a])} knocks the {_name(objects[b])} {w}" for a, b, w in hits]
    if keys:
        runs = []
        for k in keys:
            if k and (not runs or runs[-1] != k):
                runs.append(k)
        if runs:
            parts.append("the camera " + ", then ".join(KEY_WORDS[k] for k in runs))
    if not parts:
        return scene
    text = "; ".join(parts)
    return f"{scene} {text[0].upper()}{text[1:]}."


# ------------------------------------------------------------------------------------------ hand-object (PAM)
HAND_SCALE = 2.4  # the sandbox hand is a human hand scaled to its objects (0.12-0.48 m)
HAND_PITCH = 0.25  # rad, fingers pointing slightly down


def _hand_world(wrist: np.ndarray, heading: float, curl: float, pitch: float = HAND_PITCH) -> np.ndarray:
    """World joints [21,3]: the local hand pitched down by ``pitch`` rad, turned to ``heading``, at ``wrist``."""
    cp, sp = math.cos(pitch), math.sin(pitch)
    Ry = np.array([[cp, 0, sp], [0, 1, 0], [-sp, 0, cp]])
    ch, sh = math.cos(heading), math.sin(heading)
    Rz = np.array([[ch, -sh, 0], [sh, ch, 0], [0, 0, 1]])
    return canonical_hand(curl, HAND_SCALE) @ (Rz @ Ry).T + wrist


def _convex_ccw(pts: np.ndarray) -> np.ndarray:
    """Counter-clockwise convex hull of 2-D points (monotone chain)."""
    p = sorted(map(tuple, np.round(pts, 9)))
    if len(p) < 3:
        return np.asarray(p)

    def half(seq):
        out = []
        for q in seq:
            while len(out) >= 2 and ((out[-1][0] - out[-2][0]) * (q[1] - out[-2][1])
                                     - (out[-1][1] - out[-2][1]) * (q[0] - out[-2][0])) <= 0:
                out.pop()
            out.append(q)
        return out

    lower, upper = half(p), half(p[::-1])
    return np.asarray(lower[:-1] + upper[:-1])


def hand_prisms(joints: np.ndarray, sides: int = R.CYLINDER_SIDES) -> list:
    """The hand as sandbox prisms (code -1, the pusher's): an oriented box per bone (radius from
    conditions.hoi_render's capsule proxy) and the palm as the convex prism of the wrist and MCPs."""
    from ..conditions.hoi_render import HAND_BONES, capsule_radii

    r, h = capsule_radii(joints)
    out = []
    for (a, b), rad in zip(HAND_BONES, r):
        pa, pb = joints[a], joints[b]
        d = pb[:2] - pa[:2]
        ln = float(np.hypot(*d))
        z0, z1 = max(min(pa[2], pb[2]) - rad, 0.0), max(pa[2], pb[2]) + rad
        if ln < 1e-6:
            fp = R.box_footprint(pa[0], pa[1], rad, rad)
        else:
            u = d / ln
            start = pa[:2] - u * rad
            fp = R.oriented_footprint(start[0], start[1], ln + 2 * rad, 2 * rad, math.atan2(u[1], u[0]))
        out.append(R.Prism(fp, z0, z1, SKIN, -1))
    palm = joints[[0, 1, 5, 9, 13, 17]]
    zc = float(palm[:, 2].mean())
    out.append(R.Prism(_convex_ccw(palm[:, :2]), max(zc - h, 0.0), zc + h, SKIN, -1))
    return out


def _generate_hoi(rng, H, W, F, fps, seed, ground, yaw, pitch, dist, target, restitution, mu, camera_keys):
    """The 'hoi' preset: one object; a hand comes from 0.5-0.8 m away, then either pushes it (a kinematic
    pusher disc at the fingertips drives the physics) or closes its fingers on it, lifts it 8-15 cm and carries
    it 0.3-0.6 m (the object rigidly follows the wrist after the contact frame)."""
    bodies, objects = _random_bodies(rng, 1, 0.3, mu)
    b = bodies[0]
    mode = "carry" if rng.random() < 0.5 else "push"
    heading = float(rng.uniform(0, 2 * math.pi))
    u = np.array([math.cos(heading), math.sin(heading)])
    duration = max(F - 1, 1) / fps
    reach = float(rng.uniform(0.5, 0.8))
    open_hand = canonical_hand(0.0, HAND_SCALE)
    tip = float(open_hand[12, 0])        # wrist to middle fingertip along x
    palm_c = float(open_hand[9, 0]) * 0.7  # over the object's centre when grasping
    obj_c = np.array([b.x, b.y])
    t_contact = 0.4 * duration
    wrist = np.zeros((F, 3))
    curl = np.zeros(F)
    pusher = None
    lift, carry = float(rng.uniform(0.08, 0.15)), float(rng.uniform(0.3, 0.6))
    cdir = heading + float(rng.uniform(-0.8, 0.8))
    cu = np.array([math.cos(cdir), math.sin(cdir)])
    times = np.arange(F) / fps
    if mode == "push":
        # the fingertips travel from `reach` m before the object's near edge through its centre and beyond
        radius = 0.06  # the invisible pusher disc under the fingertips
        start = obj_c - u * (b.hx + radius + reach)
        end = obj_c + u * float(rng.uniform(0.2, 0.45))
        pusher = Pusher([(0.0, *start), (0.85 * duration, *end)], radius=radius, height=0.06, heading=heading + math.pi)
        # a hand's push is inelastic: the object stays on the fingertips instead of bouncing ahead
        world = World(bodies, restitution=0.0, pusher=pusher, rate=SIM_RATE)
        tr = world.simulate(F, fps)
        events = tr.events
        for f in range(F):  # the middle fingertip rides near the disc's front edge, 4 cm above the ground
            wrist[f, :2] = np.asarray(tr.pusher_pos[f]) + u * (0.6 * radius - tip * math.cos(HAND_PITCH))
            wrist[f, 2] = 0.04 + tip * math.sin(HAND_PITCH)
        obj_xy = np.array([tr.pos[f][0] for f in range(F)])
        obj_z = np.full(F, b.height / 2)
    else:
        events = []
        grasp_wrist = obj_c - u * palm_c
        start = grasp_wrist - u * reach
        # wrist height that keeps the pitched palm (and its thickness) just above the object's top
        L = float(np.linalg.norm(open_hand[9] - open_hand[0]))
        h_top = b.height + palm_c * math.sin(HAND_PITCH) + 0.12 * L + 0.02
        for f, t in enumerate(times):
            if t <= t_contact:
                e = float(min_jerk(t / t_contact))
                wrist[f, :2] = start + (grasp_wrist - start) * e
                wrist[f, 2] = h_top + 0.12 * (1 - e)
            else:
                e = float(min_jerk((t - t_contact) / max(duration - t_contact, 1e-9) / 0.9))
                wrist[f, :2] = grasp_wrist + cu * carry * e
                wrist[f, 2] = h_top + lift * math.sin(math.pi * e)  # up, across, and down again
            curl[f] = float(np.clip((t - 0.75 * t_contact) / (0.25 * t_contact), 0, 1))
        c = int(np.searchsorted(times, t_contact))
        obj_xy = np.tile(obj_c, (F, 1))
        obj_z = np.full(F, b.height / 2)
        for f in range(c, F):  # rigidly attached: the object keeps its offset from the wrist
            obj_xy[f] = obj_c + (wrist[f, :2] - wrist[c, :2])
            obj_z[f] = b.height / 2 + (wrist[f, 2] - wrist[c, 2])
    keys, cam_state = _camera_path(F, fps, camera_keys, yaw)
    cam0_pos = R.position_for(target, yaw, pitch, dist)

    def cam_at(t: float) -> R.Camera:
        if cam_state is None:
            return R.camera_from(W, H, *cam0_pos, yaw, pitch)
        dx, dy, dyaw = cam_state(t)
        return R.camera_from(W, H, cam0_pos[0] + dx, cam0_pos[1] + dy, cam0_pos[2], yaw + dyaw, pitch)

    frames_rgb = np.zeros((F, H, W, 3), np.uint8)
    ids_all = np.zeros((F, H, W), np.int16)
    joints = np.zeros((F, 21, 3), np.float32)
    pos_world = np.zeros((1, F, 3), np.float32)
    vel_world = np.zeros((1, F, 3), np.float32)
    vel_image = np.zeros((1, F, 2), np.float32)
    vel_control = np.zeros((1, F, 3), np.float32)
    object_pose = np.tile(np.eye(4, dtype=np.float32), (1, F, 1, 1))
    extr = []
    cached = None
    for f in range(F):
        cam = cam_at(times[f])
        sides = R.sides_for(cam)
        extr.append(cam.world_to_camera().round(6).tolist())
        if cached is None or cam_state is not None:
            cached = R.ground_image(cam, ground)
        g_rgb, X, Y = cached
        j = _hand_world(wrist[f], heading, float(curl[f]))
        joints[f] = j
        x, y = obj_xy[f]
        z0 = float(obj_z[f] - b.height / 2)
        fp = R.box_footprint(x, y, b.hx, b.hy) if b.shape == "box" else R.disc_footprint(x, y, b.hx, sides)
        prisms = [R.Prism(fp, z0, z0 + b.height, COLOURS[objects[0]["colour"]], 1)] + hand_prisms(j, sides)
        pos_world[0, f] = (x, y, obj_z[f])
        object_pose[0, f, :3, 3] = pos_world[0, f]
        if f:
            vel_world[0, f - 1] = (pos_world[0, f] - pos_world[0, f - 1]) * fps
        rgb, ids = R.render_frame(cam, g_rgb, X, Y, prisms)
        frames_rgb[f], ids_all[f] = rgb, ids
    for f in range(F):  # forward differences, then the image velocity of the centre
        cam = cam_at(times[f])
        p, v = pos_world[0, f].astype(np.float64), vel_world[0, f].astype(np.float64)
        vel_control[0, f] = cam.ground_axes() @ v
        vel_image[0, f] = R.image_velocity(cam, cam, p - v * 1e-3, p + v * 1e-3, 2e-3) / fps
    pusher_mask = ids_all == -1
    id_map = np.where(ids_all > 0, ids_all, 0).astype(np.int16)
    masks = (id_map == 1)[None]
    camera = dict(K=cam_at(0.0).K.round(6).tolist(), world_to_camera=extr, fov_deg=40.0, pitch_deg=pitch,
                  yaw_deg=yaw, distance=dist, keys=keys,
                  convention=("OpenCV pinhole: x right, y down, z forward; world metres, ground z=0, +z up; "
                              "world_to_camera per frame"))
    d = (obj_xy[-1] - obj_xy[0]) if mode == "push" else cu
    v = cam_at(0.0).ground_axes()[:2, :2] @ d
    where = direction_word(float(v[0]), float(v[1]))
    name = _name(objects[0])
    verb = (f"a hand pushes the {name} {where}" if mode == "push"
            else f"a hand picks up the {name} and carries it {where}")
    caption = f"On a {_ground_name(ground)} floor there is {_listing(objects)}. {verb[0].upper()}{verb[1:]}."
    return SceneClip(frames=frames_rgb, masks=masks, id_map=id_map, pusher_mask=pusher_mask, vel_world=vel_world,
                     vel_image=vel_image, vel_control=vel_control, objects=objects, driven=[], caption=caption,
                     camera=camera, fps=float(fps), seed=int(seed), preset="hoi", pos_world=pos_world, events=events,
                     meta=dict(restitution=restitution, sim_rate=SIM_RATE, ground=ground.kind,
                               ground_name=_ground_name(ground), hand_side="right", hoi_mode=mode,
                               contact_frame=int(np.searchsorted(times, t_contact)) if mode == "carry" else None,
                               hand_scale=HAND_SCALE),
                     hand_joints=joints, object_pose=object_pose)
