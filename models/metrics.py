"""Video metrics with no learned model: PSNR, SSIM, mask IoU, the IoU of an object tracked into a generated video,
centroid direction / end-point error, and InterDyn's motion fidelity. Point tracking is OpenCV pyramidal
Lucas-Kanade behind a small Tracker interface (so CoTracker3 can replace it where installed).

Shapes: frames [F,H,W,3] float 0..1 (torch or numpy; uint8 accepted), masks [F,H,W] bool/0..1, points [N,2] as
(x, y) pixel coordinates, tracks [F,N,2]."""
from __future__ import annotations

import math
from typing import Protocol

import numpy as np
import torch

PSNR_CAP_DB = 100.0  # identical frames: a finite number so means and JSON stay finite
MF_POINTS = 100


# ---------------------------------------------------------------------------- conversion helpers
def _np(x, dtype=np.float64) -> np.ndarray:
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if a.dtype == np.uint8 and dtype != np.bool_:
        return a.astype(dtype) / 255.0
    return a.astype(dtype)


def _frames(x, name: str) -> np.ndarray:
    a = _np(x)
    if a.ndim == 3:  # one image or grey frames: [F,H,W] grey
        a = a[..., None]
    if a.ndim != 4:
        raise ValueError(f"{name}: expected frames [F,H,W,C], got shape {tuple(a.shape)}")
    return a


def _pair(a, b, skip_first: bool):
    a, b = _frames(a, "generated"), _frames(b, "reference")
    if a.shape != b.shape:
        raise ValueError(f"generated {tuple(a.shape)} and reference {tuple(b.shape)} must have the same shape; "
                         "resize or trim one of them first")
    if skip_first:
        if a.shape[0] < 2:
            raise ValueError("skip_first needs at least 2 frames")
        a, b = a[1:], b[1:]
    return a, b


def _masks(m, name: str) -> np.ndarray:
    a = _np(m, np.float64)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise ValueError(f"{name}: expected masks [F,H,W], got shape {tuple(a.shape)}")
    return a > 0.5


# ---------------------------------------------------------------------------- PSNR / SSIM
def psnr_per_frame(generated, reference, *, skip_first: bool = False, data_range: float = 1.0) -> np.ndarray:
    """Per-frame PSNR in dB [F] (frame 0 dropped when skip_first, as InterDyn reports), capped at PSNR_CAP_DB."""
    a, b = _pair(generated, reference, skip_first)
    mse = ((a - b) ** 2).reshape(a.shape[0], -1).mean(1)
    with np.errstate(divide="ignore"):
        v = 10.0 * np.log10(data_range ** 2 / mse)
    return np.minimum(v, PSNR_CAP_DB)


def psnr(generated, reference, *, skip_first: bool = False, data_range: float = 1.0) -> float:
    """Mean of the frame-wise PSNR (dB)."""
    return float(psnr_per_frame(generated, reference, skip_first=skip_first, data_range=data_range).mean())


def gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """Normalised 1-D Gaussian [size] (the 2-D window is its outer product)."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-(x ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def ssim_per_frame(generated, reference, *, skip_first: bool = False, data_range: float = 1.0,
                   win_size: int = 11, sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03) -> np.ndarray:
    """Per-frame SSIM [F] (Wang et al. 2004): Gaussian 11x11 window, sigma 1.5, C1=(0.01 L)^2, C2=(0.03 L)^2,
    local statistics at every position where the window fits (no padding), per channel, then the mean over
    positions and channels. Population (biased) local variances, as in the paper's formula."""
    a, b = _pair(generated, reference, skip_first)
    if min(a.shape[1], a.shape[2]) < win_size:
        raise ValueError(f"SSIM needs frames at least {win_size}x{win_size}, got {a.shape[1]}x{a.shape[2]}")
    g = torch.from_numpy(gaussian_window(win_size, sigma))
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2

    def blur(x):  # x [N,1,H,W] float64, separable valid filtering
        x = torch.nn.functional.conv2d(x, g.view(1, 1, -1, 1))
        return torch.nn.functional.conv2d(x, g.view(1, 1, 1, -1))

    f, h, w, c = a.shape
    x = torch.from_numpy(a).permute(0, 3, 1, 2).reshape(f * c, 1, h, w)
    y = torch.from_numpy(b).permute(0, 3, 1, 2).reshape(f * c, 1, h, w)
    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return s.reshape(f, -1).mean(1).numpy()


