// Pure logic of the Key Timeline widget: parsing, serialisation, the block layout and the grid edits. No DOM,
// no ComfyUI; tested with `node --test tests/web/`. The JSON and the text syntaxes mirror
// models/conditions/keys.py (parse_timeline, to_block_text); keep them in step.
//
// A timeline is {v: 1, segments: [{keys: [...], frames: n, mouse?: [dx, dy]}]}: `frames` counts NEW frames
// (motion steps), step i moves the camera from frame startFrame+i-1 to startFrame+i. Blocks are absolute:
// block 0 = frames 0..firstBlockFrames-1 (the image + firstBlockFrames-1 new frames), block b >= 1 holds
// blockFrames frames.

export const VERSION = 1;
export const KEYS = ["W", "A", "S", "D", "UP", "DOWN", "LEFT", "RIGHT", "SPACE"];
export const LABELS = { W: "W", A: "A", S: "S", D: "D", UP: "↑", DOWN: "↓", LEFT: "←", RIGHT: "→", SPACE: "Space" };
const ALIASES = { "↑": "UP", "↓": "DOWN", "←": "LEFT", "→": "RIGHT", ARROWUP: "UP", ARROWDOWN: "DOWN",
  ARROWLEFT: "LEFT", ARROWRIGHT: "RIGHT" };
const NONE_NAMES = ["NONE", "IDLE"];
export const MAX_FRAMES = 100000;
const ALLOWED = `${KEYS.join(", ")}, NONE, MOUSE(dx,dy)`;

// ------------------------------------------------------------------------------------------- blocks
export const makeGrid = (blockFrames = 12, firstBlockFrames = 9) => ({ blockFrames, firstBlockFrames });
export const blockEnd = (g, b) => g.firstBlockFrames - 1 + b * g.blockFrames;
export const blockStart = (g, b) => (b === 0 ? 0 : blockEnd(g, b - 1) + 1);
export const blockOf = (g, f) => (f < g.firstBlockFrames ? 0 : 1 + Math.floor((f - g.firstBlockFrames) / g.blockFrames));

export function checkGrid(g) {
  const ok = (v) => Number.isInteger(v) && v >= 1;
  if (!ok(g.blockFrames) || !ok(g.firstBlockFrames)) return "block sizes must be whole numbers >= 1";
  if (g.firstBlockFrames > g.blockFrames + 1) return "first_block_frames must be at most block_frames + 1";
  return null;
}

// ---------------------------------------------------------------------------------------------- keys
const canonical = (set) => KEYS.filter((k) => set.has(k));

function keyName(token) {
  const t = token.trim();
  const u = t.toUpperCase();
  if (ALIASES[u]) return ALIASES[u];
  if (ALIASES[t]) return ALIASES[t];
  return KEYS.includes(u) ? u : null;
}

const NUM = "[-+]?(?:\\d+(?:\\.\\d*)?|\\.\\d+)";
const MOUSE = new RegExp(`^MOUSE\\s*\\(\\s*(${NUM})\\s*,\\s*(${NUM})\\s*\\)$`, "i");

function splitOutside(s, seps) {
  const out = [];
  let depth = 0;
  let cur = "";
  for (const ch of s) {
    if (ch === "(") depth += 1;
    else if (ch === ")") depth = Math.max(depth - 1, 0);
    if (seps.includes(ch) && depth === 0) { out.push(cur); cur = ""; } else cur += ch;
  }
  out.push(cur);
  return out;
}

class TimelineError extends Error {}
const bad = (msg) => new TimelineError(msg);
const repr = (s) => `'${s}'`; // Python's repr of a plain string, as the Python errors print it

function parseKeys(text, where) {
  const keys = new Set();
  const mouse = [0, 0];
  let none = false;
  for (const term of splitOutside(text, "+")) {
    const t = term.trim();
    if (!t) throw bad(`empty key in ${where} (a '+' with nothing beside it)`);
    const m = MOUSE.exec(t);
    if (m) { mouse[0] += Number(m[1]); mouse[1] += Number(m[2]); continue; }
    if (NONE_NAMES.includes(t.toUpperCase())) { none = true; continue; }
    const k = keyName(t);
    if (k === null) throw bad(`unknown key ${repr(t)} in ${where}; allowed: ${ALLOWED}`);
    if (keys.has(k)) throw bad(`key ${k} given twice in ${where}`);
    keys.add(k);
  }
  if (none && (keys.size || mouse[0] || mouse[1])) throw bad(`NONE combined with other keys in ${where}; NONE means nothing is held`);
  return { keys: canonical(keys), mouse };
}

