"""Sandbox dataset files: write_clip / read_clip and the SandboxDataset reader (format in FORMAT.md).

A clip is a folder:  <name>/clip.json  (sidecar: fps, size, camera, caption, objects, driven, ...)
                     <name>/data.npz   (masks, id_map, pusher_mask, vel_world, vel_image, vel_control, pos_world)
                     <name>/frames/00000.png ...   or   <name>/video.mp4
Files are written byte-for-byte reproducibly (PNG without timestamps, npz zip entries with a fixed date) and
atomically (a hidden temporary folder renamed into place), so an interrupted run leaves no half clip.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..conditions.velocity import velocity_video
from .types import SceneClip

FORMAT = "interplay-sandbox-clip"
VERSION = 1
SIDECAR, ARRAYS, FRAMES_DIR, VIDEO = "clip.json", "data.npz", "frames", "video.mp4"
ARRAY_KEYS = ("masks", "id_map", "pusher_mask", "vel_world", "vel_image", "vel_control", "pos_world", "hand_joints",
              "object_pose")
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


# ------------------------------------------------------------------------------------------ writing
def _save_npz(path: Path, arrays: dict) -> None:
    """np.savez_compressed without the wall-clock timestamps (same arrays -> same bytes)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for k, a in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(a), allow_pickle=False)
            info = zipfile.ZipInfo(f"{k}.npy", date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())


def sidecar(clip: SceneClip, video: str = "png") -> dict:
    H, W = clip.size
    return dict(format=FORMAT, version=VERSION, preset=clip.preset, seed=int(clip.seed), fps=float(clip.fps),
                num_frames=clip.num_frames, height=H, width=W, video=video, caption=clip.caption,
                captions=[clip.caption], objects=clip.objects, driven=[int(i) for i in clip.driven],
                camera=clip.camera, events=clip.events, meta=clip.meta,
                axes=dict(vel_world="m/s, world x,y on the ground, z up",
                          vel_image="px/frame, +x right, +y up the image",
                          vel_control="m/s, +x image right, +y up the image along the ground, +z out of the ground"))


def write_clip(clip: SceneClip, folder, video: str = "png") -> Path:
    """Write one clip to ``folder`` (created; replaced atomically if it exists). video: "png" | "mp4"."""
    from PIL import Image

    if video not in ("png", "mp4"):
        raise ValueError(f"write_clip: video must be 'png' or 'mp4'; got {video!r}")
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.tmp{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    if video == "png":
        (tmp / FRAMES_DIR).mkdir()
        for f, rgb in enumerate(clip.frames):
            Image.fromarray(rgb).save(tmp / FRAMES_DIR / f"{f:05d}.png", compress_level=6)
    else:
        from ..video_io import save_video

        save_video(clip.frames, tmp / VIDEO, fps=clip.fps, format="mp4")
    arrays = dict(masks=clip.masks.astype(bool), id_map=clip.id_map.astype(np.int16),
                  pusher_mask=clip.pusher_mask.astype(bool), vel_world=clip.vel_world.astype(np.float32),
                  vel_image=clip.vel_image.astype(np.float32), vel_control=clip.vel_control.astype(np.float32))
    if clip.pos_world is not None:
        arrays["pos_world"] = clip.pos_world.astype(np.float32)
    if clip.hand_joints is not None:  # hand-object clips: what the HOI renderer needs for PAM's conditions
        arrays["hand_joints"] = clip.hand_joints.astype(np.float32)
    if clip.object_pose is not None:
        arrays["object_pose"] = clip.object_pose.astype(np.float32)
    _save_npz(tmp / ARRAYS, arrays)
    (tmp / SIDECAR).write_text(json.dumps(sidecar(clip, video), indent=1) + "\n")
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return folder


# ------------------------------------------------------------------------------------------ reading
class ClipError(ValueError):
    """A malformed clip; the message names the file."""


def _read_frames(folder: Path, meta: dict, max_frames: int | None) -> np.ndarray:
    from PIL import Image

    fdir = folder / FRAMES_DIR
    if fdir.is_dir():
        files = sorted(p for p in fdir.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        if max_frames:
            files = files[:max_frames]
        if not files:
            raise ClipError(f"{fdir}: no PNG/JPEG frames")
        out = []
        for p in files:
            try:
                with Image.open(p) as im:
                    out.append(np.asarray(im.convert("RGB")))
            except Exception as ex:  # PIL raises several types for broken files
                raise ClipError(f"{p}: unreadable image ({type(ex).__name__}: {ex})") from ex
        if any(a.shape != out[0].shape for a in out):
            raise ClipError(f"{fdir}: frames have different sizes")
        return np.stack(out)
    videos = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".mp4", ".webm", ".mov", ".mkv"))
    if not videos:
        raise ClipError(f"{folder}: neither a {FRAMES_DIR}/ folder nor a video file")
    from ..video_io import load_video

    try:
        frames, _ = load_video(videos[0], max_frames=max_frames or None)
    except Exception as ex:
        raise ClipError(f"{videos[0]}: {ex}") from ex
    u8 = (frames.numpy() * 255 + 0.5).astype(np.uint8)
    H, W = int(meta.get("height", u8.shape[1])), int(meta.get("width", u8.shape[2]))
    return u8[:, :H, :W]  # mp4 may be padded to even sizes


