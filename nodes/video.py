"""Video load/save/preview nodes and frames<->mask helpers. Outputs are plain IMAGE batches [F,H,W,3] plus a FLOAT
fps, so core CreateVideo/SaveVideo and VideoHelperSuite nodes connect to them."""
from __future__ import annotations

from pathlib import Path

from ..models import runtime
from ..models import video_io as vio

_PREVIEW_FPS_DEFAULT = 8.0
PREVIEW_PREFIX = "interplay_preview"


def clear_previews() -> int:
    """Delete Preview Frames' files from the temp folder (what ComfyUI does to its whole temp folder when it
    starts); the headless runner calls it at the start of each run so previews do not pile up. Returns the count."""
    folder = runtime.temp_directory()
    if not folder.is_dir():
        return 0
    n = 0
    for p in folder.glob(f"{PREVIEW_PREFIX}_*_.webp"):
        p.unlink(missing_ok=True)
        n += 1
    return n


def _input_videos() -> list[str]:
    """Video files and image-sequence folders under ComfyUI's input folder (relative names, natural order)."""
    root = runtime.input_directory()
    if not root.is_dir():
        return []
    out = []
    for p in root.rglob("*"):
        # still images too: a single frame is the usual input of image-to-video graphs
        if p.is_file() and p.suffix.lower() in vio.VIDEO_EXTENSIONS + vio.ANIMATED_EXTENSIONS + vio.IMAGE_EXTENSIONS:
            out.append(p.relative_to(root).as_posix())
    return sorted(out, key=vio.natural_key)


def _resolve_video(node: str, name: str, input_name: str = "video") -> Path:
    """A name in the input folder (ComfyUI's "name [output]" / "[temp]" annotations pick those folders) or an
    absolute path inside the pack's folders (runtime.confined_path); FileNotFoundError says where it looked."""
    if not name:
        raise ValueError(f"{node}: '{input_name}' is empty; expected a file in {runtime.input_directory()} or a "
                         "path. Fix: upload a video or type its path.")
    p = runtime.confined_path(name, node=node, input_name=input_name)
    if not p.exists():
        raise FileNotFoundError(f"{node}: '{input_name}' {name!r} not found; searched {p}")
    return p


