"""A parameter budget for the search: the size the user asks for, not "as small as possible".

- :func:`budget_penalty`: ``|E[params] / budget - 1|`` (``E[params]``: the student's expected
  size under the architecture distributions, :func:`cost.expected_child_params`, differentiable
  in the logits), the TuNAS-style absolute-value
  penalty: it pulls the distributions towards the budget from both sides, so a search under a
  budget has no reason to shrink past it (the paper's L_E rewards every parameter removed);
- :func:`derive_within_budget`: the most probable child whose size is within the budget
  (an exact search: sizes add up over edges, so a small dynamic programme over the edges, for
  every depth), so the exported student always meets it;
- :func:`check_budget`: a budget no child of the space can meet is an error before training.
"""

from __future__ import annotations

import math
from typing import Dict, Mapping, Optional, Sequence

import torch

from ..errors import UserError
from ..model import cost
from ..model.depth import DEPTH_LABEL

__all__ = ["budget_penalty", "derive_within_budget", "smallest_child", "check_budget"]


def _fixed_params(config, include_embedding: bool) -> tuple[int, int]:
    """``(per cell besides its ops, once besides the cells)``: node attention; head and embedding."""
    once = cost.head_params(config) + (cost.embedding_params(config) if include_embedding else 0)
    return cost.attention_params(config), once


def budget_penalty(expected: torch.Tensor, budget: float) -> torch.Tensor:
    """``|expected / budget - 1|``: 0 at the budget, 1 at twice (or at none of) it."""
    return (expected / float(budget) - 1).abs()


def smallest_child(config, include_embedding: bool = True) -> int:
    """The size of the smallest child of the space: one cell of parameter-free ops."""
    per_cell, once = _fixed_params(config, include_embedding)
    return min(cost.op_params(n, config.embed_dim) for n in config.op_names) * len(config.edge_labels) \
        + per_cell + once


def check_budget(config, max_params: int, include_embedding: bool = True) -> None:
    """A :class:`UserError` naming the smallest possible child when no child fits ``max_params``."""
    smallest = smallest_child(config, include_embedding)
    if max_params < smallest:
        embedding = cost.embedding_params(config)
        what = (f"the embedding alone has {embedding:,} (exclude it from the budget with "
                f"--budget-excludes-embedding)" if include_embedding else "without the embedding")
        raise UserError(f"search setting max_params {max_params:,} is below the smallest student of this space "
                        f"({smallest:,} params; {what}); raise it")


def derive_within_budget(config, op_probs: Mapping[str, Mapping[str, float]], depth_probs: Mapping[int, float],
                         max_params: int, include_embedding: bool = True, min_params: int = 0) -> Dict[str, object]:
    """The child of highest probability (sum of log-probabilities over the edges and the depth)
    whose :func:`cost.child_params` is at most ``max_params`` and, when the space has such a
    child, at least ``min_params`` (else the most probable child within ``max_params``).

    ``op_probs``: ``{edge label: {op: probability}}``; ``depth_probs``: ``{K: probability}``
    (what :meth:`AdaBertLightningModule.export_probs` gives). Exact: for every depth K, a dynamic
    programme over the edges keeps, for each total of op parameters, the best choice so far.
    The lower bound matters: distributions that meet the budget in expectation can still be
    flat enough that their single most probable child is parameter-free.
    """
    check_budget(config, max_params, include_embedding)
    per_cell, once = _fixed_params(config, include_embedding)
    sizes = {n: cost.op_params(n, config.embed_dim) for n in config.op_names}

    def log(p: float) -> float:
        return math.log(p) if p > 0 else -math.inf

    # best[total op params of one cell] = (log-probability, ops chosen so far)
    best: Dict[int, tuple[float, Sequence[str]]] = {0: (0.0, ())}
    for label in config.edge_labels:
        step: Dict[int, tuple[float, Sequence[str]]] = {}
        for total, (score, ops) in best.items():
            for op in config.op_names:
                candidate = (score + log(op_probs[label][op]), (*ops, op))
                key = total + sizes[op]
                if key not in step or candidate[0] > step[key][0]:
                    step[key] = candidate
        best = step
    def most_probable(low: int) -> Optional[Dict[str, object]]:
        chosen: Optional[tuple[float, Dict[str, object]]] = None
        for depth in range(1, config.k_max + 1):
            room = (max_params - once) // depth - per_cell          # op parameters one cell may have
            floor = -(-(low - once) // depth) - per_cell             # ... and must have (ceiling division)
            fitting = [v for total, v in best.items() if floor <= total <= room]
            if not fitting:
                continue
            score, ops = max(fitting, key=lambda v: v[0])
            score += log(depth_probs[depth])
            if chosen is None or score > chosen[0]:
                chosen = (score, {**dict(zip(config.edge_labels, ops)), DEPTH_LABEL: depth})
        return None if chosen is None else chosen[1]

    arch = most_probable(min_params) if min_params > 0 else None
    arch = arch if arch is not None else most_probable(0)
    assert arch is not None  # check_budget: one parameter-free cell fits
    return arch
