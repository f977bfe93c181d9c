"""The GLUE tasks of the paper: which text fields, how many labels, which metrics.

One :class:`TaskSpec` per task describes all three data sources (the Hugging Face
hub, GLUE's own TSV files, the bundled sample), so the loader in ``data.py`` has
no per-task code.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError


@dataclass(frozen=True)
class TaskSpec:
    name: str                      # canonical name, e.g. "SST-2" (also GLUE's folder name)
    hub_config: str                # config of the hub dataset "nyu-mll/glue"
    hub_text_fields: tuple[str, ...]
    hub_dev_split: str
    tsv_text_columns: tuple[str, ...]
    tsv_label_column: str
    tsv_dev_file: str
    labels: tuple[str, ...]        # label as written in the TSV; its index is the class id
    metrics: tuple[str, ...]       # first one is the task's main metric

    @property
    def is_pair(self) -> bool:
        return len(self.tsv_text_columns) == 2

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def main_metric(self) -> str:
        return self.metrics[0]


_ENTAIL = ("entailment", "not_entailment")

TASKS: dict[str, TaskSpec] = {t.name: t for t in [
    TaskSpec("SST-2", "sst2", ("sentence",), "validation",
             ("sentence",), "label", "dev.tsv", ("0", "1"), ("accuracy",)),
    TaskSpec("MRPC", "mrpc", ("sentence1", "sentence2"), "validation",
             ("#1 String", "#2 String"), "Quality", "dev.tsv", ("0", "1"), ("f1", "accuracy")),
    TaskSpec("QQP", "qqp", ("question1", "question2"), "validation",
             ("question1", "question2"), "is_duplicate", "dev.tsv", ("0", "1"), ("f1", "accuracy")),
    TaskSpec("MNLI", "mnli", ("premise", "hypothesis"), "validation_matched",
             ("sentence1", "sentence2"), "gold_label", "dev_matched.tsv",
             ("entailment", "neutral", "contradiction"), ("accuracy",)),
    TaskSpec("QNLI", "qnli", ("question", "sentence"), "validation",
             ("question", "sentence"), "label", "dev.tsv", _ENTAIL, ("accuracy",)),
    TaskSpec("RTE", "rte", ("sentence1", "sentence2"), "validation",
             ("sentence1", "sentence2"), "label", "dev.tsv", _ENTAIL, ("accuracy",)),
]}


def _key(name: str) -> str:
    return name.replace("-", "").replace("_", "").lower()


def get_task(name: str) -> TaskSpec:
    """Look a task up by any common spelling: ``SST-2``, ``sst2``, ``mnli``."""
    for spec in TASKS.values():
        if _key(name) in (_key(spec.name), _key(spec.hub_config)):
            return spec
    raise UserError(f"unknown task {name!r}; expected one of: {', '.join(TASKS)}")
