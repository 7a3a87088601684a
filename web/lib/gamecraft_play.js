// Pure logic of the GameCraft play panel (unit-tested in tests/web/gamecraft_play.test.mjs): keys held -> the
// sampler's `keys` string, the prompt for the next block, and the running statistics the panel shows.

export const KEY_ORDER = ["W", "A", "S", "D", "UP", "DOWN", "LEFT", "RIGHT", "SPACE"];
export const KEYMAP = { w: "W", a: "A", s: "S", d: "D", W: "W", A: "A", S: "S", D: "D", ArrowUp: "UP",
  ArrowDown: "DOWN", ArrowLeft: "LEFT", ArrowRight: "RIGHT", " ": "SPACE" };

// The keys held as one block of the timeline syntax ("W+LEFT"); "" = hold still.
export function keysString(held) {
  return KEY_ORDER.filter((k) => held.has(k)).join("+");
}

// The API prompt for the next block: the graph's prompt with the sampler node's session, keys and instruction
// replaced (one block per call). `output` is app.graphToPrompt().output; it is not modified.
export function nextBlockPrompt(output, nodeId, { session, keys, instruction, numBlocks = 1 }) {
  const id = String(nodeId);
  if (!output || !output[id]) throw new Error(`the graph's prompt has no node ${id}`);
  const out = JSON.parse(JSON.stringify(output));
  const ins = out[id].inputs;
  ins.session = session || "new";
  ins.keys = keys;
  if (instruction !== undefined && instruction !== null) ins.instruction = instruction;
  ins.num_blocks = numBlocks;
  return out;
}

export function newStats() {
  return { blocks: 0, frames: 0, genSeconds: 0, firstAt: null, lastAt: null, session: null, lastFps: 0 };
}

// Fold one sampler result (its `interplay_play` info) into the statistics; `now` in ms.
export function recordBlock(stats, info, now) {
  const s = { ...stats };
  s.session = info.session ?? s.session;
  s.blocks = info.blocks ?? s.blocks + 1;
  s.frames += info.new_frames || 0;
  s.genSeconds += info.seconds || 0;
  s.lastFps = info.generated_fps || 0;
  if (s.firstAt === null) s.firstAt = now;
  s.lastAt = now;
  return s;
}

// Frames generated per second of generation time (the server's), over the whole session.
export function generatedFps(stats) {
  return stats.genSeconds > 0 ? stats.frames / stats.genSeconds : 0;
}

export function statusLine(stats, { queue = 0, keys = "", playing = false } = {}) {
  const parts = [
    stats.session ? `session ${stats.session}` : "no session yet",
    `block ${stats.blocks}`,
    `queue ${queue}`,
    `generated ${generatedFps(stats).toFixed(2)} fps (last ${stats.lastFps.toFixed(2)})`,
    `keys ${keys || "none"}`,
  ];
  return (playing ? "▶ " : "■ ") + parts.join(" · ");
}
