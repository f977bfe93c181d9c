"""What both models read: token ids, padded batches with their masks, content fingerprints.

The teacher reads a pair packed as ``[CLS] a [SEP] b [SEP]``; the student reads each
text on its own (the paper embeds the two texts separately). Masks are built at
batching time from the lengths, and :func:`masked_mean` and :func:`masked_max` are the one mean and
the one max over them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import datasets
import numpy as np
import pyarrow.compute as pc
import torch

from .tasks import TaskSpec

log = logging.getLogger(__name__)

MAX_LENGTH = 128
IGNORE_LABEL = -100  # label of augmented examples: no gold label, excluded from L_CE and dev metrics


def dataset_fingerprint(ds: datasets.Dataset) -> str:
    """Content hash of a split (texts and labels), stable across runs and sources."""
    h = hashlib.sha256()
    for col in ds.column_names:
        h.update(col.encode())
        for value in ds[col]:
            h.update(str(value).encode("utf-8") + b"\x1f")
    return h.hexdigest()[:16]


def vocab_fingerprint(tokenizer) -> str:
    """Hash of a tokenizer's token -> id table: two models share inputs iff it matches."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    return hashlib.sha256(json.dumps(vocab).encode()).hexdigest()[:16]


def teacher_ids(tokenizer, texts_a: list[str], texts_b: list[str] | None = None,
                max_length: int = MAX_LENGTH) -> dict[str, list[list[int]]]:
    """The teacher's input: ``input_ids`` and ``token_type_ids``, a pair packed as
    ``[CLS] a [SEP] b [SEP]``, truncated to ``max_length`` tokens."""
    packed = tokenizer(texts_a, texts_b, truncation=True, max_length=max_length, return_token_type_ids=True)
    return {"input_ids": packed["input_ids"], "token_type_ids": packed["token_type_ids"]}


def student_ids(tokenizer, texts_a: list[str], texts_b: list[str] | None = None,
                max_length: int = MAX_LENGTH) -> dict[str, list[list[int]]]:
    """The student's input: ``input_ids_a`` (and ``input_ids_b``), each text tokenized on its own
    and truncated to ``max_length`` tokens."""
    out = {"input_ids_a": tokenizer(texts_a, truncation=True, max_length=max_length)["input_ids"]}
    if texts_b is not None:
        out["input_ids_b"] = tokenizer(texts_b, truncation=True, max_length=max_length)["input_ids"]
    return out


def tokenize(ds: datasets.Dataset, tokenizer, spec: TaskSpec, max_length: int = MAX_LENGTH,
             cache_dir: str | os.PathLike | None = None) -> datasets.Dataset:
    """Add the token ids both models read.

    - ``input_ids`` / ``token_type_ids``: the teacher's input (a pair packed as
      ``[CLS] a [SEP] b [SEP]``);
    - ``input_ids_a`` (and ``input_ids_b`` for pairs): the student's input, each
      text on its own (the paper embeds the two texts separately).

    Texts longer than ``max_length`` tokens are truncated, with a warning.
    Attention masks are built at batching time from the lengths. With ``cache_dir``
    the result is cached as Arrow by ``datasets``, keyed by the texts, the
    vocabulary and ``max_length``.
    """
    pair = spec.is_pair

    def encode(batch):
        a, b = batch["text_a"], batch["text_b"] if pair else None
        out = {**teacher_ids(tokenizer, a, b, max_length), **student_ids(tokenizer, a, b, max_length)}
        # Count truncations with the untruncated lengths of the packed input.
        full = tokenizer(a, b, truncation=False)["input_ids"]
        out["truncated"] = [len(ids) > max_length for ids in full]
        return out

    cache_file = None
    if cache_dir is not None:
        key = hashlib.sha256(f"{dataset_fingerprint(ds)}-{vocab_fingerprint(tokenizer)}-{max_length}-{spec.name}"
                             .encode()).hexdigest()[:16]
        cache_file = Path(cache_dir) / "tokenized" / f"{key}.arrow"
        cache_file.parent.mkdir(parents=True, exist_ok=True)
    before = set(cache_file.parent.glob("tmp*")) if cache_file else set()
    try:
        ds = ds.map(encode, batched=True, batch_size=1000, desc="tokenizing",
                    load_from_cache_file=cache_file is not None,
                    cache_file_name=str(cache_file) if cache_file else None)
    except BaseException:
        # datasets writes the cache under a temporary name beside it and leaves that file behind on failure
        for tmp in set(cache_file.parent.glob("tmp*")) - before if cache_file else ():
            tmp.unlink(missing_ok=True)
        raise
    n = sum(ds["truncated"])
    if n:
        log.warning("%d of %d examples are longer than %d tokens and were truncated", n, len(ds), max_length)
    return ds.remove_columns("truncated")


STUDENT_ID_KEYS = ("input_ids_a", "input_ids_b")


def student_id_keys(columns) -> tuple[str, ...]:
    """The student's id columns among ``columns`` (a dataset's column names, a row's keys):
    ``input_ids_a``, and ``input_ids_b`` for a pair."""
    return tuple(key for key in STUDENT_ID_KEYS if key in columns)


def row_lengths(rows: datasets.Dataset, keys: tuple[str, ...]) -> list[int]:
    """Each row's length in tokens: its longest id column among ``keys`` (the student pads both
    texts of a pair to one length). Read from Arrow, without building the rows."""
    table = rows.with_format("arrow")
    lengths = [pc.list_value_length(table[key]).to_numpy(zero_copy_only=False) for key in keys]
    return [int(n) for n in (lengths[0] if len(lengths) == 1 else np.maximum.reduce(lengths))]


def pad_batch(features: list[dict], keys: tuple[str, ...], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Pad each id column in ``keys`` to the batch's longest row and add its mask.

    Returns ``{key: LongTensor[B, L_key]}`` plus ``attention_mask`` (for
    ``input_ids``) or ``attention_mask_a``/``_b`` (for ``input_ids_a``/``_b``).
    """
    batch: dict[str, torch.Tensor] = {}
    for key in keys:
        rows = [f[key] for f in features]
        length = max(len(r) for r in rows)
        ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.as_tensor(r, dtype=torch.long)
            mask[i, : len(r)] = 1
        batch[key] = ids
        if key == "token_type_ids":
            continue
        batch[key.replace("input_ids", "attention_mask")] = mask
    return batch


def pad_batches(rows: list[dict], keys: tuple[str, ...], batch_size: int) -> list[dict[str, torch.Tensor]]:
    """``rows`` in order, cut into batches of ``batch_size``, each one :func:`pad_batch`-ed."""
    return [pad_batch(rows[i:i + batch_size], keys) for i in range(0, len(rows), batch_size)]


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    """Mean over the real tokens along ``dim`` of ``x``, which is zero on padding (multiply by the
    mask first where it is not); ``mask`` (1 = token) broadcasts against ``x``. E.g. ``x``
    ``[B, D, L]`` with ``mask`` ``[B, 1, L]`` and ``dim=-1`` -> ``[B, D]``."""
    return x.sum(dim) / mask.to(x.dtype).sum(dim).clamp_min(1.0)


def masked_max(x: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    """Max over the real tokens along ``dim`` of ``x`` (padding never wins, whatever it holds);
    shapes as :func:`masked_mean`. A row without tokens gives 0, as the mean does (not the dtype's lowest
    value, which would overflow whatever reads it)."""
    without_tokens = mask.to(x.dtype).sum(dim) == 0
    return x.masked_fill(mask == 0, torch.finfo(x.dtype).min).amax(dim).masked_fill(without_tokens, 0.0)
