"""The AdaBERT objective ``L = (1-gamma) L_CE + gamma L_KD + beta L_E`` (paper sections 2.3-2.5).

Pure functions on tensors. Shapes: ``B`` batch, ``C`` classes, ``J`` teacher layers
(one probe per layer; the last is the teacher's own head), ``K`` student depth,
``E`` edges of a cell, ``O`` candidate ops.

Labels use ``-100`` (:data:`IGNORE_LABEL`) for augmented examples, which have no gold
label: they count in ``L_KD`` (with the teacher's final prediction as the label for the
attentive weights) but not in ``L_CE``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..config import DEFAULT_BETA
from ..data.encoding import IGNORE_LABEL

__all__ = [
    "layer_mapping", "kd_targets", "attentive_weights", "soft_cross_entropy",
    "probe_kd_loss", "distillation_loss", "final_kd_loss", "ce_loss", "efficiency_loss", "total_loss", "LossParts",
    "adabert_loss",
]




def layer_mapping(student_depth: int, teacher_layers: int) -> List[int]:
    """Teacher layer ``j(m) = ceil(m * J / K)`` for student cells ``m = 1..K`` (1-based; ``K -> J``).

    >>> layer_mapping(4, 6)
    [2, 3, 5, 6]
    """
    if student_depth < 1 or teacher_layers < 1:
        raise ValueError(f"depths must be >= 1, got K={student_depth}, J={teacher_layers}")
    # Integer ceil: no float rounding (the flaw of earlier code was int() vs ceil()).
    return [(m * teacher_layers + student_depth - 1) // student_depth for m in range(1, student_depth + 1)]


def kd_targets(labels: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Labels for the attentive weights: gold, or the teacher's final prediction where ``-100``.

    Args:
        labels: ``[B]`` long; teacher_logits: ``[B, J, C]``.

    Returns:
        ``[B]`` long.
    """
    teacher_pred = teacher_logits[:, -1, :].argmax(dim=-1)
    return torch.where(labels == IGNORE_LABEL, teacher_pred, labels)


def attentive_weights(teacher_logits: torch.Tensor, targets: torch.Tensor, student_depth: int) -> torch.Tensor:
    """Per-example weights ``w_m = softmax_m(-CE(P^T_{j(m)}(x), y))`` over the K student cells.

    Args:
        teacher_logits: ``[B, J, C]``; targets: ``[B]`` long (see :func:`kd_targets`).

    Returns:
        ``[B, K]``, rows summing to 1. Teacher layers that already predict the label well
        weigh more. Depends on the teacher only (no gradient).
    """
    idx = torch.tensor(layer_mapping(student_depth, teacher_logits.shape[1]), device=teacher_logits.device) - 1
    mapped = teacher_logits[:, idx, :].float()                                    # [B, K, C]
    ce = F.cross_entropy(mapped.transpose(1, 2), targets[:, None].expand(-1, student_depth), reduction="none")
    return torch.softmax(-ce, dim=1).detach()


def soft_cross_entropy(target_logits: torch.Tensor, student_logits: torch.Tensor,
                       temperature: float = 1.0) -> torch.Tensor:
    """``CE(softmax(t/T), softmax(s/T)) = -sum_c softmax(t/T)_c log softmax(s/T)_c``.

    Args:
        target_logits, student_logits: ``[..., C]``.

    Returns:
        ``[...]``.
    """
    p = torch.softmax(target_logits.float() / temperature, dim=-1)
    return -(p * torch.log_softmax(student_logits.float() / temperature, dim=-1)).sum(dim=-1)


