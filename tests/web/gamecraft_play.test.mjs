import test from "node:test";
import assert from "node:assert/strict";
import * as P from "../../web/lib/gamecraft_play.js";

test("keys held become one block in the timeline syntax, in a fixed order", () => {
  assert.equal(P.keysString(new Set(["LEFT", "W"])), "W+LEFT");
  assert.equal(P.keysString(new Set()), "");
  assert.equal(P.keysString(new Set([P.KEYMAP.ArrowRight, P.KEYMAP.d, P.KEYMAP[" "]])), "D+RIGHT+SPACE");
});

test("the next block's prompt replaces session, keys, instruction and asks for one block", () => {
  const out = { 4: { class_type: "InterplayGameCraftSampler", inputs: { session: "new", keys: "W", num_blocks: 3,
    instruction: "a", seed: 1 } }, 2: { class_type: "X", inputs: {} } };
  const p = P.nextBlockPrompt(out, 4, { session: "gc-1", keys: "D", instruction: "b" });
  assert.deepEqual(p[4].inputs, { session: "gc-1", keys: "D", num_blocks: 1, instruction: "b", seed: 1 });
  assert.equal(out[4].inputs.session, "new"); // the graph's prompt is left alone
  assert.equal(P.nextBlockPrompt(out, 4, { session: null, keys: "" })[4].inputs.session, "new");
  assert.throws(() => P.nextBlockPrompt(out, 9, { keys: "" }), /no node 9/);
});

test("statistics: generated fps is frames over generation seconds", () => {
  let s = P.newStats();
  s = P.recordBlock(s, { session: "gc-1", blocks: 1, new_frames: 9, seconds: 3, generated_fps: 3 }, 1000);
  s = P.recordBlock(s, { session: "gc-1", blocks: 2, new_frames: 12, seconds: 4, generated_fps: 3 }, 6000);
  assert.equal(s.blocks, 2);
  assert.equal(s.frames, 21);
  assert.equal(P.generatedFps(s), 3);
  assert.match(P.statusLine(s, { queue: 1, keys: "W", playing: true }),
    /^▶ session gc-1 · block 2 · queue 1 · generated 3.00 fps \(last 3.00\) · keys W$/);
});
