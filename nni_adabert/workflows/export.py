"""Exported students: a versioned architecture JSON, safetensors weights, a cell picture.

``architecture.json`` holds NNI's exported architecture dict (``{"edge_2_0": op, ...,
"depth": K}``) plus everything needed to rebuild and judge the student: the student
config, task, teacher, vocabulary, params, FLOPs and dev metrics. Reading is strict:
anything we do not recognise is a :class:`UserError` naming the file and the field,
never a guess. Nothing here unpickles: weights are safetensors, architectures JSON.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .. import atomic
from ..data.encoding import vocab_fingerprint
from ..errors import UserError
from ..model.space import AdaBertStudent, StudentConfig, validate_arch
from ..plots import plot_cell
from ..teacher.finetune import load_tokenizer
from ..teacher.knowledge import KnowledgeStore

log = logging.getLogger(__name__)

FORMAT = "nni-adabert/architecture"
VERSION = 1
ARCH_FILE, WEIGHTS_FILE, CELL_FILE = "architecture.json", "student.safetensors", "cell.png"


@dataclass
class ArchitectureFile:
    path: Path
    doc: dict
    config: StudentConfig
    arch: dict

    @property
    def weights_path(self) -> Path:
        return self.path.parent / self.doc.get("weights", WEIGHTS_FILE)


def write_student(out_dir: str | os.PathLike, student: AdaBertStudent, info: dict, title: str | None = None) -> dict:
    """Write ``student.safetensors``, ``cell.png`` and ``architecture.json`` into ``out_dir``.

    ``info`` adds the fields a reader wants (task, teacher, vocab, params, flops,
    dev_metrics, search settings). The JSON is written last, so a complete JSON
    means complete weights beside it. Returns the JSON document.
    """
    out_dir = Path(out_dir)
    weights = out_dir / WEIGHTS_FILE
    state = {k: v.detach().cpu().contiguous() for k, v in student.state_dict().items()}
    with atomic.atomic_path(weights) as tmp:
        # One metadata key: safetensors writes metadata in hash-map order, which changes from one
        # process to the next, and two keys would make the file's SHA-256 differ between runs.
        save_file(state, str(tmp), metadata={"format": "pt"})
    plot_cell(student.arch, out_dir / CELL_FILE, title or f"{info.get('task', '')} searched cell")
    doc = {"format": FORMAT, "version": VERSION, **info,
           "architecture": dict(student.arch), "student_config": student.config.to_dict(),
           "weights": WEIGHTS_FILE, "weights_sha256": atomic.hash_file(weights).hexdigest(), "cell_picture": CELL_FILE}
    atomic.write_json(out_dir / ARCH_FILE, doc)
    return doc


class _DuplicateKey(Exception):
    pass


def _unique_keys(pairs: list) -> dict:
    """``json.loads``' object hook: a key given twice is an error (the json module keeps the last)."""
    keys = [k for k, _ in pairs]
    for key in keys:
        if keys.count(key) > 1:
            raise _DuplicateKey(key)
    return dict(pairs)


def read_architecture(path: str | os.PathLike, vocab: str | None = None) -> ArchitectureFile:
    """Read and validate an architecture JSON (a file, or a directory holding one).

    ``vocab``: the vocabulary fingerprint of the tokenizer the caller will feed
    the student; a mismatch is an error (the embedding rows would mean other words).
    """
    path = Path(path)
    if path.is_dir():
        path = path / ARCH_FILE
    if not path.is_file():
        raise UserError(f"architecture file {path} does not exist")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_unique_keys)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} is not a JSON file: {exc}") from None
    except _DuplicateKey as exc:
        raise UserError(f"{path}: key {exc.args[0]!r} appears twice in one object; each key once") from None
    if not isinstance(doc, dict):
        raise UserError(f"{path}: expected a JSON object, got {type(doc).__name__}")
    if doc.get("format") != FORMAT:
        raise UserError(f"{path}: field 'format' is {doc.get('format')!r}, expected {FORMAT!r}")
    if doc.get("version") != VERSION:
        raise UserError(f"{path}: format version {doc.get('version')!r} is not one we know "
                        f"(this nni-adabert reads version {VERSION})")
    for field in ("architecture", "student_config"):
        if not isinstance(doc.get(field), dict):
            raise UserError(f"{path}: field {field!r} is missing or not an object")
    try:
        config = StudentConfig.from_dict(doc["student_config"])
        arch = validate_arch(doc["architecture"], config)
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None
    expected_vocab = (doc.get("vocab") or {}).get("fingerprint")
    if vocab is not None and expected_vocab is not None and vocab != expected_vocab:
        raise UserError(f"{path}: the student was built for another vocabulary (fingerprint {expected_vocab}, "
                        f"this tokenizer's is {vocab}); use the teacher tokenizer it was searched with")
    return ArchitectureFile(path, doc, config, arch)


