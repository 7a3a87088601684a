"""MATRIX prompt markup -> the cleaned prompt for the text encoder and the token index sets SGA and the attention
maps read (spec seed-004 §2.2, §3.1, §3.3).

Two markups:

- ``paper_spans`` (the paper's roles): ``[phrase](k)`` marks an entity phrase of instance ID k (its head noun
  plus modifiers, e.g. ``[the red cup](2)``; leading determiners are dropped by default, so the set is
  {red, cup} as in §2.2); ``[phrase](k>j)`` marks the verb of an interaction of subject k on object j, with its
  auxiliaries and particles (``[is lifting up](1>2)``). Several spans may share an ID or a (k>j) pair (a
  discontinuous verb, a repeated mention); their tokens are pooled. The brackets are removed from the text.
  Per interaction the roles are: sub = every token of ID k, obj = every token of ID j, verb = its verb tokens.
- ``id_tags`` (the public code): ``<id1>`` .. ``<id5>`` placed before the noun (``a <id1> person passes a ball to
  another <id2> person``); the set of ID k is the tag's own token. No verb term. Two ways to tokenize:
  ``tokens`` adds the five tags to a copy of the tokenizer (``with_id_tokens``) as the public code does. The text
  encoder is frozen and its embedding table is not resized, so the new ids index rows past the tokenizer's
  vocabulary: T5-v1.1-xxl has 32,128 rows for 32,100 tokenizer entries, so the tags land in padding rows that
  were never trained and act as fixed arbitrary markers. When the table has no room (``fits_embedding`` is
  False; e.g. a text encoder sized exactly to its tokenizer) an id would be out of range, so ``words`` is the
  fallback: the tags are removed from the text and ID k's set is the tokens of the word after its tag.

Token sets come from the tokenizer's character offsets (``return_offsets_mapping``, HF fast tokenizers): a token
belongs to a span when its characters overlap it; a lone sentencepiece word-start piece (U+2581) directly before a
member token belongs too. Positions index the encoder's padded sequence (``max_length``, 226 for CogVideoX, 512 for
Wan); a span cut off by truncation is reported.
"""
from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field

MARKUPS = ("auto", "paper_spans", "id_tags")
ID_TAG_MODES = ("tokens", "words")
ID_TAGS = tuple(f"<id{k}>" for k in range(1, 6))
MAX_IDS = 5
DETERMINERS = frozenset("a an the another this that these those some his her its their my your our".split())
_SPAN = re.compile(r"\[([^\[\]]+)\]\(\s*(\d+)\s*(?:>\s*(\d+)\s*)?\)")
_TAG = re.compile(r"<id(\d+)>")
_WORD = re.compile(r"[\w'-]+")
_SP = "\u2581"


@dataclass
class MatrixPrompt:
    """A parsed prompt; character spans index ``text`` (what the text encoder reads).

    entities      {ID k: [(start, end), ...]} the characters of ID k (paper: its phrases; id_tags: the tag, or the
                  word after it in ``words`` mode)
    interactions  [{"sub": k, "obj": j, "verb": [(start, end), ...]}] (paper markup only)
    """
    text: str
    markup: str
    entities: dict = field(default_factory=dict)
    interactions: list = field(default_factory=list)
    id_tags: str = "tokens"


@dataclass
class PromptTokens:
    """Token index sets of a MatrixPrompt for one tokenizer (positions in the padded encoder sequence).

    ids           {ID k: [token positions]}
    interactions  [{"sub_id", "obj_id", "sub": [...], "obj": [...], "verb": [...]}]
    input_ids     the padded ids (length ``max_length``) the encoder should read
    truncated     names of sets that lost tokens to truncation (e.g. "id2", "verb 1>2")
    """
    ids: dict
    interactions: list
    input_ids: list
    max_length: int
    truncated: list = field(default_factory=list)


def _check_id(k: int, where: str) -> int:
    if not 1 <= k <= MAX_IDS:
        raise ValueError(f"{where}: instance ID {k} is out of range; MATRIX uses IDs 1..{MAX_IDS}")
    return k


def detect_markup(prompt: str) -> str:
    """``paper_spans`` when ``[phrase](k)`` appears, ``id_tags`` when ``<idk>`` appears, else ``paper_spans`` (a
    plain prompt: no sets)."""
    if _SPAN.search(prompt):
        return "paper_spans"
    return "id_tags" if _TAG.search(prompt) else "paper_spans"


def _strip_determiners(text: str, s: int, e: int) -> tuple[int, int]:
    while True:
        m = re.match(r"\s*([\w']+)\s+", text[s:e])
        if not m or m.group(1).lower() not in DETERMINERS:
            return s, e
        s += m.end()


