// Pure geometry and serialisation for the Arrow Painter widget: no DOM, no ComfyUI. Tested with
// `node --test tests/web/`. The drawing format and the arrow -> velocity rule mirror
// models/conditions/painter.py and models/conditions/velocity.py (arrow_velocity); keep them in step.
//
// Coordinates: the drawing is stored in IMAGE pixels (origin top-left, y down) of the node's input
// image; the canvas shows that image letterboxed, and every pointer position goes through
// canvasToImage() before it is stored.

export const VERSION = 1;
export const LENGTH_SCALE = 0.2; // an arrow this fraction of the image diagonal long means 1 m/s
export const PALETTE = [
  [230, 25, 75], [60, 180, 75], [0, 130, 200], [245, 130, 48],
  [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60],
];

export const colorOf = (i) => {
  const [r, g, b] = PALETTE[i % PALETTE.length];
  return `rgb(${r}, ${g}, ${b})`;
};

// ------------------------------------------------------------------------------------------ view
/** Letterbox an imgW x imgH image into a canvasW x canvasH canvas: {scale, ox, oy}. */
export function fitView(imgW, imgH, canvasW, canvasH) {
  if (!(imgW > 0 && imgH > 0 && canvasW > 0 && canvasH > 0)) return { scale: 1, ox: 0, oy: 0 };
  const scale = Math.min(canvasW / imgW, canvasH / imgH);
  return { scale, ox: (canvasW - imgW * scale) / 2, oy: (canvasH - imgH * scale) / 2 };
}

export const canvasToImage = (p, v) => ({ x: (p.x - v.ox) / v.scale, y: (p.y - v.oy) / v.scale });
export const imageToCanvas = (p, v) => ({ x: p.x * v.scale + v.ox, y: p.y * v.scale + v.oy });

export const clampToImage = (p, w, h) => ({
  x: Math.min(Math.max(p.x, 0), w),
  y: Math.min(Math.max(p.y, 0), h),
});

export const insideImage = (p, w, h) => p.x >= 0 && p.y >= 0 && p.x <= w && p.y <= h;

/**
 * Top-left corner of an arrow's speed label (a tw x th box, canvas px) inside a cw x ch canvas. It sits
 * `gap` beyond the head on the side the arrow points to (x) and above the head (y); where that side has no
 * room it goes to the other side, and it is finally clamped `pad` inside the canvas, so it is never cut off,
 * wherever the head is and whatever the zoom. A label wider (taller) than the canvas starts at `pad`.
 */
export function labelPosition(head, tail, tw, th, cw, ch, gap = 6, pad = 2) {
  const clamp = (v, lo, hi) => Math.max(lo, Math.min(v, hi));
  const right = head.x + gap;
  const left = head.x - gap - tw;
  let x = head.x >= tail.x ? right : left;
  if (x + tw > cw - pad && left >= pad) x = left;
  else if (x < pad && right + tw <= cw - pad) x = right;
  let y = head.y - gap - th;
  if (y < pad) y = head.y + gap; // no room above: below the head
  return { x: clamp(x, pad, Math.max(pad, cw - pad - tw)), y: clamp(y, pad, Math.max(pad, ch - pad - th)) };
}

// ------------------------------------------------------------------------------------- velocity
const lengthOf = (a) => Math.hypot(a.x1 - a.x0, a.y1 - a.y0);

/** Speed in m/s of an object's arrow: the explicit `speed`, else length / (lengthScale * diagonal). */
export function arrowSpeed(obj, width, height, lengthScale = LENGTH_SCALE) {
  if (obj.speed !== undefined && obj.speed !== null) return obj.speed;
  const a = obj.arrow;
  return lengthOf(a) / (lengthScale * Math.hypot(width, height));
}

/** {vx, vy, vz} in m/s, screen axes with +y UP (the image's y is flipped), as arrow_velocity in Python. */
export function arrowVelocity(obj, width, height, lengthScale = LENGTH_SCALE) {
  const a = obj.arrow;
  const dx = a.x1 - a.x0;
  const dy = -(a.y1 - a.y0);
  const len = Math.hypot(dx, dy);
  const vz = obj.vz ?? 0;
  if (len === 0) return { vx: 0, vy: 0, vz };
  const s = arrowSpeed(obj, width, height, lengthScale);
  return { vx: (s * dx) / len, vy: (s * dy) / len, vz };
}