class InterplayLoadVideo:
    DESCRIPTION = ("Load a video file (mp4, webm, mov, mkv via PyAV; animated webp/gif via Pillow) or a folder of "
                   "images into IMAGE frames plus its fps. start_frame, every_nth and frame_cap pick the frames; "
                   "the fps output is divided by every_nth so the clip keeps its real speed.")
    CATEGORY = "Interplay/video"
    FUNCTION = "load"
    RETURN_TYPES = ("IMAGE", "FLOAT", "INT")
    RETURN_NAMES = ("frames", "fps", "frame_count")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "video": (_input_videos(), {"video_upload": True, "interplay_path": "file",
                                        "tooltip": "A video in ComfyUI's input folder (in API prompts also "
                                                   "'name [output]', or an absolute path inside ComfyUI's "
                                                   "folders)."}),
        }, "optional": {
            "frame_cap": ("INT", {"default": 0, "min": 0, "max": 100000,
                                  "tooltip": "Most frames to load; 0 loads all."}),
            "start_frame": ("INT", {"default": 0, "min": 0, "max": 1000000,
                                    "tooltip": "Skip this many frames first."}),
            "every_nth": ("INT", {"default": 1, "min": 1, "max": 1000,
                                  "tooltip": "Keep one frame in n (2 halves the frame rate)."}),
            "force_width": ("INT", {"default": 0, "min": 0, "max": 8192, "step": 8,
                                    "tooltip": "Resize to this width; 0 keeps the file's (or scales with height)."}),
            "force_height": ("INT", {"default": 0, "min": 0, "max": 8192, "step": 8,
                                     "tooltip": "Resize to this height; 0 keeps the file's (or scales with width)."}),
            "path": ("STRING", {"default": "", "interplay_path": "file",
                                "tooltip": "A file or image folder (relative to ComfyUI's input folder, or absolute "
                                           "inside its input, output, temp or model folders); when set, used "
                                           "instead of 'video'."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, video, path=""):
        # Names besides the combo's (annotated names, absolute paths in API prompts) are allowed, so ComfyUI's own
        # combo check is skipped: the path rule is applied here, and the file must exist now, so a missing input
        # is reported at validation, before any model of the graph loads.
        node = "InterplayLoadVideo"
        if not (path or (isinstance(video, str) and video)):
            return f"{node}: 'video' is empty; pick a file or set 'path'"
        try:
            _resolve_video(node, path or video, "path" if path else "video")
        except FileNotFoundError as ex:
            return (f"{ex}. Fix: put the file in the input folder {runtime.input_directory()} (interplay run: "
                    "--input-dir) or give a path inside the pack's folders")
        except ValueError as ex:
            return str(ex)
        return True

    @classmethod
    def IS_CHANGED(cls, video, path="", **kw):
        try:
            p = _resolve_video("InterplayLoadVideo", path or video, "path" if path else "video")
            return f"{p}:{p.stat().st_mtime_ns}"
        except (OSError, ValueError):
            return float("nan")

    def load(self, video, frame_cap=0, start_frame=0, every_nth=1, force_width=0, force_height=0, path=""):
        node = "InterplayLoadVideo"
        name = "path" if path else "video"
        p = _resolve_video(node, path or video, name)
        frames, fps = vio.load_video(p, frame_cap or None, start=start_frame, every_nth=every_nth,
                                     check=runtime.path_guard(node, name))
        frames = _force_size(frames, force_width, force_height)
        return (frames, float(fps), int(frames.shape[0]))


def _force_size(frames, width: int, height: int):
    h, w = frames.shape[1], frames.shape[2]
    if not width and not height:
        return frames
    if not height:
        height = max(1, round(h * width / w))
    if not width:
        width = max(1, round(w * height / h))
    return vio.resize_frames(frames, int(height), int(width))


class InterplayLoadImageSequence:
    DESCRIPTION = ("Load a folder of images (natural order: 2 before 10) as IMAGE frames. All images must share "
                   "one size unless force_width/force_height are set. fps is what you give, divided by every_nth.")
    CATEGORY = "Interplay/video"
    FUNCTION = "load"
    RETURN_TYPES = ("IMAGE", "FLOAT", "INT")
    RETURN_NAMES = ("frames", "fps", "frame_count")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "folder": ("STRING", {"default": "", "interplay_path": "folder",
                                  "tooltip": "Folder of images: relative to ComfyUI's input folder, or absolute "
                                             "inside its input, output, temp or model folders."}),
            "pattern": ("STRING", {"default": "*", "interplay_path": "glob",
                                   "tooltip": "Glob on file names inside the folder, e.g. frame_*.png."}),
            "fps": ("FLOAT", {"default": 8.0, "min": 0.01, "max": 1000.0, "step": 0.01,
                              "tooltip": "Frame rate of the sequence."}),
            "frame_cap": ("INT", {"default": 0, "min": 0, "max": 100000, "tooltip": "Most frames; 0 loads all."}),
            "start_frame": ("INT", {"default": 0, "min": 0, "max": 1000000, "tooltip": "Skip this many images."}),
            "every_nth": ("INT", {"default": 1, "min": 1, "max": 1000, "tooltip": "Keep one image in n."}),
            "force_width": ("INT", {"default": 0, "min": 0, "max": 8192, "step": 8,
                                    "tooltip": "Resize to this width; 0 keeps the images' (or scales)."}),
            "force_height": ("INT", {"default": 0, "min": 0, "max": 8192, "step": 8,
                                     "tooltip": "Resize to this height; 0 keeps the images' (or scales)."}),
        }}

    def load(self, folder, pattern="*", fps=8.0, frame_cap=0, start_frame=0, every_nth=1, force_width=0,
             force_height=0):
        node = "InterplayLoadImageSequence"
        if not folder:
            raise ValueError(f"{node}: 'folder' is empty; expected a folder of images. Fix: type its path.")
        found = runtime.confined_path(folder, node=node, input_name="folder")
        runtime.confined_glob(found, pattern, node=node, input_name="pattern")
        if not found.is_dir():
            raise FileNotFoundError(f"{node}: folder {folder!r} not found; searched {found}")
        try:
            frames, fps = vio.load_image_sequence(found, pattern, max_frames=frame_cap or None, start=start_frame,
                                                  every_nth=every_nth, fps=fps,
                                                  check=runtime.path_guard(node, "pattern"))
        except runtime.PathRefused:
            raise
        except ValueError as ex:  # engine messages name the file; add the node and the input
            raise ValueError(f"{node}: {ex}") from ex
        frames = _force_size(frames, force_width, force_height)
        return (frames, float(fps), int(frames.shape[0]))


def _check_images(node: str, images):
    if images.ndim != 4 or images.shape[-1] not in (3, 4) or images.shape[0] < 1:
        raise ValueError(f"{node}: 'images' must be an IMAGE batch [F,H,W,3], got shape {tuple(images.shape)}")


