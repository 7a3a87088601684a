"""The guided step every sampler loop calls: batch rows (CFG, control guidance, perturbation passes), one batched
prediction through the family forward with its attachments, and the rows combined.

A :class:`Guidance` names the rows of the batch in order and how they combine:
``out = rows[base] + sum(scale * (rows[pos] - rows[neg]) for scale, pos, neg in terms)``. Classifier-free guidance is
``base="uncond", terms=((g, "cond", "uncond"),)`` (the pipelines' own ``uncond + g * (cond - uncond)``); control
guidance adds ``(s - 1, "cond", "no_control")``; a PAG-style perturbation pass adds ``(s, "cond", "perturbed")``.
Attachments see the row names in ``ctx.rows`` and act on their rows only (e.g. a control branch zeroes its
control on "no_control" rows). The schedule loops (full-length or causal blocks) own the timesteps and the
scheduler; this owns nothing but the rows.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class Guidance:
    rows: tuple[str, ...]
    base: str
    terms: tuple[tuple[object, str, str], ...] = ()

    def __post_init__(self):
        names = set(self.rows)
        if self.base not in names or any(p not in names or n not in names for _, p, n in self.terms):
            raise ValueError(f"guidance rows {self.rows} do not hold every row its terms use "
                             f"(base {self.base!r}, terms {[(p, n) for _, p, n in self.terms]})")

    def without(self, *names: str) -> "Guidance":
        """The same guidance with rows (and the terms that use them) left out, e.g. control guidance on a step
        where no control runs."""
        terms = tuple(t for t in self.terms if t[1] not in names and t[2] not in names)
        return Guidance(tuple(r for r in self.rows if r not in names), self.base, terms)

    def with_scale(self, pos: str, neg: str, scale) -> "Guidance":
        """The term (pos - neg) with a new scale (dynamic CFG: a scale per step)."""
        return Guidance(self.rows, self.base, tuple((scale if (p, n) == (pos, neg) else s, p, n)
                                                    for s, p, n in self.terms))

    def with_rows(self, extra) -> "Guidance":
        """This guidance plus attachment-declared rows ``(name, like, scale)``, each adding scale * (like - name)."""
        rows, terms = list(self.rows), list(self.terms)
        for name, like, scale in extra:
            if name in rows:
                raise ValueError(f"guidance row {name!r} is declared twice (two attachments perturb the same row "
                                 "name; give them different names)")
            if like not in rows:
                raise ValueError(f"guidance row {name!r} copies row {like!r}, which this sampler does not run "
                                 f"(rows: {rows})")
            rows.append(name)
            terms.append((scale, like, name))
        return Guidance(tuple(rows), self.base, tuple(terms))

    def row_slices(self, batch: int) -> dict[str, slice]:
        return {name: slice(k * batch, (k + 1) * batch) for k, name in enumerate(self.rows)}

    def combine(self, out: torch.Tensor) -> torch.Tensor:
        parts = dict(zip(self.rows, out.chunk(len(self.rows))))
        res = parts[self.base]
        for scale, pos, neg in self.terms:
            res = res + scale * (parts[pos] - parts[neg])
        return res


def classifier_free(scale: float, control_scale: float = 1.0, has_control: bool = False) -> Guidance:
    """CFG when ``scale`` > 1 (rows uncond, cond), else the cond row alone; control guidance when
    ``control_scale`` > 1 and a control exists (one more row, "no_control")."""
    rows, terms, base = ["cond"], [], "cond"
    if scale > 1.0:
        rows, base = ["uncond", "cond"], "uncond"
        terms.append((scale, "cond", "uncond"))
    if control_scale > 1.0 and has_control:
        rows.append("no_control")
        terms.append((control_scale - 1, "cond", "no_control"))
    return Guidance(tuple(rows), base, tuple(terms))


def rows_like(guidance: Guidance, extra) -> dict[str, str]:
    """Row name -> the row whose inputs it uses (its own name for the guidance's base rows)."""
    like = {r: r for r in guidance.rows}
    like.update({name: src for name, src, _ in extra})
    return like


def guided_step(predict: Callable[[torch.Tensor, dict], torch.Tensor], x: torch.Tensor,
                guidance: Guidance, parallel=None) -> torch.Tensor:
    """One guided prediction: ``x`` repeated once per row, ``predict(x_rows, rows)`` called once on the whole
    batch (``rows``: name -> batch slice, passed on to the forward's attachments), the rows combined.
    ``parallel`` (``sampling.parallel.Parallel`` with cfg > 1): the rows split over the CFG processes, each calling
    ``predict`` on its rows only, the outputs gathered before they are combined."""
    n = len(guidance.rows)
    if parallel is not None and parallel.cfg > 1:
        return guidance.combine(parallel.split_rows(predict, x, guidance.rows))
    x_in = torch.cat([x] * n) if n > 1 else x
    out = predict(x_in, guidance.row_slices(x.shape[0]))
    return guidance.combine(out)
