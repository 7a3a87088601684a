import json

import numpy as np
import pytest

from interplay.models import metrics_matrix as G

ANS = ["yes", "no", "yes", "no (visually implausible)", "yes", "yes", "yes", "no", "yes", "yes"]  # 4/6, 3/4


def test_judge_frames():
    assert G.judge_frames(49) == [0, 5, 10, 15, 20, 25, 30, 35, 40, 45, 48]
    assert G.judge_frames(81)[-3:] == [70, 75, 80] and len(G.judge_frames(81)) == 17
    assert G.judge_frames(1) == [0] and G.judge_frames(6) == [0, 5] and G.judge_frames(7) == [0, 5, 6]
    assert G.judge_frames(13, stride=4) == [0, 4, 8, 12]


def test_interaction_scores_only_yes_counts():
    assert G.interaction_scores(ANS) == (4 / 6, 3 / 4)
    by_id = {str(i + 1): a for i, a in enumerate(ANS)}
    assert G.interaction_scores(by_id) == (4 / 6, 3 / 4)
    recs = [{"question_id": i + 1, "answer": a, "frame_index": None} for i, a in enumerate(ANS)]
    assert G.interaction_scores(recs[::-1]) == (4 / 6, 3 / 4)
    assert G.interaction_scores(["Yes."] * 10) == (1.0, 1.0)
    assert G.interaction_scores(["no (visually implausible)"] * 10) == (0.0, 0.0)
    second = ["no"] * 6 + ["yes"] * 4  # 0/6, 4/4
    assert G.raw_scores([ANS, second]) == pytest.approx(((4 / 6 + 0) / 2, (3 / 4 + 1) / 2))
    with pytest.raises(ValueError, match="questions \\[10\\] are missing"):
        G.interaction_scores(ANS[:9])


def test_spi_hand_values():
    assert G.spi([False] * 10, [False] * 10)["SPI"] == 1.0
    assert G.spi([True] * 10, [True] * 10)["SPI"] == -4.0
    s = G.spi(["no"] * 8 + ["yes"], [True, True] + [False] * 7)  # 9 analysed frames
    assert s["r_E"] == pytest.approx(1 / 9) and s["r_D"] == pytest.approx(2 / 9)
    assert s["E"] == pytest.approx(4 / 9) and s["D"] == pytest.approx(-1 / 9) and s["SPI"] == pytest.approx(1 / 6)
    with pytest.raises(ValueError, match="one emergence and one disappearance flag"):
        G.spi([False], [False, True])
    with pytest.raises(ValueError, match="both emergence and disappearance"):
        G.spi(None, [False])
    with pytest.raises(ValueError, match="yes/no"):
        G.spi(["maybe"], [False])


def test_final_scores_and_table1_consistency():
    f = G.final_scores(4 / 6, 3 / 4, 1 / 6)
    assert f["KISA"] == pytest.approx(4 / 36) and f["SGI"] == pytest.approx(3 / 24)
    assert f["IF"] == pytest.approx((4 / 36 + 3 / 24) / 2)
    assert G.final_scores(0.546, 0.641, 1.0)["IF"] == pytest.approx(0.593, abs=1e-3)  # MATRIX, Table 1
    assert G.final_scores(0.406, 0.491, 1.0)["IF"] == pytest.approx(0.449, abs=1e-3)  # CogVideoX-5B-I2V


def test_score_videos_both_record_formats():
    ours = {"id": "a", "interactions": [ANS], "emergence": [False] * 10, "disappearance": [True] + [False] * 9}
    repo = {"video_id": "b",
            "items": [{"question_verification_results": [{"question_id": i + 1, "answer": "yes"} for i in range(10)]}],
            "hallucination_results": [{"frame_idx": f, "emergence": "no", "disappearance": "no"} for f in (5, 10)]}
    out = G.score_videos(json.dumps({"videos": [ours, repo]}))
    a, b = out["videos"]
    spi_a = (1 + (1 - 5 * 0.1)) / 2  # 0.75
    assert a["SPI"] == pytest.approx(spi_a) and a["KISA"] == pytest.approx(4 / 6 * spi_a)
    assert a["IF"] == pytest.approx((4 / 6 + 3 / 4) / 2 * spi_a)
    assert b["id"] == "b" and b["SPI"] == 1.0 and b["IF"] == 1.0 and b["frames"] == 2
    assert out["mean"]["IF"] == pytest.approx((a["IF"] + 1) / 2)
    assert G.score_videos(ours)["mean"]["KISA"] == pytest.approx(a["KISA"])
    with pytest.raises(ValueError, match="not valid JSON"):
        G.score_videos("{")
    with pytest.raises(ValueError, match="video 0"):
        G.score_videos([{"interactions": [ANS]}])


