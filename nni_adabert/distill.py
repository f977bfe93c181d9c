"""The NNI evaluator module for AdaBERT: distillation training of a space, supernet or child.

:class:`AdaBertDistillModule` is an ``nni.nas.evaluator.pytorch.LightningModule``; wrap it
in NNI's ``Lightning`` evaluator::

    evaluator = Lightning(AdaBertDistillModule(num_labels=2), Trainer(max_epochs=10),
                          train_dataloaders=train_loader, val_dataloaders=dev_loader)
    NasExperiment(AdaBertSpace(config), evaluator, AdaBertStrategy()).run()

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

from .losses import DEFAULT_BETA, IGNORE_INDEX, adabert_loss
from .training import check_finite, weight_decay_groups

__all__ = ["AdaBertDistillModule", "model_inputs", "val_metric_key", "report_to_nni_trial"]

_INPUT_KEYS = ("input_ids_a", "attention_mask_a", "input_ids_b", "attention_mask_b")


_nni_trial: Optional[Dict[str, Any]] = None  # this process's NNI trial: its command channel and parameters


def _current_nni_trial() -> Optional[Dict[str, Any]]:
    """The NNI trial this process runs (after ``nni.get_next_parameter()``), or ``None``.

    A one-shot search runs inside NNI's sequential NAS engine, which swaps NNI's trial
    channel and parameters for its own while the supernet trains: ``nni.report_*_result``
    there reaches the engine, never the NNI manager (and after the search
    ``nni.get_current_parameter()`` is the model space). So the trial's own channel is
    remembered whenever we see it outside the engine, and reports use that one.
    """
    global _nni_trial
    import nni.trial
    from nni.nas.execution.sequential import SequentialTrialCommandChannel
    from nni.runtime.trial_command_channel import get_default_trial_command_channel

    channel, record = get_default_trial_command_channel(), nni.trial._params
    # The engine's record (parameters = the model space) outlives the engine: never take it.
    if (record is not None and isinstance(record.get("parameters"), dict)
            and not isinstance(channel, SequentialTrialCommandChannel)
            and (_nni_trial is None or _nni_trial["record"] is not record)):
        _nni_trial = {"channel": channel, "record": record, "sequence": 0}
    return _nni_trial


def report_to_nni_trial(kind: str, metric: Dict[str, Any]) -> bool:
    """Send ``metric`` (a dict with a float ``"default"``) to this process's NNI trial as an
    ``"intermediate"`` or ``"final"`` result; ``False`` (nothing sent) outside a trial."""
    from nni.runtime.env_vars import trial_env_vars

    trial = _current_nni_trial()
    if trial is None:
        return False
    sequence = trial["sequence"] if kind == "intermediate" else 0
    trial["channel"].send_metric(type={"intermediate": "PERIODICAL", "final": "FINAL"}[kind],
                                 parameter_id=trial["record"]["parameter_id"],
                                 trial_job_id=trial_env_vars.NNI_TRIAL_JOB_ID, sequence=sequence, value=metric)
    if kind == "intermediate":
        trial["sequence"] += 1
    return True


def val_metric_key(metric: str) -> str:
    """The key this module logs a task metric under: ``accuracy`` -> ``val_acc``, ``f1`` -> ``val_f1``."""
    return {"accuracy": "val_acc", "f1": "val_f1"}[metric]


def model_inputs(batch: Dict[str, Any]) -> Dict[str, Any]:
    """The keyword arguments of the student's forward, taken from a batch dict."""
    return {k: batch[k] for k in _INPUT_KEYS if batch.get(k) is not None}