def parse_markup(prompt: str, markup: str = "auto", id_tags: str = "tokens", *, drop_determiners: bool = True,
                 where: str = "matrix_prompt") -> MatrixPrompt:
    """Read the markup of ``prompt`` (see the module doc) into a MatrixPrompt."""
    if markup not in MARKUPS:
        raise ValueError(f"{where}: markup must be one of {', '.join(MARKUPS)}; got {markup!r}")
    if id_tags not in ID_TAG_MODES:
        raise ValueError(f"{where}: id_tags must be one of {', '.join(ID_TAG_MODES)}; got {id_tags!r}")
    if markup == "auto":
        markup = detect_markup(prompt)
    if markup == "paper_spans":
        return _parse_spans(prompt, drop_determiners, where)
    return _parse_tags(prompt, id_tags, where)


def _parse_spans(prompt: str, drop_determiners: bool, where: str) -> MatrixPrompt:
    out, pos, entities, verbs = [], 0, {}, {}
    n = 0  # length of the cleaned text so far
    for m in _SPAN.finditer(prompt):
        out.append(prompt[pos:m.start()])
        n += m.start() - pos
        phrase = m.group(1)
        s, e = n, n + len(phrase)
        out.append(phrase)
        n = e
        pos = m.end()
        k = _check_id(int(m.group(2)), where)
        if m.group(3) is None:
            entities.setdefault(k, []).append((s, e))
        else:
            j = _check_id(int(m.group(3)), where)
            if j == k:
                raise ValueError(f"{where}: '[{phrase}]({k}>{j})' has the same subject and object ID; an "
                                 "interaction needs two instances.")
            verbs.setdefault((k, j), []).append((s, e))
    out.append(prompt[pos:])
    text = "".join(out)
    if "[" in text and re.search(r"\[[^\]]*\]\(", text):
        raise ValueError(f"{where}: a '[...](...)' span could not be read; expected [phrase](k) or [phrase](k>j) "
                         f"with IDs 1..{MAX_IDS}, e.g. '[the red box](1) [pushes](1>2) [the blue cylinder](2)'.")
    if drop_determiners:
        entities = {k: [_strip_determiners(text, s, e) for s, e in v] for k, v in entities.items()}
    for (k, j) in verbs:
        for i in (k, j):
            if i not in entities:
                raise ValueError(f"{where}: the interaction {k}>{j} names ID {i}, which has no marked phrase. Fix: "
                                 f"mark it, e.g. '[the cup]({i})'.")
    inter = [{"sub": k, "obj": j, "verb": v} for (k, j), v in verbs.items()]
    return MatrixPrompt(text=text, markup="paper_spans", entities=dict(sorted(entities.items())), interactions=inter)


def _parse_tags(prompt: str, mode: str, where: str) -> MatrixPrompt:
    for m in _TAG.finditer(prompt):
        _check_id(int(m.group(1)), where)
    entities: dict[int, list] = {}
    if mode == "tokens":
        text = re.sub(r"[ \t]+", " ", prompt).strip()
        for m in _TAG.finditer(text):
            entities.setdefault(int(m.group(1)), []).append((m.start(), m.end()))
        return MatrixPrompt(text=text, markup="id_tags", entities=entities, id_tags="tokens")
    # words: drop each tag (and one adjoining space); the ID's span is the next word
    out, pos, n, pending = [], 0, 0, []
    for m in _TAG.finditer(prompt):
        chunk = prompt[pos:m.start()]
        if chunk.endswith(" ") and prompt[m.end():m.end() + 1] == " ":
            chunk = chunk[:-1]  # "a <id1> person" -> "a person"
        out.append(chunk)
        n += len(chunk)
        pending.append((int(m.group(1)), n))
        pos = m.end()
    out.append(prompt[pos:])
    text = "".join(out)
    for k, at in pending:
        w = _WORD.search(text, at)
        if w is None:
            raise ValueError(f"{where}: the tag <id{k}> is not followed by a word; expected '<id{k}> noun'.")
        entities.setdefault(k, []).append((w.start(), w.end()))
    return MatrixPrompt(text=text, markup="id_tags", entities=entities, id_tags="words")


# ------------------------------------------------------------------------------------------ tokenizers
def with_id_tokens(tokenizer):
    """A copy of ``tokenizer`` with ``<id1>`` .. ``<id5>`` added as special tokens (the input is not changed)."""
    missing = [t for t in ID_TAGS if t not in tokenizer.get_vocab()]
    if not missing:
        return tokenizer
    tok = copy.deepcopy(tokenizer)
    tok.add_tokens(missing, special_tokens=True)
    return tok


