"""What every stage needs to know about a classification task, and the GLUE tasks of the paper.

A :class:`TaskSpec` is plain data: the task's name, its class names (whose order gives the
class ids), single text or pair, and its metrics. The GLUE tasks are fixed specs
(:data:`TASKS`; where their files come from is :mod:`data.glue`'s business); a user's own
data set gets a spec built from its train split (:mod:`data.custom`). A knowledge store
records its spec (:meth:`TaskSpec.to_dict`), so every later stage reads the task from there.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import UserError

METRICS = ("accuracy", "f1", "macro_f1")
"""Known metrics: accuracy; F1 of the positive class (binary tasks); F1 averaged over classes."""


@dataclass(frozen=True)
class TaskSpec:
    name: str                      # e.g. "SST-2", or a user's task name
    labels: tuple[str, ...]        # class names as written in the data; the index is the class id
    metrics: tuple[str, ...]       # the first one is the task's main metric
    is_pair: bool = False          # two texts per example (text_a, text_b)
    positive_label: str | None = None  # the class "f1" is the F1 of

    def __post_init__(self) -> None:
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown or not self.metrics:
            raise UserError(f"task {self.name}: unknown metric(s) {unknown}; expected some of {', '.join(METRICS)}")
        if len(self.labels) < 2 or len(set(self.labels)) != len(self.labels):
            raise UserError(f"task {self.name}: expected at least 2 distinct labels, got {list(self.labels)}")
        if "f1" in self.metrics and self.positive_label not in self.labels:
            raise UserError(f"task {self.name}: metric f1 needs a positive label, one of {list(self.labels)}; "
                            f"got {self.positive_label!r}")

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def main_metric(self) -> str:
        return self.metrics[0]

    @property
    def positive_class(self) -> int | None:
        """The class id of :attr:`positive_label`, or ``None``."""
        return self.labels.index(self.positive_label) if self.positive_label in self.labels else None

    def to_dict(self) -> dict:
        return {**asdict(self), "labels": list(self.labels), "metrics": list(self.metrics)}

    @classmethod
    def from_dict(cls, d: dict) -> "TaskSpec":
        return cls(name=d["name"], labels=tuple(d["labels"]), metrics=tuple(d["metrics"]),
                   is_pair=bool(d.get("is_pair", False)), positive_label=d.get("positive_label"))


_ENTAIL = ("entailment", "not_entailment")

TASKS: dict[str, TaskSpec] = {t.name: t for t in [
    TaskSpec("SST-2", ("0", "1"), ("accuracy",)),
    TaskSpec("MRPC", ("0", "1"), ("f1", "accuracy"), is_pair=True, positive_label="1"),
    TaskSpec("QQP", ("0", "1"), ("f1", "accuracy"), is_pair=True, positive_label="1"),
    TaskSpec("MNLI", ("entailment", "neutral", "contradiction"), ("accuracy",), is_pair=True),
    TaskSpec("QNLI", _ENTAIL, ("accuracy",), is_pair=True),
    TaskSpec("RTE", _ENTAIL, ("accuracy",), is_pair=True),
]}
"""The GLUE tasks of the paper, by canonical name (also GLUE's folder name)."""


def is_glue(spec: TaskSpec) -> bool:
    """Whether ``spec`` is one of :data:`TASKS` (a user's task records its whole spec where a GLUE
    task records its name only, so the fingerprints of GLUE runs stay what they were)."""
    return TASKS.get(spec.name) == spec


def spec_identity(spec: TaskSpec) -> dict:
    """What names ``spec`` in a run's identity or a store's fingerprint (see :func:`is_glue`)."""
    return {"task": spec.name} if is_glue(spec) else {"task": spec.name, "spec": spec.to_dict()}


def _key(name: str) -> str:
    return name.replace("-", "").replace("_", "").lower()


def find_glue_task(name: str) -> TaskSpec | None:
    """The GLUE task ``name`` names in any common spelling (``SST-2``, ``sst2``, ``mnli``), or ``None``."""
    return next((spec for spec in TASKS.values() if _key(name) == _key(spec.name)), None)


def get_task(name: str) -> TaskSpec:
    """Look a GLUE task up by any common spelling: ``SST-2``, ``sst2``, ``mnli``."""
    spec = find_glue_task(name)
    if spec is None:
        raise UserError(f"unknown task {name!r}; expected one of: {', '.join(TASKS)}, "
                        f"or a task file (.yaml, .json) describing your own data")
    return spec
