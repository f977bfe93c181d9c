"""The teacher-knowledge store: per-layer probe logits of the teacher, cached on disk.

The search never runs the teacher. :func:`build_knowledge` runs it once over
every train example (original and augmented) and every dev example, trains the
layer probes, and stores for each example the student's token ids, its label
(``-100`` for augmented copies), ``teacher_logits`` [J, C] and, for train rows, the
``origin``: the index of the original example a row is or was augmented from, so that
a split of the train rows keeps each example's copies on one side. Arrow columns,
with ``datasets``. The store's directory name is a fingerprint of the teacher's
weights, the data, the augmentation and probe settings: a second run with the
same inputs loads it; any change of them builds a new one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable

import datasets
import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .. import atomic
from ..data.encoding import (IGNORE_LABEL, MAX_LENGTH, STUDENT_ID_KEYS, dataset_fingerprint, pad_batch, row_lengths,
                             student_id_keys, tokenize)
from ..data.tasks import TaskSpec, get_task, spec_identity
from ..errors import UserError
from ..training import (EpochLengthGroupedSampler, EpochShuffleSampler, bf16_available, inference_precision,
                        pick_device, pin_memory)
from .augment import AugmentConfig, Augmenter
from .finetune import load_finetuned_teacher, load_tokenizer, read_teacher_info, resolve_model, teacher_word_embeddings
from .probes import LayerProbes, ProbeConfig, teacher_features, train_probes

log = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = Path(os.environ.get("NNI_ADABERT_CACHE", Path.home() / ".cache" / "nni-adabert"))

FORMAT_VERSION = 2      # 2: train rows record their origin
READABLE_FORMATS = (1, 2)
AUGMENT_CHUNK = 2048  # originals per resumable augmentation stage
TEACHER_FILES = "teacher"  # in a store: what students need of the teacher (tokenizer, config.json, embeddings)
EMBEDDINGS_FILE = "word_embeddings.safetensors"


@dataclass
class KnowledgeStore:
    """A built store: ``data`` has splits ``train`` and ``dev``; ``meta`` says what it holds."""

    path: Path
    data: datasets.DatasetDict
    meta: dict = field(default_factory=dict)

    @property
    def spec(self) -> TaskSpec:
        """The task; stores of GLUE tasks built before specs were recorded name it only."""
        return TaskSpec.from_dict(self.meta["spec"]) if "spec" in self.meta else get_task(self.meta["task"])

    @property
    def num_teacher_layers(self) -> int:
        return self.meta["num_teacher_layers"]

    @property
    def teacher_files(self) -> Path:
        """Where the teacher's tokenizer and ``config.json`` are read: the store's own copy, or
        for stores built before it kept one, the teacher's directory."""
        own = self.path / TEACHER_FILES
        return own if (own / "config.json").is_file() else Path(self.meta["teacher_dir"])

    @property
    def teacher_info(self) -> dict:
        """The teacher's record (base model, dev metrics), as the build found it."""
        return self.meta["teacher_info"] if "teacher_info" in self.meta else read_teacher_info(
            self.meta["teacher_dir"]) or {}

    @cached_property
    def tokenizer(self):
        """The teacher's tokenizer: the student reads the same ids. Loaded once: a search or a
        retraining reads it for the student's record, its vocabulary check and its exported files."""
        return load_tokenizer(self.teacher_files)

    def word_embeddings(self) -> torch.Tensor:
        """The teacher's word-embedding matrix [V, H] (the student's embedding is factorized from it)."""
        own = self.path / TEACHER_FILES / EMBEDDINGS_FILE
        if own.is_file():
            return load_file(str(own))["word_embeddings"]
        return teacher_word_embeddings(self.meta["teacher_dir"])

    def rows(self, split: str, limit: int | None = None, augmented_limit: int | None = None) -> datasets.Dataset:
        """The rows of ``split`` that a run reads.

        The train split holds the original examples first, then their augmented copies
        (label ``-100``, in the originals' order, up to ``copies`` per original). ``limit``
        alone: the first ``limit`` rows as stored. With ``augmented_limit`` (train split
        only) the two kinds are limited apart: the first ``limit`` original rows (all when
        ``None``) plus the first ``augmented_limit`` augmented rows (0: no augmentation).
        """
        ds = self.data[split]
        if augmented_limit is not None and split == "train":
            n_orig = int(self.meta.get("num_train_original", len(ds)))
            originals = range(n_orig if limit is None else min(limit, n_orig))
            return ds.select([*originals, *range(n_orig, n_orig + min(max(augmented_limit, 0), len(ds) - n_orig))])
        return ds if limit is None else ds.select(range(min(limit, len(ds))))

    @property
    def records_origins(self) -> bool:
        """Whether the train rows say which original each comes from (stores of format 2 on)."""
        return "origin" in self.data["train"].column_names

    def loader(self, split: str, batch_size: int, shuffle: bool = False, seed: int = 0,
               limit: int | None = None, augmented_limit: int | None = None,
               group_by_length: bool = False) -> DataLoader:
        """Batches as the search and retraining read them of :meth:`rows` (:func:`row_loader`)."""
        return row_loader(self.rows(split, limit, augmented_limit), batch_size, shuffle, seed, group_by_length)


