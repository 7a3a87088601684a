"""GameCraft-2 nodes: keys and poses -> camera (INTERPLAY_CAMERA), instruction schedules (INTERPLAY_INSTRUCTIONS),
the Wan Fun-Camera embedding, and the InterBench score. The key timeline is one STRING input (``timeline``),
edited by the widget in web/key_timeline.js or sent by hand through the API (JSON or the text syntax; see
models/conditions/keys.py)."""
from __future__ import annotations

import json

from ..models import metrics_interbench as IB
from ..models.conditions import camera as C
from ..models.conditions import instructions as I
from ..models.conditions import keys as K

EXAMPLE_TIMELINE = "W*2, W+RIGHT*2, W*2"
_CAMERA_TYPE = "INTERPLAY_CAMERA"


def _grid(node: str, block_frames: int, first_block_frames: int) -> K.BlockGrid:
    try:
        return K.BlockGrid(int(block_frames), int(first_block_frames))
    except ValueError as e:
        raise ValueError(f"{node}: {e}") from None


def _intrinsics(node: str, fx, fy, cx, cy) -> C.Intrinsics:
    try:
        return C.Intrinsics(float(fx), float(fy), float(cx), float(cy))
    except ValueError as e:
        raise ValueError(f"{node}: {e}. Fix: give fx, fy > 0 normalised by the width and height (GameCraft's "
                         "0.50505, 0.8979).") from None


def _grid_inputs():
    return {
        "fps": ("FLOAT", {"default": 16.0, "min": 1.0, "max": 240.0, "step": 1.0,
                          "tooltip": "Frames per second of the generated video (Wan: 16). Turns per-second timing "
                                     "into frames."}),
        "block_frames": ("INT", {"default": 12, "min": 1, "max": 1024,
                                 "tooltip": "Pixel frames per generation block: 12 = 3 Wan latent frames (the VAE "
                                            "packs 4 frames per latent frame)."}),
        "first_block_frames": ("INT", {"default": 9, "min": 1, "max": 1025,
                                       "tooltip": "Frames of block 0, the input image included: 9 = the image + 8 "
                                                  "new frames = 3 Wan latent frames (the first latent frame holds "
                                                  "one pixel frame)."}),
    }


def _intrinsics_inputs():
    d = C.Intrinsics()
    tip = "Normalised by the image {}: GameCraft-1 uses fx=0.50505, fy=0.8979, cx=cy=0.5."
    return {
        "fx": ("FLOAT", {"default": d.fx, "min": 0.01, "max": 10.0, "step": 0.00001,
                         "tooltip": "Focal length / width. " + tip.format("width")}),
        "fy": ("FLOAT", {"default": d.fy, "min": 0.01, "max": 10.0, "step": 0.00001,
                         "tooltip": "Focal length / height. " + tip.format("height")}),
        "cx": ("FLOAT", {"default": d.cx, "min": -1.0, "max": 2.0, "step": 0.001,
                         "tooltip": "Principal point x / width (0.5 = centre)."}),
        "cy": ("FLOAT", {"default": d.cy, "min": -1.0, "max": 2.0, "step": 0.001,
                         "tooltip": "Principal point y / height (0.5 = centre)."}),
    }


