"""Instruction schedule: a base prompt plus instructions that switch at blocks (GameCraft-2 §4.1, §5.2.2).

    base:      a medieval street at dusk, cinematic
    schedule:  0: a quiet street
               4: a dragon appears
               6.5s: it starts to snow      (a time: the block holding frame round(6.5 * fps))
               9:                           (an empty instruction: the base prompt alone from block 9)

The prompt of block b is ``base + " " + instruction`` of the latest line at or before b (the paper concatenates
the static base prompt and the interaction prompt into one sentence); before the first line, the base alone.
A switch (a block whose prompt differs from the previous block's) is where the causal sampler recaches.

:class:`TextEmbeddingCache` keeps encoded prompts keyed by their exact text (bounded LRU) around any
``encode(texts) -> tensor`` callable, so the text encoder runs once per distinct prompt.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .keys import BlockGrid

_LINE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(s?)\s*:(.*)$", re.IGNORECASE | re.S)
SCHEMA = "one 'BLOCK: instruction' or 'SECONDSs: instruction' per line, e.g. '0: a quiet street' / '4: a dragon appears'"


def join_prompt(base: str, instruction: str) -> str:
    """base + " " + instruction, either may be empty (no stray spaces)."""
    base, instruction = base.strip(), instruction.strip()
    return f"{base} {instruction}" if base and instruction else base or instruction


@dataclass(frozen=True)
class InstructionSchedule:
    """Per-block prompts (ComfyUI type ``INTERPLAY_INSTRUCTIONS``).

    Fields:
        base: the static scene prompt, in every block.
        entries: (first block, instruction) sorted by block, at most one per block; an instruction holds until
            the next entry.
        extra: (first block, last block, phrase) appended in that block range (e.g. the camera's SPACE text
            events), after the instruction.
    """

    base: str
    entries: tuple[tuple[int, str], ...] = ()
    extra: tuple[tuple[int, int, str], ...] = ()

    def instruction(self, block: int) -> str:
        text = ""
        for b, ins in self.entries:
            if b > block:
                break
            text = ins
        for lo, hi, phrase in self.extra:
            if lo <= block <= hi:
                text = join_prompt(text, phrase)
        return text

    def prompt(self, block: int) -> str:
        """The full text of block ``block`` (>= 0)."""
        if block < 0:
            raise ValueError(f"block must be >= 0; got {block}")
        return join_prompt(self.base, self.instruction(block))

    def prompts(self, num_blocks: int) -> list[str]:
        return [self.prompt(b) for b in range(num_blocks)]

    def changed(self, block: int) -> bool:
        """Whether block ``block``'s prompt differs from block-1's (never at block 0): a recache point."""
        return block > 0 and self.prompt(block) != self.prompt(block - 1)

    def switches(self, num_blocks: int) -> list[int]:
        """Blocks in 1..num_blocks-1 where the prompt changes."""
        return [b for b in range(1, num_blocks) if self.changed(b)]

    def with_events(self, events, grid: BlockGrid) -> "InstructionSchedule":
        """Add the camera's text events ((first frame, last frame, phrase) objects with .first/.last/.text) as
        block ranges: a phrase is in every block that holds one of its frames."""
        extra = tuple((grid.block_of(e.first), grid.block_of(e.last), e.text) for e in events)
        return InstructionSchedule(self.base, self.entries, self.extra + extra)

    def describe(self, num_blocks: int) -> str:
        """One line per block: 'block 3 (switch): text'."""
        return "\n".join(f"block {b}{' (switch)' if self.changed(b) else ''}: {p}"
                         for b, p in enumerate(self.prompts(num_blocks)))


def parse_schedule(base: str, text: str, *, fps: float = 16.0, grid: BlockGrid = BlockGrid(),
                   input_name: str = "schedule") -> InstructionSchedule:
    """Parse ``BLOCK: instruction`` / ``SECONDSs: instruction`` lines ('#' starts a comment; blank lines skip).

    Raises ValueError naming the input, the line number and the bad text."""
    if not isinstance(base, str) or not isinstance(text, str):
        raise ValueError(f"`{input_name}`: base prompt and schedule must be strings")
    entries: dict[int, str] = {}
    where_of: dict[int, int] = {}
    for n, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0]
        if not line.strip():
            continue
        m = _LINE.match(line)
        if not m:
            raise ValueError(f"`{input_name}`: line {n} {raw.strip()!r} is not 'BLOCK: instruction'; expected "
                             f"{SCHEMA}")
        at, seconds, ins = m.group(1), m.group(2), m.group(3).strip()
        if seconds:
            if not fps > 0:
                raise ValueError(f"`{input_name}`: line {n} gives a time but fps is {fps}; expected fps > 0")
            block = grid.block_of(int(float(at) * fps + 0.5))
        else:
            if not re.fullmatch(r"\d+", at):
                raise ValueError(f"`{input_name}`: line {n} block {at!r} must be a whole number (or add 's' for "
                                 "seconds, e.g. '2.5s: ...')")
            block = int(at)
        if block in entries:
            raise ValueError(f"`{input_name}`: line {n} sets block {block} again (line {where_of[block]} already "
                             "does); give one instruction per block")
        entries[block] = ins
        where_of[block] = n
    return InstructionSchedule(base.strip(), tuple(sorted(entries.items())))


# ------------------------------------------------------------------------------------------------ cache
class TextEmbeddingCache:
    """Embeddings of prompts keyed by exact text, least recently used evicted beyond ``max_entries``.

    ``encode(texts: list[str])`` returns a tensor [N, ...] (or a list of N tensors, for variable lengths); one
    call encodes every missing text of a request. ``hits`` and ``misses`` count texts; ``calls`` counts encode
    calls. :meth:`for_block` also says whether the prompt changed from the one this cache last served, which
    is the recache signal for a sampler that keeps the cache for a whole session (new instructions may arrive
    between calls)."""

    def __init__(self, encode: Callable[[list[str]], torch.Tensor | Sequence[torch.Tensor]], max_entries: int = 32):
        if int(max_entries) < 1:
            raise ValueError(f"max_entries must be >= 1; got {max_entries}")
        self.encode = encode
        self.max_entries = int(max_entries)
        self._store: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.hits = self.misses = self.calls = 0
        self.last_text: str | None = None

    def __len__(self) -> int:
        return len(self._store)

    def __contains__(self, text: str) -> bool:
        return text in self._store

    def get_many(self, texts: Sequence[str]) -> list[torch.Tensor]:
        texts = list(texts)
        missing = list(dict.fromkeys(t for t in texts if t not in self._store))
        self.hits += sum(1 for t in texts if t in self._store)
        self.misses += len(missing)
        if missing:
            out = self.encode(missing)
            self.calls += 1
            if len(out) != len(missing):
                raise ValueError(f"encode returned {len(out)} embeddings for {len(missing)} texts")
            for t, e in zip(missing, out):
                self._store[t] = e.detach().clone()  # a row, not a view holding the whole batch
        for t in texts:
            self._store.move_to_end(t)
        result = [self._store[t] for t in texts]  # before eviction: a request may exceed the bound
        while len(self._store) > self.max_entries:
            self._store.popitem(last=False)
        return result

    def get(self, text: str) -> torch.Tensor:
        return self.get_many([text])[0]

    def for_block(self, schedule: InstructionSchedule, block: int) -> tuple[str, torch.Tensor, bool]:
        """(prompt, embedding, changed) for ``block``; changed is True when the prompt differs from the one this
        cache served last (False on the first call: nothing to recache yet)."""
        text = schedule.prompt(block)
        emb = self.get(text)
        changed = self.last_text is not None and text != self.last_text
        self.last_text = text
        return text, emb, changed
