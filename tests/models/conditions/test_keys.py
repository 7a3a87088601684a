import json

import pytest

from interplay.models.conditions.keys import (BlockGrid, Segment, Timeline, TimelineError, parse_json, parse_text,
                                              parse_timeline, to_block_text)


def test_block_grid_counts_frame_zero_in_block_zero():
    g = BlockGrid()  # 12 frames per block, block 0 = the image + 8 new frames
    assert [g.block_end(b) for b in range(4)] == [8, 20, 32, 44]
    assert [g.block_start(b) for b in range(4)] == [0, 9, 21, 33]
    assert [g.block_of(f) for f in (0, 8, 9, 20, 21, 92)] == [0, 0, 1, 1, 2, 7]
    assert g.frames_for_blocks(8) == 93 == 1 + 4 * 23  # the paper's eval length, 24 latent frames
    assert BlockGrid(16, 13).block_end(1) == 28
    with pytest.raises(ValueError, match="first_block_frames"):
        BlockGrid(12, 14)


def test_block_and_second_syntax_give_the_same_json():
    # block 0 = 8 steps, then 12 per block: 4 blocks end at frame 44 (2.75 s at 16 fps), 12 blocks at 140 (8.75 s)
    want = {"v": 1, "segments": [{"keys": ["W", "LEFT"], "frames": 44}, {"keys": ["W"], "frames": 96}]}
    blocks = parse_timeline("W+LEFT*4, W*8")
    seconds = parse_timeline("0-2.75s: W+LEFT; 2.75-8.75s: W", fps=16)
    assert blocks.to_dict() == want and seconds.to_dict() == want
    assert blocks.to_json() == seconds.to_json() == json.dumps(want, separators=(",", ":"))
    assert parse_timeline(blocks.to_json()) == blocks == parse_json(want)
    # the same at 24 fps: 44 frames = 1.8333 s is not exact, so the times round to the nearest frame
    assert parse_timeline("0s-1.8333s: LEFT+W\n1.8333-5.8333s: w", fps=24) == blocks


def test_text_details_aliases_mouse_gaps_and_comments():
    t = parse_timeline("w+→, ArrowUp+MOUSE(+30,-12.5)*2  # look up\nNONE, SPACE+D")
    assert t.segments == (Segment(("W", "RIGHT"), 8), Segment(("UP",), 24, (30.0, -12.5)), Segment((), 12),
                          Segment(("D", "SPACE"), 12))
    assert to_block_text(t) == "W+RIGHT, UP+MOUSE(30,-12.5)*2, NONE, D+SPACE"
    assert parse_timeline(to_block_text(t)) == t
    gap = parse_timeline("0.5-1s: S; 2-2.5s: A", fps=16)  # gaps hold nothing
    assert gap.segments == (Segment((), 8), Segment(("S",), 8), Segment((), 16), Segment(("A",), 8))
    assert to_block_text(gap) is None and gap.frames == 40
    assert gap.step_segments()[:9] == [0] * 8 + [1]


def test_block_items_end_on_block_boundaries_when_continuing():
    assert parse_text("W", start_frame=8).segments[0].frames == 12       # a whole block 1 (frames 9..20)
    assert parse_text("W*2", start_frame=14).segments[0].frames == 6 + 12  # the rest of block 1, then block 2
    assert parse_text("W", grid=BlockGrid(16, 13)).segments[0].frames == 12


@pytest.mark.parametrize("text,needle", [
    ("W+Q*3", "unknown key 'Q' in item 1 'W+Q*3'"),
    ("W, LEFT*0", "repeat count '0' in item 2 'LEFT*0'"),
    ("W*two", "repeat count 'two'"),
    ("W, 0-1s: A", "item 2 '0-1s: A' mixes per-second and per-block items"),
    ("0-1s: W; 0.5-2s: A", "item 2 '0.5-2s: A' starts at 0.5s, before the previous item ends"),
    ("0-1s W", "item 1 '0-1s W' is not 'START-ENDs: KEYS'"),
    ("1-1s: W", "covers no frame"),
    ("W+W", "key W given twice in item 1"),
    ("NONE+A", "NONE combined with other keys in item 1"),
    ("W+", "empty key in item 1"),
    ("MOUSE(3)", "unknown key 'MOUSE(3)'"),
    ("  ", "is empty"),
    ('{"v": 2, "segments": []}', "unsupported version v=2"),
    ('{"v": 1, "segments": []}', 'non-empty "segments"'),
    ('{"v": 1, "segments": [{"keys": ["W"], "frames": 3}, {"keys": ["X"], "frames": 3}]}',
     "unknown key 'X' at segments[1].keys[0]"),
    ('{"v": 1, "segments": [{"keys": ["W"], "frames": 0}]}', "segments[0].frames must be a whole number >= 1"),
    ('{"v": 1, "segments": [{"keys": ["W"], "frames": 2.5}]}', "segments[0].frames"),
    ('{"v": 1, "segments": [{"keys": ["W"], "frames": 2, "mouse": [1]}]}', "segments[0].mouse must be [dx, dy]"),
    ('{"v": 1, "segments": [{"keys": ["W"], "frames": 2, "speed": 3}]}', "unknown field(s) ['speed']"),
    ('{"v": 1, "segments": [{"frames": 100001}]}', "at most 100000"),
    ("{not json", "is not valid JSON"),
])
def test_errors_name_the_bad_token(text, needle):
    with pytest.raises(TimelineError) as e:
        parse_timeline(text, input_name="timeline")
    msg = str(e.value)
    assert msg.startswith("`timeline`: ") and needle in msg and '{"v": 1, "segments"' in msg


def test_json_keys_are_case_insensitive_and_written_canonically():
    t = parse_json({"v": 1, "segments": [{"keys": ["right", "w"], "frames": 5}, {"keys": ["NONE"], "frames": 1},
                                         {"frames": 2}]})
    assert t == Timeline((Segment(("W", "RIGHT"), 5), Segment((), 1), Segment((), 2)))
    assert t.to_dict()["segments"][0] == {"keys": ["W", "RIGHT"], "frames": 5}
