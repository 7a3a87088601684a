"""Inter-GenEval, MATRIX's interaction-fidelity protocol (spec seed-004 §5.2): the arithmetic of KISA, SGI, SPI and
IF from a judge's answers, emergence/disappearance flags from tracked instances, and a pluggable runner (question
generation and answering are callables: any local VLM, a cached JSON, or a person; none is bundled).

Per key interaction the judge gets 10 yes/no questions: Q1-Q6 the interaction's stages (pre-state, four
during-steps, outcome) and Q7-Q10 its grounding (subject acts, right agent, right recipient, recipient confirmed).
It answers ``yes``, ``no`` or ``no (visually implausible)`` (forced by anatomy/geometry anomalies at the decisive
frame); only ``yes`` counts.

    KISA_raw = #yes(Q1..Q6) / 6        SGI_raw = #yes(Q7..Q10) / 4   (per interaction, averaged over interactions)
    r_E, r_D = fractions of the analysed frames (the judge frames after frame 0) flagged for emergence /
               disappearance;  E = 1 - 5 r_E;  D = 1 - 5 r_D;  SPI = (E + D) / 2, in [-4, 1]
    KISA = KISA_raw * SPI;  SGI = SGI_raw * SPI;  IF = (KISA + SGI) / 2;  each averaged over videos

Judge frames: the first, every ``stride``-th (5) and the last: 0, 5, ..., 45, 48 for 49 frames.
Values are not rounded (the public code rounds each video's scores to 3 decimals).
"""
from __future__ import annotations

import json
from typing import Callable, Sequence

import numpy as np

ANSWERS = ("yes", "no", "no (visually implausible)")
KISA_QUESTIONS = tuple(range(1, 7))
SGI_QUESTIONS = tuple(range(7, 11))
LAMBDA = 5.0
STRIDE = 5

QUESTION_GUIDE = (
    "Write 10 yes/no questions about the interaction '{interaction}' in the video, naming each entity by its "
    "appearance and box colour, e.g. 'the man in a blue shirt (red box)'. Q1: the state before the interaction. "
    "Q2-Q5: four successive steps while it happens. Q6: the state after it (the outcome). Q7: whether the subject "
    "takes action (do not name the verb). Q8: whether the subject is the one doing it. Q9: whether the object is the "
    "one it is done to. Q10: whether the object undergoes it (object only).")
"""A wording a question-generation callable may use (the pack's own, following the spec's table of stages)."""

ANSWER_GUIDE = (
    "Answer with 'yes', 'no' or 'no (visually implausible)' and the index of the single most decisive frame "
    "(earliest on ties; null when no frame decides, then answer 'no'). Answer 'no (visually implausible)' when that "
    "frame shows extra or missing limbs, impossible joints, fused or split bodies, or objects passing through each "
    "other.")


def judge_frames(num_frames: int, stride: int = STRIDE) -> list[int]:
    """The first frame, every ``stride``-th frame and the last: 49 -> [0, 5, ..., 45, 48]."""
    if num_frames < 1 or stride < 1:
        raise ValueError(f"judge_frames: need num_frames >= 1 and stride >= 1; got {num_frames}, {stride}")
    return sorted({0, num_frames - 1, *range(stride, num_frames - 1, stride)})


def answer_is_yes(answer) -> bool:
    """Only a plain 'yes' counts ('no (visually implausible)' is a no)."""
    if isinstance(answer, dict):
        answer = answer.get("answer")
    if isinstance(answer, bool):
        return answer
    return isinstance(answer, str) and answer.strip().lower().rstrip(".") == "yes"


def _answers_by_id(answers, where: str) -> dict[int, object]:
    """One interaction's answers: a list of 10 (Q1 first), a {question_id: answer} dict, or a list of
    {"question_id", "answer"} records (the public code's)."""
    if isinstance(answers, dict):
        out = {int(k): v for k, v in answers.items()}
    elif answers and all(isinstance(a, dict) and "question_id" in a for a in answers):
        out = {int(a["question_id"]): a for a in answers}
    else:
        out = {i + 1: a for i, a in enumerate(answers)}
    missing = [q for q in KISA_QUESTIONS + SGI_QUESTIONS if q not in out]
    if missing:
        raise ValueError(f"{where}: answers for questions {missing} are missing; each key interaction needs the 10 "
                         "answers Q1..Q10")
    return out


def interaction_scores(answers, where: str = "intergeneval") -> tuple[float, float]:
    """(KISA_raw, SGI_raw) of one key interaction's 10 answers."""
    a = _answers_by_id(answers, where)
    kisa = sum(answer_is_yes(a[q]) for q in KISA_QUESTIONS) / len(KISA_QUESTIONS)
    sgi = sum(answer_is_yes(a[q]) for q in SGI_QUESTIONS) / len(SGI_QUESTIONS)
    return kisa, sgi


