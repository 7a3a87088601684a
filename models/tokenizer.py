"""A tiny T5 tokenizer built locally (no download): the embedded demo model's, random backbones' and the test kit's.

A real T5 tokenizer is a SentencePiece Unigram model; this one is the same class (``T5TokenizerFast``) with a
Unigram vocabulary of the words the sandbox captions use plus single characters, so any text tokenizes
(unknown words fall back to characters; words also in capitalised form) and the saved folder loads with ``AutoTokenizer.from_pretrained``.
"""
from __future__ import annotations

import string

# Words of the sandbox caption templates and the interaction prompt template; anything else falls back to letters.
WORDS = (
    "a an the object objects moving on surface box boxes cylinder cylinders cube pushes pushed hits hit slides "
    "slide rolls to toward into left right up down away forward back camera moves turns red green blue yellow "
    "orange purple cyan white grey gray black pink brown small large hand pusher of and with from by is are ground "
    "table floor wood stone it its then stops against other second first"
).split()


def demo_vocab() -> list[tuple[str, float]]:
    """Unigram pieces and log-probabilities: specials first (T5's ids: pad 0, eos 1, unk 2)."""
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    seen = {v for v, _ in vocab}
    for w in WORDS:  # whole words are cheaper than their letters, so Unigram prefers them
        for p in ("\u2581" + w, "\u2581" + w.capitalize()):
            if p not in seen:
                vocab.append((p, -1.0))
                seen.add(p)
    for c in string.ascii_letters + string.digits + string.punctuation:
        for p in (c, "\u2581" + c):
            if p not in seen:
                vocab.append((p, -8.0))
                seen.add(p)
    return vocab


def build_tokenizer():
    """A ``T5TokenizerFast`` over ``demo_vocab``, no extra ids."""
    from transformers import T5TokenizerFast

    return T5TokenizerFast(vocab=demo_vocab(), extra_ids=0)
