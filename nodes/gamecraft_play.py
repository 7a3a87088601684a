"""GameCraft-2 play nodes: the block sampler that continues a session from one queue run to the next (keys +
instruction in, the next blocks out) and the session control node (snapshot, restore, reset-to-sink, drop). The
engine is models/play.py (sessions), models/sampling/causal.py (the causal block sampler) and models/sessions.py
(the store); the live panel in web/gamecraft_play.js drives the sampler through the API."""
from __future__ import annotations

import json
import time

import torch

from ..models.sampling.causal import DEFAULT_TIMESTEPS, RECACHE_SCOPES, SCHEDULES

_CAMERA_TYPE = "INTERPLAY_CAMERA"
MODES = ("auto", "causal", "chunked")
DEFAULT_TS = ",".join(f"{t:.2f}".rstrip("0").rstrip(".") for t in DEFAULT_TIMESTEPS)  # 1000,937.5,833.33,625


def _timesteps(node: str, text: str) -> tuple:
    try:
        ts = tuple(float(x) for x in str(text).replace(";", ",").split(",") if x.strip())
    except ValueError:
        raise ValueError(f"{node}: 'timesteps' must be numbers separated by commas, e.g. {DEFAULT_TS}; got "
                         f"{text!r}") from None
    return ts


def _resolve_mode(node: str, mode: str, backbone, camera_encoder) -> tuple[str, str]:
    """(mode, why): auto runs causally when the transformer is a converted causal student or a camera encoder is
    given, else the labelled chunked continuation."""
    from ..models.backbones.wan_causal import causal_info

    if mode not in MODES:
        raise ValueError(f"{node}: 'mode' must be one of {MODES}; got {mode!r}")
    if mode != "auto":
        return mode, "chosen"
    info = causal_info(backbone)
    if info is not None:
        return "causal", f"the transformer is a causal student ({info.get('source', '?')})"
    if camera_encoder is not None and getattr(camera_encoder, "source", "init") != "init":
        return "causal", "a trained camera encoder is connected"
    return "chunked", "no causal student and no trained camera encoder"


def _preview_file(frames: torch.Tensor, fps: float, sid: str, block: int) -> dict | None:
    """The call's new frames as an animated webp in the temp folder (ComfyUI's /view serves it)."""
    from ..models import runtime
    from ..models.video_io import save_video

    if frames is None or frames.shape[0] == 0:
        return None
    folder = runtime.temp_directory() / "interplay_play"
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{sid}_{block:05d}.webp"
    save_video(frames, folder / name, fps, format="webp", lossless=False, quality=80)
    return {"filename": name, "subfolder": "interplay_play", "type": "temp"}


