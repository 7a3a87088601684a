"""The GameCraft causal block benchmark at its small CPU size (the full size runs on a GPU machine)."""
import importlib.util
import json
from pathlib import Path


def _bench():
    path = Path(__file__).with_name("bench_gamecraft.py")
    spec = importlib.util.spec_from_file_location("bench_gamecraft", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_small_cpu(tmp_path):
    out = tmp_path / "bench.json"
    res = _bench().main(["--size", "small", "--blocks", "4", "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))
    assert res["video_frames_per_block"] == 12 and res["tokens_per_latent_frame"] == 4
    assert res["cached"]["forwards_per_block"] == [5, 5, 5, 5]  # 4 steps + the clean pass, no CFG
    assert res["recompute"]["forwards_per_block"] == 4
    c = res["cache"]
    # k and v, 4 tokens, 2 heads x 16, 2 layers, fp32, one row, one expert
    assert c["bytes_per_latent_frame"] == 2 * 4 * 2 * 16 * 2 * 4
    assert c["frames_held"] == [0, 6, 7, 8, 9, 10, 11] and len(c["frames_held"]) <= c["bound_frames"]
    assert res["recache"]["last_block"]["forwards"] == 1 and res["recache"]["window"]["forwards"] == 3
    assert res["cached"]["generated_fps"] > 0 and res["recompute"]["generated_fps"] > 0
