"""GameCraft-2 play: keys and instructions in, the next blocks of video out, one call after another (a session).

A :class:`PlaySession` holds everything that must survive between two queue runs: the causal rollout (its KV
cache, held latents, generator, conditions; ``sampling.causal``), the camera path so far (every pose from frame
0, in frame-0 coordinates: the paper's sink frame is the origin), the streaming VAE decoder's cache
(``backbones.wan_stream``), the prompt, the last frame and per-block records. :func:`play` generates the next
``num_blocks`` blocks for the keys and instruction it is given:

- mode "causal": the camera path is extended from the keys (``conditions.camera.camera_from_timeline`` from the
  session's end state, so three calls of one block equal one call of three blocks), the camera encoder (a
  "gamecraft_camera" branch, when given) attaches through the branch registry with the path in its signal, each
  block's prompt is base + instruction (or the block's entry of an instruction schedule; a change recaches) and
  the rollout generates; the new latents decode through the streaming decoder (the same frames as decoding the
  whole video at once);
- mode "chunked" (stock bidirectional Wan, e.g. Wan2.2 I2V with no causal student and no trained camera
  encoder): each block is an ordinary multi-step CFG sample (``sampling.wan.sample_wan``) of 9 frames from the
  input image, then of 13 frames from the last frame generated, keeping its 12 new frames: a clearly labelled
  continuation that does not follow the keys.

Snapshots (:func:`save_snapshot` / :func:`load_snapshot`) write a session to one safetensors file (tensors +
JSON metadata, no pickle) and read it back, so a restored session generates the next block bitwise as the
original would. Sessions live in ``models.sessions.STORE``.
"""
from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .backbones.base import Backbone
from .conditions import camera as C
from .conditions.instructions import InstructionSchedule, join_prompt
from .conditions.keys import BlockGrid, parse_timeline
from .sampling.causal import CausalConfig, CausalRollout

WHERE = "GameCraft Sampler"
MODES = ("causal", "chunked")
SNAPSHOT_FORMAT = "interplay-gamecraft-session"
SNAPSHOT_VERSION = 1
CHUNKED_LABEL = ("chunked continuation from the last frame (a bidirectional Wan sampled block by block with "
                 "multi-step CFG): no causal student is loaded, so the keys and the camera encoder are not "
                 "followed; quality and control will not match GameCraft-2")


def new_session_id() -> str:
    return "gc-" + secrets.token_hex(4)


def backbone_key(bb: Backbone) -> str:
    """What identifies the model a session was made with (refuse continuing it with another one): the files it
    was loaded from (ComfyUI may load them again between two queue runs: the session goes on with the new
    object), or the object itself for a model built in memory."""
    src = dict(getattr(bb, "source", None) or {})
    files = {k: v for k, v in src.items() if k != "kind"}
    ident = json.dumps(files, sort_keys=True) if files else f"object {id(bb.denoiser)}"
    return f"{bb.variant}|{bb.extra.get('kind')}|{bb.denoiser.config.num_layers}|{ident}"


def _rebind(s: "PlaySession", bb: Backbone) -> None:
    """The same files loaded again: the session's rollout and decoder use the new object from now on."""
    if s.rollout is not None and s.rollout.bb is not bb:
        s.rollout.bb = bb
    if s.decoder is not None and getattr(s.decoder, "bb", bb) is not bb:
        s.decoder.bb = bb


