"""The MATRIX benchmark script at its small CPU size (the full size runs on the GPU machine)."""
import importlib.util
import json
import math
from pathlib import Path

import pytest


def _bench():
    path = Path(__file__).with_name("bench_matrix.py")
    spec = importlib.util.spec_from_file_location("bench_matrix", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_small_cpu(tmp_path):
    out = tmp_path / "bench.json"
    res = _bench().main(["--size", "small", "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))
    assert res["frames"] == 9 and res["tokens"] == {"video": 48, "text": 16} and res["layers"] == 2
    c = res["capture"]
    assert set(c) >= {"step_plain", "step_capture_paper", "step_capture_all"}
    assert all(c[k]["s_per_step"] > 0 and c[k]["peak_mib"] > 0 for k in ("step_plain", "step_capture_all"))
    assert math.isfinite(c["step_capture_all"]["overhead"])
    # the capture's extra memory stays within a few blocks, far below the full attention of all layers
    assert c["step_capture_all"]["extra_peak_mib"] <= 4 * c["capture_block_mib"] + 0.01
    assert res["capture_max_err"] < 1e-6
    t = res["train"]
    assert set(t) == {"train_paper", "train_code"}
    for v in t.values():
        assert v["s_per_step"] > 0 and v["peak_mib"] > 0 and all(math.isfinite(x) for x in v["terms"].values())
        assert v["terms"]["sga"] > 0 and v["terms"]["spa"] > 0
    assert t["train_paper"]["trainable_m"] > t["train_code"]["trainable_m"]  # two decoders vs one shared


@pytest.mark.gpu
def test_bench_full_gpu(tmp_path):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    res = _bench().main(["--size", "full", "--json", str(tmp_path / "b.json"), "--reps", "3"])
    assert res["capture"]["step_capture_paper"]["overhead"] < 1.0
