"""Search, retrain and evaluate students on a teacher-knowledge store.

The glue between the paper's pieces and NNI: :func:`run_search` builds the model
space from the store (vocabulary, labels, the teacher's factorized embedding),
runs ``NasExperiment(space, Lightning(AdaBertDistillModule), AdaBertStrategy)``,
exports the argmax child with its trained weights and writes it with
:func:`export.write_student`. :func:`retrain_student` trains a fixed child with
the same distillation loss (fresh or from its searched weights), and
:func:`evaluate_student` reports dev metrics, params and FLOPs.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import pytorch_lightning as pl
import torch

from . import cost
from .distill import AdaBertDistillModule, model_inputs, val_metric_key
from .data import vocab_fingerprint
from .errors import UserError
from .export import ARCH_FILE, read_architecture, write_student
from .knowledge import KnowledgeStore
from .losses import DEFAULT_BETA
from .metrics import compute_metrics
from .space import AdaBertSpace, AdaBertStudent, StudentConfig, factorized_embedding
from .teacher import load_tokenizer, read_teacher_info, teacher_word_embeddings
from .training import fit, is_main_process, last_checkpoint, make_trainer

log = logging.getLogger(__name__)


@dataclass
class SearchConfig:
    """Search settings; defaults are the paper's (section 3.1) where it gives them."""

    epochs: int = 10
    batch_size: int = 64
    gamma: float = 0.8          # weight of L_KD against L_CE
    beta: float = DEFAULT_BETA  # weight of the efficiency loss (the paper's 4 is for its L_E scale)
    temperature: float = 1.0    # KD temperature T
    tau_start: float = 1.0      # Gumbel temperature, annealed linearly per step
    tau_end: float = 0.1
    lr: float = 2e-2            # weights: SGD momentum 0.9, cosine lr -> min_lr
    min_lr: float = 5e-4
    arc_lr: float = 3e-4        # architecture: Adam, weight decay arc_weight_decay
    arc_weight_decay: float = 1e-3
    embed_dim: int = 128
    k_max: int = 8
    retrain_optimizer: str = "adamw"  # a fixed child (fine-tuning, retraining): AdamW, cosine lr
    retrain_lr: float = 1e-3
    weight_decay: float = 0.0   # on the weights' matrices and kernels (not biases, norms), search and retrain
    dropout: float = 0.1        # the student's dropout (embedding, before probes and classifier)
    grad_clip: float = 5.0      # max norm of the weight gradients (0: off), as in DARTS: plain SGD 2e-2
    #                             diverged to NaN in a full-SST-2 warm-up without it
    warmup_epochs: int = 0      # train weights only (uniformly sampled paths) before the architecture moves
    finetune_epochs: int = 0    # then train the derived child alone (KD, its searched weights as start)
    full: bool = False          # run every candidate (full straight-through) instead of single-path
    seed: int = 0
    train_limit: int | None = None  # use only the first N store rows (quick runs)
    devices: int = 1            # GPUs (or CPU processes) for one search, with Lightning's DDP
    augmented_limit: int | None = None  # set: the first train_limit ORIGINAL rows plus the first N augmented
    #                                     rows (0 = no augmentation); None: train_limit alone (KnowledgeStore.rows)
    probe_kd: bool = True       # L_KD includes every teacher layer's probe (attentive weights): the paper's
    final_kd: bool = False      # L_KD includes the final logits vs the teacher's last layer (alone: "Base-KD")

    def __post_init__(self):
        # Checked here, so that the CLI, NNI trials (tuner parameters) and Python callers all get one message.
        at_least = {"epochs": 1, "batch_size": 1, "embed_dim": 1, "k_max": 1, "warmup_epochs": 0,
                    "finetune_epochs": 0, "seed": 0, "train_limit": 1, "augmented_limit": 0}
        for name, low in at_least.items():
            value = getattr(self, name)
            if value is None and name in ("train_limit", "augmented_limit"):
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise UserError(f"search setting {name} must be an integer >= {low}, got {value!r}")
        for name in ("beta", "min_lr", "arc_lr", "arc_weight_decay", "lr", "retrain_lr", "temperature", "tau_end",
                     "grad_clip", "weight_decay"):
            value, positive = getattr(self, name), name in ("lr", "retrain_lr", "temperature", "tau_end")
            if (not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0
                    or (positive and value == 0)):
                raise UserError(f"search setting {name} must be a finite number {'>' if positive else '>='} 0, "
                                f"got {value!r}")
        if not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise UserError(f"search setting dropout must be in [0, 1), got {self.dropout!r}")
        if not 0 <= self.gamma <= 1:
            raise UserError(f"search setting gamma (the KD weight) must be in [0, 1], got {self.gamma!r}")
        if self.retrain_optimizer not in ("adamw", "sgd"):
            raise UserError("search setting retrain_optimizer must be 'adamw' or 'sgd', "
                            f"got {self.retrain_optimizer!r}")
        if not (self.probe_kd or self.final_kd):
            raise UserError("search settings probe_kd and final_kd are both off: L_KD needs one of them "
                            "(final_kd alone is the paper's Base-KD)")


