"""PAM condition nodes in the headless graph runner: trajectory -> render (with the frame-count rule), loaders
confined to the input folder, sandbox scenes, Depth Colorise, MANO Convert and HOI Metrics."""
import json

import numpy as np
import pytest
import torch

from interplay.models import runtime
from interplay.models.conditions import hoi
from interplay.models.conditions.hoi_trajectory import canonical_hand
from interplay.nodes import graph
from interplay.nodes import pam as P
from kit.hoi_data import dexycb_folder, synthetic_mano

RENDER = {"width": 96, "height": 64, "frames": 9, "frame_mismatch": "resample", "style": "dexycb",
          "depth_range": "background_plane", "seed": 0, "points": 3000}


@pytest.fixture
def input_dir(tmp_path, monkeypatch):
    d = tmp_path / "input"
    d.mkdir()
    monkeypatch.setenv("INTERPLAY_INPUT_DIR", str(d))
    return d


def _trajectory_inputs(**kw):
    spec = graph._widget_default(graph._input_types(P.InterplayHOITrajectory)["required"]["keyframes_json"])
    return dict({"keyframes_json": spec, "frames": 49, "fps": 15.0, "easing": "min_jerk"}, **kw)


def test_trajectory_to_conditions_in_the_graph_runner():
    prompt = {"1": {"class_type": "InterplayHOITrajectory", "inputs": _trajectory_inputs()},
              "2": {"class_type": "InterplayHOIRenderConditions", "inputs": dict(RENDER, hoi_sequence=["1", 0])}}
    out = graph.execute(prompt, targets=["2"])
    seq = out["1"][0]
    assert seq.num_frames == 49 and seq.meta["non_physical"] and seq.meta["attach"] == {"object": 0, "frame": 24}
    cond, depth, seg, kp, d0, s0, k0, mask, fps = out["2"]
    assert isinstance(cond, hoi.HOIConditions) and cond.num_frames == 9     # resampled 49 -> 9 frames
    assert fps == pytest.approx(15.0 * 8 / 48) and cond.fps == fps
    for img in (depth, seg, kp):
        assert img.shape == (9, 64, 96, 3) and img.dtype == torch.float32 and 0 <= img.min() and img.max() <= 1
    assert torch.equal(d0, depth[:1]) and torch.equal(s0, seg[:1]) and torch.equal(k0, kp[:1])
    assert mask.shape == (9, 64, 96) and cond.slots()[:2] == [None, None] and cond.slots()[2] is depth
    hand = (seg * 255).round().to(torch.int64)
    assert ((hand == torch.tensor([92, 0, 255])).all(-1)).sum() > 50       # the hand's palette colour


def test_frame_mismatch_error_names_both_counts():
    prompt = {"1": {"class_type": "InterplayHOITrajectory", "inputs": _trajectory_inputs()},
              "2": {"class_type": "InterplayHOIRenderConditions",
                    "inputs": dict(RENDER, hoi_sequence=["1", 0], frame_mismatch="error", frames=13)}}
    with pytest.raises(graph.NodeExecutionError, match="has 49 frames, HOI Render Conditions 'frames' needs 13"):
        graph.execute(prompt, targets=["2"])
    bad = _trajectory_inputs(frames=13)  # the default keyframes reach frame 48
    with pytest.raises(graph.NodeExecutionError, match=r"keyframes\[1\].frame 24 is outside 0..12"):
        graph.execute({"1": {"class_type": "InterplayHOITrajectory", "inputs": bad}}, targets=["1"])


def test_loaders_read_only_inside_the_input_folder(input_dir, tmp_path):
    seq = P.InterplayHOITrajectory().make(**_trajectory_inputs(frames=49))[0]
    hoi.save_hoi(seq, input_dir / "traj.npz")
    cam = dexycb_folder(input_dir / "dexycb", frames=3)
    loader = P.InterplayLoadHOISequence()
    back, n, fps = loader.load("generic", "traj.npz")
    assert n == 49 and fps == 15.0 and np.array_equal(back.hands[0].joints, seq.hands[0].joints)
    dex, n, fps = loader.load("dexycb", str(cam.relative_to(input_dir)), every_nth=2)
    assert n == 2 and fps == 15.0 and dex.seg.shape == (2, 480, 640)
    assert loader.load("generic", str(input_dir / "traj.npz"))[1] == 49  # absolute, inside the input folder
    from interplay.models import runtime

    for bad in ("../outside.npz", str(tmp_path / "elsewhere" / "traj.npz")):
        with pytest.raises(runtime.PathRefused, match="InterplayLoadHOISequence: 'path' .*outside"):
            loader.load("generic", bad)
    with pytest.raises(FileNotFoundError, match="'path' 'nope.json' not found"):
        loader.load("generic", "nope.json")


