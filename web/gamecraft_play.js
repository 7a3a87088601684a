// Live play panel for InterplayGameCraftSampler: click the panel (it takes the keyboard), hold W/A/S/D, the
// arrows or Space, type an instruction, press Play. While playing it queues the next block through ComfyUI's API
// (the graph's own prompt with this node's session, keys, instruction and num_blocks = 1), one block in flight at
// a time, and shows each block as its result arrives over the websocket ("executed": the block's animated preview
// and the session's info), with the queue depth (websocket "status") and the generated frames per second. The
// session id of the first result is sent with every later block; "New session" starts again. The sampler's own
// widgets are left as they are (a saved workflow keeps session "new"). Logic: lib/gamecraft_play.js (tested).
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import * as P from "./lib/gamecraft_play.js";

const NODE = "InterplayGameCraftSampler";

function el(tag, style = {}, props = {}) {
  const e = document.createElement(tag);
  Object.assign(e.style, style);
  Object.assign(e, props);
  return e;
}

class PlayPanel {
  constructor(node) {
    this.node = node;
    this.held = new Set();
    this.session = null;
    this.playing = false;
    this.inflight = null; // prompt id of the block being made
    this.queue = 0;
    this.stats = P.newStats();
    this.log = []; // one entry per block shown (read by scripts/check_frontend.py)
    this.error = "";

    this.root = el("div", { display: "flex", flexDirection: "column", gap: "4px", width: "100%", height: "100%",
      boxSizing: "border-box", fontFamily: "sans-serif", fontSize: "11px", color: "#ddd", outline: "none",
      border: "1px solid #333", borderRadius: "4px", padding: "3px" }, { tabIndex: 0, title: "Click here, then "
      + "hold W A S D / arrows / Space to steer" });
    const bar = el("div", { display: "flex", gap: "4px", alignItems: "center", flexWrap: "wrap" });
    const btn = (label, title, fn) => {
      const b = el("button", { fontSize: "11px", padding: "1px 6px", cursor: "pointer" }, { textContent: label, title });
      b.addEventListener("click", (e) => { e.stopPropagation(); fn(); });
      bar.appendChild(b);
      return b;
    };
    this.playBtn = btn("▶ Play", "Generate block after block with the keys held", () => this.toggle());
    btn("Step", "Generate one block", () => this.queueNext());
    btn("New session", "Forget the session: the next block starts from the first frame", () => this.reset());
    this.instruction = el("input", { flex: "1 1 auto", minWidth: "80px", fontSize: "11px" },
      { type: "text", placeholder: "instruction for the next blocks (a change recaches)" });
    this.instruction.addEventListener("keydown", (e) => e.stopPropagation());
    this.instruction.addEventListener("keyup", (e) => { // a key let go while typing is let go of the game too
      e.stopPropagation();
      if (P.KEYMAP[e.key]) { this.held.delete(P.KEYMAP[e.key]); this.render(); }
    });
    bar.appendChild(this.instruction);
    this.view = el("img", { width: "100%", flex: "1 1 auto", minHeight: "120px", objectFit: "contain",
      background: "#111", borderRadius: "3px" }, { alt: "" });
    this.status = el("div", { whiteSpace: "nowrap", overflow: "hidden", textOverflow: "ellipsis", color: "#bbb" });
    this.note = el("div", { minHeight: "14px", whiteSpace: "nowrap", overflow: "hidden", textOverflow: "ellipsis" });
    this.root.append(bar, this.view, this.status, this.note);
    this.root.addEventListener("keydown", (e) => this.onKey(e, true));
    this.root.addEventListener("keyup", (e) => this.onKey(e, false));
    // keys are released when the keyboard leaves the panel (its own buttons and text box do not count)
    this.root.addEventListener("focusout", (e) => {
      if (e.relatedTarget && this.root.contains(e.relatedTarget)) return;
      this.held.clear();
      this.render();
    });
    this.render();
  }

  onKey(e, down) {
    const k = P.KEYMAP[e.key];
    if (!k) return;
    e.preventDefault();
    e.stopPropagation(); // keep the graph's shortcuts out of it
    if (down) this.held.add(k); else this.held.delete(k);
    this.render();
  }

  toggle() {
    this.playing = !this.playing;
    this.playBtn.textContent = this.playing ? "■ Stop" : "▶ Play";
    if (this.playing) this.queueNext();
    this.render();
  }

