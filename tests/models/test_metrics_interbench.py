import pytest
import torch

from interplay.models import metrics_interbench as IB

# GameCraft-2 Table 5 (trigger, align, fluency, scope, end_state, physics) per category.
TABLE5 = {
    "GameCraft-2": {"environment": (0.962, 4.342, 4.247, 4.578, 4.688, 3.893),
                    "actor": (0.983, 4.087, 4.191, 4.576, 4.686, 3.828),
                    "entity": (0.944, 4.292, 3.978, 4.410, 4.514, 3.578)},
    "Wan2.2 A14B": {"environment": (0.799, 3.511, 3.579, 3.722, 3.951, 3.008),
                    "actor": (0.836, 3.490, 3.488, 4.036, 4.054, 3.175),
                    "entity": (0.874, 3.943, 3.545, 4.281, 4.265, 3.054)},
    "LongCat-Video": {"environment": (0.897, 3.963, 3.777, 4.188, 4.377, 3.210),
                      "actor": (0.806, 3.089, 3.005, 3.832, 3.771, 2.839),
                      "entity": (0.712, 3.050, 2.758, 3.340, 3.482, 2.352)},
    "HunyuanVideo": {"environment": (0.490, 1.950, 1.940, 2.065, 2.308, 1.670),
                     "actor": (0.587, 2.147, 2.202, 2.717, 2.748, 1.931),
                     "entity": (0.607, 2.037, 1.870, 2.736, 2.734, 1.462)},
}
# Overall = (5 T + A + F + S + E + P) / 6 worked out by hand, e.g. GC-2 env: (4.810 + 21.748) / 6 = 4.4263
OVERALL = {"GameCraft-2": (4.426, 4.380, 4.249, 4.352), "Wan2.2 A14B": (3.628, 3.737, 3.910, 3.758),
           "LongCat-Video": (4.000, 3.428, 3.090, 3.506), "HunyuanVideo": (2.064, 2.447, 2.312, 2.274)}


@pytest.mark.parametrize("method", sorted(TABLE5))
def test_overall_formula_reproduces_the_table5_values(method):
    cats = {c: IB.InterBenchScore(*v) for c, v in TABLE5[method].items()}
    env, actor, entity, mean = OVERALL[method]
    assert cats["environment"].overall == pytest.approx(env, abs=5e-4)
    assert cats["actor"].overall == pytest.approx(actor, abs=5e-4)
    assert cats["entity"].overall == pytest.approx(entity, abs=5e-4)
    assert IB.mean_score(cats.values()).overall == pytest.approx(mean, abs=5e-4)
    assert IB.InterBenchScore(*TABLE5["GameCraft-2"]["environment"]).overall == pytest.approx(26.558 / 6, abs=1e-12)


def test_trigger_gate_and_category_means_by_hand():
    a = IB.video_score({"trigger": 1, "align": 5, "fluency": 3, "scope": 5, "end_state": 5, "physics": 3})
    assert a.overall == pytest.approx((5 + 21) / 6)
    gated = IB.video_score({"trigger": 0, "align": 5, "fluency": 5, "scope": 5, "end_state": 5, "physics": 5})
    assert gated == IB.InterBenchScore(0, 0, 0, 0, 0, 0) and gated.overall == 0
    assert IB.video_score({"trigger": 0}) == gated  # the other five may be omitted when not triggered
    env = IB.video_score({"trigger": 1, "align": 3, "fluency": 3, "scope": 3, "end_state": 3, "physics": 3})
    rep = IB.aggregate([("actor", a), ("actor", gated), ("environment", env)])
    act = rep["categories"]["actor"]
    assert act["videos"] == 2 and act["trigger"] == 0.5 and act["align"] == 2.5 and act["fluency"] == 1.5
    assert act["overall"] == pytest.approx(26 / 12)  # mean of 26/6 and 0
    assert rep["categories"]["environment"]["overall"] == pytest.approx(20 / 6)
    assert rep["global"]["overall"] == pytest.approx((26 / 12 + 20 / 6) / 2) and rep["global"]["categories"] == 2
    assert rep["global"]["trigger"] == pytest.approx(0.75)


@pytest.mark.parametrize("values,needle", [
    ({"trigger": 2}, "trigger must be 0 or 1"),
    ({"trigger": True, "align": 5}, "trigger must be 0 or 1"),
    ({"trigger": 1, "align": 4, "fluency": 3, "scope": 3, "end_state": 3, "physics": 3}, "align must be one of"),
    ({"trigger": 1, "align": 5}, "fluency must be one of 0, 1, 3, 5; got None"),
])
def test_video_score_checks_the_scales(values, needle):
    with pytest.raises(ValueError, match=needle):
        IB.video_score(values)


def test_answers_are_parsed_or_rejected_by_name():
    assert IB.parse_answer("trigger", "Yes, a gun appears") == 1
    assert IB.parse_answer("trigger", "no.") == 0
    assert IB.parse_answer("trigger", 1) == 1
    assert IB.parse_answer("physics", "Score: 3 (slight warping)") == 3
    assert IB.parse_answer("align", 5.0) == 5
    with pytest.raises(ValueError, match="answer for scope is '4'; expected one of 0, 1, 3, 5"):
        IB.parse_answer("scope", "4")
    with pytest.raises(ValueError, match="answer for fluency has no score"):
        IB.parse_answer("fluency", "hard to say")
    with pytest.raises(ValueError, match="unknown InterBench dimension"):
        IB.question("beauty", "b", "i")


def test_score_video_asks_a_pluggable_judge_and_skips_when_not_triggered():
    asked = []

    def judge(frames, q):
        asked.append((frames.shape[0], q.split("\n")[1].split(":")[0]))
        if "Interaction Trigger" in q:
            return "no" if "open the door" in q else "yes"
        return {"Prompt-Video Alignment": "5", "Interaction Fluency": 3}.get(q.split("\n")[1].split(":")[0], "1")

    video = torch.rand(20, 8, 8, 3)
    s = IB.score_video(video, "a saloon", "draw a gun", judge, num_frames=5)
    assert s == IB.InterBenchScore(1, 5, 3, 1, 1, 1) and len(asked) == 6 and all(n == 5 for n, _ in asked)
    assert [a for _, a in asked] == ["Interaction Trigger", "Prompt-Video Alignment", "Interaction Fluency",
                                     "Interaction Scope Accuracy", "End-State Consistency",
                                     "Object Physics Correctness"]
    asked.clear()
    assert IB.score_video(video, "a saloon", "open the door", judge).overall == 0 and len(asked) == 1
    idx = IB.sample_frames(torch.arange(20).view(20, 1, 1, 1).float(), 5).flatten().tolist()
    assert idx == [0, 5, 10, 14, 19]  # round(i * 19 / 4): 0, 4.75, 9.5, 14.25, 19
