import { test } from "node:test";
import assert from "node:assert/strict";

import {
  LENGTH_SCALE, PALETTE, addObject, addPoint, arrowSpeed, arrowVelocity, canvasToImage, clampToImage,
  distToSegment, emptyDrawing, fitView, formatSpeed, headForSpeed, hitTest, imageToCanvas, labelPosition, moveHandle,
  parseDrawing, removeObject, removePoint, rescale, serializeDrawing, setSpeed,
} from "../../web/lib/arrow_geometry.js";

const close = (a, b, eps = 1e-9) => assert.ok(Math.abs(a - b) <= eps, `${a} != ${b}`);

test("fitView letterboxes and canvas<->image round-trips", () => {
  // 640x480 image in a 400x400 canvas: scale 0.625, 300 px tall, 50 px bands top and bottom
  const v = fitView(640, 480, 400, 400);
  assert.deepEqual(v, { scale: 0.625, ox: 0, oy: 50 });
  assert.deepEqual(canvasToImage({ x: 200, y: 200 }, v), { x: 320, y: 240 });
  assert.deepEqual(imageToCanvas({ x: 320, y: 240 }, v), { x: 200, y: 200 });
  const w = fitView(100, 400, 300, 200); // tall: scale 0.5, 50 px wide, centred
  assert.deepEqual(w, { scale: 0.5, ox: 125, oy: 0 });
  const p = { x: 37.25, y: 311.5 };
  const q = canvasToImage(imageToCanvas(p, w), w);
  close(q.x, p.x); close(q.y, p.y);
  assert.deepEqual(fitView(0, 10, 10, 10), { scale: 1, ox: 0, oy: 0 });
  assert.deepEqual(clampToImage({ x: -3, y: 500 }, 640, 480), { x: 0, y: 480 });
});

test("arrow speed and velocity match the Python rule (64x48 image: 16 px = 1 m/s)", () => {
  assert.equal(LENGTH_SCALE, 0.2);
  const right = { arrow: { x0: 10, y0: 20, x1: 30, y1: 20 } };
  close(arrowSpeed(right, 64, 48), 1.25);
  assert.deepEqual(arrowVelocity(right, 64, 48), { vx: 1.25, vy: -0, vz: 0 });
  const up = { arrow: { x0: 40, y0: 30, x1: 40, y1: 18 }, speed: 0.75 };
  const v = arrowVelocity(up, 64, 48);
  close(v.vx, 0); close(v.vy, 0.75); // screen y down -> +y up
  const diag = { arrow: { x0: 35, y0: 15, x1: 47, y1: 31 } }; // (12, -16): 20 px
  const d = arrowVelocity(diag, 64, 48);
  close(d.vx, 0.75); close(d.vy, -1.0);
  assert.deepEqual(arrowVelocity({ arrow: { x0: 1, y0: 1, x1: 1, y1: 1 } }, 64, 48), { vx: 0, vy: 0, vz: 0 });
  const h = headForSpeed(right.arrow, 0.5, 64, 48);
  close(h.x, 18); close(h.y, 20);
  assert.equal(formatSpeed(1.25), "1.25 m/s");
});

test("hit testing prefers heads, then tails, clicks, shafts; later objects on top", () => {
  let d = emptyDrawing(100, 100);
  d = addObject(d, 10, 10, 50, 10);
  d = addObject(d, 50, 12, 90, 12);
  d = addPoint(d, 0, 30, 40, 1);
  const v = { scale: 2, ox: 0, oy: 0 }; // canvas = 2x image
  assert.deepEqual(hitTest({ x: 100, y: 23 }, d, v), { kind: "head", object: 0 }); // head of 0 beats the nearer tail of 1
  assert.deepEqual(hitTest({ x: 102, y: 30 }, d, v), { kind: "tail", object: 1 });
  assert.deepEqual(hitTest({ x: 98, y: 20 }, d, v), { kind: "head", object: 0 });
  assert.deepEqual(hitTest({ x: 21, y: 20 }, d, v), { kind: "tail", object: 0 });
  assert.deepEqual(hitTest({ x: 61, y: 79 }, d, v), { kind: "point", object: 0, point: 0 });
  assert.deepEqual(hitTest({ x: 60, y: 21 }, d, v), { kind: "shaft", object: 0 });
  assert.equal(hitTest({ x: 60, y: 60 }, d, v), null);
  close(distToSegment({ x: 5, y: 5 }, { x: 0, y: 0 }, { x: 10, y: 0 }), 5);
  close(distToSegment({ x: -3, y: 4 }, { x: 0, y: 0 }, { x: 10, y: 0 }), 5);
});

test("edits are immutable and serialise to the v1 JSON", () => {
  const d0 = emptyDrawing(64, 48);
  const d1 = addObject(d0, 10.04, 20, 30, 20.06);
  assert.equal(d0.objects.length, 0);
  const d2 = addPoint(addPoint(d1, 0, 12, 21, 1), 0, 60, 40, 0);
  const d3 = setSpeed(moveHandle(d2, 0, "head", 31, 20), 0, 0.8);
  assert.equal(d2.objects[0].arrow.x1, 30);
  const json = serializeDrawing(d3);
  assert.equal(json, '{"v":1,"width":64,"height":48,"length_scale":0.2,"objects":[{"arrow":{"x0":10,"y0":20,'
    + '"x1":31,"y1":20},"speed":0.8,"points":[[12,21,1],[60,40,0]]}]}');
  const back = parseDrawing(json);
  assert.ok(back.ok);
  assert.equal(serializeDrawing(back.drawing), json);
  assert.equal(serializeDrawing(setSpeed(d3, 0, null)).includes("speed"), false);
  assert.equal(removePoint(d3, 0, 0).objects[0].points.length, 1);
  assert.equal(removeObject(d3, 0).objects.length, 0);
  assert.equal(addPoint(d0, 0, 1, 1, 1), d0); // no object selected: unchanged
});

