import json

import pytest

from interplay.models.conditions import matrix_prompt as P
from interplay.models.tokenizer import build_tokenizer


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def pieces(tok, ids):
    return tok.convert_ids_to_tokens(ids)


def test_paper_spans_roles_drop_determiners(tok):
    mp = P.parse_markup("[The red box](1) [pushes](1>2) [the blue cylinder](2) to the left.")
    assert mp.markup == "paper_spans" and mp.text == "The red box pushes the blue cylinder to the left."
    assert mp.entities == {1: [(4, 11)], 2: [(23, 36)]}  # "red box", "blue cylinder"
    assert mp.interactions == [{"sub": 1, "obj": 2, "verb": [(12, 18)]}]
    t = P.token_sets(mp, tok, 226)
    # ▁The ▁red ▁box ▁pushes ▁the ▁blue ▁cylinder ▁to ▁the ▁left . </s>
    assert t.ids == {1: [1, 2], 2: [5, 6]}
    assert t.interactions == [{"sub_id": 1, "obj_id": 2, "sub": [1, 2], "obj": [5, 6], "verb": [3]}]
    assert len(t.input_ids) == 226 and t.input_ids[:3] == tok("The red box").input_ids[:3] and t.truncated == []
    keep = P.parse_markup("[The red box](1) [pushes](1>2) [the blue cylinder](2)", drop_determiners=False)
    assert P.token_sets(keep, tok).ids == {1: [0, 1, 2], 2: [4, 5, 6]}


def test_paper_spans_subwords_auxiliaries_and_pooled_spans(tok):
    mp = P.parse_markup("[a zebra](1) [is lifting up](1>2) [a mug](2).")
    t = P.token_sets(mp, tok)
    # ▁a ▁z e b r a ▁is ▁l i f t i n g ▁up ▁a ▁m u g . </s>: every piece of a word is in its set
    assert t.ids[1] == [1, 2, 3, 4, 5] and "".join(pieces(tok, [t.input_ids[i] for i in t.ids[1]])) == "\u2581zebra"
    assert t.interactions[0]["verb"] == list(range(6, 15)) and t.ids[2] == [16, 17, 18]
    two = P.parse_markup("[the hand](1) [picks](1>2) [the box](2) [up](1>2) and [it](2) slides")
    assert two.interactions[0]["verb"] == [(9, 14), (23, 25)]  # "picks", "up" pooled for the pair 1>2
    assert [two.text[s:e] for s, e in two.entities[2]] == ["box", "it"]


def test_lone_word_start_piece_belongs_to_its_word():
    from transformers import T5TokenizerFast

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)] + [(c, -1.0) for c in "abcdefghij"]
    t = T5TokenizerFast(vocab=vocab, extra_ids=0)  # no word pieces: "ab cd" -> ▁ a b ▁ c d </s>
    mp = P.parse_markup("[ab](1) [cd](2)", drop_determiners=False)
    assert P.token_sets(mp, t).ids == {1: [0, 1, 2], 2: [3, 4, 5]}
    assert P._members([(0, 1), (0, 0), (3, 4)], ["a", "\u2581", "c"], [(3, 4)], 3) == [1, 2]


def test_truncation_is_reported(tok):
    mp = P.parse_markup("[the red box](1) [pushes](1>2) [the blue cylinder](2)")
    t = P.token_sets(mp, tok, max_length=6)  # keeps 5 tokens + </s>: ▁the ▁red ▁box ▁pushes ▁the
    assert t.ids == {1: [1, 2], 2: []} and t.truncated == ["id2"] and len(t.input_ids) == 6
    assert t.input_ids[-1] == tok.eos_token_id


def test_id_tags_tokens_mode_in_padding_rows(tok):
    assert len(tok) == 330 and not P.fits_embedding(tok, 330) and P.fits_embedding(tok, 335)
    ext = P.with_id_tokens(tok)
    assert len(tok) == 330 and P.id_token_ids(ext) == [330, 331, 332, 333, 334]  # the input is not changed
    mp, t, enc_tok = P.prepare("a <id1> box  pushes the <id2> cylinder", tok, rows=330)
    assert mp.id_tags == "words"  # auto fell back: no room for the tags
    mp, t, enc_tok = P.prepare("a <id1> box  pushes the <id2> cylinder", tok, rows=340)
    assert mp.id_tags == "tokens" and mp.text == "a <id1> box pushes the <id2> cylinder"
    assert t.ids == {1: [1], 2: [5]} and t.input_ids[1] == 330 and t.input_ids[5] == 331
    assert enc_tok is not tok and len(enc_tok) == 335 and t.interactions == []
    with pytest.raises(ValueError, match="embedding rows"):
        P.prepare("a <id1> box", tok, id_tags="tokens", rows=330)
    with pytest.raises(ValueError, match="with_id_tokens"):
        P.token_sets(P.parse_markup("a <id1> box", id_tags="tokens"), tok)


def test_id_tags_words_mode(tok):
    mp = P.parse_markup("a <id1> box pushes the <id2> cylinder.", id_tags="words")
    assert mp.text == "a box pushes the cylinder." and mp.entities == {1: [(2, 5)], 2: [(17, 25)]}
    t = P.token_sets(mp, tok)
    assert t.ids == {1: [1], 2: [4]}
    glued = P.parse_markup("the<id1>box", id_tags="words")
    assert glued.text == "thebox"  # a tag inside a word marks the rest of that word
    with pytest.raises(ValueError, match="not followed by a word"):
        P.parse_markup("a box <id1>", id_tags="words")


def test_errors_and_detection(tok):
    assert P.detect_markup("a <id2> cat") == "id_tags" and P.detect_markup("[a cat](1)") == "paper_spans"
    plain = P.parse_markup("a cat sits")
    assert plain.entities == {} and P.token_sets(plain, tok).ids == {}
    with pytest.raises(ValueError, match="IDs 1..5"):
        P.parse_markup("[a cat](6)")
    with pytest.raises(ValueError, match="ID 2, which has no marked phrase"):
        P.parse_markup("[a cat](1) [chases](1>2) a mouse")
    with pytest.raises(ValueError, match="same subject and object"):
        P.parse_markup("[a cat](1) [licks](1>1)")
    with pytest.raises(ValueError, match="could not be read"):
        P.parse_markup("[a cat](x) sits")
    with pytest.raises(ValueError, match="IDs 1..5"):
        P.parse_markup("a <id7> cat")


def test_spans_json(tok):
    mp, t, _ = P.prepare("[The red box](1) [pushes](1>2) [the blue cylinder](2).", tok)
    d = json.loads(P.spans_json(mp, t))
    assert d["v"] == 1 and d["markup"] == "paper_spans" and d["text"] == "The red box pushes the blue cylinder."
    assert d["ids"]["1"] == {"chars": [[4, 11]], "text": ["red box"], "tokens": [1, 2]}
    assert d["interactions"][0]["verb_text"] == ["pushes"] and d["interactions"][0]["verb_tokens"] == [3]
    assert d["max_length"] == 226 and d["truncated"] == []
    no_tok = json.loads(P.spans_json(mp))
    assert "tokens" not in no_tok["ids"]["1"] and "max_length" not in no_tok