@dataclass
class PlaySession:
    """One play session (fields as the module docstring describes)."""

    id: str
    mode: str
    width: int
    height: int
    config: CausalConfig
    model_key: str
    variant: str
    seed: int = 0
    fps: float = 16.0
    motion: C.Motion = field(default_factory=C.Motion)
    intrinsics: C.Intrinsics = field(default_factory=C.Intrinsics)
    rollout: CausalRollout | None = None
    decoder: object = None
    c2w: torch.Tensor | None = None            # [F, 4, 4] float64, frames 0..F-1 so far
    cam_state: C.CameraState = field(default_factory=C.CameraState)
    base_prompt: str = ""
    instruction: str = ""
    negative: str = ""
    blocks_done: int = 0
    last_frame: torch.Tensor | None = None     # [B, H, W, 3] 0..1 (chunked mode's next image)
    image: torch.Tensor | None = None
    generator: torch.Generator | None = None   # chunked mode's seeds
    records: list = field(default_factory=list)
    created: float = field(default_factory=time.time)

    @property
    def grid(self) -> BlockGrid:
        n = self.config.block_latent_frames
        return BlockGrid(block_frames=4 * n, first_block_frames=4 * n - 3)

    def pixel_frames(self, blocks: int) -> int:
        n = self.config.block_latent_frames
        return 0 if blocks <= 0 else 1 + 4 * (n * blocks - 1)

    def camera(self) -> C.CameraTrajectory | None:
        if self.c2w is None:
            return None
        return C.CameraTrajectory(c2w=self.c2w, intrinsics=self.intrinsics, fps=self.fps, grid=self.grid,
                                  end_state=self.cam_state, source="keys")

    def nbytes(self) -> int:
        n = self.rollout.nbytes() if self.rollout is not None else 0
        cache = getattr(self.decoder, "cache", None) or []
        n += sum(c.numel() * c.element_size() for c in cache if isinstance(c, torch.Tensor))
        for t in (self.c2w, self.last_frame, self.image):
            if t is not None:
                n += t.numel() * t.element_size()
        return n

    def describe(self) -> dict:
        d = {"session": self.id, "mode": self.mode, "blocks": self.blocks_done,
             "frames": self.pixel_frames(self.blocks_done), "size": [self.width, self.height],
             "fps": self.fps, "prompt": join_prompt(self.base_prompt, self.instruction), "bytes": self.nbytes(),
             "config": self.config.to_dict(), "variant": self.variant}
        if self.rollout is not None:
            d["cache"] = self.rollout.cache.describe()
        if self.mode == "chunked":
            d["note"] = CHUNKED_LABEL
        return d


def start_session(bb: Backbone, *, sid: str | None = None, mode: str = "causal", width: int, height: int,
                  config: CausalConfig = CausalConfig(), image: torch.Tensor | None = None, seed: int = 0,
                  fps: float = 16.0, motion: C.Motion = C.Motion(), intrinsics: C.Intrinsics = C.Intrinsics(),
                  negative: str = "", encode=None, decode: bool = True) -> PlaySession:
    """A fresh session (not yet stored)."""
    from .backbones.wan_stream import StreamDecoder

    if mode not in MODES:
        raise ValueError(f"{WHERE}: mode must be one of {MODES}; got {mode!r}")
    s = PlaySession(id=sid or new_session_id(), mode=mode, width=int(width), height=int(height), config=config,
                    model_key=backbone_key(bb), variant=bb.variant, seed=int(seed), fps=float(fps), motion=motion,
                    intrinsics=intrinsics, negative=negative or "", image=image)
    if mode == "causal":
        s.rollout = CausalRollout(bb, config, height=height, width=width, encode=encode, image=image, seed=seed,
                                  negative=negative)
    else:
        if not (bb.extra["i2v"] or bb.extra["ti2v"]):
            raise ValueError(f"{WHERE}: the chunked continuation needs an image-to-video model (each block "
                             f"starts from the last frame); {bb.variant} is text-to-video. Use mode 'causal'.")
        if image is None:
            raise ValueError(f"{WHERE}: the chunked continuation starts from an image; connect 'image'")
        s.generator = torch.Generator().manual_seed(int(seed))
    s.decoder = StreamDecoder(bb) if decode else None
    return s


def _extend_camera(s: PlaySession, keys: str | None, blocks: int) -> None:
    """Grow the session's camera path by the frames of the next ``blocks`` blocks, from ``keys`` (a timeline;
    empty: hold still), continuing from its end state in frame-0 coordinates."""
    k0 = s.blocks_done
    first_new = 0 if k0 == 0 else s.pixel_frames(k0)
    need = s.pixel_frames(k0 + blocks) - first_new
    text = (keys or "").strip() or f"NONE*{blocks}"
    start = 0 if k0 == 0 else first_new - 1
    tl = parse_timeline(text, grid=s.grid, fps=s.fps, start_frame=start, input_name="keys")
    if k0 == 0:
        traj = C.camera_from_timeline(tl, s.motion, intrinsics=s.intrinsics, fps=s.fps, grid=s.grid,
                                      start=C.CameraState(), include_start=True, num_frames=need)
        s.c2w = traj.c2w
    else:
        traj = C.camera_from_timeline(tl, s.motion, intrinsics=s.intrinsics, fps=s.fps, grid=s.grid,
                                      start=s.cam_state, include_start=False, num_frames=need)
        s.c2w = torch.cat([s.c2w, traj.c2w])
    s.cam_state = traj.end_state


@dataclass
class PlayResult:
    frames: torch.Tensor | None      # [F_new, H, W, 3] 0..1 (first video of the batch), None without decoding
    latents: torch.Tensor            # [B, C, f_new, h, w] normalised
    records: list                    # per-block dicts
    camera: C.CameraTrajectory | None
    seconds: float
    label: str = ""


