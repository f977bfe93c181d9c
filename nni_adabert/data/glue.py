"""GLUE task data: three sources behind one loader.

Sources (``load_task(task, source)``):
- ``None`` / ``"bundled"``: the small real sample shipped in ``resources/glue``
  (8,000 SST-2 train rows and the full dev set; see its SOURCE.md);
- ``"hub"``: Hugging Face ``nyu-mll/glue`` (for users who are online);
- a directory in GLUE's own TSV layout: the task folder (``.../SST-2``) or the
  GLUE root that contains it (``.../glue``).

Every source gives the same ``DatasetDict`` with splits ``train`` and ``dev`` and
columns ``text_a`` (str), ``text_b`` (str, pair tasks only) and ``label`` (int).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import datasets

from ..errors import UserError
from .tasks import TaskSpec, get_task

BUNDLED_DIR = Path(__file__).resolve().parents[1] / "resources" / "glue"


@dataclass(frozen=True)
class GlueFiles:
    """Where a GLUE task's fields are in each source."""

    hub_config: str                 # config of the hub dataset "nyu-mll/glue"
    hub_text_fields: tuple[str, ...]
    hub_dev_split: str
    tsv_text_columns: tuple[str, ...]
    tsv_label_column: str
    tsv_dev_file: str


GLUE_FILES: dict[str, GlueFiles] = {
    "SST-2": GlueFiles("sst2", ("sentence",), "validation", ("sentence",), "label", "dev.tsv"),
    "MRPC": GlueFiles("mrpc", ("sentence1", "sentence2"), "validation", ("#1 String", "#2 String"), "Quality",
                      "dev.tsv"),
    "QQP": GlueFiles("qqp", ("question1", "question2"), "validation", ("question1", "question2"), "is_duplicate",
                     "dev.tsv"),
    "MNLI": GlueFiles("mnli", ("premise", "hypothesis"), "validation_matched", ("sentence1", "sentence2"),
                      "gold_label", "dev_matched.tsv"),
    "QNLI": GlueFiles("qnli", ("question", "sentence"), "validation", ("question", "sentence"), "label", "dev.tsv"),
    "RTE": GlueFiles("rte", ("sentence1", "sentence2"), "validation", ("sentence1", "sentence2"), "label",
                     "dev.tsv"),
}
"""Each GLUE task's columns and files, by its :class:`TaskSpec` name."""


# --------------------------------------------------------------------------- reading


def resolve_task_dir(spec: TaskSpec, data_dir: str | os.PathLike) -> Path:
    """The folder holding ``spec``'s TSV files: ``data_dir`` itself or ``data_dir/<task>``."""
    data_dir = Path(data_dir)
    if not data_dir.exists():
        raise UserError(f"data directory {data_dir} does not exist")
    if not data_dir.is_dir():
        raise UserError(f"data directory {data_dir} is not a directory")
    for candidate in (data_dir / spec.name, data_dir):
        if (candidate / "train.tsv").is_file():
            return candidate
    raise UserError(
        f"no GLUE {spec.name} files in {data_dir}: expected {data_dir / spec.name / 'train.tsv'} "
        f"or {data_dir / 'train.tsv'}")


def read_glue_tsv(path: Path, spec: TaskSpec) -> dict[str, list]:
    """Read one GLUE TSV file into columns ``text_a``, (``text_b``), ``label``.

    GLUE files must be read with no quote handling (a plain split on tabs): with the csv
    module's default, quotes inside sentences silently merge rows (MRPC train would read
    3,549 rows instead of 3,668).
    """
    if not path.is_file():
        raise UserError(f"missing data file {path}")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise UserError(f"{path}, line {line}: bytes that are not UTF-8 (at byte {exc.start}); "
                        f"GLUE files are UTF-8 text") from None
    # Lines end at "\n" (or "\r\n") only: str.splitlines() would also split a sentence at U+2028,
    # U+0085 or a lone "\r". Blank lines at the end of the file are not rows.
    lines = [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    rows = [line.split("\t") if line else [] for line in lines]  # no quote handling: see above
    if not rows or not any(rows):
        raise UserError(f"{path} is empty: expected a header line and at least one row")
    header, body = rows[0], rows[1:]
    repeated = sorted({c for c in header if header.count(c) > 1})
    if repeated:
        raise UserError(f"{path}: the header names column(s) {repeated} more than once; each column once")
    files = GLUE_FILES[spec.name]
    wanted = (*files.tsv_text_columns, files.tsv_label_column)
    missing = [c for c in wanted if c not in header]
    if missing:
        raise UserError(f"{path}: missing column(s) {missing} for task {spec.name}; "
                        f"found columns {header}, expected {list(wanted)}")
    if not body:
        raise UserError(f"{path} has a header but no rows")
    index = [header.index(c) for c in wanted]
    label_ids = {label: i for i, label in enumerate(spec.labels)}
    columns: dict[str, list] = {"text_a": [], "label": []}
    if spec.is_pair:
        columns["text_b"] = []
    for line_no, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise UserError(f"{path}, line {line_no}: {len(row)} tab-separated fields, "
                            f"expected {len(header)} like the header")
        *texts, label = (row[i] for i in index)
        if label not in label_ids:
            raise UserError(f"{path}, line {line_no}: label {label!r} is not a {spec.name} label; "
                            f"expected one of {list(spec.labels)}")
        columns["text_a"].append(texts[0])
        if spec.is_pair:
            columns["text_b"].append(texts[1])
        columns["label"].append(label_ids[label])
    return columns


def _features(spec: TaskSpec) -> datasets.Features:
    cols = {"text_a": datasets.Value("string")}
    if spec.is_pair:
        cols["text_b"] = datasets.Value("string")
    cols["label"] = datasets.ClassLabel(names=list(spec.labels))
    return datasets.Features(cols)


def load_task(task: str | TaskSpec, source: str | os.PathLike | None = None) -> datasets.DatasetDict:
    """Load ``task``'s train and dev splits from ``source`` (see module docstring)."""
    spec = task if isinstance(task, TaskSpec) else get_task(task)
    if source is None or str(source) == "bundled":
        if not (BUNDLED_DIR / spec.name).is_dir():
            raise UserError(f"no bundled sample for {spec.name} (bundled: "
                            f"{', '.join(p.name for p in BUNDLED_DIR.iterdir())}); "
                            f"pass a GLUE data directory or 'hub'")
        source = BUNDLED_DIR
    if str(source) == "hub":
        return _load_from_hub(spec)
    task_dir = resolve_task_dir(spec, source)
    return datasets.DatasetDict({
        split: datasets.Dataset.from_dict(read_glue_tsv(task_dir / name, spec), features=_features(spec))
        for split, name in (("train", "train.tsv"), ("dev", GLUE_FILES[spec.name].tsv_dev_file))
    })


def _load_from_hub(spec: TaskSpec) -> datasets.DatasetDict:
    files = GLUE_FILES[spec.name]
    raw = datasets.load_dataset("nyu-mll/glue", files.hub_config)
    renames = dict(zip(files.hub_text_fields, ("text_a", "text_b")))
    out = {}
    for split, hub_split in (("train", "train"), ("dev", files.hub_dev_split)):
        ds = raw[hub_split].rename_columns(renames)
        out[split] = ds.select_columns(list(_features(spec))).cast(_features(spec))
    return datasets.DatasetDict(out)


def describe_source(source: str | os.PathLike | None) -> str:
    return "bundled sample" if source in (None, "bundled") else str(source)
