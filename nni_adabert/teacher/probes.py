"""The teacher's per-layer probes (paper section 2.3).

:func:`teacher_features` runs the frozen teacher once and returns each layer's pooled
hidden state plus its own logits; :class:`LayerProbes` are the softmax classifiers
P_j^T trained on those features (:func:`train_probes`).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import datasets
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..data.encoding import masked_mean, pad_batch
from ..training import inference_autocast, inference_batch_size

log = logging.getLogger(__name__)


@torch.no_grad()
def teacher_features(model, ds: datasets.Dataset, batch_size: int | None = None, progress: bool = True,
                     desc: str = "teacher", precision: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Run the frozen teacher over a tokenized split, once, in batches of similar lengths
    (``batch_size``: :func:`training.inference_batch_size` of its device; ``precision``:
    :func:`training.inference_precision`, bf16 where the device computes it natively).

    Returns ``pooled`` FloatTensor[N, J-1, H] (masked-mean hidden state of layers
    1..J-1, the inputs of probes P_1..P_{J-1}) and ``logits`` FloatTensor[N, C]
    (the teacher's own head, which is P_J).
    """
    device = next(model.parameters()).device
    batch_size = batch_size or inference_batch_size(device)
    ids, types = ds["input_ids"], ds["token_type_ids"]  # whole columns: no row-by-row reads of the dataset
    if not ids:
        return torch.empty(0), torch.empty(0)
    # Sort by length so batches carry little padding; results go back in order.
    order = torch.tensor([len(row) for row in ids]).argsort(stable=True)
    pooled = logits = None
    started = time.perf_counter()
    for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress, unit="batch"):
        idx = order[start:start + batch_size]
        batch = pad_batch([{"input_ids": ids[i], "token_type_ids": types[i]} for i in idx.tolist()],
                          ("input_ids", "token_type_ids"))
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with inference_autocast(device, precision):
            out = model(**batch, output_hidden_states=True)
        mask = batch["attention_mask"].unsqueeze(-1).float()  # [B, L, 1]
        layers = torch.stack([masked_mean(h.float() * mask, mask, dim=1) for h in out.hidden_states[1:-1]], 1)
        if pooled is None:
            pooled, logits = torch.empty(len(ids), *layers.shape[1:]), torch.empty(len(ids), out.logits.shape[-1])
        pooled[idx], logits[idx] = layers.cpu(), out.logits.float().cpu()
    seconds = time.perf_counter() - started
    log.debug("%s: %d examples in %.1f s (%.0f examples/s, batches of %d)", desc, len(ids), seconds,
             len(ids) / max(seconds, 1e-9), batch_size)
    return pooled, logits


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