class AdaBertDistillModule(LightningModule):
    """Loss ``(1-gamma) L_CE + gamma L_KD + beta L_E`` and dev metrics, for NNI's ``Lightning`` evaluator.

    Args:
        num_labels: number of classes (dev F1 of class 1 is logged too when it is 2).
        gamma, beta, temperature: the loss weights and KD temperature (paper: 0.8, 4, 1; our β
            default is calibrated to our L_E: :data:`losses.DEFAULT_BETA`).
        learning_rate, min_learning_rate: SGD learning rate, cosine-annealed per step
            from the first to the second over the whole run (paper: 2e-2 -> 5e-4).
        momentum: SGD momentum (paper: 0.9).
        weight_decay: on weight matrices and kernels, not on biases and norm scales.
        report_to_nni: inside an NNI trial, report the dev metrics after every epoch with
            ``nni.report_intermediate_result``, ``"default"`` being ``main_metric``. The final
            result is the trial's to report (after export, with params, FLOPs and speedup:
            see :mod:`nni_adabert.trial`), since one trial may fit several times.
        main_metric: the logged dev metric that is NNI's ``"default"``: ``val_acc`` or
            ``val_f1`` (:func:`val_metric_key` maps a task's main metric to it).
        probe_kd, final_kd: the terms of ``L_KD`` (see :func:`losses.adabert_loss`): every
            teacher layer into the student's cell probes with attentive weights (the paper's
            method, the default), and/or the teacher's last-layer logits into the student's
            final logits (alone: "Base-KD" of the paper's Table 4 ablation).

    Logged: ``train_loss``, ``train_ce``, ``train_kd``, ``train_eff`` per step;
    ``val_acc`` (and ``val_f1``), ``val_ce`` per epoch. The last dev metrics are also in
    :attr:`last_val_metrics`.
    """

    def __init__(self, num_labels: int, gamma: float = 0.8, beta: float = DEFAULT_BETA, temperature: float = 1.0,
                 learning_rate: float = 2e-2, min_learning_rate: float = 5e-4, momentum: float = 0.9,
                 weight_decay: float = 0.0, report_to_nni: bool = False,
                 main_metric: str = "val_acc", optimizer: str = "sgd", probe_kd: bool = True,
                 final_kd: bool = False):
        super().__init__()
        if not (probe_kd or final_kd):
            raise ValueError("AdaBertDistillModule: L_KD needs probe_kd or final_kd (or both)")
        self.save_hyperparameters()
        if report_to_nni:
            _current_nni_trial()  # remember the trial's channel before a NAS engine swaps it
        self.num_labels = num_labels
        self.val_acc = torchmetrics.Accuracy(task="multiclass", num_classes=num_labels)
        self.val_f1 = torchmetrics.F1Score(task="binary") if num_labels == 2 else None
        self.val_ce = torchmetrics.MeanMetric()
        self.last_val_metrics: Dict[str, float] = {}

    def forward(self, batch: Dict[str, Any]):
        return self.model(**model_inputs(batch))

    def compute_loss(self, batch: Dict[str, Any]):
        """Forward ``batch`` and return :class:`losses.LossParts`."""
        out = self.model(**model_inputs(batch))
        efficiency_fn = getattr(self.model, "efficiency_loss", None)
        efficiency = efficiency_fn() if callable(efficiency_fn) else None
        hp = self.hparams
        return adabert_loss(out.logits, out.probe_logits, out.depth_terms, batch["teacher_logits"], batch["labels"],
                            efficiency, gamma=hp.gamma, beta=hp.beta, temperature=hp.temperature,
                            probe_kd=hp.probe_kd, final_kd=hp.final_kd)

    def training_step(self, batch: Dict[str, Any], batch_idx: int) -> torch.Tensor:
        parts = self.compute_loss(batch)
        check_finite(parts.total, self)
        bs = int(batch["labels"].shape[0])
        self.log("train_loss", parts.total.detach(), prog_bar=True, batch_size=bs)
        self.log("train_ce", parts.ce.detach(), batch_size=bs)
        self.log("train_kd", parts.kd.detach(), batch_size=bs)
        if parts.efficiency is not None:
            self.log("train_eff", parts.efficiency.detach(), batch_size=bs)
        return parts.total

    def validation_step(self, batch: Dict[str, Any], batch_idx: int) -> None:
        out = self.model(**model_inputs(batch))
        labels = batch["labels"]
        keep = labels != IGNORE_INDEX
        logits, labels = out.logits[keep], labels[keep]
        if labels.numel() == 0:
            return
        preds = logits.argmax(dim=-1)
        self.val_acc.update(preds, labels)
        if self.val_f1 is not None:
            self.val_f1.update(preds, labels)
        self.val_ce.update(torch.nn.functional.cross_entropy(logits.float(), labels, reduction="none"))

    def on_validation_epoch_end(self) -> None:
        if self.val_acc.update_count == 0:
            return
        metrics = {"val_acc": self.val_acc.compute(), "val_ce": self.val_ce.compute()}
        if self.val_f1 is not None:
            metrics["val_f1"] = self.val_f1.compute()
        for m in (self.val_acc, self.val_f1, self.val_ce):
            if m is not None:
                m.reset()
        self.log_dict(metrics, prog_bar=True)
        self.last_val_metrics = {k: float(v) for k, v in metrics.items()}
        if self.hparams.report_to_nni and not self.trainer.sanity_checking:
            main = self.last_val_metrics.get(self.hparams.main_metric, self.last_val_metrics["val_acc"])
            report_to_nni_trial("intermediate", {"default": main, **self.last_val_metrics})

    def configure_optimizers(self):
        hp = self.hparams
        groups = weight_decay_groups(self.model, hp.weight_decay)
        if hp.optimizer == "adamw":  # retraining a fixed child: its embedding learns far faster with Adam
            optimizer = torch.optim.AdamW(groups, lr=hp.learning_rate)
        else:
            optimizer = torch.optim.SGD(groups, lr=hp.learning_rate, momentum=hp.momentum)
        total: Optional[float] = None
        try:
            total = float(self.trainer.estimated_stepping_batches)
        except Exception:  # no trainer attached, or an unsized loader
            total = None
        if total is None or not total < float("inf") or total < 1:
            return optimizer
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(int(total), 1),
                                                               eta_min=hp.min_learning_rate)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
