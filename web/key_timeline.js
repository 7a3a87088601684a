// Key Timeline widget for InterplayKeyTimeline: a grid of keys (rows) by generation blocks (columns) under the
// node's `timeline` STRING input. Click a cell to hold/release a key for that block; select a block (click its
// header) and press W/A/S/D, the arrows or Space to toggle keys there, Delete to remove it. The single carrier
// of state is the `timeline` string: every edit rewrites it as the canonical JSON, so saved workflows and API
// prompts hold plain data, and text typed into it (block or per-second syntax) shows in the grid. Parsing,
// layout and edits live in lib/key_timeline.js (unit-tested); this file is only DOM and ComfyUI glue. The
// grid assumes a fresh rollout (frame 0 = the input image); a `continue_from` camera is not known here.
import { app } from "../../scripts/app.js";
import * as T from "./lib/key_timeline.js";

const NODE = "InterplayKeyTimeline";
const COLORS = { W: "#3b82f6", A: "#3b82f6", S: "#3b82f6", D: "#3b82f6", UP: "#f59e0b", DOWN: "#f59e0b",
  LEFT: "#f59e0b", RIGHT: "#f59e0b", SPACE: "#22c55e" };
const KEYMAP = { w: "W", a: "A", s: "S", d: "D", ArrowUp: "UP", ArrowDown: "DOWN", ArrowLeft: "LEFT",
  ArrowRight: "RIGHT", " ": "SPACE" };
const HINT = "click a cell: hold/release · click a block number, then W A S D, arrows, Space · Delete: remove block";

function el(tag, style = {}, props = {}) {
  const e = document.createElement(tag);
  Object.assign(e.style, style);
  Object.assign(e, props);
  return e;
}

class KeyTimelineEditor {
  constructor(node) {
    this.node = node;
    this.widget = node.widgets.find((w) => w.name === "timeline");
    this.timeline = null; // the last valid parse
    this.error = "";
    this.selected = -1;

    this.root = el("div", { display: "flex", flexDirection: "column", gap: "4px", width: "100%", height: "100%",
      boxSizing: "border-box", fontFamily: "sans-serif", fontSize: "11px", color: "#ddd", outline: "none" },
    { tabIndex: 0 });
    const bar = el("div", { display: "flex", gap: "4px", alignItems: "center", flexWrap: "wrap" });
    const btn = (label, title, fn) => {
      const b = el("button", { fontSize: "11px", padding: "1px 6px", cursor: "pointer" }, { textContent: label, title });
      b.addEventListener("click", (e) => { e.stopPropagation(); fn(); });
      bar.appendChild(b);
    };
    btn("+ block", "Append a block holding the last block's keys", () => this.append(true));
    btn("+ empty", "Append a block holding no key", () => this.append(false));
    btn("Insert", "Insert an empty block before the selected one", () => this.insert());
    btn("Delete block", "Remove the selected block (later blocks move up); or press Delete", () => this.removeSelected());
    btn("Clear", "One block holding nothing", () => this.edit(T.addBlock(null, this.grid(), [])));
    this.grid_ = el("div", { overflowX: "auto", overflowY: "hidden", flex: "1 1 auto", minHeight: "150px",
      background: "#111", borderRadius: "4px", padding: "2px" });
    this.summary = el("div", { whiteSpace: "nowrap", overflow: "hidden", textOverflow: "ellipsis", color: "#bbb" });
    this.status = el("div", { minHeight: "14px", whiteSpace: "nowrap", overflow: "hidden", textOverflow: "ellipsis" });
    this.root.append(bar, this.grid_, this.summary, this.status);
    this.root.addEventListener("keydown", (e) => this.onKey(e));
    this.render();
  }

  // ------------------------------------------------------------------------------------ inputs
  value(name, fallback) {
    const w = this.node.widgets?.find((x) => x.name === name);
    const v = Number(w?.value);
    return Number.isFinite(v) ? v : fallback;
  }

  grid() { return T.makeGrid(Math.round(this.value("block_frames", 12)), Math.round(this.value("first_block_frames", 9))); }

  fps() { return this.value("fps", 16); }

  // ------------------------------------------------------------------------------------- state
  parse() {
    const g = this.grid();
    const gridError = T.checkGrid(g);
    if (gridError) { this.error = gridError; return; }
    const r = T.parseTimeline(this.widget?.value ?? "", { grid: g, fps: this.fps() });
    if (r.ok) { this.timeline = r.timeline; this.error = ""; } else this.error = `timeline: ${r.error}`;
  }

  edit(tl) {
    this.timeline = tl;
    this.error = "";
    if (this.widget) {
      this.widget.value = T.serializeTimeline(tl);
      this.widget.callback?.(this.widget.value);
    }
    this.node.setDirtyCanvas?.(true, true);
    this.render(false);
  }

  blocks() { return this.timeline ? T.blocksView(this.timeline, this.grid()) : []; }

  append(copyLast) {
    const v = this.blocks();
    const keys = copyLast && v.length ? Object.keys(v[v.length - 1].held) : [];
    this.edit(T.addBlock(this.timeline, this.grid(), keys));
  }

  insert() {
    if (!this.timeline) return;
    const b = this.selected >= 0 ? this.selected : this.blocks().length;
    this.edit(T.insertBlock(this.timeline, this.grid(), b, []));
  }

  removeSelected() {
    if (!this.timeline || this.selected < 0) { this.flash("Select a block first (click its number)."); return; }
    const next = T.removeBlock(this.timeline, this.grid(), this.selected);
    if (next === this.timeline) { this.flash("The last block stays; clear its keys instead."); return; }
    this.selected = Math.min(this.selected, T.blocksView(next, this.grid()).length - 1);
    this.edit(next);
  }

