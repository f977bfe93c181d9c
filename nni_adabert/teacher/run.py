"""A teacher run: the directory ``nni-adabert teacher --output-dir`` writes and every
later step reads (CLI commands, NNI trials, benchmarks).

``<run>/teacher/`` is the fine-tuned teacher (Hugging Face format), ``<run>/probes.json``
names its knowledge store and holds the per-layer probe accuracies (also as
``probes.md`` and ``probes.png``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import datasets
import torch

from .. import atomic, runs
from ..data.custom import TaskConfig, load_custom_task
from ..data.glue import describe_source, load_task
from ..data.metrics import majority_class_metrics
from ..data.tasks import TaskSpec, get_task
from ..errors import UserError
from ..plots import plot_probe_accuracy
from ..tables import format_table
from .augment import AugmentConfig
from .finetune import TeacherConfig, finetune_teacher
from .knowledge import DEFAULT_CACHE_DIR, KnowledgeStore, build_knowledge, open_knowledge
from .probes import ProbeConfig


def read_task(task: str | TaskConfig, data: str | os.PathLike | None, cache_dir: str | os.PathLike | None
              ) -> tuple[TaskSpec, datasets.DatasetDict, dict]:
    """``(spec, splits, description)`` of a GLUE task's name read from ``data`` (a GLUE source), or of
    a user's :class:`TaskConfig` (``data`` unused). ``description`` says where the rows came from."""
    if isinstance(task, TaskConfig):
        return load_custom_task(task, cache_dir)
    spec = get_task(task)
    return spec, load_task(spec, data), {"name": spec.name, "glue": describe_source(data)}


def build_teacher_run(task: str | TaskConfig, out_dir: str | os.PathLike, data: str | None = None,
                      model: str | None = None,
                      teacher_config: TeacherConfig | None = None, augment: AugmentConfig | None = None,
                      cache_dir: str | os.PathLike | None = None, train_limit: int | None = None,
                      dev_limit: int | None = None, progress: bool = True, echo=lambda *_: None,
                      label_map: dict[str, str] | None = None, precision: str = "auto") -> KnowledgeStore:
    """Fine-tune the teacher, train its probes, build its knowledge store and write
    the run's records for ``task``, a GLUE task's name (its rows from ``data``) or a user's
    :class:`TaskConfig`; each step reuses what an earlier identical run left.
    ``echo`` receives the lines a person wants to see; ``label_map``: a fine-tuned ``model``'s label
    names -> the task's (with ``teacher_config.epochs`` 0, see :func:`finetune.match_labels`);
    ``precision``: of the teacher's forward passes that build the store (:func:`knowledge.build_knowledge`).
    Returns the knowledge store. Holds ``out_dir``'s lock while it works (:func:`runs.locked`)."""
    with runs.locked(out_dir):
        return _build(task, Path(out_dir), data, model, teacher_config, augment, cache_dir, train_limit, dev_limit,
                      progress, echo, label_map, precision)


def _build(task, out: Path, data, model, teacher_config, augment, cache_dir, train_limit, dev_limit, progress,
           echo, label_map, precision) -> KnowledgeStore:
    cache_dir = Path(cache_dir) if cache_dir else DEFAULT_CACHE_DIR
    teacher_config = teacher_config or TeacherConfig()
    spec, splits, description = read_task(task, data, cache_dir)
    for split, limit in (("train", train_limit), ("dev", dev_limit)):
        if limit is not None:
            splits[split] = splits[split].select(range(min(limit, len(splits[split]))))
    source = description.get("glue") or description["train"]
    held_out = description.get("dev_split", {}).get("held_out_of_train")
    echo(f"{spec.name}: {len(splits['train']):,} train / {len(splits['dev']):,} dev rows from {source}"
         + (f" (dev: {held_out:g} of train, stratified)" if held_out else "")
         + ("" if spec.num_labels == 2 and spec.labels == ("0", "1") else f"; labels {', '.join(spec.labels)}"))
    info = finetune_teacher(spec, splits, model, out, teacher_config, progress=progress, cache_dir=cache_dir,
                            label_map=label_map)
    metrics = ", ".join(f"{k} {100 * v:.2f}" for k, v in info["dev_metrics"].items())
    majority = majority_class_metrics(spec, torch.tensor(list(splits["dev"]["label"])))
    kept = f", epoch {info['best_epoch']} of {info['epochs']}" if info.get("best_epoch") else ""
    echo(f"teacher ({info['base_model']}, {info['num_layers']} layers{kept}) dev: {metrics} (always the majority "
         "class: " + ", ".join(f"{k} {100 * v:.2f}" for k, v in majority.items()) + ")")
    echo(f"{'reused the fine-tuned teacher in' if info.pop('reused', False) else 'saved the fine-tuned teacher to'} "
         f"{out / 'teacher'}")

    store = build_knowledge(spec, splits, out / "teacher", augment, cache_dir, ProbeConfig(seed=teacher_config.seed),
                            progress=progress, precision=precision)
    acc = store.meta["probe_dev_accuracy"]
    table = format_table(["layer", "dev accuracy (%)", "classifier"],
                         [[j, f"{100 * a:.2f}", "teacher head" if j == len(acc) else "probe"]
                          for j, a in enumerate(acc, 1)])
    echo("\nper-layer probe accuracy on dev:\n" + table)
    atomic.write_json(out / "probes.json", {"task": spec.name, "task_spec": spec.to_dict(), "data": description,
                                            "teacher": info, "probe_dev_accuracy": acc,
                                            "knowledge_store": str(store.path)})
    atomic.write_text(out / "probes.md", table + "\n")
    plot_probe_accuracy(acc, out / "probes.png", f"{spec.name}: teacher probes on dev")
    echo(f"\nteacher knowledge: {store.meta['num_train_original']:,} original + "
         f"{store.meta['num_train_augmented']:,} augmented train rows, {store.meta['num_dev']:,} dev rows")
    echo(f"  store: {store.path}")
    echo(f"  probes: {out / 'probes.json'}, {out / 'probes.md'}, {out / 'probes.png'}")
    return store


def open_teacher_run(run_dir: str | os.PathLike) -> KnowledgeStore:
    """The knowledge store that ``nni-adabert teacher --output-dir run_dir`` built, read with this
    run's own teacher. (A store is shared by every run with identical inputs, so the teacher its
    meta names may be another run's, which can be moved or deleted; their weights are the same:
    the store's fingerprint includes them.)"""
    record = Path(run_dir) / "probes.json"
    if not record.is_file():
        raise UserError(f"{run_dir} is not a teacher run: {record.name} is missing "
                        f"(run `nni-adabert teacher --output-dir {run_dir}` first)")
    try:
        location = json.loads(record.read_text(encoding="utf-8"))["knowledge_store"]
        if not isinstance(location, str):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{record} is damaged: expected a JSON object whose knowledge_store names the store "
                        f"(run `nni-adabert teacher --output-dir {run_dir}` again)") from None
    store = open_knowledge(location)
    own = Path(run_dir).resolve() / "teacher"
    if (own / "config.json").is_file():
        store.meta = {**store.meta, "teacher_dir": str(own)}
    return store
