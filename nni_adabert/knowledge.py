"""The teacher-knowledge store: per-layer probe logits of the teacher, cached on disk.

The search never runs the teacher. :func:`build_knowledge` runs it once over
every train example (original and augmented) and every dev example, trains the
layer probes, and stores for each example the student's token ids, its label
(``-100`` for augmented copies) and ``teacher_logits`` [J, C] as Arrow columns
with ``datasets``. The store's directory name is a fingerprint of the teacher's
weights, the data, the augmentation and probe settings: a second run with the
same inputs loads it; any change of them builds a new one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import datasets
import torch
from safetensors.torch import save_file
from torch.utils.data import DataLoader

from . import atomic
from .augment import AugmentConfig, Augmenter
from .data import DEFAULT_CACHE_DIR, IGNORE_LABEL, MAX_LENGTH, dataset_fingerprint, pad_batch, tokenize
from .errors import UserError
from .tasks import TaskSpec, get_task
from .teacher import (ProbeConfig, load_finetuned_teacher, load_tokenizer, read_teacher_info,
                      resolve_model, teacher_features, train_probes)

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


@dataclass
class KnowledgeStore:
    """A built store: ``data`` has splits ``train`` and ``dev``; ``meta`` says what it holds."""

    path: Path
    data: datasets.DatasetDict
    meta: dict = field(default_factory=dict)

    @property
    def spec(self) -> TaskSpec:
        return get_task(self.meta["task"])

    @property
    def num_teacher_layers(self) -> int:
        return self.meta["num_teacher_layers"]

    def loader(self, split: str, batch_size: int, shuffle: bool = False, seed: int = 0,
               limit: int | None = None) -> DataLoader:
        """Batches as the search and retraining read them (see :func:`student_collate`)."""
        ds = self.data[split]
        if limit is not None:
            ds = ds.select(range(min(limit, len(ds))))
        generator = torch.Generator().manual_seed(seed)
        return DataLoader(ds.with_format(None), batch_size=batch_size, shuffle=shuffle, generator=generator,
                          collate_fn=student_collate)


def student_collate(features: list[dict]) -> dict[str, torch.Tensor]:
    """A batch for the student: ``input_ids_a``/``attention_mask_a`` [B, L] (and ``_b``
    for pairs), ``labels`` LongTensor[B] (-100 for augmented examples), and
    ``teacher_logits`` FloatTensor[B, J, C]."""
    keys = ("input_ids_a", "input_ids_b") if "input_ids_b" in features[0] else ("input_ids_a",)
    batch = pad_batch(features, keys)
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
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def knowledge_fingerprint(spec: TaskSpec, data: datasets.DatasetDict, teacher_dir, augment: AugmentConfig | None,
                          probes: ProbeConfig, max_length: int = MAX_LENGTH) -> tuple[str, dict]:
    inputs = {
        "format": FORMAT_VERSION, "task": spec.name, "max_length": max_length,
        "teacher": weights_fingerprint(teacher_dir),
        "train": dataset_fingerprint(data["train"]), "dev": dataset_fingerprint(data["dev"]),
        "augment": asdict(augment) if augment else None, "probes": asdict(probes),
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16], inputs


def open_knowledge(path: str | os.PathLike) -> KnowledgeStore:
    path = Path(path)
    meta_path = path / "meta.json"
    if not meta_path.is_file():
        raise UserError(f"{path} is not a teacher-knowledge store: meta.json is missing")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT_VERSION:
        raise UserError(f"{path} has store format {meta.get('format')}, expected {FORMAT_VERSION}; rebuild it")
    return KnowledgeStore(path, datasets.load_from_disk(str(path / "data")), meta)


def build_knowledge(spec: TaskSpec, data: datasets.DatasetDict, teacher_dir: str | os.PathLike,
                    augment: AugmentConfig | None = AugmentConfig(), cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR,
                    probes: ProbeConfig = ProbeConfig(), progress: bool = True) -> KnowledgeStore:
    """The store for these inputs: loaded when cached, else built (teacher runs once)."""
    fingerprint, inputs = knowledge_fingerprint(spec, data, teacher_dir, augment, probes)
    path = Path(cache_dir) / "knowledge" / f"{spec.name}-{fingerprint}"
    if (path / "meta.json").is_file():
        log.info("teacher knowledge: cache hit %s", path)
        return open_knowledge(path)
    log.info("teacher knowledge: building %s", path)

    teacher = load_finetuned_teacher(teacher_dir, spec)
    tokenizer = load_tokenizer(teacher_dir)
    train, dev = (tokenize(data[split], tokenizer, spec, cache_dir=cache_dir) for split in ("train", "dev"))
    pooled, head = teacher_features(teacher, train, progress=progress, desc="teacher: train")
    layer_probes = train_probes(pooled, head, torch.tensor(train["label"]), probes)
    with torch.no_grad():
        train_logits = layer_probes(pooled, head)
        dev_logits = layer_probes(*teacher_features(teacher, dev, progress=progress, desc="teacher: dev"))
    dev_labels = torch.tensor(dev["label"])
    probe_acc = (dev_logits.argmax(-1) == dev_labels[:, None]).float().mean(0).tolist()

    student_cols = ["input_ids_a", "input_ids_b"] if spec.is_pair else ["input_ids_a"]
    train_rows = _rows(train, student_cols, train["label"], train_logits)
    if augment is not None and augment.copies > 0:
        train_rows = datasets.concatenate_datasets(
            [train_rows, _augmented_rows(spec, data["train"], teacher, tokenizer, teacher_dir, augment,
                                         layer_probes, student_cols, progress)])
    store = datasets.DatasetDict({"train": train_rows,
                                  "dev": _rows(dev, student_cols, dev["label"], dev_logits)})
    meta = {
        "format": FORMAT_VERSION, "fingerprint": fingerprint, "inputs": inputs, "task": spec.name,
        "teacher_dir": str(Path(resolve_model(teacher_dir)).resolve()),
        "num_teacher_layers": int(dev_logits.shape[1]), "num_labels": spec.num_labels,
        "vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id,
        "num_train_original": len(train), "num_train_augmented": len(train_rows) - len(train),
        "num_dev": len(dev), "probe_dev_accuracy": probe_acc,
    }
    with atomic.atomic_path(path) as tmp:
        store.save_to_disk(str(tmp / "data"))
        save_file(layer_probes.state_dict(), str(tmp / "probes.safetensors"))
        atomic.write_json(tmp / "meta.json", meta)
    return open_knowledge(path)


def _rows(tokenized: datasets.Dataset, student_cols: list[str], labels, logits: torch.Tensor) -> datasets.Dataset:
    cols = {c: tokenized[c] for c in student_cols}
    cols["label"] = list(labels)
    cols["teacher_logits"] = logits.numpy()
    J, C = logits.shape[1:]
    features = datasets.Features({**{c: datasets.Sequence(datasets.Value("int32")) for c in student_cols},
                                  "label": datasets.Value("int64"),
                                  "teacher_logits": datasets.Array2D((J, C), "float32")})
    return datasets.Dataset.from_dict(cols, features=features)


def _augmented_rows(spec, original: datasets.Dataset, teacher, tokenizer, teacher_dir, augment: AugmentConfig,
                    layer_probes, student_cols, progress) -> datasets.Dataset:
    """Augment the original train texts, then label them with the teacher's probes."""
    info = read_teacher_info(teacher_dir) or {}
    # Candidates come from the base checkpoint: a fine-tuned classifier has lost its MLM head.
    base = info.get("base_model") or teacher_dir
    augmenter = Augmenter(resolve_model(base), tokenizer=tokenizer, config=augment)
    if spec.is_pair:
        copies = augmenter.augment_pairs(original["text_a"], original["text_b"])
        flat = [pair for per_example in copies for pair in per_example]
        cols = {"text_a": [a for a, _ in flat], "text_b": [b for _, b in flat]}
    else:
        copies = augmenter.augment(original["text_a"])
        cols = {"text_a": [text for per_example in copies for text in per_example]}
    cols["label"] = [0] * len(cols["text_a"])  # placeholder for tokenize(); replaced by IGNORE_LABEL
    aug = tokenize(datasets.Dataset.from_dict(cols), tokenizer, spec)
    with torch.no_grad():
        logits = layer_probes(*teacher_features(teacher, aug, progress=progress, desc="teacher: augmented"))
    return _rows(aug, student_cols, [IGNORE_LABEL] * len(aug), logits)