class InterplayGameCraftSampler:
    DESCRIPTION = ("GameCraft-2 play: generate the next blocks of a world-model video for the keys and instruction "
                   "you give, continuing a session from one queue run to the next. session 'new' starts one (its id "
                   "comes out as session_id; send it back to continue; the live panel does this for you). Causal "
                   "mode: a causal Wan (e.g. a converted Self-Forcing / LongLive student, or a trained GameCraft "
                   "model) generates blocks of 3 latent frames (12 video frames) with a KV cache of the first frame "
                   "(sink) and a rolling window, 4 steps without CFG routed around the expert boundary, a clean pass "
                   "writing each block to the cache, and a recache when the instruction changes; a camera encoder "
                   "turns the keys into camera motion. Chunked mode (auto picks it with no causal student and no "
                   "camera encoder): a LABELLED FALLBACK, each block an ordinary multi-step CFG sample continuing "
                   "from the last frame; it does not follow the keys. Outputs this call's new frames.")
    CATEGORY = "Interplay/sampling"
    FUNCTION = "play"
    OUTPUT_NODE = True
    RETURN_TYPES = ("IMAGE", "LATENT", "STRING", "STRING", "FLOAT")
    RETURN_NAMES = ("frames", "latent", "session_id", "info", "fps")
    OUTPUT_TOOLTIPS = ("The new frames of this call (block 0 includes the first frame).",
                       "The new latent frames (the VAE's own space).",
                       "The session id: send it as 'session' to generate the next blocks.",
                       "JSON: mode, label, blocks, cache frames and bytes, per-block records, seconds, fps.",
                       "Frames per second of the video (16).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "backbone": ("INTERPLAY_BACKBONE", {"tooltip": "From the Wan Loader (a causal student, or Wan2.2 I2V "
                                                "for the chunked fallback)."}),
            "session": ("STRING", {"default": "new", "tooltip": "'new' starts a session ('new:NAME' names it); an "
                                   "id from session_id continues it. An unknown or expired id is an error."}),
            "keys": ("STRING", {"default": "W", "multiline": False, "tooltip": "Keys for this call's blocks: "
                                "'W', 'W+LEFT*2, D', or per second '0-1s: W'. Empty: hold still. Ignored when "
                                "'camera' is connected."}),
            "instruction": ("STRING", {"default": "", "multiline": True, "tooltip": "The interaction instruction "
                                       "(added to base_prompt); a change recaches. Ignored with 'instructions'."}),
            "base_prompt": ("STRING", {"default": "", "multiline": True, "tooltip": "The static scene "
                                       "description, part of every block's prompt."}),
            "num_blocks": ("INT", {"default": 1, "min": 1, "max": 256, "tooltip": "Blocks to generate in this "
                                   "call (12 video frames each; block 0 has 9 with the first frame)."}),
            "width": ("INT", {"default": 832, "min": 16, "max": 2048, "step": 16, "tooltip": "Video width (new "
                              "sessions; a continued session keeps its own)."}),
            "height": ("INT", {"default": 480, "min": 16, "max": 2048, "step": 16, "tooltip": "Video height "
                               "(new sessions)."}),
            "seed": ("INT", {"default": 42, "min": 0, "max": 2 ** 63 - 1, "tooltip": "Noise seed of a new session "
                             "(a continued session carries its generator on)."}),
            "mode": (list(MODES), {"default": "auto", "tooltip": "auto: causal for a causal student or with a "
                                   "camera encoder, else the labelled chunked continuation; causal / chunked: "
                                   "force one."}),
        }, "optional": {
            "image": ("IMAGE", {"tooltip": "The first frame (I2V models; the first image of a batch)."}),
            "camera_encoder": ("INTERPLAY_BRANCH", {"tooltip": "A trained GameCraft camera encoder (Camera "
                                                    "Encoder Loader / training); none: no camera control."}),
            "camera": (_CAMERA_TYPE, {"tooltip": "A Key Timeline camera from frame 0 covering all frames so far "
                                      "and this call's (instead of 'keys')."}),
            "instructions": ("INTERPLAY_INSTRUCTIONS", {"tooltip": "An Instruction Schedule (absolute blocks); "
                                                        "wins over instruction and base_prompt."}),
            "negative": ("STRING", {"default": "", "tooltip": "Negative prompt (used when cfg > 1)."}),
            "block_latent_frames": ("INT", {"default": 3, "min": 1, "max": 64, "tooltip": "Latent frames per "
                                            "block (3 = 12 video frames)."}),
            "sink_latent_frames": ("INT", {"default": 1, "min": 0, "max": 64, "tooltip": "First latent frames "
                                           "always kept in the cache (1: the first frame, the camera origin)."}),
            "window_latent_frames": ("INT", {"default": 9, "min": 0, "max": 1024, "tooltip": "Most recent latent "
                                             "frames kept in the cache besides the sink (9 = three blocks)."}),
            "schedule": (list(SCHEDULES), {"default": "few_step", "tooltip": "few_step: the distilled students' "
                                           "x0 prediction + re-noising at 'timesteps'; multi_step: the scheduler "
                                           "over 'steps' with CFG."}),
            "timesteps": ("STRING", {"default": DEFAULT_TS, "tooltip": "few_step timesteps, decreasing in "
                                     "(0, 1000]: Self-Forcing's 1000,750,500,250 warped by shift 5, two on each "
                                     "side of the 900 expert boundary."}),
            "steps": ("INT", {"default": 20, "min": 1, "max": 200, "tooltip": "multi_step steps per block."}),
            "cfg": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 30.0, "step": 0.1, "tooltip": "Guidance; <= 1: "
                              "none (the students run without CFG)."}),
            "boundary": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.005, "tooltip": "Two "
                                   "experts: high-noise expert while t >= boundary x 1000; 0 = the loader's (0.9)."}),
            "cache_update_pass": ("BOOLEAN", {"default": True, "tooltip": "Write each finished block to the cache "
                                              "with a clean t=0 pass (off: keep the last step's keys; one expert "
                                              "only)."}),
            "recache_scope": (list(RECACHE_SCOPES), {"default": "last_block", "tooltip": "On an instruction "
                                                     "change: recompute the last block (GameCraft-2), the whole "
                                                     "window (LongLive) or only the text cache (none)."}),
            "camera_weight": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 5.0, "step": 0.05, "tooltip": "Scales "
                                        "the camera encoder's tokens."}),
            "move_speed": ("FLOAT", {"default": 0.02, "min": 0.0, "max": 10.0, "step": 0.001, "tooltip": "Units "
                                     "per frame for W/A/S/D (new sessions)."}),
            "turn_speed": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 45.0, "step": 0.05, "tooltip": "Degrees "
                                     "per frame for the arrow keys (new sessions)."}),
            "chunk_steps": ("INT", {"default": 20, "min": 1, "max": 200, "tooltip": "Chunked fallback: steps per "
                                    "block."}),
            "chunk_cfg": ("FLOAT", {"default": 3.5, "min": 0.0, "max": 30.0, "step": 0.1, "tooltip": "Chunked "
                                    "fallback: CFG."}),
            "decode": ("BOOLEAN", {"default": True, "tooltip": "Decode the new frames (streaming: the same frames "
                                   "as decoding the whole video)."}),
        }}

    @classmethod
    def IS_CHANGED(cls, **kw):
        return float("nan")  # every run continues the session: never reuse a cached output

    def play(self, backbone, session, keys, instruction, base_prompt, num_blocks, width, height, seed, mode,
             image=None, camera_encoder=None, camera=None, instructions=None, negative="", block_latent_frames=3,
             sink_latent_frames=1, window_latent_frames=9, schedule="few_step", timesteps=DEFAULT_TS, steps=20,
             cfg=1.0, boundary=0.0, cache_update_pass=True, recache_scope="last_block", camera_weight=1.0,
             move_speed=0.02, turn_speed=1.0, chunk_steps=20, chunk_cfg=3.5, decode=True):
        from ..models import play as P
        from ..models.backbones import wan
        from ..models.conditions import camera as C
        from ..models.sampling.causal import CausalConfig
        from ..models.sessions import STORE

        node = "GameCraft Sampler"
        if getattr(backbone, "family", None) != "wan":
            raise ValueError(f"{node}: 'backbone' is {getattr(backbone, 'family', type(backbone).__name__)}; load a "
                             "Wan model with the Wan Loader")
        if camera_encoder is not None and getattr(camera_encoder, "kind", None) != "gamecraft_camera":
            raise ValueError(f"{node}: 'camera_encoder' is a {getattr(camera_encoder, 'kind', '?')} branch; connect "
                             "a GameCraft camera encoder")
        sid = (session or "").strip()
        if sid == "" or sid == "new" or sid.startswith("new:"):
            name = sid[4:].strip() if sid.startswith("new:") else ""
            run_mode, why = _resolve_mode(node, mode, backbone, camera_encoder)
            try:
                cfg_ = CausalConfig(block_latent_frames=int(block_latent_frames),
                                    sink_latent_frames=int(sink_latent_frames),
                                    window_latent_frames=int(window_latent_frames), schedule=schedule,
                                    timesteps=_timesteps(node, timesteps), steps=int(steps), cfg=float(cfg),
                                    boundary=float(boundary) or None, cache_update_pass=bool(cache_update_pass),
                                    recache_scope=recache_scope)
                motion = C.Motion(move_speed=float(move_speed), turn_speed=float(turn_speed))
            except ValueError as e:
                raise ValueError(f"{node}: {e}") from None
            img = image[:1].float() if image is not None else None
            e = backbone.extra
            note = ""
            if img is not None and not (e["i2v"] or e["ti2v"]):
                img, note = None, f"; 'image' ignored: {backbone.variant} is text-to-video"
            if img is None and (e["i2v"] or e["ti2v"]):
                raise ValueError(f"{node}: {backbone.variant} generates from an image; connect 'image' (the first "
                                 "frame)")
            s = P.start_session(backbone, sid=name or None, mode=run_mode, width=width, height=height, config=cfg_,
                                image=img, seed=seed, motion=motion, negative=negative, decode=bool(decode))
            s.mode_reason = why + note
            if run_mode == "chunked" and camera_encoder is not None:
                s.mode_reason += "; the camera encoder is ignored in chunked mode"
            STORE.put(s.id, s)
        else:
            s = STORE.get(sid, node)
        t0 = time.perf_counter()
        res = P.play(s, backbone, num_blocks=int(num_blocks), keys=keys, camera=camera,
                     instruction=None if instructions is not None else instruction,
                     base_prompt=None if instructions is not None else base_prompt, schedule=instructions,
                     branch=camera_encoder if s.mode == "causal" else None, weight=float(camera_weight),
                     chunk_steps=int(chunk_steps), chunk_cfg=float(chunk_cfg), preview=True)
        STORE.touch(s.id)
        seconds = time.perf_counter() - t0
        frames = res.frames if res.frames is not None else torch.zeros(1, s.height, s.width, 3)
        n_new = int(res.frames.shape[0]) if res.frames is not None else 0
        info = s.describe() | {"label": res.label, "mode_reason": getattr(s, "mode_reason", ""),
                               "new_frames": n_new, "seconds": seconds,
                               "generated_fps": (n_new / seconds) if seconds > 0 else 0.0,
                               "records": res.records}
        preview = _preview_file(res.frames, s.fps, s.id, s.blocks_done - 1) if res.frames is not None else None
        info["preview"] = preview
        text = json.dumps(info, default=str)
        latent = {"samples": wan.raw_latents(backbone, res.latents).float().cpu(), "interplay_family": "wan"}
        ui = {"interplay_play": [info]}
        if preview is not None:
            ui |= {"images": [preview], "animated": [True]}
        return {"ui": ui, "result": (frames, latent, s.id, text, float(s.fps))}