def raw_scores(interactions: Sequence, where: str = "intergeneval") -> tuple[float, float]:
    """(KISA_raw, SGI_raw) of a video: averaged over its key interactions (the paper). The public code pools the
    video's questions instead, which is the same number since every interaction has exactly 6 + 4 answers."""
    if not interactions:
        raise ValueError(f"{where}: a video needs at least one key interaction's answers")
    per = [interaction_scores(a, where) for a in interactions]
    return float(np.mean([p[0] for p in per])), float(np.mean([p[1] for p in per]))


def _flags(values, where: str, name: str) -> list[bool]:
    out = []
    for v in values:
        if isinstance(v, str):
            s = v.strip().lower()
            if s not in ("yes", "no"):
                raise ValueError(f"{where}: {name} flags must be yes/no or true/false; got {v!r}")
            out.append(s == "yes")
        else:
            out.append(bool(v))
    return out


def spi(emergence: Sequence, disappearance: Sequence, lam: float = LAMBDA, where: str = "intergeneval") -> dict:
    """SPI from per-analysed-frame flags (the judge frames after frame 0): r_E, r_D, E = 1 - lam r_E,
    D = 1 - lam r_D, SPI = (E + D) / 2."""
    if emergence is None or disappearance is None:
        raise ValueError(f"{where}: SPI needs both emergence and disappearance flags; emergence needs per-frame "
                         "detections or the judge's answer (tracked roster masks alone only show disappearance)")
    e, d = _flags(emergence, where, "emergence"), _flags(disappearance, where, "disappearance")
    if len(e) != len(d) or not e:
        raise ValueError(f"{where}: need one emergence and one disappearance flag per analysed frame (same count, at "
                         f"least one); got {len(e)} and {len(d)}")
    r_e, r_d = sum(e) / len(e), sum(d) / len(d)
    big_e, big_d = 1 - lam * r_e, 1 - lam * r_d
    return {"frames": len(e), "r_E": r_e, "r_D": r_d, "E": big_e, "D": big_d, "SPI": (big_e + big_d) / 2}


def final_scores(kisa_raw: float, sgi_raw: float, spi_value: float) -> dict:
    kisa, sgi = kisa_raw * spi_value, sgi_raw * spi_value
    return {"KISA": kisa, "SGI": sgi, "IF": (kisa + sgi) / 2}


# ------------------------------------------------------------------------------------------ JSON records
def _video_answers(v: dict, where: str) -> list:
    if "interactions" in v:
        return list(v["interactions"])
    if "items" in v:  # the public code's question-verification file
        return [item["question_verification_results"] for item in v["items"]]
    raise ValueError(f"{where}: a video needs 'interactions' (a list of answer lists) or the public code's 'items'")


def _video_flags(v: dict, where: str) -> tuple[list, list]:
    if "emergence" in v or "disappearance" in v:
        return v.get("emergence"), v.get("disappearance")
    if "hallucination_results" in v:  # the public code's emergence/disappearance file
        res = v["hallucination_results"]
        return [r["emergence"] for r in res], [r["disappearance"] for r in res]
    raise ValueError(f"{where}: a video needs 'emergence' and 'disappearance' flags (one per analysed frame) or the "
                     "public code's 'hallucination_results'")


def score_video(v: dict, lam: float = LAMBDA, where: str = "intergeneval") -> dict:
    """One video record -> {KISA_raw, SGI_raw, r_E, r_D, E, D, SPI, KISA, SGI, IF}."""
    kisa_raw, sgi_raw = raw_scores(_video_answers(v, where), where)
    s = spi(*_video_flags(v, where), lam=lam, where=where)
    return {"id": v.get("id", v.get("video_id")), "KISA_raw": kisa_raw, "SGI_raw": sgi_raw, **s,
            **final_scores(kisa_raw, sgi_raw, s["SPI"])}


def score_videos(data, lam: float = LAMBDA, where: str = "intergeneval") -> dict:
    """A JSON text or object: ``{"videos": [record, ...]}``, a list of records, or one record. Each record holds
    ``interactions`` (per key interaction its 10 answers) and per analysed frame ``emergence`` / ``disappearance``
    flags (the public code's ``items`` / ``hallucination_results`` files are read too). Returns the per-video
    scores and their means over videos."""
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except json.JSONDecodeError as ex:
            raise ValueError(f"{where}: the answers are not valid JSON ({ex.msg} at line {ex.lineno})") from None
    videos = data.get("videos", [data]) if isinstance(data, dict) else list(data)
    if not videos:
        raise ValueError(f"{where}: no videos in the answers")
    per = [score_video(v, lam, f"{where} (video {i})") for i, v in enumerate(videos)]
    keys = ("KISA_raw", "SGI_raw", "SPI", "KISA", "SGI", "IF")
    mean = {k: float(np.mean([p[k] for p in per])) for k in keys}
    return {"v": 1, "videos": per, "mean": mean, "lambda": lam}


