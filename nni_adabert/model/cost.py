"""Analytic parameter and FLOP counts of ops, children and the efficiency-loss cost vector.

Conventions (checked against ``sum(p.numel())`` and ``torch.utils.flop_counter.FlopCounterMode``
in ``tests/test_space.py``):

- **Params** count trainable parameters. A conv op has ``D*D*k`` conv weights (no bias)
  plus ``2*D`` BatchNorm affine parameters; pooling, skip and zero have none. BN running
  statistics are buffers, not parameters.
- **FLOPs** are per example, for a sequence of length ``L`` (for pair tasks the longer
  of the two texts). Like ``FlopCounterMode`` we count the matmul-class operations, 2 per
  multiply-accumulate: a conv op costs ``2*D*D*k*L``, ``align`` ``4*D*L*L`` (its two batched
  matmuls) and a ``Linear(D, C)`` ``2*D*C``. In the ``matching`` space the cells run on both
  texts of a pair, so a child's cells cost twice per example.
  ``FlopCounterMode`` does not count elementwise work (ReLU, BatchNorm, pooling, masking,
  sums, softmax); ``elementwise=True`` in :func:`op_flops` adds our own count of it for
  the ops: ReLU 1 + folded BatchNorm 2 per element for a conv, ``k`` per element for
  average pooling (``k-1`` adds, 1 divide), ``k-1`` comparisons for max pooling, 8 per element
  for ``align`` (scaling both texts, the masked softmax, the product). That
  elementwise count is included in the efficiency-loss cost vector so pooling is cheap
  but not free.
- **Deployed size** (:func:`child_params`) includes the embedding (word + position +
  LayerNorm) unless ``include_embedding=False``, the K cells (ops + node attention) and
  the final classifier; the student probes are training-time only and excluded unless
  ``include_probes=True``.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Sequence

import torch

from .ops import OPS, conv_spec

__all__ = [
    "op_params", "op_flops", "op_cost_table", "normalized_op_costs", "embedding_params",
    "attention_params", "head_params", "cell_params", "child_params", "child_flops", "additive_cost",
    "expected_additive_cost",
    "expected_child_params",
]


def op_params(name: str, dim: int) -> int:
    """Trainable parameters of op ``name`` at width ``dim``."""
    spec = conv_spec(name)
    if spec is None:
        _check_known(name)
        return 0
    k, _ = spec
    return dim * dim * k + 2 * dim


def op_flops(name: str, dim: int, seq_len: int, elementwise: bool = False) -> int:
    """FLOPs of op ``name`` on one example ``[D, L]`` (see the module docstring)."""
    spec = conv_spec(name)
    elements = dim * seq_len
    if spec is not None:
        k, _ = spec
        return 2 * dim * k * elements + (3 * elements if elementwise else 0)
    _check_known(name)
    if name == "align":
        return 4 * dim * seq_len * seq_len + (8 * elements if elementwise else 0)
    if not elementwise:
        return 0
    if name.startswith("avg_pool_"):
        return int(name.rsplit("_", 1)[1]) * elements
    if name.startswith("max_pool_"):
        return (int(name.rsplit("_", 1)[1]) - 1) * elements
    return 0  # skip, zero


def op_cost_table(op_names: Sequence[str], dim: int, seq_len: int) -> Dict[str, Dict[str, int]]:
    """``{op: {"params": ..., "flops": ... (elementwise included)}}`` for one edge."""
    return {n: {"params": op_params(n, dim), "flops": op_flops(n, dim, seq_len, elementwise=True)} for n in op_names}


def normalized_op_costs(op_names: Sequence[str], dim: int, seq_len: int = 128) -> torch.Tensor:
    """The per-op cost vector of the efficiency loss: ``(SIZE(o)/max SIZE + FLOPs(o)/max FLOPs) / 2``.

    Returns ``[O]`` float32 in ``[0, 1]`` (the costliest op costs 1). The FLOPs of the paper's ops are
    proportional to ``L``, so among them the vector does not depend on ``seq_len``; ``align``'s grow with ``L^2``.
    """
    table = op_cost_table(op_names, dim, seq_len)
    max_p = max(max(v["params"] for v in table.values()), 1)
    max_f = max(max(v["flops"] for v in table.values()), 1)
    return torch.tensor([(table[n]["params"] / max_p + table[n]["flops"] / max_f) / 2 for n in op_names],
                        dtype=torch.float32)


def embedding_params(config: Any) -> int:
    """Word + position embeddings + LayerNorm."""
    d = config.embed_dim
    pos = config.max_positions * d if config.position_embeddings else 0
    return config.vocab_size * d + pos + 2 * d


def attention_params(config: Any) -> int:
    """A cell's node-attention scorer ``Linear(D, 1)``."""
    return config.embed_dim + 1