def holdout_split(rows: datasets.Dataset, share: float, seed: int = 0) -> tuple[datasets.Dataset, datasets.Dataset]:
    """``(kept, held_out)`` train rows of a store that :attr:`~KnowledgeStore.records_origins`:
    a seeded ``share`` of the original examples, each with its augmented copies, is held out, so
    no held-out example reaches the other side as a copy. At least one example goes each way."""
    origins = np.fromiter(rows["origin"], dtype=np.int64, count=len(rows))
    examples = np.unique(origins)
    n_held = min(max(round(share * len(examples)), 1), len(examples) - 1)
    held = np.random.default_rng(seed).choice(examples, size=n_held, replace=False)
    is_held = np.isin(origins, held)
    return rows.select(np.flatnonzero(~is_held)), rows.select(np.flatnonzero(is_held))


def row_loader(rows: datasets.Dataset, batch_size: int, shuffle: bool = False, seed: int = 0,
               group_by_length: bool = False) -> DataLoader:
    """Batches of store rows as the search and retraining read them (see :func:`student_collate`);
    shuffled per epoch from ``seed`` (:class:`training.EpochShuffleSampler`), with ``group_by_length``
    in batches of similar lengths (:class:`training.EpochLengthGroupedSampler`; it only changes a
    shuffled order)."""
    sampler = None
    if shuffle and group_by_length:
        lengths = row_lengths(rows, student_id_keys(rows.column_names))
        sampler = EpochLengthGroupedSampler(batch_size, lengths, seed, shuffle_batches=True)  # BatchNorm: see there
    elif shuffle:
        sampler = EpochShuffleSampler(len(rows), seed)
    # Its own generator: creating an iterator must not draw from the global one (see training.py).
    return DataLoader(rows.with_format(None), batch_size=batch_size, sampler=sampler, collate_fn=student_collate,
                      generator=torch.Generator().manual_seed(seed), pin_memory=pin_memory())


def student_collate(features: list[dict]) -> dict[str, torch.Tensor]:
    """A batch for the student: ``input_ids_a``/``attention_mask_a`` [B, L] (and ``_b``
    for pairs), ``labels`` LongTensor[B] (-100 for augmented examples), and
    ``teacher_logits`` FloatTensor[B, J, C]."""
    batch = pad_batch(features, student_id_keys(features[0]))
    batch["labels"] = torch.tensor([f["label"] for f in features], dtype=torch.long)
    batch["teacher_logits"] = torch.tensor([f["teacher_logits"] for f in features], dtype=torch.float)
    return batch