class InterplayKeyTimeline:
    CATEGORY = "Interplay/conditions"
    FUNCTION = "build"
    RETURN_TYPES = (_CAMERA_TYPE, "IMAGE", "STRING", "INT")
    RETURN_NAMES = ("camera", "preview", "timeline_json", "num_frames")
    OUTPUT_TOOLTIPS = ("Per-frame camera poses relative to frame 0 (OpenCV axes), intrinsics and blocks; Plücker "
                       "maps are computed by the consumer at its size.",
                       "Top-down path: one dot per frame coloured by time, heading arrows at block ends.",
                       "The timeline as canonical JSON (what the widget writes and the API accepts).",
                       "Frames of the camera path (the input image included when starting fresh).")
    DESCRIPTION = ("Keys held over time -> a camera path (GameCraft-2 / GameCraft-1 actions). W/S move along the "
                   "view, A/D strafe, LEFT/RIGHT turn, UP/DOWN look; combine with + and hold for N blocks with *N: "
                   "'W+LEFT*4, W*8'. Or per second: '0-1.5s: W; 1.5-3s: W+RIGHT'. MOUSE(dx,dy) turns by pixels x "
                   "sensitivity; SPACE jumps, adds text to the prompt, or does nothing (space_mode). Poses "
                   "accumulate in frame-0 coordinates across the whole rollout; connect `continue_from` to carry "
                   "on from another camera's last frame.")

    @classmethod
    def INPUT_TYPES(cls):
        m = C.Motion()
        return {
            "required": {
                "timeline": ("STRING", {"default": EXAMPLE_TIMELINE, "multiline": True,
                                        "tooltip": 'Keys per block ("W+LEFT*4, W*8"), per second ("0-1.5s: W; '
                                                   '1.5-3s: W+RIGHT") or JSON {"v":1,"segments":[{"keys":["W"],'
                                                   '"frames":20}]} (frames = new frames). Edited by the widget.'}),
                **_grid_inputs(),
                "move_speed": ("FLOAT", {"default": m.move_speed, "min": 0.0, "max": 10.0, "step": 0.001,
                                         "tooltip": "Distance per frame while W/A/S/D is held (frame-0 units; "
                                                    "0.02 moves 0.24 per 12-frame block)."}),
                "turn_speed": ("FLOAT", {"default": m.turn_speed, "min": 0.0, "max": 45.0, "step": 0.05,
                                         "tooltip": "Degrees per frame while an arrow key is held (1.0 turns 12 "
                                                    "degrees per 12-frame block)."}),
            },
            "optional": {
                "mouse_sensitivity": ("FLOAT", {"default": m.mouse_sensitivity, "min": 0.0, "max": 10.0,
                                                "step": 0.01, "tooltip": "Degrees per mouse pixel of MOUSE(dx,dy) "
                                                                         "(dx > 0 turns right, dy > 0 looks "
                                                                         "down)."}),
                "space_mode": (list(C.SPACE_MODES), {"default": "none",
                                                     "tooltip": "SPACE: none = ignored; jump = a hop of "
                                                                "jump_height over the item; text = no motion, "
                                                                "space_text is added to the prompt of those blocks "
                                                                "(connect the camera to Instruction Schedule)."}),
                "jump_height": ("FLOAT", {"default": m.jump_height, "min": 0.0, "max": 10.0, "step": 0.01,
                                          "tooltip": "Height at the top of a jump (space_mode jump)."}),
                "space_text": ("STRING", {"default": m.space_text,
                                          "tooltip": "Phrase added to the prompt while SPACE is held (space_mode "
                                                     "text)."}),
                **_intrinsics_inputs(),
                "num_frames": ("INT", {"default": 0, "min": 0, "max": K.MAX_FRAMES + 1,
                                       "tooltip": "0: the timeline's own length. Otherwise cut the timeline or hold "
                                                  "still to reach this many frames (e.g. 93 = 8 blocks)."}),
                "continue_from": (_CAMERA_TYPE, {"tooltip": "Continue from this camera's last frame and state: "
                                                            "the output holds only the new frames, in the same "
                                                            "frame-0 coordinates."}),
            },
        }

    def build(self, timeline, fps, block_frames, first_block_frames, move_speed, turn_speed, mouse_sensitivity=0.1,
              space_mode="none", jump_height=0.1, space_text="jumps", fx=C.GAMECRAFT_INTRINSICS[0],
              fy=C.GAMECRAFT_INTRINSICS[1], cx=0.5, cy=0.5, num_frames=0, continue_from=None):
        node = "Key Timeline"
        grid = _grid(node, block_frames, first_block_frames)
        start = continue_from.end_state if continue_from is not None else C.CameraState()
        try:
            tl = K.parse_timeline(timeline, grid=grid, fps=float(fps), start_frame=start.frame)
            motion = C.Motion(float(move_speed), float(turn_speed), float(mouse_sensitivity), space_mode,
                              float(jump_height), str(space_text))
        except ValueError as e:
            raise ValueError(f"{node}: {e}") from None
        cam = C.camera_from_timeline(tl, motion, intrinsics=_intrinsics(node, fx, fy, cx, cy), fps=float(fps),
                                     grid=grid, start=start, include_start=continue_from is None,
                                     num_frames=int(num_frames) or None)
        return (cam, C.trajectory_preview(cam), tl.to_json(), cam.num_frames)


