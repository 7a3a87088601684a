"""The InterDyn benchmark script at its small CPU size (the full size runs on the GPU machine)."""
import importlib.util
import json
from pathlib import Path

import pytest


def _bench():
    path = Path(__file__).with_name("bench_interdyn.py")
    spec = importlib.util.spec_from_file_location("bench_interdyn", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_small_cpu(tmp_path):
    out = tmp_path / "bench.json"
    res = _bench().main(["--size", "small", "--json", str(out)])
    data = json.loads(out.read_text())
    assert data["sizes"][0]["frames"] == 4 and data == json.loads(json.dumps(res))
    s = res["sizes"][0]
    assert s["zero_branch_rel_err"] < 1e-5  # zero-init branch: the pack step equals the diffusers UNet
    c = s["cases"]
    assert set(c) == {"ref_eager", "pack_eager"}
    assert c["pack_eager"]["tflop_per_step"] > c["ref_eager"]["tflop_per_step"] > 0  # the branch adds work
    assert s["ratio_vs_ref_eager"] > 0 and s["full_sample"]["steps"] == 2


@pytest.mark.gpu
def test_bench_full_gpu(tmp_path):
    import torch
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    res = _bench().main(["--size", "full", "--json", str(tmp_path / "b.json"), "--sample-steps", "0"])
    assert res["sizes"][0]["zero_branch_rel_err"] < 5e-2
