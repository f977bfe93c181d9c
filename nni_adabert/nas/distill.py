"""The NNI evaluator module for AdaBERT: distillation training of a space, supernet or child.

:class:`AdaBertDistillModule` is an ``nni.nas.evaluator.pytorch.LightningModule``; wrap it
in NNI's ``Lightning`` evaluator::

    evaluator = Lightning(AdaBertDistillModule(num_labels=2, config=SearchConfig(), beta=0.5),
                          Trainer(max_epochs=10), train_dataloaders=train_loader, val_dataloaders=dev_loader)
    NasExperiment(AdaBertSpace(student_config), evaluator, AdaBertStrategy(seed=0)).run()

One-shot strategies call its ``training_step`` for the weight (and architecture) step;
used directly with a ``Trainer`` it retrains a frozen child with the same loss
(automatic optimization).

Batches are dicts: ``input_ids_a`` ``[B, La]``, ``attention_mask_a`` ``[B, La]``, for pair
tasks ``input_ids_b`` / ``attention_mask_b``, ``labels`` ``[B]`` (-100 for augmented
examples) and ``teacher_logits`` ``[B, J, C]`` (teacher probe logits per layer, last =
teacher head). Dev batches have the same keys.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch
import torchmetrics
from nni.nas.evaluator.pytorch import LightningModule

from ..config import DEFAULT_BETA, TrainingConfig
from ..data.encoding import IGNORE_LABEL
from ..training import adamw, check_finite, weight_decay_groups
from .losses import adabert_loss
from .nni_trial import remember_nni_trial, report_to_nni_trial
from .supermodules import efficiency_loss

__all__ = ["AdaBertDistillModule", "model_inputs", "val_metric_key"]

_INPUT_KEYS = ("input_ids_a", "attention_mask_a", "input_ids_b", "attention_mask_b")
SGD_MOMENTUM = 0.9  # the paper's


def val_metric_key(metric: str) -> str:
    """The key this module logs a task metric under: ``accuracy`` -> ``val_acc``, ``f1`` -> ``val_f1``,
    ``macro_f1`` -> ``val_macro_f1``."""
    return {"accuracy": "val_acc", "f1": "val_f1", "macro_f1": "val_macro_f1"}[metric]


def model_inputs(batch: Dict[str, Any]) -> Dict[str, Any]:
    """The keyword arguments of the student's forward, taken from a batch dict."""
    return {k: batch[k] for k in _INPUT_KEYS if batch.get(k) is not None}


