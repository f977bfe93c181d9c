"""The teacher's per-layer probes (paper section 2.3).

:func:`teacher_features` runs the frozen teacher once and returns each layer's pooled
hidden state plus its own logits; :class:`LayerProbes` are the softmax classifiers
P_j^T trained on those features (:func:`train_probes`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import datasets
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..data.encoding import masked_mean, pad_batch


@torch.no_grad()
def teacher_features(model, ds: datasets.Dataset, batch_size: int = 128, progress: bool = True,
                     desc: str = "teacher") -> tuple[torch.Tensor, torch.Tensor]:
    """Run the frozen teacher over a tokenized split, once.

    Returns ``pooled`` FloatTensor[N, J-1, H] (masked-mean hidden state of layers
    1..J-1, the inputs of probes P_1..P_{J-1}) and ``logits`` FloatTensor[N, C]
    (the teacher's own head, which is P_J).
    """
    device = next(model.parameters()).device
    # Sort by length so batches carry little padding; results go back in order.
    order = sorted(range(len(ds)), key=lambda i: len(ds[i]["input_ids"])) if len(ds) else []
    cols = ds.select_columns(["input_ids", "token_type_ids"])
    pooled, logits = [None] * len(ds), [None] * len(ds)
    for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress, unit="batch"):
        idx = order[start:start + batch_size]
        batch = pad_batch([cols[i] for i in idx], ("input_ids", "token_type_ids"))
        batch = {k: v.to(device) for k, v in batch.items()}
        out = model(**batch, output_hidden_states=True)
        mask = batch["attention_mask"].unsqueeze(-1).to(out.logits.dtype)  # [B, L, 1]
        layers = torch.stack([masked_mean(h * mask, mask, dim=1) for h in out.hidden_states[1:-1]], 1)
        for row, i in enumerate(idx):
            pooled[i], logits[i] = layers[row].float().cpu(), out.logits[row].float().cpu()
    if not order:
        return torch.empty(0), torch.empty(0)
    return torch.stack(pooled), torch.stack(logits)


class LayerProbes(nn.Module):
    """The teacher probes P_1..P_{J-1}: one linear softmax classifier per layer.

    P_J is the teacher's own head, so :meth:`forward` takes its logits and
    returns all J probes' logits.
    """

    def __init__(self, num_layers: int, hidden_size: int, num_labels: int):
        super().__init__()
        self.probes = nn.ModuleList(nn.Linear(hidden_size, num_labels) for _ in range(num_layers - 1))

    def forward(self, pooled: torch.Tensor, head_logits: torch.Tensor) -> torch.Tensor:
        """``pooled`` [N, J-1, H], ``head_logits`` [N, C] -> probe logits [N, J, C]."""
        per_layer = [probe(pooled[:, j]) for j, probe in enumerate(self.probes)]
        return torch.stack(per_layer + [head_logits], dim=1)


@dataclass
class ProbeConfig:
    epochs: int = 5
    min_steps: int = 500    # small train sets still get enough optimizer steps
    batch_size: int = 256
    lr: float = 1e-3
    seed: int = 0


def train_probes(pooled: torch.Tensor, head_logits: torch.Tensor, labels: torch.Tensor,
                 config: ProbeConfig = ProbeConfig()) -> LayerProbes:
    """Fit every layer's probe on the frozen features with the task labels
    (cross-entropy, Adam). ``pooled`` [N, J-1, H], ``labels`` LongTensor[N]."""
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    probes = LayerProbes(pooled.shape[1] + 1, pooled.shape[2], int(head_logits.shape[1]))
    optim = torch.optim.Adam(probes.parameters(), lr=config.lr)
    n = len(labels)
    epochs = max(config.epochs, math.ceil(config.min_steps / math.ceil(n / config.batch_size)))
    for _ in range(epochs):
        for idx in torch.randperm(n, generator=generator).split(config.batch_size):
            logits = probes(pooled[idx], head_logits[idx])[:, :-1]  # the head is not trained
            loss = F.cross_entropy(logits.flatten(0, 1), labels[idx].repeat_interleave(logits.shape[1]))
            optim.zero_grad()
            loss.backward()
            optim.step()
    return probes.eval()
