"""Your own text-classification data: CSV, TSV, JSON Lines or Parquet files, a dataset saved
with ``save_to_disk``, or a Hugging Face hub dataset.

A :class:`TaskConfig` says where the splits are and which columns hold the text (or the two
texts of a pair) and the label. It comes from the command line (``--data train.csv --text-column
review --label-column stars``) or from a task file (YAML or JSON, the same fields), which every
command and every NNI trial accepts as ``--task FILE``::

    name: reviews
    train: data/train.csv          # relative to the task file
    dev: data/dev.csv              # optional: else a stratified, seeded part of train
    text_column: review
    label_column: stars

:func:`load_custom_task` reads the splits with the ``datasets`` loaders into the columns every
stage reads (``text_a``, ``text_b`` for pairs, ``label`` as class ids) and builds the task's
:class:`TaskSpec`: its classes are the train split's labels, sorted (numerically when they are
all integers); its metrics accuracy and macro-F1, led by the F1 of ``positive_label`` when one
is named.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, fields
from pathlib import Path

import datasets
import yaml

from ..config import Settings, add_options, setting
from ..errors import UserError
from .tasks import TASKS, TaskSpec, find_glue_task

__all__ = ["TaskConfig", "TASK_FILE_SUFFIXES", "read_task_file", "load_custom_task", "add_task_options",
           "task_from_options", "is_custom_data", "read_source", "text_columns"]

TASK_FILE_SUFFIXES = (".yaml", ".yml", ".json")
HUB_PREFIX = "hub:"
# File suffix -> (datasets builder, its options). TSV is read without quote handling, as GLUE's files
# must be (a quote inside a sentence would merge rows); CSV with the standard quoting.
_BUILDERS = {
    ".csv": ("csv", {}),
    ".tsv": ("csv", {"delimiter": "\t", "quoting": csv.QUOTE_NONE}),
    ".jsonl": ("json", {}), ".json": ("json", {}),
    ".parquet": ("parquet", {}),
}
_DEV_SPLITS = ("validation", "dev")  # a saved or hub DatasetDict's dev split, in this order


@dataclass
class TaskConfig(Settings):
    """A user's task: where its data is and which columns to read (a task file holds these fields)."""

    kind = "task"

    name: str | None = setting(None, "the task's name (default: the train file's name)")
    train: str | None = setting(None, "train data: a .csv, .tsv, .jsonl, .json or .parquet file, a directory "
                                      "written by save_to_disk, or hub:NAME[:CONFIG]")
    dev: str | None = setting(None, "dev data, the same kinds (default: a stratified part of train, "
                                    "see dev_fraction)")
    text_column: str = setting("text", "the column of the text")
    text_pair_column: str | None = setting(None, "the column of the second text (pair tasks)")
    label_column: str = setting("label", "the column of the label")
    positive_label: str | None = setting(None, "a binary task's positive class: the F1 of this class becomes "
                                               "the main metric")
    dev_fraction: float = setting(0.1, "share of train held out as dev when there is no dev data",
                                  minimum=0.01, maximum=0.5)
    split_seed: int = setting(0, "seed of that held-out dev split", minimum=0)

    def __post_init__(self) -> None:
        super().__post_init__()
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and f.type in ("str", "str | None") and (not isinstance(value, str) or not value):
                raise UserError(f"task setting {f.name} must be a non-empty string, got {value!r}")
        if self.text_pair_column is not None and self.text_pair_column == self.text_column:
            raise UserError(f"task settings text_column and text_pair_column name the same column "
                            f"{self.text_column!r}")

    @property
    def task_name(self) -> str:
        if self.name:
            return self.name
        train = str(self.train or "task")
        if train.startswith(HUB_PREFIX):
            return train[len(HUB_PREFIX):].replace("/", "-").replace(":", "-")
        return Path(train).stem


