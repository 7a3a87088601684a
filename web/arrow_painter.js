// Arrow Painter widget for InterplayArrowPainter: a canvas over the node's input image on which the user
// drags arrows (tail on an object -> head where it moves), shift/ctrl-clicks positive/negative SAM2
// points, and reads each speed in m/s. The single carrier of state is the node's `drawing` STRING input
// (JSON, see models/conditions/painter.py): every edit rewrites it, so saved workflows and API prompts
// hold plain data. Geometry and serialisation live in lib/arrow_geometry.js (unit-tested); this file is
// only DOM and ComfyUI glue.
import { app } from "../../scripts/app.js";
import * as G from "./lib/arrow_geometry.js";

const NODE = "InterplayArrowPainter";
const HANDLE = 7; // canvas px (CSS) for grabbing heads/tails/points
const MIN_ARROW = 6; // CSS px: shorter drags are clicks, not arrows
const HINT = "drag: new arrow · drag an end: edit · shift-click: + point · ctrl-click: − point · alt-click: delete";

function el(tag, style = {}, props = {}) {
  const e = document.createElement(tag);
  Object.assign(e.style, style);
  Object.assign(e, props);
  return e;
}

class ArrowEditor {
  constructor(node) {
    this.node = node;
    this.widget = node.widgets.find((w) => w.name === "drawing");
    this.selected = -1;
    this.drag = null;
    this.img = null; // HTMLImageElement shown
    this.imgSrc = "";
    this.size = null; // {w, h}: the true input-image size the drawing refers to
    this.error = "";
    this.drawing = G.emptyDrawing(0, 0);

    this.root = el("div", { display: "flex", flexDirection: "column", gap: "4px", width: "100%", height: "100%",
      boxSizing: "border-box", fontFamily: "sans-serif", fontSize: "11px", color: "#ddd" });
    const bar = el("div", { display: "flex", gap: "4px", alignItems: "center", flexWrap: "wrap" });
    const btn = (label, title, fn) => {
      const b = el("button", { fontSize: "11px", padding: "1px 6px", cursor: "pointer" }, { textContent: label, title });
      b.addEventListener("click", (e) => { e.stopPropagation(); fn(); });
      bar.appendChild(b);
      return b;
    };
    btn("Clear", "Remove every arrow and point", () => this.edit(G.emptyDrawing(this.drawing.width, this.drawing.height), -1));
    btn("Delete arrow", "Remove the selected arrow (or press Delete)", () => this.deleteSelected());
    bar.appendChild(el("span", {}, { textContent: "speed (m/s):" }));
    this.speedInput = el("input", { width: "60px", fontSize: "11px" },
      { type: "number", step: "0.05", min: "0", placeholder: "auto", title: "Speed of the selected arrow; empty = from its length" });
    this.speedInput.addEventListener("change", () => this.setSelectedSpeed());
    this.speedInput.addEventListener("keydown", (e) => e.stopPropagation());
    bar.appendChild(this.speedInput);
    this.canvas = el("canvas", { width: "100%", flex: "1 1 auto", minHeight: "160px", background: "#111",
      borderRadius: "4px", cursor: "crosshair", touchAction: "none", outline: "none" }, { tabIndex: 0 });
    this.status = el("div", { minHeight: "14px", whiteSpace: "nowrap", overflow: "hidden", textOverflow: "ellipsis" });
    this.root.append(bar, this.canvas, this.status);

    this.canvas.addEventListener("pointerdown", (e) => this.onDown(e));
    this.canvas.addEventListener("pointermove", (e) => this.onMove(e));
    this.canvas.addEventListener("pointerup", (e) => this.onUp(e));
    this.canvas.addEventListener("contextmenu", (e) => e.preventDefault());
    this.canvas.addEventListener("keydown", (e) => {
      if (e.key === "Delete" || e.key === "Backspace") { this.deleteSelected(); e.preventDefault(); e.stopPropagation(); }
    });
    this.resizer = new ResizeObserver(() => this.redraw());
    this.resizer.observe(this.canvas);
    // The upstream image (LoadImage preview) can change at any time; a cheap poll finds it.
    this.timer = setInterval(() => this.findUpstreamImage(), 700);
    this.loadFromWidget();
  }

  destroy() {
    clearInterval(this.timer);
    this.resizer.disconnect();
  }

