"""Your own data: real SST-2, MRPC and TREC rows in other formats, read as a user's task."""

import io
import json
import shutil

import datasets
import pytest
import torch

from conftest import DATA_DIR
from nni_adabert.cli import main
from nni_adabert.data.custom import TaskConfig, load_custom_task, read_task_file, task_from_options
from nni_adabert.data.glue import load_task
from nni_adabert.data.metrics import compute_metrics
from nni_adabert.data.tasks import TaskSpec
from nni_adabert.errors import UserError
from nni_adabert.model.space import AdaBertStudent
from nni_adabert.teacher.run import open_teacher_run
from nni_adabert.trial import trial_settings

TREC_CLASSES = ("ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM")


def trec_rows(name: str) -> list[dict]:
    """The committed TREC slice (``COARSE:fine question``) as rows ``{question, coarse}``."""
    rows = []
    for line in (DATA_DIR / "trec" / name).read_text(encoding="ascii").splitlines():
        label, question = line.split(" ", 1)
        rows.append({"question": question, "coarse": label.split(":")[0]})
    return rows


@pytest.fixture(scope="module")
def sst2(glue_dir):
    return load_task("SST-2", glue_dir)


@pytest.fixture(scope="module")
def mrpc(glue_dir):
    return load_task("MRPC", glue_dir)


def test_sst2_as_csv_with_other_column_names(tmp_path, sst2):
    for split in ("train", "dev"):
        rows = sst2[split].to_pandas().rename(columns={"text_a": "review", "label": "stars"})
        rows["stars"] = rows["stars"].map({0: "negative", 1: "positive"})
        rows.to_csv(tmp_path / f"{split}.csv", index=False)  # quotes the commas and quotes in sentences
    spec, splits, description = load_custom_task(TaskConfig(
        train=str(tmp_path / "train.csv"), dev=str(tmp_path / "dev.csv"), text_column="review",
        label_column="stars", positive_label="positive"), cache_dir=tmp_path / "cache")
    assert spec.name == "train" and spec.labels == ("negative", "positive") and not spec.is_pair
    assert spec.metrics == ("f1", "accuracy", "macro_f1") and spec.positive_class == 1
    for split in ("train", "dev"):  # the same texts and classes as GLUE's own files
        assert splits[split]["text_a"] == sst2[split]["text_a"] and splits[split]["label"] == sst2[split]["label"]
    assert description["dev_split"] == {"from": str(tmp_path / "dev.csv")}