def ssim(generated, reference, *, skip_first: bool = False, data_range: float = 1.0) -> float:
    """Mean of the frame-wise SSIM."""
    return float(ssim_per_frame(generated, reference, skip_first=skip_first, data_range=data_range).mean())


# ---------------------------------------------------------------------------- masks
def mask_iou(a, b) -> np.ndarray:
    """Per-frame IoU [F] of two mask videos [F,H,W] (or [H,W]); two empty masks count as 1."""
    a, b = _masks(a, "a"), _masks(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"mask_iou: shapes differ, {a.shape} vs {b.shape}")
    inter = (a & b).reshape(a.shape[0], -1).sum(1)
    union = (a | b).reshape(a.shape[0], -1).sum(1)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def centroid_trajectory(masks) -> np.ndarray:
    """Mask centroids [F,2] as (x, y) pixels; NaN for an empty frame."""
    m = _masks(masks, "masks")
    out = np.full((m.shape[0], 2), np.nan)
    for t, mt in enumerate(m):
        ys, xs = np.nonzero(mt)
        if len(xs):
            out[t] = xs.mean(), ys.mean()
    return out


def _trajectory(x) -> np.ndarray:
    a = _np(x)
    return a if (a.ndim == 2 and a.shape[1] == 2) else centroid_trajectory(a)


def centroid_direction_error(generated, reference, *, min_displacement: float = 0.5) -> float:
    """Angle in degrees [0, 180] between the centroid displacements (last frame minus frame 0) of the generated
    and the reference object. Each input is a mask video [F,H,W] or a trajectory [F,2]. NaN when either object
    moves less than min_displacement px (no direction to compare)."""
    tg, tr = _trajectory(generated), _trajectory(reference)
    dg, dr = tg[-1] - tg[0], tr[-1] - tr[0]
    ng, nr = float(np.linalg.norm(dg)), float(np.linalg.norm(dr))
    if not (ng >= min_displacement and nr >= min_displacement):  # also catches NaN from empty masks
        return float("nan")
    cos = float(np.clip(np.dot(dg, dr) / (ng * nr), -1.0, 1.0))
    return math.degrees(math.acos(cos))


def endpoint_error(generated, reference) -> float:
    """Distance in px between the last-frame centroids (masks [F,H,W] or trajectories [F,2])."""
    tg, tr = _trajectory(generated), _trajectory(reference)
    return float(np.linalg.norm(tg[-1] - tr[-1]))


# ---------------------------------------------------------------------------- point tracking
class Tracker(Protocol):
    def track(self, frames: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """frames [F,H,W,3] float 0..1, points [N,2] (x, y) at frame 0 -> (tracks [F,N,2], visible [F,N] bool)."""


class LKTracker:
    """OpenCV pyramidal Lucas-Kanade, frame to frame, with a forward-backward check. A point that fails in a step
    (LK status or forward-backward error > fb_max_px) is marked not visible at that frame and moved by the median
    step of the points that passed (a rigid-motion guess, as dense trackers do through occlusion); LK tries it
    again from there in the next step."""

    def __init__(self, win_size: int = 15, levels: int = 3, fb_max_px: float = 1.0, iterations: int = 50,
                 eps: float = 1e-3):
        self.win_size, self.levels, self.fb_max_px = win_size, levels, fb_max_px
        self.iterations, self.eps = iterations, eps

    def track(self, frames, points):
        import cv2

        f = _frames(frames, "frames")
        grey = [cv2.cvtColor(np.clip(np.rint(x * 255), 0, 255).astype(np.uint8), cv2.COLOR_RGB2GRAY)
                if x.shape[-1] == 3 else np.clip(np.rint(x[..., 0] * 255), 0, 255).astype(np.uint8) for x in f]
        p = np.asarray(points, np.float32).reshape(-1, 1, 2)
        n = p.shape[0]
        tracks = np.zeros((len(grey), n, 2), np.float64)
        vis = np.zeros((len(grey), n), bool)
        tracks[0], vis[0] = p[:, 0], True
        kw = dict(winSize=(self.win_size, self.win_size), maxLevel=self.levels,
                  criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, self.iterations, self.eps))
        for t in range(1, len(grey)):
            prev = tracks[t - 1].astype(np.float32).reshape(-1, 1, 2)
            nxt, st, _ = cv2.calcOpticalFlowPyrLK(grey[t - 1], grey[t], prev, None, **kw)
            back, st2, _ = cv2.calcOpticalFlowPyrLK(grey[t], grey[t - 1], nxt, None, **kw)
            fb = np.linalg.norm((back - prev).reshape(-1, 2), axis=1)
            ok = (st.ravel() == 1) & (st2.ravel() == 1) & (fb <= self.fb_max_px)
            step = nxt.reshape(-1, 2) - tracks[t - 1]
            guess = np.median(step[ok], 0) if ok.any() else np.zeros(2)
            tracks[t] = tracks[t - 1] + np.where(ok[:, None], step, guess)
            vis[t] = ok
        return tracks, vis