  reset() {
    this.session = null;
    this.stats = P.newStats();
    this.note.textContent = "new session: the next block starts from the first frame";
    this.render();
  }

  async queueNext() {
    if (this.inflight) return; // one block at a time: the next one needs this one's session
    this.error = "";
    try {
      const p = await app.graphToPrompt();
      const keys = P.keysString(this.held);
      const output = P.nextBlockPrompt(p.output, this.node.id, { session: this.session, keys,
        instruction: this.instruction.value });
      this.sent = { keys, instruction: this.instruction.value };
      this.inflight = "pending";
      const res = await api.queuePrompt(0, { output, workflow: p.workflow });
      this.inflight = res.prompt_id;
    } catch (err) {
      this.inflight = null;
      this.stop(`could not queue the next block: ${err?.message || err}`);
    }
    this.render();
  }

  stop(why) {
    this.playing = false;
    this.playBtn.textContent = "▶ Play";
    this.error = why;
    this.render();
  }

  onExecuted(detail) {
    if (String(detail?.node) !== String(this.node.id) && String(detail?.display_node) !== String(this.node.id)) return;
    const info = detail.output?.interplay_play?.[0];
    if (!info) return;
    this.inflight = null;
    this.session = info.session;
    this.stats = P.recordBlock(this.stats, info, performance.now());
    const img = info.preview;
    if (img) {
      const q = new URLSearchParams({ filename: img.filename, subfolder: img.subfolder, type: img.type,
        t: String(Date.now()) });
      this.view.src = api.apiURL(`/view?${q}`);
    }
    const rec = info.records?.[info.records.length - 1] || {};
    const entry = { block: info.blocks - 1, session: info.session, mode: info.mode, keys: this.sent?.keys ?? "",
      instruction: this.sent?.instruction ?? "", recache: rec.recache ?? null, new_frames: info.new_frames, seconds: Number(info.seconds?.toFixed?.(3) ?? info.seconds),
      generated_fps: Number((info.generated_fps || 0).toFixed(3)), queue: this.queue,
      cache_frames: info.cache?.frames ?? null, preview: img?.filename ?? null };
    this.log.push(entry);
    this.note.textContent = info.label ? `FALLBACK: ${info.label}` : `${info.mode} · ${info.mode_reason || ""}`;
    this.note.style.color = info.label ? "#fb3" : "#8c8";
    this.render();
    if (this.playing) this.queueNext();
  }

  onError(detail) {
    if (!this.inflight || (detail?.prompt_id && detail.prompt_id !== this.inflight)) return;
    this.inflight = null;
    this.stop(`${detail?.node_type || "node"} failed: ${detail?.exception_message || "error"}`);
  }

  render() {
    this.lastKeys = P.keysString(this.held);
    this.status.textContent = P.statusLine(this.stats, { queue: this.queue, keys: this.lastKeys, playing: this.playing });
    if (this.error) {
      this.note.textContent = this.error;
      this.note.style.color = "#f77";
    }
  }
}

const panels = new Set();
api.addEventListener("executed", ({ detail }) => { for (const p of panels) p.onExecuted(detail); });
api.addEventListener("execution_error", ({ detail }) => { for (const p of panels) p.onError(detail); });
api.addEventListener("status", ({ detail }) => {
  const q = detail?.exec_info?.queue_remaining;
  if (q === undefined) return;
  for (const p of panels) { p.queue = q; p.render(); }
});

app.registerExtension({
  name: "Interplay.GameCraftPlay",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== NODE) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const r = onNodeCreated?.apply(this, arguments);
      const panel = new PlayPanel(this);
      this.interplayPlay = panel;
      panels.add(panel);
      const w = this.addDOMWidget("play_panel", "interplay_play_panel", panel.root, {
        serialize: false,
        hideOnZoom: false,
        getMinHeight: () => 240,
      });
      w.serialize = false; // not in widgets_values (positional: it would shift saved values)
      this.setSize([Math.max(this.size[0], 420), Math.max(this.size[1], 700)]);
      return r;
    };
    const onRemoved = nodeType.prototype.onRemoved;
    nodeType.prototype.onRemoved = function () {
      if (this.interplayPlay) panels.delete(this.interplayPlay);
      return onRemoved?.apply(this, arguments);
    };
  },
});
