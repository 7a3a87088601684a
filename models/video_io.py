"""Video files <-> IMAGE frame batches: PyAV for mp4/webm/mov (h264 encode), Pillow for animated webp/gif and
image sequences. Frames are float32 torch tensors [F,H,W,3] in 0..1 on CPU (ComfyUI's IMAGE), masks [F,H,W]."""
from __future__ import annotations

import os
import re
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as Fnn

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".m4v")
ANIMATED_EXTENSIONS = (".webp", ".gif")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
SAVE_FORMATS = ("mp4", "webp")
DEFAULT_SEQUENCE_FPS = 8.0


def natural_key(name: str) -> list:
    """Sort key so frame2.png < frame10.png (digit runs compare as numbers)."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", str(name))]


def to_uint8(frames) -> np.ndarray:
    """[F,H,W,3] float 0..1 (torch or numpy) or uint8 -> uint8 numpy [F,H,W,3]. A single [H,W,3] image is a 1-frame
    batch; a [F,H,W] batch is treated as grey and repeated to 3 channels."""
    a = frames.detach().cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if a.ndim == 3 and a.shape[-1] in (3, 4):
        a = a[None]
    if a.ndim == 3:
        a = np.repeat(a[..., None], 3, axis=-1)
    if a.ndim != 4 or a.shape[-1] not in (1, 3, 4):
        raise ValueError(f"frames: expected [F,H,W,3], got shape {tuple(a.shape)}")
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    a = a[..., :3]
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    return np.clip(np.rint(a.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)


def to_float(frames_u8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(frames_u8, dtype=np.float32)).div_(255.0)


def pad_to_even(frames: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """h264 in yuv420p needs even height and width: replicate the last row/column where odd.
    Returns (padded [F,H',W',3], (pad_bottom, pad_right))."""
    ph, pw = frames.shape[1] % 2, frames.shape[2] % 2
    if ph or pw:
        frames = np.pad(frames, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")
    return frames, (ph, pw)


def resize_frames(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[F,H,W,C] -> [F,height,width,C], bilinear with antialiasing (area-like when shrinking)."""
    if frames.shape[1] == height and frames.shape[2] == width:
        return frames
    x = frames.permute(0, 3, 1, 2)
    shrink = height < frames.shape[1] or width < frames.shape[2]
    x = Fnn.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=shrink)
    return x.clamp_(0, 1).permute(0, 2, 3, 1).contiguous()


