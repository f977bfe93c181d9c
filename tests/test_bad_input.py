"""Bad input at the command line: every case exits with code 2, prints one specific
line (what, where, what was expected; no traceback) and leaves no output behind."""

import errno
import hashlib
import json
import os
import re
import shutil

import pytest
from conftest import write_tsv
from safetensors.torch import load_file, save_file

from nni_adabert import atomic
from nni_adabert.cli import main
from nni_adabert.workflows.export import ARCH_FILE, WEIGHTS_FILE


@pytest.fixture(scope="module")
def student(runs, tmp_path_factory):
    """A student searched on the tiny SST-2 teacher run (1 epoch)."""
    out = tmp_path_factory.mktemp("student")
    assert main(["search", "--teacher", str(runs / "SST-2"), "--output-dir", str(out), "--epochs", "1",
                 "--batch-size", "32", "--no-progress"]) == 0
    return out


def files_under(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def sst2_data(tmp, train_rows=None, train_bytes=None, dev=True):
    """A GLUE directory whose SST-2 train file has ``train_rows`` (or raw ``train_bytes``)."""
    folder = tmp / "glue" / "SST-2"
    if train_bytes is not None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "train.tsv").write_bytes(train_bytes)
    else:
        write_tsv(folder / "train.tsv", ["sentence", "label"], train_rows or [["fine", "1"]])
    if dev:
        write_tsv(folder / "dev.tsv", ["sentence", "label"], [["fine", "1"]])
    return tmp / "glue"


def teacher(data_or_none, tmp, *extra):
    argv = ["teacher", "--output-dir", str(tmp / "out"), "--cache-dir", str(tmp / "cache"), "--no-progress"]
    return argv + (["--data", str(data_or_none)] if data_or_none else []) + list(extra)


def copy_student(student, tmp, change=None, weights=None):
    """A copy of the exported student with its JSON edited by ``change`` (or replaced by
    a string) and its weights file replaced by ``weights`` bytes."""
    dest = tmp / "arch"
    shutil.copytree(student, dest, ignore=shutil.ignore_patterns("search"))
    if isinstance(change, str):
        (dest / ARCH_FILE).write_text(change)
    elif change is not None:
        doc = json.loads((dest / ARCH_FILE).read_text())
        change(doc)
        (dest / ARCH_FILE).write_text(json.dumps(doc))
    if weights is not None:
        data = (dest / WEIGHTS_FILE).read_bytes()
        (dest / WEIGHTS_FILE).write_bytes(weights(data))
    return dest


def retrain(arch, runs, tmp, task="SST-2"):
    return ["retrain", "--arch", str(arch), "--teacher", str(runs / task), "--output-dir", str(tmp / "out"),
            "--epochs", "1", "--no-progress"]


def evaluate(arch, runs, tmp):
    return ["evaluate", "--arch", str(arch), "--teacher", str(runs / "SST-2"), "--json", str(tmp / "out" / "r.json")]


def search(runs, tmp, *extra):
    return ["search", "--teacher", str(runs / "SST-2"), "--output-dir", str(tmp / "out"), "--no-progress",
            *extra]


def half_student(student, tmp):
    """A copy of the student whose classifier weights are float16 (its checksum updated)."""
    dest = copy_student(student, tmp)
    state = load_file(str(dest / WEIGHTS_FILE))
    state["classifier.weight"] = state["classifier.weight"].half()
    save_file(state, str(dest / WEIGHTS_FILE))
    doc = json.loads((dest / ARCH_FILE).read_text())
    doc["weights_sha256"] = hashlib.sha256((dest / WEIGHTS_FILE).read_bytes()).hexdigest()
    (dest / ARCH_FILE).write_text(json.dumps(doc))
    return dest


def set_vocab(doc):
    doc["vocab"]["fingerprint"] = "0" * 16


