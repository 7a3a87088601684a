"""Plain captions naming their objects -> MATRIX markup (the sandbox `multi` captions and user captions)."""
import pytest

from interplay.models.conditions import matrix_prompt as P

CAPTION = ("On a wooden floor there are an orange box, a blue cylinder, a pink box and a yellow box. The orange box "
           "moves toward the camera; the blue cylinder pushes the pink box away from the camera.")
NAMES = {1: "orange box", 2: "blue cylinder", 3: "pink box"}


def test_paper_markup_marks_every_mention_and_the_verb_between_two_ids():
    text = P.mark_up(CAPTION, NAMES)
    assert text == ("On a wooden floor there are [an orange box](1), [a blue cylinder](2), [a pink box](3) and a "
                    "yellow box. [The orange box](1) moves toward the camera; [the blue cylinder](2) [pushes](2>3) "
                    "[the pink box](3) away from the camera.")  # "and" between two IDs is not a verb
    mp = P.parse_markup(text)
    assert mp.text == CAPTION and mp.interactions[0]["sub"] == 2 and mp.interactions[0]["obj"] == 3
    assert [mp.text[s:e] for s, e in mp.entities[1]] == ["orange box", "orange box"]  # determiners dropped
    assert [mp.text[s:e] for s, e in mp.interactions[0]["verb"]] == ["pushes"]


def test_interactions_only_and_id_tags():
    short = P.mark_up(CAPTION, NAMES, interactions_only=True)
    assert short == "[the blue cylinder](2) [pushes](2>3) [the pink box](3) away from the camera."
    tags = P.mark_up(CAPTION, NAMES, "id_tags", interactions_only=True)
    assert tags == "the blue <id2> cylinder pushes the pink <id3> box away from the camera."
    mp = P.parse_markup(tags, id_tags="words")
    assert [mp.text[s:e] for s, e in mp.entities[2]] == ["cylinder"]  # the head noun after its tag
    # no interaction anywhere: the whole caption, entities marked
    assert P.mark_up("a red box moves.", {1: "red box"}, interactions_only=True) == "[a red box](1) moves."
    assert P.mark_up("a red box moves.", {}) == "a red box moves."
    with pytest.raises(ValueError, match="paper_spans or id_tags"):
        P.mark_up("x", NAMES, "auto")
