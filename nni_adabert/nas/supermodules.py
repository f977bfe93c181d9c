"""The supernet modules of the AdaBERT search: what a one-shot strategy puts in place of
the space's choices (NNI's ``supermodule`` layer, beside the strategy).

- :class:`StraightThroughLayerChoice` / :class:`StraightThroughDepthChoice`: AdaBERT's
  Gumbel straight-through edges and depth (:class:`strategy.AdaBertStrategy` installs them);
- :class:`DifferentiableDepthChoice`: the depth for NNI's own DARTS / GumbelDARTS, which
  :meth:`AdaBertSpace.extra_oneshot_hooks` hands them;
- :func:`efficiency_loss`: ``L_E`` of the relaxed choices a mutated space used in its last
  forward, whichever of these modules (or NNI's) it holds.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from nni.nas.nn.pytorch import LayerChoice
from nni.nas.oneshot.pytorch.supermodule.base import BaseSuperNetModule

from ..model import cost
from ..model.depth import DepthChoice
from . import losses

__all__ = [
    "GumbelDraw", "gumbel_straight_through", "StraightThroughLayerChoice", "StraightThroughDepthChoice",
    "StraightThroughBase", "STRAIGHT_THROUGH_TYPES", "argmax_draw", "DifferentiableDepthChoice", "relaxed_weights",
    "efficiency_loss",
]


@dataclass
class GumbelDraw:
    """One straight-through sample of a choice with ``n`` candidates.

    Attributes:
        index: the chosen candidate (argmax of the relaxed sample, or forced).
        gates: ``[n]``: value = one-hot of ``index``; gradient = that of ``relaxed``.
        relaxed: ``[n]`` Gumbel-softmax sample ``y`` (``None`` for a deterministic argmax draw).
    """

    index: int
    gates: torch.Tensor
    relaxed: Optional[torch.Tensor]


def gumbel_straight_through(logits: torch.Tensor, tau: float, generator: Optional[torch.Generator] = None,
                            force_index: Optional[int] = None) -> GumbelDraw:
    """Draw ``y = softmax((logits + g) / tau)``, ``g ~ Gumbel(0, 1)``; gates ``hard + y - y.detach()``.

    Args:
        logits: ``[n]`` architecture logits (log theta, up to a constant).
        tau: temperature.
        generator: CPU generator for the noise (seedable, independent of the global RNG).
        force_index: use this candidate as the hard sample instead of ``argmax y``
            (still a valid straight-through estimator; used by tests and benchmarks).
    """
    u = torch.rand(logits.shape, generator=generator, dtype=torch.float32)
    g = -torch.log(-torch.log(u.clamp(1e-10, 1.0 - 1e-7))).to(device=logits.device, dtype=logits.dtype)
    y = torch.softmax((logits + g) / tau, dim=-1)
    index = int(torch.argmax(y.detach()).item()) if force_index is None else int(force_index)
    hard = torch.zeros_like(y)
    hard[index] = 1.0
    # Value: exactly `hard` (y - y == 0 for finite y). Gradient: that of y.
    return GumbelDraw(index, hard + (y - y.detach()), y)


def argmax_draw(logits: torch.Tensor, index: Optional[int] = None) -> GumbelDraw:
    index = int(torch.argmax(logits.detach()).item()) if index is None else index
    hard = torch.zeros(logits.shape, device=logits.device, dtype=logits.dtype)
    hard[index] = 1.0
    return GumbelDraw(index, hard, None)


class StraightThroughBase(BaseSuperNetModule):
    """Shared bits: the architecture logits, the current draw and NNI's export protocol."""

    _arch_alpha: nn.Parameter
    draw: Optional[GumbelDraw]
    full: bool

    @property
    def values(self) -> list:
        raise NotImplementedError

    def current_draw(self) -> GumbelDraw:
        # Never resampled (e.g. the mutated space used directly): behave as the argmax child.
        return self.draw if self.draw is not None else argmax_draw(self._arch_alpha)

    def relaxed_weights(self) -> Optional[torch.Tensor]:
        """The relaxed sample of the current draw (``None`` under an argmax draw)."""
        return None if self.draw is None else self.draw.relaxed

    def resample(self, memo: Dict[str, Any]) -> Dict[str, Any]:
        # Sampling is done centrally by AdaBertLightningModule.resample (one draw per label).
        return {} if self.label in memo or self.draw is None else {str(self.label): self.values[self.draw.index]}

    def export(self, memo: Dict[str, Any]) -> Dict[str, Any]:
        if self.label in memo:
            return {}
        # str(): NNI labels are a str subclass, which pickles badly into checkpoints.
        return {str(self.label): self.values[int(torch.argmax(self._arch_alpha).item())]}

    def export_probs(self, memo: Dict[str, Any]) -> Dict[str, Any]:
        if self.label in memo:
            return {}
        return {str(self.label): dict(zip(self.values, torch.softmax(self._arch_alpha.detach(), -1).cpu().tolist()))}

    def arch_parameters(self):
        yield self._arch_alpha


