import pytest
import torch

from interplay.models.conditions.camera import Motion, camera_from_timeline
from interplay.models.conditions.instructions import (InstructionSchedule, TextEmbeddingCache, join_prompt,
                                                      parse_schedule)
from interplay.models.conditions.keys import BlockGrid, parse_timeline


def test_per_block_prompts_base_plus_latest_instruction():
    s = parse_schedule("a street at dusk", "# the plan\n0: a quiet street\n\n4: a dragon appears  \n6:\n")
    assert s.entries == ((0, "a quiet street"), (4, "a dragon appears"), (6, ""))
    assert s.prompts(8) == ["a street at dusk a quiet street"] * 4 + ["a street at dusk a dragon appears"] * 2 \
        + ["a street at dusk"] * 2
    assert [s.changed(b) for b in range(8)] == [False, False, False, False, True, False, True, False]
    assert s.switches(8) == [4, 6]
    late = parse_schedule("  base ", "2: rain")
    assert late.prompt(0) == "base" and late.prompt(2) == "base rain" and late.switches(4) == [2]
    assert parse_schedule("", "0: only this").prompt(3) == "only this"
    assert join_prompt(" a ", "") == "a" and join_prompt("", " b") == "b"
    assert "block 4 (switch): a street at dusk a dragon appears" in s.describe(5)


def test_times_map_to_the_block_holding_that_frame():
    # 16 fps: 2.5 s = frame 40 -> block 1 + (40 - 9) // 12 = 3; 0.5 s = frame 8 -> block 0
    s = parse_schedule("b", "0.5s: x\n2.5s: y", fps=16)
    assert s.entries == ((0, "x"), (3, "y"))
    assert parse_schedule("b", "1s: z", fps=16, grid=BlockGrid(16, 13)).entries == ((1, "z"),)


@pytest.mark.parametrize("text,needle", [
    ("0: a\nfour: b", "line 2 'four: b' is not 'BLOCK: instruction'"),
    ("0: a\n3: b\n3: c", "line 3 sets block 3 again (line 2 already does)"),
    ("1.5: b", "line 1 block '1.5' must be a whole number"),
])
def test_schedule_errors_name_the_line(text, needle):
    with pytest.raises(ValueError) as e:
        parse_schedule("base", text)
    assert str(e.value).startswith("`schedule`: ") and needle in str(e.value)


def test_space_text_events_join_the_blocks_they_cover():
    cam = camera_from_timeline(parse_timeline("W, SPACE*2, W"), Motion(space_mode="text", space_text="jumps"))
    s = parse_schedule("a field", "0: a knight walks").with_events(cam.events, cam.grid)
    assert s.prompts(4) == ["a field a knight walks", "a field a knight walks jumps", "a field a knight walks jumps",
                            "a field a knight walks"]
    assert s.switches(4) == [1, 3]


class CountingEncoder:
    """Fake text encoder: each text becomes [2, 3] filled with its length; counts calls and texts."""

    def __init__(self):
        self.calls, self.texts = 0, []

    def __call__(self, texts):
        self.calls += 1
        self.texts.extend(texts)
        return torch.stack([torch.full((2, 3), float(len(t))) for t in texts])


def test_cache_encodes_each_text_once_and_evicts_least_recent():
    enc = CountingEncoder()
    cache = TextEmbeddingCache(enc, max_entries=2)
    a = cache.get("aa")
    assert torch.equal(a, torch.full((2, 3), 2.0)) and enc.calls == 1
    cache.get("aa")
    assert enc.calls == 1 and (cache.hits, cache.misses) == (1, 1)
    out = cache.get_many(["bbb", "aa", "cccc", "bbb"])  # one call for the two new texts
    assert enc.calls == 2 and enc.texts == ["aa", "bbb", "cccc"]
    assert [float(t[0, 0]) for t in out] == [3.0, 2.0, 4.0, 3.0]
    assert len(cache) == 2 and "aa" not in cache and "bbb" in cache and "cccc" in cache  # bound 2: aa was least recent
    cache.get("aa")
    assert enc.calls == 3 and enc.texts[-1] == "aa" and "cccc" not in cache
    with pytest.raises(ValueError, match="max_entries must be >= 1"):
        TextEmbeddingCache(enc, max_entries=0)


def test_cache_reports_switches_over_a_rollout_and_a_session():
    enc = CountingEncoder()
    cache = TextEmbeddingCache(enc)
    s = parse_schedule("base", "0: calm\n2: storm")
    got = [cache.for_block(s, b) for b in range(4)]
    assert [g[0] for g in got] == ["base calm", "base calm", "base storm", "base storm"]
    assert [g[2] for g in got] == [s.changed(b) for b in range(4)] == [False, False, True, False]
    assert enc.calls == 2  # two distinct prompts
    # next API call of the session: a new instruction arrives for block 4
    s2 = InstructionSchedule("base", ((0, "calm"), (2, "storm"), (4, "a rainbow")))
    text, emb, changed = cache.for_block(s2, 4)
    assert text == "base a rainbow" and changed and float(emb[0, 0]) == len("base a rainbow")
    assert cache.for_block(s2, 5)[2] is False and enc.calls == 3
