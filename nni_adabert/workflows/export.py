"""Exported students: the student's files (:mod:`model.pretrained`: architecture JSON,
safetensors weights, tokenizer) plus a cell picture, and the checks that an exported
student fits a teacher run (its vocabulary, its task)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..data.encoding import vocab_fingerprint
from ..errors import UserError
from ..model.pretrained import (ARCH_FILE, FORMAT, VERSION, WEIGHTS_FILE, ArchitectureFile, load_student,
                                read_architecture, save_pretrained)
from ..model.space import AdaBertStudent, StudentConfig
from ..plots import plot_cell
from ..teacher.knowledge import KnowledgeStore

__all__ = ["ARCH_FILE", "WEIGHTS_FILE", "CELL_FILE", "FORMAT", "VERSION", "ArchitectureFile", "write_student",
           "read_architecture", "load_student", "load_exported", "misfits", "check_fits"]

log = logging.getLogger(__name__)

CELL_FILE = "cell.png"


def write_student(out_dir: str | os.PathLike, student: AdaBertStudent, info: dict, title: str | None = None,
                  tokenizer=None) -> dict:
    """Write ``cell.png`` and the student (:func:`model.pretrained.save_pretrained`: weights, the
    ``tokenizer``'s files, then ``architecture.json``) into ``out_dir``.

    ``info`` adds the fields a reader wants (task and labels, teacher, vocab, params, flops,
    dev_metrics, search settings). Returns the JSON document.
    """
    out_dir = Path(out_dir)
    plot_cell(student.arch, out_dir / CELL_FILE, title or f"{info.get('task', '')} searched cell")
    return save_pretrained(student, out_dir, {**info, "cell_picture": CELL_FILE}, tokenizer)


def load_exported(path: str | os.PathLike, store: KnowledgeStore | None = None) -> ArchitectureFile:
    """Read an exported student (JSON + weights), checking its vocabulary against ``store``'s teacher."""
    vocab = vocab_fingerprint(store.tokenizer) if store is not None else None
    return read_architecture(path, vocab=vocab)


def misfits(config: StudentConfig, store: KnowledgeStore, task: str | None = None) -> list[str]:
    """How a student of ``config`` (of ``task``, when known) differs from ``store``'s task: its
    number of labels, single text or pair, vocabulary size; empty when it fits."""
    meta = store.meta
    return [f"{what}: {ours} for the student, {theirs} for the teacher run"
            for what, ours, theirs in (("task", task, meta["task"]),
                                       ("labels", config.num_labels, store.spec.num_labels),
                                       ("input", "pair" if config.is_pair else "single text",
                                        "pair" if store.spec.is_pair else "single text"),
                                       ("vocabulary size", config.vocab_size, meta.get("vocab_size")))
            if ours != theirs and None not in (ours, theirs)]


def check_fits(arch_file: ArchitectureFile, store: KnowledgeStore) -> None:
    """A student evaluated or deployed on ``store``'s dev rows must be one of its task: the same
    number of labels, single text or pair, and vocabulary size. Otherwise one :class:`UserError`
    naming both (a retraining is how a structure moves to another task)."""
    differences = misfits(arch_file.config, store, arch_file.doc.get("task"))
    if differences:
        raise UserError(f"{arch_file.path} is not a student of the teacher run's task ({'; '.join(differences)}): "
                        f"use the teacher run it was trained with, or retrain it on this task (nni-adabert retrain)")