  // ------------------------------------------------------------------------------------ state
  loadFromWidget() {
    const r = G.parseDrawing(this.widget?.value ?? "");
    if (!r.ok) {
      this.error = `drawing: ${r.error}`;
    } else {
      this.error = "";
      this.drawing = r.drawing;
      if (this.size && (this.drawing.width !== this.size.w || this.drawing.height !== this.size.h)) {
        this.drawing = G.rescale(this.drawing, this.size.w, this.size.h);
      }
      if (this.selected >= this.drawing.objects.length) this.selected = this.drawing.objects.length - 1;
    }
    this.redraw();
  }

  edit(drawing, selected = this.selected) {
    this.drawing = drawing;
    this.selected = selected;
    this.error = "";
    if (this.widget) {
      this.widget.value = G.serializeDrawing(drawing);
      this.widget.callback?.(this.widget.value);
    }
    this.node.setDirtyCanvas?.(true, true);
    this.redraw();
  }

  deleteSelected() {
    if (this.selected >= 0) this.edit(G.removeObject(this.drawing, this.selected), -1);
  }

  setSelectedSpeed() {
    if (this.selected < 0) return;
    const t = this.speedInput.value.trim();
    const s = t === "" ? null : Number(t);
    if (s !== null && !(Number.isFinite(s) && s >= 0)) return;
    this.edit(G.setSpeed(this.drawing, this.selected, s));
  }

  setImage(src, w, h) {
    if (src === this.imgSrc && this.size && this.size.w === w && this.size.h === h) return;
    this.imgSrc = src;
    const img = new Image();
    img.onload = () => {
      this.img = img;
      this.setSize(w || img.naturalWidth, h || img.naturalHeight);
    };
    img.src = src;
  }

  setSize(w, h) {
    this.size = { w, h };
    const d = this.drawing;
    if (d.width !== w || d.height !== h) {
      const next = G.rescale(d, w, h);
      if (d.objects.length || this.widget?.value?.includes('"width"')) this.edit(next);
      else this.drawing = next;
    }
    this.redraw();
  }

  findUpstreamImage() {
    const slot = this.node.inputs?.findIndex((i) => i.name === "image") ?? -1;
    if (slot < 0 || this.node.inputs[slot].link == null) return;
    const src = this.node.getInputNode?.(slot);
    const im = src?.imgs?.[0];
    if (im && im.src && im.complete && im.naturalWidth) this.setImage(im.src, im.naturalWidth, im.naturalHeight);
  }

  // ---------------------------------------------------------------------------------- pointer
  dpr() { return this.canvas.width / Math.max(1, this.canvas.clientWidth); }

  view() {
    if (!this.size) return null;
    return G.fitView(this.size.w, this.size.h, this.canvas.width, this.canvas.height);
  }

  pos(e) {
    const r = this.canvas.getBoundingClientRect();
    // the rect includes the graph's zoom transform; canvas pixels do not
    const kx = this.canvas.width / Math.max(1, r.width);
    const ky = this.canvas.height / Math.max(1, r.height);
    return { x: (e.clientX - r.left) * kx, y: (e.clientY - r.top) * ky };
  }

  onDown(e) {
    e.stopPropagation();
    e.preventDefault();
    this.canvas.focus();
    const v = this.view();
    if (!v) { this.flash("Connect an image (e.g. Load Image) or run the node once to draw on it."); return; }
    const p = this.pos(e);
    const q = G.clampToImage(G.canvasToImage(p, v), this.size.w, this.size.h);
    const hit = G.hitTest(p, this.drawing, v, HANDLE * this.dpr());
    if (e.altKey || e.button === 2) {
      if (hit?.kind === "point") this.edit(G.removePoint(this.drawing, hit.object, hit.point));
      else if (hit) this.edit(G.removeObject(this.drawing, hit.object), -1);
      return;
    }
    if (e.shiftKey || e.ctrlKey || e.metaKey) {
      let i = this.selected;
      if (hit) i = hit.object;
      if (i < 0) { this.flash("Draw or select an arrow first; points belong to the selected object."); return; }
      this.edit(G.addPoint(this.drawing, i, q.x, q.y, e.shiftKey ? 1 : 0), i);
      return;
    }
    if (hit && (hit.kind === "head" || hit.kind === "tail")) {
      this.selected = hit.object;
      this.drag = { kind: hit.kind, object: hit.object };
    } else if (hit) {
      this.selected = hit.object;
      this.drag = null;
    } else {
      this.drag = { kind: "new", x0: q.x, y0: q.y, x1: q.x, y1: q.y };
    }
    this.canvas.setPointerCapture?.(e.pointerId);
    this.redraw();
  }

