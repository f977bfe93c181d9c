"""The layer count K of a student, as an NNI choice (paper section 2.5.1).

:class:`DepthChoice` holds ``nni.choice('depth', [1..K_max])`` and selects the pooled output
of cell K. A ``Categorical`` gives the plain arch entry ``"depth": 3`` (an ``InputChoice``
would give ``[2]``) and lets a frozen or single-path model run only its first K cells
(``cells_needed``). Supernet versions of it live in :mod:`nas.supermodules`.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import nni
import torch
import torch.nn as nn
from nni.mutable import Sample, ensure_frozen
from nni.nas.nn.pytorch import MutableModule

__all__ = ["DEPTH_LABEL", "DepthChoice"]

DEPTH_LABEL = "depth"


class _FixedDepth(nn.Module):
    def __init__(self, depth: int):
        super().__init__()
        self.depth = depth

    def forward(self, candidates: List[torch.Tensor]) -> torch.Tensor:
        return candidates[self.depth - 1]


class DepthChoice(MutableModule):
    """The layer count K as ``nni.choice(label, [1..k_max])``.

    Protocol used by :class:`AdaBertSpace` (supernet versions override it):

    - ``cells_needed``: how many cells the forward must run (``None`` = all ``k_max``);
    - ``forward(candidates)``: ``candidates`` are the pooled outputs ``[B, head_dim]`` of cells
      1..n; returns the classifier input ``[B, head_dim]``;
    - ``depth_terms(n)``: the ``(k, weight)`` pairs of :class:`AdaBertOutput`;
    - ``supervises_every_depth``: the space also returns the logits of every depth that ran
      (``AdaBertOutput.depth_logits``), and the loss trains each depth's child.

    Un-mutated (NNI dry run) it behaves as the default depth.
    """

    def __init__(self, k_max: int, label: str = DEPTH_LABEL):
        super().__init__()
        self.k_max = k_max
        self.choice = self.add_mutable(nni.choice(label, list(range(1, k_max + 1))))
        self._dry_run_depth: int = ensure_frozen(self.choice)

    @property
    def label(self) -> str:
        return self.choice.label

    @property
    def cells_needed(self) -> Optional[int]:
        return self._dry_run_depth

    @property
    def supervises_every_depth(self) -> bool:
        return False

    def forward(self, candidates: List[torch.Tensor]) -> torch.Tensor:
        return candidates[self._dry_run_depth - 1]

    def depth_terms(self, n_run: int) -> List[Tuple[int, Optional[torch.Tensor]]]:
        return [(self._dry_run_depth, None)]

    def freeze(self, sample: Sample) -> nn.Module:
        self.validate(sample)
        return _FixedDepth(int(self.choice.freeze(sample)))

    def extra_repr(self) -> str:
        return f"k_max={self.k_max}, label={self.label!r}"