SESSION_ACTIONS = ("info", "snapshot", "restore", "reset_to_sink", "drop")


class InterplayGameCraftSession:
    DESCRIPTION = ("Control a GameCraft play session: info (what it holds), snapshot (save the cache, camera, "
                   "frames and RNG to output/interplay_sessions/<name>.safetensors), restore (load a snapshot as "
                   "a session: the next block is exactly what the original would have made; needs the same "
                   "model), reset_to_sink (forget the window, keep the first frame: recovers from drift) or drop "
                   "(free its memory).")
    CATEGORY = "Interplay/sampling"
    FUNCTION = "run"
    RETURN_TYPES = ("STRING", "STRING")
    RETURN_NAMES = ("session_id", "info")
    OUTPUT_TOOLTIPS = ("The session id (restore: the restored session's).", "JSON: what the session holds.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "session": ("STRING", {"default": "", "tooltip": "The session id (from the sampler's session_id). "
                                   "restore: the id to give the restored session (empty: the snapshot's)."}),
            "action": (list(SESSION_ACTIONS), {"default": "info", "tooltip": "What to do (see the description)."}),
            "snapshot": ("STRING", {"default": "play", "tooltip": "Snapshot name in output/interplay_sessions/ "
                                    "(snapshot and restore)."}),
        }, "optional": {
            "backbone": ("INTERPLAY_BACKBONE", {"tooltip": "restore: the model the session was made with."}),
        }}

    @classmethod
    def IS_CHANGED(cls, **kw):
        return float("nan")

    def run(self, session, action, snapshot, backbone=None):
        from ..models import play as P
        from ..models.sessions import STORE

        node = "GameCraft Session"
        sid = (session or "").strip()
        if action not in SESSION_ACTIONS:
            raise ValueError(f"{node}: 'action' must be one of {SESSION_ACTIONS}; got {action!r}")
        if action == "restore":
            if backbone is None:
                raise ValueError(f"{node}: restore needs 'backbone' (the Wan model the session was made with)")
            path = P.snapshot_path(snapshot, node=node)
            if not path.is_file():
                raise ValueError(f"{node}: no snapshot {path.name} in {path.parent}; snapshot a session first")
            s = P.load_snapshot(path, backbone, sid=sid or None)
            STORE.put(s.id, s)
            return (s.id, json.dumps(s.describe() | {"restored_from": path.name}, default=str))
        if not sid:
            raise ValueError(f"{node}: 'session' is empty; give the id from the sampler's session_id")
        if action == "drop":
            STORE.get(sid, node)
            STORE.drop(sid)
            return (sid, json.dumps({"session": sid, "dropped": True}))
        s = STORE.get(sid, node)
        extra = {}
        if action == "snapshot":
            path = P.save_snapshot(s, P.snapshot_path(snapshot, node=node))
            extra = {"snapshot": path.name, "bytes_on_disk": path.stat().st_size}
        elif action == "reset_to_sink":
            if s.rollout is None:
                raise ValueError(f"{node}: session {sid!r} runs the chunked continuation, which has no cache to "
                                 "reset")
            s.rollout.reset_to_sink()
            STORE.touch(sid)
        return (sid, json.dumps(s.describe() | extra, default=str))