  onMove(e) {
    if (!this.drag) return;
    e.stopPropagation();
    const v = this.view();
    const q = G.clampToImage(G.canvasToImage(this.pos(e), v), this.size.w, this.size.h);
    if (this.drag.kind === "new") { this.drag.x1 = q.x; this.drag.y1 = q.y; }
    else this.drawing = G.moveHandle(this.drawing, this.drag.object, this.drag.kind, q.x, q.y);
    this.redraw();
  }

  onUp(e) {
    if (!this.drag) return;
    e.stopPropagation();
    const d = this.drag;
    this.drag = null;
    this.canvas.releasePointerCapture?.(e.pointerId);
    if (d.kind === "new") {
      const v = this.view();
      const len = Math.hypot(d.x1 - d.x0, d.y1 - d.y0) * v.scale / this.dpr();
      if (len >= MIN_ARROW) this.edit(G.addObject(this.drawing, d.x0, d.y0, d.x1, d.y1), this.drawing.objects.length);
      else { this.selected = -1; this.redraw(); }
    } else {
      this.edit(this.drawing); // a handle moved: write it
    }
  }

  flash(msg) {
    this.error = msg;
    this.redraw();
    setTimeout(() => { if (this.error === msg) { this.error = ""; this.redraw(); } }, 2500);
  }

  // ------------------------------------------------------------------------------------- draw
  redraw() {
    const c = this.canvas;
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(1, Math.round(c.clientWidth * dpr));
    const h = Math.max(1, Math.round(c.clientHeight * dpr));
    if (c.width !== w || c.height !== h) { c.width = w; c.height = h; }
    const ctx = c.getContext("2d");
    ctx.clearRect(0, 0, w, h);
    const v = this.view();
    if (!v) {
      ctx.fillStyle = "#888";
      ctx.font = `${12 * dpr}px sans-serif`;
      ctx.textAlign = "center";
      ctx.fillText("Connect an image (Load Image) or run once", w / 2, h / 2);
      this.updateStatus();
      return;
    }
    if (this.img) ctx.drawImage(this.img, v.ox, v.oy, this.size.w * v.scale, this.size.h * v.scale);
    const objs = this.drawing.objects.map((o) => o);
    if (this.drag?.kind === "new") objs.push({ arrow: this.drag, points: [], pending: true });
    objs.forEach((o, i) => this.drawObject(ctx, o, i, v, dpr));
    this.updateStatus();
  }

  drawObject(ctx, o, i, v, dpr) {
    const color = G.colorOf(i);
    const a = o.arrow;
    const t = G.imageToCanvas({ x: a.x0, y: a.y0 }, v);
    const hd = G.imageToCanvas({ x: a.x1, y: a.y1 }, v);
    const sel = i === this.selected || o.pending;
    const lw = (sel ? 3.5 : 2.5) * dpr;
    for (const [x, y, lab] of o.points || []) {
      const p = G.imageToCanvas({ x, y }, v);
      ctx.beginPath();
      ctx.arc(p.x, p.y, 4.5 * dpr, 0, Math.PI * 2);
      ctx.fillStyle = lab ? "#2d2" : "#e33";
      ctx.fill();
      ctx.lineWidth = 1.5 * dpr;
      ctx.strokeStyle = color;
      ctx.stroke();
    }
    const ang = Math.atan2(hd.y - t.y, hd.x - t.x);
    const hl = 11 * dpr;
    const path = () => {
      ctx.beginPath();
      ctx.moveTo(t.x, t.y);
      ctx.lineTo(hd.x, hd.y);
      ctx.moveTo(hd.x, hd.y);
      ctx.lineTo(hd.x - hl * Math.cos(ang - 0.45), hd.y - hl * Math.sin(ang - 0.45));
      ctx.moveTo(hd.x, hd.y);
      ctx.lineTo(hd.x - hl * Math.cos(ang + 0.45), hd.y - hl * Math.sin(ang + 0.45));
    };
    ctx.lineCap = "round";
    path(); ctx.lineWidth = lw + 2.5 * dpr; ctx.strokeStyle = "rgba(0,0,0,0.7)"; ctx.stroke();
    path(); ctx.lineWidth = lw; ctx.strokeStyle = color; ctx.stroke();
    ctx.beginPath();
    ctx.arc(t.x, t.y, 4 * dpr, 0, Math.PI * 2);
    ctx.fillStyle = color;
    ctx.fill();
    ctx.lineWidth = 1.5 * dpr;
    ctx.strokeStyle = "#fff";
    ctx.stroke();
    if (sel) {
      ctx.strokeRect(hd.x - 4 * dpr, hd.y - 4 * dpr, 8 * dpr, 8 * dpr);
    }
    const speed = G.arrowSpeed(o, this.size.w, this.size.h, this.drawing.length_scale);
    const label = (o.speed != null ? "" : "~") + G.formatSpeed(speed);
    const fs = 12 * dpr;
    ctx.font = `bold ${fs}px sans-serif`;
    ctx.textAlign = "left";
    ctx.textBaseline = "top";
    ctx.lineWidth = 3 * dpr;
    ctx.strokeStyle = "rgba(0,0,0,0.85)";
    // box of the stroked text: its measured width and the font size, plus the outline on each side
    const pos = G.labelPosition(hd, t, ctx.measureText(label).width + 3 * dpr, 1.2 * fs + 3 * dpr,
      ctx.canvas.width, ctx.canvas.height, 6 * dpr, 2 * dpr);
    const lx = pos.x + 1.5 * dpr;
    const ly = pos.y + 1.5 * dpr;
    ctx.strokeText(label, lx, ly);
    ctx.fillStyle = "#fff";
    ctx.fillText(label, lx, ly);
  }

