"""Task metrics: accuracy, F1 of a positive class (GLUE's MRPC and QQP), macro-F1."""

from __future__ import annotations

import torch
from torchmetrics.functional.classification import binary_f1_score, multiclass_accuracy, multiclass_f1_score

from .tasks import TaskSpec


def compute_metrics(spec: TaskSpec, preds: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """``preds``, ``labels``: LongTensor[N] of class ids. Returns ``{metric: value in [0, 1]}``."""
    preds, labels = preds.long().cpu(), labels.long().cpu()
    out = {}
    for name in spec.metrics:
        if name == "accuracy":
            value = multiclass_accuracy(preds, labels, num_classes=spec.num_labels, average="micro")
        elif name == "f1":
            positive = spec.positive_class
            value = binary_f1_score((preds == positive).long(), (labels == positive).long())
        elif name == "macro_f1":
            value = multiclass_f1_score(preds, labels, num_classes=spec.num_labels, average="macro")
        else:
            raise KeyError(name)
        out[name] = float(value)
    return out


def majority_class_metrics(spec: TaskSpec, labels: torch.Tensor) -> dict[str, float]:
    """The metrics of always predicting the most frequent of ``labels`` (LongTensor[N]): what a
    classifier must beat to have learned anything."""
    labels = labels.long().cpu()
    return compute_metrics(spec, torch.full_like(labels, int(torch.bincount(labels).argmax())), labels)
