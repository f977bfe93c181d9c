"""Judging a student: dev metrics, size and FLOPs, the majority-class baseline, and the
side-by-side comparison with its teacher that ``nni-adabert evaluate`` prints."""

from __future__ import annotations

import logging
import os
from typing import Iterable, Mapping

import torch

from ..data.metrics import compute_metrics
from ..data.metrics import majority_class_metrics as majority_metrics
from ..model import cost
from ..model.space import AdaBertStudent
from ..nas.distill import model_inputs
from ..teacher.finetune import load_finetuned_teacher
from ..teacher.knowledge import KnowledgeStore
from .deploy import int8_path, open_deployed
from .export import check_fits, load_exported, load_student
from .speed import dev_examples, measure_speeds, pad_to, teacher_flops, transformer_params

log = logging.getLogger(__name__)


@torch.no_grad()
def dev_metrics(logits_fn, store: KnowledgeStore, batches: Iterable[dict] | None = None) -> dict:
    """Dev metrics on ``store`` of ``logits_fn(inputs) -> [B, C]``, where ``inputs`` holds the
    student's ``input_ids_a``/``attention_mask_a`` ``[B, L]`` (and ``_b`` for pairs). ``batches``:
    other labelled rows than the dev set's (a loader of store rows)."""
    preds, labels = [], []
    for batch in store.loader("dev", 256) if batches is None else batches:
        preds.append(logits_fn(model_inputs(batch)).argmax(-1).cpu())
        labels.append(batch["labels"])
    return compute_metrics(store.spec, torch.cat(preds), torch.cat(labels))


def majority_class_metrics(store: KnowledgeStore) -> dict:
    """Dev metrics of always predicting the most frequent dev label: what a child must beat."""
    return majority_metrics(store.spec, torch.tensor(store.data["dev"]["label"]))


def warn_if_no_better_than_majority(metrics: dict, store: KnowledgeStore, advice: str) -> bool:
    """Log a warning (and return ``True``) when the main dev metric does not beat the majority class."""
    name = store.spec.main_metric
    baseline = majority_class_metrics(store)[name]
    if metrics[name] > baseline:
        return False
    log.warning("the student's dev %s is %.2f, no better than always predicting the majority class (%.2f): %s",
                name, 100 * metrics[name], 100 * baseline, advice)
    return True


@torch.no_grad()
def evaluate_student(student: AdaBertStudent, store: KnowledgeStore, seq_len: int = 128) -> dict:
    """Dev metrics of ``student`` on ``store``, its params (with and without the
    embedding) and FLOPs for one example of ``seq_len`` tokens."""
    student = student.eval()
    device = next(student.parameters()).device
    cfg, arch = student.config, student.arch
    return {
        "dev_metrics": dev_metrics(lambda b: student(**{k: v.to(device) for k, v in b.items()},
                                                     return_probes=False).logits, store),
        "params": cost.child_params(cfg, arch),
        "params_without_embedding": cost.child_params(cfg, arch, include_embedding=False),
        "flops": cost.child_flops(cfg, arch, seq_len),
        "flops_seq_len": seq_len,
        "depth": arch["depth"],
        "embed_dim": cfg.embed_dim,
    }


def teacher_dev_metrics(store: KnowledgeStore) -> dict:
    """The teacher's dev metrics, from the predictions in its store (its head is the last probe)."""
    dev = store.data["dev"]
    head = torch.tensor(dev["teacher_logits"])[:, -1]
    return compute_metrics(store.spec, head.argmax(-1), torch.tensor(dev["label"]))


def compare_with_teacher(store: KnowledgeStore, arch, weights=None, speed: bool = True, seq_len: int = 128,
                         references: Mapping[str, torch.nn.Module] | None = None, rows: int | None = None,
                         batch_size: int = 128, repeats: int = 3, warmup: int = 1, threads: int | None = None,
                         deployed: str | os.PathLike | bool = False) -> dict:
    """Teacher vs exported student on ``store``'s dev set: metrics, params, FLOPs per
    example of ``seq_len`` tokens and, with ``speed``, the measured speedup at batch 128.

    ``references`` (``{name: Hugging Face model}``, e.g. ``{"BERT-base": bert_base(2)}``) are sized,
    FLOP-counted and timed in the same run; ``rows`` limits the timing to the first dev rows.
    With ``speed`` every model gets ``seconds`` and ``speedup_over`` (vs each other model), and the
    student keeps ``speedup`` (vs the teacher). ``deployed``: this student's ONNX export
    (``nni-adabert deploy``; ``True``: the one beside the architecture JSON), which gets dev
    metrics and, with ``speed``, is timed too (ONNX Runtime, the same thread count); so is its int8
    graph (``deploy --int8``: ``student.int8.onnx`` beside it) when there is one, as ``deployed_int8``.
    """
    arch_file = load_exported(arch, store)
    check_fits(arch_file, store)
    student = load_student(arch_file, weights)
    graphs = {}
    if deployed:  # opened first: a missing or broken file fails before the slow parts
        graphs["deployed"] = open_deployed(None if deployed is True else deployed, arch_file, threads)
        if int8_path(graphs["deployed"].path).is_file():
            graphs["deployed_int8"] = open_deployed(int8_path(graphs["deployed"].path), arch_file, threads)
    student_result = evaluate_student(student, store, seq_len)
    teacher = load_finetuned_teacher(store.meta["teacher_dir"], store.spec).cpu()
    examples = dev_examples(store)

    def sized(model) -> dict:
        return {"params": transformer_params(model), "params_without_embedding": transformer_params(model, False),
                "flops": teacher_flops(model, pad_to(examples[0], seq_len)),
                "layers": model.config.num_hidden_layers, "hidden": model.config.hidden_size}

    teacher_result = {"dev_metrics": teacher_dev_metrics(store), **sized(teacher)}
    references = dict(references or {})
    result = {"task": store.meta["task"], "architecture": str(arch_file.path), "teacher": teacher_result,
              "student": student_result}
    timed_models = {"teacher": teacher, "student": student, **references, **graphs}
    for name, graph in graphs.items():
        result[name] = {"path": str(graph.path), "dev_metrics": dev_metrics(graph, store)}
    if references:
        result["references"] = {name: sized(model) for name, model in references.items()}
    if speed:
        timed = examples[:rows] if rows else examples
        timing = measure_speeds(timed_models, timed, batch_size, repeats, warmup, threads)
        seconds = timing["seconds"]
        result["speed"] = {**timing, "teacher_seconds": seconds["teacher"], "student_seconds": seconds["student"],
                           "speedup": seconds["teacher"] / seconds["student"]}
        for name, entry in (("teacher", teacher_result), ("student", student_result),
                            *((n, result["references"][n]) for n in references),
                            *((n, result[n]) for n in graphs)):
            entry["seconds"] = seconds[name]
            entry["speedup_over"] = timing["speedup_over"][name]
        student_result["speedup"] = result["speed"]["speedup"]
    return result