def weights_fingerprint(model_dir: str | os.PathLike) -> str:
    """Hash of a checkpoint's config and weight files (content, not path or mtime)."""
    model_dir = Path(resolve_model(model_dir))
    h = hashlib.sha256()
    files = sorted(p for p in model_dir.iterdir() if p.suffix in (".safetensors", ".bin") or p.name == "config.json")
    for path in files:
        h.update(path.name.encode())
        atomic.hash_file(path, h)
    return h.hexdigest()[:16]


def knowledge_fingerprint(spec: TaskSpec, data: datasets.DatasetDict, teacher_dir, augment: AugmentConfig | None,
                          probes: ProbeConfig, max_length: int = MAX_LENGTH, precision: str = "fp32",
                          device: str = "cpu") -> tuple[str, dict]:
    """The store's name and what it is made of; ``precision`` is the teacher's resolved inference
    precision (``bf16`` or ``fp32``) on ``device``; ``augment`` with its copies resolved for the train set
    (:meth:`AugmentConfig.for_examples`), as the build makes them."""
    inputs = {
        "format": FORMAT_VERSION, **spec_identity(spec), "max_length": max_length,
        "teacher": weights_fingerprint(teacher_dir),
        "train": dataset_fingerprint(data["train"]), "dev": dataset_fingerprint(data["dev"]),
        "augment": asdict(augment.for_examples(len(data["train"]))) if augment else None, "probes": asdict(probes),
    }
    # Named only when it is not what every build used before the setting existed (bf16 on a bf16 GPU, else
    # fp32), so those stores keep their names and a store of the other precision never passes for one.
    if precision != ("bf16" if torch.device(device).type == "cuda" and bf16_available() else "fp32"):
        inputs["teacher_precision"] = precision
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16], inputs


def open_knowledge(path: str | os.PathLike) -> KnowledgeStore:
    # Absolute, so that the runs recording it can be used from any working directory.
    path = Path(path).resolve()
    meta_path = path / "meta.json"
    if not meta_path.is_file():
        raise UserError(f"{path} is not a teacher-knowledge store: meta.json is missing")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") not in READABLE_FORMATS:
        raise UserError(f"{path} has store format {meta.get('format')}, expected one of "
                        f"{', '.join(map(str, READABLE_FORMATS))}; rebuild it")
    return KnowledgeStore(path, datasets.load_from_disk(str(path / "data")), meta)