def probe_kd_loss(student_probe_logits: Sequence[torch.Tensor], teacher_logits: torch.Tensor,
                  labels: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Hierarchical probe distillation for a student of depth ``K = len(student_probe_logits)``.

    ``L_KD = mean_x sum_{m<=K} w_m(x) * CE(softmax(P^T_{j(m)}(x)/T), softmax(P^S_m(x)/T))``.

    Args:
        student_probe_logits: K tensors ``[B, C]`` (cells 1..K).
        teacher_logits: ``[B, J, C]`` per-teacher-layer probe logits.
        labels: ``[B]`` long, ``-100`` for unlabeled examples.

    Returns:
        scalar.
    """
    k = len(student_probe_logits)
    weights = attentive_weights(teacher_logits, kd_targets(labels, teacher_logits), k)         # [B, K]
    idx = torch.tensor(layer_mapping(k, teacher_logits.shape[1]), device=teacher_logits.device) - 1
    per_cell = soft_cross_entropy(teacher_logits[:, idx, :], torch.stack(list(student_probe_logits), dim=1),
                                  temperature)                                                 # [B, K]
    return (weights * per_cell).sum(dim=1).mean()


def distillation_loss(probe_logits: Sequence[torch.Tensor], depth_terms: Sequence[Tuple[int, Optional[torch.Tensor]]],
                      teacher_logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``sum over (k, weight) in depth_terms of weight * probe_kd_loss(probe_logits[:k])``.

    ``depth_terms`` comes from the model output: ``[(K, None)]`` for a child (weight 1);
    ``[(K_sampled, gate_K)]`` for the single-path supernet (value 1, gradient of the
    relaxed depth sample); one term per depth for full straight-through or DARTS.
    """
    if not depth_terms:
        depth_terms = [(len(probe_logits), None)]
    total: Optional[torch.Tensor] = None
    for k, weight in depth_terms:
        term = probe_kd_loss(probe_logits[:k], teacher_logits, labels, temperature)
        if weight is not None:
            term = weight * term
        total = term if total is None else total + term
    return total  # type: ignore[return-value]


def final_kd_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
                  mse: bool = False) -> torch.Tensor:
    """Plain last-layer distillation (the paper's "Base-KD", Table 4): the student's final
    classifier against the teacher's own head (its last layer), no probes, no attentive weights.

    ``mean_x CE(softmax(P^T_J(x)/T), softmax(logits(x)/T))``, or with ``mse`` the squared
    distance of the raw logits, ``mean_x ||P^T_J(x) - logits(x)||^2`` (Tang et al. 2019,
    "Distilling task-specific knowledge from BERT into simple neural networks": better than
    soft targets for their small students; no temperature).

    Args:
        logits: ``[B, C]`` the student's final classifier; teacher_logits: ``[B, J, C]``.

    Returns:
        scalar.
    """
    if mse:
        return (logits.float() - teacher_logits[:, -1, :].float()).pow(2).sum(dim=-1).mean()
    return soft_cross_entropy(teacher_logits[:, -1, :], logits, temperature).mean()


def ce_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``logits`` ``[B, C]`` on the labeled examples of ``labels`` ``[B]``.

    Mean over labeled examples; 0 (still attached to the graph) if there are none.
    """
    labeled = labels != IGNORE_LABEL
    if not bool(labeled.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_LABEL)


def efficiency_loss(op_weights: torch.Tensor, depth_weights: torch.Tensor, op_cost: torch.Tensor) -> torch.Tensor:
    """``L_E = (E[K] / K_max) * mean_edges sum_o y_o * cost(o)``, in ``[0, 1]``.

    The paper sums over edges; we average, so that ``L_E`` lies in [0, 1] like the
    normalized op costs and ``beta`` weighs it against CE/KD on the scale the paper's
    beta = 4 and 8 imply (a sum over 9 edges made L_E up to 9x larger and drove every
    search to all-``zero`` cells at depth 1).

    Args:
        op_weights: ``[E, O]`` relaxed (Gumbel-softmax) op choice per edge label.
        depth_weights: ``[K_max]`` relaxed depth choice over ``K = 1..K_max``;
            ``E[K] = sum_k k * y_k``.
        op_cost: ``[O]`` normalized op costs (:func:`model.cost.normalized_op_costs`).

    Returns:
        scalar, differentiable in both ``op_weights`` and ``depth_weights``.
    """
    k_max = depth_weights.shape[-1]
    ks = torch.arange(1, k_max + 1, device=depth_weights.device, dtype=depth_weights.dtype)
    expected_k = (depth_weights * ks).sum()
    return expected_k / k_max * (op_weights * op_cost.to(op_weights)).sum(-1).mean()


def total_loss(ce: torch.Tensor, kd: torch.Tensor, efficiency: Optional[torch.Tensor],
               gamma: float = 0.8, beta: float = DEFAULT_BETA) -> torch.Tensor:
    """``(1 - gamma) * L_CE + gamma * L_KD + beta * L_E`` (``L_E`` = 0 when ``None``)."""
    loss = (1.0 - gamma) * ce + gamma * kd
    if efficiency is not None and beta != 0.0:
        loss = loss + beta * efficiency
    return loss


@dataclass
class LossParts:
    """The total loss and its terms (unweighted). ``every_depth``: the mean over depths of each
    depth's child loss, when the supernet trains every depth (``None`` otherwise)."""

    total: torch.Tensor
    ce: torch.Tensor
    kd: torch.Tensor
    efficiency: Optional[torch.Tensor]
    every_depth: Optional[torch.Tensor] = None


