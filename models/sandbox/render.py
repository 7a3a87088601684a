"""Numpy renderer for the sandbox: oblique pinhole camera, procedural ground, shaded prisms, contact shadows.

Conventions
- World: metres, ground plane z = 0, +z up.
- Camera: OpenCV pinhole. ``R`` maps world to camera (rows: right, down, forward), ``C`` is the camera
  centre; p_cam = R (p - C); u = fx x/z + cx, v = fy y/z + cy with pixel centres at integer + 0.5 and the
  origin at the top-left corner. ``world_to_camera`` = [[R, -R C], [0, 0, 0, 1]].
- Every solid is a convex prism (footprint polygon extruded from z0 to z1): boxes have 4 footprint vertices,
  cylinders a 24-gon. Faces are drawn far-to-near (painter's algorithm by entity depth); within a convex prism
  the camera-facing faces never overlap, so no z-buffer is needed. Masks and the ID map come from the same
  raster, so they match the RGB pixels exactly (no anti-aliasing).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

LIGHT = np.array([-0.45, -0.35, 0.82]) / np.linalg.norm([-0.45, -0.35, 0.82])  # toward the sun
AMBIENT, DIFFUSE = 0.45, 0.6
CYLINDER_SIDES = 24


@dataclass
class Camera:
    """Pinhole camera: K [3,3], R [3,3] world->camera rotation, C [3] centre (world, m)."""

    K: np.ndarray
    R: np.ndarray
    C: np.ndarray
    width: int
    height: int

    def to_camera(self, p: np.ndarray) -> np.ndarray:
        """World points [...,3] -> camera coordinates [...,3] (x right, y down, z forward)."""
        return (np.asarray(p, dtype=np.float64) - self.C) @ self.R.T

    def project(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World points [...,3] -> (pixel uv [...,2], depth z [...])."""
        q = self.to_camera(p)
        z = q[..., 2]
        zs = np.where(np.abs(z) < 1e-9, 1e-9, z)
        u = self.K[0, 0] * q[..., 0] / zs + self.K[0, 2]
        v = self.K[1, 1] * q[..., 1] / zs + self.K[1, 2]
        return np.stack([u, v], -1), z

    def world_to_camera(self) -> np.ndarray:
        m = np.eye(4)
        m[:3, :3] = self.R
        m[:3, 3] = -self.R @ self.C
        return m

    def ground_axes(self) -> np.ndarray:
        """[3,3] rows = the screen-aligned velocity axes in world coordinates: +x the image right (horizontal),
        +y the camera's forward direction flattened onto the ground ("up the image"), +z world up (out of the
        ground plane, toward an overhead camera). Used for vel_control (see conditions.velocity)."""
        right = self.R[0].copy()
        right[2] = 0.0
        right /= max(np.linalg.norm(right), 1e-12)
        fwd = np.array([-right[1], right[0], 0.0])  # right rotated +90 deg about z
        return np.stack([right, fwd, np.array([0.0, 0.0, 1.0])])


def intrinsics(width: int, height: int, fov_deg: float) -> np.ndarray:
    """K with square pixels; ``fov_deg`` is the VERTICAL field of view (wider images see more ground)."""
    f = (height / 2) / math.tan(math.radians(fov_deg) / 2)
    return np.array([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]])


def look_at(width: int, height: int, target=(0.0, 0.0), yaw: float = 0.0, pitch: float = 50.0,
            distance: float = 3.0, fov_deg: float = 40.0) -> Camera:
    """Camera looking at ground point ``target`` from ``distance`` m, ``pitch`` degrees below the horizon,
    ``yaw`` degrees = heading of the view direction (0 looks along +x, 90 along +y)."""
    return camera_from(width, height, *position_for(target, yaw, pitch, distance), yaw, pitch, fov_deg)


