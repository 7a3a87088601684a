"""The KineMask benchmark script at its small CPU size (the full size runs on the GPU machine)."""
import importlib.util
import json
from pathlib import Path

import pytest


def _bench():
    path = Path(__file__).with_name("bench_kinemask.py")
    spec = importlib.util.spec_from_file_location("bench_kinemask", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_small_cpu(tmp_path):
    out = tmp_path / "bench.json"
    res = _bench().main(["--size", "small", "--fp8", "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))
    assert res["frames"] == 9 and res["tokens"] == {"video": 48, "text": 16} and res["branch_layers"] == 1
    c = res["cases"]
    assert set(c) == {"ref_eager", "pack_eager", "pack_nocontrol_eager", "pack_fp8_eager"}
    # the pack's own forward without control is the diffusers transformer, exactly
    assert res["rel_err"]["pack_nocontrol_eager"] == 0.0
    assert 0 < res["rel_err"]["pack_eager_vs_nocontrol"]  # random out projections: the branch acts
    assert res["rel_err"]["pack_fp8_eager_vs_pack_eager"] < 0.05 and res["fp8_linears"] == 3 * 6
    # analytic FLOPs agree with torch's counter (math SDPA) within the small-size extras
    fc = res["flops_check"]
    assert fc["analytic_ref"] == pytest.approx(fc["counted_ref"], rel=0.02)
    assert fc["analytic_pack"] == pytest.approx(fc["counted_pack"], rel=0.05)
    assert c["pack_eager"]["tflop_per_step"] > c["ref_eager"]["tflop_per_step"] > 0
    assert res["vae"]["frames"] == [9, 32, 32]
    fs = res["full_sample"]
    assert fs["total_s"] == pytest.approx(50 * fs["step_s"] + fs["encode_s"] + fs["decode_s"], abs=0.02)


def test_step_flops_full_size_matches_research():
    """664.4 TFLOP per CFG step for CogVideoX-5B-I2V at 49x480x720 (research/performance.md §2.2)."""
    from interplay.models.backbones import cogvideox as cog

    class C:  # the release config's numbers
        pass

    c = C()
    for k, v in cog.COGVIDEOX_5B_I2V.items():
        setattr(c, k, v)
    b = _bench()
    tf = b.step_flops(c, 17550, 226, 2, 42)
    assert tf == pytest.approx(664.4, rel=0.005)
    branch = b.step_flops(c, 17550, 226, 2, 8)
    assert branch / tf == pytest.approx(8 / 42, rel=0.01)  # +19%


@pytest.mark.gpu
def test_bench_full_gpu(tmp_path):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    res = _bench().main(["--size", "full", "--json", str(tmp_path / "b.json"), "--reps", "3", "--no-vae"])
    assert res["rel_err"]["pack_nocontrol_eager"] < 1e-2