class InterplayCameraFromPoses:
    CATEGORY = "Interplay/conditions"
    FUNCTION = "build"
    RETURN_TYPES = (_CAMERA_TYPE, "IMAGE", "INT")
    RETURN_NAMES = ("camera", "preview", "num_frames")
    OUTPUT_TOOLTIPS = ("The path as a camera (the same type Key Timeline makes).", "Top-down path preview.",
                       "Frames of the path.")
    DESCRIPTION = ("A camera path from your own camera-to-world matrices (e.g. exported from Blender or a pose "
                   "estimator such as VIPE): JSON {\"v\":1,\"c2w\":[[16 numbers row-major], ...]} or a bare list "
                   "of 4x4 matrices. OpenGL poses (y up, z backward) are converted to OpenCV axes; with `relative` "
                   "every pose is re-expressed in frame 0's camera.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "poses": ("STRING", {"default": json.dumps({"v": 1, "c2w": [[1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0,
                                                                             0, 0, 0, 1]]}), "multiline": True,
                                     "tooltip": 'Camera-to-world matrices: {"v":1,"c2w":[[r00,r01,r02,tx, r10,...,'
                                                '0,0,0,1], ...]} (16 or 12 numbers, row-major, or nested 4x4).'}),
                "convention": (["opencv", "opengl"], {"default": "opencv",
                                                      "tooltip": "Camera axes of the matrices: opencv (x right, y "
                                                                 "down, z forward; COLMAP, VIPE) or opengl (x "
                                                                 "right, y up, z backward; Blender, NeRF)."}),
                "relative": ("BOOLEAN", {"default": True, "tooltip": "Re-express every pose relative to frame 0 "
                                                                     "(frame 0 becomes the identity), as "
                                                                     "GameCraft does."}),
                **_grid_inputs(),
            },
            "optional": _intrinsics_inputs(),
        }

    def build(self, poses, convention, relative, fps, block_frames, first_block_frames,
              fx=C.GAMECRAFT_INTRINSICS[0], fy=C.GAMECRAFT_INTRINSICS[1], cx=0.5, cy=0.5):
        node = "Camera From Poses"
        grid = _grid(node, block_frames, first_block_frames)
        try:
            data = json.loads(poses) if isinstance(poses, str) else poses
        except json.JSONDecodeError as e:
            raise ValueError(f"{node}: `poses` is not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); "
                             'expected {"v":1,"c2w":[[16 numbers], ...]}') from None
        if isinstance(data, dict):
            if data.get("v") != 1 or "c2w" not in data:
                raise ValueError(f"{node}: `poses` must be {{\"v\": 1, \"c2w\": [...]}} or a list of matrices; got "
                                 f"keys {sorted(data)} with v={data.get('v')!r}")
            data = data["c2w"]
        try:
            cam = C.camera_from_poses(data, convention=convention, relative=bool(relative),
                                      intrinsics=_intrinsics(node, fx, fy, cx, cy), fps=float(fps), grid=grid)
        except ValueError as e:
            raise ValueError(f"{node}: {e}") from None
        return (cam, C.trajectory_preview(cam), cam.num_frames)


class InterplayWanFunCameraEmbedding:
    CATEGORY = "Interplay/conditions"
    FUNCTION = "build"
    RETURN_TYPES = ("WAN_CAMERA_EMBEDDING", "INT", "INT", "INT")
    RETURN_NAMES = ("camera_embedding", "width", "height", "length")
    OUTPUT_TOOLTIPS = ("Plücker maps packed 4 frames per latent frame (24 channels), for ComfyUI's "
                       "WanCameraImageToVideo (Wan Fun-Camera models).", "Width.", "Height.", "Frames.")
    DESCRIPTION = ("Turns an Interplay camera (Key Timeline, Camera From Poses) into the camera embedding of "
                   "ComfyUI's Wan Fun-Camera path, so key timelines drive the Wan2.1/2.2 Fun Control-Camera models "
                   "through core's WanCameraImageToVideo. Needs 4n+1 frames (set num_frames on Key Timeline, e.g. "
                   "81). Core's own WanCameraEmbedding uses fx=fy=0.5; set the camera's intrinsics to match if the "
                   "model was trained that way.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "camera": (_CAMERA_TYPE, {"tooltip": "The camera path (4n+1 frames: 81 for Wan Fun)."}),
            "width": ("INT", {"default": 832, "min": 16, "max": 8192, "step": 16,
                              "tooltip": "Width of the video to generate."}),
            "height": ("INT", {"default": 480, "min": 16, "max": 8192, "step": 16,
                               "tooltip": "Height of the video to generate."}),
        }}

    def build(self, camera, width, height):
        node = "Wan Fun Camera Embedding"
        if (camera.num_frames - 1) % 4:
            raise ValueError(f"{node}: `camera` has {camera.num_frames} frames; the Wan Fun-Camera packing needs "
                             "4n+1 (e.g. 81). Fix: set num_frames on Key Timeline.")
        emb = C.wan_fun_camera_embedding(camera.plucker(int(height), int(width)))
        return (emb, int(width), int(height), camera.num_frames)