def position_for(target, yaw: float, pitch: float, distance: float) -> tuple[float, float, float]:
    ps, py = math.radians(pitch), math.radians(yaw)
    return (target[0] - distance * math.cos(ps) * math.cos(py),
            target[1] - distance * math.cos(ps) * math.sin(py),
            distance * math.sin(ps))


def camera_from(width: int, height: int, x: float, y: float, z: float, yaw: float, pitch: float,
                fov_deg: float = 40.0) -> Camera:
    """Camera at (x, y, z) with heading ``yaw`` and ``pitch`` degrees down; no roll."""
    ps, py = math.radians(pitch), math.radians(yaw)
    fwd = np.array([math.cos(ps) * math.cos(py), math.cos(ps) * math.sin(py), -math.sin(ps)])
    right = np.array([math.sin(py), -math.cos(py), 0.0])
    down = np.cross(fwd, right)
    return Camera(intrinsics(width, height, fov_deg), np.stack([right, down, fwd]), np.array([x, y, z], float),
                  width, height)


# ------------------------------------------------------------------------------------------ ground
@dataclass
class Ground:
    """Procedural ground texture: kind in {"tiles", "wood", "noise"}; colours in 0..1."""

    kind: str
    base: tuple
    params: dict

    @staticmethod
    def random(rng: np.random.Generator) -> "Ground":
        kind = ["tiles", "wood", "noise"][int(rng.integers(3))]
        bases = {"tiles": [(0.62, 0.60, 0.56), (0.55, 0.57, 0.60), (0.66, 0.62, 0.52)],
                 "wood": [(0.55, 0.40, 0.26), (0.64, 0.50, 0.34), (0.47, 0.35, 0.25)],
                 "noise": [(0.45, 0.50, 0.36), (0.62, 0.56, 0.44), (0.50, 0.50, 0.50)]}[kind]
        base = bases[int(rng.integers(len(bases)))]
        waves = [(float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(0.6, 2.5)), float(rng.uniform(0, 2 * math.pi)))
                 for _ in range(4)]
        params = dict(cell=float(rng.uniform(0.3, 0.5)), angle=float(rng.uniform(0, math.pi)), waves=waves,
                      salt=float(rng.uniform(0, 100)))
        return Ground(kind, tuple(float(c) for c in base), params)

    def shade(self, X: np.ndarray, Y: np.ndarray) -> np.ndarray:
        """Ground colour [...,3] float32 at world points (X, Y)."""
        p = self.params
        ca, sa = math.cos(p["angle"]), math.sin(p["angle"])
        U, V = ca * X + sa * Y, -sa * X + ca * Y
        low = np.zeros_like(X)
        for theta, freq, phase in p["waves"]:  # gentle large-scale variation, every kind
            low += np.sin(2 * math.pi * freq * (math.cos(theta) * X + math.sin(theta) * Y) + phase)
        b = 1.0 + 0.035 * low
        cell = p["cell"]
        if self.kind == "tiles":
            iu, iv = np.floor(U / cell), np.floor(V / cell)
            b += 0.06 * (_hash(iu, iv, p["salt"]) - 0.5)
            fu, fv = U / cell - iu, V / cell - iv
            seam = np.minimum(np.minimum(fu, 1 - fu), np.minimum(fv, 1 - fv)) * cell
            b -= 0.18 * (seam < 0.012)
        elif self.kind == "wood":
            w = cell * 0.6
            iv = np.floor(V / w)
            plank_len = 4 * w
            iu = np.floor((U + (iv % 3) * plank_len / 3) / plank_len)
            b += 0.10 * (_hash(iu, iv, p["salt"]) - 0.5)
            b += 0.03 * np.sin(2 * math.pi * (V / w * 3.0 + 0.5 * np.sin(U * 3.0)))
            fv = V / w - iv
            fu = (U + (iv % 3) * plank_len / 3) / plank_len - iu
            b -= 0.16 * ((np.minimum(fv, 1 - fv) * w < 0.008) | (np.minimum(fu, 1 - fu) * plank_len < 0.008))
        else:
            b += 0.05 * np.sin(2 * math.pi * U * 5.1) * np.sin(2 * math.pi * V * 4.3)
        return (np.asarray(self.base, np.float32) * b[..., None]).astype(np.float32)


