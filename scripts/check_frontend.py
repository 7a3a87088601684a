#!/usr/bin/env python
"""Load, queue and run every shipped UI workflow in a real ComfyUI through its own frontend (not run by CI).

    python scripts/check_frontend.py /path/to/ComfyUI            # or COMFYUI_DIR=/path/to/ComfyUI
    python scripts/check_frontend.py /path/to/ComfyUI --no-tiny-models --keep /tmp/fe

Run it with a Python that has ComfyUI's requirements, the pack's requirements and ``playwright`` (pip) installed,
and a Chromium on the machine (Debian: ``apt-get install chromium``; ``--chromium PATH`` otherwise; playwright's
own browser download is not needed). It starts ComfyUI (``main.py --cpu``) in a temporary base directory whose
custom_nodes/ holds a link to this checkout, so the ComfyUI tree and its models are never written to, opens the
frontend in headless Chromium and, for each workflows/*.json:

1. loads the file with the frontend's own loader (``app.loadGraphData``) and lists node types it does not know;
2. compares the frontend's prompt (``app.graphToPrompt``) with the API twin in workflows/api/ (a widget value that
   lands in the wrong widget shows up here);
3. queues it from the page (``app.queuePrompt``) and reports ComfyUI's validation errors;
4. waits for the run and reports completion; where the graph has an Arrow Painter, draws arrows ending on
   each edge of its image at several canvas sizes and checks every speed label lands inside the canvas;
5. drives the GameCraft play panel (web/gamecraft_play.js) on workflows/gamecraft_play.json with a tiny causal
   student: holds keys on the panel, types an instruction, presses Play and lets it queue ten blocks through the
   API with its session id, then prints the panel's per-block log (``--play-only``: only this).

The sandbox workflow needs no model files and runs as shipped. The others need real models; by default the tiny
random models of tests/kit/tiny.py are placed in the temporary models folder under the file names the workflows
name, so the shipped graph validates (the run is then stopped: it would sample 720x480 for an hour on a CPU) and is
queued again with small sizes and step counts set through the frontend's widgets, which must complete.
``--no-tiny-models`` leaves the models folder empty: those workflows must then fail validation on model files only
("validated but missing models").

Exit status 0 when every workflow loads with all its node types, matches its API twin, validates (missing models
only, under --no-tiny-models) and every run completes; 1 otherwise.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for _var in ("HF_HUB_DISABLE_PROGRESS_BARS", "TRANSFORMERS_NO_ADVISORY_WARNINGS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Settings of a first visit that would open dialogs over the canvas.
SETTINGS = {"Comfy.TutorialCompleted": True}

# Model files each workflow names, mapped to the tiny model placed there (tiny_models() below).
# Widget changes made in the page before the completion run of a workflow that needs models, by node class:
# small sizes and steps for the tiny models, the tiny SAM2 config, prompts that fit the 64 px inputs.
TINY_SIZE = 64
TINY_RUN = {
    "interdyn_hand": {
        "InterplaySam2Loader": {"config": "sam2.1_hiera_tiny_test.yaml", "device": "cpu"},
        "InterplaySam2Propagate": {"prompts": json.dumps({"v": 1, "frames": {"0": {"box": [4, 20, 24, 40]}}})},
        "InterplayDrivingMask": {"num_frames": 4, "height": TINY_SIZE, "width": TINY_SIZE, "src_fps": 0.0},
        "InterplaySVDLoader": {"dtype": "fp32"},
        "InterplayInterDynSampler": {"steps": 2, "num_frames": 4},
    },
    "kinemask_i2v": {
        "InterplaySam2Loader": {"config": "sam2.1_hiera_tiny_test.yaml", "device": "cpu"},
        "InterplayArrowPainter": {"num_frames": 9, "drawing": json.dumps(
            {"v": 1, "objects": [{"arrow": {"x0": 20, "y0": 32, "x1": 52, "y1": 32}, "speed": 1.2,
                                  "points": [[20, 32, 1]]}]})},
        "InterplayCogVideoXLoader": {"weight_dtype": "fp32", "offload": "none", "vae_tiling": False},
        "InterplayCogVideoXSampler": {"width": 32, "height": 32, "num_frames": 9, "steps": 2},
    },
}
TINY_RUN["interdyn_counterfactual"] = TINY_RUN["interdyn_hand"]
# GameCraft play: as shipped (tiny two-expert Wan2.2 I2V, untrained encoder) it runs the chunked fallback; the
# play-panel check then switches the loader to a tiny causal student (converted from a Self-Forcing-layout .pt).
TINY_RUN["gamecraft_play"] = {
    "InterplayWanLoader": {"weight_dtype": "fp32", "vae_tiling": False},
    "InterplayGameCraftSampler": {"width": 32, "height": 32, "chunk_steps": 2},
}
_TINY_COG = {"InterplayCogVideoXLoader": {"weight_dtype": "fp32", "offload": "none", "vae_tiling": False},
             "InterplayCogVideoXSampler": {"width": 32, "height": 32, "num_frames": 9, "steps": 2}}
TINY_RUN["matrix_i2v"] = dict(_TINY_COG)
TINY_RUN["matrix_attention"] = {**_TINY_COG, "InterplayMatrixAttentionView": {"layer": 1}}  # both views: layer 1
TINY_RUN["pam_hoi"] = {**_TINY_COG,
                       "InterplayLoadVideo": {"force_width": 32, "force_height": 32},
                       "InterplayHOIRenderConditions": {"width": 32, "height": 32, "frames": 9, "points": 3000,
                                                        "splat_radius": 0, "min_area": 1},
                       "InterplayPAMControl": {"num_frames": 9}}
TINY_RUN["wan_i2v"] = {  # the Wan files above are placed for the play workflow; the same names serve this one
    "InterplayWanLoader": {"weight_dtype": "fp32", "vae_tiling": False},
    "InterplayWanSampler": {"width": 32, "height": 32, "num_frames": 5, "steps": 2},
}
TINY_PLAY = {
    "InterplayWanLoader": {"transformer": "tiny_self_forcing.safetensors", "transformer_2": "(none)",
                           "weight_dtype": "fp32", "vae_tiling": False},
    "InterplayGameCraftSampler": {"width": 32, "height": 32},
}
# What the play check presses: (from block, keys held, instruction typed); ten blocks.
PLAY_SCRIPT = [(0, ["w"], ""), (3, ["w", "ArrowLeft"], ""), (5, ["d"], "a red kite rises"), (8, [], "a red kite rises")]
PLAY_BLOCKS = 10


# ------------------------------------------------------------------------------------ server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_json(url: str, data: dict | None = None, timeout: float = 10.0):
    body = None if data is None else json.dumps(data).encode()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        text = r.read().decode()
    return json.loads(text) if text.strip() else None


@contextlib.contextmanager
def comfyui(comfy_dir: Path, base: Path, python: str, port: int, extra_nodes: dict[str, Path] | None = None,
            timeout=240):
    """A ComfyUI server on 127.0.0.1:port with ``base`` as its base directory (custom_nodes, models, input,
    output, temp, user), this checkout and ``extra_nodes`` ({folder name: path}) linked into custom_nodes.
    Yields its URL."""
    nodes_dir = base / "custom_nodes"
    nodes_dir.mkdir(parents=True, exist_ok=True)
    for name, src in {"ComfyUI-Interplay": ROOT, **(extra_nodes or {})}.items():
        link = nodes_dir / name
        if not link.exists():
            link.symlink_to(Path(src).resolve(), target_is_directory=True)
    user = base / "user" / "default"
    user.mkdir(parents=True, exist_ok=True)
    (user / "comfy.settings.json").write_text(json.dumps(SETTINGS))
    log = open(base / "server.log", "w")
    proc = subprocess.Popen([python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
                             "--base-directory", str(base)], cwd=comfy_dir, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        t0 = time.monotonic()
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {proc.returncode}; see {base / 'server.log'}")
            try:
                if "InterplayLoadVideo" in (http_json(f"{url}/object_info/InterplayLoadVideo") or {}):
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(f"ComfyUI did not serve the pack's nodes within {timeout} s; "
                                   f"see {base / 'server.log'}")
            time.sleep(1.0)
        text = (base / "server.log").read_text(errors="replace")
        if "IMPORT FAILED" in text and "ComfyUI-Interplay" in text.split("IMPORT FAILED", 1)[1][:300]:
            raise RuntimeError(f"the pack failed to import; see {base / 'server.log'}")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@contextlib.contextmanager
def frontend(url: str, chromium: str, profile: Path):
    """A page with the ComfyUI frontend loaded and its node definitions registered."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(profile), executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            page = ctx.new_page()
            page.console_errors = []
            page.on("pageerror", lambda e: page.console_errors.append(f"{e}: {(e.stack or '').splitlines()[1:3]}"))
            page.goto(url + "/")
            page.wait_for_function("() => window.app && window.app.graph && window.LiteGraph && "
                                   "LiteGraph.registered_node_types['InterplayLoadVideo']", timeout=180_000)
            yield page
        finally:
            ctx.close()


