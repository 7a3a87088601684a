"""The Key Timeline widget's JS parser and serialiser agree with models/conditions/keys.py, byte for byte."""
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from interplay.models.conditions.keys import BlockGrid, TimelineError, parse_timeline, to_block_text

ROOT = Path(__file__).resolve().parents[2]
NODE = shutil.which("node")
needs_node = pytest.mark.skipif(NODE is None, reason="node (>= 18) is not installed; the widget's JS needs it")

CASES = [
    ("W+LEFT*4, W*8", 16, 12, 9),
    ("0-2.75s: W+LEFT; 2.75-8.75s: W", 16, 12, 9),
    ("0s-1.8333s: LEFT+W\n1.8333-5.8333s: w", 24, 12, 9),
    ("w+→, ArrowUp+MOUSE(+30,-12.5)*2  # look up\nNONE, SPACE+D", 16, 12, 9),
    ("0.5-1s: S; 2-2.5s: A+MOUSE(3.25,0)", 16, 12, 9),
    ("W*2, D", 24, 16, 13),
    ('{"v": 1, "segments": [{"keys": ["right", "w"], "frames": 5, "mouse": [1.5, 0]}, {"keys": ["NONE"], "frames": 1}]}',
     16, 12, 9),
    # errors
    ("W+Q*3", 16, 12, 9),
    ("W, LEFT*0", 16, 12, 9),
    ("W, 0-1s: A", 16, 12, 9),
    ("0-1s: W; 0.5-2s: A", 16, 12, 9),
    ("W+W", 16, 12, 9),
    ("NONE+A", 16, 12, 9),
    ('{"v": 1, "segments": [{"keys": ["W"], "frames": 3}, {"keys": ["X"], "frames": 3}]}', 16, 12, 9),
    ('{"v": 1, "segments": [{"keys": ["W"], "frames": 0}]}', 16, 12, 9),
]


@needs_node
def test_js_and_python_parse_to_the_same_json_and_errors():
    script = """
    import * as k from "./web/lib/key_timeline.js";
    const cases = JSON.parse(process.argv[1]);
    const out = cases.map(([text, fps, bf, fb]) => {
      const g = k.makeGrid(bf, fb);
      const r = k.parseTimeline(text, { grid: g, fps });
      return r.ok ? { json: k.serializeTimeline(r.timeline), blocks: k.toBlockText(r.timeline, g) } : { error: r.error };
    });
    console.log(JSON.stringify(out));
    """
    r = subprocess.run([NODE, "--input-type=module", "-e", script, json.dumps(CASES)], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    js = json.loads(r.stdout)
    for (text, fps, bf, fb), got in zip(CASES, js):
        grid = BlockGrid(bf, fb)
        try:
            tl = parse_timeline(text, grid=grid, fps=fps)
        except TimelineError as e:
            msg = str(e)
            assert "error" in got, (text, got)
            assert msg.startswith("`timeline`: " + got["error"] + ". Expected "), (msg, got["error"])
            continue
        assert got.get("json") == tl.to_json(), text
        assert got["blocks"] == to_block_text(tl, grid), text
