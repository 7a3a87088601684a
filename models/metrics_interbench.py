"""InterBench (GameCraft-2 §5.2.2, App. C): six judged dimensions of an interaction video, the trigger gate and the
paper's Overall score. The judge is pluggable: any callable ``judge(frames, question) -> answer`` (a local VLM, a
person, an API), none is bundled; this module owns the questions, the parsing of answers and the arithmetic.

Per video: Trigger is 1/0 (did the requested interaction start at all?); Align, Fluency, Scope, EndState and
Physics take 0/1/3/5. If Trigger is 0 every other dimension is 0 (the gate).
Overall = (5 * Trigger + Align + Fluency + Scope + EndState + Physics) / 6 (Trigger rescaled to 0..5).
Videos are averaged per interaction category; the global score is the mean over categories (the paper does not
say how it aggregates across categories; a plain mean is assumed). Overall is linear, so the Overall of the
category means equals the mean of per-video Overalls.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields
from typing import Callable, Iterable

import torch

DIMENSIONS = ("trigger", "align", "fluency", "scope", "end_state", "physics")
LEVELS = (0, 1, 3, 5)
CATEGORIES = ("environment", "actor", "entity")
CATEGORY_NAMES = {"environment": "Environmental Interactions", "actor": "Actor Actions",
                  "entity": "Entity & Object Appearances"}

_RUBRIC = {
    "trigger": ("Interaction Trigger", "Did the requested interaction start at all (for 'draw a gun': does a gun "
                "become visible)? Answer 1 if it did, 0 if it did not."),
    "align": ("Prompt-Video Alignment", "How faithful is the video to the full prompt, both the static scene "
              "(setting, style, objects) and the dynamic event (the right action)?"),
    "fluency": ("Interaction Fluency", "How natural is the motion over time around the interaction? Penalise "
                "teleporting, jump cuts, jitter and geometric tearing."),
    "scope": ("Interaction Scope Accuracy", "Does the interaction have the right spatial extent: a global event "
              "covers the scene, a local effect stays contained?"),
    "end_state": ("End-State Consistency", "Does the video converge to a correct, stable final state that lasts to "
                  "the end?"),
    "physics": ("Object Physics Correctness", "Are objects physically plausible: rigid parts stay rigid, "
                "kinematics are plausible, nothing interpenetrates (e.g. a hand and the object it holds)?"),
}
_LEVELS_TEXT = ("Score 5 if perfect; 3 if correct overall with minor deviations (slight jitter or one jump cut, a "
                "global effect not quite global, slight flicker or drift at the end, slight warping or brief "
                "interpenetration); 1 for a major failure (wrong action, unrelated scene, severe flicker or "
                "teleporting, fundamentally wrong scope, no convergence or the effect vanishes, severe physical "
                "violations); 0 if there is no meaningful alignment. Answer with one number: 0, 1, 3 or 5.")

Judge = Callable[[torch.Tensor, str], "str | int | float"]


@dataclass(frozen=True)
class InterBenchJudge:
    """A judge (ComfyUI type ``INTERPLAY_JUDGE``): ``fn(frames [N,H,W,3] float 0..1, question) -> answer`` (text
    or a number), e.g. a local VLM wrapped by its loader node; ``name`` goes into reports."""

    fn: Judge
    name: str = "judge"


@dataclass(frozen=True)
class InterBenchScore:
    """Scores of one video (0/1 and 0/1/3/5) or means of several (then fractional)."""

    trigger: float
    align: float
    fluency: float
    scope: float
    end_state: float
    physics: float

    @property
    def overall(self) -> float:
        """(5 * trigger + align + fluency + scope + end_state + physics) / 6."""
        return (5.0 * self.trigger + self.align + self.fluency + self.scope + self.end_state + self.physics) / 6.0

    def gated(self) -> "InterBenchScore":
        """Trigger 0 forces the other five to 0."""
        return self if self.trigger != 0 else InterBenchScore(0.0, 0.0, 0.0, 0.0, 0.0, 0.0)

    def to_dict(self) -> dict:
        return {**asdict(self), "overall": self.overall}


def video_score(values: dict, where: str = "scores") -> InterBenchScore:
    """One video's raw scores (a dict with the six DIMENSIONS) -> a checked, gated score. Trigger must be 0 or 1,
    the others 0, 1, 3 or 5; the others may be omitted when trigger is 0."""
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected an object with {', '.join(DIMENSIONS)}; got {type(values).__name__}")
    t = values.get("trigger")
    if t not in (0, 1) or isinstance(t, bool):
        raise ValueError(f"{where}.trigger must be 0 or 1; got {t!r}")
    out = {"trigger": float(t)}
    for d in DIMENSIONS[1:]:
        v = values.get(d, 0 if t == 0 else None)
        if isinstance(v, bool) or v not in LEVELS:
            raise ValueError(f"{where}.{d} must be one of {', '.join(map(str, LEVELS))}; got {v!r}")
        out[d] = float(v)
    return InterBenchScore(**out).gated()


def mean_score(scores: Iterable[InterBenchScore]) -> InterBenchScore:
    """Per-dimension means (the trigger mean is the trigger rate)."""
    scores = list(scores)
    if not scores:
        raise ValueError("no scores to average")
    return InterBenchScore(**{f.name: sum(getattr(s, f.name) for s in scores) / len(scores)
                              for f in fields(InterBenchScore)})


def aggregate(items: Iterable[tuple[str, InterBenchScore]]) -> dict:
    """[(category, per-video gated score)] -> {"categories": {cat: {dims..., overall, videos}}, "global": {...}}.

    The global entry is the unweighted mean over the categories present."""
    by: dict[str, list[InterBenchScore]] = {}
    for cat, s in items:
        by.setdefault(cat, []).append(s)
    if not by:
        raise ValueError("no scores to aggregate")
    cats = {c: mean_score(v) for c, v in by.items()}
    glob = mean_score(cats.values())
    return {"categories": {c: {**m.to_dict(), "videos": len(by[c])} for c, m in cats.items()},
            "global": {**glob.to_dict(), "categories": len(cats)}}


# ------------------------------------------------------------------------------------------------ judge
def question(dimension: str, base_prompt: str, interaction_prompt: str) -> str:
    """The judge prompt for one dimension (the App. C rubric in our words)."""
    if dimension not in _RUBRIC:
        raise ValueError(f"unknown InterBench dimension {dimension!r}; allowed: {', '.join(DIMENSIONS)}")
    name, q = _RUBRIC[dimension]
    head = (f"You are judging a generated video (frames in time order). Scene prompt: {base_prompt!r}. Requested "
            f"interaction: {interaction_prompt!r}.\n{name}: {q}")
    return head if dimension == "trigger" else f"{head}\n{_LEVELS_TEXT}"


def parse_answer(dimension: str, answer) -> int:
    """A judge's answer -> the score: a number, or the first number in a text; 'yes'/'no' for the trigger."""
    allowed = (0, 1) if dimension == "trigger" else LEVELS
    if isinstance(answer, bool):
        answer = int(answer)
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        v = float(answer)
    elif isinstance(answer, str):
        low = answer.strip().lower()
        if dimension == "trigger" and re.match(r"^(yes|no)\b", low):
            return 1 if low.startswith("yes") else 0
        m = re.search(r"-?\d+(?:\.\d+)?", low)
        if not m:
            raise ValueError(f"InterBench judge: the answer for {dimension} has no score: {answer!r}; expected one "
                             f"of {', '.join(map(str, allowed))}")
        v = float(m.group(0))
    else:
        raise ValueError(f"InterBench judge: the answer for {dimension} is a {type(answer).__name__}; expected a "
                         "number or text")
    if not math.isfinite(v) or v not in allowed:
        raise ValueError(f"InterBench judge: the answer for {dimension} is {answer!r}; expected one of "
                         f"{', '.join(map(str, allowed))}")
    return int(v)


def sample_frames(frames: torch.Tensor, n: int) -> torch.Tensor:
    """n frames evenly spaced over the clip, first and last included ([F,H,W,3] -> [min(n,F),H,W,3])."""
    f = frames.shape[0]
    if n >= f:
        return frames
    if n == 1:
        return frames[:1]
    idx = [round(i * (f - 1) / (n - 1)) for i in range(n)]
    return frames[idx]


def score_video(frames: torch.Tensor, base_prompt: str, interaction_prompt: str, judge: Judge, *,
                num_frames: int = 8) -> InterBenchScore:
    """Ask the judge the trigger question, then (only if triggered) the five rubric questions."""
    if frames.ndim != 4 or frames.shape[0] < 1:
        raise ValueError(f"InterBench: frames must be [F,H,W,3] with F >= 1; got {tuple(frames.shape)}")
    shown = sample_frames(frames, num_frames)
    raw = {"trigger": parse_answer("trigger", judge(shown, question("trigger", base_prompt, interaction_prompt)))}
    if raw["trigger"]:
        for d in DIMENSIONS[1:]:
            raw[d] = parse_answer(d, judge(shown, question(d, base_prompt, interaction_prompt)))
    return video_score(raw)