def play(s: PlaySession, bb: Backbone, *, num_blocks: int = 1, keys: str | None = None,
         camera: C.CameraTrajectory | None = None, instruction: str | None = None, base_prompt: str | None = None,
         schedule: InstructionSchedule | None = None, branch=None, weight: float = 1.0,
         chunk_steps: int = 20, chunk_cfg: float = 3.5, preview: bool = False) -> PlayResult:
    """Generate the next ``num_blocks`` blocks of session ``s`` (module docstring).

    keys: a key timeline for these blocks ("W+LEFT", "W*2, D", JSON); ignored when ``camera`` (a full path from
        frame 0 covering the new frames) is given. instruction / base_prompt: replace the session's (None keeps
        them); schedule: an InstructionSchedule in absolute blocks (wins over both). branch: a camera encoder
        ("gamecraft_camera" ControlBranch), or None (no camera control).
    """
    if backbone_key(bb) != s.model_key:
        raise ValueError(f"{WHERE}: session {s.id!r} was started with {s.variant}; this call connects "
                         f"{bb.variant} (or another load of it). Continue with the same loaded model, or start a "
                         "new session")
    _rebind(s, bb)
    if num_blocks < 1:
        raise ValueError(f"{WHERE}: num_blocks must be >= 1; got {num_blocks}")
    t0 = time.perf_counter()
    if base_prompt is not None:
        s.base_prompt = base_prompt
    if instruction is not None:
        s.instruction = instruction
    k0 = s.blocks_done
    prompts = [schedule.prompt(k) if schedule is not None else join_prompt(s.base_prompt, s.instruction)
               for k in range(k0, k0 + num_blocks)]
    last = s.pixel_frames(k0 + num_blocks) - 1
    if camera is not None:
        if camera.start_frame != 0 or camera.num_frames <= last:
            raise ValueError(f"{WHERE}: 'camera' covers frames {camera.start_frame}..{camera.start_frame + camera.num_frames - 1}"
                             f" but blocks {k0}..{k0 + num_blocks - 1} need frames 0..{last}; make the Key Timeline "
                             "longer (num_frames) or send keys instead")
        s.c2w = camera.c2w[:last + 1].clone()
        s.cam_state = C.CameraState(tuple(float(v) for v in s.c2w[-1, :3, 3]), float(camera.yaw[last]),
                                    float(camera.pitch[last]), last)
    else:
        _extend_camera(s, keys, num_blocks)
    if s.mode == "causal":
        lat, frames = _play_causal(s, bb, num_blocks, prompts, branch, weight, preview)
        label = ""
    else:
        lat, frames = _play_chunked(s, bb, num_blocks, prompts, chunk_steps, chunk_cfg)
        label = CHUNKED_LABEL
    s.blocks_done = k0 + num_blocks
    recs = s.rollout.records[-num_blocks:] if s.rollout is not None else s.records[-num_blocks:]
    recs = [r.to_dict() if hasattr(r, "to_dict") else dict(r) for r in recs]
    if s.rollout is not None:
        s.records = [r.to_dict() for r in s.rollout.records[-64:]]
    return PlayResult(frames=frames, latents=lat, records=recs, camera=s.camera(), seconds=time.perf_counter() - t0,
                      label=label)


def _play_causal(s, bb, num_blocks, prompts, branch, weight, preview):
    from .control import registry
    from .control.base import bind

    atts = []
    if branch is not None:
        from .control.gamecraft import camera_signal

        sig = camera_signal(s.camera(), s.height, s.width, weight=weight)
        registry.check_pairing(branch, sig, "wan", WHERE)
        atts = registry.attachments([bind(branch, sig, where=WHERE)], bb)
    lat = s.rollout.generate(num_blocks, atts, prompts=prompts, desc=WHERE, preview=preview)
    frames = s.decoder.decode(lat)[0] if s.decoder is not None else None
    if frames is not None:
        s.last_frame = frames[-1:].clone()
    return lat, frames


