"""Inference speed of teacher and student, measured side by side in one process.

Speed is reported as a ratio (teacher time / student time) on the same examples,
the same batch size, the same thread count, after warm-up, as the median of
repeats: absolute times from a shared machine mean little.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from .data import pad_batch
from .metrics import compute_metrics


def _batches(rows: list[dict], keys: tuple[str, ...], batch_size: int) -> list[dict[str, torch.Tensor]]:
    return [pad_batch(rows[i:i + batch_size], keys) for i in range(0, len(rows), batch_size)]


def _median_time(fn, batches, repeats: int, warmup: int = 1) -> float:
    with torch.inference_mode():
        for _ in range(warmup):
            for b in batches:
                fn(b)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            for b in batches:
                fn(b)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def teacher_flops(teacher, row: dict) -> int:
    """FLOPs (matmuls, 2 per multiply-add) of the teacher on one example."""
    batch = pad_batch([row], ("input_ids", "token_type_ids"))
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        teacher(**batch)
    return int(counter.get_total_flops())


def measure_speedup(teacher, student, rows: list[dict], batch_size: int = 128, repeats: int = 3,
                    threads: int | None = None) -> dict:
    """Time teacher and student over the same tokenized ``rows`` (dicts with the teacher's
    ``input_ids``/``token_type_ids`` and the student's ``input_ids_a``/``_b``).

    Returns both median times in seconds (for the ratio only) and ``speedup``.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    teacher, student = teacher.eval().cpu(), student.eval().cpu()
    pair = "input_ids_b" in rows[0]
    teacher_batches = _batches(rows, ("input_ids", "token_type_ids"), batch_size)
    student_batches = _batches(rows, ("input_ids_a", "input_ids_b") if pair else ("input_ids_a",), batch_size)
    t_teacher = _median_time(lambda b: teacher(**b), teacher_batches, repeats)
    t_student = _median_time(lambda b: student(**b, return_probes=False), student_batches, repeats)
    return {"teacher_seconds": t_teacher, "student_seconds": t_student, "speedup": t_teacher / t_student,
            "examples": len(rows), "batch_size": batch_size, "repeats": repeats, "threads": torch.get_num_threads()}


def with_teacher_input(row: dict, max_length: int = 128) -> dict:
    """Add the teacher's packed input (``[CLS] a [SEP] b [SEP]``) to a store row, which
    holds only the student's per-text ids."""
    a, b = row["input_ids_a"], row.get("input_ids_b")
    ids = a + b[1:] if b else a
    types = [0] * len(a) + [1] * (len(ids) - len(a))
    return {**row, "input_ids": ids[:max_length], "token_type_ids": types[:max_length]}


def pad_to(row: dict, length: int) -> dict:
    """``row``'s teacher input repeated to exactly ``length`` tokens (FLOPs at a fixed length)."""
    return {"input_ids": (row["input_ids"] * length)[:length], "token_type_ids": [0] * length}


def compare_with_teacher(store, arch, weights=None, speed: bool = True, seq_len: int = 128) -> dict:
    """Teacher vs exported student on ``store``'s dev set: metrics, params, FLOPs per
    example of ``seq_len`` tokens and, with ``speed``, the measured speedup at batch 128."""
    from .export import load_student
    from .search import evaluate_student, load_exported
    from .teacher import load_finetuned_teacher

    arch_file = load_exported(arch, store)
    student = load_student(arch_file, weights)
    student_result = evaluate_student(student, store, seq_len)
    teacher = load_finetuned_teacher(store.meta["teacher_dir"], store.spec).cpu()
    dev = store.data["dev"]
    rows = [with_teacher_input(r) for r in dev.select_columns([c for c in ("input_ids_a", "input_ids_b")
                                                                 if c in dev.column_names])]
    # The teacher's dev predictions are in the store: its head is the last probe.
    head = torch.tensor(dev["teacher_logits"])[:, -1]
    teacher_result = {"dev_metrics": compute_metrics(store.spec, head.argmax(-1), torch.tensor(dev["label"])),
                      "params": sum(p.numel() for p in teacher.parameters()),
                      "flops": teacher_flops(teacher, pad_to(rows[0], seq_len))}
    result = {"task": store.meta["task"], "architecture": str(arch_file.path), "teacher": teacher_result,
              "student": student_result}
    if speed:
        timing = measure_speedup(teacher, student, rows, batch_size=128)
        result["speed"] = timing
        student_result["speedup"] = timing["speedup"]
    return result