class InterplayInstructionSchedule:
    CATEGORY = "Interplay/conditions"
    FUNCTION = "build"
    RETURN_TYPES = ("INTERPLAY_INSTRUCTIONS", "STRING")
    RETURN_NAMES = ("instructions", "prompts")
    OUTPUT_TOOLTIPS = ("Per-block prompts for the block sampler (a switch recaches).",
                       "The prompt of every block, one line each, switches marked.")
    DESCRIPTION = ("A base prompt (the static scene) plus instructions that switch at blocks, one per line: "
                   "'0: a quiet street', '4: a dragon appears' (or '6.5s: it starts to snow'). Block b's prompt is "
                   "the base + ' ' + the latest instruction at or before b, as GameCraft-2 concatenates the base "
                   "and interaction prompts; an empty instruction ('9:') returns to the base alone.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "base_prompt": ("STRING", {"default": "", "multiline": True,
                                           "tooltip": "The static scene description, part of every block's "
                                                      "prompt."}),
                "schedule": ("STRING", {"default": "0: ", "multiline": True,
                                        "tooltip": "One 'BLOCK: instruction' (or 'SECONDSs: instruction') per line; "
                                                   "'#' starts a comment."}),
                **_grid_inputs(),
            },
            "optional": {
                "camera": (_CAMERA_TYPE, {"tooltip": "Key Timeline camera: its fps and blocks are used, and with "
                                                     "space_mode text its SPACE phrase is added to the blocks "
                                                     "where SPACE is held."}),
                "num_blocks": ("INT", {"default": 0, "min": 0, "max": 100000,
                                       "tooltip": "Blocks listed in `prompts` (0: the camera's blocks, else up to "
                                                  "the last instruction + 1)."}),
            },
        }

    def build(self, base_prompt, schedule, fps, block_frames, first_block_frames, camera=None, num_blocks=0):
        node = "Instruction Schedule"
        grid = camera.grid if camera is not None else _grid(node, block_frames, first_block_frames)
        fps = camera.fps if camera is not None else float(fps)
        try:
            sched = I.parse_schedule(base_prompt, schedule, fps=fps, grid=grid)
        except ValueError as e:
            raise ValueError(f"{node}: {e}") from None
        if camera is not None and camera.events:
            sched = sched.with_events(camera.events, grid)
        n = int(num_blocks)
        if n == 0:
            last = max([b for b, _ in sched.entries] + [hi for _, hi, _ in sched.extra] + [0])
            n = (grid.block_of(camera.start_frame + camera.num_frames - 1) + 1) if camera is not None else last + 1
        return (sched, sched.describe(n))