def _hash(i: np.ndarray, j: np.ndarray, salt: float) -> np.ndarray:
    """Per-cell pseudo-random value in [0, 1) (classic sin hash; deterministic on one machine)."""
    h = np.sin(i * 12.9898 + j * 78.233 + salt) * 43758.5453
    return h - np.floor(h)


SKY = np.array([0.72, 0.80, 0.90], np.float32)


def ground_image(cam: Camera, ground: Ground, supersample: int | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rgb [H,W,3] float32, X [H,W], Y [H,W]) — pixels whose ray misses the ground get the sky colour and
    NaN coordinates. Small images average ``supersample``^2 texture samples per pixel so thin seams do not
    alias into moire (default: 2 up to 256x256, else 1)."""
    H, W = cam.height, cam.width
    s = supersample or (2 if H * W <= 256 * 256 else 1)
    rgb, X, Y = _ground_samples(cam, ground, s)
    if s > 1:
        rgb = rgb.reshape(H, s, W, s, 3).mean((1, 3), dtype=np.float32)
        X, Y = _ground_samples(cam, None, 1)[1:]
    return rgb, X, Y


def _ground_samples(cam: Camera, ground: Ground | None, s: int):
    H, W = cam.height, cam.width
    v, u = (np.mgrid[0:H * s, 0:W * s].astype(np.float64) + 0.5) / s
    Kinv = np.linalg.inv(cam.K)
    rays_cam = np.stack([u, v, np.ones_like(u)], -1) @ Kinv.T
    rays = rays_cam @ cam.R  # camera -> world (R^T applied on the right of row vectors)
    rz = rays[..., 2]
    hit = rz < -1e-9
    t = np.where(hit, -cam.C[2] / np.where(hit, rz, -1.0), np.nan)
    X = cam.C[0] + t * rays[..., 0]
    Y = cam.C[1] + t * rays[..., 1]
    if ground is None:
        return None, X, Y
    rgb = np.empty((H * s, W * s, 3), np.float32)
    rgb[hit] = ground.shade(X[hit], Y[hit])
    rgb[~hit] = SKY
    return rgb, X, Y


# ------------------------------------------------------------------------------------------ solids
@dataclass
class Prism:
    """A convex prism: footprint [K,2] (world x, y, counter-clockwise), z0..z1, base colour (0..1 rgb),
    ``code`` written to the ID raster (object i -> i + 1; the pusher uses -1)."""

    footprint: np.ndarray
    z0: float
    z1: float
    colour: tuple
    code: int


def box_footprint(x: float, y: float, hx: float, hy: float) -> np.ndarray:
    return np.array([[x - hx, y - hy], [x + hx, y - hy], [x + hx, y + hy], [x - hx, y + hy]])


_CIRCLES = {k: np.stack([np.cos(np.linspace(0, 2 * math.pi, k, endpoint=False)),
                          np.sin(np.linspace(0, 2 * math.pi, k, endpoint=False))], -1) for k in (12, 16, 24)}


def disc_footprint(x: float, y: float, r: float, sides: int = CYLINDER_SIDES) -> np.ndarray:
    """Inscribed polygon: its vertices lie on the circle, so the rendered disc never exceeds the physical one
    (touching bodies never overlap in the image). ``sides`` 12, 16 or 24."""
    return np.array([x, y]) + r * _CIRCLES[sides]


def sides_for(cam: "Camera") -> int:
    """Fewer cylinder facets for small images, where 24 would be sub-pixel (and cost most of the render)."""
    m = min(cam.width, cam.height)
    return 12 if m <= 96 else 16 if m <= 256 else 24


def oriented_footprint(x: float, y: float, length: float, width: float, heading: float) -> np.ndarray:
    """Rectangle starting at (x, y) extending ``length`` along ``heading`` (radians), ``width`` across."""
    d = np.array([math.cos(heading), math.sin(heading)])
    n = np.array([-d[1], d[0]])
    p = np.array([x, y])
    return np.stack([p - n * width / 2, p + d * length - n * width / 2, p + d * length + n * width / 2,
                     p + n * width / 2])


def fill_convex(uv: np.ndarray, H: int, W: int):
    """Rasterise a convex polygon [K,2] (pixel coords) at pixel centres.
    Returns (y0, x0, mask [h,w] bool) for the clipped bounding box, or None if empty."""
    x0 = max(int(math.floor(uv[:, 0].min() - 0.5)), 0)
    x1 = min(int(math.ceil(uv[:, 0].max() + 0.5)), W)
    y0 = max(int(math.floor(uv[:, 1].min() - 0.5)), 0)
    y1 = min(int(math.ceil(uv[:, 1].max() + 0.5)), H)
    if x1 <= x0 or y1 <= y0:
        return None
    pts = uv.tolist()
    k = len(pts)
    area = 0.0
    for i in range(k):
        area += pts[i - 1][0] * pts[i][1] - pts[i][0] * pts[i - 1][1]
    if abs(area) < 1e-9:
        return None
    s = 1.0 if area > 0 else -1.0
    px = np.arange(x0, x1) + 0.5
    py = (np.arange(y0, y1) + 0.5)[:, None]
    m = None
    for i in range(k):
        ax, ay = pts[i - 1]
        bx, by = pts[i]
        # half-open test: pixel centres exactly on an edge belong to one side only (shared edges don't overlap)
        e = s * ((bx - ax) * (py - ay) - (by - ay) * (px - ax)) > 0
        m = e if m is None else m & e
    if not m.any():
        return None
    return y0, x0, m


def _faces(p: Prism, cam: Camera):
    """Camera-facing faces of a prism as (world polygon [K,3], normal [3]), sides first then top."""
    fp = p.footprint
    k = len(fp)
    out = []
    for i in range(k):
        a, b = fp[i], fp[(i + 1) % k]
        ex, ey = b - a
        n = np.array([ey, -ex, 0.0])
        n /= max(np.linalg.norm(n), 1e-12)
        if n[0] * (cam.C[0] - a[0]) + n[1] * (cam.C[1] - a[1]) <= 0:
            continue
        out.append((np.array([[a[0], a[1], p.z0], [b[0], b[1], p.z0], [b[0], b[1], p.z1], [a[0], a[1], p.z1]]), n))
    if cam.C[2] > p.z1:
        out.append((np.concatenate([fp, np.full((k, 1), p.z1)], 1), np.array([0.0, 0.0, 1.0])))
    return out


def draw_prisms(rgb: np.ndarray, ids: np.ndarray, prisms: list[Prism], cam: Camera) -> None:
    """Paint prisms far to near into rgb [H,W,3] float32 and ids [H,W] int16 (in place)."""
    H, W = ids.shape
    depth = []
    for p in prisms:
        c = np.array([*p.footprint.mean(0), 0.5 * (p.z0 + p.z1)])
        depth.append(float(cam.to_camera(c)[2]))
    for idx in sorted(range(len(prisms)), key=lambda i: -depth[i]):
        p = prisms[idx]
        if depth[idx] <= 0.05:
            continue
        col = np.asarray(p.colour, np.float32)
        for poly, n in _faces(p, cam):
            uv, z = cam.project(poly)
            if (z <= 0.05).any():  # too close / behind the camera: skip the face (objects leaving the view)
                continue
            r = fill_convex(uv, H, W)
            if r is None:
                continue
            y0, x0, m = r
            shade = AMBIENT + DIFFUSE * max(0.0, float(n @ LIGHT))
            sub = rgb[y0:y0 + m.shape[0], x0:x0 + m.shape[1]]
            sub[m] = np.clip(col * shade, 0, 1)
            ids[y0:y0 + m.shape[0], x0:x0 + m.shape[1]][m] = p.code


def contact_shadows(rgb: np.ndarray, X: np.ndarray, Y: np.ndarray, prisms: list[Prism], cam: Camera,
                    strength: float = 0.5) -> None:
    """Darken the ground under each prism with a soft blob slightly offset away from the light (in place)."""
    H, W = X.shape
    off = -LIGHT[:2] / max(LIGHT[2], 1e-6)
    for p in prisms:
        if p.z0 > 0.02:  # hovering parts (the pusher's arm) cast no contact shadow
            continue
        c = p.footprint.mean(0) + off * 0.15 * p.z1
        half = np.abs(p.footprint - p.footprint.mean(0)).max(0) * 1.35 + 1e-3
        corners = np.array([[c[0] - half[0], c[1] - half[1], 0], [c[0] + half[0], c[1] - half[1], 0],
                            [c[0] + half[0], c[1] + half[1], 0], [c[0] - half[0], c[1] + half[1], 0]])
        uv, z = cam.project(corners)
        if (z <= 0.05).any():
            continue
        x0, x1 = max(int(uv[:, 0].min()) - 1, 0), min(int(uv[:, 0].max()) + 2, W)
        y0, y1 = max(int(uv[:, 1].min()) - 1, 0), min(int(uv[:, 1].max()) + 2, H)
        if x1 <= x0 or y1 <= y0:
            continue
        dx = (X[y0:y1, x0:x1] - c[0]) / half[0]
        dy = (Y[y0:y1, x0:x1] - c[1]) / half[1]
        d = np.sqrt(np.nan_to_num(dx * dx + dy * dy, nan=9.0))
        k = np.clip(1.0 - d, 0.0, 1.0) ** 1.5
        rgb[y0:y1, x0:x1] *= (1.0 - strength * k)[..., None].astype(np.float32)


def render_frame(cam: Camera, ground_rgb: np.ndarray, X: np.ndarray, Y: np.ndarray,
                 prisms: list[Prism]) -> tuple[np.ndarray, np.ndarray]:
    """One frame: (rgb uint8 [H,W,3], ids int16 [H,W]; 0 ground, i+1 object i, -1 pusher)."""
    rgb = ground_rgb.copy()
    contact_shadows(rgb, X, Y, prisms, cam)
    ids = np.zeros(X.shape, np.int16)
    draw_prisms(rgb, ids, prisms, cam)
    return (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8), ids


def footprint_masks(prisms: list[Prism], cam: Camera) -> np.ndarray:
    """Amodal ground footprints [N,H,W] bool (no occlusion): used to check interpenetration in the image."""
    H, W = cam.height, cam.width
    out = np.zeros((len(prisms), H, W), bool)
    for i, p in enumerate(prisms):
        uv, z = cam.project(np.concatenate([p.footprint, np.zeros((len(p.footprint), 1))], 1))
        if (z <= 0.05).any():
            continue
        r = fill_convex(uv, H, W)
        if r is not None:
            y0, x0, m = r
            out[i, y0:y0 + m.shape[0], x0:x0 + m.shape[1]] = m
    return out


def image_velocity(cam0: Camera, cam1: Camera, p0: np.ndarray, p1: np.ndarray, dt: float) -> np.ndarray:
    """Image-plane velocity (px/s, +x right, +y UP) of a point moving p0 -> p1 while the camera moves
    cam0 -> cam1 over dt seconds (central difference)."""
    a, _ = cam0.project(p0)
    b, _ = cam1.project(p1)
    v = (b - a) / dt
    return np.array([v[0], -v[1]])