def read_clip(folder, max_frames: int | None = None) -> SceneClip:
    """Read a clip folder. Raises ClipError (a ValueError naming the file) when it is malformed.
    User clips may omit id_map (derived from masks), masks (derived from id_map), velocities (zeros) and
    pusher_mask (all False); they need clip.json with fps, and frames."""
    folder = Path(folder)
    side = folder / SIDECAR
    try:
        meta = json.loads(side.read_text())
    except FileNotFoundError as ex:
        raise ClipError(f"{side}: missing sidecar") from ex
    except (json.JSONDecodeError, UnicodeDecodeError) as ex:
        raise ClipError(f"{side}: not valid JSON ({ex})") from ex
    if not isinstance(meta, dict) or "fps" not in meta:
        raise ClipError(f"{side}: expected an object with at least 'fps'")
    frames = _read_frames(folder, meta, max_frames)
    F, H, W = frames.shape[:3]
    arrays: dict = {}
    npz = folder / ARRAYS
    if npz.exists():
        try:
            with np.load(npz, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except Exception as ex:
            raise ClipError(f"{npz}: unreadable ({type(ex).__name__}: {ex})") from ex
    objects = list(meta.get("objects", []))
    if "masks" in arrays:
        masks = arrays["masks"].astype(bool)[:, :F]
    elif "id_map" in arrays:
        n = max(int(arrays["id_map"].max(initial=0)), len(objects))
        masks = np.stack([arrays["id_map"][:F] == i + 1 for i in range(n)]) if n else np.zeros((0, F, H, W), bool)
    else:
        masks = np.zeros((len(objects), F, H, W), bool)
    N = masks.shape[0]
    if masks.shape[1:] != (F, H, W):
        raise ClipError(f"{npz}: masks {masks.shape} do not match frames {(F, H, W)}")
    if "id_map" in arrays:
        id_map = arrays["id_map"].astype(np.int16)[:F]
    else:
        id_map = np.zeros((F, H, W), np.int16)
        for i in range(N):
            id_map[masks[i]] = i + 1
    if id_map.shape != (F, H, W):
        raise ClipError(f"{npz}: id_map {id_map.shape} does not match frames {(F, H, W)}")
    pusher = arrays.get("pusher_mask", np.zeros((F, H, W), bool)).astype(bool)[:F]

    def vel(key, c):
        v = arrays.get(key, np.zeros((N, F, c), np.float32)).astype(np.float32)[:, :F]
        if v.shape != (N, F, c):
            raise ClipError(f"{npz}: {key} has shape {v.shape}, expected {(N, F, c)}")
        return v

    driven = [int(i) for i in meta.get("driven", [])]
    if any(not 0 <= i < N for i in driven):
        raise ClipError(f"{side}: driven {driven} refers to objects outside 0..{N - 1}")
    pos = arrays.get("pos_world")
    hand, opose = arrays.get("hand_joints"), arrays.get("object_pose")
    if hand is not None and hand.shape[1:] != (21, 3):
        raise ClipError(f"{npz}: hand_joints has shape {hand.shape}, expected [F,21,3]")
    if opose is not None and (opose.ndim != 4 or opose.shape[0] != N or opose.shape[2:] != (4, 4)):
        raise ClipError(f"{npz}: object_pose has shape {opose.shape}, expected [N,F,4,4] with N = {N}")
    return SceneClip(frames=frames, masks=masks, id_map=id_map, pusher_mask=pusher,
                     vel_world=vel("vel_world", 3), vel_image=vel("vel_image", 2), vel_control=vel("vel_control", 3),
                     objects=objects, driven=driven, caption=str(meta.get("caption", "")),
                     camera=meta.get("camera", {}), fps=float(meta["fps"]), seed=int(meta.get("seed", -1)),
                     preset=str(meta.get("preset", "user")),
                     pos_world=None if pos is None else pos.astype(np.float32)[:, :F],
                     events=list(meta.get("events", [])), meta=dict(meta.get("meta", {})),
                     hand_joints=None if hand is None else hand.astype(np.float32)[:F],
                     object_pose=None if opose is None else opose.astype(np.float32)[:, :F])


def _whole(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) or isinstance(v, float) and v.is_integer()


def check_frames(frames, where: str = "SandboxDataset") -> int | None:
    """``frames``: None or 0 (every frame) or a whole number >= 1; anything else is refused by name."""
    if frames is None or (_whole(frames) and int(frames) == 0):
        return None
    if not _whole(frames) or int(frames) < 1:
        raise ValueError(f"{where}: 'frames' must be a whole number >= 1 (0 or none: all frames); got {frames!r}")
    return int(frames)


def check_size(size, where: str = "SandboxDataset") -> tuple[int, int] | None:
    """``size``: None, or [H, W] of whole numbers from 8 to 4096 (the sizes the sandbox renders)."""
    if size is None:
        return None
    if not isinstance(size, (list, tuple)) or len(size) != 2 or not all(_whole(v) and 8 <= v <= 4096 for v in size):
        raise ValueError(f"{where}: 'size' must be [H, W], two whole numbers from 8 to 4096; got {size!r}")
    return int(size[0]), int(size[1])


def list_clips(root) -> list[Path]:
    """Clip folders under root (those holding clip.json), in natural name order."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"sandbox dataset folder not found: {root} (searched {root.resolve()})")
    return sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                   and (p / SIDECAR).exists()), key=lambda p: p.name)


# ------------------------------------------------------------------------------------------ HOI conditions
HOI_KEYS = ("hoi_depth", "hoi_seg", "hoi_hand")
HOI_RENDER_OPTIONS = ("style", "depth_range", "near", "far", "points", "radius", "min_area", "seed")
_PAM_AREA = 480 * 720  # the size PAM's renderer settings (50 px smallest component) are meant for


def is_hoi_clip(clip: SceneClip) -> bool:
    """A hand-object clip: it carries the hand's joints or the objects' poses (the 'hoi' preset, or user clips)."""
    return clip.hand_joints is not None or clip.object_pose is not None


def check_hoi(hoi, where: str = "SandboxDataset") -> dict | None:
    """``hoi``: False/None (off), True (render with the defaults) or a dict of render options
    (conditions.hoi_render.render_hoi_conditions: style, depth_range, near, far, points, radius, min_area, seed)."""
    if hoi is None or hoi is False:
        return None
    if hoi is True:
        return {}
    if not isinstance(hoi, dict):
        raise ValueError(f"{where}: 'hoi' must be true, false or an object of render options; got {hoi!r}")
    bad = sorted(set(hoi) - set(HOI_RENDER_OPTIONS))
    if bad:
        raise ValueError(f"{where}: 'hoi' has unknown render option(s) {', '.join(bad)}; expected some of "
                         f"{', '.join(HOI_RENDER_OPTIONS)}")
    return dict(hoi)


def render_clip_conditions(clip: SceneClip, size: tuple[int, int] | None = None, options: dict | None = None):
    """PAM's condition videos of a hand-object clip, made by the one renderer: ``sequence_from_scene`` then
    ``render_hoi_conditions`` at ``size`` (default the clip's own). Unless given, the splat radius and the
    smallest kept label component scale with the frame (PAM's 2 px and 50 px at 480 x 720; 0 px and 1 px, i.e.
    single-pixel points and nothing dropped, at sandbox sizes), so silhouettes of tiny clips are not dilated
    by several pixels or deleted. Returns hoi.HOIConditions."""
    from ..conditions.hoi_datasets import sequence_from_scene
    from ..conditions.hoi_render import render_hoi_conditions

    H, W = size or clip.size
    opts = dict(options or {})
    opts.setdefault("radius", int(round(2 * (H * W / _PAM_AREA) ** 0.5)))
    opts.setdefault("min_area", max(1, round(50 * H * W / _PAM_AREA)))
    return render_hoi_conditions(sequence_from_scene(clip), size=(H, W), progress=False, **opts)


class _RenderCache:
    """Rendered conditions per clip (uint8, as the renderer makes them), least recently used dropped past
    ``max_bytes``: a clip is rendered once per dataset, not once per step."""

    def __init__(self, max_bytes: int):
        from collections import OrderedDict

        self.max_bytes, self.bytes, self.items = int(max_bytes), 0, OrderedDict()
        self.renders = 0

    def get(self, key, make):
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        val = make()
        self.renders += 1
        n = sum(v.numel() for v in val.values())
        if n <= self.max_bytes:
            self.items[key] = val
            self.bytes += n
            while self.bytes > self.max_bytes:
                _, old = self.items.popitem(last=False)
                self.bytes -= sum(v.numel() for v in old.values())
        return val


def _u8(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


# ------------------------------------------------------------------------------------------ torch
class SandboxDataset(Dataset):
    """Clips under ``root`` as dicts of tensors.

    Item keys: frames float32 [F,H,W,3] 0..1; masks float32 [N,F,H,W]; id_map int64 [F,H,W]; pusher_mask float32
    [F,H,W]; vel_world [N,F,3], vel_image [N,F,2], vel_control [N,F,3] float32; driven int64 [k];
    control float32 [F,H,W,3] = conditions.velocity.velocity_video of the driven objects (KineMask: only the
    initially moving objects are annotated); driven_mask float32 [F,H,W]; caption str; fps float; name str;
    camera_c2w float64 [F,4,4] (poses relative to frame 0), camera_intrinsics [4] and has_camera (0/1): see
    :func:`camera_poses`.
    objects, events: the sidecar's lists (object names for MATRIX prompts, collisions).

    ``frames`` keeps the first F frames (clips shorter than that are skipped); ``size`` (H, W) resizes
    (frames bilinear, masks nearest, vel_image rescaled). A clip that fails to read is reported once by file
    name (warnings + ``self.skipped``) and the next good clip is returned instead; none of it raises.

    ``hoi`` (off by default; True or a dict of render options, see ``check_hoi``): hand-object clips (those with
    ``hand_joints`` or ``object_pose``) also yield PAM's condition videos ``hoi_depth``, ``hoi_seg``, ``hoi_hand``
    float32 [F,H,W,3] 0..1 at the item's size (``render_clip_conditions``), rendered once per clip and kept in
    memory up to ``hoi_cache_mb``; every other clip's item is unchanged.
    """

    def __init__(self, root, frames: int | None = None, size: tuple[int, int] | None = None, transform=None,
                 validate: bool = True, hoi=False, hoi_cache_mb: int = 4096):
        self.root = Path(root)
        self.frames = check_frames(frames)
        self.size = check_size(size)
        self.hoi = check_hoi(hoi)
        self.hoi_cache = _RenderCache(int(hoi_cache_mb) << 20)
        self.transform = transform
        self.skipped: list[tuple[str, str]] = []
        clips = list_clips(self.root)
        if validate:
            good = []
            for p in clips:
                why = self._check_sidecar(p)
                if why:
                    self._skip(p, why)
                else:
                    good.append(p)
            clips = good
        self.clips = clips
        if not self.clips:
            raise FileNotFoundError(f"SandboxDataset: no readable clips (folders with {SIDECAR}) in {self.root}"
                                    + (f"; skipped {len(self.skipped)}: {self.skipped[0][1]}" if self.skipped else ""))

    def _check_sidecar(self, p: Path) -> str | None:
        try:
            meta = json.loads((p / SIDECAR).read_text())
        except Exception as ex:
            return f"{p / SIDECAR}: not valid JSON ({ex})"
        if not isinstance(meta, dict) or "fps" not in meta:
            return f"{p / SIDECAR}: expected an object with at least 'fps'"
        if self.frames and int(meta.get("num_frames", self.frames)) < self.frames:
            return f"{p / SIDECAR}: {meta.get('num_frames')} frames, fewer than the {self.frames} requested"
        return None

    def _skip(self, p: Path, why: str) -> None:
        self.skipped.append((str(p), why))
        warnings.warn(f"SandboxDataset: skipping malformed clip {why}", stacklevel=3)

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, idx: int) -> dict:
        n = len(self.clips)
        for k in range(n):
            p = self.clips[(idx + k) % n]
            if any(s[0] == str(p) for s in self.skipped):
                continue
            try:
                item = self.load(p)
            except (ClipError, OSError, ValueError) as ex:
                self._skip(p, str(ex))
                continue
            return self.transform(item) if self.transform is not None else item
        raise RuntimeError(f"SandboxDataset: every clip under {self.root} is malformed; see .skipped")

    def load(self, p: Path) -> dict:
        clip = read_clip(p, max_frames=self.frames)
        F = clip.num_frames
        if self.frames and F < self.frames:
            raise ClipError(f"{p}: {F} frames, fewer than the {self.frames} requested")
        frames = torch.from_numpy(clip.frames).float() / 255.0
        masks = torch.from_numpy(clip.masks).float()
        id_map = torch.from_numpy(clip.id_map.astype(np.int64))
        pusher = torch.from_numpy(clip.pusher_mask).float()
        vel_image = torch.from_numpy(clip.vel_image)
        if self.size is not None and self.size != clip.size:
            H, W = self.size
            h0, w0 = clip.size
            frames = torch.nn.functional.interpolate(frames.permute(0, 3, 1, 2), size=(H, W), mode="bilinear",
                                                     antialias=True, align_corners=False).permute(0, 2, 3, 1)
            frames = frames.clamp(0, 1)
            near = lambda x: torch.nn.functional.interpolate(x, size=(H, W), mode="nearest")  # noqa: E731
            if masks.shape[0]:
                masks = near(masks)
            id_map = near(id_map[None].float())[0].long()
            pusher = near(pusher[None])[0]
            vel_image = vel_image * torch.tensor([W / w0, H / h0])
        driven = torch.tensor(clip.driven, dtype=torch.long)
        vc = torch.from_numpy(clip.vel_control)
        if len(clip.driven):
            control = velocity_video(masks[driven], vc[driven])
            driven_mask = masks[driven].amax(0)
        else:
            control = torch.zeros(*frames.shape[:3], 3)
            driven_mask = torch.zeros(frames.shape[:3])
        c2w, intr, has_cam = camera_poses(clip.camera, F, clip.size)
        item = dict(frames=frames, masks=masks, id_map=id_map, pusher_mask=pusher,
                    vel_world=torch.from_numpy(clip.vel_world), vel_image=vel_image, vel_control=vc,
                    driven=driven, control=control, driven_mask=driven_mask, caption=clip.caption,
                    fps=float(clip.fps), name=p.name, camera_c2w=c2w, camera_intrinsics=intr,
                    has_camera=has_cam, objects=list(clip.objects),
                    events=list(clip.events))
        if self.hoi is not None and is_hoi_clip(clip):
            item.update({k: v.float() / 255.0 for k, v in self._hoi_videos(p, clip, tuple(frames.shape[1:3])).items()})
        return item

    def _hoi_videos(self, p: Path, clip: SceneClip, size: tuple[int, int]) -> dict:
        if not clip.camera or "K" not in clip.camera or "world_to_camera" not in clip.camera:
            raise ClipError(f"{p / SIDECAR}: a hand-object clip needs 'camera' with K and world_to_camera to render "
                            "PAM's conditions")
        stamp = tuple((p / n).stat().st_mtime_ns if (p / n).exists() else 0 for n in (SIDECAR, ARRAYS))
        key = (str(p), stamp, clip.num_frames, size)

        def make():
            from ..conditions.hoi import HOIFormatError

            try:
                c = render_clip_conditions(clip, size, self.hoi)
            except HOIFormatError as ex:
                raise ClipError(f"{p}: {ex}") from ex
            return {"hoi_depth": _u8(c.depth), "hoi_seg": _u8(c.seg), "hoi_hand": _u8(c.hand)}

        return self.hoi_cache.get(key, make)


def camera_poses(camera: dict, frames: int, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, float]:
    """A clip's camera as the camera encoder reads it: (c2w [F,4,4] float64 relative to frame 0 in OpenCV
    camera axes (frame 0 = the identity: c2w_f = w2c_0 inv(w2c_f)), intrinsics [4] = (fx/W, fy/H, cx/W, cy/H)
    normalised by the clip's size (the same at any resize), 1.0) from the sidecar's ``K`` and
    ``world_to_camera``; identity poses, GameCraft's default intrinsics and 0.0 when the clip has none."""
    from ..conditions.camera import GAMECRAFT_INTRINSICS, invert_rigid

    H, W = size
    try:
        w2c = torch.tensor(camera["world_to_camera"], dtype=torch.float64)[:frames]
        K = torch.tensor(camera["K"], dtype=torch.float64)
        ok = w2c.ndim == 3 and tuple(w2c.shape[1:]) == (4, 4) and w2c.shape[0] == frames and tuple(K.shape) == (3, 3)
    except (KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        eye = torch.eye(4, dtype=torch.float64).expand(frames, 4, 4).clone()
        return eye, torch.tensor(GAMECRAFT_INTRINSICS, dtype=torch.float64), 0.0
    c2w = w2c[:1] @ invert_rigid(w2c)
    intr = torch.tensor([K[0, 0] / W, K[1, 1] / H, K[0, 2] / W, K[1, 2] / H], dtype=torch.float64)
    return c2w, intr, 1.0


def collate(items: list[dict]) -> dict:
    """Batch SandboxDataset items: fixed-shape tensors stacked (frames, control, driven_mask, pusher_mask,
    id_map), per-object tensors and strings kept as lists (object counts differ between clips)."""
    out = {}
    for k in items[0]:
        vals = [it[k] for it in items]
        if k in ("frames", "control", "driven_mask", "pusher_mask", "id_map") + HOI_KEYS:
            out[k] = torch.stack(vals)
        elif k == "fps":
            out[k] = torch.tensor(vals, dtype=torch.float32)
        else:
            out[k] = vals
    return out