def id_token_ids(tokenizer) -> list[int]:
    """The ids of ``<id1>`` .. ``<id5>`` in a tokenizer made by ``with_id_tokens``."""
    vocab = tokenizer.get_vocab()
    missing = [t for t in ID_TAGS if t not in vocab]
    if missing:
        raise ValueError(f"matrix_prompt: the tokenizer has no {missing[0]} token. Fix: use with_id_tokens(tokenizer)"
                         " or id_tags='words'.")
    return [int(vocab[t]) for t in ID_TAGS]


def fits_embedding(tokenizer, embedding_rows: int) -> bool:
    """Whether the five tag ids stay inside a text encoder's embedding table of ``embedding_rows`` rows (T5-v1.1-xxl:
    32,128 rows, tokenizer 32,100: True, in untrained padding rows)."""
    tok = with_id_tokens(tokenizer)
    return max(id_token_ids(tok)) < int(embedding_rows)


def embedding_rows(text_encoder) -> int:
    """Rows of a transformers text encoder's input embedding table."""
    return int(text_encoder.get_input_embeddings().num_embeddings)


def _members(offsets, pieces, spans, limit) -> list[int]:
    out = []
    for i, (a, b) in enumerate(offsets[:limit]):
        if b > a and any(a < e and s < b for s, e in spans):
            out.append(i)
    lone = {i - 1 for i in out if i > 0 and pieces[i - 1] == _SP}
    return sorted(set(out) | lone)


