"""How sampler nodes take their controls: the (control, branch) pair of the landed sampler inputs plus any chain
of Apply Control nodes, bound by one rule and checked by the branch registry (no node compares kinds)."""
from __future__ import annotations

CONTROL_RULE = ("Rule: settings set on the condition node, an Apply Control node and this sampler combine: weights "
                "multiply, step ranges intersect.")
CONTROLS_INPUT = ("INTERPLAY_CONTROLS", {"tooltip": "Controls chained with Apply Control nodes (any branch made for "
                                                    "this backbone family); they run together with 'control'/'branch'. "
                                                    "The sampler's control weight and range apply to them too."})


def gather_controls(node: str, family: str, control=None, branch=None, controls=None, weight: float = 1.0,
                    start: float = 0.0, end: float = 1.0) -> list:
    """The sampler's bound controls: the pair (control, branch) when connected, then the chain, each under the
    sampler's weight and range; every branch checked against the family and its signal."""
    from ..models.control import registry
    from ..models.control.base import apply_settings, bind

    bound = []
    if control is not None and branch is None:
        raise ValueError(f"{node}: 'control' is connected but 'branch' is not; connect the branch that reads it")
    if branch is not None and (control is not None or not registry.of(branch).signals):
        # (a branch that needs a control but got none is ignored, as the samplers always did)
        registry.check_pairing(branch, control, family, node)
        bound.append(bind(branch, control, where=node))
    if controls is not None:
        bound.extend(controls.items)
    out = []
    for bc in bound:
        registry.check_pairing(bc.branch, bc.signal, family, node)
        out.append(apply_settings(bc, weight, start, end, where=node))
    return out