def config_from_options(options: argparse.Namespace, **overrides) -> SearchConfig:
    """The :class:`SearchConfig` of parsed command-line options: every option named like a
    setting (``--arc-lr`` -> ``arc_lr``) sets it, then ``overrides``. Serves the CLI and the
    NNI trials, whose option sets differ."""
    names = {f.name for f in fields(SearchConfig)}
    return SearchConfig(**{**{k: v for k, v in vars(options).items() if k in names}, **overrides})


def student_config(store: KnowledgeStore, embed_dim: int = 128, k_max: int = 8, dropout: float = 0.1) -> StudentConfig:
    meta = store.meta
    return StudentConfig(vocab_size=meta["vocab_size"], num_labels=meta["num_labels"], is_pair=store.spec.is_pair,
                         embed_dim=embed_dim, k_max=k_max, pad_token_id=meta["pad_token_id"], dropout=dropout)


def distill_module(store: KnowledgeStore, config: SearchConfig, report_to_nni: bool = False,
                   retrain: bool = False) -> AdaBertDistillModule:
    """The evaluator module: the search's SGD settings, or with ``retrain`` the fixed child's."""
    lr, min_lr = (config.retrain_lr, config.retrain_lr / 100) if retrain else (config.lr, config.min_lr)
    return AdaBertDistillModule(store.meta["num_labels"], gamma=config.gamma, beta=config.beta,
                                temperature=config.temperature, learning_rate=lr, min_learning_rate=min_lr,
                                weight_decay=config.weight_decay,
                                report_to_nni=report_to_nni, main_metric=val_metric_key(store.spec.main_metric),
                                optimizer=config.retrain_optimizer if retrain else "sgd",
                                probe_kd=config.probe_kd, final_kd=config.final_kd)


def student_info(store: KnowledgeStore) -> dict:
    """What an exported student records about where it came from."""
    teacher_dir = store.meta["teacher_dir"]
    tokenizer = load_tokenizer(teacher_dir)
    teacher = read_teacher_info(teacher_dir) or {}
    return {
        "task": store.meta["task"],
        "teacher": {"path": teacher_dir, "base_model": teacher.get("base_model"),
                    "dev_metrics": teacher.get("dev_metrics"), "num_layers": store.num_teacher_layers},
        "vocab": {"size": len(tokenizer), "fingerprint": vocab_fingerprint(tokenizer), "tokenizer": teacher_dir},
        "knowledge_store": str(store.path),
    }


def run_search(store: KnowledgeStore, out_dir: str | os.PathLike, config: SearchConfig = SearchConfig(),
               progress: bool = True, report_to_nni: bool = False) -> dict:
    """Search a student on ``store`` and export it to ``out_dir``; returns the architecture document.

    The run checkpoints every epoch in ``out_dir/search`` and resumes from there; a
    finished run with the same settings and store is returned as it is.
    """
    from nni.nas.evaluator.pytorch import Lightning, Trainer
    from nni.nas.experiment import NasExperiment

    from .strategy import AdaBertStrategy

    out_dir = Path(out_dir)
    run_dir = out_dir / "search"
    done = finished_run(out_dir, store, "search", asdict(config))
    if done is not None:
        log.info("search already finished in %s with these settings; not redoing it", out_dir)
        return done
    resume = last_checkpoint(run_dir, run_identity(store, search_phase_settings(config)))  # refused: before any setup
    pl.seed_everything(config.seed, workers=True)
    student_cfg = student_config(store, config.embed_dim, config.k_max, config.dropout)
    embedding = factorized_embedding(teacher_word_embeddings(store.meta["teacher_dir"]), config.embed_dim)
    space = AdaBertSpace(student_cfg, embedding)

    train = store.loader("train", config.batch_size, shuffle=True, seed=config.seed, limit=config.train_limit,
                         augmented_limit=config.augmented_limit)
    dev = store.loader("dev", 256)
    trainer = make_trainer(run_dir, config.epochs, progress=progress, trainer_cls=Trainer, seed=config.seed,
                           devices=config.devices)
    evaluator = Lightning(distill_module(store, config, report_to_nni), trainer,
                          train_dataloaders=train, val_dataloaders=dev,
                          fit_kwargs={"ckpt_path": str(resume) if resume else None, "weights_only": True})
    strategy = AdaBertStrategy(tau=(config.tau_start, config.tau_end), full=config.full,
                               arc_learning_rate=config.arc_lr, arc_weight_decay=config.arc_weight_decay,
                               warmup_epochs=config.warmup_epochs, gradient_clip_val=config.grad_clip or None,
                               seed=config.seed)
    experiment = NasExperiment(space, evaluator, strategy)
    experiment.config.experiment_working_directory = str((run_dir / "nni").resolve())
    experiment.run()
    experiment.stop()

    arch = experiment.export_top_models(formatter="dict")[0]
    student = space.freeze(arch).cpu().eval()
    if config.finetune_epochs > 0:
        finetune = replace(config, epochs=config.finetune_epochs)
        student = retrain_student(student, store, out_dir / "finetune", finetune, progress, report_to_nni,
                                  identity=run_identity(store, asdict(config)))
    history = [{k: v for k, v in h.items() if k != "arch"} for h in strategy.oneshot_module.history]
    info = {**student_info(store), **evaluate_student(student, store),
            "search": {**asdict(config), "history": history}}
    if not is_main_process():
        return info  # the other DDP processes: the first one warns and writes
    # The paper keeps the supernet's weights; a rarely sampled child may come out uncalibrated.
    if config.finetune_epochs == 0:
        warn_if_no_better_than_majority(info["dev_metrics"], store,
                                        "fine-tune it (--finetune-epochs 2) or retrain it (nni-adabert retrain)")
    return write_student(out_dir, student, info, title=f"{store.meta['task']} searched cell")