const seg = (keys, frames, mouse = [0, 0]) => (mouse[0] || mouse[1] ? { keys, frames, mouse } : { keys, frames });

// ------------------------------------------------------------------------------------------- parsing
const RANGE = new RegExp(`^\\s*(\\d+(?:\\.\\d*)?|\\.\\d+)\\s*s?\\s*-\\s*(\\d+(?:\\.\\d*)?|\\.\\d+)\\s*s\\s*:([\\s\\S]*)$`, "i");
const TIMES = /^\s*[-+]?[\d.]+\s*s?\s*-/i;
const REPEAT = /^([\s\S]*?)\*\s*([^*]*)$/;
const frameOfTime = (t, fps) => Math.floor(t * fps + 0.5);

function items(text) {
  const lines = text.split(/\r?\n/).map((ln) => ln.split("#")[0]);
  return splitOutside(lines.join("\n"), ",;\n").map((s) => s.trim()).filter((s) => s);
}

function finish(segments) {
  const total = segments.reduce((a, s) => a + s.frames, 0);
  if (total > MAX_FRAMES) throw bad(`covers ${total} frames; at most ${MAX_FRAMES} per timeline`);
  return { v: VERSION, segments };
}

export function parseText(text, { grid = makeGrid(), fps = 16, startFrame = 0 } = {}) {
  const its = items(text);
  if (!its.length) throw bad("is empty: give at least one item, e.g. W*2");
  const ranged = its.map((it) => TIMES.test(it));
  if (ranged.some((r) => r) && !ranged.every((r) => r)) {
    const i = ranged.indexOf(!ranged[0]);
    throw bad(`item ${i + 1} ${repr(its[i])} mixes per-second and per-block items; use one syntax per timeline`);
  }
  const segments = [];
  if (ranged.every((r) => r)) {
    if (!(Number.isFinite(fps) && fps > 0)) throw bad(`per-second timing needs fps > 0; got ${fps}`);
    let cur = 0;
    its.forEach((it, i) => {
      const where = `item ${i + 1} ${repr(it)}`;
      const m = RANGE.exec(it);
      if (!m) throw bad(`${where} is not 'START-ENDs: KEYS' (e.g. '0-1.5s: W+RIGHT')`);
      const a = Number(m[1]);
      const b = Number(m[2]);
      const fa = frameOfTime(a, fps);
      const fb = frameOfTime(b, fps);
      if (b <= a || fb <= fa) throw bad(`${where} covers no frame at ${fps} fps (end must come after start)`);
      if (fa < cur) throw bad(`${where} starts at ${a}s, before the previous item ends; items must not overlap`);
      if (fa > cur) segments.push(seg([], fa - cur));
      const { keys, mouse } = parseKeys(m[3], where);
      segments.push(seg(keys, fb - fa, mouse));
      cur = fb;
    });
  } else {
    let cur = startFrame;
    its.forEach((it, i) => {
      const where = `item ${i + 1} ${repr(it)}`;
      const rep = REPEAT.exec(it);
      const body = rep ? rep[1] : it;
      const n = rep ? rep[2].trim() : "1";
      if (!/^\d+$/.test(n) || Number(n) < 1) throw bad(`repeat count ${repr(n)} in ${where} must be a whole number of blocks >= 1`);
      const { keys, mouse } = parseKeys(body, where);
      const end = blockEnd(grid, blockOf(grid, cur + 1) + Number(n) - 1);
      segments.push(seg(keys, end - cur, mouse));
      cur = end;
    });
  }
  return finish(segments);
}

const isNum = (x) => typeof x === "number" && Number.isFinite(x);