  updateStatus() {
    if (this.error) {
      this.status.style.color = "#f77";
      this.status.textContent = this.error;
      return;
    }
    this.status.style.color = "#bbb";
    const n = this.drawing.objects.length;
    const i = this.selected;
    if (i >= 0 && i < n && this.size) {
      const o = this.drawing.objects[i];
      const vel = G.arrowVelocity(o, this.size.w, this.size.h, this.drawing.length_scale);
      const s = G.arrowSpeed(o, this.size.w, this.size.h, this.drawing.length_scale);
      this.status.textContent = `object ${i + 1}/${n}: ${G.formatSpeed(s)} (vx ${vel.vx.toFixed(2)}, vy ${vel.vy.toFixed(2)}), `
        + `${(o.points || []).length} point(s) · ${HINT}`;
      if (document.activeElement !== this.speedInput) this.speedInput.value = o.speed != null ? String(o.speed) : "";
    } else {
      this.status.textContent = `${n} arrow(s) · ${HINT}`;
      if (document.activeElement !== this.speedInput) this.speedInput.value = "";
    }
  }
}

app.registerExtension({
  name: "Interplay.ArrowPainter",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== NODE) return;

    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const r = onNodeCreated?.apply(this, arguments);
      const editor = new ArrowEditor(this);
      this.interplayArrows = editor;
      const w = this.addDOMWidget("arrow_canvas", "interplay_arrow_canvas", editor.root, {
        serialize: false,
        hideOnZoom: false,
        getMinHeight: () => 300,
      });
      w.serialize = false; // keep it out of widgets_values too (positional: it would shift saved values)
      const dw = editor.widget;
      if (dw) {
        const cb = dw.callback;
        dw.callback = function (value) {
          const out = cb?.apply(this, arguments);
          if (value !== G.serializeDrawing(editor.drawing)) editor.loadFromWidget();
          return out;
        };
        dw.inputEl?.addEventListener?.("input", () => editor.loadFromWidget());
      }
      this.setSize([Math.max(this.size[0], 440), Math.max(this.size[1], 640)]);
      return r;
    };

    const onConfigure = nodeType.prototype.onConfigure;
    nodeType.prototype.onConfigure = function () {
      const r = onConfigure?.apply(this, arguments);
      this.interplayArrows?.loadFromWidget();
      return r;
    };

    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      const r = onExecuted?.apply(this, arguments);
      const bg = message?.interplay_bg?.[0];
      const size = message?.interplay_size;
      if (bg && this.interplayArrows) {
        this.interplayArrows.setImage(`data:image/png;base64,${bg}`, size?.[0], size?.[1]);
      }
      return r;
    };

    const onRemoved = nodeType.prototype.onRemoved;
    nodeType.prototype.onRemoved = function () {
      this.interplayArrows?.destroy();
      return onRemoved?.apply(this, arguments);
    };
  },
});
