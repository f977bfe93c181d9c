"""Inference speed of teacher and student, measured side by side in one process, and the
latency table the speed budget of the search reads.

Speed is reported as a ratio (teacher time / student time) on the same examples,
the same batch size, the same thread count, after warm-up, as the median of
repeats: absolute times from a shared machine mean little.

:func:`latency_table` measures a space's :class:`model.latency.LatencyTable` on this machine
over a store's first dev batches, once: it is cached as JSON beside the knowledge stores,
keyed by everything that changes it (CPU, torch, threads, batch, lengths, space, reference).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
from pathlib import Path
from typing import Callable, Mapping

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoConfig, BertConfig, BertForSequenceClassification

from .. import atomic
from ..data.encoding import pad_batch, pad_batches, row_lengths, student_id_keys
from ..errors import UserError
from ..model.latency import LatencyTable, measure_latency, time_runs
from ..model.space import AdaBertStudent, StudentConfig
from ..teacher.knowledge import KnowledgeStore
from .deploy import OnnxStudent


def _runner(model, rows: list[dict], batch_size: int) -> tuple[Callable, list]:
    """``(fn, batches)`` timing ``model`` on ``rows``: an AdaBERT student on its per-text ids,
    anything else as a Hugging Face sequence classifier on the packed ``input_ids``/``token_type_ids``."""
    if isinstance(model, OnnxStudent):  # an ONNX Runtime session: fed the student's batches as they are
        return model, pad_batches(rows, model.id_keys, batch_size)
    model = model.eval().cpu()
    if isinstance(model, AdaBertStudent):
        return (lambda b: model(**b, return_probes=False)), pad_batches(rows, student_id_keys(rows[0]), batch_size)
    return (lambda b: model(**b)), pad_batches(rows, ("input_ids", "token_type_ids"), batch_size)


def measure_speeds(models: Mapping[str, torch.nn.Module], rows: list[dict], batch_size: int = 128,
                   repeats: int = 3, warmup: int = 1, threads: int | None = None) -> dict:
    """Time every model of ``{name: model}`` over the same ``rows`` in this process (CPU, batch
    ``batch_size``, ``threads`` intra-op threads, ``warmup`` untimed passes, median of ``repeats``).

    Returns ``seconds`` (median per pass, for ratios only), ``times`` (every pass) and
    ``speedup_over[a][b]`` = time of ``b`` / time of ``a`` (how many times faster ``a`` is than ``b``).
    """
    if threads is not None:
        torch.set_num_threads(threads)
    times = time_runs({name: _runner(m, rows, batch_size) for name, m in models.items()}, repeats, warmup)
    seconds = {name: statistics.median(t) for name, t in times.items()}
    return {"seconds": seconds, "times": times,
            "speedup_over": {a: {b: seconds[b] / seconds[a] for b in seconds if b != a} for a in seconds},
            "examples": len(rows), "batch_size": batch_size, "repeats": repeats, "warmup": warmup,
            "threads": torch.get_num_threads()}


def teacher_flops(teacher, row: dict) -> int:
    """FLOPs (matmuls, 2 per multiply-add) of the teacher on one example.

    Attention runs on SDPA's math backend here: on CPU the fused SDPA kernel is invisible to
    ``FlopCounterMode``, which would drop the ``QK^T`` and ``AV`` matmuls from the count.
    """
    batch = pad_batch([row], ("input_ids", "token_type_ids"))
    with torch.inference_mode(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        teacher(**batch)
    return int(counter.get_total_flops())


def transformer_params(model, include_embedding: bool = True) -> int:
    """Parameters of a Hugging Face model; without its ``base_model.embeddings`` (word, position,
    token-type embeddings and their LayerNorm) when ``include_embedding`` is false."""
    total = sum(p.numel() for p in model.parameters())
    if include_embedding:
        return total
    return total - sum(p.numel() for p in model.base_model.embeddings.parameters())


def bert_base(num_labels: int, config=None):
    """The BERT-base architecture (``transformers.BertConfig()`` defaults: 12 layers, hidden 768,
    vocab 30,522), randomly initialised: a speed and size reference, no download (weights do not
    change inference time). ``config`` replaces the defaults (tests use a tiny one)."""
    config = BertConfig() if config is None else config
    config.num_labels = num_labels
    torch.manual_seed(0)
    return BertForSequenceClassification(config).eval()


def measure_speedup(teacher, student, rows: list[dict], batch_size: int = 128, repeats: int = 3,
                    threads: int | None = None) -> dict:
    """Time teacher and student over the same tokenized ``rows`` (dicts with the teacher's
    ``input_ids``/``token_type_ids`` and the student's ``input_ids_a``/``_b``).

    Returns both median times in seconds (for the ratio only) and ``speedup``.
    """
    timing = measure_speeds({"teacher": teacher, "student": student}, rows, batch_size, repeats, threads=threads)
    t_teacher, t_student = timing["seconds"]["teacher"], timing["seconds"]["student"]
    return {"teacher_seconds": t_teacher, "student_seconds": t_student, "speedup": t_teacher / t_student,
            "examples": len(rows), "batch_size": batch_size, "repeats": repeats, "threads": timing["threads"]}


def with_teacher_input(row: dict, max_length: int = 128) -> dict:
    """Add the teacher's packed input (``[CLS] a [SEP] b [SEP]``) to a store row, which
    holds only the student's per-text ids."""
    a, b = row["input_ids_a"], row.get("input_ids_b")
    ids = a + b[1:] if b else a
    types = [0] * len(a) + [1] * (len(ids) - len(a))
    return {**row, "input_ids": ids[:max_length], "token_type_ids": types[:max_length]}


def dev_examples(store: KnowledgeStore, limit: int | None = None) -> list[dict]:
    """The first ``limit`` (all: ``None``) dev rows of a knowledge store with both models'
    inputs: the student's per-text ids and the teacher's packed ones (:func:`with_teacher_input`)."""
    dev = store.data["dev"]
    if limit is not None:
        dev = dev.select(range(min(limit, len(dev))))
    return [with_teacher_input(r) for r in dev.select_columns(list(student_id_keys(dev.column_names)))]


def pad_to(row: dict, length: int) -> dict:
    """``row``'s teacher input repeated to exactly ``length`` tokens (FLOPs at a fixed length)."""
    return {"input_ids": (row["input_ids"] * length)[:length], "token_type_ids": [0] * length}


# --------------------------------------------------------------------------- the latency table

LATENCY_ROWS = 512  # dev rows the latency table is timed on: 4 batches of 128
REFERENCES = {"bert-base": "the BERT-base architecture", "teacher": "the teacher's architecture"}


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (``platform.processor()`` where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def batch_lengths(store: KnowledgeStore, batch_size: int, rows: int = LATENCY_ROWS) -> tuple[list[int], list[int]]:
    """``(student lengths, reference lengths)`` of the first ``rows`` dev rows in batches of
    ``batch_size``: each batch's padded length for the student (both texts of a pair padded to
    one) and for a BERT-style model (the packed ``[CLS] a [SEP] b [SEP]``)."""
    examples = dev_examples(store, rows)
    dev = store.data["dev"].select(range(len(examples)))
    lengths = row_lengths(dev, student_id_keys(dev.column_names))
    starts = range(0, len(examples), batch_size)
    return ([max(lengths[start:start + batch_size]) for start in starts],
            [max(len(r["input_ids"]) for r in examples[start:start + batch_size]) for start in starts])


def reference_config(store: KnowledgeStore, speedup_over: str):
    """The Hugging Face config of the speed reference: ``bert-base`` (``BertConfig()`` defaults) or
    ``teacher`` (the store's teacher's config); its weights do not change its speed."""
    if speedup_over == "bert-base":
        return BertConfig(num_labels=store.meta["num_labels"])
    if speedup_over == "teacher":
        return AutoConfig.from_pretrained(store.teacher_files)
    raise UserError(f"search setting speedup_over must be one of {sorted(REFERENCES)}, got {speedup_over!r}")


def latency_table(store: KnowledgeStore, space_config: StudentConfig, speedup_over: str = "bert-base",
                  batch_size: int = 128, threads: int = 1, cache_dir: str | os.PathLike | None = None,
                  echo: Callable[[str], None] | None = None) -> LatencyTable:
    """This machine's :class:`LatencyTable` of the space ``space_config``, timed on ``store``'s
    first dev batches with ``threads`` threads; measured once (a few minutes on a 2-core CPU),
    then read from ``cache_dir`` (default: ``latency/`` beside the store)."""
    lengths, reference_lengths = batch_lengths(store, batch_size)
    ref_config = reference_config(store, speedup_over)
    # Neither the dropout nor the pooling (a mean or a max over the same elements) changes a child's time, so
    # every table measured before pooling was a setting is still found.
    space = {k: v for k, v in space_config.to_dict().items()
             if k not in ("vocab_size", "dropout", "k_max", "pooling")}
    key = {"cpu": cpu_model(), "machine": platform.machine(), "torch": torch.__version__, "threads": threads,
           "batch_size": batch_size, "lengths": lengths, "reference_lengths": reference_lengths,
           "reference": speedup_over, "reference_config": ref_config.to_dict(), "space": space}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    path = Path(cache_dir if cache_dir is not None else Path(store.path).parent / "latency") / f"{digest}.json"
    if path.exists():
        try:
            return LatencyTable.from_dict(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError) as exc:  # damaged, or measured another way: measure again
            if echo:
                echo(f"latency table {path} cannot be used ({exc}); measuring it again")
    if echo:
        echo(f"measuring the latency table of this machine ({threads} thread(s), batch {batch_size}, "
             f"{len(lengths)} dev batches, against {REFERENCES[speedup_over]}); cached in {path}")
    table = measure_latency(space_config, lengths, reference_lengths, ref_config, speedup_over, batch_size,
                            threads=threads)
    table.setting.update(cpu=key["cpu"], machine=key["machine"])
    atomic.write_json(path, table.to_dict())
    return table