def build_knowledge(spec: TaskSpec, data: datasets.DatasetDict, teacher_dir: str | os.PathLike,
                    augment: AugmentConfig | None = AugmentConfig(), cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR,
                    probes: ProbeConfig = ProbeConfig(), progress: bool = True, precision: str = "auto"
                    ) -> KnowledgeStore:
    """The store for these inputs: loaded when cached, else built (teacher runs once).

    ``precision``: of the teacher's forward passes (:func:`training.inference_precision`; ``auto``:
    bf16 where the CPU or GPU computes it natively, 3x faster on an AVX512-BF16 CPU); part of the
    store's fingerprint.

    A build saves each finished stage (teacher features of train and dev, the probes,
    the augmented copies of every chunk of :data:`AUGMENT_CHUNK` originals) under ``<store>.partial``;
    a build that was killed and started again with the same inputs picks them up.
    """
    precision = inference_precision(pick_device(), precision)
    if augment is not None:  # the default number of copies depends on the train set's size
        augment = augment.for_examples(len(data["train"]))
    fingerprint, inputs = knowledge_fingerprint(spec, data, teacher_dir, augment, probes, precision=precision,
                                                device=pick_device())
    path = Path(cache_dir) / "knowledge" / f"{spec.name}-{fingerprint}"
    if (path / "meta.json").is_file():
        log.info("teacher knowledge: cache hit %s", path)
        return open_knowledge(path)
    stages = path.with_name(path.name + ".partial")
    log.info("teacher knowledge: building %s%s", path, " (resuming)" if stages.is_dir() else "")
    started = time.perf_counter()

    teacher = load_finetuned_teacher(teacher_dir, spec)
    tokenizer = load_tokenizer(teacher_dir)
    train, dev = (tokenize(data[split], tokenizer, spec, cache_dir=cache_dir) for split in ("train", "dev"))
    features = _stage(stages / "train_features", lambda: dict(zip(
        ("pooled", "head"), teacher_features(teacher, train, progress=progress, desc="teacher: train",
                                             precision=precision))))
    labels = torch.tensor(train["label"])
    probe_state = _stage(stages / "probes", lambda: train_probes(
        features["pooled"], features["head"], labels, probes).state_dict())
    layer_probes = LayerProbes(features["pooled"].shape[1] + 1, features["pooled"].shape[2], spec.num_labels)
    layer_probes.load_state_dict(probe_state)
    with torch.no_grad():
        train_logits = layer_probes(features["pooled"], features["head"])
        dev_logits = _stage(stages / "dev_logits", lambda: {"logits": layer_probes(
            *teacher_features(teacher, dev, progress=progress, desc="teacher: dev", precision=precision))})["logits"]
    dev_labels = torch.tensor(dev["label"])
    probe_acc = (dev_logits.argmax(-1) == dev_labels[:, None]).float().mean(0).tolist()

    student_cols = list(STUDENT_ID_KEYS if spec.is_pair else STUDENT_ID_KEYS[:1])
    train_rows = _rows(train, student_cols, train["label"], train_logits, origins=range(len(train)))
    if augment is not None and augment.copies > 0:
        train_rows = datasets.concatenate_datasets(
            [train_rows, _augmented_rows(spec, data["train"], teacher, tokenizer, teacher_dir, augment,
                                         layer_probes, student_cols, stages, progress, precision)])
    store = datasets.DatasetDict({"train": train_rows,
                                  "dev": _rows(dev, student_cols, dev["label"], dev_logits)})
    meta = {
        "format": FORMAT_VERSION, "fingerprint": fingerprint, "inputs": inputs, "task": spec.name,
        "spec": spec.to_dict(),
        "teacher_dir": str(Path(resolve_model(teacher_dir)).resolve()),
        "num_teacher_layers": int(dev_logits.shape[1]), "num_labels": spec.num_labels,
        "vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id,
        "num_train_original": len(train), "num_train_augmented": len(train_rows) - len(train),
        "num_dev": len(dev), "probe_dev_accuracy": probe_acc, "teacher_info": read_teacher_info(teacher_dir) or {},
    }
    with atomic.atomic_path(path) as tmp:
        store.save_to_disk(str(tmp / "data"))
        save_file(layer_probes.state_dict(), str(tmp / "probes.safetensors"))
        _save_teacher_files(tmp / TEACHER_FILES, teacher, tokenizer)
        atomic.write_json(tmp / "meta.json", meta)
    shutil.rmtree(stages, ignore_errors=True)
    seconds = time.perf_counter() - started
    rows = len(train_rows) + len(dev)  # each went through the teacher once (resumed stages: faster)
    log.info("teacher knowledge: %d rows in %.1f min (%.0f rows/s, augmentation included; teacher in %s)", rows,
             seconds / 60, rows / max(seconds, 1e-9), precision)
    return open_knowledge(path)


def _save_teacher_files(directory: Path, teacher, tokenizer) -> None:
    """What search, retraining and exported students need of the teacher, so that none of them
    opens its directory: the tokenizer's files, ``config.json`` and the word embeddings [V, H]."""
    directory.mkdir(parents=True)
    tokenizer.save_pretrained(str(directory))
    teacher.config.to_json_file(str(directory / "config.json"))
    save_file({"word_embeddings": teacher.get_input_embeddings().weight.detach().float().cpu().contiguous()},
              str(directory / EMBEDDINGS_FILE))


