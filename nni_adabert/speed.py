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