def fit_frames(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Resize so both sides cover (height, width), then center-crop: [B,H,W,C] -> [B,height,width,C]. How samplers
    fit an image and its control videos to the generation size, identically."""
    b, h, w, c = frames.shape
    if (h, w) == (height, width):
        return frames
    s = max(height / h, width / w)
    nh, nw = max(height, round(h * s)), max(width, round(w * s))
    x = Fnn.interpolate(frames.permute(0, 3, 1, 2).float(), size=(nh, nw), mode="area" if s < 1 else "bilinear",
                        align_corners=None if s < 1 else False)
    top, left = (nh - height) // 2, (nw - width) // 2
    return x[:, :, top:top + height, left:left + width].permute(0, 2, 3, 1).contiguous()


def fit_nearest(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """:func:`fit_frames`' cover-then-center-crop on the last two dims with NEAREST resizing, so no new values
    appear (palette pictures, masks): [..., H, W] -> [..., height, width], same dtype."""
    h, w = x.shape[-2:]
    if (h, w) == (height, width):
        return x
    s = max(height / h, width / w)
    nh, nw = max(height, round(h * s)), max(width, round(w * s))
    flat = x.reshape(-1, 1, h, w).float()
    out = Fnn.interpolate(flat, size=(nh, nw), mode="nearest").reshape(*x.shape[:-2], nh, nw).to(x.dtype)
    top, left = (nh - height) // 2, (nw - width) // 2
    return out[..., top:top + height, left:left + width].contiguous()


def _select(n_seen: int, start: int, every_nth: int) -> bool:
    return n_seen >= start and (n_seen - start) % every_nth == 0


def _check_window(start: int, every_nth: int, max_frames):
    if start < 0:
        raise ValueError(f"start_frame: expected >= 0, got {start}")
    if every_nth < 1:
        raise ValueError(f"every_nth: expected >= 1, got {every_nth}")
    if max_frames is not None and max_frames < 0:
        raise ValueError(f"max_frames: expected >= 0 (0 or None = all), got {max_frames}")


class VideoFileError(ValueError):
    """A video or image file that cannot be decoded; the message names the file."""


def load_video(path, max_frames: int | None = None, *, start: int = 0, every_nth: int = 1,
               size: tuple[int, int] | None = None, pattern: str = "*", check=None) -> tuple[torch.Tensor, float]:
    """Read a video file (mp4/webm/mov/... via PyAV, animated webp/gif via Pillow) or a folder of images.

    Takes frames start, start+every_nth, ... up to max_frames (None or 0 = all). size=(H,W) resizes.
    Returns (frames float32 [F,H,W,3] 0..1, fps float). The fps returned is the source fps divided by every_nth,
    so the clip plays at its real speed. ``check(path)`` vets each file of an image folder before it is opened
    (nodes pass ``runtime.path_guard``)."""
    _check_window(start, every_nth, max_frames)
    p = Path(path)
    if p.is_dir():
        return load_image_sequence(p, pattern=pattern, max_frames=max_frames, start=start, every_nth=every_nth,
                                   size=size, check=check)
    if not p.is_file():
        raise FileNotFoundError(f"video file not found: {p} (searched {p.parent.resolve()})")
    ext = p.suffix.lower()
    try:
        if ext in ANIMATED_EXTENSIONS:
            u8, fps = _read_animated(p, max_frames, start, every_nth)
        else:
            u8, fps = _read_av(p, max_frames, start, every_nth)
    except (VideoFileError, FileNotFoundError):
        raise
    except Exception as ex:  # av.error.* (many are ValueErrors), PIL.UnidentifiedImageError: name the file
        raise VideoFileError(f"could not decode video {p}: {type(ex).__name__}: {ex}. Is it a video file? "
                             "Re-export it (e.g. as h264 mp4) or pick another file.") from ex
    if len(u8) == 0:
        raise ValueError(f"video {p} gave no frames (start={start}, every_nth={every_nth}, "
                         f"max_frames={max_frames}); lower start_frame")
    frames = to_float(np.stack(u8))
    if size is not None:
        frames = resize_frames(frames, int(size[0]), int(size[1]))
    return frames, float(fps) / every_nth


def _read_av(p: Path, max_frames, start, every_nth) -> tuple[list[np.ndarray], float]:
    import av

    out = []
    with av.open(str(p)) as container:
        if not container.streams.video:
            raise VideoFileError(f"{p} has no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 0.0
        stream.thread_type = "AUTO"
        for i, frame in enumerate(container.decode(stream)):
            if _select(i, start, every_nth):
                out.append(frame.to_ndarray(format="rgb24"))
                if max_frames and len(out) >= max_frames:
                    break
    if fps <= 0:
        raise VideoFileError(f"{p}: the file states no frame rate")
    return out, fps


def _read_animated(p: Path, max_frames, start, every_nth) -> tuple[list[np.ndarray], float]:
    from PIL import Image, ImageSequence

    out, durations = [], []
    with Image.open(p) as im:
        for i, fr in enumerate(ImageSequence.Iterator(im)):
            fr.load()  # Pillow fills a frame's info (its duration) only once the frame is decoded
            durations.append(fr.info.get("duration", im.info.get("duration", 0)) or 0)
            if _select(i, start, every_nth):
                out.append(np.asarray(fr.convert("RGB")))
                if max_frames and len(out) >= max_frames:
                    break
    d = float(np.median(durations)) if durations else 0.0
    return out, (_fps_from_ms(d) if d > 0 else DEFAULT_SEQUENCE_FPS)


def _fps_from_ms(d: float) -> float:
    """webp/gif store whole-millisecond frame durations (12 fps -> 83 ms): give back the simplest rate (a whole or
    half number) whose duration rounds to d, else 1000/d."""
    raw = 1000.0 / d
    for step in (1.0, 0.5):
        c = round(raw / step) * step
        if c > 0 and round(1000.0 / c) == round(d):
            return c
    return raw


def list_image_sequence(folder, pattern: str = "*", check=None) -> list[Path]:
    """Image files in folder matching the glob pattern (relative to the folder), in natural order (2 before 10).
    ``check(path)`` vets every match before anything else touches it (it may raise)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image sequence folder not found: {folder} (searched {folder.resolve()})")
    pattern = pattern or "*"
    if Path(pattern).is_absolute():
        raise ValueError(f"pattern {pattern!r} is an absolute path; it matches file names inside the folder "
                         f"{folder}: give the folder as the folder and a pattern such as frame_*.png")
    matches = list(folder.glob(pattern))
    if check is not None:
        matches = [check(f) for f in matches]
    files = [f for f in matches if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS]
    return sorted(files, key=lambda f: natural_key(f.name))


def load_image_sequence(folder, pattern: str = "*", *, max_frames: int | None = None, start: int = 0,
                        every_nth: int = 1, size: tuple[int, int] | None = None,
                        fps: float = DEFAULT_SEQUENCE_FPS, check=None) -> tuple[torch.Tensor, float]:
    """Folder of images (natural sort) -> (frames float32 [F,H,W,3] 0..1, fps / every_nth). Every image must
    have the first image's size unless size=(H,W) is given; the error names the odd file. ``check``: as in
    :func:`list_image_sequence`."""
    from PIL import Image

    _check_window(start, every_nth, max_frames)
    files = list_image_sequence(folder, pattern, check)
    if not files:
        raise FileNotFoundError(f"no images matching {pattern!r} with extensions {IMAGE_EXTENSIONS} in "
                                f"{Path(folder).resolve()}")
    picked = [f for i, f in enumerate(files) if _select(i, start, every_nth)]
    if max_frames:
        picked = picked[:max_frames]
    if not picked:
        raise ValueError(f"{folder}: {len(files)} images, none left after start={start}, every_nth={every_nth}")
    frames = []
    for f in picked:
        try:
            with Image.open(f) as im:
                a = np.asarray(im.convert("RGB"))
        except Exception as ex:
            raise VideoFileError(f"could not read image {f}: {type(ex).__name__}: {ex}") from ex
        if size is not None:
            a = to_uint8(resize_frames(to_float(a[None]), int(size[0]), int(size[1])))[0]
        elif frames and a.shape != frames[0].shape:
            raise ValueError(f"image {f} is {a.shape[1]}x{a.shape[0]}, the sequence's first image {picked[0].name} "
                             f"is {frames[0].shape[1]}x{frames[0].shape[0]}; give a size to resize all")
        frames.append(a)
    return to_float(np.stack(frames)), float(fps) / every_nth


def save_video(frames, path, fps: float, format: str | None = None, crf: int = 18, *,
               lossless: bool = True, quality: int = 90) -> Path:
    """Write frames [F,H,W,3] (float 0..1 or uint8) to path.

    format "mp4": h264 (libx264, yuv420p, crf); odd heights/widths are padded by one replicated row/column
    (yuv420p needs even sizes), so the file may be 1 px larger than the frames. format "webp": animated webp via
    Pillow, lossless by default (exact round trip). format None takes the path's suffix. Returns the path."""
    path = Path(path)
    fmt = (format or path.suffix.lstrip(".") or "mp4").lower()
    if fmt not in SAVE_FORMATS:
        raise ValueError(f"format: expected one of {SAVE_FORMATS}, got {fmt!r}")
    if not fps or fps <= 0:
        raise ValueError(f"fps: expected > 0, got {fps}")
    u8 = to_uint8(frames)
    if len(u8) == 0:
        raise ValueError("frames: expected at least one frame, got 0")
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "mp4":
        _write_h264(u8, path, fps, crf)
    else:
        _write_webp(u8, path, fps, lossless, quality)
    return path


def _write_h264(u8: np.ndarray, path: Path, fps: float, crf: int) -> None:
    import av

    u8, _ = pad_to_even(u8)
    rate = Fraction(fps).limit_denominator(1001)
    tmp = path.with_name(path.name + ".part")
    with av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height = u8.shape[2], u8.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(int(crf)), "preset": "medium"}
        for a in u8:
            for packet in stream.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(tmp, path)  # no half-written file under the final name


