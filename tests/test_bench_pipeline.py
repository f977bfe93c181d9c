"""The default-pipeline benchmark's measurement (bench/pipeline.py): every student's dev metrics and
size, and its speed from one round-robin with the teacher and the BERT-base architecture."""

import json
import sys
from pathlib import Path

import pytest
import torch
from transformers import BertConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import pipeline  # noqa: E402

from nni_adabert.cli import main  # noqa: E402
from nni_adabert.teacher.run import open_teacher_run  # noqa: E402
from nni_adabert.workflows.speed import bert_base  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def test_every_student_is_timed_in_one_round_robin_with_the_references(runs, tmp_path, monkeypatch):
    students = []
    for seed in (0, 1):
        out = tmp_path / f"search-seed{seed}"
        assert main(["search", "--teacher", str(runs / "SST-2"), "--output-dir", str(out), "--epochs", "1",
                     "--warmup-epochs", "0", "--batch-size", "16", "--seed", str(seed), "--no-progress"]) == 0
        students.append({"seed": seed, "dir": str(out)})
    # A tiny BERT stands in for BERT-base: the measurement, not BERT-base's minutes, is under test.
    tiny = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    monkeypatch.setattr(pipeline, "bert_base", lambda num_labels: bert_base(num_labels, tiny))
    calls = []
    measure_speeds = pipeline.measure_speeds

    def recorded(models, rows, **kwargs):
        calls.append(sorted(models))
        result = measure_speeds(models, rows, repeats=1, warmup=0, **kwargs)
        calls.append(result)
        return result

    monkeypatch.setattr(pipeline, "measure_speeds", recorded)
    teacher = pipeline.measure(open_teacher_run(runs / "SST-2"), students, threads=1)

    assert calls[0] == sorted(["teacher", pipeline.REFERENCE, "student 0", "student 1"])  # one call, every model
    seconds = calls[1]["seconds"]
    for i, entry in enumerate(students):
        exported = json.loads((Path(entry["dir"]) / "architecture.json").read_text())
        assert entry["dev"] == pytest.approx(exported["dev_metrics"])
        assert entry["params"] == exported["params"] and entry["depth"] == exported["architecture"]["depth"]
        assert entry["speedup_over_bert_base"] == pytest.approx(seconds[pipeline.REFERENCE] / seconds[f"student {i}"])
        assert entry["speedup_over_teacher"] == pytest.approx(seconds["teacher"] / seconds[f"student {i}"])
    assert set(teacher) == {"accuracy"} and 0 <= teacher["accuracy"] <= 1
    assert torch.get_num_threads() == 1