class InterplaySaveVideo:
    DESCRIPTION = ("Save frames as an mp4 (h264, yuv420p: odd sizes are padded by one pixel) or an animated webp "
                   "in the output folder with a numbered name, and show it in the UI. Returns the file path.")
    CATEGORY = "Interplay/video"
    FUNCTION = "save"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("path",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "images": ("IMAGE", {"tooltip": "Frames [F,H,W,3]."}),
            "filename_prefix": ("STRING", {"default": "Interplay/video", "interplay_path": "save",
                                           "tooltip": "Name prefix; may include a subfolder of the output folder."}),
            "fps": ("FLOAT", {"default": 8.0, "min": 0.01, "max": 1000.0, "step": 0.01,
                              "tooltip": "Playback frame rate."}),
            "format": (list(vio.SAVE_FORMATS), {"default": "mp4", "tooltip": "mp4 (h264) or animated webp "
                                                                              "(lossless)."}),
            "crf": ("INT", {"default": 18, "min": 0, "max": 51, "tooltip": "h264 quality: lower is better and "
                                                                            "larger; 18 looks lossless."}),
        }}

    def save(self, images, filename_prefix="Interplay/video", fps=8.0, format="mp4", crf=18):
        node = "InterplaySaveVideo"
        _check_images(node, images)
        if format not in vio.SAVE_FORMATS:
            raise ValueError(f"{node}: 'format' must be one of {vio.SAVE_FORMATS}, got {format!r}")
        path, filename, subfolder = vio.counter_path(runtime.output_directory(), filename_prefix, format)
        vio.save_video(images, path, fps, format=format, crf=crf)
        # The shape of core SaveVideo / SaveAnimatedWEBP previews (comfy_api ui.PreviewVideo).
        ui = {"images": [{"filename": filename, "subfolder": subfolder, "type": "output"}], "animated": (True,)}
        return {"ui": ui, "result": (str(path),)}


class InterplayPreviewFrames:
    DESCRIPTION = "Show frames as an animated webp in the UI (written to the temp folder, not kept)."
    CATEGORY = "Interplay/video"
    FUNCTION = "preview"
    OUTPUT_NODE = True
    RETURN_TYPES = ()

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "images": ("IMAGE", {"tooltip": "Frames [F,H,W,3]."}),
            "fps": ("FLOAT", {"default": _PREVIEW_FPS_DEFAULT, "min": 0.01, "max": 1000.0, "step": 0.01,
                              "tooltip": "Playback frame rate of the preview."}),
        }}

    def preview(self, images, fps=_PREVIEW_FPS_DEFAULT):
        _check_images("InterplayPreviewFrames", images)
        path, filename, subfolder = vio.counter_path(runtime.temp_directory(), PREVIEW_PREFIX, "webp")
        vio.save_video(images, path, fps, format="webp", lossless=False, quality=85)
        return {"ui": {"images": [{"filename": filename, "subfolder": subfolder, "type": "temp"}],
                       "animated": (True,)}}


class InterplayFramesToMask:
    DESCRIPTION = ("Turn IMAGE frames into a MASK: one channel (or luminance, or the max of RGB), optionally "
                   "thresholded to 0/1. Useful for mask videos saved as grey RGB.")
    CATEGORY = "Interplay/video"
    FUNCTION = "convert"
    RETURN_TYPES = ("MASK",)
    RETURN_NAMES = ("mask",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "images": ("IMAGE", {"tooltip": "Frames [F,H,W,3]."}),
            "channel": (list(vio.MASK_CHANNELS), {"default": "luminance",
                                                  "tooltip": "Which value becomes the mask."}),
            "threshold": ("FLOAT", {"default": 0.5, "min": -1.0, "max": 1.0, "step": 0.01,
                                    "tooltip": "1 where value > threshold, else 0; a negative value keeps the soft "
                                               "values."}),
        }}

    def convert(self, images, channel="luminance", threshold=0.5):
        _check_images("InterplayFramesToMask", images)
        return (vio.frames_to_mask(images, channel, None if threshold < 0 else threshold),)


class InterplayMaskToFrames:
    DESCRIPTION = "Turn a MASK [F,H,W] into grey IMAGE frames [F,H,W,3] (to preview or save a mask video)."
    CATEGORY = "Interplay/video"
    FUNCTION = "convert"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("frames",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"mask": ("MASK", {"tooltip": "Mask frames [F,H,W] (or one [H,W])."})}}

    def convert(self, mask):
        if mask.ndim not in (2, 3):
            raise ValueError(f"InterplayMaskToFrames: 'mask' must be [F,H,W] or [H,W], got {tuple(mask.shape)}")
        return (vio.mask_to_frames(mask),)


NODE_CLASS_MAPPINGS = {
    "InterplayLoadVideo": InterplayLoadVideo,
    "InterplayLoadImageSequence": InterplayLoadImageSequence,
    "InterplaySaveVideo": InterplaySaveVideo,
    "InterplayPreviewFrames": InterplayPreviewFrames,
    "InterplayFramesToMask": InterplayFramesToMask,
    "InterplayMaskToFrames": InterplayMaskToFrames,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "InterplayLoadVideo": "Load Video (Interplay)",
    "InterplayLoadImageSequence": "Load Image Sequence (Interplay)",
    "InterplaySaveVideo": "Save Video (Interplay)",
    "InterplayPreviewFrames": "Preview Frames (Interplay)",
    "InterplayFramesToMask": "Frames To Mask (Interplay)",
    "InterplayMaskToFrames": "Mask To Frames (Interplay)",
}