/** Head position that gives `speed` m/s along the arrow's current direction (for a typed speed). */
export function headForSpeed(arrow, speed, width, height, lengthScale = LENGTH_SCALE) {
  const len = lengthOf(arrow);
  if (len === 0) return { x: arrow.x1, y: arrow.y1 };
  const want = speed * lengthScale * Math.hypot(width, height);
  return {
    x: arrow.x0 + ((arrow.x1 - arrow.x0) / len) * want,
    y: arrow.y0 + ((arrow.y1 - arrow.y0) / len) * want,
  };
}

export const formatSpeed = (s) => `${s.toFixed(2)} m/s`;

// ------------------------------------------------------------------------------------ hit tests
/** Distance from point p to segment ab. */
export function distToSegment(p, a, b) {
  const dx = b.x - a.x;
  const dy = b.y - a.y;
  const l2 = dx * dx + dy * dy;
  let t = l2 === 0 ? 0 : ((p.x - a.x) * dx + (p.y - a.y) * dy) / l2;
  t = Math.max(0, Math.min(1, t));
  return Math.hypot(p.x - (a.x + t * dx), p.y - (a.y + t * dy));
}

/**
 * What lies under canvas point `p`, within `radius` canvas pixels: {kind: "head"|"tail"|"point"|"shaft",
 * object, point?} or null. Heads win over tails, tails over clicks, clicks over shafts; later objects
 * (drawn on top) win ties.
 */
export function hitTest(p, drawing, view, radius = 8) {
  const objs = drawing.objects;
  const order = ["head", "tail", "point", "shaft"];
  let best = null;
  for (let i = objs.length - 1; i >= 0; i--) {
    const a = objs[i].arrow;
    const t = imageToCanvas({ x: a.x0, y: a.y0 }, view);
    const h = imageToCanvas({ x: a.x1, y: a.y1 }, view);
    const cands = [];
    const dh = Math.hypot(p.x - h.x, p.y - h.y);
    if (dh <= radius) cands.push({ kind: "head", object: i, d: dh });
    const dt = Math.hypot(p.x - t.x, p.y - t.y);
    if (dt <= radius) cands.push({ kind: "tail", object: i, d: dt });
    (objs[i].points || []).forEach((q, j) => {
      const c = imageToCanvas({ x: q[0], y: q[1] }, view);
      const d = Math.hypot(p.x - c.x, p.y - c.y);
      if (d <= radius) cands.push({ kind: "point", object: i, point: j, d });
    });
    const ds = distToSegment(p, t, h);
    if (ds <= radius / 2) cands.push({ kind: "shaft", object: i, d: ds });
    for (const c of cands) {
      if (!best || order.indexOf(c.kind) < order.indexOf(best.kind)
          || (c.kind === best.kind && c.d < best.d)) best = c;
    }
  }
  if (!best) return null;
  const { d, ...hit } = best;
  return hit;
}

// -------------------------------------------------------------------------------------- editing
// All edits return a new drawing; the widget keeps exactly one (the JSON in the `drawing` widget).
export const emptyDrawing = (width, height) => ({ v: VERSION, width, height, length_scale: LENGTH_SCALE, objects: [] });

export const addObject = (d, x0, y0, x1, y1) => ({
  ...d, objects: [...d.objects, { arrow: { x0, y0, x1, y1 }, points: [] }],
});

export const removeObject = (d, i) => ({ ...d, objects: d.objects.filter((_, k) => k !== i) });

export function moveHandle(d, i, which, x, y) {
  const objects = d.objects.map((o, k) => {
    if (k !== i) return o;
    const arrow = which === "tail" ? { ...o.arrow, x0: x, y0: y } : { ...o.arrow, x1: x, y1: y };
    return { ...o, arrow };
  });
  return { ...d, objects };
}

export function addPoint(d, i, x, y, label) {
  if (i < 0 || i >= d.objects.length) return d;
  return {
    ...d,
    objects: d.objects.map((o, k) => (k === i ? { ...o, points: [...(o.points || []), [x, y, label ? 1 : 0]] } : o)),
  };
}

export const removePoint = (d, i, j) => ({
  ...d,
  objects: d.objects.map((o, k) => (k === i ? { ...o, points: o.points.filter((_, m) => m !== j) } : o)),
});

export function setSpeed(d, i, speed) {
  return {
    ...d,
    objects: d.objects.map((o, k) => {
      if (k !== i) return o;
      const { speed: _old, ...rest } = o;
      return speed === null || speed === undefined || Number.isNaN(speed) ? rest : { ...rest, speed };
    }),
  };
}