NEW_ENCODER = "(new, zero-initialised from the backbone)"


class InterplayGameCraftCameraEncoderLoader:
    DESCRIPTION = ("Load a GameCraft camera encoder (Plücker rays -> tokens added after the patch embedding) "
                   "trained for a Wan model: a file in interplay/ or controlnet/, or a new one sized from the "
                   "backbone with a zero-initialised projection (it changes nothing until trained; for training). "
                   "Connect it to the GameCraft Sampler's camera_encoder.")
    CATEGORY = "Interplay/loaders"
    FUNCTION = "load"
    RETURN_TYPES = ("INTERPLAY_BRANCH",)
    RETURN_NAMES = ("camera_encoder",)

    @classmethod
    def INPUT_TYPES(cls):
        from . import _choices

        return {"required": {
            "encoder": (_choices.branch_choices(NEW_ENCODER, "gamecraft_camera"),
                        {"tooltip": "A camera-encoder file in interplay/ or controlnet/, or new.",
                         "model_folder": ["controlnet", "interplay"], "interplay_path": "model"}),
        }, "optional": {
            "backbone": ("INTERPLAY_BACKBONE", {"tooltip": "Needed for a new encoder (its size); sets dtype and "
                                                "device and checks a file fits."}),
        }}

    def load(self, encoder, backbone=None):
        from ..models import runtime
        from ..models.control import gamecraft as gc
        from ..models.control import registry

        node = "GameCraft Camera Encoder Loader"
        if encoder == NEW_ENCODER:
            if backbone is None or getattr(backbone, "family", None) != "wan":
                raise ValueError(f"{node}: a new encoder is sized from the Wan backbone; connect 'backbone' (a Wan "
                                 "model) or pick a file")
            return (registry.get(gc.KIND).new(backbone),)
        if encoder.startswith("interplay/"):
            path = runtime.model_path("interplay", encoder[len("interplay/"):])
        else:
            path = runtime.model_path("controlnet", encoder)
        dev = backbone.device if backbone is not None else runtime.compute_device()
        dt = backbone.dtype if backbone is not None else runtime.default_dtype(dev)
        br = gc.load_encoder(path, dtype=dt, device=dev)
        if backbone is not None:
            gc._check_fits(br.module, backbone)
        return (br,)


