"""The candidate operations of the AdaBERT cell (paper section 2.5.1).

Like DARTS' ``operations.py``: every op is a tiny module built from a name by the
``OPS`` table, and ``OP_NAMES`` fixes their order (the order of the architecture
logits and of the cost vector).

Conventions shared by every op:

- Tensors are channels first: ``x`` is ``[B, D, L]`` (batch, embedding dim, sequence
  length) so that ``Conv1d`` / pooling run along the sequence.
- ``mask`` is ``[B, 1, L]`` float, 1.0 on real tokens and 0.0 on padding.
- Every op takes ``(x, mask)`` and returns ``[B, D, L]`` (SAME padding: the length is
  preserved) that is exactly **zero on padded positions**; inputs are zero there too.
  Because the batch is right-padded, a convolution's zero SAME padding at the end of a
  sentence sees the same zeros as the attention padding, so an example gives the same
  output whatever the padded length of its batch (BatchNorm statistics and pooling
  are masked for the same reason). The supernet and the frozen child use these very
  modules, so their behaviour on padding is identical by construction.

``align`` (beyond the paper, for text pairs in the ``matching`` space of ``space.py``) is the
one op that looks across the batch: there the batch holds the first texts of B pairs, then
their second texts, so row ``r``'s partner text is row ``(r + B) mod 2B``.
"""

from __future__ import annotations

from typing import Callable, Dict, Tuple

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "OP_NAMES", "OPS", "MaskedBatchNorm1d", "ReLUConvBN", "MaskedAvgPool", "MaskedMaxPool",
    "Identity", "Zero", "CrossAlign", "build_op", "conv_spec", "PAIR_OP_NAMES",
]


class MaskedBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm over channels whose batch statistics ignore padded positions.

    Same parameters, buffers and state-dict keys as ``nn.BatchNorm1d`` (so weights load
    into either); only the training-mode statistics differ: mean and variance are taken
    over real tokens only, so they don't depend on how much padding a batch carries.

    Args:
        x: ``[B, D, L]``.
        mask: ``[B, 1, L]`` float (1 = token, 0 = padding).

    Returns:
        ``[B, D, L]``, zero on padded positions.
    """

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if not self.training:
            # Running statistics: a plain per-channel affine map.
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                False, 0.0, self.eps) * mask
        n = mask.sum().clamp_min(1.0)
        mean = (x * mask).sum(dim=(0, 2)) / n                               # [D]
        centered = (x - mean[None, :, None]) * mask
        var = (centered * centered).sum(dim=(0, 2)) / n                     # [D], biased
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                # momentum=None: a cumulative mean over the batches seen, as in nn.BatchNorm1d.
                momentum = 1.0 / self.num_batches_tracked.item() if self.momentum is None else self.momentum
                unbiased = var * (n / (n - 1.0).clamp_min(1.0))
                self.running_mean.lerp_(mean.detach(), momentum)
                self.running_var.lerp_(unbiased.detach(), momentum)
        y = centered * torch.rsqrt(var + self.eps)[None, :, None]
        if self.affine:
            y = y * self.weight[None, :, None] + self.bias[None, :, None]
        return y * mask


class ReLUConvBN(nn.Module):
    """ReLU -> Conv1d (SAME padding, no bias) -> BatchNorm1d, as in the paper.

    ``dilation=2`` gives a real dilated convolution: a kernel of ``k`` taps spread over
    ``2k - 1`` positions (receptive field 5, 9, 13 for k = 3, 5, 7).

    Args:
        x: ``[B, D, L]``; mask: ``[B, 1, L]``.

    Returns:
        ``[B, D, L]``.
    """

    def __init__(self, dim: int, kernel_size: int, dilation: int = 1):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"SAME padding needs an odd kernel size, got {kernel_size}")
        self.conv = nn.Conv1d(dim, dim, kernel_size, padding=dilation * (kernel_size - 1) // 2,
                              dilation=dilation, bias=False)  # BN's shift makes a bias redundant
        self.bn = MaskedBatchNorm1d(dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(F.relu(x)), mask)


def _window_sum(x: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Sum over a stride-1 SAME window of ``x`` ``[B, C, L]`` (zeros beyond the ends): shifted
    slices of one padded copy added up. ``F.avg_pool1d`` ran 5-17x slower on a contiguous
    ``[B, D, L]``: 8 cells of it ran at 29.5x BERT-base's speed, now 110.7x (docs/results.md)."""
    length = x.shape[-1]
    padded = F.pad(x, (kernel_size // 2, kernel_size // 2))
    total = padded[..., :length]
    for shift in range(1, kernel_size):
        total = total + padded[..., shift:shift + length]
    return total


class MaskedAvgPool(nn.Module):
    """Average over a window of ``kernel_size`` real tokens (stride 1, SAME padding).

    Padded positions are not averaged in: the window sum is divided by the number of
    real tokens in the window, not by ``kernel_size``.
    """

    def __init__(self, kernel_size: int = 3):
        super().__init__()
        self.kernel_size = kernel_size

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # x is already zero on padding, so the window sum only counts real tokens.
        count = _window_sum(mask, self.kernel_size)
        return _window_sum(x, self.kernel_size) / count.clamp_min(1.0) * mask


class MaskedMaxPool(nn.Module):
    """Max over a window of ``kernel_size`` real tokens (stride 1, SAME padding).

    Padding is filled with -inf before pooling so it never wins the max (a zero would,
    for all-negative windows).
    """

    def __init__(self, kernel_size: int = 3):
        super().__init__()
        self.kernel_size = kernel_size

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        pad_pos = mask == 0
        out = self._pool(x.masked_fill(pad_pos, float("-inf")))
        return out.masked_fill(pad_pos, 0.0)  # not `* mask`: -inf * 0 is nan

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        """Window max, ``[B, D, L]`` -> ``[B, D, L]`` (the deployment export swaps it, see deploy.py)."""
        return F.max_pool1d(x, self.kernel_size, 1, self.kernel_size // 2)


class Identity(nn.Module):
    """``skip``: the input itself (already zero on padding)."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return x


class Zero(nn.Module):
    """``zero``: discards the edge."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


def _swap_halves(x: torch.Tensor) -> torch.Tensor:
    """``[x_B..x_2B-1, x_0..x_B-1]``: each row's partner (a reshape, not ``shape // 2`` slicing, which
    makes ``torch.export`` fix the batch size)."""
    return x.reshape(2, -1, *x.shape[1:]).flip(0).reshape(x.shape)


class CrossAlign(nn.Module):
    """``align``: each position compared with its soft match in the other text of its pair.

    With ``x̂``, ``ŷ`` the positions scaled to unit RMS (so the op's output does not grow with its
    input's scale, whatever it is stacked on): ``aligned_i = sum_j softmax_j(x̂_i . ŷ_j / sqrt(D)) ŷ_j``
    over the partner text's real tokens (ESIM-style soft alignment, no parameters), and the output
    ``x̂_i * aligned_i``, whose mean over the channels is the cosine of a word and its match: large
    where a word of one text has a close match in the other (paraphrases, duplicate questions).

    Args:
        x: ``[2B, D, L]``, rows ``0..B-1`` the first texts of B pairs, rows ``B..2B-1`` their
            second texts (the ``matching`` space's layout); mask: ``[2B, 1, L]``.

    Returns:
        ``[2B, D, L]``, zero on padded positions.
    """

    eps = 1e-6

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + self.eps)   # unit RMS per position; 0 on padding
        partner, partner_mask = _swap_halves(x), _swap_halves(mask)          # [2B, D, L], [2B, 1, L]
        scores = torch.bmm(x.transpose(1, 2), partner) / math.sqrt(x.shape[1])  # [2B, L_i, L_j]
        # A large finite negative, not -inf: an empty partner text gives uniform weights over zeros.
        scores = scores.masked_fill(partner_mask == 0, torch.finfo(scores.dtype).min)
        aligned = torch.bmm(partner, torch.softmax(scores, dim=-1).transpose(1, 2))  # [2B, D, L_i]
        return x * aligned * mask


# (kind, kernel size, dilation) of the convolutions; cost.py reads it too.
_CONVS: Dict[str, Tuple[int, int]] = {
    "std_conv_3": (3, 1), "std_conv_5": (5, 1), "std_conv_7": (7, 1),
    "dil_conv_3": (3, 2), "dil_conv_5": (5, 2), "dil_conv_7": (7, 2),
}

OPS: Dict[str, Callable[[int], nn.Module]] = {
    **{name: (lambda dim, k=k, d=d: ReLUConvBN(dim, k, d)) for name, (k, d) in _CONVS.items()},
    "avg_pool_3": lambda dim: MaskedAvgPool(3),
    "max_pool_3": lambda dim: MaskedMaxPool(3),
    "skip": lambda dim: Identity(),
    "zero": lambda dim: Zero(),
    "align": lambda dim: CrossAlign(),
}
"""Op name -> constructor taking the channel dimension."""

OP_NAMES: Tuple[str, ...] = (
    "std_conv_3", "std_conv_5", "std_conv_7",
    "dil_conv_3", "dil_conv_5", "dil_conv_7",
    "avg_pool_3", "max_pool_3", "skip", "zero",
)
"""The paper's 10 candidates, in the order of architecture logits and cost vectors."""

PAIR_OP_NAMES: Tuple[str, ...] = OP_NAMES + ("align",)
"""The candidates of the ``matching`` space for text pairs: the paper's and ``align``."""


def conv_spec(name: str) -> Tuple[int, int] | None:
    """``(kernel_size, dilation)`` of a convolution op, ``None`` for other ops."""
    return _CONVS.get(name)


def build_op(name: str, dim: int) -> nn.Module:
    """Instantiate op ``name`` for ``dim`` channels; ``KeyError`` lists the known names."""
    try:
        return OPS[name](dim)
    except KeyError:
        raise KeyError(f"unknown op {name!r}; known ops: {', '.join(PAIR_OP_NAMES)}") from None