# Settings that only the fine-tuning after a search reads: a search phase finished under other
# values is resumed (it is the same search), and only the fine-tuning runs again.
FINETUNE_ONLY = ("finetune_epochs", "retrain_optimizer", "retrain_lr")


def search_phase_settings(config: SearchConfig) -> dict:
    return {k: v for k, v in asdict(config).items() if k not in FINETUNE_ONLY}


def run_identity(store: KnowledgeStore, settings: dict) -> dict:
    """What a run's checkpoints must have been written under to be resumed: its settings and store."""
    return {"knowledge_store": str(store.path), **settings}


def finished_run(out_dir: str | os.PathLike, store: KnowledgeStore, section: str, settings: dict) -> dict | None:
    """The architecture document in ``out_dir`` when it records a finished run on ``store``
    whose ``section`` ("search" or "retrain") holds exactly ``settings``; else ``None``.
    (The JSON is written last, so its presence means the run's files are complete.)"""
    path = Path(out_dir) / ARCH_FILE
    if not path.is_file():
        return None
    try:
        doc = read_architecture(path).doc
    except UserError:
        return None  # an unreadable or foreign file: redo the run, which replaces it
    # Only the settings that name this kind of run (a retraining's record from before β stopped
    # naming retrainings still has one); one added to SearchConfig since: the run had its default.
    recorded = {k: v for k, v in (doc.get(section) or {}).items() if k in settings}
    defaults = {k: v for k, v in json.loads(json.dumps(asdict(SearchConfig()))).items() if k in settings}
    recorded = {**defaults, **recorded}
    # Runs written before store paths were absolute recorded them relative to the working directory.
    recorded_store = doc.get("knowledge_store")
    same_store = bool(recorded_store) and Path(recorded_store).resolve() == store.path
    same = recorded == json.loads(json.dumps(settings)) and same_store
    return doc if same else None


def run_retrain(arch: dict, source: dict, store: KnowledgeStore, out_dir: str | os.PathLike,
                config: SearchConfig, progress: bool = True, report_to_nni: bool = False) -> dict:
    """Retrain the fixed child ``arch`` from fresh weights on ``store``'s task and export it
    to ``out_dir``; returns its architecture document. ``source`` says where ``arch`` came
    from (``{"from": ..., "searched_on": task or None}``). Resumes like :func:`run_search`."""
    # β weighs L_E, which a fixed child does not have: it does not name a retraining.
    settings = {k: v for k, v in {**source, **asdict(config)}.items() if k != "beta"}
    done = finished_run(out_dir, store, "retrain", settings)
    if done is not None:
        log.info("retraining already finished in %s with these settings; not redoing it", out_dir)
        return done
    out_dir = Path(out_dir)
    pl.seed_everything(config.seed, workers=True)  # the fresh weights too: the same run whatever ran before it
    student = fresh_student(arch, store, config.embed_dim, config.k_max, config.dropout)
    student = retrain_student(student, store, out_dir / "retrain", config, progress, report_to_nni,
                              identity=run_identity(store, settings))
    info = {**student_info(store), **evaluate_student(student, store), "retrain": settings}
    if not is_main_process():
        return info
    warn_if_no_better_than_majority(info["dev_metrics"], store, "train it longer (--epochs) or with another --lr")
    title = f"{source.get('searched_on') or source['from']} cell retrained on {store.meta['task']}"
    return write_student(out_dir, student, info, title=title)


