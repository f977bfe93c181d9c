"""``nni-adabert predict``: a trained student's labels and class probabilities for new texts.

A student directory is self-contained: ``architecture.json`` (the structure, the task's label
names), ``student.safetensors`` and the tokenizer's files; the teacher run and the knowledge
store it came from are not read. :class:`Predictor` runs the eager student, or with ``onnx`` the
graph ``nni-adabert deploy`` wrote beside it; given a Hugging Face classifier's directory instead
(a teacher run's ``teacher/``), it runs that, so that the two can be compared on the same texts::

    predictor = Predictor("runs/student")
    predictor(["a gripping, funny film"])   # [{"label": "1", "probabilities": {"0": 0.03, "1": 0.97}}]
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Iterable, Iterator

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from ..data.custom import read_source, text_columns
from ..data.encoding import MAX_LENGTH, pad_batch, student_ids, teacher_ids, vocab_fingerprint
from ..data.tasks import find_glue_task
from ..errors import UserError
from ..model.pretrained import ARCH_FILE, ArchitectureFile, load_student, read_architecture
from ..nas.distill import model_inputs
from .deploy import open_deployed

log = logging.getLogger(__name__)

TOKENIZER_FILE = "tokenizer_config.json"  # present when the student directory holds its tokenizer


def label_names(arch_file: ArchitectureFile) -> list[str]:
    """The student's class names in class-id order: recorded in its JSON; for students exported
    before they were, the GLUE task's, else the class ids."""
    spec = arch_file.doc.get("task_spec")
    if spec:
        return list(spec["labels"])
    glue = find_glue_task(str(arch_file.doc.get("task", "")))
    if glue is not None and glue.num_labels == arch_file.config.num_labels:
        return list(glue.labels)
    return [str(i) for i in range(arch_file.config.num_labels)]


def student_tokenizer(arch_file: ArchitectureFile):
    """The tokenizer saved in the student's directory (or, for a student exported before they were,
    the teacher's that its JSON names), checked against the vocabulary the student was trained with."""
    here = arch_file.path.parent
    source = here if (here / TOKENIZER_FILE).is_file() else (arch_file.doc.get("vocab") or {}).get("tokenizer")
    if not source or not Path(source).is_dir():
        raise UserError(f"{here} holds no tokenizer (tokenizer_config.json) and the teacher it names "
                        f"({source}) is not there: export the student again with this version's search or retrain")
    tokenizer = AutoTokenizer.from_pretrained(str(source), use_fast=True)
    expected = (arch_file.doc.get("vocab") or {}).get("fingerprint")
    if expected and vocab_fingerprint(tokenizer) != expected:
        raise UserError(f"the tokenizer in {source} is not the one {arch_file.path} was trained with "
                        f"(vocabulary fingerprint {vocab_fingerprint(tokenizer)}, expected {expected})")
    return tokenizer


def is_classifier_dir(path: str | os.PathLike) -> bool:
    """A Hugging Face classifier's directory (``config.json``, no ``architecture.json``)."""
    return Path(path).is_dir() and (Path(path) / "config.json").is_file() and not (Path(path) / ARCH_FILE).is_file()