class InterplayTrainCausalStudent:
    DESCRIPTION = ("Self-Forcing distillation (GameCraft-2 stage 3): a few-step causal student learns from the "
                   "connected Wan model (the teacher, never changed) by generating block by block on its own KV "
                   "cache, as the GameCraft Sampler does, and matching the teacher's distribution on what it made "
                   "(DMD, with a critic trained beside it). Clips give the first frames, captions and length. "
                   "Saves the student's transformer(s) to models/interplay/<output_name>/ (checkpoint.safetensors, "
                   "checkpoint_low_noise.safetensors for a two-expert model), resumable; outputs the student, "
                   "which the GameCraft Sampler runs causally, and the loss curve.")
    CATEGORY = "Interplay/training"
    FUNCTION = "train"
    OUTPUT_NODE = True
    RETURN_TYPES = ("INTERPLAY_BACKBONE", "IMAGE", "STRING")
    RETURN_NAMES = ("student", "loss_curve", "checkpoint")

    @classmethod
    def INPUT_TYPES(cls):
        from .training import COMMON_TAIL, TRAIN_INPUTS, _common_inputs

        common = _common_inputs("causal_student")
        common["dataset_dir"] = (common["dataset_dir"][0], {**common["dataset_dir"][1], "default": "sandbox/camera"})
        common["frames"] = (common["frames"][0], {**common["frames"][1], "tooltip": "Use the first F frames of "
                            "each clip (0: all); the latent frames must be whole blocks (block_latent_frames 3: "
                            "9, 21, 33 ... frames)."})
        train = dict(TRAIN_INPUTS)
        train["lr"] = ("FLOAT", {**TRAIN_INPUTS["lr"][1], "default": 2e-6, "tooltip": "Learning rate of the "
                       "student (Self-Forcing: 2e-6 generator, 4e-7 critic; set critic_lr_scale in extra)."})
        return {"required": {**common, **train,
                             "critic_ratio": ("INT", {"default": 5, "min": 1, "max": 100, "tooltip": "Critic "
                                              "updates per student update (Self-Forcing: 5)."}),
                             "teacher_cfg": ("FLOAT", {"default": 3.0, "min": 1.0, "max": 30.0, "step": 0.1,
                                             "tooltip": "The teacher's guidance scale (the student runs "
                                             "without CFG)."})},
                "optional": dict(COMMON_TAIL)}

    def train(self, backbone, dataset_dir, output_name, frames, steps, lr, batch_size, grad_accum, precision, seed,
              checkpoint_every, resume, critic_ratio, teacher_cfg, extra=""):
        from ..models.training.config import build_task
        from .training import (_base_train, _check_options, _dataset, _run, _train_config, output_folder,
                               parse_extra, resolve_dataset)

        node = "Train Causal Student"
        data, out = resolve_dataset(node, dataset_dir), output_folder(node, output_name)  # paths first
        if backbone.family != "wan":
            raise ValueError(f"{node}: the teacher must be a Wan model; got {backbone.family}")
        if backbone.loras:
            raise ValueError(f"{node}: the teacher has LoRAs applied; the student file would carry peft's layer "
                             "names. Connect the loader's backbone without them")
        opts, tr, dse = parse_extra(node, extra)
        opts = {"critic_ratio": int(critic_ratio), "teacher_cfg": float(teacher_cfg), **opts}
        _check_options(node, "self_forcing", opts)
        cfg = _train_config(node, _base_train(steps, lr, batch_size, grad_accum, precision, seed,
                                              checkpoint_every), tr)
        ds = _dataset(node, data, frames, dse)
        try:
            t = build_task("self_forcing", backbone, opts, seed=cfg.seed)
        except ValueError as ex:
            raise ValueError(f"{node}: {ex}") from ex
        res, curve, text = _run(t, ds, cfg, out, resume, "self_forcing")
        student = t.student
        for m in (student.denoiser, *student.experts.values()):
            m.eval().requires_grad_(False)
        # the file's causal metadata is what makes the GameCraft Sampler's "auto" mode run it causally
        student = student.replace(source={**dict(backbone.source or {}), "transformer": str(res.checkpoint)})
        return {"ui": {"text": [text]}, "result": (student, curve, str(res.checkpoint))}


NODE_CLASS_MAPPINGS = {"InterplayGameCraftCameraEncoderLoader": InterplayGameCraftCameraEncoderLoader,
                       "InterplayGameCraftSampler": InterplayGameCraftSampler,
                       "InterplayGameCraftSession": InterplayGameCraftSession,
                       "InterplayTrainCausalStudent": InterplayTrainCausalStudent}
NODE_DISPLAY_NAME_MAPPINGS = {"InterplayGameCraftCameraEncoderLoader": "GameCraft Camera Encoder Loader (Interplay)",
                              "InterplayGameCraftSampler": "GameCraft Sampler (Interplay)",
                              "InterplayGameCraftSession": "GameCraft Session (Interplay)",
                              "InterplayTrainCausalStudent": "Train Causal Student (Interplay)"}