def test_sandbox_scene_through_the_loader_to_conditions():
    prompt = {"1": {"class_type": "InterplaySandboxScene", "inputs": {"preset": "hoi", "seed": 2, "width": 64,
                                                                      "height": 48, "frames": 5, "fps": 8.0}},
              "2": {"class_type": "InterplayLoadHOISequence", "inputs": {"format": "generic", "path": "",
                                                                         "scene": ["1", 2]}},
              "3": {"class_type": "InterplayHOIRenderConditions",
                    "inputs": dict(RENDER, hoi_sequence=["2", 0], frames=0, width=64, height=48, min_area=5)}}
    out = graph.execute(prompt, targets=["3"])
    assert out["2"][1] == 5 and out["3"][0].num_frames == 5
    labels = out["3"][0].labels.numpy()
    assert (labels == 255).any() and (labels == 1).any()


def test_depth_colorise_node_and_bundle_replacement():
    prompt = {"1": {"class_type": "InterplayHOITrajectory", "inputs": _trajectory_inputs()},
              "2": {"class_type": "InterplayHOIRenderConditions", "inputs": dict(RENDER, hoi_sequence=["1", 0])}}
    cond = graph.execute(prompt, targets=["2"])["2"][0]
    est = torch.linspace(0, 1, 9 * 32 * 48).reshape(9, 32, 48, 1).expand(-1, -1, -1, 3)  # an estimator's output
    img, new = P.InterplayDepthColorise().colorise(est, "disparity", "frame", conditions=cond)
    assert img.shape == (9, 64, 96, 3) and new.depth is img and torch.equal(new.seg, cond.seg)
    assert img[cond.mask == 0].max() == 0 and img[cond.mask > 0].min() > 0
    alone, none = P.InterplayDepthColorise().colorise(est, "disparity", "frame")
    assert none is None and tuple((alone[-1, -1, -1] * 255).round().int().tolist()) == (252, 254, 164)


def test_mano_convert_node_then_a_mano_trajectory(input_dir, tmp_path):
    runtime.set_models_root(tmp_path / "models")
    np.savez(input_dir / "MANO_RIGHT.npz", **synthetic_mano())
    res = P.InterplayMANOConvert().convert("MANO_RIGHT.npz")
    assert res["result"] == ("mano/mano_right.safetensors",)
    assert (tmp_path / "models" / "interplay" / "mano" / "mano_right.safetensors").is_file()
    assert "mano/mano_right.safetensors" in P._mano_choices()
    kf = {"v": 1, "hand": {"mode": "mano"}, "keyframes": [{"frame": 0, "wrist": [0, 0, 0.5]},
                                                           {"frame": 8, "wrist": [0.05, 0, 0.5]}],
          "objects": [{"label": 5, "primitive": {"type": "box", "size": [0.04] * 3}}], "attach": {"frame": 4}}
    seq = P.InterplayHOITrajectory().make(json.dumps(kf), 9, 15.0, "min_jerk",
                                          mano_right="mano/mano_right.safetensors")[0]
    assert seq.hands[0].joints.shape == (9, 21, 3) and seq.hands[0].mano.pose.shape == (9, 48)
    with pytest.raises(ValueError, match="InterplayMANOConvert: 'source'"):
        P.InterplayMANOConvert().convert("/etc/passwd")


def test_hoi_metrics_node_mpjpe_in_mm():
    K = np.array([[500.0, 0, 320], [0, 500.0, 240], [0, 0, 1]])
    joints = np.stack([canonical_hand(0.1 * f) + [0, 0, 0.6] for f in range(4)])
    seq = hoi.HOISequence(15, hoi.HOICamera(K, np.eye(4), 640, 480), [hoi.HandTrack(joints=joints)])
    pred = joints + [0.1, 0.2, 0.3]                      # a global offset: removed by the wrist alignment
    pred[:, 8] += [0.0, 0.0, 0.021]                      # the index tip 21 mm off: 1 mm per frame
    v, report = P.InterplayHOIMetrics().score(seq, json.dumps({"v": 1, "joints": pred.tolist()}))["result"]
    assert v == pytest.approx(1.0) and json.loads(report)["unit"] == "mm"
    uv = np.stack([(joints[f] / joints[f][:, 2:]) @ K.T for f in range(4)])[..., :2] / 2  # at half size
    v2, _ = P.InterplayHOIMetrics().score(seq, json.dumps({"v": 1, "joints": uv.tolist(), "width": 320,
                                                           "height": 240}))["result"]
    assert v2 == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="has 3 frames, the sequence 4"):
        P.InterplayHOIMetrics().score(seq, json.dumps({"v": 1, "joints": pred[:3].tolist()}))