  toggle(block, key) {
    if (!this.timeline) return;
    this.edit(T.toggleKey(this.timeline, this.grid(), block, key));
  }

  onKey(e) {
    if (e.target !== this.root) return;
    const key = KEYMAP[e.key] ?? KEYMAP[e.key?.toLowerCase?.()];
    if ((e.key === "Delete" || e.key === "Backspace") && this.selected >= 0) {
      this.removeSelected();
    } else if (key && this.selected >= 0) {
      this.toggle(this.selected, key);
    } else return;
    e.preventDefault();
    e.stopPropagation();
  }

  flash(msg) {
    this.error = msg;
    this.renderStatus();
    setTimeout(() => { if (this.error === msg) { this.error = ""; this.renderStatus(); } }, 2500);
  }

  // ------------------------------------------------------------------------------------ render
  render(reparse = true) {
    if (reparse) this.parse();
    const g = this.grid();
    const blocks = this.blocks();
    const fps = this.fps();
    const box = this.grid_;
    box.replaceChildren();
    const table = el("div", { display: "grid", gridTemplateColumns: `44px repeat(${Math.max(blocks.length, 1)}, 30px)`,
      gap: "2px", opacity: this.error && this.timeline ? "0.5" : "1" });
    table.appendChild(el("div", { color: "#888", fontSize: "10px" }, { textContent: "block" }));
    blocks.forEach((b, i) => {
      const h = el("div", { textAlign: "center", cursor: "pointer", borderRadius: "3px", fontSize: "10px",
        background: i === this.selected ? "#555" : "transparent", color: b.partial ? "#aa8" : "#ccc" }, {
        textContent: String(b.index),
        title: `block ${b.index}: frames ${T.blockStart(g, b.index)}-${T.blockEnd(g, b.index)}, `
          + `${T.secondsOf(b.first - 1, fps).toFixed(2)}-${T.secondsOf(b.last, fps).toFixed(2)} s`
          + (b.partial ? ` (the timeline ends at frame ${b.last})` : "")
          + (b.mouse[0] || b.mouse[1] ? `, mouse ${b.mouse[0].toFixed(1)}, ${b.mouse[1].toFixed(1)} px` : ""),
      });
      h.addEventListener("click", (e) => { e.stopPropagation(); this.selected = i === this.selected ? -1 : i; this.root.focus(); this.render(false); });
      table.appendChild(h);
    });
    for (const key of T.KEYS) {
      table.appendChild(el("div", { color: "#aaa", textAlign: "right", paddingRight: "4px" }, { textContent: T.LABELS[key] }));
      blocks.forEach((b, i) => {
        const state = b.held[key];
        const c = COLORS[key];
        const cell = el("div", {
          height: "14px", borderRadius: "3px", cursor: "pointer",
          border: i === this.selected ? "1px solid #aaa" : "1px solid #2a2a2a",
          background: state === "all" ? c : state === "some"
            ? `repeating-linear-gradient(45deg, ${c}, ${c} 3px, #222 3px, #222 6px)` : "#222",
        }, { title: `${T.LABELS[key]} in block ${b.index}: ${state ?? "not held"}` });
        cell.addEventListener("click", (e) => { e.stopPropagation(); this.selected = i; this.toggle(b.index, key); });
        table.appendChild(cell);
      });
    }
    box.appendChild(table);
    if (this.timeline) {
      const n = T.totalFrames(this.timeline);
      const text = T.toBlockText(this.timeline, g);
      this.summary.textContent = `${n + 1} frames (${T.secondsOf(n, fps).toFixed(2)} s), ${blocks.length} block(s)`
        + (text !== null ? ` · ${text}` : " · per-second timing (not block-aligned)");
    } else this.summary.textContent = "";
    this.renderStatus();
  }

  renderStatus() {
    this.status.style.color = this.error ? "#f77" : "#888";
    this.status.textContent = this.error || HINT;
  }
}

app.registerExtension({
  name: "Interplay.KeyTimeline",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== NODE) return;

    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const r = onNodeCreated?.apply(this, arguments);
      const editor = new KeyTimelineEditor(this);
      this.interplayKeys = editor;
      const w = this.addDOMWidget("key_grid", "interplay_key_grid", editor.root, {
        serialize: false,
        hideOnZoom: false,
        getMinHeight: () => 260,
      });
      w.serialize = false; // keep it out of widgets_values too (positional: it would shift saved values)
      const tw = editor.widget;
      if (tw) {
        const cb = tw.callback;
        tw.callback = function (value) {
          const out = cb?.apply(this, arguments);
          if (!editor.timeline || value !== T.serializeTimeline(editor.timeline)) editor.render();
          return out;
        };
        tw.inputEl?.addEventListener?.("input", () => editor.render());
      }
      for (const name of ["block_frames", "first_block_frames", "fps"]) {
        const gw = this.widgets.find((x) => x.name === name);
        if (!gw) continue;
        const cb = gw.callback;
        gw.callback = function () {
          const out = cb?.apply(this, arguments);
          editor.render();
          return out;
        };
      }
      this.setSize([Math.max(this.size[0], 420), Math.max(this.size[1], 560)]);
      return r;
    };

    const onConfigure = nodeType.prototype.onConfigure;
    nodeType.prototype.onConfigure = function () {
      const r = onConfigure?.apply(this, arguments);
      this.interplayKeys?.render();
      return r;
    };
  },
});