def default_tracker() -> Tracker:
    return LKTracker()


def sample_mask_points(mask, n: int = MF_POINTS, seed: int = 0) -> np.ndarray | None:
    """n points (x, y) drawn uniformly without replacement from the pixels of a mask [H,W] (pixel centres), with a
    fixed seed; None when the mask has fewer than n pixels (InterDyn drops such videos)."""
    m = _masks(mask, "mask")[0]
    ys, xs = np.nonzero(m)
    if len(xs) < n:
        return None
    idx = np.random.default_rng(seed).choice(len(xs), size=n, replace=False)
    return np.stack([xs[idx], ys[idx]], 1).astype(np.float64)


def translate_mask(mask, dx: float, dy: float) -> np.ndarray:
    """Shift a mask [H,W] by (dx, dy) px (bilinear coverage >= 0.5, i.e. nearest for sub-pixel shifts); pixels
    shifted in from outside are empty."""
    import cv2

    m = _masks(mask, "mask")[0].astype(np.float32)
    M = np.float32([[1, 0, dx], [0, 1, dy]])
    w = cv2.warpAffine(m, M, (m.shape[1], m.shape[0]), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    return w >= 0.5


TRACK_METHODS = ("match", "lk")


def _match_object(frame: np.ndarray, tmpl: np.ndarray, tmask: np.ndarray, top_left: np.ndarray, pred: np.ndarray,
                  radius: int) -> np.ndarray:
    """Translation (dx, dy) of the frame-0 object (template [h,w,C] with mask [h,w,C], at top_left (x, y) in frame
    0) in `frame` [H,W,C], searched within +-radius px of the predicted translation: the minimum of the masked
    sum of squared colour differences, refined to sub-pixel by a parabola through its neighbours. The frame is
    edge-padded so an object partly leaving the picture still has a place to match."""
    import cv2

    h, w = tmpl.shape[:2]
    pad = radius + max(h, w)
    big = cv2.copyMakeBorder(frame, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    if big.ndim == 2:
        big = big[..., None]
    cx, cy = (top_left + np.round(pred)).astype(int) + pad  # predicted top-left in padded coordinates
    # a wild prediction (LK on a noisy generated frame) must not push the search window off the padded frame
    x0 = int(np.clip(cx - radius, 0, big.shape[1] - (w + 2 * radius)))
    y0 = int(np.clip(cy - radius, 0, big.shape[0] - (h + 2 * radius)))
    region = np.ascontiguousarray(big[y0:y0 + h + 2 * radius, x0:x0 + w + 2 * radius])
    res = cv2.matchTemplate(region, tmpl, cv2.TM_SQDIFF, mask=tmask)
    _, _, (u, v), _ = cv2.minMaxLoc(res)

    def vertex(m1, m0, p1):  # parabola through (-1, m1), (0, m0), (1, p1)
        d = m1 - 2 * m0 + p1
        return float(np.clip(0.5 * (m1 - p1) / d, -0.5, 0.5)) if d > 1e-12 else 0.0

    sx = vertex(res[v, u - 1], res[v, u], res[v, u + 1]) if 0 < u < res.shape[1] - 1 else 0.0
    sy = vertex(res[v - 1, u], res[v, u], res[v + 1, u]) if 0 < v < res.shape[0] - 1 else 0.0
    return np.array([x0 + u + sx - pad - top_left[0], y0 + v + sy - pad - top_left[1]], np.float64)


def track_object(frames, mask0, *, tracker: Tracker | None = None, method: str = "match", n_points: int = 200,
                 seed: int = 0, search_px: int = 12, refine: str = "none",
                 colour_tol: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    """Find an object, given by its frame-0 mask [H,W], in every frame of a video [F,H,W,3] without a learned
    segmenter. Returns (masks bool [F,H,W], translation [F,2] (dx, dy) from frame 0).

    1. Points: up to n_points pixels of the frame-0 mask are tracked (Tracker, LK by default). The LK translation
       at frame t is the median displacement from frame 0 of the points visible at t.
    2. method="match" (default): the frame-0 object's pixels (its appearance, the mask as template mask) are
       matched in frame t by least squared colour difference within +-search_px of the position predicted by
       the previous frame's match plus the LK step (sub-pixel by a parabola fit). Needed because LK alone
       under-reads the motion of small uniformly coloured objects (their interior has no gradient, the
       windows see the static ground). method="lk": the LK translation alone.
    3. The frame-0 mask is shifted by the translation (bilinear coverage >= 0.5).
    4. refine="colour" then keeps, within the shifted mask dilated by 3 px, the pixels whose RGB distance to the
       frame-0 object's mean colour is below max(colour_tol, 2 x its spread): it follows shape changes a
       translation misses (falls back to the shifted mask when fewer than a quarter of its pixels pass).
    Rotation and scale are not modelled: on real footage (SSv2, the shared InterDyn examples) a video tracked into
    itself scores a mean IoU of about 0.4-0.85 against SAM2 masks, so use it to compare methods, not as an
    absolute."""
    import cv2

    f = _frames(frames, "frames")
    m0 = _masks(mask0, "mask0")[0]
    if m0.shape != f.shape[1:3]:
        raise ValueError(f"mask0 {m0.shape} does not match the frames' size {f.shape[1:3]}")
    if refine not in ("none", "colour"):
        raise ValueError(f"refine: expected 'none' or 'colour', got {refine!r}")
    if method not in TRACK_METHODS:
        raise ValueError(f"method: expected one of {TRACK_METHODS}, got {method!r}")
    F = f.shape[0]
    shift = np.zeros((F, 2))
    if not m0.any():
        return np.zeros((F,) + m0.shape, bool), shift
    pts = sample_mask_points(m0, min(n_points, int(m0.sum())), seed)
    tracks, vis = (tracker or default_tracker()).track(f, pts)
    lk = np.zeros((F, 2))
    for t in range(1, F):
        ok = vis[t]
        lk[t] = np.median(tracks[t][ok] - tracks[0][ok], 0) if ok.any() else lk[t - 1]
    if method == "lk":
        shift = lk
    else:
        ys, xs = np.nonzero(m0)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        f32 = f.astype(np.float32)
        tmpl = np.ascontiguousarray(f32[0, y0:y1, x0:x1])
        tmask = np.ascontiguousarray(np.repeat(m0[y0:y1, x0:x1, None], f.shape[-1], -1).astype(np.float32))
        for t in range(1, F):
            pred = shift[t - 1] + (lk[t] - lk[t - 1])
            shift[t] = _match_object(f32[t], tmpl, tmask, np.array([x0, y0]), pred, search_px)
    masks = np.stack([translate_mask(m0, *shift[t]) if t else m0 for t in range(F)])
    if refine == "colour" and f.shape[-1] == 3:
        obj = f[0][m0]
        mu, spread = obj.mean(0), float(np.linalg.norm(obj.std(0)))
        tol = max(colour_tol, 2.0 * spread)
        kernel = np.ones((7, 7), np.uint8)
        for t in range(1, F):
            band = cv2.dilate(masks[t].astype(np.uint8), kernel) > 0
            close = np.linalg.norm(f[t] - mu, axis=-1) < tol
            r = band & close
            if r.sum() >= 0.25 * max(masks[t].sum(), 1):
                masks[t] = r
    return masks, shift


def tracked_object_iou(generated, reference_masks, *, tracker: Tracker | None = None, skip_first: bool = True,
                       method: str = "match", refine: str = "none") -> np.ndarray:
    """Per-frame IoU [F or F-1] between the object tracked into the generated video [F,H,W,3] (from the reference
    frame-0 mask, frame 0 being shared) and the reference masks [F,H,W]."""
    ref = _masks(reference_masks, "reference_masks")
    gen_masks, _ = track_object(generated, ref[0], tracker=tracker, method=method, refine=refine)
    iou = mask_iou(gen_masks, ref)
    return iou[1:] if skip_first else iou


# ---------------------------------------------------------------------------- motion fidelity (InterDyn)
def tracklet_correlation(tracks_a, tracks_b, eps: float = 1e-6) -> np.ndarray:
    """corr[i, j] = mean over the F-1 steps of the cosine similarity between the per-frame displacement of
    tracklet i of A [F,N,2] and tracklet j of B [F,M,2]. Norms are clamped to >= eps, so a step in which either
    point stands still contributes 0. Returns [N,M]."""
    a, b = _np(tracks_a), _np(tracks_b)
    va, vb = np.diff(a, axis=0), np.diff(b, axis=0)  # [F-1,N,2], [F-1,M,2]
    ua = va / np.maximum(np.linalg.norm(va, axis=-1, keepdims=True), eps)
    ub = vb / np.maximum(np.linalg.norm(vb, axis=-1, keepdims=True), eps)
    # Only a step where both vectors have length > eps keeps a non-zero product.
    ua = np.where(np.linalg.norm(va, axis=-1, keepdims=True) > eps, ua, 0.0)
    ub = np.where(np.linalg.norm(vb, axis=-1, keepdims=True) > eps, ub, 0.0)
    return np.einsum("kic,kjc->ij", ua, ub) / va.shape[0]


def motion_fidelity_from_tracks(tracks_generated, tracks_reference) -> float:
    """MF = (1/m) sum over generated tracklets of the best correlation with a reference tracklet
    + (1/n) sum over reference tracklets of the best correlation with a generated one. Range [-2, 2], no 1/2
    factor (InterDyn's printed formula, after Yatim et al. 2024)."""
    corr = tracklet_correlation(tracks_reference, tracks_generated)  # [n, m]
    return float(corr.max(0).mean() + corr.max(1).mean())


def motion_fidelity(generated, reference, mask0, *, tracker: Tracker | None = None, n_points: int = MF_POINTS,
                    seed: int = 0) -> float:
    """InterDyn's motion fidelity: n_points (100) points sampled in the frame-0 object mask [H,W] are tracked
    through the reference and the generated video [F,H,W,3] (same queries: frame 0 is shared), then
    motion_fidelity_from_tracks. NaN when the mask has fewer than n_points pixels (the paper drops the video)."""
    pts = sample_mask_points(mask0, n_points, seed)
    if pts is None:
        return float("nan")
    tracker = tracker or default_tracker()
    tg, _ = tracker.track(_frames(generated, "generated"), pts)
    tr, _ = tracker.track(_frames(reference, "reference"), pts)
    return motion_fidelity_from_tracks(tg, tr)


# ---------------------------------------------------------------------------- hand pose (PAM)
def mpjpe_per_frame(predicted, reference, *, root: int | None = 0, valid=None) -> np.ndarray:
    """Mean per-joint position error per frame [F] between joints [F,J,D] (D = 2 pixels or 3 metres; any units,
    returned in the same): both sets are first translated so joint ``root`` (the wrist, 0) is at the origin
    (PAM's root alignment), None skips the alignment. valid [F] bool marks the frames to score; the others and
    frames with non-finite joints are NaN. Keypoints come from any estimator (HaMeR, ...) as data."""
    a, b = _np(predicted), _np(reference)
    a, b = (a[None] if a.ndim == 2 else a), (b[None] if b.ndim == 2 else b)
    if a.shape != b.shape or a.ndim != 3 or a.shape[-1] not in (2, 3):
        raise ValueError(f"predicted {tuple(a.shape)} and reference {tuple(b.shape)} joints must both be [F,J,2] or "
                         "[F,J,3]; trim or resample one of them first")
    if root is not None:
        a, b = a - a[:, root:root + 1], b - b[:, root:root + 1]
    err = np.linalg.norm(a - b, axis=-1).mean(-1)
    ok = np.isfinite(err)
    if valid is not None:
        ok &= np.asarray(valid, bool).reshape(-1)
    return np.where(ok, err, np.nan)


def mpjpe(predicted, reference, *, root: int | None = 0, valid=None) -> float:
    """Mean over the scored frames of mpjpe_per_frame (NaN when none is scored)."""
    e = mpjpe_per_frame(predicted, reference, root=root, valid=valid)
    return float(np.nanmean(e)) if np.isfinite(e).any() else float("nan")