def _stage(path: Path, compute: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """``compute()``'s tensors, saved to ``path.safetensors`` (atomically) the first time
    and read back from there by a resumed build."""
    file = path.with_suffix(".safetensors")
    if file.is_file():
        return load_file(str(file))
    tensors = {k: v.detach().contiguous() for k, v in compute().items()}
    with atomic.atomic_path(file) as tmp:
        save_file(tensors, str(tmp))
    return tensors


def _stage_rows(path: Path, compute: Callable[[], datasets.Dataset]) -> datasets.Dataset:
    """:func:`_stage` for Arrow rows: ``compute()`` saved to the directory ``path``."""
    if (path / "dataset_info.json").is_file():
        return datasets.load_from_disk(str(path))
    with atomic.atomic_path(path) as tmp:
        compute().save_to_disk(str(tmp))
    return datasets.load_from_disk(str(path))


def _rows(tokenized: datasets.Dataset, student_cols: list[str], labels, logits: torch.Tensor,
          origins=None) -> datasets.Dataset:
    """Store rows; ``origins``: for train rows, the index of each row's original example."""
    cols = {c: tokenized[c] for c in student_cols}
    cols["label"] = list(labels)
    cols["teacher_logits"] = logits.numpy()
    J, C = logits.shape[1:]
    features = {**{c: datasets.Sequence(datasets.Value("int32")) for c in student_cols},
                "label": datasets.Value("int64"), "teacher_logits": datasets.Array2D((J, C), "float32")}
    if origins is not None:
        cols["origin"], features["origin"] = list(origins), datasets.Value("int64")
    features = datasets.Features(features)
    return datasets.Dataset.from_dict(cols, features=features)


def _augmented_rows(spec, original: datasets.Dataset, teacher, tokenizer, teacher_dir, augment: AugmentConfig,
                    layer_probes, student_cols, stages: Path, progress, precision: str) -> datasets.Dataset:
    """Augment the original train texts, then label them with the teacher's probes, one
    chunk of :data:`AUGMENT_CHUNK` originals at a time (each chunk a resumable stage).
    Every example has its own random generator, so chunking changes nothing."""
    augmenter = None

    def label_chunk(chunk: datasets.Dataset, start: int) -> datasets.Dataset:
        nonlocal augmenter
        if augmenter is None:
            info = read_teacher_info(teacher_dir) or {}
            # Candidates come from the base checkpoint: a fine-tuned classifier has lost its MLM head.
            base = info.get("base_model") or teacher_dir
            augmenter = Augmenter(resolve_model(base), tokenizer=tokenizer, config=augment, progress=False)
        if spec.is_pair:
            copies = augmenter.augment_pairs(chunk["text_a"], chunk["text_b"])
            flat = [pair for per_example in copies for pair in per_example]
            cols = {"text_a": [a for a, _ in flat], "text_b": [b for _, b in flat]}
        else:
            copies = augmenter.augment(chunk["text_a"])
            cols = {"text_a": [text for per_example in copies for text in per_example]}
        cols["label"] = [0] * len(cols["text_a"])  # placeholder for tokenize(); replaced by IGNORE_LABEL
        origins = [start + i for i, per_example in enumerate(copies) for _ in per_example]
        aug = tokenize(datasets.Dataset.from_dict(cols), tokenizer, spec)
        with torch.no_grad():
            logits = layer_probes(*teacher_features(teacher, aug, progress=False, precision=precision))
        return _rows(aug, student_cols, [IGNORE_LABEL] * len(aug), logits, origins)

    starts = range(0, len(original), AUGMENT_CHUNK)
    chunks = [_stage_rows(stages / f"augmented-{i:05d}", lambda: label_chunk(
                  original.select(range(start, min(start + AUGMENT_CHUNK, len(original)))), start))
              for i, start in enumerate(tqdm(starts, desc="augment + teacher", unit="chunk", disable=not progress))]
    return datasets.concatenate_datasets(chunks)
