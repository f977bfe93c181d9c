"""The file format of a trained student: ``architecture.json`` beside ``student.safetensors``,
and the tokenizer's files, in the Hugging Face manner (``save_pretrained`` / ``from_pretrained``).

``architecture.json`` holds NNI's exported architecture dict (``{"edge_2_0": op, ...,
"depth": K}``), the student config and whatever the writer adds (task and label names,
teacher, params, dev metrics). Reading is strict: anything we do not recognise is a
:class:`UserError` naming the file and the field, never a guess. Nothing here unpickles:
weights are safetensors, architectures JSON, tokenizers their JSON and text files.
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
from ..errors import UserError
from .space import DEAD_CELL, AdaBertStudent, StudentConfig, reads_inputs, validate_arch

log = logging.getLogger(__name__)

FORMAT = "nni-adabert/architecture"
VERSION = 1
ARCH_FILE, WEIGHTS_FILE = "architecture.json", "student.safetensors"


@dataclass
class ArchitectureFile:
    path: Path
    doc: dict
    config: StudentConfig
    arch: dict

    @property
    def weights_path(self) -> Path:
        return self.path.parent / self.doc.get("weights", WEIGHTS_FILE)


def save_pretrained(student: AdaBertStudent, directory: str | os.PathLike, info: dict | None = None,
                    tokenizer=None) -> dict:
    """Write ``student.safetensors``, the ``tokenizer``'s files (when given) and ``architecture.json``
    into ``directory``; ``info`` adds fields to the JSON. The JSON is written last, so a complete
    JSON means complete files beside it. Returns the JSON document."""
    directory = Path(directory)
    weights = directory / WEIGHTS_FILE
    state = {k: v.detach().cpu().contiguous() for k, v in student.state_dict().items()}
    with atomic.atomic_path(weights) as tmp:
        # One metadata key: safetensors writes metadata in hash-map order, which changes from one
        # process to the next, and two keys would make the file's SHA-256 differ between runs.
        save_file(state, str(tmp), metadata={"format": "pt"})
    if tokenizer is not None:  # AutoTokenizer.from_pretrained(directory) reads them back
        tokenizer.save_pretrained(str(directory))
    doc = {"format": FORMAT, "version": VERSION, **(info or {}),
           "architecture": dict(student.arch), "student_config": student.config.to_dict(),
           "weights": WEIGHTS_FILE, "weights_sha256": atomic.hash_file(weights).hexdigest()}
    atomic.write_json(directory / ARCH_FILE, doc)
    return doc


def from_pretrained(directory: str | os.PathLike) -> AdaBertStudent:
    """The student saved in ``directory`` (or by its ``architecture.json``), in eval mode."""
    return load_student(read_architecture(directory))


class _DuplicateKey(Exception):
    pass


def _unique_keys(pairs: list) -> dict:
    """``json.loads``' object hook: a key given twice is an error (the json module keeps the last)."""
    keys = [k for k, _ in pairs]
    for key in keys:
        if keys.count(key) > 1:
            raise _DuplicateKey(key)
    return dict(pairs)


def architecture_of(doc: dict, source: str | os.PathLike = "architecture") -> tuple[StudentConfig, dict]:
    """The validated ``(student config, architecture)`` of an architecture document (a parsed
    architecture.json, or a search's record of one); errors name ``source``."""
    if doc.get("format") != FORMAT:
        raise UserError(f"{source}: field 'format' is {doc.get('format')!r}, expected {FORMAT!r}")
    if doc.get("version") != VERSION:
        raise UserError(f"{source}: format version {doc.get('version')!r} is not one we know "
                        f"(this nni-adabert reads version {VERSION})")
    for field in ("architecture", "student_config"):
        if not isinstance(doc.get(field), dict):
            raise UserError(f"{source}: field {field!r} is missing or not an object")
    try:
        config = StudentConfig.from_dict(doc["student_config"])
        return config, validate_arch(doc["architecture"], config)
    except UserError as exc:
        raise UserError(f"{source}: {exc}") from None


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
    config, arch = architecture_of(doc, path)
    expected_vocab = (doc.get("vocab") or {}).get("fingerprint")
    if vocab is not None and expected_vocab is not None and vocab != expected_vocab:
        raise UserError(f"{path}: the student was built for another vocabulary (fingerprint {expected_vocab}, "
                        f"this tokenizer's is {vocab}); use the teacher tokenizer it was searched with")
    return ArchitectureFile(path, doc, config, arch)


def load_student(arch_file: ArchitectureFile, weights: str | os.PathLike | None = None) -> AdaBertStudent:
    """The exported child with its trained weights (strict: every tensor must match); a warning when
    its cell does not read its inputs (:func:`space.reads_inputs`: beyond their length, it ignores the text,
    or one text of a pair)."""
    if not reads_inputs(arch_file.arch, arch_file.config):
        log.warning("%s: %s", arch_file.path, DEAD_CELL)
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
                      ("classifier.weight", (config.num_labels, config.head_dim))):
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