def _kd_loss(logits: torch.Tensor, probe_logits: Sequence[torch.Tensor],
             depth_terms: Sequence[Tuple[int, Optional[torch.Tensor]]], teacher_logits: torch.Tensor,
             labels: torch.Tensor, temperature: float, *, probe_kd: bool, final_kd: bool,
             final_kd_mse: bool) -> torch.Tensor:
    """``L_KD``: the probe term, the final-logit term or their sum (see :func:`adabert_loss`)."""
    kd = distillation_loss(probe_logits, depth_terms, teacher_logits, labels, temperature) if probe_kd else None
    if final_kd:
        final = final_kd_loss(logits, teacher_logits, temperature, mse=final_kd_mse)
        kd = final if kd is None else kd + final
    return kd  # type: ignore[return-value]


def adabert_loss(logits: torch.Tensor, probe_logits: Sequence[torch.Tensor],
                 depth_terms: Sequence[Tuple[int, Optional[torch.Tensor]]], teacher_logits: torch.Tensor,
                 labels: torch.Tensor, efficiency: Optional[torch.Tensor] = None, *,
                 gamma: float = 0.8, beta: float = DEFAULT_BETA, temperature: float = 1.0,
                 probe_kd: bool = True, final_kd: bool = False, final_kd_mse: bool = False,
                 depth_logits: Sequence[torch.Tensor] = ()) -> LossParts:
    """The whole objective from a model output and a batch.

    Args:
        logits: ``[B, C]``; probe_logits: K_run x ``[B, C]``; depth_terms: see
            :func:`distillation_loss`; teacher_logits: ``[B, J, C]``; labels: ``[B]``;
            efficiency: ``L_E`` (:func:`nas.supermodules.efficiency_loss`) or ``None``.
        probe_kd: ``L_KD`` includes the attentive probe distillation over all cells
            (:func:`distillation_loss`; the paper's method, the default).
        final_kd: ``L_KD`` includes the final logits against the teacher's last layer
            (:func:`final_kd_loss`; alone, the paper's "Base-KD"). The probe term never
            trains the final classifier, so a loss without ``L_CE`` (``gamma = 1``) needs this
            term for the student's predictions to learn anything. In a supernet the final
            logits carry the depth gate, so either term sends gradient to the depth choice.
            ``L_KD`` is the sum of the chosen terms; at least one must be chosen.
        final_kd_mse: the final-logit term is the logits' squared distance, not soft cross-entropy.
        depth_logits: K_run x ``[B, C]``, the classifier on each depth's output (a supernet that
            trains every depth): the total adds the mean over ``k`` of depth k's child loss
            ``(1-gamma) L_CE + gamma L_KD``, with constant weights, so every depth's child
            learns every step (the depth gradient still comes from ``depth_terms``).
    """
    if not (probe_kd or final_kd):
        raise ValueError("adabert_loss: L_KD needs probe_kd or final_kd (or both)")
    ce = ce_loss(logits, labels)
    flags = {"probe_kd": probe_kd, "final_kd": final_kd, "final_kd_mse": final_kd_mse}
    kd = _kd_loss(logits, probe_logits, depth_terms, teacher_logits, labels, temperature, **flags)
    total = total_loss(ce, kd, efficiency, gamma, beta)
    every_depth = None
    if depth_logits:
        children = [total_loss(ce_loss(child_logits, labels),
                               _kd_loss(child_logits, probe_logits, [(k, None)], teacher_logits, labels, temperature,
                                        **flags), None, gamma)
                    for k, child_logits in enumerate(depth_logits, start=1)]
        every_depth = torch.stack(children).mean()
        total = total + every_depth
    return LossParts(total, ce, kd, efficiency, every_depth)
