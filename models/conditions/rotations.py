"""Rotation conversions and interpolation shared by the MANO layer and the HOI trajectory generator.

Torch, batched over any leading dimensions, float32 or float64 (the trajectory code uses float64).
Quaternions are (w, x, y, z), unit length, the convention of manotorch's ``rot_mode="quat"`` (OakInk2's MANO
pose coefficients). Axis-angle vectors are the rotation axis times the angle in radians (MANO's pose layout).
"""
from __future__ import annotations

import torch

_EPS = 1e-12


def _t(x, dtype=None) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x if dtype is None else x.to(dtype)
    return torch.as_tensor(x, dtype=dtype or torch.float64)


def axis_angle_to_matrix(aa) -> torch.Tensor:
    """Rodrigues: [...,3] -> [...,3,3]. Small angles use the series of sin/cos (exact at zero, smooth)."""
    aa = _t(aa)
    theta2 = (aa * aa).sum(-1, keepdim=True)
    theta = theta2.clamp_min(_EPS).sqrt()
    small = theta2 < 1e-8
    # sin(t)/t and (1-cos(t))/t^2 with their Taylor series below t = 1e-4 (no 0/0)
    a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / theta2.clamp_min(_EPS))
    x, y, z = aa.unbind(-1)
    zero = torch.zeros_like(x)
    K = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(aa.shape[:-1] + (3, 3))
    eye = torch.eye(3, dtype=aa.dtype, device=aa.device).expand(K.shape)
    return eye + a[..., None] * K + b[..., None] * (K @ K)


def quaternion_to_matrix(q) -> torch.Tensor:
    """[...,4] (w, x, y, z), normalised first -> [...,3,3]."""
    q = _t(q)
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(_EPS)
    w, x, y, z = q.unbind(-1)
    m = torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
                     2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
                     2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1)
    return m.reshape(q.shape[:-1] + (3, 3))


def matrix_to_quaternion(m) -> torch.Tensor:
    """[...,3,3] rotation matrices -> [...,4] (w, x, y, z) with w >= 0 (Shepperd's method: the largest of the
    four candidate denominators, so no precision loss near 180 degrees)."""
    m = _t(m)
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    cands = torch.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1)
    k = cands.argmax(-1)
    r = cands.gather(-1, k[..., None])[..., 0].clamp_min(_EPS).sqrt()  # = 4 |q_k| / 2 = 2 |q_k|
    s = 0.5 / r
    qw = torch.stack([0.5 * r, (m[..., 2, 1] - m[..., 1, 2]) * s, (m[..., 0, 2] - m[..., 2, 0]) * s,
                      (m[..., 1, 0] - m[..., 0, 1]) * s], -1)
    qx = torch.stack([(m[..., 2, 1] - m[..., 1, 2]) * s, 0.5 * r, (m[..., 0, 1] + m[..., 1, 0]) * s,
                      (m[..., 0, 2] + m[..., 2, 0]) * s], -1)
    qy = torch.stack([(m[..., 0, 2] - m[..., 2, 0]) * s, (m[..., 0, 1] + m[..., 1, 0]) * s, 0.5 * r,
                      (m[..., 1, 2] + m[..., 2, 1]) * s], -1)
    qz = torch.stack([(m[..., 1, 0] - m[..., 0, 1]) * s, (m[..., 0, 2] + m[..., 2, 0]) * s,
                      (m[..., 1, 2] + m[..., 2, 1]) * s, 0.5 * r], -1)
    q = torch.stack([qw, qx, qy, qz], -2).gather(-2, k[..., None, None].expand(k.shape + (1, 4)))[..., 0, :]
    q = torch.where(q[..., :1] < 0, -q, q)
    return q / q.norm(dim=-1, keepdim=True)


def axis_angle_to_quaternion(aa) -> torch.Tensor:
    aa = _t(aa)
    theta = aa.norm(dim=-1, keepdim=True)
    half = theta / 2
    # sin(t/2)/t -> 1/2 at t = 0
    k = torch.where(theta < 1e-6, 0.5 - theta * theta / 48, torch.sin(half) / theta.clamp_min(_EPS))
    return torch.cat([torch.cos(half), aa * k], -1)


def quaternion_to_axis_angle(q) -> torch.Tensor:
    """[...,4] -> [...,3], angle in [0, pi] (the quaternion's sign is chosen with w >= 0)."""
    q = _t(q)
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(_EPS)
    q = torch.where(q[..., :1] < 0, -q, q)
    v = q[..., 1:]
    s = v.norm(dim=-1, keepdim=True)
    angle = 2 * torch.atan2(s, q[..., :1])
    k = torch.where(s < 1e-8, 2.0 / q[..., :1].clamp_min(_EPS), angle / s.clamp_min(_EPS))
    return v * k


def slerp(q0, q1, t) -> torch.Tensor:
    """Spherical linear interpolation of unit quaternions [...,4] at fractions t (broadcast against the leading
    dims; t = 0 gives q0, t = 1 gives q1 or -q1, the same rotation). Takes the shorter arc; nearly equal
    quaternions fall back to normalised linear interpolation."""
    q0, q1 = _t(q0), _t(q1, dtype=_t(q0).dtype)
    t = _t(t, dtype=q0.dtype)
    if t.dim() < q0.dim():
        t = t[..., None]
    dot = (q0 * q1).sum(-1, keepdim=True)
    q1 = torch.where(dot < 0, -q1, q1)
    dot = dot.abs().clamp(max=1.0)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    near = so < 1e-6
    w0 = torch.where(near, 1 - t, torch.sin((1 - t) * omega) / so.clamp_min(_EPS))
    w1 = torch.where(near, t, torch.sin(t * omega) / so.clamp_min(_EPS))
    q = w0 * q0 + w1 * q1
    return q / q.norm(dim=-1, keepdim=True).clamp_min(_EPS)


def rotation_between(a, b) -> torch.Tensor:
    """Unit quaternion [...,4] of the smallest rotation taking direction a [...,3] to direction b [...,3].
    Opposite directions rotate by pi about an axis perpendicular to a."""
    a, b = _t(a), _t(b)
    a = a / a.norm(dim=-1, keepdim=True).clamp_min(_EPS)
    b = b / b.norm(dim=-1, keepdim=True).clamp_min(_EPS)
    w = 1 + (a * b).sum(-1, keepdim=True)
    v = torch.cross(a, b, dim=-1)
    # antiparallel: any axis perpendicular to a (cross with the least aligned basis vector)
    basis = torch.eye(3, dtype=a.dtype, device=a.device)[a.abs().argmin(-1)]
    perp = torch.cross(a, basis, dim=-1)
    anti = w < 1e-9
    q = torch.where(anti, torch.cat([torch.zeros_like(w), perp], -1), torch.cat([w, v], -1))
    return q / q.norm(dim=-1, keepdim=True).clamp_min(_EPS)


def quaternion_multiply(a, b) -> torch.Tensor:
    """Hamilton product a * b (apply b first, then a)."""
    a, b = _t(a), _t(b)
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack([aw * bw - ax * bx - ay * by - az * bz, aw * bx + ax * bw + ay * bz - az * by,
                        aw * by - ax * bz + ay * bw + az * bx, aw * bz + ax * by - ay * bx + az * bw], -1)