def _write_webp(u8: np.ndarray, path: Path, fps: float, lossless: bool, quality: int) -> None:
    from PIL import Image

    ims = [Image.fromarray(a) for a in u8]
    tmp = path.with_name(path.name + ".part")
    ims[0].save(tmp, format="WEBP", save_all=True, append_images=ims[1:], duration=max(1, round(1000.0 / fps)),
                loop=0, lossless=lossless, quality=quality, method=4)
    os.replace(tmp, path)


def save_image_sequence(frames, folder, prefix: str = "frame") -> list[Path]:
    """Frames -> folder/<prefix>_00000.png ... (PNG, exact)."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, a in enumerate(to_uint8(frames)):
        f = folder / f"{prefix}_{i:05d}.png"
        Image.fromarray(a).save(f)
        out.append(f)
    return out


def counter_path(output_dir, filename_prefix: str, ext: str) -> tuple[Path, str, str]:
    """ComfyUI-style numbered name: <output_dir>/<subfolder>/<name>_00001_.<ext>, the counter one past the highest
    existing for that prefix. Returns (full path, filename, subfolder). The prefix may hold a subfolder but must
    stay inside output_dir."""
    output_dir = Path(output_dir).resolve()
    prefix = os.path.normpath(filename_prefix or "Interplay")
    sub, name = os.path.dirname(prefix), os.path.basename(prefix)
    folder = (output_dir / sub).resolve()
    if os.path.commonpath((str(output_dir), str(folder))) != str(output_dir):
        raise ValueError(f"filename_prefix: {filename_prefix!r} points outside the output folder {output_dir}; "
                         "use a name or a relative subfolder")
    folder.mkdir(parents=True, exist_ok=True)
    pat = re.compile(re.escape(name) + r"_(\d+)_?\.")
    counters = [int(m.group(1)) for f in os.listdir(folder) if (m := pat.match(f))]
    counter = max(counters, default=0) + 1
    filename = f"{name}_{counter:05d}_.{ext}"
    return folder / filename, filename, sub.replace(os.sep, "/")


MASK_CHANNELS = ("luminance", "red", "green", "blue", "max")


def frames_to_mask(frames: torch.Tensor, channel: str = "luminance", threshold: float | None = 0.5) -> torch.Tensor:
    """IMAGE [F,H,W,3] -> MASK [F,H,W]. channel: luminance (Rec.601 weights), red, green, blue or max of RGB.
    threshold None keeps the soft values; a number gives 1.0 where value > threshold else 0.0."""
    if channel not in MASK_CHANNELS:
        raise ValueError(f"channel: expected one of {MASK_CHANNELS}, got {channel!r}")
    f = frames.float()
    if channel == "luminance":
        m = f[..., 0] * 0.299 + f[..., 1] * 0.587 + f[..., 2] * 0.114
    elif channel == "max":
        m = f[..., :3].amax(-1)
    else:
        m = f[..., ("red", "green", "blue").index(channel)]
    if threshold is not None:
        m = (m > threshold).float()
    return m.contiguous()


def mask_to_frames(mask: torch.Tensor) -> torch.Tensor:
    """MASK [F,H,W] (or [H,W]) -> IMAGE [F,H,W,3] grey."""
    m = mask.float()
    if m.ndim == 2:
        m = m[None]
    return m.clamp(0, 1)[..., None].expand(*m.shape, 3).contiguous()
