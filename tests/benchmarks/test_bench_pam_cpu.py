"""The PAM benchmark script at its small CPU size (the full size runs on the GPU machine)."""
import importlib.util
import json
from pathlib import Path

import pytest


def _bench():
    path = Path(__file__).with_name("bench_pam.py")
    spec = importlib.util.spec_from_file_location("bench_pam", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_small_cpu(tmp_path):
    out = tmp_path / "bench.json"
    res = _bench().main(["--size", "small", "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))
    assert res["frames"] == 9 and res["tokens"] == {"video": 48, "text": 16} and res["branch_blocks"] == 2
    c = res["cases"]
    assert set(c) == {"ref_eager", "pack_eager", "pack_nocontrol_eager"}
    # the pack's own forward without control is the diffusers transformer, exactly
    assert res["rel_err"]["pack_nocontrol_eager"] == 0.0
    assert 0 < res["rel_err"]["pack_eager_vs_nocontrol"]  # random projections: the branch acts
    fc = res["flops_check"]  # analytic FLOPs agree with torch's counter (math SDPA) within the small extras
    assert fc["analytic_ref"] == pytest.approx(fc["counted_ref"], rel=0.02)
    assert fc["analytic_pack"] == pytest.approx(fc["counted_pack"], rel=0.02)
    acc = res["acceptance"]
    assert (acc["pack_case"], acc["ref_case"], acc["goal"]) == ("pack_eager", "ref_eager", 1.3)
    assert acc["ratio"] == pytest.approx(c["pack_eager"]["s_per_step"] / c["ref_eager"]["s_per_step"], rel=0.01)
    assert res["vae"]["frames"] == [9, 32, 32] and res["vae"]["condition_latents"] == [1, 5, 3, 4, 8, 8]
    fs = res["full_sample"]
    assert fs["total_s"] == pytest.approx(50 * fs["step_s"] + fs["encode_image_s"] + fs["encode_conditions_s"]
                                          + fs["decode_s"], abs=0.02)


def test_step_flops_full_size():
    """664.4 TFLOP per CFG step for CogVideoX-5B-I2V at 49x480x720 (as bench_kinemask); the 12-block branch with
    its projections adds 30.3% (12/42 = 28.6% for the blocks alone): the floor of the 1.3x goal."""
    from interplay.models.backbones import cogvideox as cog

    class C:  # the release config's numbers
        pass

    c = C()
    for k, v in cog.COGVIDEOX_5B_I2V.items():
        setattr(c, k, v)
    b = _bench()
    ref = b.step_flops(c, 17550, 226, 2)
    assert ref == pytest.approx(664.4, rel=0.005)
    pam = b.step_flops(c, 17550, 226, 2, branch_blocks=12)
    assert pam / ref == pytest.approx(1.3026, abs=1e-3)


@pytest.mark.gpu
def test_bench_full_gpu(tmp_path):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    res = _bench().main(["--size", "full", "--json", str(tmp_path / "b.json"), "--reps", "3", "--no-vae"])
    assert res["rel_err"]["pack_nocontrol_eager"] < 1e-2