export function parseJSON(data) {
  if (typeof data === "string") {
    try { data = JSON.parse(data); } catch (e) { throw bad(`is not valid JSON (${e.message})`); }
  }
  if (!data || typeof data !== "object" || Array.isArray(data)) throw bad("must be a JSON object");
  if (data.v !== VERSION) throw bad(`unsupported version v=${JSON.stringify(data.v)}; allowed: 1`);
  if (!Array.isArray(data.segments) || !data.segments.length) throw bad('needs a non-empty "segments" list');
  const out = data.segments.map((s, i) => {
    const where = `segments[${i}]`;
    if (!s || typeof s !== "object" || Array.isArray(s)) throw bad(`${where} must be an object with "keys" and "frames"`);
    const unknown = Object.keys(s).filter((k) => !["keys", "frames", "mouse"].includes(k)).sort();
    if (unknown.length) throw bad(`${where} has unknown field(s) ${JSON.stringify(unknown)}; allowed: keys, frames, mouse`);
    const keys = s.keys ?? [];
    if (!Array.isArray(keys) || !keys.every((k) => typeof k === "string")) throw bad(`${where}.keys must be a list of key names`);
    const seen = new Set();
    keys.forEach((k, j) => {
      if (keys.length === 1 && NONE_NAMES.includes(k.trim().toUpperCase())) return;
      const name = keyName(k);
      if (name === null) throw bad(`unknown key ${repr(k)} at ${where}.keys[${j}]; allowed: ${KEYS.join(", ")}`);
      if (seen.has(name)) throw bad(`key ${name} given twice in ${where}.keys`);
      seen.add(name);
    });
    if (!Number.isInteger(s.frames) || s.frames < 1) throw bad(`${where}.frames must be a whole number >= 1 (new frames); got ${JSON.stringify(s.frames)}`);
    const mouse = s.mouse ?? [0, 0];
    if (!Array.isArray(mouse) || mouse.length !== 2 || !mouse.every(isNum)) throw bad(`${where}.mouse must be [dx, dy] in pixels`);
    return seg(canonical(seen), s.frames, [mouse[0], mouse[1]]);
  });
  return finish(out);
}

/**
 * JSON or either text syntax -> {ok: true, timeline} or {ok: false, error}. The error text is the Python
 * message without the "`timeline`: " prefix and the schema suffix.
 */
export function parseTimeline(text, opts = {}) {
  try {
    if (text && typeof text === "object") return { ok: true, timeline: parseJSON(text) };
    const s = String(text ?? "");
    if (!s.trim()) throw bad("is empty: give at least one item, e.g. W*2");
    const timeline = s.trimStart().startsWith("{") ? parseJSON(s) : parseText(s, opts);
    return { ok: true, timeline };
  } catch (e) {
    if (e instanceof TimelineError) return { ok: false, error: e.message };
    throw e;
  }
}

// ------------------------------------------------------------------------------------ serialisation
const numOut = (x) => Math.round(x * 1e6) / 1e6;

/** The canonical JSON string: compact, keys in KEYS order; byte-identical to Python's Timeline.to_json(). */
export function serializeTimeline(tl) {
  return JSON.stringify({
    v: VERSION,
    segments: tl.segments.map((s) => {
      const o = { keys: canonical(new Set(s.keys)), frames: s.frames };
      if (s.mouse && (s.mouse[0] || s.mouse[1])) o.mouse = [numOut(s.mouse[0]), numOut(s.mouse[1])];
      return o;
    }),
  });
}

export const totalFrames = (tl) => tl.segments.reduce((a, s) => a + s.frames, 0);

/** The block syntax when every segment ends on a block boundary, else null (Python's to_block_text). */
export function toBlockText(tl, g = makeGrid(), startFrame = 0) {
  const out = [];
  let cur = startFrame;
  for (const s of tl.segments) {
    const b0 = blockOf(g, cur + 1);
    const end = cur + s.frames;
    const b1 = blockOf(g, end);
    if (blockEnd(g, b1) !== end) return null;
    const terms = [...s.keys];
    if (s.mouse && (s.mouse[0] || s.mouse[1])) terms.push(`MOUSE(${numOut(s.mouse[0])},${numOut(s.mouse[1])})`);
    const n = b1 - b0 + 1;
    out.push((terms.join("+") || "NONE") + (n > 1 ? `*${n}` : ""));
    cur = end;
  }
  return out.join(", ");
}