def _play_chunked(s, bb, num_blocks, prompts, steps, cfg):
    from .backbones import wan
    from .sampling.wan import sample_wan

    lats, outs = [], []
    n = s.config.block_latent_frames
    for i in range(num_blocks):
        k = s.blocks_done + i
        first = k == 0
        frames_n = 1 + 4 * (n - 1) if first else 1 + 4 * n
        image = s.image if first else s.last_frame
        seed = int(torch.randint(0, 2 ** 62, (1,), generator=s.generator))
        pos = wan.encode_prompt(bb, [prompts[i]])
        neg = wan.encode_prompt(bb, [s.negative]) if cfg > 1 else None
        t0 = time.perf_counter()
        from .video_io import fit_frames

        img = fit_frames(image.float(), s.height, s.width)
        lat = sample_wan(bb, img, pos, neg, num_frames=frames_n, height=s.height, width=s.width, steps=steps,
                         cfg=cfg, seed=seed, desc=WHERE + " (chunked)")
        fr = wan.decode_latents(bb, lat)[0]
        if not first:
            fr, lat = fr[1:], lat[:, :, 1:]
        s.last_frame = fr[-1:].clone()
        lats.append(lat)
        outs.append(fr)
        s.records.append({"block": k, "prompt": prompts[i], "seed": seed, "mode": "chunked", "frames": frames_n,
                          "seconds": time.perf_counter() - t0})
    return torch.cat(lats, dim=2), torch.cat(outs)


# ------------------------------------------------------------------------------------------- snapshots
SNAPSHOT_FOLDER = "interplay_sessions"


def snapshot_path(name: str, *, node: str = "GameCraft Session", input_name: str = "snapshot") -> Path:
    """Where a snapshot called ``name`` lives: ``<output>/interplay_sessions/<name>.safetensors`` (an annotated or
    absolute path must stay inside the output folder; ``runtime.confined_path`` refuses anything else)."""
    from . import runtime

    text = str(name or "").strip()
    if not text:
        raise ValueError(f"{node}: '{input_name}' is empty; give a snapshot name such as 'my_run'")
    if not text.endswith(".safetensors"):
        text += ".safetensors"
    p = Path(text)
    if not p.is_absolute() and "[" not in text:
        p = runtime.output_directory() / SNAPSHOT_FOLDER / p
    return runtime.confined_path(str(p), node=node, input_name=input_name, search=("output",), allow=("output",))


def _gen_state(g: torch.Generator | None):
    return None if g is None else g.get_state().clone()


def save_snapshot(s: PlaySession, path) -> Path:
    """Write session ``s`` to one safetensors file (atomically): cache, held latents, conditions, generator,
    decoder cache, camera, last frame as tensors; everything else as JSON metadata."""
    from .training.trainer import save_safetensors_atomic

    t: dict[str, torch.Tensor] = {}
    meta: dict = {"format": SNAPSHOT_FORMAT, "version": SNAPSHOT_VERSION, "id": s.id, "mode": s.mode,
                  "width": s.width, "height": s.height, "config": s.config.to_dict(), "variant": s.variant,
                  "seed": s.seed, "fps": s.fps, "motion": vars(s.motion) | {}, "intrinsics": s.intrinsics.to_dict(),
                  "cam_state": s.cam_state.to_dict(), "base_prompt": s.base_prompt, "instruction": s.instruction,
                  "negative": s.negative, "blocks_done": s.blocks_done, "records": s.records, "created": s.created}
    for name, v in (("c2w", s.c2w), ("last_frame", s.last_frame), ("image", s.image)):
        if v is not None:
            t[name] = v.detach().cpu().contiguous()
    if s.generator is not None:
        t["chunk_generator"] = _gen_state(s.generator)
    if s.decoder is not None:
        dt, dm = s.decoder.state()
        t.update(dt)
        meta["decoder"] = dm
    r = s.rollout
    if r is not None:
        c = r.cache
        t["generator"] = _gen_state(r.generator)
        experts = {}
        for name, ec in c.experts.items():
            experts[name] = {"rows": list(ec.rows) if ec.rows is not None else None, "layers": sorted(ec.kv)}
            for layer, (k, v) in ec.kv.items():
                t[f"cache.{name}.{layer}.k"] = k.detach().cpu().contiguous()
                t[f"cache.{name}.{layer}.v"] = v.detach().cpu().contiguous()
        for f, v in r.held.items():
            t[f"held.{f}"] = v.detach().cpu().contiguous()
        cd = r._conds
        if cd is not None:
            for k, v in cd.parts.items():
                t[f"conds.part.{k}"] = v.detach().cpu().contiguous()
            for k in ("image_embeds", "first_frame_latent", "first_frame_mask", "token_mask"):
                v = getattr(cd, k)
                if v is not None:
                    t[f"conds.{k}"] = v.detach().cpu().contiguous()
        meta["rollout"] = {"frames": c.frames, "groups": c.groups, "experts": experts,
                           "tokens_per_frame": c.tokens_per_frame, "writes": c.writes,
                           "text_key": list(c.text_key) if c.text_key is not None else None,
                           "prompt": r.prompt, "blocks_done": r.blocks_done, "forwards": r.forwards,
                           "held": sorted(r.held), "conds": cd is not None,
                           "records": [x.to_dict() for x in r.records[-64:]]}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors_atomic(t, path, metadata={"format": SNAPSHOT_FORMAT, "interplay_session": json.dumps(meta)})
    return path