def test_mrpc_pairs_as_json_lines(tmp_path, mrpc):
    for split in ("train", "dev"):
        with open(tmp_path / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for row in mrpc[split]:
                f.write(json.dumps({"s1": row["text_a"], "s2": row["text_b"], "paraphrase": row["label"]}) + "\n")
    spec, splits, _ = load_custom_task(TaskConfig(
        name="paraphrase", train=str(tmp_path / "train.jsonl"), dev=str(tmp_path / "dev.jsonl"), text_column="s1",
        text_pair_column="s2", label_column="paraphrase"), cache_dir=tmp_path / "cache")
    assert spec.is_pair and spec.labels == ("0", "1") and spec.metrics == ("accuracy", "macro_f1")
    assert splits["dev"]["text_b"] == mrpc["dev"]["text_b"] and splits["train"]["label"] == mrpc["train"]["label"]


def test_trec_parquet_six_classes_dev_held_out_stratified(tmp_path):
    datasets.Dataset.from_list(trec_rows("train.label")).to_parquet(tmp_path / "trec.parquet")
    config = TaskConfig(name="trec", train=str(tmp_path / "trec.parquet"), text_column="question",
                        label_column="coarse", dev_fraction=0.25, split_seed=3)
    spec, splits, description = load_custom_task(config, cache_dir=tmp_path / "cache")
    assert spec.labels == TREC_CLASSES and spec.num_labels == 6
    assert len(splits["train"]) + len(splits["dev"]) == 200 and len(splits["dev"]) == 50
    assert not set(splits["dev"]["text_a"]) & set(splits["train"]["text_a"])
    # Stratified: each class's share of dev is its share of the data, to a row.
    counts = torch.bincount(torch.tensor(list(splits["train"]["label"]) + list(splits["dev"]["label"])), minlength=6)
    dev_counts = torch.bincount(torch.tensor(list(splits["dev"]["label"])), minlength=6)
    assert (dev_counts - counts * 0.25).abs().max() <= 1
    assert description["dev_split"] == {"held_out_of_train": 0.25, "seed": 3, "stratified": True}
    again = load_custom_task(config, cache_dir=tmp_path / "cache")[1]  # seeded: the same split
    assert again["dev"]["text_a"] == splits["dev"]["text_a"]


def test_saved_dataset_dict_and_numeric_label_order(tmp_path):
    rows = [{"text": f"question {i}", "label": label} for i, label in enumerate([10, 2, 1, 2, 10, 1] * 3)]
    datasets.DatasetDict(train=datasets.Dataset.from_list(rows),
                         validation=datasets.Dataset.from_list(rows[:6])).save_to_disk(tmp_path / "saved")
    spec, splits, description = load_custom_task(TaskConfig(name="numbers", train=str(tmp_path / "saved")))
    assert spec.labels == ("1", "2", "10")  # numeric order, not "1" < "10" < "2"
    assert list(splits["dev"]["label"]) == [2, 1, 0, 1, 2, 0] and "validation" in description["dev_split"]["from"]


def test_hub_dataset_names_its_splits(tmp_path, monkeypatch):
    names = datasets.ClassLabel(names=["neg", "pos"])
    hub = datasets.DatasetDict(
        train=datasets.Dataset.from_dict({"text": ["a", "b", "c", "d"], "label": [0, 1, 0, 1]},
                                         features=datasets.Features(text=datasets.Value("string"), label=names)),
        validation=datasets.Dataset.from_dict({"text": ["e", "f"], "label": [1, 0]},
                                              features=datasets.Features(text=datasets.Value("string"), label=names)))
    asked = []
    monkeypatch.setattr(datasets, "load_dataset", lambda name, config, cache_dir: asked.append((name, config)) or hub)
    spec, splits, _ = load_custom_task(TaskConfig(train="hub:someone/reviews:en"))
    assert asked == [("someone/reviews", "en")] and spec.name == "someone-reviews-en"
    assert spec.labels == ("neg", "pos") and list(splits["dev"]["label"]) == [1, 0]  # class names, not their ids


def test_task_file_yaml_and_json(tmp_path):
    (tmp_path / "data").mkdir()
    datasets.Dataset.from_list(trec_rows("train.label")).to_json(tmp_path / "data" / "train.jsonl")
    (tmp_path / "trec.yaml").write_text("train: data/train.jsonl\ntext_column: question\nlabel_column: coarse\n")
    config = read_task_file(tmp_path / "trec.yaml")
    assert config.name == "trec" and config.train == str(tmp_path / "data" / "train.jsonl")
    (tmp_path / "t.json").write_text(json.dumps({"name": "q", "train": "data/train.jsonl", "text_column": "question",
                                                 "label_column": "coarse", "dev_fraction": 0.2}))
    assert read_task_file(tmp_path / "t.json").dev_fraction == 0.2
    options = {"task": str(tmp_path / "trec.yaml"), "data": None, "dev_data": None, "text_column": "text",
               "text_pair_column": None, "label_column": "label", "positive_label": None, "dev_fraction": 0.1,
               "split_seed": 0}
    assert task_from_options(_Namespace(options)) == config
    with pytest.raises(UserError, match="--label-column: say the columns either in the task file"):
        task_from_options(_Namespace({**options, "label_column": "y"}))
    assert task_from_options(_Namespace({**options, "task": "mrpc"})) == "MRPC"
    assert task_from_options(_Namespace({**options, "task": None})) == "SST-2"
    mine = task_from_options(_Namespace({**options, "task": None, "data": str(tmp_path / "data" / "train.jsonl")}))
    assert isinstance(mine, TaskConfig) and mine.task_name == "train"


class _Namespace:
    def __init__(self, values):
        self.__dict__.update(values)


@pytest.mark.parametrize("content, config, message", [
    ("review,stars\ngood,1\nbad,0\n", {"label_column": "stars"}, r"no column\(s\) \['text'\]; found columns "
                                                               r"\['review', 'stars'\].*--text-column"),
    ("text,label\ngood,1\nbad,1\n", {}, "holds one label only"),
    ("text,label\ngood,1\nbad,\n", {}, "row 2: no label in column 'label'"),
    ("text,label\ngood,1\n,0\n", {}, "row 2: column 'text' holds None, expected text"),
    ("text,label\ngood,1\nbad,0\n", {"positive_label": "yes"}, "positive_label 'yes' is not a label"),
    ("text,label\ngood,1\nbad,0\n", {"name": "sst2"}, "is a GLUE task's"),
    ('text,label\n"good,1\n', {}, "cannot be read as CSV"),
])
def test_bad_user_data_is_one_clear_line(tmp_path, content, config, message):
    (tmp_path / "train.csv").write_text(content)
    with pytest.raises(UserError, match=message):
        load_custom_task(TaskConfig(**{"train": str(tmp_path / "train.csv"), **config}), cache_dir=tmp_path / "c")


def test_bad_dev_and_task_files(tmp_path):
    (tmp_path / "train.csv").write_text("text,label\ngood,1\nbad,0\nfine,1\nawful,0\n")
    (tmp_path / "dev.csv").write_text("text,label\nok,1\nmeh,2\n")
    with pytest.raises(UserError, match=r"dev data .*dev.csv, row 2: label '2' does not occur in the train data"):
        load_custom_task(TaskConfig(train=str(tmp_path / "train.csv"), dev=str(tmp_path / "dev.csv")))
    (tmp_path / "train.txt").write_text("x")
    with pytest.raises(UserError, match=r"unknown file type .txt"):
        load_custom_task(TaskConfig(train=str(tmp_path / "train.txt")))
    (tmp_path / "bad.yaml").write_text("train: [unclosed\n")
    with pytest.raises(UserError, match="bad.yaml is not valid YAML"):
        read_task_file(tmp_path / "bad.yaml")
    (tmp_path / "extra.yaml").write_text("train: train.csv\ntext_colum: review\n")
    with pytest.raises(UserError, match=r"unknown setting\(s\) \['text_colum'\]"):
        read_task_file(tmp_path / "extra.yaml")
    with pytest.raises(UserError, match="dev_fraction must be in"):
        TaskConfig(train="x.csv", dev_fraction=0.9)


def test_metrics_of_a_user_task():
    spec = TaskSpec("t", ("a", "b", "c"), ("f1", "accuracy", "macro_f1"), positive_label="a")
    preds, labels = torch.tensor([0, 0, 1, 2, 2]), torch.tensor([0, 1, 1, 2, 0])
    metrics = compute_metrics(spec, preds, labels)
    # class a: tp 1, fp 1, fn 1 -> F1 0.5; b: 1, 0, 1 -> 2/3; c: 1, 1, 0 -> 2/3
    assert metrics["f1"] == pytest.approx(0.5) and metrics["accuracy"] == pytest.approx(0.6)
    assert metrics["macro_f1"] == pytest.approx((0.5 + 2 / 3 + 2 / 3) / 3)
    with pytest.raises(UserError, match="metric f1 needs a positive label"):
        TaskSpec("t", ("a", "b"), ("f1",))


def test_trec_teacher_search_on_a_task_file(tmp_path, capsys):
    """The real 6-class TREC questions through teacher -> search, from a task file and CSV files."""
    for name, split in (("train.label", "train"), ("test.label", "dev")):
        datasets.Dataset.from_list(trec_rows(name)).to_csv(tmp_path / f"{split}.csv", index=False)
    (tmp_path / "trec.yaml").write_text("train: train.csv\ndev: dev.csv\ntext_column: question\n"
                                        "label_column: coarse\n")
    run, cache = tmp_path / "run", tmp_path / "cache"
    assert main(["teacher", "--task", str(tmp_path / "trec.yaml"), "--epochs", "1", "--batch-size", "16",
                 "--aug-copies", "0", "--train-limit", "96", "--output-dir", str(run), "--cache-dir", str(cache),
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "trec: 96 train / 103 dev rows" in printed and "labels ABBR, DESC, ENTY, HUM, LOC, NUM" in printed
    store = open_teacher_run(run)
    assert store.spec.labels == TREC_CLASSES and store.meta["num_labels"] == 6
    assert json.loads((run / "teacher" / "config.json").read_text())["id2label"]["5"] == "NUM"
    # The store keeps what students need of the teacher: search and retrain never open its directory.
    shutil.rmtree(run / "teacher")
    out = tmp_path / "student"
    assert main(["search", "--teacher", str(run), "--output-dir", str(out), "--epochs", "1", "--warmup-epochs", "0",
                 "--batch-size", "16", "--k-max", "2", "--no-progress"]) == 0
    assert main(["retrain", "--teacher", str(run), "--arch", str(out), "--output-dir", str(tmp_path / "retrained"),
                 "--epochs", "1", "--batch-size", "16", "--no-progress"]) == 0
    assert (tmp_path / "retrained" / "tokenizer.json").is_file()
    doc = json.loads((out / "architecture.json").read_text())
    assert doc["task"] == "trec" and doc["task_spec"]["labels"] == list(TREC_CLASSES)
    assert set(doc["dev_metrics"]) == {"accuracy", "macro_f1"} and doc["student_config"]["num_labels"] == 6
    student_doc_accuracy = doc["dev_metrics"]["accuracy"]

    # A self-contained student: deployed, then predicting with the teacher run and the store deleted.
    assert main(["deploy", "--arch", str(out)]) == 0
    shutil.rmtree(run)
    shutil.rmtree(cache)
    capsys.readouterr()
    assert main(["predict", "--student", str(out), "--input", str(tmp_path / "dev.csv"), "--text-column", "question",
                 "--output", str(tmp_path / "pred.jsonl"), "--no-progress"]) == 0
    assert "predicted 103 text(s)" in capsys.readouterr().err
    predicted = [json.loads(line) for line in (tmp_path / "pred.jsonl").read_text().splitlines()]
    gold = [row["coarse"] for row in trec_rows("test.label")]
    assert len(predicted) == 103 and set(predicted[0]["probabilities"]) == set(TREC_CLASSES)
    assert sum(predicted[0]["probabilities"].values()) == pytest.approx(1, abs=1e-4)
    # The labels behind the exported dev accuracy, from the student directory alone.
    assert sum(p["label"] == g for p, g in zip(predicted, gold)) / 103 == pytest.approx(student_doc_accuracy)
    assert main(["predict", "--student", str(out), "--onnx", "--input", str(tmp_path / "dev.csv"), "--text-column",
                 "question", "--output", str(tmp_path / "onnx.jsonl"), "--no-progress"]) == 0
    onnx = [json.loads(line)["label"] for line in (tmp_path / "onnx.jsonl").read_text().splitlines()]
    assert onnx == [p["label"] for p in predicted]
    student = AdaBertStudent.from_pretrained(out)
    assert student.config.num_labels == 6 and not student.training


def test_predict_inputs_and_mistakes(runs, tmp_path, capsys, monkeypatch):
    """`predict` reads --text, .txt lines, stdin; a pair student needs both texts."""
    student = runs / "pair-student"
    if not (student / "architecture.json").is_file():
        assert main(["search", "--teacher", str(runs / "MRPC"), "--output-dir", str(student), "--epochs", "1",
                     "--warmup-epochs", "0", "--batch-size", "16", "--k-max", "2", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["predict", "--student", str(student), "--text", "He left.", "--text-pair", "He went away.",
                 "--text", "A cat.", "--text-pair", "Stocks fell."]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 2 and {line["label"] for line in lines} <= {"0", "1"}
    monkeypatch.setattr("sys.stdin", io.StringIO("He left.\tHe went away.\nA cat.\tStocks fell.\n"))
    assert main(["predict", "--student", str(student)]) == 0
    piped = capsys.readouterr()
    assert [json.loads(line) for line in piped.out.splitlines()] == lines
    assert "predicting" not in piped.err       # no progress bar for piped texts, only for files
    (tmp_path / "in.txt").write_text("only one text\n")
    assert main(["predict", "--student", str(student), "--input", str(tmp_path / "in.txt")]) == 2
    assert "text 1: a pair student reads two texts per line" in capsys.readouterr().err
    assert main(["predict", "--student", str(student), "--text", "alone"]) == 2
    assert "is a pair student: give the second texts too" in capsys.readouterr().err
    (tmp_path / "in.csv").write_text("a,b\nx,y\n")
    assert main(["predict", "--student", str(student), "--input", str(tmp_path / "in.csv"), "--text-column", "a",
                 "--text-pair-column", "c", "--output", str(tmp_path / "never.jsonl")]) == 2
    assert "no column(s) ['c']; found columns ['a', 'b']" in capsys.readouterr().err
    assert not (tmp_path / "never.jsonl").exists()


def test_predict_runs_the_teacher_on_the_same_texts(runs, tmp_path, capsys):
    """`predict --student <teacher run>/teacher`: the teacher's labels, the ones in its knowledge store."""
    store = open_teacher_run(runs / "MRPC")
    rows = load_task("MRPC", runs / "glue")["dev"]
    datasets.Dataset.from_dict({"s1": rows["text_a"], "s2": rows["text_b"]}).to_json(tmp_path / "dev.jsonl")
    assert main(["predict", "--student", str(runs / "MRPC" / "teacher"), "--input", str(tmp_path / "dev.jsonl"),
                 "--text-column", "s1", "--text-pair-column", "s2", "--output", str(tmp_path / "out.jsonl"),
                 "--no-progress"]) == 0
    assert "eager PyTorch, bert classifier" in capsys.readouterr().err
    labels = [json.loads(line)["label"] for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    head = torch.tensor(store.data["dev"]["teacher_logits"])[:, -1].argmax(-1)
    assert labels == [store.spec.labels[i] for i in head] and len(labels) == 32
    assert main(["predict", "--student", str(runs / "MRPC" / "teacher"), "--onnx", "--text", "x"]) == 2
    assert "is a Hugging Face classifier, not a deployed student" in capsys.readouterr().err


def test_nni_trials_take_the_same_task_options(tmp_path):
    (tmp_path / "q.csv").write_text("question,coarse\nWho?,HUM\nWhere?,LOC\n")
    args = trial_settings("search", ["--data", str(tmp_path / "q.csv"), "--text-column", "question"],
                          {"label_column": "coarse", "task": "questions"})
    config = task_from_options(args)
    assert config == TaskConfig(name="questions", train=str(tmp_path / "q.csv"), text_column="question",
                                label_column="coarse")
    assert task_from_options(trial_settings("search", [], None)) == "SST-2"
