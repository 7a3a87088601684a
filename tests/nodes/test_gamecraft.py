import json

import pytest
import torch

from interplay.models import metrics_interbench as IB
from interplay.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from interplay.nodes import gamecraft as N
from interplay.nodes.graph import NodeExecutionError, execute

IDS = ("InterplayKeyTimeline", "InterplayCameraFromPoses", "InterplayWanFunCameraEmbedding",
       "InterplayInstructionSchedule", "InterplayInterBenchScore")


def test_nodes_are_registered_with_tooltips_and_descriptions():
    for nid in IDS:
        cls = NODE_CLASS_MAPPINGS[nid]
        assert NODE_DISPLAY_NAME_MAPPINGS[nid].endswith(" (Interplay)") and cls.CATEGORY.startswith("Interplay/")
        assert len(cls.DESCRIPTION) > 80
        spec = cls.INPUT_TYPES()
        for group in ("required", "optional"):
            for name, s in spec.get(group, {}).items():
                assert len(s) > 1 and s[1].get("tooltip"), (nid, name)


def _prompt():
    return {
        "1": {"class_type": "InterplayKeyTimeline",
              "inputs": {"timeline": "W*2, SPACE, W+RIGHT", "fps": 16.0, "block_frames": 12,
                         "first_block_frames": 9, "move_speed": 0.05, "turn_speed": 2.0,
                         "space_mode": "text", "space_text": "jumps"}},
        "2": {"class_type": "InterplayInstructionSchedule",
              "inputs": {"base_prompt": "a forest path", "schedule": "0: calm\n3: a deer appears", "fps": 16.0,
                         "block_frames": 12, "first_block_frames": 9, "camera": ["1", 0]}},
        "3": {"class_type": "InterplayWanFunCameraEmbedding",
              "inputs": {"camera": ["1", 0], "width": 32, "height": 16}},
        "4": {"class_type": "InterplayCameraFromPoses",
              "inputs": {"poses": json.dumps({"v": 1, "c2w": [[1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1],
                                                              [1, 0, 0, 0.5, 0, 1, 0, 0, 0, 0, 1, 2, 0, 0, 0, 1]]}),
                         "convention": "opencv", "relative": True, "fps": 16.0, "block_frames": 12,
                         "first_block_frames": 9}},
        "5": {"class_type": "InterplayInterBenchScore",
              "inputs": {"scores": json.dumps([
                  {"category": "actor", "trigger": 1, "align": 5, "fluency": 3, "scope": 5, "end_state": 5,
                   "physics": 3},
                  {"category": "actor", "trigger": 0, "align": 5},
                  {"category": "environment", "trigger": 1, "align": 3, "fluency": 3, "scope": 3, "end_state": 3,
                   "physics": 3}])}},
        "6": {"class_type": "InterplayKeyTimeline",
              "inputs": {"timeline": "W", "fps": 16.0, "block_frames": 12, "first_block_frames": 9,
                         "move_speed": 0.05, "turn_speed": 2.0, "continue_from": ["1", 0]}},
    }


def test_nodes_run_in_the_headless_runner():
    out = execute(_prompt(), targets=["1", "2", "3", "4", "5", "6"])
    cam, preview, tl_json, n = out["1"]
    assert n == 45 == cam.num_frames  # blocks 0..3: 9 + 3 * 12 frames
    assert json.loads(tl_json) == {"v": 1, "segments": [{"keys": ["W"], "frames": 20}, {"keys": ["SPACE"],
                                   "frames": 12}, {"keys": ["W", "RIGHT"], "frames": 12}]}
    assert cam.positions[20].tolist() == pytest.approx([0, 0, 1.0])  # 20 frames of W at 0.05
    assert float(cam.yaw[-1]) == pytest.approx(24.0) and preview.shape == (1, 384, 512, 3)
    sched, listing = out["2"]
    assert sched.prompts(4) == ["a forest path calm", "a forest path calm", "a forest path calm jumps",
                                "a forest path a deer appears"]
    assert listing.splitlines()[3] == "block 3 (switch): a forest path a deer appears"
    emb, w, h, length = out["3"]
    assert emb.shape == (1, 24, 12, 16, 32) and (w, h, length) == (32, 16, 45)
    pose_cam, _, pn = out["4"]
    assert pn == 2 and pose_cam.c2w[1, :3, 3].tolist() == [0.5, 0, 2]
    report, overall, trig, align, *_ = out["5"]
    assert overall == pytest.approx((26 / 12 + 20 / 6) / 2) and trig == pytest.approx(0.75)
    assert json.loads(report)["categories"]["actor"]["videos"] == 2
    assert "InterBench overall 2.750" in out.ui["5"]["text"][0]
    more, _, _, m = out["6"]
    assert m == 12 and more.start_frame == 45
    a = torch.deg2rad(torch.tensor(24.0, dtype=torch.float64))  # carries on along the final heading
    want = cam.positions[-1] + 0.05 * 12 * torch.stack([torch.sin(a), torch.tensor(0.0, dtype=a.dtype), torch.cos(a)])
    assert torch.allclose(more.positions[-1], want, atol=1e-12)


def test_key_timeline_error_names_node_input_and_token():
    p = _prompt()
    p["1"]["inputs"]["timeline"] = "W*2, W+Q"
    with pytest.raises(NodeExecutionError) as e:
        execute(p, targets=["1"])
    assert "Key Timeline: `timeline`: unknown key 'Q' in item 2 'W+Q'" in str(e.value)


def test_node_errors_say_what_to_fix():
    with pytest.raises(ValueError, match=r"Wan Fun Camera Embedding: `camera` has 7 frames; .* 4n\+1"):
        cam = N.InterplayKeyTimeline().build("W", 16.0, 12, 9, 0.02, 1.0, num_frames=7)[0]
        N.InterplayWanFunCameraEmbedding().build(cam, 32, 32)
    with pytest.raises(ValueError, match=r"Camera From Poses: `poses`: pose 0 has 3 numbers"):
        N.InterplayCameraFromPoses().build("[[1,2,3]]", "opencv", True, 16.0, 12, 9)
    with pytest.raises(ValueError, match=r"Instruction Schedule: `schedule`: line 1"):
        N.InterplayInstructionSchedule().build("b", "x: y", 16.0, 12, 9)
    with pytest.raises(ValueError, match=r"InterBench Score: scores\[0\].category must be one of"):
        N.InterplayInterBenchScore().score('[{"trigger": 1}]')
    with pytest.raises(ValueError, match=r"InterBench Score: nothing to score"):
        N.InterplayInterBenchScore().score("[]")
    with pytest.raises(ValueError, match=r"Key Timeline: first_block_frames"):
        N.InterplayKeyTimeline().build("W", 16.0, 12, 20, 0.02, 1.0)


def test_interbench_node_with_a_judge():
    calls = []

    def judge(frames, q):
        calls.append(frames.shape)
        return "yes" if "Interaction Trigger" in q else 3

    out = N.InterplayInterBenchScore().score("[]", video=torch.rand(10, 8, 8, 3),
                                             judge=IB.InterBenchJudge(judge, "fake"), base_prompt="a room",
                                             interaction_prompt="open the door", category="actor", judge_frames=4)
    report = json.loads(out["result"][0])
    assert out["result"][1] == pytest.approx((5 + 15) / 6) and len(calls) == 6 and calls[0][0] == 4
    assert report["videos"][0]["category"] == "actor"