def load_snapshot(path, bb: Backbone, *, sid: str | None = None, encode=None) -> PlaySession:
    """Read a snapshot back into a session for ``bb`` (the model it was made with: checked by variant)."""
    import dataclasses

    from .backbones.wan_stream import StreamDecoder
    from .sampling.causal import BlockRecord, _ExpertCache
    from .sampling.wan import WanConds
    from .weights import read_safetensors

    path = Path(path)
    tensors, header = read_safetensors(path, "GameCraft Session")
    if header.get("format") != SNAPSHOT_FORMAT or "interplay_session" not in header:
        raise ValueError(f"GameCraft Session: {path.name} is not a session snapshot (its metadata has no "
                         f"{SNAPSHOT_FORMAT!r}); pick a file written by the Session node's snapshot")
    try:
        meta = json.loads(header["interplay_session"])
    except json.JSONDecodeError as e:
        raise ValueError(f"GameCraft Session: {path.name} has unreadable session metadata ({e.msg})") from None
    if meta.get("version") != SNAPSHOT_VERSION:
        raise ValueError(f"GameCraft Session: {path.name} is snapshot version {meta.get('version')!r}; this pack "
                         f"reads version {SNAPSHOT_VERSION}")
    if meta["variant"] != bb.variant:
        raise ValueError(f"GameCraft Session: {path.name} was made with {meta['variant']}; the connected model is "
                         f"{bb.variant}. Load that model to restore it")
    cfg = CausalConfig.from_dict(meta["config"])
    dev = bb.device
    s = start_session(bb, sid=sid or meta["id"], mode=meta["mode"], width=meta["width"], height=meta["height"],
                      config=cfg, image=tensors.get("image"), seed=meta["seed"], fps=meta["fps"],
                      motion=C.Motion(**meta["motion"]), intrinsics=C.Intrinsics(**meta["intrinsics"]),
                      negative=meta["negative"], encode=encode, decode="decoder" in meta)
    s.c2w = tensors.get("c2w")
    cs = meta["cam_state"]
    s.cam_state = C.CameraState(tuple(cs["position"]), cs["yaw"], cs["pitch"], cs["frame"])
    s.base_prompt, s.instruction = meta["base_prompt"], meta["instruction"]
    s.blocks_done, s.records, s.created = meta["blocks_done"], meta["records"], meta["created"]
    s.last_frame = tensors.get("last_frame")
    if "chunk_generator" in tensors:
        s.generator.set_state(tensors["chunk_generator"])
    if s.decoder is not None:
        s.decoder.load_state(tensors, meta["decoder"])
    rm = meta.get("rollout")
    if rm is not None:
        r = s.rollout
        r.generator.set_state(tensors["generator"])
        c = r.cache
        c.frames, c.groups = list(rm["frames"]), list(rm["groups"])
        c.tokens_per_frame, c.writes = rm["tokens_per_frame"], rm["writes"]
        for name, info in rm["experts"].items():
            ec = _ExpertCache(rows=tuple(info["rows"]) if info["rows"] is not None else None)
            for layer in info["layers"]:
                ec.kv[layer] = (tensors[f"cache.{name}.{layer}.k"].to(dev, bb.dtype),
                                tensors[f"cache.{name}.{layer}.v"].to(dev, bb.dtype))
            c.experts[name] = ec
        r.held = {int(f): tensors[f"held.{f}"].to(dev) for f in rm["held"]}
        r.prompt = rm["prompt"]
        c.text_key = tuple(rm["text_key"]) if rm["text_key"] is not None else None
        r.blocks_done, r.forwards = rm["blocks_done"], rm["forwards"]
        r.records = [BlockRecord(**{**x, "latent_frames": tuple(x["latent_frames"])}) for x in rm["records"]]
        if rm["conds"]:
            parts = {k[len("conds.part."):]: v.to(dev) for k, v in tensors.items() if k.startswith("conds.part.")}
            extra = {k: (tensors[f"conds.{k}"].to(dev) if f"conds.{k}" in tensors else None)
                     for k in ("image_embeds", "first_frame_latent", "first_frame_mask", "token_mask")}
            if extra["image_embeds"] is not None:
                extra["image_embeds"] = extra["image_embeds"].to(bb.dtype)
            r._conds = dataclasses.replace(WanConds(text={}), parts=parts, **extra)
    return s