def read_task_file(path: str | os.PathLike) -> TaskConfig:
    """The :class:`TaskConfig` a YAML or JSON task file holds; its relative paths are taken
    relative to the file's directory."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"task file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
        doc = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UserError(f"task file {path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: "
                        f"{str(exc).splitlines()[0]}") from None
    if not isinstance(doc, dict):
        raise UserError(f"task file {path}: expected a mapping of task settings, got {type(doc).__name__}")
    known = {f.name for f in fields(TaskConfig)}
    unknown = sorted(set(doc) - known)
    if unknown:
        raise UserError(f"task file {path}: unknown setting(s) {unknown}; expected some of {sorted(known)}")
    if not doc.get("train"):
        raise UserError(f"task file {path}: no train data (setting train)")
    for key in ("train", "dev"):  # relative to the task file, as a user writes them
        value = doc.get(key)
        if isinstance(value, str) and not value.startswith(HUB_PREFIX) and not Path(value).is_absolute():
            doc[key] = str(path.parent / value)
    doc.setdefault("name", path.stem)
    return TaskConfig(**doc)


def is_custom_data(data: str | os.PathLike | None) -> bool:
    """Whether ``data`` names a user's data (a file, a saved dataset, ``hub:NAME``) rather than a GLUE source."""
    if data is None:
        return False
    data = str(data)
    if data.startswith(HUB_PREFIX):
        return True
    path = Path(data)
    return path.is_file() or (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()


# --------------------------------------------------------------------------- reading


def read_source(source: str, role: str,
                 cache_dir: str | os.PathLike | None) -> datasets.Dataset | datasets.DatasetDict:
    """One data source as ``datasets`` reads it: a Dataset (a file), or what a saved directory or
    a hub name holds (a Dataset or a DatasetDict). ``role`` names it in messages ("train")."""
    if source.startswith(HUB_PREFIX):
        name, _, config = source[len(HUB_PREFIX):].partition(":")
        try:
            return datasets.load_dataset(name, config or None, cache_dir=cache_dir)
        except Exception as exc:  # noqa: BLE001 - offline, unknown name, ...: one line
            raise UserError(f"{role} data {source}: cannot load the hub dataset: {str(exc).splitlines()[0]}") from None
    path = Path(source)
    if path.is_dir():
        try:
            return datasets.load_from_disk(str(path))
        except FileNotFoundError:
            raise UserError(f"{role} data {path} is a directory but not a dataset saved with save_to_disk "
                            f"(no dataset_info.json or dataset_dict.json)") from None
    if not path.is_file():
        raise UserError(f"{role} data {path} does not exist")
    suffix = path.suffix.lower()
    if suffix not in _BUILDERS:
        raise UserError(f"{role} data {path}: unknown file type {suffix or '(none)'}; expected one of "
                        f"{', '.join(_BUILDERS)}, a save_to_disk directory, or hub:NAME")
    builder, options = _BUILDERS[suffix]
    try:
        return datasets.load_dataset(builder, data_files=str(path), split="train", cache_dir=cache_dir, **options)
    except Exception as exc:  # noqa: BLE001 - a parser's error, wrapped by datasets: its cause is the message
        cause = exc.__cause__ or exc
        raise UserError(f"{role} data {path} cannot be read as {suffix[1:].upper()}: "
                        f"{str(cause).splitlines()[0] if str(cause) else type(cause).__name__}") from None


def _pick_split(read, source: str, role: str) -> tuple[datasets.Dataset, datasets.Dataset | None, str | None]:
    """``(train, dev or None, the dev split's name)`` of what :func:`read_source` gave for a source."""
    if isinstance(read, datasets.Dataset):
        return read, None, None
    if "train" not in read and role == "train":
        raise UserError(f"{role} data {source} has splits {list(read)}, no 'train'")
    name = next((s for s in _DEV_SPLITS if s in read), None)
    return read.get("train"), read[name] if name else None, name


def _label_text(value, feature) -> str | None:
    if value is None:
        return None
    if isinstance(feature, datasets.ClassLabel):
        return feature.int2str(int(value)) if value >= 0 else None  # -1: unlabelled (e.g. GLUE test)
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip() if str(value).strip() else None


def text_columns(ds: datasets.Dataset, text_column: str, text_pair_column: str | None, where: str,
                 also: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """``text_a`` (and ``text_b``) of ``ds``, every value checked to be text; the columns ``also``
    must exist too. Errors name ``where``, the row and the column."""
    wanted = [text_column, *([text_pair_column] if text_pair_column else []), *also]
    missing = [c for c in wanted if c not in ds.column_names]
    if missing:
        raise UserError(f"{where}: no column(s) {missing}; found columns {ds.column_names} "
                        f"(name them with --text-column, --text-pair-column, --label-column or the task file)")
    if len(ds) == 0:
        raise UserError(f"{where} has no rows")
    out = {"text_a": list(ds[text_column])}
    if text_pair_column:
        out["text_b"] = list(ds[text_pair_column])
    for key, column in (("text_a", text_column), ("text_b", text_pair_column)):
        for row, value in enumerate(out.get(key, ()), start=1):
            if not isinstance(value, str):
                raise UserError(f"{where}, row {row}: column {column!r} holds {value!r}, expected text")
    return out


def _columns(ds: datasets.Dataset, config: TaskConfig, where: str) -> dict[str, list]:
    """``text_a`` (, ``text_b``) and the label texts of ``ds``, every value checked."""
    out = text_columns(ds, config.text_column, config.text_pair_column, where, also=(config.label_column,))
    feature = ds.features[config.label_column]
    out["label"] = [_label_text(v, feature) for v in ds[config.label_column]]
    for row, value in enumerate(out["label"], start=1):
        if value is None:
            raise UserError(f"{where}, row {row}: no label in column {config.label_column!r}")
    return out


def _sorted_labels(labels: set[str]) -> tuple[str, ...]:
    """Numeric order when every label is an integer ("1" < "2" < "10"), else text order."""
    try:
        return tuple(sorted(labels, key=int))
    except ValueError:
        return tuple(sorted(labels))


def _dataset(columns: dict[str, list], labels: tuple[str, ...], where: str) -> datasets.Dataset:
    ids = {label: i for i, label in enumerate(labels)}
    for row, label in enumerate(columns["label"], start=1):
        if label not in ids:
            raise UserError(f"{where}, row {row}: label {label!r} does not occur in the train data; "
                            f"expected one of {list(labels)}")
    features = {"text_a": datasets.Value("string")}
    if "text_b" in columns:
        features["text_b"] = datasets.Value("string")
    features["label"] = datasets.ClassLabel(names=list(labels))
    return datasets.Dataset.from_dict({**columns, "label": [ids[x] for x in columns["label"]]},
                                      features=datasets.Features(features))


def load_custom_task(config: TaskConfig, cache_dir: str | os.PathLike | None = None
                     ) -> tuple[TaskSpec, datasets.DatasetDict, dict]:
    """Read a user's task: ``(spec, splits train/dev, description)``. ``description`` is the
    config as plain data plus where dev came from (``dev_split``), for the run's records.
    ``cache_dir``: where ``datasets`` keeps what it reads (its own default when ``None``)."""
    if not config.train:
        raise UserError("task setting train is missing: pass --data with the train file (or a task file)")
    if find_glue_task(config.task_name) is not None:
        raise UserError(f"task name {config.task_name!r} is a GLUE task's; name your own task otherwise "
                        f"(--task or the task file's name)")
    cache = str(Path(cache_dir) / "datasets") if cache_dir else None
    train, dev, dev_name = _pick_split(read_source(config.train, "train", cache), config.train, "train")
    if config.dev:
        read = read_source(config.dev, "dev", cache)
        dev = read if isinstance(read, datasets.Dataset) else _pick_split(read, config.dev, "dev")[1]
        if dev is None:
            raise UserError(f"dev data {config.dev} has splits {list(read)}, none of {list(_DEV_SPLITS)}")
    train_columns = _columns(train, config, f"train data {config.train}")
    labels = _sorted_labels(set(train_columns["label"]))
    if len(labels) < 2:
        raise UserError(f"train data {config.train}: column {config.label_column!r} holds one label only "
                        f"({labels[0]!r}); a classifier needs at least two")
    if config.positive_label is not None and config.positive_label not in labels:
        raise UserError(f"task setting positive_label {config.positive_label!r} is not a label of the train data; "
                        f"expected one of {list(labels)}")
    train_ds = _dataset(train_columns, labels, f"train data {config.train}")
    if dev is not None:
        dev_where = f"dev data {config.dev or config.train}"
        splits = datasets.DatasetDict(train=train_ds, dev=_dataset(_columns(dev, config, dev_where), labels,
                                                                   dev_where))
        dev_split = {"from": config.dev or f"{config.train} (its {dev_name} split)"}
    else:
        try:
            held = train_ds.train_test_split(test_size=config.dev_fraction, stratify_by_column="label",
                                             seed=config.split_seed)
        except ValueError as exc:
            raise UserError(f"train data {config.train}: cannot hold out a stratified {config.dev_fraction:g} "
                            f"of it as dev ({str(exc).splitlines()[0]}); pass dev data (--dev-data)") from None
        splits = datasets.DatasetDict(train=held["train"].flatten_indices(), dev=held["test"].flatten_indices())
        dev_split = {"held_out_of_train": config.dev_fraction, "seed": config.split_seed, "stratified": True}
    metrics = ("f1", "accuracy", "macro_f1") if config.positive_label is not None else ("accuracy", "macro_f1")
    spec = TaskSpec(config.task_name, labels, metrics, is_pair=config.text_pair_column is not None,
                    positive_label=config.positive_label)
    return spec, splits, {**config.to_dict(), "name": spec.name, "dev_split": dev_split}


# --------------------------------------------------------------------------- options


_COLUMN_OPTIONS = ("text_column", "text_pair_column", "label_column", "positive_label", "dev_fraction", "split_seed")


def add_task_options(parser) -> None:
    """``--task``, ``--data``, ``--dev-data`` and the column options of a user's task, for every
    command and trial that reads data (:func:`task_from_options` reads them back)."""
    parser.add_argument("--task", default=None,
                        help="a GLUE task (SST-2, MRPC, QQP, MNLI, QNLI, RTE; default SST-2), a task file "
                             "(.yaml/.json) describing your own data, or the name of your own task given by --data")
    parser.add_argument("--data", default=None,
                        help="GLUE: a directory of GLUE TSV files, 'hub' for nyu-mll/glue, or omit for the bundled "
                             "SST-2 sample. Your own task: the train data (.csv, .tsv, .jsonl, .parquet, a "
                             "save_to_disk directory, or hub:NAME[:CONFIG])")
    parser.add_argument("--dev-data", default=None, help="your own task's dev data (default: a stratified "
                        "part of train, --dev-fraction)")
    add_options(parser, TaskConfig, only=_COLUMN_OPTIONS)


def task_from_options(args) -> str | TaskConfig:
    """What :func:`add_task_options`' options name: a GLUE task's name, or a :class:`TaskConfig`."""
    values = vars(args)
    changed = [f"--{name.replace('_', '-')}" for name in _COLUMN_OPTIONS
               if values.get(name) != TaskConfig.__dataclass_fields__[name].default]
    task, data = values.get("task"), values.get("data")
    if task and Path(task).suffix.lower() in TASK_FILE_SUFFIXES:
        if changed:
            raise UserError(f"{', '.join(changed)}: say the columns either in the task file {task} or on the "
                            f"command line, not both")
        config = read_task_file(task)
        overrides = {k: v for k, v in (("train", data), ("dev", values.get("dev_data"))) if v is not None}
        return TaskConfig(**{**config.to_dict(), **overrides}) if overrides else config
    glue = find_glue_task(task or "SST-2")
    custom = is_custom_data(data) or values.get("dev_data") is not None or changed or (task and glue is None)
    if not custom:
        return glue.name
    if task and glue is not None:
        raise UserError(f"--task {task} is a GLUE task, whose columns are fixed; name your own task otherwise "
                        f"or drop {', '.join(changed) or '--data FILE'}")
    if data is None:
        raise UserError(f"unknown task {task!r}: not a GLUE task ({', '.join(TASKS)}) nor a task file (.yaml, "
                        f".json); for your own data pass its train data with --data (a .csv, .tsv, .jsonl or "
                        f".parquet file, a save_to_disk directory, or hub:NAME)")
    return TaskConfig(name=task, train=str(data), dev=values.get("dev_data"),
                      **{name: values[name] for name in _COLUMN_OPTIONS if name in values})