class InterplayInterBenchScore:
    CATEGORY = "Interplay/evaluation"
    FUNCTION = "score"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING", "FLOAT", "FLOAT", "FLOAT", "FLOAT", "FLOAT", "FLOAT", "FLOAT")
    RETURN_NAMES = ("report_json", "overall", "trigger", "align", "fluency", "scope", "end_state", "physics")
    OUTPUT_TOOLTIPS = ("Per-category means, the global mean and every video's gated scores as JSON.",
                       "Overall = (5 trigger + align + fluency + scope + end_state + physics) / 6, global.",
                       "Trigger rate (0..1).", "Prompt-video alignment (0..5).", "Interaction fluency (0..5).",
                       "Interaction scope accuracy (0..5).", "End-state consistency (0..5).",
                       "Object physics correctness (0..5).")
    DESCRIPTION = ("InterBench (GameCraft-2): six judged dimensions per video: trigger (1/0), then alignment, "
                   "fluency, scope, end state and physics (0/1/3/5); a video that never triggers scores 0 on all "
                   "six. Scores come from `scores` (typed, or from any judge you run) and/or from a connected "
                   "judge asked about `video`. Means per category, the global mean over categories, and the "
                   "paper's Overall.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "scores": ("STRING", {"default": "[]", "multiline": True,
                                      "tooltip": 'Per-video scores: [{"category":"actor","trigger":1,"align":5,'
                                                 '"fluency":3,"scope":5,"end_state":5,"physics":3}, ...]; '
                                                 "category is environment, actor or entity."}),
            },
            "optional": {
                "video": ("IMAGE", {"tooltip": "A generated video to score with the connected judge."}),
                "judge": ("INTERPLAY_JUDGE", {"tooltip": "A judge (any local VLM node that outputs one) asked "
                                                         "the rubric questions about `video`."}),
                "base_prompt": ("STRING", {"default": "", "multiline": True,
                                           "tooltip": "The static scene prompt the video was made with."}),
                "interaction_prompt": ("STRING", {"default": "", "multiline": True,
                                                  "tooltip": "The requested interaction (e.g. 'draw a gun')."}),
                "category": (list(IB.CATEGORIES), {"default": "actor",
                                                   "tooltip": "Category of `video`: environment (weather, "
                                                              "explosions), actor (actions), entity (appearing "
                                                              "animals, vehicles, people)."}),
                "judge_frames": ("INT", {"default": 8, "min": 1, "max": 256,
                                         "tooltip": "Frames shown to the judge, evenly spaced, first and last "
                                                    "included."}),
            },
        }

    def score(self, scores, video=None, judge=None, base_prompt="", interaction_prompt="", category="actor",
              judge_frames=8):
        node = "InterBench Score"
        try:
            data = json.loads(scores) if scores.strip() else []
        except json.JSONDecodeError as e:
            raise ValueError(f"{node}: `scores` is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") \
                from None
        if isinstance(data, dict):
            data = [data]
        if not isinstance(data, list):
            raise ValueError(f"{node}: `scores` must be a list of per-video objects; got {type(data).__name__}")
        items = []
        try:
            for i, d in enumerate(data):
                cat = d.get("category") if isinstance(d, dict) else None
                if cat not in IB.CATEGORIES:
                    raise ValueError(f"scores[{i}].category must be one of {', '.join(IB.CATEGORIES)}; got {cat!r}")
                items.append((cat, IB.video_score({k: v for k, v in d.items() if k != "category"},
                                                  f"scores[{i}]")))
            if (video is None) != (judge is None):
                raise ValueError("`video` and `judge` go together: connect both to score a video, or neither")
            if video is not None:
                if not interaction_prompt.strip():
                    raise ValueError("`interaction_prompt` is empty; the judge needs the requested interaction")
                fn = judge.fn if isinstance(judge, IB.InterBenchJudge) else judge
                items.append((category, IB.score_video(video, base_prompt, interaction_prompt, fn,
                                                       num_frames=int(judge_frames))))
        except ValueError as e:
            raise ValueError(f"{node}: {e}") from None
        if not items:
            raise ValueError(f"{node}: nothing to score: give per-video `scores`, or connect `video` and `judge`")
        report = IB.aggregate(items)
        report = {"v": 1, **report, "videos": [{"category": c, **s.to_dict()} for c, s in items]}
        g = report["global"]
        text = f"InterBench overall {g['overall']:.3f} over {len(items)} video(s), " + ", ".join(
            f"{c} {v['overall']:.3f}" for c, v in report["categories"].items())
        return {"ui": {"text": [text]},
                "result": (json.dumps(report), float(g["overall"])) + tuple(float(g[d]) for d in IB.DIMENSIONS)}


# ------------------------------------------------------------------------------------ sampler and session
# (The causal block sampler and session nodes of issue 18 go here.)


NODE_CLASS_MAPPINGS = {
    "InterplayKeyTimeline": InterplayKeyTimeline,
    "InterplayCameraFromPoses": InterplayCameraFromPoses,
    "InterplayWanFunCameraEmbedding": InterplayWanFunCameraEmbedding,
    "InterplayInstructionSchedule": InterplayInstructionSchedule,
    "InterplayInterBenchScore": InterplayInterBenchScore,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "InterplayKeyTimeline": "Key Timeline (Interplay)",
    "InterplayCameraFromPoses": "Camera From Poses (Interplay)",
    "InterplayWanFunCameraEmbedding": "Wan Fun Camera Embedding (Interplay)",
    "InterplayInstructionSchedule": "Instruction Schedule (Interplay)",
    "InterplayInterBenchScore": "InterBench Score (Interplay)",
}