class Predictor:
    """A student ready to label texts: its tokenizer, its label names, and the eager model or,
    with ``onnx`` (``True``: ``student.onnx`` beside the JSON, or a path), ONNX Runtime. Given a
    Hugging Face classifier's directory, that classifier (``is_pair`` then ``None``: it reads both).

    ``predictor(texts_a, texts_b=None)`` -> one ``{"label", "probabilities"}`` per text (pair).
    """

    def __init__(self, student_dir: str | os.PathLike, onnx: bool | str | os.PathLike = False,
                 threads: int | None = None, max_length: int = MAX_LENGTH):
        self.max_length = max_length
        self.truncated = 0
        if is_classifier_dir(student_dir):
            self._load_classifier(Path(student_dir), onnx)
            return
        self.arch_file = read_architecture(student_dir)
        self.labels = label_names(self.arch_file)
        self.is_pair = self.arch_file.config.is_pair
        self.tokenizer = student_tokenizer(self.arch_file)
        self.encode = student_ids
        if onnx:
            deployed = open_deployed(None if onnx is True else onnx, self.arch_file, threads)
            self.backend, self.logits = f"ONNX Runtime ({deployed.path.name})", deployed
        else:
            student = load_student(self.arch_file)
            self.backend = "eager PyTorch"
            self.logits = lambda batch: student(**model_inputs(batch)).logits

    def _load_classifier(self, directory: Path, onnx) -> None:
        if onnx:
            raise UserError(f"{directory} is a Hugging Face classifier, not a deployed student: drop --onnx")
        model = AutoModelForSequenceClassification.from_pretrained(str(directory)).eval()
        self.labels = [str(model.config.id2label[i]) for i in range(model.config.num_labels)]
        self.is_pair = None
        self.tokenizer = AutoTokenizer.from_pretrained(str(directory), use_fast=True)
        self.encode = teacher_ids
        self.backend = f"eager PyTorch, {model.config.model_type} classifier"
        self.logits = lambda batch: model(**batch).logits

    def __call__(self, texts_a: list[str], texts_b: list[str] | None = None, batch_size: int = 128) -> list[dict]:
        return list(self.predict(texts_a, texts_b, batch_size))

    def predict(self, texts_a: list[str], texts_b: list[str] | None = None, batch_size: int = 128,
                progress: bool = False) -> Iterator[dict]:
        """Predictions in the order of the texts; batches of similar lengths (less padding)."""
        if self.is_pair and texts_b is None:
            raise UserError(f"{self.arch_file.path} is a pair student: give the second texts too "
                            f"(--text-pair, --text-pair-column, or a tab between the texts of a line)")
        if self.is_pair is False and texts_b is not None:
            raise UserError(f"{self.arch_file.path} reads one text per example: drop the second texts")
        if texts_b is not None and len(texts_b) != len(texts_a):
            raise UserError(f"{len(texts_a)} first texts but {len(texts_b)} second texts")
        ids = self.encode(self.tokenizer, texts_a, texts_b, self.max_length)
        keys = tuple(ids)
        self.truncated += sum(len(row) >= self.max_length for k in keys if k != "token_type_ids" for row in ids[k])
        rows = [{k: ids[k][i] for k in keys} for i in range(len(texts_a))]
        order = sorted(range(len(rows)), key=lambda i: len(rows[i][keys[0]]))
        results: list[dict | None] = [None] * len(rows)
        batches = range(0, len(order), batch_size)
        with torch.inference_mode():
            for start in tqdm(batches, desc="predicting", unit="batch", disable=not progress, file=sys.stderr):
                chosen = order[start:start + batch_size]
                probs = torch.softmax(self.logits(pad_batch([rows[i] for i in chosen], keys)).float(), dim=-1)
                for i, p in zip(chosen, probs.tolist()):
                    results[i] = {"label": self.labels[max(range(len(p)), key=p.__getitem__)],
                                  "probabilities": {name: round(v, 6) for name, v in zip(self.labels, p)}}
        yield from results


# --------------------------------------------------------------------------- inputs


def read_inputs(texts: list[str] | None, text_pairs: list[str] | None, input_file: str | None,
                text_column: str, text_pair_column: str | None, is_pair: bool,
                stdin: Iterable[str] | None = None) -> tuple[list[str], list[str] | None, str]:
    """``(texts_a, texts_b or None, where they came from)`` of predict's inputs: ``--text`` (and
    ``--text-pair``); a file (.txt: one text per line, a tab between the texts of a pair; .csv, .tsv,
    .jsonl, .json, .parquet: the text columns); or stdin (``-`` or nothing given), as .txt."""
    if texts:
        if input_file:
            raise UserError("give the texts either with --text or with --input, not both")
        return list(texts), (list(text_pairs) if text_pairs else None), "the command line"
    if input_file and input_file != "-" and Path(input_file).suffix.lower() != ".txt":
        columns = text_columns(read_source(input_file, "input", None), text_column,
                               text_pair_column if is_pair else None, f"input {input_file}")
        return columns["text_a"], columns.get("text_b"), input_file
    if input_file and input_file != "-":
        if not Path(input_file).is_file():
            raise UserError(f"input {input_file} does not exist")
        lines, where = Path(input_file).read_text(encoding="utf-8").split("\n"), input_file
    else:
        lines, where = [line.rstrip("\n") for line in (stdin if stdin is not None else sys.stdin)], "stdin"
    lines = [line[:-1] if line.endswith("\r") else line for line in lines]
    lines = [line for line in lines if line.strip()]
    if not lines:
        raise UserError(f"{where} holds no text")
    if not is_pair:
        return lines, None, where
    pairs = [line.split("\t") for line in lines]
    bad = next((n for n, p in enumerate(pairs, 1) if len(p) != 2), None)
    if bad is not None:
        raise UserError(f"{where}, text {bad}: a pair student reads two texts per line, separated by one tab")
    return [a for a, _ in pairs], [b for _, b in pairs], where


def predict_inputs(predictor: Predictor, texts_a: list[str], texts_b: list[str] | None, batch_size: int,
                   progress: bool) -> tuple[list[dict], dict]:
    """The predictions and a throughput report ``{"texts", "seconds", "texts_per_second", "backend"}``;
    warns once when texts were truncated."""
    start = time.perf_counter()
    predictions = list(predictor.predict(texts_a, texts_b, batch_size, progress=progress))
    seconds = time.perf_counter() - start
    if predictor.truncated:
        log.warning("%d text(s) reached the %d-token limit and were truncated there", predictor.truncated,
                    predictor.max_length)
    return predictions, {"texts": len(predictions), "seconds": seconds,
                         "texts_per_second": len(predictions) / max(seconds, 1e-9), "backend": predictor.backend}