def box_video(f, h, w, boxes):
    """A mask video [f, h, w] with the given per-frame (x0, y0, x1, y1) boxes (None = empty)."""
    m = np.zeros((f, h, w), bool)
    for t, b in enumerate(boxes):
        if b is not None:
            m[t, b[1]:b[3], b[0]:b[2]] = True
    return m


def test_track_flags_from_masks_and_detections():
    F_, frames = 11, G.judge_frames(11)  # [0, 5, 10]
    man = box_video(F_, 32, 32, [(0, 0, 8, 8)] * F_)
    cup = box_video(F_, 32, 32, [(20, 20, 28, 28)] * 10 + [None])  # lost in the last frame
    roster = [("person", man), ("cup", cup)]
    det = {0: [("person", (0, 0, 8, 8)), ("person", (10, 0, 18, 8)), ("cup", (20, 20, 28, 28))],
           5: [("person", (0, 0, 8, 8)), ("person", (10, 0, 18, 8)), ("person", (0, 20, 8, 28)),
               ("cup", (20, 20, 28, 28)), ("dog", (9, 9, 12, 12))],
           10: [("person", (1, 0, 9, 8)), ("person", (10, 0, 18, 8))]}
    fl = G.track_flags(roster, frames, det)
    assert fl["frames"] == [5, 10] and fl["disappearance"] == [False, True] and fl["lost"] == [[], [1]]
    # frame 0 already has one unboxed person; frame 5 has two (a new one), frame 10 one again; dogs are not listed
    assert fl["emergence"] == [True, False] and fl["new"] == [["person"], []]
    s = G.spi(fl["emergence"], fl["disappearance"])
    assert s["E"] == pytest.approx(1 - 5 * 0.5) and s["D"] == pytest.approx(1 - 5 * 0.5) and s["SPI"] == -1.5
    boxes = np.array([[0, 0, 8, 8]] * 10 + [[np.nan] * 4], float)
    only = G.track_flags([("cup", boxes)], frames)
    assert only["disappearance"] == [False, True] and only["emergence"] is None
    small = G.track_flags([("cup", box_video(F_, 32, 32, [(0, 0, 2, 2)] * F_))], frames, min_area=5)
    assert small["disappearance"] == [True, True]
    assert G.box_iou((0, 0, 2, 2), (1, 0, 3, 2)) == pytest.approx(2 / 6) and G.mask_box(np.zeros((3, 3))) is None


def test_evaluate_video_with_pluggable_judge():
    asked = []

    def questions(prompt, interaction, entities):
        assert entities["1"]["colour"] == "red"
        return [f"{interaction['verb']} Q{i}" for i in range(1, 11)]

    def answer(question, frames):
        asked.append((question, tuple(frames)))
        return {"answer": ANS[int(question.rsplit("Q", 1)[1]) - 1], "frame_index": frames[1]}

    out = G.evaluate_video("a man lifts a cup", [{"sub": 1, "obj": 2, "verb": "lifts"}],
                           {"1": {"colour": "red"}, "2": {"colour": "green"}}, 49, questions, answer,
                           {"emergence": [False] * 10, "disappearance": [False] * 10})
    assert out["KISA_raw"] == 4 / 6 and out["SGI_raw"] == 3 / 4 and out["SPI"] == 1.0
    assert out["IF"] == pytest.approx((4 / 6 + 3 / 4) / 2) and len(asked) == 10
    assert asked[0][1] == tuple(G.judge_frames(49)) and out["audit"][0]["answers"][3]["frame_index"] == 5
    with pytest.raises(ValueError, match="expected 10"):
        G.evaluate_video("p", [{"verb": "x"}], {"1": {"colour": "red"}}, 49, lambda *a: ["q"] * 9, answer,
                         {"emergence": [False], "disappearance": [False]})
    with pytest.raises(ValueError, match="expected one of"):
        G.evaluate_video("p", [{"verb": "x"}], {"1": {"colour": "red"}}, 49, questions, lambda q, f: "maybe",
                         {"emergence": [False], "disappearance": [False]})