class StraightThroughLayerChoice(LayerChoice, StraightThroughBase):
    """An edge of the supernet. ``forward(x [B,D,L], mask [B,1,L]) -> [B,D,L]``.

    Single-path: ``gate[i] * op_i(x)`` for the sampled ``i`` only. Full: ``sum_o gate_o op_o(x)``.
    ``_arch_alpha`` is the same ``nn.Parameter`` object in every cell (one alpha per label).
    """

    def __init__(self, candidates: Dict[str, nn.Module], alpha: nn.Parameter, label: str, full: bool = False):
        super().__init__(candidates, label=label)
        if len(alpha) != len(self.names):
            raise ValueError(f"alpha of {label!r} has {len(alpha)} entries for {len(self.names)} candidates")
        self._arch_alpha = alpha
        self.full = full
        self.draw = None

    @classmethod
    def mutate(cls, module: nn.Module, name: str, memo: Dict[str, Any], mutate_kwargs: Dict[str, Any]):
        if type(module) is LayerChoice:
            return cls(module.candidates, memo[module.label], module.label, mutate_kwargs.get("full", False))
        return None

    @property
    def values(self) -> list:
        return list(self.names)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        draw = self.current_draw()
        if self.full:
            out = None
            for i, name in enumerate(self.names):
                term = draw.gates[i] * self[name](x, mask)
                out = term if out is None else out + term
            return out  # type: ignore[return-value]
        return draw.gates[draw.index] * self[self.names[draw.index]](x, mask)


class StraightThroughDepthChoice(DepthChoice, StraightThroughBase):
    """The depth of the supernet (see :class:`model.depth.DepthChoice` for the protocol).

    Single-path: ``cells_needed = K`` so only cells 1..K run; returns ``gate_K * pooled_K``
    and KD term ``[(K, gate_K)]``. Full: all cells run; ``sum_k gate_k pooled_k`` and one
    KD term per depth.

    ``every_depth``: during a sampled (training) forward all cells run as in full, and the
    space also returns every depth's logits (:attr:`supervises_every_depth`), so the loss
    trains each depth's child every step. Single-path alone trains cell k only when a depth
    >= k is drawn (cell 1 every step, cell 8 one step in eight at the start), and the
    better-trained shallow children then win the depth choice.
    """

    def __init__(self, k_max: int, label: str, alpha: nn.Parameter, full: bool = False, every_depth: bool = False):
        super().__init__(k_max, label)
        self._arch_alpha = alpha
        self.full = full
        self.every_depth = every_depth
        self.draw = None

    @classmethod
    def mutate(cls, module: nn.Module, name: str, memo: Dict[str, Any], mutate_kwargs: Dict[str, Any]):
        if type(module) is DepthChoice:
            return cls(module.k_max, module.label, memo[module.label], mutate_kwargs.get("full", False),
                       mutate_kwargs.get("every_depth", False))
        return None

    @property
    def values(self) -> list:
        return list(range(1, self.k_max + 1))

    @property
    def supervises_every_depth(self) -> bool:
        # Only under a sampled draw: the argmax child (validation, export) runs its own K cells.
        return self.every_depth and self.current_draw().relaxed is not None

    def _runs_every_depth(self) -> bool:
        return self.full or self.supervises_every_depth

    @property
    def cells_needed(self) -> Optional[int]:
        return None if self._runs_every_depth() else self.current_draw().index + 1

    def forward(self, candidates: List[torch.Tensor]) -> torch.Tensor:
        draw = self.current_draw()
        if self._runs_every_depth():
            out = None
            for k, c in enumerate(candidates):
                term = draw.gates[k] * c
                out = term if out is None else out + term
            return out  # type: ignore[return-value]
        return draw.gates[draw.index] * candidates[draw.index]

    def depth_terms(self, n_run: int) -> List[Tuple[int, Optional[torch.Tensor]]]:
        draw = self.current_draw()
        if self._runs_every_depth():
            return [(k, draw.gates[k - 1]) for k in range(1, n_run + 1)]
        return [(draw.index + 1, draw.gates[draw.index])]


