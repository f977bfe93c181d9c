"""Budgets for the search: the cost the user asks for, not "as small as possible".

A :class:`Budget` is one additive cost of a child, ``once + K * (per_cell + sum over edges of
op_cost[op])``, and the range the exported child must keep it in:

- :func:`params_budget` (``--max-params``): parameters, with or without the embedding;
- :func:`speed_budget` (``--min-speedup``): seconds from a measured :class:`LatencyTable`, at
  most the reference's time divided by the speedup asked for.

What the search does with them:

- :meth:`Budget.penalty` (``E[cost]``: under the architecture distributions, differentiable in
  the logits): for a size to reach (``--max-params`` with its tolerance) ``|E[cost] / maximum - 1|``,
  the TuNAS-style absolute-value penalty, which pulls the distributions towards the budget from
  both sides, so a search under a budget has no reason to shrink past it (the paper's L_E rewards
  every parameter removed); for a speed (``--min-speedup``: at least that fast) the hinge
  ``max(0, E[cost] / maximum - 1)``, since pulling MRPC's students up to the slowest child allowed
  made them deep, wide and worse (bench/results/pipeline/MRPC-speedup20-seed0);
- :func:`derive_within_budget`: the most probable child whose cell reads its inputs (never a cell
  whose output is constant), within every budget and its tolerance (an exact search: costs add up
  over edges, so a small dynamic programme over the edges, for every depth), preferring a cell
  with weights to one without, so the exported student always meets the budgets and does not
  collapse to a bag of embeddings when a budget admits more: with E[time] at a speed budget, the
  most probable child of flat distributions can still be far faster (SST-2 at 100x: a cell
  without weights at 773x, bench/results/budget-sweep/SST-2), which the floor of the export undoes;
- :func:`check_budgets`: a budget no child of the space can meet is an error before training;
  :func:`budget_warnings`: one that only children without cell weights meet is worth a warning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, FrozenSet, Mapping, Optional, Sequence, Tuple

import torch

from ..errors import UserError
from ..model import cost
from ..model.depth import DEPTH_LABEL
from ..model.latency import LatencyTable
from ..model.space import any_intermediate, edge_label, edges, input_groups

__all__ = ["Budget", "params_budget", "speed_budget", "budgets_of", "check_budgets", "budget_warnings",
           "derive_within_budget", "has_weights"]

SECONDS_RESOLUTION = 4000  # a time budget's dynamic programme tells costs apart to 1/4000 of the budget


@dataclass(frozen=True)
class Budget:
    """One additive cost of a child and the range ``[minimum, maximum]`` the export keeps it in.

    ``setting`` names the option it comes from (for messages); ``unit`` is the resolution of the
    derivation's dynamic programme (1 for parameter counts: exact); ``two_sided``: the penalty
    pulls ``E[cost]`` to ``maximum`` from below too (a size to reach), not only from above."""

    setting: str
    op_cost: Mapping[str, float]
    per_cell: float
    once: float
    maximum: float
    minimum: float = 0.0
    unit: float = 1.0
    two_sided: bool = False

    def child(self, config, arch: Mapping[str, Any]) -> float:
        """The cost of the child ``arch``."""
        return cost.additive_cost(config, arch, self.op_cost, self.per_cell, self.once)

    def fits(self, config, arch: Mapping[str, Any], with_minimum: bool = True) -> bool:
        """Whether the child ``arch`` costs at most :attr:`maximum` (and, ``with_minimum``, at least
        :attr:`minimum`)."""
        return (self.minimum if with_minimum else 0) <= self.child(config, arch) <= self.maximum

    def smallest(self, config, with_weights: bool = False) -> float:
        """The cost of the cheapest child whose cell reads its inputs and, ``with_weights``, has weights
        on a path from them: one cell, the cheapest op but ``zero`` (``with_weights``: the cheapest op with
        weights) on one edge from an input and on one edge from each other group of inputs the cell must
        read (:func:`space.input_groups`), the cheapest op on the others; infinite when no op qualifies."""
        def cheapest(ops) -> float:
            return min((self.op_cost[n] for n in ops), default=math.inf)
        reading = [n for n in config.op_names if n != "zero"]
        first = [n for n in reading if has_weights(config, n)] if with_weights else reading
        groups = len(input_groups(config))
        return (self.once + self.per_cell + cheapest(first) + cheapest(reading) * (groups - 1)
                + cheapest(config.op_names) * (len(config.edge_labels) - groups))

    def expected(self, config, op_probs: torch.Tensor, depth_probs: torch.Tensor) -> torch.Tensor:
        """``E[cost]`` under op probabilities ``[E, O]`` and depth probabilities ``[K_max]``."""
        per_op = [self.op_cost[n] for n in config.op_names]
        return cost.expected_additive_cost(per_op, self.per_cell, self.once, op_probs, depth_probs)

    def penalty(self, expected: torch.Tensor) -> torch.Tensor:
        """``|expected / maximum - 1|`` when :attr:`two_sided` (0 at the budget, 1 at twice or at none
        of it), else ``max(0, expected / maximum - 1)`` (0 anywhere within it)."""
        excess = expected / float(self.maximum) - 1
        return excess.abs() if self.two_sided else excess.clamp(min=0)


def has_weights(config, op: str) -> bool:
    """Whether the op ``op`` has weights (a convolution; not a pooling, ``skip`` or ``zero``)."""
    return cost.op_params(op, config.embed_dim) > 0


def params_budget(config, max_params: int, include_embedding: bool = True, tolerance: float = 1.0) -> Budget:
    """Deployed parameters (:func:`cost.child_params`) at most ``max_params`` and, when the space
    has such a child, at least ``(1 - tolerance) * max_params`` (``tolerance`` 1: no floor, the
    ceiling's hinge penalty; 0: exactly ``max_params``)."""
    once = cost.head_params(config) + (cost.embedding_params(config) if include_embedding else 0)
    minimum = math.ceil(max_params * (1 - tolerance))
    return Budget("max_params", {n: cost.op_params(n, config.embed_dim) for n in config.op_names},
                  cost.attention_params(config), once, max_params, minimum, two_sided=minimum > 0)


def speed_budget(table: LatencyTable, min_speedup: float, tolerance: float = 1.0) -> Budget:
    """Predicted seconds (:meth:`LatencyTable.child_seconds`) at most the reference's divided by
    ``min_speedup`` and, for the export when the space has such a child, at least ``1 - tolerance``
    of that (so at most ``min_speedup / (1 - tolerance)`` times as fast); its penalty is a ceiling
    only (:class:`Budget`)."""
    maximum = table.reference_seconds / min_speedup
    return Budget("min_speedup", dict(table.op_seconds), table.cell_seconds, table.once_seconds, maximum,
                  maximum * (1 - tolerance), unit=maximum / SECONDS_RESOLUTION)


def budgets_of(space_config, config, latency: Optional[LatencyTable] = None) -> list[Budget]:
    """The budgets an :class:`config.ArchitectureConfig` sets on the space ``space_config``:
    ``max_params`` and ``min_speedup`` (which needs the machine's ``latency`` table)."""
    budgets = []
    if config.max_params is not None:
        budgets.append(params_budget(space_config, config.max_params, not config.budget_excludes_embedding,
                                     config.budget_tolerance))
    if config.min_speedup is not None:
        if latency is None:
            raise ValueError("min_speedup needs the machine's latency table (workflows.speed.latency_table)")
        budgets.append(speed_budget(latency, config.min_speedup, config.budget_tolerance))
    return budgets


def check_budgets(config, budgets: Sequence[Budget]) -> None:
    """A :class:`UserError` naming the setting and the cheapest possible child when no child fits a budget."""
    for budget in budgets:
        smallest = budget.smallest(config)
        if budget.maximum >= smallest:
            continue
        if budget.setting == "max_params":
            embedding = cost.embedding_params(config)
            what = (f"the embedding alone has {embedding:,} (exclude it from the budget with "
                    f"--budget-excludes-embedding)" if budget.once > embedding else "without the embedding")
            raise UserError(f"search setting max_params {int(budget.maximum):,} is below the smallest student of "
                            f"this space ({int(smallest):,} params; {what}); raise it")
        raise UserError(f"search setting {budget.setting}: no student of this space is that fast on this machine "
                        f"(the fastest one is predicted to take {smallest / budget.maximum:.2f}x the time allowed); "
                        f"lower it")


def budget_warnings(config, budgets: Sequence[Budget]) -> list[str]:
    """A line for each budget that only children without cell weights meet (it is below the
    cheapest child with weights, :meth:`Budget.smallest`): the exported student is
    then a bag of embeddings."""
    lines = []
    for budget in budgets:
        smallest = budget.smallest(config, with_weights=True)
        if budget.maximum >= smallest or math.isinf(smallest):  # infinite: no op has weights, nothing to keep
            continue
        if budget.setting == "max_params":
            lines.append(f"search setting max_params {int(budget.maximum):,}: only students whose cells have no "
                         f"weights fit it (the smallest with weights has {int(smallest):,} params), so the exported "
                         f"cell will have none; raise it to keep weights in the cell")
        else:
            lines.append(f"search setting {budget.setting}: only students whose cells have no weights are that fast "
                         f"(the fastest with weights is predicted to take {smallest / budget.maximum:.2f}x the time "
                         f"allowed), so the exported cell will have none; lower it to keep weights in the cell")
    return lines


def derive_within_budget(config, op_probs: Mapping[str, Mapping[str, float]], depth_probs: Mapping[int, float],
                         budgets: Sequence[Budget] = ()) -> Dict[str, object]:
    """The child of highest probability (sum of log-probabilities over the edges and the depth)
    whose cell reads its inputs (:func:`space.reads_inputs`) and that is within every budget, in
    this order of preference: a cell with weights within ``[minimum, maximum]`` of every budget; one
    with weights within every ``maximum``; any cell within ``[minimum, maximum]``; any within every
    ``maximum``. Without budgets: the most probable child whose cell reads its inputs.

    ``op_probs``: ``{edge label: {op: probability}}``; ``depth_probs``: ``{K: probability}``
    (what :meth:`AdaBertLightningModule.export_probs` gives). For every depth K, a dynamic
    programme over the edges (in node order) keeps, for each cell cost (in each budget's ``unit``),
    which nodes depend on the inputs so far, and whether the cell has weights on such a node's
    edges, the best choice so far; the bounds are then checked on the exact costs.
    The inputs matter: each edge's most probable op can leave every node zero (a dead cell exported
    on MRPC: ``max_pool_3`` from two nodes that were ``zero`` from both inputs). The lower bound and
    the weights matter: distributions that meet a budget in expectation can still be flat enough
    that their single most probable child is parameter-free, or far cheaper.
    """
    check_budgets(config, budgets)

    def log(p: float) -> float:
        return math.log(p) if p > 0 else -math.inf

    # Each op's cost per budget, in units, and whether it has weights: the same on every edge.
    op_units = {op: tuple(round(b.op_cost[op] / b.unit) for b in budgets) for op in config.op_names}
    op_weighted = {op: has_weights(config, op) for op in config.op_names}
    # best[(cell cost per budget in units, per input group the nodes depending on it, has weights)]
    #     = (log-probability, ops)
    State = Tuple[Tuple[int, ...], Tuple[FrozenSet[int], ...], bool]
    best: Dict[State, Tuple[float, Sequence[str]]] = {((0,) * len(budgets), input_groups(config), False): (0.0, ())}
    for j, i in edges(config.num_nodes):
        label = edge_label(j, i)
        step: Dict[State, Tuple[float, Sequence[str]]] = {}
        for (total, reached, weighted), (score, ops) in best.items():
            for op in config.op_names:
                carries = op != "zero" and any(i in nodes for nodes in reached)  # inputs into node j
                fed = tuple(nodes | {j} if op != "zero" and i in nodes else nodes for nodes in reached)
                candidate = (score + log(op_probs[label][op]), (*ops, op))
                key = (tuple(t + u for t, u in zip(total, op_units[op])), fed,
                       weighted or (carries and op_weighted[op]))
                if key not in step or candidate[0] > step[key][0]:
                    step[key] = candidate
        best = step
    # The cells that read their inputs (each group of them), most probable first.
    cells = sorted(((score, ops, weighted) for (_, reached, weighted), (score, ops) in best.items()
                    if all(any_intermediate(nodes) for nodes in reached)), key=lambda v: -v[0])

    def most_probable(with_minimum: bool, with_weights: bool) -> Optional[Dict[str, object]]:
        chosen: Optional[Tuple[float, Dict[str, object]]] = None
        for depth in range(1, config.k_max + 1):
            for score, ops, weighted in cells:
                if with_weights and not weighted:
                    continue
                arch = {**dict(zip(config.edge_labels, ops)), DEPTH_LABEL: depth}
                if all(b.fits(config, arch, with_minimum) for b in budgets):
                    score += log(depth_probs[depth])
                    if chosen is None or score > chosen[0]:
                        chosen = (score, arch)
                    break  # the most probable cell that fits at this depth
        return None if chosen is None else chosen[1]

    floors = [True, False] if any(b.minimum > 0 for b in budgets) else [False]
    for with_weights in (True, False) if budgets else (False,):
        for with_minimum in floors:
            arch = most_probable(with_minimum, with_weights)
            if arch is not None:
                return arch
    raise UserError("search settings " + " and ".join(b.setting for b in budgets) +
                    ": no student of this space meets them all at once; relax one")