def retrain_student(student: AdaBertStudent, store: KnowledgeStore, run_dir: str | os.PathLike,
                    config: SearchConfig, progress: bool = True, report_to_nni: bool = False,
                    identity: dict | None = None) -> AdaBertStudent:
    """Train a fixed child with ``(1-γ)·L_CE + γ·L_KD`` on ``store`` (L_E is constant for a
    fixed child, so β has no effect). Checkpoints every epoch in ``run_dir`` and resumes
    (a checkpoint of the same ``identity`` only: :func:`training.last_checkpoint`)."""
    pl.seed_everything(config.seed, workers=True)
    module = distill_module(store, config, report_to_nni, retrain=True)
    module.set_model(student.train())  # Lightning keeps each module's mode: BatchNorm must learn
    trainer = make_trainer(run_dir, config.epochs, progress=progress, seed=config.seed, devices=config.devices,
                           gradient_clip_val=config.grad_clip or None)
    train = store.loader("train", config.batch_size, shuffle=True, seed=config.seed, limit=config.train_limit,
                         augmented_limit=config.augmented_limit)
    fit(trainer, module, train, store.loader("dev", 256), run_dir, identity)
    return student.cpu().eval()


def fresh_student(arch: dict, store: KnowledgeStore, embed_dim: int = 128, k_max: int = 8,
                  dropout: float = 0.1) -> AdaBertStudent:
    """A newly initialised child of ``arch`` for ``store``'s task, embedding from its teacher."""
    student = AdaBertStudent(student_config(store, embed_dim, k_max, dropout), arch)
    student.load_embedding(factorized_embedding(teacher_word_embeddings(store.meta["teacher_dir"]), embed_dim))
    return student


@torch.no_grad()
def dev_metrics(logits_fn, store: KnowledgeStore) -> dict:
    """Dev metrics on ``store`` of ``logits_fn(inputs) -> [B, C]``, where ``inputs`` holds the
    student's ``input_ids_a``/``attention_mask_a`` ``[B, L]`` (and ``_b`` for pairs)."""
    preds, labels = [], []
    for batch in store.loader("dev", 256):
        preds.append(logits_fn(model_inputs(batch)).argmax(-1).cpu())
        labels.append(batch["labels"])
    return compute_metrics(store.spec, torch.cat(preds), torch.cat(labels))


def majority_class_metrics(store: KnowledgeStore) -> dict:
    """Dev metrics of always predicting the most frequent dev label: what a child must beat."""
    labels = torch.tensor(store.data["dev"]["label"])
    return compute_metrics(store.spec, torch.full_like(labels, int(torch.bincount(labels).argmax())), labels)


def warn_if_no_better_than_majority(metrics: dict, store: KnowledgeStore, advice: str) -> bool:
    """Log a warning (and return ``True``) when the main dev metric does not beat the majority class."""
    name = store.spec.main_metric
    baseline = majority_class_metrics(store)[name]
    if metrics[name] > baseline:
        return False
    log.warning("the student's dev %s is %.2f, no better than always predicting the majority class (%.2f): %s",
                name, 100 * metrics[name], 100 * baseline, advice)
    return True


@torch.no_grad()
def evaluate_student(student: AdaBertStudent, store: KnowledgeStore, seq_len: int = 128) -> dict:
    """Dev metrics of ``student`` on ``store``, its params (with and without the
    embedding) and FLOPs for one example of ``seq_len`` tokens."""
    student = student.eval()
    device = next(student.parameters()).device
    cfg, arch = student.config, student.arch
    return {
        "dev_metrics": dev_metrics(lambda b: student(**{k: v.to(device) for k, v in b.items()},
                                                     return_probes=False).logits, store),
        "params": cost.child_params(cfg, arch),
        "params_without_embedding": cost.child_params(cfg, arch, include_embedding=False),
        "flops": cost.child_flops(cfg, arch, seq_len),
        "flops_seq_len": seq_len,
        "depth": arch["depth"],
        "embed_dim": cfg.embed_dim,
    }


def load_exported(path: str | os.PathLike, store: KnowledgeStore | None = None):
    """Read an exported student (JSON + weights), checking its vocabulary against ``store``'s teacher."""
    vocab = vocab_fingerprint(load_tokenizer(store.meta["teacher_dir"])) if store is not None else None
    return read_architecture(path, vocab=vocab)