STRAIGHT_THROUGH_TYPES = (StraightThroughLayerChoice, StraightThroughDepthChoice)


class DifferentiableDepthChoice(DepthChoice, BaseSuperNetModule):
    """Adapter so NNI's built-in DARTS / GumbelDARTS can search the depth.

    Mirrors NNI's ``DifferentiableMixedInput``: all ``k_max`` cells run and the classifier
    sees ``sum_k softmax(alpha)_k * pooled_k`` (``softmax`` is whatever the strategy hands
    over: plain for DARTS, soft Gumbel for GumbelDARTS). Installed by
    :meth:`AdaBertSpace.extra_oneshot_hooks`.
    """

    def __init__(self, k_max: int, label: str, alpha: nn.Parameter, softmax: nn.Module):
        super().__init__(k_max, label)
        self._arch_alpha = alpha
        self._softmax = softmax
        self._last_weights: Optional[torch.Tensor] = None

    @classmethod
    def mutate(cls, module: nn.Module, name: str, memo: Dict[str, Any], mutate_kwargs: Dict[str, Any]):
        if type(module) is DepthChoice:
            if module.label not in memo:
                raise KeyError(f"depth choice {module.label!r} not found in memo")
            return cls(module.k_max, module.label, memo[module.label], mutate_kwargs.get("softmax", nn.Softmax(-1)))
        return None

    @property
    def cells_needed(self) -> Optional[int]:
        return None

    def forward(self, candidates: List[torch.Tensor]) -> torch.Tensor:
        weights = self._softmax(self._arch_alpha)
        self._last_weights = weights
        return sum(w * c for w, c in zip(weights, candidates))  # type: ignore[return-value]

    def depth_terms(self, n_run: int) -> List[Tuple[int, Optional[torch.Tensor]]]:
        w = self._last_weights if self._last_weights is not None else self._softmax(self._arch_alpha)
        return [(k, w[k - 1]) for k in range(1, n_run + 1)]

    def relaxed_weights(self) -> torch.Tensor:
        return self._last_weights if self._last_weights is not None else self._softmax(self._arch_alpha)

    def resample(self, memo):
        return {}

    def export(self, memo):
        if self.label in memo:
            return {}
        return {str(self.label): int(torch.argmax(self._arch_alpha).item()) + 1}

    def export_probs(self, memo):
        if self.label in memo:
            return {}
        probs = torch.softmax(self._arch_alpha.detach(), -1).cpu().tolist()
        return {str(self.label): dict(zip(range(1, self.k_max + 1), probs))}

    def arch_parameters(self):
        yield self._arch_alpha


def relaxed_weights(module: nn.Module) -> Optional[torch.Tensor]:
    """The relaxed choice vector a supernet module used in its last forward, if it has one."""
    fn = getattr(module, "relaxed_weights", None)
    if callable(fn):
        return fn()
    if hasattr(module, "_arch_alpha") and hasattr(module, "_softmax"):   # NNI's DARTS modules
        return module._softmax(module._arch_alpha)
    return None


@functools.lru_cache(maxsize=None)
def _op_costs(op_names: Tuple[str, ...], dim: int) -> torch.Tensor:
    # Normalized SIZE + FLOPs per op at 128 tokens (the paper's ops scale with L alike; align's L^2, see cost.py).
    return cost.normalized_op_costs(op_names, dim)


def efficiency_loss(space: nn.Module) -> Optional[torch.Tensor]:
    """``L_E`` (:func:`losses.efficiency_loss`) of the relaxed choices ``space`` used in its last
    forward; ``None`` when ``space`` is not a differentiable ``AdaBertSpace`` supernet (a raw
    space or a frozen child: nothing to penalize)."""
    if not isinstance(getattr(space, "depth", None), DepthChoice):  # a frozen child's depth is a number
        return None
    config = space.config
    op_weights = [relaxed_weights(space.cells[0].edges[label]) for label in config.edge_labels]
    depth_weights = relaxed_weights(space.depth)
    if depth_weights is None or any(w is None for w in op_weights):
        return None
    return losses.efficiency_loss(torch.stack(op_weights), depth_weights, _op_costs(config.op_names, config.embed_dim))
