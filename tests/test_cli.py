"""The command line end to end, on small slices of the real GLUE files:
teacher -> search -> evaluate, cross-task retrain, and clean failures."""

import json

import pytest
from conftest import write_tsv

from nni_adabert.cli import main
from nni_adabert.data import read_glue_tsv
from nni_adabert.tasks import get_task


def glue_slice(src, dst, task, n_train, n_dev):
    """Copy the first rows of a real GLUE task into a GLUE-layout directory."""
    spec = get_task(task)
    for name, n in (("train.tsv", n_train), (spec.tsv_dev_file, n_dev)):
        lines = (src / spec.name / name).read_text(encoding="utf-8-sig").splitlines()
        (dst / spec.name).mkdir(parents=True, exist_ok=True)
        (dst / spec.name / name).write_text("\n".join(lines[: n + 1]) + "\n", encoding="utf-8")
        assert len(read_glue_tsv(dst / spec.name / name, spec)["label"]) == n
    return dst


@pytest.fixture(scope="module")
def runs(tmp_path_factory, glue_dir):
    """Tiny teacher runs for SST-2 and MRPC (1 epoch, 64 train rows, 1 augmented copy)."""
    root = tmp_path_factory.mktemp("cli")
    data = root / "glue"
    for task in ("SST-2", "MRPC"):
        glue_slice(glue_dir, data, task, 64, 32)
        assert main(["teacher", "--task", task, "--data", str(data), "--epochs", "1", "--batch-size", "16",
                     "--aug-copies", "1", "--output-dir", str(root / task), "--cache-dir", str(root / "cache"),
                     "--no-progress"]) == 0
    return root


def test_teacher_outputs(runs, capsys):
    record = json.loads((runs / "SST-2" / "probes.json").read_text())
    assert len(record["probe_dev_accuracy"]) == 6
    assert (runs / "SST-2" / "probes.png").stat().st_size > 0
    assert "| 6     |" in (runs / "SST-2" / "probes.md").read_text()


def test_search_evaluate_and_cross_task_retrain(runs, capsys):
    out = runs / "student"
    assert main(["search", "--teacher", str(runs / "SST-2"), "--output-dir", str(out), "--epochs", "1",
                 "--finetune-epochs", "1", "--batch-size", "16", "--no-progress"]) == 0
    doc = json.loads((out / "architecture.json").read_text())
    assert doc["task"] == "SST-2" and 1 <= doc["depth"] <= 8 and doc["params"] > doc["params_without_embedding"]
    assert doc["vocab"]["size"] == 30522 and len(doc["search"]["history"]) == 1
    assert (out / "student.safetensors").is_file() and (out / "cell.png").is_file()

    capsys.readouterr()
    assert main(["evaluate", "--arch", str(out), "--teacher", str(runs / "SST-2"), "--speed",
                 "--json", str(runs / "eval.json")]) == 0
    printed = capsys.readouterr().out
    result = json.loads((runs / "eval.json").read_text())
    # Evaluating the exported files reproduces the numbers recorded at export time.
    student = result["student"]
    assert student["dev_metrics"] == doc["dev_metrics"] and student["params"] == doc["params"]
    assert f"{doc['params']:,}" in printed and f"{result['teacher']['params']:,}" in printed
    assert result["teacher"]["params"] > 20_000_000 and student["speedup"] > 0

    # The SST-2 structure retrained on MRPC (a pair task) from fresh weights.
    moved = runs / "transfer"
    assert main(["retrain", "--arch", str(out / "architecture.json"), "--teacher", str(runs / "MRPC"),
                 "--output-dir", str(moved), "--epochs", "1", "--batch-size", "16", "--no-progress"]) == 0
    retrained = json.loads((moved / "architecture.json").read_text())
    assert retrained["task"] == "MRPC" and retrained["architecture"] == doc["architecture"]
    assert retrained["student_config"]["is_pair"] and set(retrained["dev_metrics"]) == {"f1", "accuracy"}


def test_cli_errors_exit_2_and_write_nothing(runs, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["search", "--teacher", str(tmp_path), "--output-dir", str(out), "--no-progress"]) == 2
    assert "is not a teacher run: probes.json is missing" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "nni-adabert/architecture", "version": 7}')
    assert main(["evaluate", "--arch", str(bad), "--teacher", str(runs / "SST-2")]) == 2
    assert "format version 7 is not one we know" in capsys.readouterr().err
    assert main(["teacher", "--task", "CoLA", "--output-dir", str(out)]) == 2
    assert "unknown task 'CoLA'" in capsys.readouterr().err
    write_tsv(tmp_path / "glue" / "SST-2" / "train.tsv", ["sentence", "label"], [["fine", "7"]])
    assert main(["teacher", "--data", str(tmp_path / "glue"), "--output-dir", str(out)]) == 2
    assert "label '7' is not a SST-2 label" in capsys.readouterr().err
    assert not out.exists()