/** Rescale a drawing to another image size (a new image of a different resolution was connected). */
export function rescale(d, width, height) {
  if (!d.width || !d.height || (d.width === width && d.height === height)) return { ...d, width, height };
  const sx = width / d.width;
  const sy = height / d.height;
  return {
    ...d, width, height,
    objects: d.objects.map((o) => ({
      ...o,
      arrow: { x0: o.arrow.x0 * sx, y0: o.arrow.y0 * sy, x1: o.arrow.x1 * sx, y1: o.arrow.y1 * sy },
      points: (o.points || []).map(([x, y, l]) => [x * sx, y * sy, l]),
    })),
  };
}

// -------------------------------------------------------------------------------- serialisation
const r1 = (x) => Math.round(x * 10) / 10; // 0.1 px is finer than any mask

/** The JSON string written into the node's `drawing` input (what the API receives). */
export function serializeDrawing(d) {
  const out = { v: VERSION, width: d.width, height: d.height, length_scale: d.length_scale ?? LENGTH_SCALE };
  out.objects = d.objects.map((o) => {
    const a = o.arrow;
    const obj = { arrow: { x0: r1(a.x0), y0: r1(a.y0), x1: r1(a.x1), y1: r1(a.y1) } };
    if (o.speed !== undefined && o.speed !== null) obj.speed = Math.round(o.speed * 1000) / 1000;
    if (o.vz) obj.vz = o.vz;
    if (o.points && o.points.length) obj.points = o.points.map(([x, y, l]) => [r1(x), r1(y), l ? 1 : 0]);
    return obj;
  });
  return JSON.stringify(out);
}

const isNum = (x) => typeof x === "number" && Number.isFinite(x);

/**
 * Parse and validate a drawing string: {ok: true, drawing} or {ok: false, error}. Mirrors
 * parse_drawing in Python (same checks, same words), but an empty string or an empty object list is a
 * valid empty drawing here: the widget starts empty and the node reports it at run time.
 */
export function parseDrawing(text) {
  if (text === undefined || text === null || String(text).trim() === "") return { ok: true, drawing: emptyDrawing(0, 0) };
  let data;
  try {
    data = JSON.parse(text);
  } catch (e) {
    return { ok: false, error: `not valid JSON (${e.message})` };
  }
  if (!data || typeof data !== "object" || Array.isArray(data)) return { ok: false, error: "must be a JSON object" };
  if (data.v !== VERSION) return { ok: false, error: `unsupported version v=${JSON.stringify(data.v)}; allowed: 1` };
  if (!Array.isArray(data.objects)) return { ok: false, error: 'needs an "objects" list' };
  for (const k of ["width", "height"]) {
    if (data[k] !== undefined && !(isNum(data[k]) && data[k] > 0)) return { ok: false, error: `${k} must be > 0` };
  }
  const ls = data.length_scale ?? LENGTH_SCALE;
  if (!(isNum(ls) && ls > 0)) return { ok: false, error: "length_scale must be > 0" };
  const objects = [];
  for (let i = 0; i < data.objects.length; i++) {
    const o = data.objects[i];
    const where = `objects[${i}]`;
    if (!o || typeof o !== "object" || !o.arrow || typeof o.arrow !== "object") {
      return { ok: false, error: `${where} needs an "arrow" object with x0, y0, x1, y1` };
    }
    for (const k of ["x0", "y0", "x1", "y1"]) {
      if (!isNum(o.arrow[k])) return { ok: false, error: `${where}.arrow.${k} must be a finite number` };
    }
    if (o.speed !== undefined && o.speed !== null && !(isNum(o.speed) && o.speed >= 0)) {
      return { ok: false, error: `${where}.speed must be >= 0 m/s` };
    }
    const pts = o.points ?? [];
    if (!Array.isArray(pts)) return { ok: false, error: `${where}.points must be a list of [x, y, label]` };
    for (let j = 0; j < pts.length; j++) {
      const p = pts[j];
      if (!Array.isArray(p) || p.length !== 3 || !isNum(p[0]) || !isNum(p[1]) || (p[2] !== 0 && p[2] !== 1)) {
        return { ok: false, error: `${where}.points[${j}] must be [x, y, label] with label 1 (positive) or 0 (negative)` };
      }
    }
    const { x0, y0, x1, y1 } = o.arrow;
    const obj = { arrow: { x0, y0, x1, y1 }, points: pts.map((p) => [p[0], p[1], p[2]]) };
    if (o.speed !== undefined && o.speed !== null) obj.speed = o.speed;
    if (o.vz) obj.vz = o.vz;
    objects.push(obj);
  }
  return {
    ok: true,
    drawing: { v: VERSION, width: data.width ?? 0, height: data.height ?? 0, length_scale: ls, objects },
  };
}