// ------------------------------------------------------------------------------------------- layout
/**
 * The blocks a timeline touches: [{index, first, last, frames, held: {KEY: "all"|"some"}, mouse, partial}]
 * where first..last are the block's new frames inside the timeline and `partial` marks a block the timeline
 * ends inside of.
 */
export function blocksView(tl, g = makeGrid(), startFrame = 0) {
  const total = totalFrames(tl);
  if (total === 0) return [];
  const out = [];
  const bFirst = blockOf(g, startFrame + 1);
  const bLast = blockOf(g, startFrame + total);
  for (let b = bFirst; b <= bLast; b++) {
    const first = Math.max(blockStart(g, b), startFrame + 1);
    const last = Math.min(blockEnd(g, b), startFrame + total);
    const n = last - first + 1;
    const count = {};
    const mouse = [0, 0];
    let cur = startFrame;
    for (const s of tl.segments) {
      const lo = Math.max(cur + 1, first);
      const hi = Math.min(cur + s.frames, last);
      if (hi >= lo) {
        for (const k of s.keys) count[k] = (count[k] || 0) + (hi - lo + 1);
        if (s.mouse) { mouse[0] += (s.mouse[0] * (hi - lo + 1)) / s.frames; mouse[1] += (s.mouse[1] * (hi - lo + 1)) / s.frames; }
      }
      cur += s.frames;
    }
    const held = {};
    for (const k of KEYS) if (count[k]) held[k] = count[k] === n ? "all" : "some";
    out.push({ index: b, first, last, frames: n, held, mouse, partial: last < blockEnd(g, b) });
  }
  return out;
}

// ---------------------------------------------------------------------------------------------- edits
// Every edit returns a new timeline; the widget keeps exactly one (the JSON in the `timeline` widget).
const cloneSeg = (s) => seg([...s.keys], s.frames, s.mouse ? [...s.mouse] : [0, 0]);

/** Split so that a segment boundary falls after `step` steps (0 < step < total); mouse shared by frames. */
export function splitAt(tl, step) {
  const segments = [];
  let cur = 0;
  for (const s of tl.segments) {
    if (step > cur && step < cur + s.frames) {
      const a = step - cur;
      const b = s.frames - a;
      const m = s.mouse || [0, 0];
      segments.push(seg([...s.keys], a, [(m[0] * a) / s.frames, (m[1] * a) / s.frames]));
      segments.push(seg([...s.keys], b, [(m[0] * b) / s.frames, (m[1] * b) / s.frames]));
    } else segments.push(cloneSeg(s));
    cur += s.frames;
  }
  return { v: VERSION, segments };
}

const sameKeys = (a, b) => a.keys.length === b.keys.length && a.keys.every((k, i) => k === b.keys[i]);
const noMouse = (s) => !s.mouse || (!s.mouse[0] && !s.mouse[1]);

/** Join neighbours that hold the same keys and no mouse (what the grid shows as one run). */
export function mergeEqual(tl) {
  const segments = [];
  for (const s of tl.segments) {
    const prev = segments[segments.length - 1];
    if (prev && sameKeys(prev, s) && noMouse(prev) && noMouse(s)) prev.frames += s.frames;
    else segments.push(cloneSeg(s));
  }
  return { v: VERSION, segments };
}

/** Step range (1-based, inclusive) of block b inside a timeline starting after frame startFrame. */
export function blockSteps(g, b, startFrame = 0) {
  return [Math.max(blockStart(g, b), startFrame + 1) - startFrame, blockEnd(g, b) - startFrame];
}

function editBlock(tl, g, b, startFrame, fn) {
  const [lo, hi] = blockSteps(g, b, startFrame);
  const total = totalFrames(tl);
  let t = tl;
  if (lo - 1 > 0 && lo - 1 < total) t = splitAt(t, lo - 1);
  if (hi > 0 && hi < total) t = splitAt(t, hi);
  let cur = 0;
  const segments = t.segments.map((s) => {
    const inside = cur + 1 >= lo && cur + s.frames <= hi;
    cur += s.frames;
    return inside ? fn(cloneSeg(s)) : cloneSeg(s);
  });
  return mergeEqual({ v: VERSION, segments });
}

