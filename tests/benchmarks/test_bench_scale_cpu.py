"""The scaling benchmark at its small CPU size: world sizes 1 and 2 on gloo (CFG- and sequence-parallel give the
one-process prediction), the step cache's saved calls, and the compile / fp8 cases of every family against
diffusers' pipeline step (the full size runs on GPU machines)."""
import importlib.util
import json
from pathlib import Path

import pytest


def _bench():
    path = Path(__file__).with_name("bench_scale.py")
    spec = importlib.util.spec_from_file_location("bench_scale", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_small_cpu(tmp_path):
    out = tmp_path / "scale.json"
    res = _bench().main(["--size", "small", "--reps", "1", "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))
    par = res["parallel"]
    assert set(par["runs"]) == {"1_off", "2_cfg", "2_sequence"} and par["same_prediction"]
    assert [(r["cfg"], r["sp"]) for r in par["runs"].values()] == [(1, 1), (2, 1), (1, 2)]
    assert all(r["tokens"] == 3 * 2 * 2 and r["tokens_per_s"] > 0 for r in par["runs"].values())
    c = res["cache"]
    assert c["on"]["model_calls"] < c["off"]["model_calls"] == c["steps"] == 10
    assert 0 < c["rel_diff_latents"] < 0.1
    for fam in ("cogvideox", "svd", "wan"):
        s = res["speed"][fam]
        assert s["eager"]["rel_err"] < 1e-5  # the pack's forward is diffusers' (Wan: batch 2 against 2 x batch 1)
        assert s["compile"]["rel_err"] == pytest.approx(s["eager"]["rel_err"], abs=1e-6)
        assert 0 < s["fp8"]["rel_err"] < 0.05 and s["compile_fp8"]["rel_err"] == pytest.approx(s["fp8"]["rel_err"])
        assert all(s[k]["vs_diffusers"] > 0 for k in ("eager", "compile", "fp8", "compile_fp8"))
