"""Runs the widget's JS unit tests (`node --test tests/web/`) and checks the JS geometry against Python."""
import json
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NODE = shutil.which("node")
needs_node = pytest.mark.skipif(NODE is None, reason="node (>= 18, for `node --test`) is not installed; the web "
                                                     "widget's geometry tests need it")


@needs_node
def test_node_test_runner_passes():
    r = subprocess.run([NODE, "--test", "tests/web/"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "# fail 0" in r.stdout


@needs_node
def test_js_serialisation_and_velocity_agree_with_python():
    from interplay.models.conditions.painter import PALETTE, parse_drawing
    from interplay.models.conditions.velocity import LENGTH_SCALE

    script = """
    import * as g from "./web/lib/arrow_geometry.js";
    let d = g.emptyDrawing(720, 480);
    d = g.addObject(d, 100.04, 200, 260.3, 140);
    d = g.addObject(d, 500, 300, 430, 410);
    d = g.setSpeed(d, 1, 0.9);
    d = g.addPoint(d, 0, 120, 210, 1);
    d = g.addPoint(d, 0, 300, 50, 0);
    const vel = d.objects.map((o) => g.arrowVelocity(o, d.width, d.height));
    console.log(JSON.stringify({json: g.serializeDrawing(d), vel, ls: g.LENGTH_SCALE, palette: g.PALETTE}));
    """
    r = subprocess.run([NODE, "--input-type=module", "-e", script], cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["ls"] == LENGTH_SCALE and [tuple(c) for c in out["palette"]] == list(PALETTE)
    d = parse_drawing(out["json"], (480, 720))
    assert d.objects[0].points == ((120, 210, 1), (300, 50, 0)) and d.objects[1].arrow.speed == 0.9
    for (vx, vy, vz), js in zip(d.velocities(), out["vel"]):
        # JS works on unrounded coordinates, the JSON keeps 0.1 px: agree to well under 1e-3 m/s
        assert abs(vx - js["vx"]) < 1e-3 and abs(vy - js["vy"]) < 1e-3 and vz == js["vz"]
    assert abs(d.velocities()[1][0] ** 2 + d.velocities()[1][1] ** 2 - 0.81) < 1e-9