/** Toggle `key` over block b: on everywhere in the block if any frame lacks it, else off. */
export function toggleKey(tl, g, b, key, startFrame = 0) {
  const view = blocksView(tl, g, startFrame).find((x) => x.index === b);
  const on = !view || view.held[key] !== "all";
  return editBlock(tl, g, b, startFrame, (s) => {
    const set = new Set(s.keys);
    if (on) set.add(key); else set.delete(key);
    return seg(canonical(set), s.frames, s.mouse || [0, 0]);
  });
}

/** Set the keys held over block b (mouse kept). */
export function setBlockKeys(tl, g, b, keys, startFrame = 0) {
  return editBlock(tl, g, b, startFrame, (s) => seg(canonical(new Set(keys)), s.frames, s.mouse || [0, 0]));
}

/** Append one block (the rest of a partial last block, or the next whole block) holding `keys`. */
export function addBlock(tl, g, keys = [], startFrame = 0) {
  const total = tl ? totalFrames(tl) : 0;
  const end = blockEnd(g, blockOf(g, startFrame + total + 1));
  const segments = [...(tl ? tl.segments.map(cloneSeg) : []), seg(canonical(new Set(keys)), end - startFrame - total)];
  return mergeEqual({ v: VERSION, segments });
}

/**
 * Per-block contents [{keys, mouse}] of a block-aligned timeline (every segment ends on a block boundary),
 * else null; a segment's mouse is shared among its blocks by frames.
 */
export function blockList(tl, g = makeGrid(), startFrame = 0) {
  if (toBlockText(tl, g, startFrame) === null) return null;
  const out = [];
  let cur = startFrame;
  for (const s of tl.segments) {
    const m = s.mouse || [0, 0];
    for (let b = blockOf(g, cur + 1); b <= blockOf(g, cur + s.frames); b++) {
      const n = blockEnd(g, b) - Math.max(blockStart(g, b), cur + 1) + 1;
      out.push({ keys: [...s.keys], mouse: [(m[0] * n) / s.frames, (m[1] * n) / s.frames] });
    }
    cur += s.frames;
  }
  return out;
}

/** The timeline of per-block contents (the inverse of blockList). */
export function fromBlockList(list, g = makeGrid(), startFrame = 0) {
  let cur = startFrame;
  const segments = list.map((blk) => {
    const end = blockEnd(g, blockOf(g, cur + 1));
    const s = seg(canonical(new Set(blk.keys)), end - cur, blk.mouse || [0, 0]);
    cur = end;
    return s;
  });
  return mergeEqual({ v: VERSION, segments });
}

/**
 * Remove block b; the blocks after it move one block earlier (each keeps its keys). A timeline that is not
 * block-aligned (per-second items) loses block b's frames instead. Never leaves an empty timeline.
 */
export function removeBlock(tl, g, b, startFrame = 0) {
  const list = blockList(tl, g, startFrame);
  if (list) {
    const i = b - blockOf(g, startFrame + 1);
    if (i < 0 || i >= list.length || list.length === 1) return tl;
    return fromBlockList(list.filter((_, k) => k !== i), g, startFrame);
  }
  const [lo, hi] = blockSteps(g, b, startFrame);
  const total = totalFrames(tl);
  if (lo > total || (lo <= 1 && hi >= total)) return tl;
  let t = tl;
  if (lo - 1 > 0) t = splitAt(t, lo - 1);
  if (hi < total) t = splitAt(t, hi);
  let cur = 0;
  const segments = [];
  for (const s of t.segments) {
    const inside = cur + 1 >= lo && cur + s.frames <= hi;
    cur += s.frames;
    if (!inside) segments.push(cloneSeg(s));
  }
  return mergeEqual({ v: VERSION, segments });
}

/** Insert a block holding `keys` before block b (aligned timelines; others get it appended). */
export function insertBlock(tl, g, b, keys = [], startFrame = 0) {
  const list = blockList(tl, g, startFrame);
  if (!list) return addBlock(tl, g, keys, startFrame);
  const i = Math.max(0, Math.min(b - blockOf(g, startFrame + 1), list.length));
  list.splice(i, 0, { keys: [...keys], mouse: [0, 0] });
  return fromBlockList(list, g, startFrame);
}

/** Seconds of a frame index at fps (for labels). */
export const secondsOf = (frame, fps) => (fps > 0 ? frame / fps : 0);