def break_store(runs, tmp):
    """A copy of the SST-2 teacher run whose knowledge store is gone."""
    run = tmp / "run"
    shutil.copytree(runs / "SST-2", run, ignore=shutil.ignore_patterns("teacher_train"))
    record = json.loads((run / "probes.json").read_text())
    record["knowledge_store"] = str(tmp / "deleted-store")
    (run / "probes.json").write_text(json.dumps(record))
    return run


def pickled_model(tmp):
    """A BERT checkpoint directory whose weights are a pickle (pytorch_model.bin)."""
    model = tmp / "pickled"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (model / "pytorch_model.bin").write_bytes(b"not loaded")
    return model


def damage_record(runs, tmp, text):
    """A copy of the SST-2 teacher run whose probes.json holds ``text``."""
    run = tmp / "run"
    shutil.copytree(runs / "SST-2", run, ignore=shutil.ignore_patterns("teacher_train"))
    (run / "probes.json").write_text(text)
    return run


def foreign_model(tmp):
    model = tmp / "gpt"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2}))
    return model


CASES = {
    # data files
    "malformed TSV row": (lambda r, s, t: teacher(sst2_data(t, [["fine", "1"], ["no label here"]]), t),
                          r"train.tsv, line 3: 1 tab-separated fields, expected 2"),
    "wrong columns": (lambda r, s, t: teacher(sst2_data(t, train_bytes=b"text\tlabel\nhello\t1\n"), t),
                      r"missing column\(s\) \['sentence'\]"),
    "unknown label": (lambda r, s, t: teacher(sst2_data(t, [["fine", "7"]]), t),
                      r"label '7' is not a SST-2 label; expected one of \['0', '1'\]"),
    "duplicated column": (lambda r, s, t: teacher(sst2_data(t, train_bytes=b"sentence\tlabel\tlabel\nhi\t1\t1\n"), t),
                          r"the header names column\(s\) \['label'\] more than once"),
    "empty data file": (lambda r, s, t: teacher(sst2_data(t, train_bytes=b"sentence\tlabel\n"), t),
                        "has a header but no rows"),
    "non-UTF-8 bytes": (lambda r, s, t: teacher(sst2_data(t, train_bytes=b"sentence\tlabel\nh\xe9llo\t1\n"), t),
                        r"train.tsv, line 2: bytes that are not UTF-8"),
    "missing dev file": (lambda r, s, t: teacher(sst2_data(t, dev=False), t), r"missing data file .*dev.tsv"),
    "missing data directory": (lambda r, s, t: teacher(t / "nowhere", t), "does not exist"),
    "unknown task": (lambda r, s, t: teacher(None, t, "--task", "CoLA"), "unknown task 'CoLA'"),
    # teacher checkpoints
    "teacher not BERT-family": (lambda r, s, t: teacher(None, t, "--model", str(foreign_model(t))),
                                "is a 'gpt2' model, not a BERT-family encoder"),
    "teacher weights pickled": (lambda r, s, t: teacher(None, t, "--model", str(pickled_model(t))),
                                r"holds its weights as pytorch_model.bin \(a pickle\), which we do not load"),
    "teacher directory missing": (lambda r, s, t: teacher(None, t, "--model", str(t / "no-model")),
                                  r"model directory .*no-model does not exist"),
    "bad teacher setting": (lambda r, s, t: teacher(None, t, "--aug-copies", "-1"),
                            "AugmentConfig.copies must be an integer >= 0, got -1"),
    "negative teacher batch size": (lambda r, s, t: teacher(None, t, "--batch-size", "-1"),
                                    "teacher setting batch_size must be an integer >= 1, got -1"),
    "teacher learning rate nan": (lambda r, s, t: teacher(None, t, "--lr", "nan"),
                                  "teacher setting lr must be a finite number > 0, got nan"),
    "negative teacher learning rate": (lambda r, s, t: teacher(None, t, "--lr", "-1"),
                                       "teacher setting lr must be a finite number > 0, got -1.0"),
    "teacher train limit 0": (lambda r, s, t: teacher(None, t, "--train-limit", "0"),
                              "teacher setting train_limit must be an integer >= 1, got 0"),
    "no devices": (lambda r, s, t: search(r, t, "--devices", "0"), "devices must be an integer >= 1, got 0"),
    # teacher runs and knowledge stores
    "not a teacher run": (lambda r, s, t: search(r, t)[:2] + [str(t), "--output-dir", str(t / "out")],
                          "is not a teacher run: probes.json is missing"),
    "probes.json a list": (lambda r, s, t: ["search", "--teacher", str(damage_record(r, t, "[1, 2]")),
                                            "--output-dir", str(t / "out")], r"probes.json is damaged"),
    "probes.json not JSON": (lambda r, s, t: ["search", "--teacher", str(damage_record(r, t, "{oops")),
                                              "--output-dir", str(t / "out")], r"probes.json is damaged"),
    "knowledge store missing": (lambda r, s, t: ["search", "--teacher", str(break_store(r, t)),
                                                 "--output-dir", str(t / "out")],
                                "is not a teacher-knowledge store: meta.json is missing"),
    # architectures and weights
    "architecture not JSON": (lambda r, s, t: retrain(copy_student(s, t, "{not json"), r, t), "is not a JSON file"),
    "unknown architecture version": (lambda r, s, t: retrain(copy_student(s, t, lambda d: d.update(version=7)), r, t),
                                     "format version 7 is not one we know"),
    "unknown op": (lambda r, s, t: retrain(copy_student(s, t, lambda d: d["architecture"].update(edge_2_0="lstm")),
                                           r, t), "edge 'edge_2_0' has unknown op 'lstm'"),
    "depth out of range": (lambda r, s, t: retrain(copy_student(s, t, lambda d: d["architecture"].update(depth=99)),
                                                   r, t), r"depth must be an integer in 1\.\.8, got 99"),
    "missing edge": (lambda r, s, t: retrain(copy_student(s, t, lambda d: d["architecture"].pop("edge_4_3")), r, t),
                     "missing edge 'edge_4_3'"),
    "architecture file missing": (lambda r, s, t: retrain(t / "nowhere.json", r, t), "does not exist"),
    "vocabulary differs from the store": (lambda r, s, t: retrain(copy_student(s, t, set_vocab), r, t), "vocabulary"),
    "student of another task's teacher": (lambda r, s, t: evaluate(s, r, t)[:3] + ["--teacher", str(r / "MRPC")],
                                           r"is not a student of the teacher run's task \(task: SST-2 for the "
                                           r"student, MRPC for the teacher run; input: single text for the student, "
                                           r"pair for the teacher run\)"),
    "deployed with another task's teacher": (lambda r, s, t: ["deploy", "--arch", str(copy_student(s, t)),
                                                              "--teacher", str(r / "MRPC")],
                                             r"task: SST-2 for the student, MRPC for the teacher run"),
    "vocabulary of 10^9 in the JSON": (lambda r, s, t: evaluate(copy_student(
        s, t, lambda d: d["student_config"].update(vocab_size=10**9)), r, t),
        r"vocabulary size: 1000000000 for the student, 30522 for the teacher run"),
    "width 8192 in the JSON": (lambda r, s, t: evaluate(copy_student(
        s, t, lambda d: d["student_config"].update(embed_dim=8192)), r, t),
        r"student_config gives embed.word.weight the shape \[30522, 8192\], but .* holds \[30522, 128\]"),
    "dropout not a number in the JSON": (lambda r, s, t: evaluate(copy_student(
        s, t, lambda d: d["student_config"].update(dropout="abc")), r, t),
        r"student config: dropout must be in \[0, 1\), got 'abc'"),
    "is_pair not a boolean in the JSON": (lambda r, s, t: evaluate(copy_student(
        s, t, lambda d: d["student_config"].update(is_pair="no")), r, t),
        r"student config: is_pair must be true or false, got 'no'"),
    "key twice in the JSON": (lambda r, s, t: evaluate(copy_student(
        s, t, (s / ARCH_FILE).read_text().replace("{", '{"format": "x", ', 1)), r, t), r"key 'format' appears twice"),
    "float16 weights": (lambda r, s, t: evaluate(half_student(s, t), r, t),
                        r"do not match the architecture .*wrong dtype: \['classifier.weight'\]"),
    "tampered weights": (lambda r, s, t: evaluate(copy_student(s, t, weights=lambda b: b[:-8] + b"\x00" * 8), r, t),
                         r"student.safetensors does not match the checksum in .*architecture.json"),
    "truncated weights": (lambda r, s, t: evaluate(copy_student(s, t, weights=lambda b: b[: len(b) // 2]), r, t),
                          r"student.safetensors does not match the checksum"),
    # settings and output
    "bad search setting": (lambda r, s, t: search(r, t, "--epochs", "0"), "epochs must be an integer >= 1, got 0"),
    "negative candidates": (lambda r, s, t: search(r, t, "--candidates", "-1"),
                            "candidates must be an integer >= 0, got -1"),
    "no candidate epochs": (lambda r, s, t: search(r, t, "--candidate-epochs", "0"),
                            "candidate_epochs must be an integer >= 1, got 0"),
    "KD weight out of range": (lambda r, s, t: search(r, t, "--gamma", "1.5"), r"gamma .* must be in \[0, 1\]"),
    "negative gradient clip": (lambda r, s, t: search(r, t, "--grad-clip", "-1"),
                               r"grad_clip must be a finite number >= 0, got -1.0"),
    "dropout out of range": (lambda r, s, t: retrain(s, r, t) + ["--dropout", "1.5"],
                             r"dropout must be in \[0, 1\), got 1.5"),
    "unknown pooling": (lambda r, s, t: retrain(s, r, t) + ["--pooling", "avg"],
                        r"retrain setting pooling must be one of 'mean', 'max', got 'avg'"),
    "unknown pooling in the JSON": (lambda r, s, t: evaluate(copy_student(
        s, t, lambda d: d["student_config"].update(pooling="sum")), r, t),
        r"student config: pooling must be one of \['mean', 'max'\], got 'sum'"),
    "budget below the smallest student": (lambda r, s, t: search(r, t, "--max-params", "1000"),
                                          r"max_params 1,000 is below the smallest student of this space \("),
    "negative weight decay": (lambda r, s, t: search(r, t, "--weight-decay", "-0.1"),
                              r"weight_decay must be a finite number >= 0, got -0.1"),
    "output path under a file": (lambda r, s, t: retrain(s, r, t)[:-5] + ["--output-dir", str(t / "file" / "out")],
                                 r"cannot use .*file/out as a directory: .*file is a file"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_exits_2_with_a_message_and_writes_nothing(case, runs, student, tmp_path, capsys):
    make_argv, message = CASES[case]
    (tmp_path / "file").write_text("a file where a directory should be")
    argv = make_argv(runs, student, tmp_path)
    before = files_under(tmp_path)
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"nni-adabert {argv[0]}: error: ") and "Traceback" not in err
    assert len(err.splitlines()) == 1
    assert re.search(message, err), err
    assert not (tmp_path / "out").exists()
    assert files_under(tmp_path) == before   # nothing else appeared either (no caches, no temp files)


def test_full_disk_leaves_no_half_written_file(runs, student, tmp_path, capsys, monkeypatch):
    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic.os, "fsync", no_space)
    result = tmp_path / "result.json"
    assert main(["evaluate", "--arch", str(student), "--teacher", str(runs / "SST-2"), "--json", str(result)]) == 2
    err = capsys.readouterr().err
    assert f"no space left on the device while writing {result}" in err
    assert list(tmp_path.iterdir()) == []   # neither the file nor its temporary


def test_diverging_loss_stops_with_the_epoch_and_a_hint(runs, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["search", "--teacher", str(runs / "SST-2"), "--output-dir", str(out), "--epochs", "2",
                 "--batch-size", "16", "--lr", "1e30", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "the training loss became" in err and "at epoch 0" in err and "lower the learning rate (--lr)" in err
    assert not (out / ARCH_FILE).exists() and not (out / WEIGHTS_FILE).exists()
