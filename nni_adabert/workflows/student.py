"""A student for a knowledge store: its config, fresh weights, where it came from, and the
training of a fixed child (a retraining, or the fine-tuning after a search)."""

from __future__ import annotations

import os

import pytorch_lightning as pl
from torch.utils.data import DataLoader

from ..config import RetrainConfig, SearchConfig
from ..data.encoding import vocab_fingerprint
from ..model.space import AdaBertStudent, StudentConfig, factorized_embedding, resolve_space
from ..nas.distill import AdaBertDistillModule, val_metric_key
from ..teacher.knowledge import KnowledgeStore, row_loader
from ..training import PreciseBatchNorm, fit, make_trainer
from .export import misfits


def student_config(store: KnowledgeStore, embed_dim: int = 128, k_max: int = 8, dropout: float = 0.1,
                   space: str = "auto", pooling: str = "mean") -> StudentConfig:
    """The space's config for ``store``'s task: its teacher's vocabulary, its labels, single text or
    pair, and the pair space (``auto``: :func:`model.space.resolve_space`); the student's ``dropout``
    and ``pooling``."""
    meta = store.meta
    is_pair = store.spec.is_pair
    return StudentConfig(vocab_size=meta["vocab_size"], num_labels=meta["num_labels"], is_pair=is_pair,
                         embed_dim=embed_dim, k_max=k_max, pad_token_id=meta["pad_token_id"], dropout=dropout,
                         space=resolve_space(space, is_pair), pooling=pooling)


def searched_student_config(store: KnowledgeStore, config: SearchConfig) -> StudentConfig:
    """The space's config a search with ``config`` builds on ``store``'s task (its children's too)."""
    return student_config(store, config.embed_dim, config.k_max, config.dropout, config.space, config.pooling)


def retrain_space(source: StudentConfig, store: KnowledgeStore) -> str:
    """The space (resolved) a retraining of an architecture from ``source``'s space builds on ``store``'s
    task: the same for a pair searched on pairs, else the task's default (a single-text cell moved to a
    pair task gets the pair default)."""
    is_pair = store.spec.is_pair
    return source.space if source.is_pair and is_pair else resolve_space("auto", is_pair)


def space_identity(space: str) -> dict:
    """What a run's identity records of its (resolved) space: nothing for the paper's, so the runs
    made before pair tasks had a choice keep their identities; the matching space's head (runs of its
    head before the texts were normalised are other runs)."""
    if space == "paper":
        return {}
    return {"space": space, "norm_texts": StudentConfig.norm_texts}


def pooling_identity(pooling: str) -> dict:
    """What a run's identity records of its student's pooling: nothing for a mean, so the runs made
    before pooling was a setting keep their identities."""
    return {} if pooling == StudentConfig.pooling else {"pooling": pooling}


def fresh_student(arch: dict, store: KnowledgeStore, config: StudentConfig) -> AdaBertStudent:
    """A newly initialised child of ``arch`` in ``config``'s space (:func:`student_config` of ``store``),
    embedding from ``store``'s teacher. A config built for another store (its vocabulary, labels or
    text layout) is refused: a child of the wrong head would train without an error."""
    differences = misfits(config, store)
    if differences:
        raise ValueError(f"fresh_student: the StudentConfig is not {store.meta['task']}'s ({'; '.join(differences)}): "
                         "build it with student_config(store)")
    student = AdaBertStudent(config, arch)
    student.load_embedding(factorized_embedding(store.word_embeddings(), config.embed_dim))
    return student


def student_info(store: KnowledgeStore) -> dict:
    """What an exported student records about where it came from."""
    teacher_dir = store.meta["teacher_dir"]
    tokenizer = store.tokenizer
    teacher = store.teacher_info
    return {
        "task": store.meta["task"],
        "task_spec": store.spec.to_dict(),  # the label names, in class-id order
        "teacher": {"path": teacher_dir, "base_model": teacher.get("base_model"),
                    "dev_metrics": teacher.get("dev_metrics"), "num_layers": store.num_teacher_layers},
        "vocab": {"size": len(tokenizer), "fingerprint": vocab_fingerprint(tokenizer),
                  "tokenizer": str(store.teacher_files)},
        "knowledge_store": str(store.path),
    }


def train_student(student: AdaBertStudent, store: KnowledgeStore, run_dir: str | os.PathLike,
                  config: RetrainConfig, run_identity: dict, progress: bool = True,
                  report_to_nni: bool = False, train: DataLoader | None = None,
                  val: DataLoader | None = None) -> AdaBertStudent:
    """Train a fixed child with ``(1-γ)·L_CE + γ·L_KD`` on ``store`` (a fixed child has no L_E).
    Checkpoints every epoch in ``run_dir`` and resumes (a checkpoint of the same
    ``run_identity`` only: :func:`runs.last_checkpoint`). ``train``, ``val``: other batches than
    the store's train rows (within ``config``'s limits) and dev rows."""
    pl.seed_everything(config.seed, workers=True)
    module = AdaBertDistillModule(store.meta["num_labels"], config, report_to_nni=report_to_nni,
                                  main_metric=val_metric_key(store.spec.main_metric), task=store.spec.to_dict())
    module.set_model(student.train())  # Lightning keeps each module's mode: BatchNorm must learn
    if train is None:
        train = store.loader("train", config.batch_size, shuffle=True, seed=config.seed, limit=config.train_limit,
                             augmented_limit=config.augmented_limit, group_by_length=config.group_by_length)
    # The same rows in a plain shuffle: every length mixed, whatever the training's batches.
    precise_bn = (PreciseBatchNorm(row_loader(train.dataset, config.batch_size, shuffle=True, seed=config.seed),
                                   config.precise_bn_batches, config.seed),) if config.precise_bn_batches else ()
    trainer = make_trainer(run_dir, config.epochs, progress=progress, seed=config.seed, devices=config.devices,
                           gradient_clip_val=config.grad_clip or None, callbacks=precise_bn)
    fit(trainer, module, train, val if val is not None else store.loader("dev", 256), run_dir, run_identity)
    return student.cpu().eval()