test("rescale maps coordinates to a new image size", () => {
  const d = addPoint(addObject(emptyDrawing(100, 50), 10, 10, 20, 30), 0, 50, 25, 0);
  const r = rescale(d, 200, 25);
  assert.deepEqual(r.objects[0].arrow, { x0: 20, y0: 5, x1: 40, y1: 15 });
  assert.deepEqual(r.objects[0].points, [[100, 12.5, 0]]);
  assert.deepEqual(rescale(emptyDrawing(0, 0), 64, 48), emptyDrawing(64, 48));
});

test("parseDrawing rejects bad input with the same words as the Python node", () => {
  const bad = [
    ["{nope", "not valid JSON"],
    ["[1]", "must be a JSON object"],
    ['{"v":2,"objects":[]}', "allowed: 1"],
    ['{"v":1}', '"objects" list'],
    ['{"v":1,"objects":[{"arrow":{"x0":1,"y0":2,"x1":3}}]}', "objects[0].arrow.y1 must be a finite number"],
    ['{"v":1,"objects":[{"arrow":{"x0":1,"y0":2,"x1":3,"y1":4},"points":[[1,2,5]]}]}', "label 1 (positive) or 0"],
    ['{"v":1,"objects":[{"arrow":{"x0":1,"y0":2,"x1":3,"y1":4},"speed":-1}]}', "speed must be >= 0"],
    ['{"v":1,"width":-5,"objects":[]}', "width must be > 0"],
  ];
  for (const [text, needle] of bad) {
    const r = parseDrawing(text);
    assert.equal(r.ok, false, text);
    assert.ok(r.error.includes(needle), `${r.error} lacks ${needle}`);
  }
  assert.deepEqual(parseDrawing(""), { ok: true, drawing: emptyDrawing(0, 0) });
  assert.equal(parseDrawing('{"v":1,"objects":[]}').ok, true);
  assert.equal(PALETTE.length, 8);
});

test("the speed label stays inside the canvas at every arrow position and zoom", () => {
  // hand-worked: a 60x20 label, gap 6, pad 2, in a 400x300 canvas
  assert.deepEqual(labelPosition({ x: 100, y: 100 }, { x: 50, y: 100 }, 60, 20, 400, 300), { x: 106, y: 74 });
  assert.deepEqual(labelPosition({ x: 100, y: 100 }, { x: 150, y: 100 }, 60, 20, 400, 300), { x: 34, y: 74 });
  // head at the right edge, pointing right: flipped to the left of the head
  assert.deepEqual(labelPosition({ x: 398, y: 100 }, { x: 300, y: 100 }, 60, 20, 400, 300), { x: 332, y: 74 });
  // head at the left edge, pointing left: flipped to the right
  assert.deepEqual(labelPosition({ x: 1, y: 100 }, { x: 90, y: 100 }, 60, 20, 400, 300), { x: 7, y: 74 });
  // top edge: below the head; bottom-right corner: clamped up and left
  assert.deepEqual(labelPosition({ x: 100, y: 5 }, { x: 50, y: 5 }, 60, 20, 400, 300), { x: 106, y: 11 });
  assert.deepEqual(labelPosition({ x: 400, y: 300 }, { x: 300, y: 200 }, 60, 20, 400, 300), { x: 334, y: 274 });
  // a canvas narrower than the label: the label starts at the pad
  assert.deepEqual(labelPosition({ x: 20, y: 50 }, { x: 0, y: 50 }, 60, 20, 40, 100), { x: 2, y: 24 });

  // every head position on the image, every tail direction, several zooms (canvas sizes) and pixel ratios
  const image = { w: 720, h: 480 };
  for (const [cw, ch] of [[440, 300], [880, 600], [200, 140], [1600, 1200], [90, 300]]) {
    for (const dpr of [1, 2, 3]) {
      const v = fitView(image.w, image.h, cw * dpr, ch * dpr);
      const tw = 62 * dpr, th = 17.4 * dpr; // "~1.02 m/s" at 12 px bold, as the widget measures it
      for (let ix = 0; ix <= image.w; ix += 24) {
        for (let iy = 0; iy <= image.h; iy += 24) {
          for (const [dx, dy] of [[60, 0], [-60, 0], [0, 60], [0, -60], [40, 40], [-40, -40]]) {
            const head = imageToCanvas({ x: ix, y: iy }, v);
            const tail = imageToCanvas({ x: ix - dx, y: iy - dy }, v);
            const p = labelPosition(head, tail, tw, th, cw * dpr, ch * dpr, 6 * dpr, 2 * dpr);
            const fits = tw + 4 * dpr <= cw * dpr;
            assert.ok(p.x >= 2 * dpr - 1e-9 && (!fits || p.x + tw <= cw * dpr - 2 * dpr + 1e-9),
              `x ${p.x} (label ${tw}) outside ${cw * dpr} for head ${head.x},${head.y}`);
            assert.ok(p.y >= 2 * dpr - 1e-9 && p.y + th <= ch * dpr - 2 * dpr + 1e-9,
              `y ${p.y} (label ${th}) outside ${ch * dpr} for head ${head.x},${head.y}`);
          }
        }
      }
    }
  }
});
