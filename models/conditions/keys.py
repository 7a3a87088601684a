"""The key timeline: which keys the player holds, for how many frames (GameCraft-2 §4.1, GameCraft-1's actions).

One JSON form travels between the web widget, API users and the engine (``{"v": 1, ...}``); two text syntaxes
are conveniences that convert to it:

    {"v": 1, "segments": [{"keys": ["W", "LEFT"], "frames": 44},
                          {"keys": ["W"], "frames": 96, "mouse": [40, -10]}]}

    W+LEFT*4, W*8                        per block: keys held for N blocks (N defaults to 1)
    0-2.75s: W+LEFT; 2.75-8.75s: W       per second (times from the start of this timeline; gaps hold no key)

A segment's ``frames`` counts NEW frames, i.e. motion steps: step i moves the camera from frame i-1 to frame
i. Frame 0 is the input image; it has no step, its pose is the start (identity) pose. ``mouse`` is the mouse
delta in pixels over the whole segment (spread evenly over its steps).

Blocks follow the Wan VAE's latent frames (4x in time, the first latent frame holds one pixel frame): with
``block_frames=12`` (3 latent frames) and ``first_block_frames=9``, block 0 is frames 0..8 (the image plus 8
new frames: 8 steps), block b >= 1 is frames 12b-3 .. 12b+8 (12 steps). So ``W*2`` is 8 + 12 = 20 steps and
``0-1.25s: W`` at 16 fps is also 20 steps: the same JSON. A block item always ends on a block boundary, so a
timeline continued mid-block (``start_frame``) finishes the current block first.

Keys (case-insensitive in text and JSON; JSON is written with these names): W A S D (translate), UP DOWN LEFT
RIGHT (rotate; also the arrows and browser names ArrowUp...), SPACE (none | jump | text, chosen where the
camera is built), NONE (nothing held) and MOUSE(dx,dy) (pixels). Combined with ``+``: ``W+D``, ``W+MOUSE(30,0)``.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

KEYS = ("W", "A", "S", "D", "UP", "DOWN", "LEFT", "RIGHT", "SPACE")
ALIASES = {"↑": "UP", "↓": "DOWN", "←": "LEFT", "→": "RIGHT", "ARROWUP": "UP", "ARROWDOWN": "DOWN",
           "ARROWLEFT": "LEFT", "ARROWRIGHT": "RIGHT"}
NONE_NAMES = ("NONE", "IDLE")
MAX_FRAMES = 100_000  # new frames in one timeline: far past any rollout, small enough that poses stay cheap
SCHEMA = ('{"v": 1, "segments": [{"keys": ["W", "LEFT"], "frames": 44, "mouse": [dx, dy] (optional)}]} '
          'or text: "W+LEFT*4, W*8" (blocks) or "0-2.75s: W+LEFT; 2.75-8.75s: W" (seconds)')
_ALLOWED = ", ".join(KEYS) + ", NONE, MOUSE(dx,dy)"


class TimelineError(ValueError):
    """A timeline that does not parse; the message names the input, the bad token and the expected form."""


def _bad(msg: str, input_name: str) -> TimelineError:
    return TimelineError(f"`{input_name}`: {msg}. Expected {SCHEMA}.")


# ------------------------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class Segment:
    """Keys held (canonical names in KEYS order) for ``frames`` motion steps; ``mouse`` px over the segment."""

    keys: tuple[str, ...]
    frames: int
    mouse: tuple[float, float] = (0.0, 0.0)

    def to_dict(self) -> dict:
        d = {"keys": list(self.keys), "frames": self.frames}
        if self.mouse != (0.0, 0.0):
            d["mouse"] = [_num_out(self.mouse[0]), _num_out(self.mouse[1])]
        return d


@dataclass(frozen=True)
class Timeline:
    """The parsed timeline: segments in order. ``frames`` is the total of new frames (motion steps)."""

    segments: tuple[Segment, ...]

    @property
    def frames(self) -> int:
        return sum(s.frames for s in self.segments)

    def to_dict(self) -> dict:
        return {"v": 1, "segments": [s.to_dict() for s in self.segments]}

    def to_json(self) -> str:
        """The canonical JSON string (what the widget writes): compact, keys in KEYS order."""
        return json.dumps(self.to_dict(), separators=(",", ":"))

    def step_segments(self) -> list[int]:
        """Segment index of every step 1..frames (list index 0 = step 1)."""
        out: list[int] = []
        for i, s in enumerate(self.segments):
            out.extend([i] * s.frames)
        return out


@dataclass(frozen=True)
class BlockGrid:
    """How pixel frames group into generation blocks (absolute frame indices; frame 0 = the image).

    Block 0 is frames 0 .. first_block_frames-1 (first_block_frames-1 new frames); block b >= 1 holds
    ``block_frames`` frames. Defaults: 3 Wan latent frames per block (12 pixel frames, 9 for block 0)."""

    block_frames: int = 12
    first_block_frames: int = 9

    def __post_init__(self):
        for name in ("block_frames", "first_block_frames"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer; got {v!r}")
        if self.first_block_frames > self.block_frames + 1:
            raise ValueError(f"first_block_frames ({self.first_block_frames}) must be at most block_frames + 1 "
                             f"({self.block_frames + 1}); 9 with 12 matches Wan's 3 latent frames per block")

    def block_end(self, b: int) -> int:
        """Index of the last frame of block b."""
        return self.first_block_frames - 1 + b * self.block_frames

    def block_start(self, b: int) -> int:
        return 0 if b == 0 else self.block_end(b - 1) + 1

    def block_of(self, frame: int) -> int:
        """The block holding absolute frame ``frame`` (>= 0)."""
        if frame < self.first_block_frames:
            return 0
        return 1 + (frame - self.first_block_frames) // self.block_frames

    def frames_for_blocks(self, n: int) -> int:
        """Video frames (the image included) after n whole blocks: 9, 21, 33, ... by default."""
        return self.block_end(n - 1) + 1 if n > 0 else 1

    def to_dict(self) -> dict:
        return {"block_frames": self.block_frames, "first_block_frames": self.first_block_frames}


def _num_out(x: float):
    """Numbers in the canonical JSON: integers stay integers, others keep 6 decimals."""
    r = round(float(x), 6)
    return int(r) if r == int(r) else r


# --------------------------------------------------------------------------------------------- keys
def _canonical(keys: set[str]) -> tuple[str, ...]:
    return tuple(k for k in KEYS if k in keys)


def _key_name(token: str) -> str | None:
    t = token.strip()
    u = t.upper()
    return ALIASES.get(u, ALIASES.get(t, u if u in KEYS else None))


_MOUSE = re.compile(r"^MOUSE\s*\(\s*([-+]?\d+(?:\.\d*)?|[-+]?\.\d+)\s*,\s*([-+]?\d+(?:\.\d*)?|[-+]?\.\d+)\s*\)$",
                    re.IGNORECASE)


def _split_outside(s: str, seps: str) -> list[str]:
    """Split on any of ``seps`` outside parentheses (MOUSE(3,-2) and MOUSE(+3,4) stay whole)."""
    out, depth, cur = [], 0, ""
    for ch in s:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth = max(depth - 1, 0)
        if ch in seps and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    out.append(cur)
    return out


def _parse_keys(text: str, where: str, input_name: str) -> tuple[tuple[str, ...], tuple[float, float]]:
    """'W+LEFT+MOUSE(3,-2)' -> (("W", "LEFT"), (3.0, -2.0)); errors name the bad token and the item."""
    keys: set[str] = set()
    mouse = [0.0, 0.0]
    none = False
    terms = _split_outside(text, "+")
    for term in terms:
        t = term.strip()
        if not t:
            raise _bad(f"empty key in {where} (a '+' with nothing beside it)", input_name)
        m = _MOUSE.match(t)
        if m:
            mouse[0] += float(m.group(1))
            mouse[1] += float(m.group(2))
            continue
        if t.upper() in NONE_NAMES:
            none = True
            continue
        k = _key_name(t)
        if k is None:
            raise _bad(f"unknown key {t!r} in {where}; allowed: {_ALLOWED}", input_name)
        if k in keys:
            raise _bad(f"key {k} given twice in {where}", input_name)
        keys.add(k)
    if none and (keys or mouse != [0.0, 0.0]):
        raise _bad(f"NONE combined with other keys in {where}; NONE means nothing is held", input_name)
    return _canonical(keys), (mouse[0], mouse[1])


# ------------------------------------------------------------------------------------------- parsing
_RANGE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*s?\s*-\s*(\d+(?:\.\d*)?|\.\d+)\s*s\s*:(.*)$", re.IGNORECASE | re.S)
_TIMES = re.compile(r"^\s*[-+]?[\d.]+\s*s?\s*-", re.IGNORECASE)
_REPEAT = re.compile(r"^(.*?)\*\s*([^*]*)$", re.S)


def _items(text: str) -> list[str]:
    lines = [ln.split("#", 1)[0] for ln in text.splitlines()]
    items = [it.strip() for it in _split_outside("\n".join(lines), ",;\n")]
    return [it for it in items if it]


def _frame_of_time(t: float, fps: float) -> int:
    return int(math.floor(t * fps + 0.5))


def parse_text(text: str, *, grid: BlockGrid = BlockGrid(), fps: float = 16.0, start_frame: int = 0,
               input_name: str = "timeline") -> Timeline:
    """The block or per-second text syntax -> Timeline (see the module docstring). ``start_frame`` is the last
    frame already generated (0: a fresh rollout from the image)."""
    items = _items(text)
    if not items:
        raise _bad("is empty: give at least one item, e.g. W*2", input_name)
    ranged = [bool(_TIMES.match(it)) for it in items]
    if any(ranged) and not all(ranged):
        i = ranged.index(not ranged[0])
        raise _bad(f"item {i + 1} {items[i]!r} mixes per-second and per-block items; use one syntax per "
                   "timeline", input_name)
    segments: list[Segment] = []
    if all(ranged):
        if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
            raise _bad(f"per-second timing needs fps > 0; got {fps!r}", input_name)
        cur = 0
        for i, it in enumerate(items):
            where = f"item {i + 1} {it!r}"
            m = _RANGE.match(it)
            if not m:
                raise _bad(f"{where} is not 'START-ENDs: KEYS' (e.g. '0-1.5s: W+RIGHT')", input_name)
            a, b = float(m.group(1)), float(m.group(2))
            fa, fb = _frame_of_time(a, fps), _frame_of_time(b, fps)
            if b <= a or fb <= fa:
                raise _bad(f"{where} covers no frame at {fps:g} fps (end must come after start)", input_name)
            if fa < cur:
                raise _bad(f"{where} starts at {a:g}s, before the previous item ends; items must not overlap",
                           input_name)
            if fa > cur:
                segments.append(Segment((), fa - cur))  # a gap holds nothing
            keys, mouse = _parse_keys(m.group(3), where, input_name)
            segments.append(Segment(keys, fb - fa, mouse))
            cur = fb
    else:
        cur = int(start_frame)
        for i, it in enumerate(items):
            where = f"item {i + 1} {it!r}"
            rep = _REPEAT.match(it)
            body, n = (rep.group(1), rep.group(2).strip()) if rep else (it, "1")
            if not re.fullmatch(r"\d+", n) or int(n) < 1:
                raise _bad(f"repeat count {n!r} in {where} must be a whole number of blocks >= 1", input_name)
            keys, mouse = _parse_keys(body, where, input_name)
            end = grid.block_end(grid.block_of(cur + 1) + int(n) - 1)
            segments.append(Segment(keys, end - cur, mouse))
            cur = end
    return _finish(segments, input_name)


def _finish(segments: list[Segment], input_name: str) -> Timeline:
    total = sum(s.frames for s in segments)
    if total > MAX_FRAMES:
        raise _bad(f"covers {total} frames; at most {MAX_FRAMES} per timeline", input_name)
    return Timeline(tuple(segments))


def parse_json(data: dict | str, *, input_name: str = "timeline") -> Timeline:
    """The v1 JSON (a dict or its string) -> Timeline, every field checked."""
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except json.JSONDecodeError as e:
            raise _bad(f"is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})", input_name) from None
    if not isinstance(data, dict):
        raise _bad(f"must be a JSON object; got {type(data).__name__}", input_name)
    if data.get("v") != 1:
        raise _bad(f"unsupported version v={data.get('v')!r}; allowed: 1", input_name)
    segs = data.get("segments")
    if not isinstance(segs, list) or not segs:
        raise _bad('needs a non-empty "segments" list', input_name)
    out = []
    for i, s in enumerate(segs):
        where = f"segments[{i}]"
        if not isinstance(s, dict):
            raise _bad(f"{where} must be an object with \"keys\" and \"frames\"", input_name)
        unknown = sorted(set(s) - {"keys", "frames", "mouse"})
        if unknown:
            raise _bad(f"{where} has unknown field(s) {unknown}; allowed: keys, frames, mouse", input_name)
        keys = s.get("keys", [])
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise _bad(f"{where}.keys must be a list of key names", input_name)
        seen: set[str] = set()
        for j, k in enumerate(keys):
            if k.strip().upper() in NONE_NAMES and len(keys) == 1:
                continue
            name = _key_name(k)
            if name is None:
                raise _bad(f"unknown key {k!r} at {where}.keys[{j}]; allowed: {', '.join(KEYS)}", input_name)
            if name in seen:
                raise _bad(f"key {name} given twice in {where}.keys", input_name)
            seen.add(name)
        n = s.get("frames")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise _bad(f"{where}.frames must be a whole number >= 1 (new frames); got {n!r}", input_name)
        mouse = s.get("mouse", [0, 0])
        if (not isinstance(mouse, list) or len(mouse) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                           for v in mouse)):
            raise _bad(f"{where}.mouse must be [dx, dy] in pixels; got {mouse!r}", input_name)
        out.append(Segment(_canonical(seen), n, (float(mouse[0]), float(mouse[1]))))
    return _finish(out, input_name)


def parse_timeline(value: str | dict, *, grid: BlockGrid = BlockGrid(), fps: float = 16.0, start_frame: int = 0,
                   input_name: str = "timeline") -> Timeline:
    """JSON (a dict, or a string starting with '{') or either text syntax -> Timeline.

    Raises TimelineError (a ValueError) naming ``input_name``, the bad token or field and the expected form."""
    if isinstance(value, dict):
        return parse_json(value, input_name=input_name)
    if not isinstance(value, str) or not value.strip():
        raise _bad("is empty: give at least one item, e.g. W*2", input_name)
    if value.lstrip().startswith("{"):
        return parse_json(value, input_name=input_name)
    return parse_text(value, grid=grid, fps=fps, start_frame=start_frame, input_name=input_name)


def to_block_text(timeline: Timeline, grid: BlockGrid = BlockGrid(), start_frame: int = 0) -> str | None:
    """The block syntax for a timeline whose segments end on block boundaries, else None (the inverse of
    parse_text for block text; used for previews and the widget)."""
    items, cur = [], start_frame
    for s in timeline.segments:
        b0 = grid.block_of(cur + 1)
        end = cur + s.frames
        b1 = grid.block_of(end)
        if grid.block_end(b1) != end:
            return None
        terms = list(s.keys) + ([f"MOUSE({_num_out(s.mouse[0])},{_num_out(s.mouse[1])})"]
                                if s.mouse != (0.0, 0.0) else [])
        n = b1 - b0 + 1
        items.append(("+".join(terms) or "NONE") + (f"*{n}" if n > 1 else ""))
        cur = end
    return ", ".join(items)
