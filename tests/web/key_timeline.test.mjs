import { test } from "node:test";
import assert from "node:assert/strict";

import {
  addBlock, blockEnd, blockList, blockOf, blocksView, checkGrid, fromBlockList, insertBlock, makeGrid, mergeEqual,
  parseTimeline, removeBlock, serializeTimeline, setBlockKeys, splitAt, toBlockText, toggleKey, totalFrames,
} from "../../web/lib/key_timeline.js";

const g = makeGrid(12, 9);
const parse = (t, o) => {
  const r = parseTimeline(t, o);
  assert.ok(r.ok, r.error);
  return r.timeline;
};

test("blocks: block 0 is the image + 8 new frames, later blocks 12", () => {
  assert.deepEqual([0, 1, 2, 3].map((b) => blockEnd(g, b)), [8, 20, 32, 44]);
  assert.deepEqual([0, 8, 9, 20, 21].map((f) => blockOf(g, f)), [0, 0, 1, 1, 2]);
  assert.equal(checkGrid(makeGrid(12, 14)), "first_block_frames must be at most block_frames + 1");
  assert.equal(checkGrid(g), null);
});

test("block and per-second syntaxes give the same canonical JSON", () => {
  const want = '{"v":1,"segments":[{"keys":["W","LEFT"],"frames":44},{"keys":["W"],"frames":96}]}';
  assert.equal(serializeTimeline(parse("W+LEFT*4, W*8")), want);
  assert.equal(serializeTimeline(parse("0-2.75s: W+LEFT; 2.75-8.75s: W", { fps: 16 })), want);
  assert.equal(serializeTimeline(parse(want)), want);
  const t = parse("w+→, ArrowUp+MOUSE(+30,-12.5)*2  # look up\nNONE, SPACE+D");
  assert.equal(toBlockText(t, g), "W+RIGHT, UP+MOUSE(30,-12.5)*2, NONE, D+SPACE");
  assert.equal(totalFrames(t), 8 + 24 + 12 + 12);
  assert.equal(toBlockText(parse("0.5-1s: S", { fps: 16 }), g), null);
  assert.equal(parse("W*2", { startFrame: 14 }).segments[0].frames, 18);
});

test("errors name the bad token like the Python parser", () => {
  const err = (t) => parseTimeline(t).error;
  assert.equal(err("W+Q*3"), "unknown key 'Q' in item 1 'W+Q*3'; allowed: W, A, S, D, UP, DOWN, LEFT, RIGHT, SPACE, NONE, MOUSE(dx,dy)");
  assert.equal(err("W, LEFT*0"), "repeat count '0' in item 2 'LEFT*0' must be a whole number of blocks >= 1");
  assert.match(err("W, 0-1s: A"), /item 2 '0-1s: A' mixes per-second and per-block items/);
  assert.match(err('{"v":1,"segments":[{"keys":["X"],"frames":3}]}'), /unknown key 'X' at segments\[0\]\.keys\[0\]/);
  assert.match(err('{"v":1,"segments":[]}'), /non-empty "segments"/);
  assert.match(err(""), /is empty/);
});

test("blocksView shows which keys each block holds", () => {
  const v = blocksView(parse("W*2"), g);
  assert.deepEqual(v.map((b) => [b.index, b.first, b.last, b.frames]), [[0, 1, 8, 8], [1, 9, 20, 12]]);
  assert.deepEqual(v[0].held, { W: "all" });
  const s = blocksView(parse("0-1s: W; 1-1.5s: D", { fps: 16 }), g); // 16 + 8 steps: block 1 is frames 9..20
  assert.deepEqual(s[1].held, { W: "some", D: "some" });
  assert.equal(s[2].partial, true);
  const m = blocksView(parse("A+MOUSE(40,0)*2"), g);
  assert.deepEqual(m.map((b) => b.mouse[0]), [16, 24]); // 40 px over 20 frames: 8 and 12 frames
});

test("toggling keys per block splits and merges segments", () => {
  let t = parse("W*3");
  t = toggleKey(t, g, 1, "RIGHT");
  assert.equal(toBlockText(t, g), "W, W+RIGHT, W");
  t = toggleKey(t, g, 1, "RIGHT");
  assert.equal(serializeTimeline(t), '{"v":1,"segments":[{"keys":["W"],"frames":32}]}');
  t = toggleKey(t, g, 2, "W");
  assert.equal(toBlockText(t, g), "W*2, NONE");
  t = setBlockKeys(t, g, 0, ["SPACE", "A"]);
  assert.equal(toBlockText(t, g), "A+SPACE, W, NONE");
  const part = parse("0-0.75s: W; 0.75-2s: NONE", { fps: 16 }); // W over frames 1..12: block 1 partly
  assert.deepEqual(blocksView(part, g)[1].held, { W: "some" });
  const half = toggleKey(part, g, 1, "W"); // partly held: turn it on for the whole block
  assert.equal(toBlockText(half, g), "W*2, NONE");
});

test("adding, inserting and removing blocks keeps block alignment", () => {
  let t = addBlock(null, g, ["W"]);
  assert.equal(serializeTimeline(t), '{"v":1,"segments":[{"keys":["W"],"frames":8}]}');
  t = addBlock(t, g, ["D"]);
  t = addBlock(t, g, ["D"]);
  assert.equal(toBlockText(t, g), "W, D*2");
  t = insertBlock(t, g, 1, ["LEFT"]);
  assert.equal(toBlockText(t, g), "W, LEFT, D*2");
  t = removeBlock(t, g, 0); // later blocks move up and keep their keys
  assert.equal(toBlockText(t, g), "LEFT, D*2");
  assert.equal(totalFrames(t), 8 + 24);
  assert.equal(toBlockText(removeBlock(parse("W"), g, 0), g), "W"); // never empty
  const sec = removeBlock(parse("0-2s: W", { fps: 16 }), g, 1); // not aligned: block 1's frames go
  assert.equal(totalFrames(sec), 32 - 12);
  const mouse = parse("A+MOUSE(40,0)*2, S");
  const list = blockList(mouse, g);
  assert.deepEqual(list.map((b) => b.mouse[0]), [16, 24, 0]);
  assert.equal(toBlockText(fromBlockList(list, g), g), "A+MOUSE(16,0), A+MOUSE(24,0), S");
  const done = addBlock(parse("0-1s: W", { fps: 16 }), g, []); // 16 steps end inside block 1: complete it
  assert.equal(totalFrames(done), 20);
  assert.equal(toBlockText(done, g), null); // block 1 is W for 8 frames, then nothing for 4
});

test("splitAt shares the mouse by frames and mergeEqual joins plain runs", () => {
  const t = splitAt(parse('{"v":1,"segments":[{"keys":["A"],"frames":10,"mouse":[10,-5]}]}'), 4);
  assert.deepEqual(t.segments, [{ keys: ["A"], frames: 4, mouse: [4, -2] }, { keys: ["A"], frames: 6, mouse: [6, -3] }]);
  assert.equal(mergeEqual(t).segments.length, 2); // mouse runs stay apart
  assert.equal(mergeEqual(splitAt(parse("W*2"), 5)).segments.length, 1);
});