def head_params(config: Any) -> int:
    """The classifier ``Linear(head_dim, C)`` (and each student probe, which has its shape)."""
    return config.head_dim * config.num_labels + config.num_labels


def cell_params(config: Any, arch: Mapping[str, Any]) -> int:
    """One cell: the chosen op of every edge + the node-attention scorer."""
    return sum(op_params(arch[label], config.embed_dim) for label in config.edge_labels) + attention_params(config)


def child_params(config: Any, arch: Mapping[str, Any], include_embedding: bool = True,
                 include_probes: bool = False) -> int:
    """Parameters of the child ``arch`` (deployed size by default: probes excluded)."""
    depth = int(arch["depth"])
    head = head_params(config)
    total = depth * cell_params(config, arch) + head
    if include_embedding:
        total += embedding_params(config)
    if include_probes:
        total += depth * head
    return total


def child_flops(config: Any, arch: Mapping[str, Any], seq_len: int, include_probes: bool = False) -> int:
    """Matmul-class FLOPs of the child on one example of length ``seq_len``.

    Convs and ``align``, the node-attention scorers (``2*D`` per intermediate node), once per
    text the cells run on, and the classifier (``2*head_dim*C``); the probes (``2*head_dim*C``
    per cell) if ``include_probes``. The embedding is a lookup (0 FLOPs).
    """
    d, c, depth = config.embed_dim, config.num_labels, int(arch["depth"])
    per_cell = sum(op_flops(arch[label], d, seq_len) for label in config.edge_labels) + 2 * d * config.num_nodes
    head = 2 * config.head_dim * c
    total = depth * per_cell * config.texts_per_example + head
    if include_probes:
        total += depth * head
    return total


def additive_cost(config: Any, arch: Mapping[str, Any], op_cost: Mapping[str, float], per_cell: float,
                  once: float) -> float:
    """``once + K * (per_cell + sum over edges of op_cost[op])`` of the child ``arch``: the form of
    every additive cost of a child (its parameters for a budget, its measured time)."""
    return once + int(arch["depth"]) * (per_cell + sum(op_cost[arch[label]] for label in config.edge_labels))


def expected_additive_cost(op_cost: Sequence[float], per_cell: float, once: float, op_probs: torch.Tensor,
                           depth_probs: torch.Tensor) -> torch.Tensor:
    """``E[once + K * (per_cell + sum over edges of op_cost[op])]`` under independent op / depth
    distributions, differentiable in them (``E[K * cell] = E[K] * E[cell]``: the depth and the ops
    are drawn independently) of :func:`additive_cost`: a child's parameters
    (:func:`expected_child_params`), its measured time (:class:`latency.LatencyTable`).

    Args:
        op_cost: ``[O]`` cost of one edge per op, in ``config.op_names`` order.
        op_probs: ``[E, O]`` probabilities per edge (rows in ``config.edge_labels`` order).
        depth_probs: ``[K_max]`` probabilities of depth 1..K_max.
    """
    per_op = torch.tensor([float(c) for c in op_cost], dtype=op_probs.dtype, device=op_probs.device)
    cell = (op_probs * per_op).sum() + per_cell
    k = torch.arange(1, depth_probs.numel() + 1, dtype=depth_probs.dtype, device=depth_probs.device)
    return (depth_probs * k).sum() * cell + once


def expected_child_params(config: Any, op_probs: torch.Tensor, depth_probs: torch.Tensor,
                          include_embedding: bool = True) -> torch.Tensor:
    """Expected deployed size under independent op / depth distributions (:func:`expected_additive_cost`)."""
    once = head_params(config) + (embedding_params(config) if include_embedding else 0)
    return expected_additive_cost([op_params(n, config.embed_dim) for n in config.op_names], attention_params(config),
                                  once, op_probs, depth_probs)


def _check_known(name: str) -> None:
    if name not in OPS:
        raise KeyError(f"unknown op {name!r}")