def versions(page, url: str) -> str:
    stats = http_json(f"{url}/system_stats")["system"]
    fe = page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__")
    return f"ComfyUI {stats.get('comfyui_version')}, frontend {fe}, Python {stats.get('python_version', '').split()[0]}"


# ------------------------------------------------------------------------------------ inputs and models
def make_inputs(folder: Path) -> None:
    """The input files the workflows name: a still image and a short driving video, 64 px."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    img = np.full((TINY_SIZE, TINY_SIZE, 3), 90, np.uint8)
    img[26:39, 14:27] = (220, 40, 40)  # a red cube under the tiny run's arrow tail
    Image.fromarray(img).save(folder / "kinemask_input.png")
    Image.fromarray(img).save(folder / "gamecraft_start.png")
    Image.fromarray(img).save(folder / "wan_input.png")
    Image.fromarray(img).save(folder / "pam_first_frame.png")
    Image.fromarray(img).save(folder / "matrix_input.png")
    idm = np.zeros((TINY_SIZE, TINY_SIZE, 3), np.uint8)
    idm[26:39, 14:27] = (255, 0, 0)  # id1: the red cube
    idm[40:56, 36:56] = (0, 255, 0)  # id2
    Image.fromarray(idm).save(folder / "matrix_id_map.png")
    import av

    with av.open(str(folder / "interdyn_driving.mp4"), "w") as out:
        stream = out.add_stream("libx264", rate=12)
        stream.width = stream.height = TINY_SIZE
        stream.pix_fmt = "yuv420p"
        for t in range(6):
            frame = np.full((TINY_SIZE, TINY_SIZE, 3), 40, np.uint8)
            frame[20:40, 4 + 6 * t:24 + 6 * t] = (230, 180, 150)  # a "hand" moving right
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def _import_pack(work: Path):
    """Make `interplay` (this checkout) and `kit` (tests/kit) importable in this process."""
    shim = work / "pkg"
    shim.mkdir(exist_ok=True)
    if not (shim / "interplay").exists():
        (shim / "interplay").symlink_to(ROOT, target_is_directory=True)
    sys.path[:0] = [str(shim), str(ROOT / "tests")]


def tiny_models(models: Path) -> list[str]:
    """Tiny random models of the real classes (tests/kit/tiny.py) under the names the workflows use."""
    _import_pack(models.parent.parent)
    import torch
    from kit import tiny

    from interplay.models.backbones import cogvideox, svd
    from interplay.models.control import interdyn, kinemask

    placed = []

    def put(src: Path, rel: str):  # hard links (or copies): the pack refuses model symlinks that lead elsewhere
        tiny._link_or_copy(Path(src).resolve(), models / rel)
        placed.append(rel)

    root = tiny.tiny_models_root()
    yaml, weights = tiny.tiny_sam2()
    put(yaml, f"sam2/{Path(yaml).name}")
    for name in ("sam2.1_hiera_tiny.safetensors", "sam2.1_hiera_large.safetensors"):
        put(weights, f"sam2/{name}")
    put(root / tiny.SVD_CHECKPOINT, "checkpoints/svd.safetensors")
    bb = svd.load_svd(str(tiny.tiny_svd_dir()), dtype=torch.float32, device="cpu")
    branch = interdyn.new_branch(bb.denoiser)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # "trained": non-zero residuals, so the control reaches the video
        for p in branch.module.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    folder = interdyn.save_branch(branch, models / "controlnet" / "interdyn", layout="diffusers")
    placed.append("controlnet/interdyn/")
    cfg = json.loads((folder / "config.json").read_text())
    cfg.pop("interplay_residual_rule", None)  # like the release: no rule recorded
    (folder / "config.json").write_text(json.dumps(cfg))
    put(tiny.tiny_cogvideox_dir(), "diffusers/CogVideoX-5b-I2V")
    cog = cogvideox.load_cogvideox(tiny.tiny_cogvideox_dir(), dtype=torch.float32, device="cpu")
    br = kinemask.new_branch(cog.denoiser, num_layers=1, downscale=cog.extra.get("vae_scale_factor_spatial", 8))
    with torch.no_grad():
        for lin in br.module.out_projs:
            lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) * 0.5)
    (models / "interplay").mkdir(parents=True, exist_ok=True)
    kinemask.save_branch(br.module, models / "interplay" / "kinemask_cogvideox5b_i2v.safetensors")
    placed.append("interplay/kinemask_cogvideox5b_i2v.safetensors")
    placed += tiny_gamecraft_models(models, root)
    put(tiny.tiny_pam_released_dir(), "controlnet/pam_dexycb_all_cond")
    tiny.save_tiny_matrix_file(cog, models / "interplay" / "matrix_cogvideox5b_i2v.safetensors")
    placed.append("interplay/matrix_cogvideox5b_i2v.safetensors")
    return placed


def tiny_gamecraft_models(models: Path, root: Path) -> list[str]:
    """The play workflow's files: the tiny two-expert Wan2.2 I2V under the shipped names, and a tiny causal
    student converted from a Self-Forcing-layout checkpoint (the path a user takes with the real one)."""
    import torch
    from safetensors.torch import load_file

    from interplay.models.backbones.wan_causal import convert_causal_checkpoint

    names = {"diffusion_models/wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors":
             "diffusion_models/tiny_wan2.2_i2v_high_noise_14B.safetensors",
             "diffusion_models/wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors":
             "diffusion_models/tiny_wan2.2_i2v_low_noise_14B.safetensors",
             "vae/wan_2.1_vae.safetensors": "vae/tiny_wan_2.1_vae.safetensors",
             "text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors": "text_encoders/tiny_umt5_xxl.safetensors"}
    placed = []
    for rel, src in names.items():
        dst = models / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if not dst.exists():  # a hard link (or a copy): the pack refuses model symlinks that lead elsewhere
            try:
                os.link((root / src).resolve(), dst)
            except OSError:
                shutil.copy2((root / src).resolve(), dst)
        placed.append(rel)
    sd = load_file(root / "diffusion_models" / "tiny_wan2.1_t2v_1.3B.safetensors")
    pt = models.parent / "self_forcing_dmd_tiny.pt"
    torch.save({"generator_ema": {"model." + k: v for k, v in sd.items()}}, pt)
    convert_causal_checkpoint(pt, models / "diffusion_models" / "tiny_self_forcing.safetensors", head_dim=16)
    placed.append("diffusion_models/tiny_self_forcing.safetensors")
    return placed


# ------------------------------------------------------------------------------------ the checks
LOAD_JS = """async ([wf, name]) => {
  const known = LiteGraph.registered_node_types;
  const missing = [...new Set(wf.nodes.map(n => n.type).filter(t => !known[t]))];
  await app.loadGraphData(wf, true, true, name);
  const p = await app.graphToPrompt();
  return {missing, prompt: JSON.stringify(p.output), nodes: app.graph.nodes.length};
}"""

SET_JS = """(changes) => {
  const done = [];
  for (const node of app.graph.nodes) {
    for (const [name, value] of Object.entries(changes[node.comfyClass] || {})) {
      const w = (node.widgets || []).find(w => w.name === name);
      if (!w) throw new Error(`node ${node.id} (${node.comfyClass}) has no widget ${name}`);
      w.value = value; w.callback?.(value);
      done.push(`${node.id}.${name}`);
    }
  }
  app.graph.setDirtyCanvas(true, true);
  return done;
}"""


# Draw one arrow at a time with its head on each edge and corner of the image, at several canvas sizes (what
# zooming the graph does to the widget), and record where the page draws the speed label (the real fillText and
# measureText of Chromium's canvas).
LABEL_JS = """async (sizes) => {
  const node = app.graph.nodes.find(n => n.comfyClass === "InterplayArrowPainter");
  const ed = node?.interplayArrows;
  for (let k = 0; k < 100 && ed && !ed.size; k++) await new Promise(r => setTimeout(r, 100));
  if (!ed?.size) return {error: "the Arrow Painter shows no image"};
  // the frontend hides DOM widgets of nodes off screen: bring the node into view first
  app.canvas.ds.scale = 1; app.canvas.centerOnNode(node); app.canvas.setDirty(true, true);
  for (let k = 0; k < 50 && !ed.canvas.clientWidth; k++) await new Promise(r => setTimeout(r, 100));
  if (!ed.canvas.clientWidth) return {error: "the Arrow Painter's canvas is not shown"};
  const {w, h} = ed.size, cx = w / 2, cy = h / 2;
  const heads = [[w, cy], [0, cy], [cx, 0], [cx, h], [w, 0], [w, h], [0, 0], [0, h]];
  const ctx = ed.canvas.getContext("2d");
  const fill = ctx.fillText, saved = ed.drawing, style = ed.canvas.getAttribute("style");
  let last = null;
  ctx.fillText = function (text, x, y) {
    if (text.endsWith("m/s")) last = {text, x, y, width: this.measureText(text).width,
                                      size: parseFloat(this.font.match(/([0-9.]+)px/)[1]), base: this.textBaseline};
    return fill.apply(this, arguments);
  };
  const out = [];
  try {
    for (const [cw, ch] of sizes) {
      Object.assign(ed.canvas.style, {width: cw + "px", height: ch + "px", flex: "none"});
      for (const [x1, y1] of heads) {
        last = null;
        ed.drawing = {...saved, width: w, height: h, objects: [{arrow: {x0: cx, y0: cy, x1, y1}, points: []}]};
        ed.redraw();
        out.push({canvas: [ed.canvas.width, ed.canvas.height], head: [x1, y1], label: last});
      }
    }
  } finally {
    ctx.fillText = fill; ed.drawing = saved; ed.canvas.setAttribute("style", style); ed.redraw();
  }
  return {cases: out};
}"""
LABEL_SIZES = [[440, 300], [200, 140], [1200, 800], [120, 90]]


def check_arrow_label(page) -> tuple[bool, str]:
    """Every speed label drawn inside the canvas (text box from the page's own metrics)."""
    res = page.evaluate(LABEL_JS, LABEL_SIZES)
    if "error" in res:
        return False, res["error"]
    bad = []
    for c in res["cases"]:
        lab, (cw, ch) = c["label"], c["canvas"]
        if lab is None:
            bad.append(f"no label drawn for head {c['head']} on a {cw}x{ch} canvas")
            continue
        top = lab["y"] if lab["base"] == "top" else lab["y"] - lab["size"]
        if lab["x"] < 0 or lab["x"] + lab["width"] > cw or top < 0 or top + lab["size"] > ch:
            bad.append(f"head {c['head']} on a {cw}x{ch} canvas: label at ({lab['x']:.1f}, {top:.1f}) "
                       f"size {lab['width']:.1f}x{lab['size']:.0f} is cut off")
    n = len(res["cases"])
    if bad:
        return False, f"{len(bad)} of {n} speed labels outside the canvas: " + "; ".join(bad[:6])
    return True, (f"Arrow Painter: the speed label is inside the canvas for all {n} cases (head on each edge and "
                  f"corner, canvases {', '.join(f'{w}x{h}' for w, h in LABEL_SIZES)} CSS px)")


def queue_from_page(page) -> dict:
    """Queue the loaded graph with the frontend's own queue call; returns ComfyUI's /prompt reply."""
    with page.expect_response(lambda r: r.url.endswith("/prompt") and r.request.method == "POST",
                              timeout=60_000) as info:
        page.evaluate("() => app.queuePrompt(0, 1)")
    return info.value.json()


def wait_history(url: str, prompt_id: str, timeout: float) -> dict:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        hist = http_json(f"{url}/history/{prompt_id}") or {}
        entry = hist.get(prompt_id)
        if entry and entry.get("status", {}).get("completed") is not None and \
                entry["status"].get("status_str") in ("success", "error"):
            return entry
        time.sleep(0.5)
    return {}


def stop_run(url: str, prompt_id: str) -> None:
    """Stop a queued/running prompt (the validation is what was wanted) and wait until it is off the queue."""
    with contextlib.suppress(Exception):
        http_json(f"{url}/queue", {"delete": [prompt_id]})
    t0 = time.monotonic()
    while time.monotonic() - t0 < 120:
        q = http_json(f"{url}/queue") or {}
        running = [item[1] for item in q.get("queue_running", [])]
        pending = [item[1] for item in q.get("queue_pending", [])]
        if prompt_id not in running and prompt_id not in pending:
            return
        if prompt_id in running:
            with contextlib.suppress(Exception):
                http_json(f"{url}/interrupt", {})
        time.sleep(0.5)


def widget_default(spec: list):
    """A widget's starting value from its /object_info spec (the frontend's constructors' defaults)."""
    typ, opts = spec[0], (spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {})
    choices = typ if isinstance(typ, list) else opts.get("options") if typ == "COMBO" else None
    if choices is not None:
        return opts["default"] if opts.get("default") else (choices[0] if choices else None)
    return opts.get("default", {"INT": 0, "FLOAT": 0, "STRING": "", "BOOLEAN": False}.get(typ))


def prompt_diff(frontend: dict, twin: dict, object_info: dict) -> list[str]:
    """Inputs where the frontend's prompt and the API twin disagree; an input the twin leaves out must have its
    widget's default (a value shifted into the wrong widget shows up there)."""
    problems = []
    for nid, node in twin.items():
        got = frontend.get(nid)
        if got is None:
            problems.append(f"node {nid} ({node['class_type']}) is missing from the frontend's prompt")
            continue
        spec = object_info.get(node["class_type"], {}).get("input", {})
        specs = dict(spec.get("required") or {}, **(spec.get("optional") or {}))
        names = list(node.get("inputs", {})) + [n for n in got["inputs"] if n not in node.get("inputs", {})]
        for name in names:
            have = got["inputs"].get(name, "<absent>")
            if name in node.get("inputs", {}):
                want = node["inputs"][name]
            elif name in specs:
                want = widget_default(specs[name])
            else:  # a page-only widget, e.g. the "video-preview" of a loaded video; ComfyUI ignores it
                continue
            same = have == want or (isinstance(want, list) and isinstance(have, list) and len(want) == len(have) == 2
                                    and [str(want[0]), want[1]] == [str(have[0]), have[1]])
            if not same:
                problems.append(f"node {nid} ({node['class_type']}) input {name!r}: the frontend sends {have!r}, "
                                f"expected {want!r}")
    return problems


def format_node_errors(reply: dict, object_info: dict) -> tuple[list[str], bool]:
    """ComfyUI's validation errors as lines, and whether every one is a model file missing from its folder
    (a value not in the list of an input the pack declares with a ``model_folder``)."""
    lines, only_models = [], True
    for nid, ne in (reply.get("node_errors") or {}).items():
        for e in ne.get("errors", []):
            name = (e.get("extra_info") or {}).get("input_name", "")
            lines.append(f"node {nid} ({ne.get('class_type')}) input {name!r}: {e.get('message')}: "
                         f"{e.get('details')}")
            spec = object_info.get(ne.get("class_type"), {}).get("input", {})
            spec = (spec.get("required") or {}).get(name) or (spec.get("optional") or {}).get(name) or []
            model_input = len(spec) > 1 and isinstance(spec[1], dict) and bool(spec[1].get("model_folder"))
            only_models &= e.get("type") == "value_not_in_list" and model_input
    if not lines and reply.get("error"):
        err = reply["error"]
        lines.append(f"{err.get('message')}: {err.get('details')}")
        only_models = False
    return lines, only_models


def run_outcome(entry: dict) -> tuple[bool, str]:
    if not entry:
        return False, "did not finish in time"
    status = entry["status"]
    if status.get("status_str") == "success":
        outs = ", ".join(f"{nid}: {', '.join(f'{k} x{len(v)}' for k, v in o.items())}"
                         for nid, o in (entry.get("outputs") or {}).items())
        return True, f"outputs {outs or 'none'}"
    for kind, data in status.get("messages", []):
        if kind == "execution_error":
            return False, (f"node {data.get('node_id')} ({data.get('node_type')}) raised "
                           f"{data.get('exception_type')}: {data.get('exception_message')}")
    return False, f"status {status.get('status_str')}"


def check_workflow(page, url: str, path: Path, tiny: bool, timeout: float,
                   object_info: dict) -> tuple[bool, list[str]]:
    name = path.stem
    wf = json.loads(path.read_text())
    twin_path = path.parent / "api" / path.name
    twin = json.loads(twin_path.read_text()) if twin_path.exists() else None
    out = [f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:"]
    ok = True
    res = page.evaluate(LOAD_JS, [wf, path.name])
    res["prompt"] = json.loads(res["prompt"])  # as the frontend sends it (JSON.stringify)
    if res["missing"]:
        ok = False
        out.append(f"  loaded {res['nodes']} nodes; MISSING node types: {', '.join(res['missing'])}")
    else:
        out.append(f"  loaded {res['nodes']} nodes, every node type known to the frontend")
    if twin is not None:
        diff = prompt_diff(res["prompt"], twin, object_info)
        ok &= not diff
        out.append("  the frontend's prompt matches workflows/api/" + path.name if not diff else
                   "  the frontend's prompt differs from workflows/api/" + path.name + ":")
        out += [f"    {d}" for d in diff]
    needs_models = name in TINY_RUN
    reply = queue_from_page(page)
    lines, only_models = format_node_errors(reply, object_info)
    if lines:
        if needs_models and not tiny and only_models:
            out.append("  validated but missing models (expected with --no-tiny-models):")
        else:
            ok = False
            out.append("  VALIDATION ERRORS:")
        out += [f"    {line}" for line in lines]
        return ok, out
    pid = reply["prompt_id"]
    if needs_models and not tiny:
        ok = False
        out.append("  queued with no validation error, but no model files were placed: unexpected")
        stop_run(url, pid)
        return ok, out
    if needs_models:
        out.append("  queued as shipped: no validation error (tiny models under the shipped file names); "
                   "stopped the full-size run")
        stop_run(url, pid)
        changed = page.evaluate(SET_JS, TINY_RUN[name])
        out.append(f"  set for the tiny models through the page's widgets: {', '.join(changed)}")
        reply = queue_from_page(page)
        lines, _ = format_node_errors(reply, object_info)
        if lines:
            out.append("  VALIDATION ERRORS after the tiny-model changes:")
            return False, out + [f"    {line}" for line in lines]
        pid = reply["prompt_id"]
    else:
        out.append("  queued as shipped: no validation error")
    t0 = time.monotonic()
    done, what = run_outcome(wait_history(url, pid, timeout))
    out.append(f"  {'completed' if done else 'FAILED'} from the browser in {time.monotonic() - t0:.1f} s: {what}")
    if done and any(n["type"] == "InterplayArrowPainter" for n in wf["nodes"]):
        label_ok, msg = check_arrow_label(page)
        ok &= label_ok
        out.append(f"  {msg}")
    return ok and done, out


PANEL_JS = """async () => {
  const node = app.graph.nodes.find(n => n.comfyClass === "InterplayGameCraftSampler");
  const panel = node?.interplayPlay;
  if (!panel) return {error: "the GameCraft Sampler has no play panel"};
  app.canvas.ds.scale = 1; app.canvas.centerOnNode(node); app.canvas.setDirty(true, true);
  for (let k = 0; k < 50 && !panel.root.clientWidth; k++) await new Promise(r => setTimeout(r, 100));
  if (!panel.root.clientWidth) return {error: "the play panel is not shown"};
  panel.root.focus();
  return {ok: document.activeElement === panel.root};
}"""
PANEL_STATE_JS = """() => {
  const p = app.graph.nodes.find(n => n.comfyClass === "InterplayGameCraftSampler")?.interplayPlay;
  return JSON.stringify({log: p.log, status: p.status.textContent, note: p.note.textContent, error: p.error,
    playing: p.playing, img: [p.view.naturalWidth, p.view.naturalHeight], src: p.view.src,
    focused: document.activeElement === p.root});
}"""


def check_play_panel(page, url: str, path: Path, timeout: float) -> tuple[bool, list[str]]:
    """Drive the live play panel from headless Chromium: hold keys on the panel, type an instruction, press Play
    and let it queue PLAY_BLOCKS blocks through the API with the session id; report its log."""
    out = [f"play panel on {path.name} (tiny causal student, {PLAY_BLOCKS} blocks):"]
    wf = json.loads(path.read_text())
    page.evaluate(LOAD_JS, [wf, path.name])
    changed = page.evaluate(SET_JS, TINY_PLAY)
    out.append(f"  set through the page's widgets: {', '.join(changed)}")
    for _ in range(3):  # an error dialog left by an earlier workflow would cover the panel
        page.keyboard.press("Escape")
    page.evaluate("() => document.querySelectorAll('.p-dialog-mask').forEach(m => m.remove())")
    res = page.evaluate(PANEL_JS)
    if "error" in res or not res.get("ok"):
        return False, out + [f"  {res.get('error', 'the panel did not take the keyboard focus')}"]
    panel = page.locator("div[title^='Click here, then hold']")
    held: list[str] = []
    script = list(PLAY_SCRIPT)

    def apply(step):
        nonlocal held
        _, keys, instruction = step
        inp = panel.locator("input")
        if inp.input_value() != instruction:
            inp.fill(instruction)
            page.evaluate("() => app.graph.nodes.find(n => n.comfyClass === 'InterplayGameCraftSampler')"
                          ".interplayPlay.root.focus()")
        for k in held:
            if k not in keys:
                page.keyboard.up(k)
        for k in keys:
            if k not in held:
                page.keyboard.down(k)
        held = list(keys)

    apply(script.pop(0))
    page.evaluate("() => app.graph.nodes.find(n => n.comfyClass === 'InterplayGameCraftSampler')"
                  ".interplayPlay.playBtn.click()")
    page.evaluate("() => app.graph.nodes.find(n => n.comfyClass === 'InterplayGameCraftSampler')"
                  ".interplayPlay.root.focus()")
    t0 = time.monotonic()
    state = {}
    while time.monotonic() - t0 < timeout:
        state = json.loads(page.evaluate(PANEL_STATE_JS))
        n = len(state["log"])
        if state["error"] or n >= PLAY_BLOCKS:
            break
        # keys change once the block before the step's is shown (the panel sends the keys held at queue time)
        if script and n >= script[0][0] - 1 and n >= 1:
            apply(script.pop(0))
        time.sleep(0.1)
    if state.get("playing"):
        page.evaluate("() => app.graph.nodes.find(n => n.comfyClass === 'InterplayGameCraftSampler')"
                      ".interplayPlay.toggle()")
    for k in held:
        page.keyboard.up(k)
    with contextlib.suppress(Exception):  # the last block's preview is still loading
        page.wait_for_function("() => { const v = app.graph.nodes.find(n => n.comfyClass === "
                               "'InterplayGameCraftSampler').interplayPlay.view; return v.complete && "
                               "v.naturalWidth > 0; }", timeout=15_000)
    state = json.loads(page.evaluate(PANEL_STATE_JS))
    log = state["log"][:PLAY_BLOCKS]
    for e in log:
        out.append("  " + json.dumps(e))
    out.append(f"  status: {state['status']}")
    out.append(f"  note: {state['note']}")
    problems = []
    if len(log) < PLAY_BLOCKS:
        problems.append(f"only {len(log)} blocks arrived in {timeout:.0f} s ({state['error'] or 'no error'})")
    if len({e["session"] for e in log}) != 1:
        problems.append("the blocks came from more than one session")
    if [e["block"] for e in log] != list(range(len(log))):
        problems.append(f"blocks out of order: {[e['block'] for e in log]}")
    if any(e["mode"] != "causal" for e in log):
        problems.append("not every block ran causally")
    if any(len(e["cache_frames"] or []) > 1 + 9 for e in log):
        problems.append("the cache grew past sink + window")
    if not {"W", "W+LEFT", "D", ""} <= {e["keys"] for e in log}:
        problems.append(f"the keys held did not all reach the sampler: {sorted({e['keys'] for e in log})}")
    switch = [e for e in log if e["recache"]]
    if not switch or switch[0]["instruction"] != "a red kite rises":
        problems.append("the typed instruction caused no recache")
    if state["img"][0] <= 0:
        status = page.evaluate("async (u) => { try { const r = await fetch(u); return r.status + ' ' + "
                               "r.headers.get('content-type'); } catch (e) { return String(e); } }", state["src"])
        problems.append(f"the panel shows no block preview ({state['src']} -> {status})")
    else:
        out.append(f"  the panel shows the last block's preview: {state['img'][0]}x{state['img'][1]} px "
                   f"({state['src'].split('?')[-1][:80]})")
    if page.console_errors:
        problems.append("page errors: " + "; ".join(page.console_errors))
    elapsed = time.monotonic() - t0
    frames = sum(e["new_frames"] for e in log)
    out.append(f"  {len(log)} blocks, {frames} frames in {elapsed:.1f} s from the first Play (wall, incl. queueing)")
    if problems:
        return False, out + [f"  FAILED: {p}" for p in problems]
    return True, out + [f"  play panel OK: one session, keys and the instruction reached every block, a recache "
                        f"at the switch ({switch[0]['recache']}), cache <= sink + window, previews shown"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("comfyui", nargs="?", default=os.environ.get("COMFYUI_DIR"),
                    help="ComfyUI checkout (the folder holding main.py); default $COMFYUI_DIR")
    ap.add_argument("--python", default=sys.executable, help="Python that runs ComfyUI (default: this one)")
    ap.add_argument("--chromium", default=os.environ.get("CHROMIUM", "/usr/bin/chromium"))
    ap.add_argument("--port", type=int, default=0, help="server port (default: a free one)")
    ap.add_argument("--workflows", nargs="*", type=Path, help="UI workflow files (default: workflows/*.json)")
    ap.add_argument("--no-tiny-models", dest="tiny", action="store_false",
                    help="leave the models folder empty: workflows that need models must fail on those alone")
    ap.add_argument("--timeout", type=float, default=600, help="seconds each run may take")
    ap.add_argument("--keep", type=Path, help="work in this folder and keep it (server log, outputs)")
    ap.add_argument("--play-only", action="store_true",
                    help="only drive the GameCraft play panel (workflows/gamecraft_play.json) for ten blocks")
    args = ap.parse_args(argv)
    if not args.comfyui or not (Path(args.comfyui) / "main.py").is_file():
        ap.error("give the ComfyUI folder (holding main.py) as an argument or in COMFYUI_DIR")
    files = args.workflows or sorted((ROOT / "workflows").glob("*.json"))
    work = args.keep or Path(tempfile.mkdtemp(prefix="interplay-frontend-"))
    base = (work / "base").resolve()
    make_inputs(base / "input")
    shutil.rmtree(base / "models", ignore_errors=True)  # a kept folder from an earlier run
    placed = tiny_models(base / "models") if args.tiny else []
    all_ok = True
    with comfyui(Path(args.comfyui).resolve(), base, args.python, args.port or free_port()) as url:
        object_info = http_json(f"{url}/object_info", timeout=60)
        with frontend(url, args.chromium, Path(tempfile.mkdtemp(prefix="chromium-", dir=work))) as page:
            print(versions(page, url))
            if page.console_errors:
                # the frontend's own (1.27.10 logs one from its settings store with no custom nodes at all)
                print("page errors while the frontend started, before any workflow: "
                      + "; ".join(page.console_errors))
                page.console_errors.clear()
            print(f"pack: {ROOT}; base directory: {base}")
            if placed:
                print(f"tiny models placed: {', '.join(placed)}")
            play = (ROOT / "workflows" / "gamecraft_play.json").resolve()
            for path in ([play] if args.play_only else [Path(f).resolve() for f in files]):
                if not args.play_only:
                    ok, lines = check_workflow(page, url, path, args.tiny, args.timeout, object_info)
                    all_ok &= ok
                    print("\n".join(lines), flush=True)
                if path == play and args.tiny:  # right after its workflow, before a later run can hold the queue
                    ok, lines = check_play_panel(page, url, play, args.timeout)
                    all_ok &= ok
                    print("\n".join(lines), flush=True)
            if page.console_errors:
                all_ok = False
                print("PAGE ERRORS while checking the workflows: " + "; ".join(page.console_errors))
    print("all workflows OK" if all_ok else "some workflows FAILED")
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