def token_sets(mp: MatrixPrompt, tokenizer, max_length: int = 226, *, where: str = "matrix_prompt") -> PromptTokens:
    """Token positions of every ID and interaction role of ``mp`` under ``tokenizer`` (an HF fast tokenizer;
    ``tokens``-mode id tags need ``with_id_tokens(tokenizer)``)."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"{where}: the tokenizer must be a fast (Rust) tokenizer to give character offsets; got "
                         f"{type(tokenizer).__name__}. Fix: load it with use_fast=True.")
    if mp.markup == "id_tags" and mp.id_tags == "tokens" and mp.entities:
        id_token_ids(tokenizer)  # raises with the fix when the tags are unknown
    enc = tokenizer(mp.text, return_offsets_mapping=True, add_special_tokens=True, truncation=False)
    ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    pieces = tokenizer.convert_ids_to_tokens(ids)
    limit = int(max_length) - 1 if ids and ids[-1] == tokenizer.eos_token_id else int(max_length)
    # the padded, truncated sequence the encoder reads (truncation keeps the final special token, as HF does)
    padded = tokenizer(mp.text, padding="max_length", max_length=int(max_length), truncation=True,
                       add_special_tokens=True)["input_ids"]
    truncated = []

    def collect(name, spans):
        full = _members(offsets, pieces, spans, len(offsets))
        kept = [i for i in full if i < limit]
        if len(kept) < len(full):
            truncated.append(name)
        return kept

    id_sets = {k: collect(f"id{k}", v) for k, v in mp.entities.items()}
    inter = []
    for it in mp.interactions:
        verb = collect(f"verb {it['sub']}>{it['obj']}", it["verb"])
        inter.append({"sub_id": it["sub"], "obj_id": it["obj"], "sub": id_sets[it["sub"]], "obj": id_sets[it["obj"]],
                      "verb": verb})
    return PromptTokens(ids=id_sets, interactions=inter, input_ids=list(padded), max_length=int(max_length),
                        truncated=truncated)


def prepare(prompt: str, tokenizer=None, *, markup: str = "auto", id_tags: str = "auto", max_length: int = 226,
            rows: int | None = None, drop_determiners: bool = True, where: str = "matrix_prompt"
            ) -> tuple[MatrixPrompt, PromptTokens | None, object]:
    """Parse and tokenize in one go -> (MatrixPrompt, PromptTokens or None without a tokenizer, the tokenizer to
    encode with: the tag-extended copy in ``tokens`` mode).

    ``id_tags="auto"`` picks ``tokens`` when the tags fit the text encoder's embedding table (``rows``; unknown rows
    or no tokenizer count as fitting) and ``words`` otherwise; an explicit ``tokens`` that does not fit raises.
    """
    if id_tags not in ID_TAG_MODES + ("auto",):
        raise ValueError(f"{where}: id_tags must be auto, tokens or words; got {id_tags!r}")
    mode = id_tags
    fits = tokenizer is None or rows is None or fits_embedding(tokenizer, rows)
    if mode == "auto":
        mode = "tokens" if fits else "words"
    elif mode == "tokens" and not fits and _TAG.search(prompt):
        n = len(with_id_tokens(tokenizer))
        raise ValueError(f"{where}: id_tags 'tokens' needs ids up to {n - 1} but the text encoder has {rows} "
                         "embedding rows; the tags would index past its table. Fix: set id_tags to 'words' (each tag "
                         "marks the word after it) or use a text encoder with padding rows (T5-v1.1-xxl has 28).")
    mp = parse_markup(prompt, markup, mode, drop_determiners=drop_determiners, where=where)
    if tokenizer is None:
        return mp, None, None
    tok = with_id_tokens(tokenizer) if mp.markup == "id_tags" and mode == "tokens" else tokenizer
    return mp, token_sets(mp, tok, max_length, where=where), tok


def spans_json(mp: MatrixPrompt, tokens: PromptTokens | None = None) -> str:
    """The versioned JSON the nodes pass on: text, markup, per-ID char spans (and token positions), interactions."""
    ids = {}
    for k, spans in mp.entities.items():
        entry = {"chars": [list(s) for s in spans], "text": [mp.text[s:e] for s, e in spans]}
        if tokens is not None:
            entry["tokens"] = tokens.ids.get(k, [])
        ids[str(k)] = entry
    inter = []
    for i, it in enumerate(mp.interactions):
        entry = {"sub": it["sub"], "obj": it["obj"], "verb_chars": [list(s) for s in it["verb"]],
                 "verb_text": [mp.text[s:e] for s, e in it["verb"]]}
        if tokens is not None:
            t = tokens.interactions[i]
            entry.update(sub_tokens=t["sub"], obj_tokens=t["obj"], verb_tokens=t["verb"])
        inter.append(entry)
    out = {"v": 1, "markup": mp.markup, "id_tags": mp.id_tags if mp.markup == "id_tags" else None, "text": mp.text,
           "ids": ids, "interactions": inter}
    if tokens is not None:
        out.update(max_length=tokens.max_length, truncated=tokens.truncated)
    return json.dumps(out)


# ------------------------------------------------------------------------------------------ captions -> markup
NOT_VERBS = frozenset("and or but nor with without to of on in at by from into onto near beside behind than as then "
                      "while like".split())


def mark_up(caption: str, names: dict, markup: str = "paper_spans", *, interactions_only: bool = False) -> str:
    """A plain caption with named instances -> the same caption in MATRIX markup (sandbox and user captions that
    name their objects, e.g. "the red box pushes the blue cylinder to the left").

    ``names``: {ID k: the noun phrase that names it ("red box")}. Every mention of a name (case-insensitive, whole
    words, with its determiner) becomes an entity of ID k (``[the red box](k)``, or ``the red <idk> box`` in
    ``id_tags``: the tag before the head noun); a single word between two ID mentions ("A pushes the B"; not a
    conjunction or preposition, ``NOT_VERBS``) becomes the verb of A on B
    (``[pushes](a>b)``, paper markup only). ``interactions_only`` keeps just the clauses (split at ``;`` and ``.``)
    that hold such an interaction, joined with "; " (the short prompts MATRIX trains on), or the whole caption
    when none does.
    """
    if markup not in ("paper_spans", "id_tags"):
        raise ValueError(f"mark_up: markup must be paper_spans or id_tags; got {markup!r}")
    if not names:
        return caption
    det = r"(?:(?:the|a|an|another)\s+)?"
    alt = "|".join(re.escape(str(n)) for n in sorted(names.values(), key=len, reverse=True))
    by_name = {str(n).lower(): int(k) for k, n in names.items()}
    ment = re.compile(rf"\b({det})({alt})\b", re.IGNORECASE)
    inter = re.compile(rf"\b{det}({alt})\s+([A-Za-z]+)\s+{det}({alt})\b", re.IGNORECASE)

    def clause(text: str) -> str:
        verbs = {}
        for m in inter.finditer(text):
            a, b = by_name[m.group(1).lower()], by_name[m.group(3).lower()]
            if a != b and m.group(2).lower() not in NOT_VERBS:
                verbs[m.start(2)] = (m.end(2), a, b)
        out, pos = [], 0
        for m in ment.finditer(text):
            k = by_name[m.group(2).lower()]
            for s in sorted(v for v in verbs if pos <= v < m.start()):
                e, a, b = verbs[s]
                out.append(text[pos:s] + (f"[{text[s:e]}]({a}>{b})" if markup == "paper_spans" else text[s:e]))
                pos = e
            out.append(text[pos:m.start()])
            if markup == "paper_spans":
                out.append(f"[{m.group(0)}]({k})")
            else:  # the tag goes before the head noun: "the orange <id1> box"
                head, _, noun = m.group(2).rpartition(" ")
                out.append(f"{m.group(1)}{head + ' ' if head else ''}<id{k}> {noun}")
            pos = m.end()
        out.append(text[pos:])
        return "".join(out)

    if not interactions_only:
        return clause(caption)
    keep = [c.strip() for c in re.split(r"[;.]", caption)
            if any(m.group(2).lower() not in NOT_VERBS for m in inter.finditer(c))]
    return "; ".join(clause(c) for c in keep) + "." if keep else clause(caption)
