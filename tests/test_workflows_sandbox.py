"""The README's main job: workflows/sandbox_push.json (UI format) run headlessly with the embedded demo model,
exactly as saved, writes a video in which the chosen object moves along the drawn arrow."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from interplay.models import metrics, runtime
from interplay.models.demo import configs as C
from interplay.models.sandbox.presets import generate_scene
from interplay.models.video_io import load_video
from interplay.nodes import graph

ROOT = Path(__file__).resolve().parents[1]
WF = ROOT / "workflows" / "sandbox_push.json"


def _arrow():
    api = json.loads((ROOT / "workflows" / "api" / "sandbox_push.json").read_text())
    node = next(v for v in api.values() if v["class_type"] == "InterplayArrowPainter")
    a = json.loads(node["inputs"]["drawing"])["objects"][0]["arrow"]
    return np.array([a["x1"] - a["x0"], a["y1"] - a["y0"]], float), np.array([a["x0"], a["y0"]], float)


@pytest.fixture(scope="module")
def run_demo(tmp_path_factory):
    if not (C.DEMO_ROOT / C.BACKBONE_DIR.name / "model_index.json").is_file():
        pytest.fail("the embedded demo model is missing from models/demo (it is committed with the repository)")
    out = tmp_path_factory.mktemp("out")
    try:
        rc = graph.cli_main([str(WF), "--out", str(out)])
    finally:
        runtime.set_output_directory(None)
    assert rc == 0
    return out


def _one(out, prefix):
    files = sorted(p for p in (out / "Interplay").glob(f"{prefix}_0*") if p.suffix in (".mp4", ".webp"))
    assert len(files) == 1, files
    return files[0]


def test_demo_workflow_writes_the_videos(run_demo):
    gen = load_video(_one(run_demo, "sandbox_push"))
    frames = gen[0] if isinstance(gen, tuple) else gen
    assert tuple(frames.shape) == (9, 64, 64, 3)
    assert _one(run_demo, "sandbox_push_arrow").suffix == ".webp"
    assert _one(run_demo, "sandbox_push_reference").suffix == ".mp4"


def test_the_chosen_object_moves_along_the_arrow(run_demo):
    gen = load_video(_one(run_demo, "sandbox_push"))
    frames = (gen[0] if isinstance(gen, tuple) else gen).numpy()
    api = json.loads((ROOT / "workflows" / "api" / "sandbox_push.json").read_text())
    scene = next(v["inputs"] for v in api.values() if v["class_type"] == "InterplaySandboxScene")
    idx = next(v["inputs"]["object_index"] for v in api.values() if v["class_type"] == "InterplaySceneInfo")
    clip = generate_scene("push", seed=scene["seed"], size=(64, 64), frames=9, fps=scene["fps"])
    mask0 = clip.masks[idx, 0] > 0
    arrow, tail = _arrow()
    ys, xs = np.nonzero(mask0)
    assert abs(xs.mean() - tail[0]) < 6 and abs(ys.mean() - tail[1]) < 6  # the arrow starts on that object
    _, shift = metrics.track_object(frames, mask0, n_points=20)
    d = shift[-1]
    assert float(np.linalg.norm(d)) >= 3.0, f"the object barely moved: {d}"
    cos = float(np.dot(d, arrow) / (np.linalg.norm(d) * np.linalg.norm(arrow)))
    assert math.degrees(math.acos(max(-1.0, min(1.0, cos)))) <= 30.0, (d, arrow)