def load_student(arch_file: ArchitectureFile, weights: str | os.PathLike | None = None) -> AdaBertStudent:
    """The exported child with its trained weights (strict: every tensor must match)."""
    weights = Path(weights) if weights else arch_file.weights_path
    if not weights.is_file():
        raise UserError(f"weights file {weights} does not exist")
    recorded = arch_file.doc.get("weights_sha256")
    if weights == arch_file.weights_path and recorded:
        if atomic.hash_file(weights).hexdigest() != recorded:
            raise UserError(f"{weights} does not match the checksum in {arch_file.path}: "
                            "the file was changed or truncated after export")
    else:
        log.warning("%s: no checksum to check it against (%s); its tensors are checked against the "
                    "architecture only", weights, "not the file the architecture was exported with"
                    if recorded else f"{arch_file.path} records none")
    try:
        with safe_open(str(weights), framework="pt") as f:   # the header only: shapes without the data
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{weights} is not a readable safetensors file: {exc}") from None
    # Before anything is built: sizes in the JSON that the weights do not have (a vocabulary of 10^9
    # would allocate hundreds of GB) are refused.
    config = arch_file.config
    for key, size in (("embed.word.weight", (config.vocab_size, config.embed_dim)),
                      ("classifier.weight", (config.num_labels, config.embed_dim))):
        if shapes.get(key) != size:
            raise UserError(f"{arch_file.path}: its student_config gives {key} the shape {list(size)}, but {weights} "
                            f"holds {list(shapes[key]) if key in shapes else 'no such tensor'}")
    state = load_file(str(weights))
    student = AdaBertStudent(config, arch_file.arch)
    expected = student.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    common = set(expected) & set(state)
    wrong = sorted(k for k in common if expected[k].shape != state[k].shape)
    # load_state_dict would cast a float16 or int64 tensor silently
    wrong_type = sorted(k for k in common if expected[k].dtype != state[k].dtype)
    if missing or unexpected or wrong or wrong_type:
        details = "; ".join(f"{what}: {keys[:3]}{' ...' if len(keys) > 3 else ''}"
                            for what, keys in (("missing", missing), ("unexpected", unexpected),
                                               ("wrong shape", wrong), ("wrong dtype", wrong_type)) if keys)
        raise UserError(f"weights {weights} do not match the architecture in {arch_file.path} ({details})")
    student.load_state_dict(state)
    return student.eval()


def load_exported(path: str | os.PathLike, store: KnowledgeStore | None = None) -> ArchitectureFile:
    """Read an exported student (JSON + weights), checking its vocabulary against ``store``'s teacher."""
    vocab = vocab_fingerprint(load_tokenizer(store.meta["teacher_dir"])) if store is not None else None
    return read_architecture(path, vocab=vocab)


def check_fits(arch_file: ArchitectureFile, store: KnowledgeStore) -> None:
    """A student evaluated or deployed on ``store``'s dev rows must be one of its task: the same
    number of labels, single text or pair, and vocabulary size. Otherwise one :class:`UserError`
    naming both (a retraining is how a structure moves to another task)."""
    config, meta = arch_file.config, store.meta
    task = arch_file.doc.get("task")
    differences = [f"{what}: {ours} for the student, {theirs} for the teacher run"
                   for what, ours, theirs in (("task", task, meta["task"]),
                                              ("labels", config.num_labels, store.spec.num_labels),
                                              ("input", "pair" if config.is_pair else "single text",
                                               "pair" if store.spec.is_pair else "single text"),
                                              ("vocabulary size", config.vocab_size, meta.get("vocab_size")))
                   if ours != theirs and None not in (ours, theirs)]
    if differences:
        raise UserError(f"{arch_file.path} is not a student of the teacher run's task ({'; '.join(differences)}): "
                        f"use the teacher run it was trained with, or retrain it on this task (nni-adabert retrain)")
