"""The Wan benchmark script at its small CPU size (the full size runs on a GPU machine)."""
import importlib.util
import json
from pathlib import Path

import pytest


def _bench():
    path = Path(__file__).with_name("bench_wan.py")
    spec = importlib.util.spec_from_file_location("bench_wan", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_small_cpu(tmp_path):
    out = tmp_path / "bench.json"
    res = _bench().main(["--size", "small", "--blocks-on-gpu", "1", "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))
    assert (res["frames"], res["height"], res["width"]) == (9, 32, 32)
    assert res["tokens"] == {"video": 3 * 2 * 2, "text": 512} and res["batch"] == 2
    c = res["cases"]
    assert set(c) == {"ref_eager", "pack_eager", "pack_slots_eager"}
    # the pack's forward is the diffusers transformer, exactly, with or without observers in every slot
    assert res["rel_err"] == {"pack_eager": 0.0, "pack_slots_eager": 0.0}
    fc = res["flops_check"]
    assert fc["analytic"] == pytest.approx(fc["counted"], rel=0.02)
    m = res["modes"]
    assert set(m) == {"none", "model", "blocks", "fp8"}
    assert m["none"]["swaps"] == 0 and m["model"]["swaps"] == 2 * 3  # each round: in to high, switch to low
    assert m["blocks"]["block_moves"] == {"high_noise": 3, "low_noise": 3}  # 1 of 2 blocks streamed, 3 steps
    assert m["model"]["rel_err_vs_none"] == m["blocks"]["rel_err_vs_none"] == 0.0  # moves never change numbers
    assert 0 < m["fp8"]["rel_err_vs_none"] < 0.05
    assert set(m["none"]["s_per_step"]) == {"high_noise", "low_noise"}


def test_step_flops_of_the_release_expert():
    """3,357 TFLOP per CFG step for one Wan2.2-I2V-A14B expert at 81x480x832 (32,760 video + 512 text tokens);
    the attention scores alone are 4 N^2 D x 40 layers x 2 = 1,758 TFLOP."""
    from interplay.models.backbones import wan

    class C:
        pass

    c = C()
    for k, v in wan.RELEASE_TRANSFORMERS["wan2.2-i2v-a14b"].items():
        setattr(c, k, v)
    tf = _bench().step_flops(c, 21 * 30 * 52, 512, 2)
    assert tf == pytest.approx(3356.8, rel=1e-4)
    assert 2 * 40 * 4 * (21 * 30 * 52) ** 2 * 5120 / 1e12 == pytest.approx(1758.36, rel=1e-4)


@pytest.mark.gpu
def test_bench_full_gpu(tmp_path):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    res = _bench().main(["--size", "full", "--json", str(tmp_path / "b.json"), "--reps", "3", "--modes", "none"])
    assert res["rel_err"]["pack_eager"] < 1e-2