class AdaBertDistillModule(LightningModule):
    """Loss ``(1-gamma) L_CE + gamma L_KD + beta L_E`` and dev metrics, for NNI's ``Lightning`` evaluator.

    Args:
        num_labels: number of classes (dev F1 of class 1 is logged too when it is 2 and ``task`` is not given).
        config: :class:`config.TrainingConfig` (a :class:`config.SearchConfig` or
            :class:`config.RetrainConfig`): the loss weight ``gamma``, the KD temperature, the terms
            of ``L_KD`` (``probe_kd``: every teacher layer into the student's cell probes with
            attentive weights, the paper's method; ``final_kd``: the teacher's last-layer logits
            into the student's final logits, alone "Base-KD" of the paper's Table 4), and the
            weights' optimizer: SGD (momentum 0.9) or AdamW, its learning rate cosine-annealed per
            step from ``lr`` to ``final_lr`` over the whole run (paper: SGD 2e-2 -> 5e-4), weight
            decay on weight matrices and kernels only.
        beta: weight of the efficiency loss ``L_E``, which only a differentiable supernet has
            (paper: 4; our default is calibrated to our L_E: :data:`config.DEFAULT_BETA`).
        report_to_nni: inside an NNI trial, report the dev metrics after every epoch with
            ``nni.report_intermediate_result``, ``"default"`` being ``main_metric``. The final
            result is the trial's to report (after export, with params, FLOPs and speedup:
            see :mod:`nni_adabert.trial`), since one trial may fit several times.
        main_metric: the logged dev metric that is NNI's ``"default"``: ``val_acc``, ``val_f1`` or
            ``val_macro_f1`` (:func:`val_metric_key` maps a task's main metric to it).
        task: the task's :meth:`data.tasks.TaskSpec.to_dict`: its metrics are logged (the F1 of its
            positive class, macro-F1) besides accuracy.

    Logged: ``train_loss``, ``train_ce``, ``train_kd``, ``train_eff`` (``train_every_depth``) per step
    and as epoch means;
    ``val_acc`` (and ``val_f1``, ``val_macro_f1``), ``val_ce`` per epoch. The last dev metrics are also in
    :attr:`last_val_metrics`.
    """

    def __init__(self, num_labels: int, config: TrainingConfig = TrainingConfig(), *, beta: float = DEFAULT_BETA,
                 report_to_nni: bool = False, main_metric: str = "val_acc", task: Optional[dict] = None):
        super().__init__()
        self.config = config
        self.beta = beta
        # Plain values, recorded in checkpoints (which load with weights_only=True) and logs.
        self.save_hyperparameters({"num_labels": num_labels, **config.to_dict(), "beta": beta,
                                   "report_to_nni": report_to_nni, "main_metric": main_metric, "task": task})
        if report_to_nni:
            remember_nni_trial()  # before a NAS engine swaps the trial's channel for its own
        self.num_labels = num_labels
        metrics = task["metrics"] if task else (["accuracy", "f1"] if num_labels == 2 else ["accuracy"])
        # F1 of the positive class: the task's, or class 1 of a binary task without one.
        self.positive_class = task["labels"].index(task["positive_label"]) if task and "f1" in metrics else 1
        self.val_acc = torchmetrics.Accuracy(task="multiclass", num_classes=num_labels)
        self.val_f1 = torchmetrics.F1Score(task="binary") if "f1" in metrics else None
        self.val_macro_f1 = (torchmetrics.F1Score(task="multiclass", num_classes=num_labels, average="macro")
                             if "macro_f1" in metrics else None)
        self.val_ce = torchmetrics.MeanMetric()
        self.last_val_metrics: Dict[str, float] = {}

    def forward(self, batch: Dict[str, Any]):
        return self.model(**model_inputs(batch))

    def compute_loss(self, batch: Dict[str, Any]):
        """Forward ``batch`` and return :class:`losses.LossParts`."""
        out = self.model(**model_inputs(batch))
        config = self.config
        return adabert_loss(out.logits, out.probe_logits, out.depth_terms, batch["teacher_logits"], batch["labels"],
                            efficiency_loss(self.model), gamma=config.gamma, beta=self.beta,
                            temperature=config.temperature, probe_kd=config.probe_kd, final_kd=config.final_kd,
                            final_kd_mse=config.final_kd_mse, depth_logits=out.depth_logits)

    def training_step(self, batch: Dict[str, Any], batch_idx: int) -> torch.Tensor:
        parts = self.compute_loss(batch)
        check_finite(parts.total, self)
        bs = int(batch["labels"].shape[0])
        # Per step (progress bar, TensorBoard) and as the epoch's mean (the epoch's log line).
        terms = {"loss": parts.total, "ce": parts.ce, "kd": parts.kd, "eff": parts.efficiency,
                 "every_depth": parts.every_depth}
        for name, value in terms.items():
            if value is not None:
                self.log(f"train_{name}", value.detach(), prog_bar=name == "loss", on_step=True, on_epoch=True,
                         batch_size=bs)
        return parts.total

    def validation_step(self, batch: Dict[str, Any], batch_idx: int) -> None:
        out = self.model(**model_inputs(batch))
        labels = batch["labels"]
        keep = labels != IGNORE_LABEL
        logits, labels = out.logits[keep], labels[keep]
        if labels.numel() == 0:
            return
        preds = logits.argmax(dim=-1)
        self.val_acc.update(preds, labels)
        if self.val_f1 is not None:
            self.val_f1.update((preds == self.positive_class).long(), (labels == self.positive_class).long())
        if self.val_macro_f1 is not None:
            self.val_macro_f1.update(preds, labels)
        self.val_ce.update(torch.nn.functional.cross_entropy(logits.float(), labels, reduction="none"))

    def on_validation_epoch_end(self) -> None:
        if self.val_acc.update_count == 0:
            return
        metrics = {"val_acc": self.val_acc.compute(), "val_ce": self.val_ce.compute()}
        if self.val_f1 is not None:
            metrics["val_f1"] = self.val_f1.compute()
        if self.val_macro_f1 is not None:
            metrics["val_macro_f1"] = self.val_macro_f1.compute()
        for m in (self.val_acc, self.val_f1, self.val_macro_f1, self.val_ce):
            if m is not None:
                m.reset()
        self.log_dict(metrics, prog_bar=True)
        self.last_val_metrics = {k: float(v) for k, v in metrics.items()}
        if self.hparams.report_to_nni and not self.trainer.sanity_checking:
            main = self.last_val_metrics.get(self.hparams.main_metric, self.last_val_metrics["val_acc"])
            report_to_nni_trial("intermediate", {"default": main, **self.last_val_metrics})

    def configure_optimizers(self):
        config = self.config
        groups = weight_decay_groups(self.model, config.weight_decay)
        if config.optimizer == "adamw":
            optimizer = adamw(self, groups, config.lr)
        else:
            optimizer = torch.optim.SGD(groups, lr=config.lr, momentum=SGD_MOMENTUM)
        total: Optional[float] = None
        try:
            total = float(self.trainer.estimated_stepping_batches)
        except Exception:  # no trainer attached, or an unsized loader
            total = None
        if total is None or not total < float("inf") or total < 1:
            return optimizer
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(int(total), 1),
                                                               eta_min=config.final_lr)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