# ------------------------------------------------------------------------------------------ tracked instances
def mask_box(mask) -> tuple[float, float, float, float] | None:
    """(x0, y0, x1, y1) of a mask's pixels (x1, y1 exclusive), None when empty."""
    m = np.asarray(mask) > 0.5 if np.asarray(mask).dtype != bool else np.asarray(mask)
    ys, xs = np.nonzero(m)
    if len(xs) == 0:
        return None
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def box_iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _boxes(track, f: int, min_area: int):
    t = np.asarray(track)
    if t.ndim == 2 and t.shape[-1] == 4:  # boxes [F, 4], NaN = missing
        row = t[f]
        return None if np.isnan(row).any() else tuple(float(v) for v in row)
    m = t[f] > 0.5 if t.dtype != bool else t[f]
    return mask_box(m) if int(m.sum()) >= min_area else None


def track_flags(roster: Sequence[tuple[str, object]], frames: Sequence[int], detections=None, *, min_area: int = 1,
                iou_threshold: float = 0.5) -> dict:
    """Emergence and disappearance flags for the analysed frames (``frames[1:]``; ``frames[0]`` is the anchor).

    ``roster``: per instance tracked from frame 0 (e.g. SAM2 from the first-frame masks), ``(class, track)`` with the
    track a mask video ``[F, H, W]`` or boxes ``[F, 4]`` (NaN rows = lost).
    Disappearance at f: some roster instance has no box (mask under ``min_area`` pixels).
    Emergence at f (needs ``detections``: per frame a list of ``(class, box)`` from a detector): for some roster
    class, more detections of that class match no roster box (IoU < ``iou_threshold``) than in the anchor frame,
    i.e. an unboxed instance that was not there at frame 0 (the judge prompt's rule, read from tracks).
    Returns {"frames", "disappearance", "emergence" (None without detections), "lost" (per frame, instance
    indices), "new" (per frame, classes)}.
    """
    frames = list(frames)
    if len(frames) < 2:
        raise ValueError("track_flags: need the anchor frame and at least one analysed frame")
    classes = sorted({c for c, _ in roster})

    def unboxed(f: int) -> dict[str, int]:
        boxes = [_boxes(t, f, min_area) for _, t in roster]
        out = dict.fromkeys(classes, 0)
        for c, box in detections[f]:
            if c in out and not any(b is not None and box_iou(box, b) >= iou_threshold for b in boxes):
                out[c] += 1
        return out

    lost, new, dis, emg = [], [], [], []
    base = unboxed(frames[0]) if detections is not None else None
    for f in frames[1:]:
        gone = [i for i, (_, t) in enumerate(roster) if _boxes(t, f, min_area) is None]
        lost.append(gone)
        dis.append(bool(gone))
        if base is not None:
            cur = unboxed(f)
            extra = [c for c in classes if cur[c] > base[c]]
            new.append(extra)
            emg.append(bool(extra))
    return {"frames": frames[1:], "disappearance": dis, "emergence": emg if base is not None else None,
            "lost": lost, "new": new if base is not None else None}


# ------------------------------------------------------------------------------------------ runner
QuestionFn = Callable[[str, dict, dict], Sequence[str]]
AnswerFn = Callable[[str, Sequence[int]], dict]


def evaluate_video(prompt: str, interactions: Sequence[dict], entities: dict, num_frames: int,
                   questions: QuestionFn, answer: AnswerFn, flags: dict, *, stride: int = STRIDE,
                   lam: float = LAMBDA) -> dict:
    """Run the protocol with pluggable parts and keep an audit trail.

    ``questions(prompt, interaction, entities)`` returns the 10 questions of one key interaction
    (``QUESTION_GUIDE`` is a wording to prompt a VLM with); ``answer(question, frame_indices)`` returns
    ``{"answer": "yes" | "no" | "no (visually implausible)", "frame_index": int | None}`` looking at the annotated
    judge frames; ``flags`` holds ``emergence`` / ``disappearance`` per analysed frame (``track_flags`` or a judge).
    """
    frames = judge_frames(num_frames, stride)
    record = {"id": prompt, "interactions": [], "emergence": flags.get("emergence"),
              "disappearance": flags.get("disappearance"), "judge_frames": frames, "audit": []}
    for it in interactions:
        qs = list(questions(prompt, it, entities))
        if len(qs) != 10:
            raise ValueError(f"intergeneval: the question generator gave {len(qs)} questions for {it}; expected 10")
        ans = []
        for qid, q in enumerate(qs, 1):
            a = answer(q, frames)
            a = a if isinstance(a, dict) else {"answer": a, "frame_index": None}
            if str(a.get("answer", "")).strip().lower() not in ANSWERS:
                raise ValueError(f"intergeneval: answer to Q{qid} is {a.get('answer')!r}; expected one of {ANSWERS}")
            ans.append({"question_id": qid, "question": q, **a})
        record["interactions"].append(ans)
        record["audit"].append({"interaction": it, "answers": ans})
    out = score_video(record, lam)
    out["audit"] = record["audit"]
    out["judge_frames"] = frames
    return out
