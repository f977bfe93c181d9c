"""Task metrics (GLUE's): accuracy everywhere, F1 of the positive class for MRPC and QQP."""

from __future__ import annotations

import torch
from torchmetrics.functional.classification import binary_f1_score, multiclass_accuracy

from .tasks import TaskSpec


def compute_metrics(spec: TaskSpec, preds: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """``preds``, ``labels``: LongTensor[N] of class ids. Returns ``{metric: value in [0, 1]}``."""
    preds, labels = preds.long().cpu(), labels.long().cpu()
    out = {}
    for name in spec.metrics:
        if name == "accuracy":
            value = multiclass_accuracy(preds, labels, num_classes=spec.num_labels, average="micro")
        elif name == "f1":
            value = binary_f1_score(preds, labels)
        else:
            raise KeyError(name)
        out[name] = float(value)
    return out
