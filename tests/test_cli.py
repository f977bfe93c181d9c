"""The command line end to end, on small slices of the real GLUE files:
teacher -> search -> evaluate, cross-task retrain, and clean failures."""

import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys

import datasets
import pytest
import torch
from conftest import write_tsv
from safetensors.torch import load_file

from nni_adabert.cli import main
from nni_adabert.config import RetrainConfig
from nni_adabert.model.space import random_arch, reads_inputs, resolve_space
from nni_adabert.teacher.run import open_teacher_run
from nni_adabert.workflows.export import load_student, read_architecture
from nni_adabert.workflows.retrain import ArchToRetrain, retrain_run_settings, run_retrain
from nni_adabert.workflows.student import student_config


def test_teacher_outputs(runs, capsys):
    record = json.loads((runs / "SST-2" / "probes.json").read_text())
    assert len(record["probe_dev_accuracy"]) == 6
    assert (runs / "SST-2" / "probes.png").stat().st_size > 0
    assert "| 6     |" in (runs / "SST-2" / "probes.md").read_text()


def test_a_teacher_run_with_a_relative_cache_dir_works_from_any_directory(runs, tmp_path, monkeypatch):
    """The store is recorded by its absolute path, so the run is not tied to the directory it was made in."""


    project = tmp_path / "project"
    shutil.copytree(runs / "SST-2" / "teacher", project / "run" / "teacher")  # finished: not fine-tuned again
    shutil.copytree(runs / "cache", project / "cache")  # the same inputs: a cache hit
    monkeypatch.chdir(project)
    assert main(["teacher", "--task", "SST-2", "--data", str(runs / "glue"), "--epochs", "1", "--batch-size", "16",
                 "--aug-copies", "1", "--output-dir", "run", "--cache-dir", "cache", "--no-progress"]) == 0
    recorded = json.loads((project / "run" / "probes.json").read_text())["knowledge_store"]
    assert recorded.startswith(str(project / "cache" / "knowledge" / "SST-2-"))
    monkeypatch.chdir(tmp_path)
    store = open_teacher_run(project / "run")
    assert str(store.path) == recorded and store.meta["task"] == "SST-2"


def test_search_evaluate_and_cross_task_retrain(runs, capsys):
    out = runs / "student"
    assert main(["search", "--teacher", str(runs / "SST-2"), "--output-dir", str(out), "--epochs", "1",
                 "--finetune-epochs", "1", "--batch-size", "16", "--no-progress"]) == 0
    doc = json.loads((out / "architecture.json").read_text())
    assert doc["task"] == "SST-2" and 1 <= doc["depth"] <= 8 and doc["params"] > doc["params_without_embedding"]
    assert doc["vocab"]["size"] == 30522 and len(doc["search"]["history"]) == 1
    assert doc["search"]["history"][0]["top_prob_ratio"] == pytest.approx(1.0)  # warm-up only: never moved
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
                 "--output-dir", str(moved), "--epochs", "1", "--batch-size", "16", "--dropout", "0.25",
                 "--weight-decay", "0.01", "--no-progress"]) == 0
    retrained = json.loads((moved / "architecture.json").read_text())
    assert retrained["task"] == "MRPC" and retrained["architecture"] == doc["architecture"]
    assert retrained["student_config"]["is_pair"] and set(retrained["dev_metrics"]) == {"f1", "accuracy"}
    # The student's dropout travels with its architecture; the weight decay is a retraining setting.
    assert retrained["student_config"]["dropout"] == 0.25 and retrained["retrain"]["weight_decay"] == 0.01
    reloaded = load_student(read_architecture(moved / "architecture.json"))
    assert {m.p for m in reloaded.modules() if isinstance(m, torch.nn.Dropout)} == {0.25}


def test_retrain_re_estimates_batchnorm_statistics_and_trains_the_same(runs, tmp_path):
    """PreciseBN (the retraining's default) changes BatchNorm's statistics only: the same weights as a
    retraining with BatchNorm's moving averages, other running statistics, and dev metrics of its own."""
    def retrain(out, *extra):
        assert main(["retrain", "--arch", "random:1", "--teacher", str(runs / "SST-2"),
                     "--output-dir", str(out), "--epochs", "2", "--batch-size", "8", "--no-progress", *extra]) == 0
        doc = json.loads((out / "architecture.json").read_text())
        return doc, load_file(str(out / "student.safetensors"))

    precise, precise_weights = retrain(tmp_path / "precise")
    moving, moving_weights = retrain(tmp_path / "moving", "--precise-bn-batches", "0")
    assert precise["retrain"]["precise_bn_batches"] == 200 and moving["retrain"]["precise_bn_batches"] == 0
    statistics = {k for k in precise_weights if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    assert statistics  # the random child has convolutions, each with its BatchNorm
    for name, tensor in precise_weights.items():
        same = torch.equal(tensor, moving_weights[name])
        assert same != (name in statistics), name
    assert precise["dev_metrics"].keys() == moving["dev_metrics"].keys()


def test_retrain_a_seeded_random_architecture_of_the_space(runs, tmp_path, capsys):
    """`retrain --arch random:<seed>`: the paper's Table 3 baseline from the CLI, as in retrain trials;
    the seed fixes the structure, the space settings shape it, and a bad seed is one clear error."""
    def retrain(arch, out, *extra):
        return main(["retrain", "--arch", arch, "--teacher", str(runs / "MRPC"), "--output-dir", str(out),
                     "--epochs", "1", "--batch-size", "16", "--train-limit", "32", "--no-progress", *extra])

    assert retrain("random:3", tmp_path / "r3", "--k-max", "3") == 0
    doc = json.loads((tmp_path / "r3" / "architecture.json").read_text())
    assert doc["retrain"]["from"] == "random:3" and doc["retrain"]["searched_on"] is None
    assert doc["student_config"]["space"] == "matching" and doc["student_config"]["k_max"] == 3
    assert doc["depth"] <= 3
    expected = random_arch(student_config(open_teacher_run(runs / "MRPC"), k_max=3, space="matching"), 3)
    assert doc["architecture"] == expected
    assert retrain("random:3", tmp_path / "paper", "--k-max", "3", "--space", "paper") == 0
    assert json.loads((tmp_path / "paper" / "architecture.json").read_text())["student_config"]["space"] == "paper"
    capsys.readouterr()
    assert retrain("random:three", tmp_path / "bad") == 2
    assert "arch 'random:three': expected 'random:<integer seed>'" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_max_pooling_travels_from_the_search_to_its_retraining_unless_the_retraining_sets_its_own(runs, tmp_path):
    searched = tmp_path / "search"
    assert main(["search", "--teacher", str(runs / "SST-2"), "--output-dir", str(searched), "--epochs", "1",
                 "--batch-size", "16", "--train-limit", "32", "--augmented-limit", "0", "--pooling", "max",
                 "--dropout", "0.3", "--no-progress"]) == 0
    doc = json.loads((searched / "architecture.json").read_text())
    assert doc["student_config"]["pooling"] == "max" and doc["search"]["pooling"] == "max"

    def retrain(out, *extra):
        assert main(["retrain", "--arch", str(searched), "--teacher", str(runs / "SST-2"), "--output-dir", str(out),
                     "--epochs", "1", "--batch-size", "16", "--train-limit", "32", "--no-progress", *extra]) == 0
        return json.loads((out / "architecture.json").read_text())

    kept = retrain(tmp_path / "kept", "--pooling", "none")
    mean = retrain(tmp_path / "mean", "--pooling", "mean", "--dropout", "0.25")
    assert kept["student_config"]["pooling"] == "max" and kept["retrain"]["pooling"] == "max"
    assert mean["student_config"]["pooling"] == "mean" and "pooling" not in mean["retrain"]
    # The student is built from one config: the retraining's own dropout (not the search's 0.3) with the
    # pooling it resolved.
    assert mean["student_config"]["dropout"] == 0.25 and kept["student_config"]["dropout"] == 0.1
    # The exported files give the dev metrics recorded at export, so the loaded student pools as it trained.
    for out, recorded in ((tmp_path / "kept", kept), (tmp_path / "mean", mean)):
        assert main(["evaluate", "--arch", str(out), "--teacher", str(runs / "SST-2"),
                     "--json", str(out / "eval.json")]) == 0
        assert json.loads((out / "eval.json").read_text())["student"]["dev_metrics"] == recorded["dev_metrics"]


def test_an_api_retraining_of_a_hand_built_arch_resolves_its_space_and_keeps_its_pooling(runs, tmp_path):
    """The Python API: an ArchToRetrain built by hand with the space "auto" and max pooling on a pair task
    builds its student in the task's pair space with the max, and names its run as the resolved space does."""
    store = open_teacher_run(runs / "MRPC")
    resolved = resolve_space("auto", is_pair=True)
    space = student_config(store, 16, 2, space=resolved)
    arch = next(a for a in (random_arch(space, seed) for seed in range(50)) if reads_inputs(a, space))
    hand_built = ArchToRetrain(arch, {"from": "by hand", "searched_on": None}, 16, 2, "auto", "max")
    config = RetrainConfig(epochs=1, batch_size=16, train_limit=32, augmented_limit=0)
    doc = run_retrain(hand_built, store, tmp_path / "retrained", config, progress=False)
    assert doc["student_config"]["space"] == resolved == "matching" and doc["student_config"]["pooling"] == "max"
    settings = retrain_run_settings(hand_built, config, store)
    assert settings == retrain_run_settings(dataclasses.replace(hand_built, space=resolved), config, store)
    assert settings["space"] == "matching" and settings["pooling"] == "max" and doc["retrain"] == settings
    assert load_student(read_architecture(tmp_path / "retrained" / "architecture.json")).config.pooling == "max"


def test_search_steps_the_architecture_on_held_out_examples(runs, tmp_path, capsys):
    out = tmp_path / "holdout"
    assert main(["search", "--teacher", str(runs / "MRPC"), "--output-dir", str(out), "--epochs", "2",
                 "--batch-size", "16", "--arch-holdout", "0.25", "--no-progress"]) == 0
    doc = json.loads((out / "architecture.json").read_text())
    history = doc["search"]["history"]
    assert doc["search"]["arch_holdout"] == 0.25 and len(history) == 2
    assert history[0]["top_prob_ratio"] == pytest.approx(1.0)                 # the warm-up epoch
    assert history[1]["top_prob_ratio"] > 1.0                                 # moved on the held-out rows

    # A store from before stores recorded each row's original cannot be split: one clear line, nothing written.
    store = open_teacher_run(runs / "MRPC")
    old_run, old_store = tmp_path / "old-run", tmp_path / "old-store"
    shutil.copytree(runs / "MRPC", old_run)
    shutil.copytree(store.path, old_store, ignore=shutil.ignore_patterns("data"))
    meta = json.loads((old_store / "meta.json").read_text())
    (old_store / "meta.json").write_text(json.dumps({**meta, "format": 1}))
    datasets.DatasetDict({"train": store.data["train"].remove_columns("origin"), "dev": store.data["dev"]}
                         ).save_to_disk(str(old_store / "data"))
    record = json.loads((old_run / "probes.json").read_text())
    (old_run / "probes.json").write_text(json.dumps({**record, "knowledge_store": str(old_store)}))
    assert not open_teacher_run(old_run).records_origins
    capsys.readouterr()
    args = ["search", "--teacher", str(old_run), "--output-dir", str(tmp_path / "refused"), "--no-progress"]
    assert main([*args, "--arch-holdout", "0.25"]) == 2
    assert "search setting arch_holdout needs a knowledge store that records" in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()


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


def test_search_on_two_processes_with_ddp(runs, tmp_path):
    """`--devices 2`: Lightning's DDP (gloo on CPU here, NCCL on GPUs); both processes train the
    same sampled paths, only the first one writes and prints."""

    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "nni_adabert.cli", "search", "--teacher", str(runs / "SST-2"),
                           "--output-dir", str(out), "--epochs", "1", "--batch-size", "16", "--devices", "2",
                           "--no-progress"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("student (SST-2): K = ") == 1
    doc = json.loads((out / "architecture.json").read_text())
    assert doc["search"]["devices"] == 2 and len(doc["search"]["history"]) == 1
    assert (out / "search" / "checkpoints" / "last.ckpt").is_file()


def test_demo_steps_parse_with_every_demo_option(tmp_path):
    """Each step of `nni-adabert demo --no-progress --cache-dir C` is a valid command line (the
    cache directory goes to the teacher step, which builds the store the later steps read)."""
    from nni_adabert.cli import build_parser, demo_steps

    steps = demo_steps(tmp_path / "demo", no_progress=True, cache_dir=str(tmp_path / "cache"))
    parsed = [build_parser().parse_args(argv) for argv in steps]
    assert [p.command for p in parsed] == ["teacher", "search", "retrain", "evaluate"]
    assert parsed[0].cache_dir == str(tmp_path / "cache") and all(p.no_progress for p in parsed[:3])
    assert parsed[1].teacher == parsed[2].teacher == parsed[3].teacher == str(tmp_path / "demo")
    assert parsed[1].max_params == 6_400_000   # the search has a budget: no parameter-free cell
    assert parsed[2].arch == parsed[1].output_dir and parsed[3].arch == parsed[2].output_dir
    assert parsed[2].dropout == 0.2  # the sample's 8,000 sentences: more dropout than the default (0.1)


def test_a_student_no_better_than_the_majority_class_is_flagged(runs, caplog):
    """A derived child with inherited supernet weights can predict one class only (seen on
    MRPC): the search and the retraining say so, with what to do."""


    from nni_adabert.workflows.evaluate import majority_class_metrics, warn_if_no_better_than_majority

    store = open_teacher_run(runs / "MRPC")
    labels = store.rows("dev")["label"]
    positive = sum(labels) / len(labels)
    majority = majority_class_metrics(store)
    assert majority["accuracy"] == pytest.approx(max(positive, 1 - positive))
    assert majority["f1"] == pytest.approx(2 * positive / (1 + positive) if positive >= 0.5 else 0.0)
    with caplog.at_level(logging.WARNING, logger="nni_adabert.workflows"):
        assert warn_if_no_better_than_majority(majority, store, "fine-tune it")
        assert not warn_if_no_better_than_majority({**majority, "f1": majority["f1"] + 0.01}, store, "fine-tune it")
    [record] = caplog.records
    assert "no better than always predicting the majority class" in record.message
    assert record.message.endswith("fine-tune it") and f"({100 * majority['f1']:.2f})" in record.message


def test_a_run_without_progress_bars_prints_our_lines_only(runs, tmp_path):
    """`--no-progress`: no bar of any library, none of their routine warnings (NNI's Buffer
    warning, transformers' load report, Lightning's notices), and one line per epoch."""
    done = subprocess.run([sys.executable, "-m", "nni_adabert.cli", "teacher", "--task", "SST-2", "--data",
                           str(runs / "glue"), "--epochs", "2", "--batch-size", "16", "--train-limit", "48",
                           "--aug-copies", "0", "--output-dir", str(tmp_path / "run"), "--cache-dir",
                           str(tmp_path / "cache"), "--no-progress"],
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    printed = done.stdout + done.stderr
    for noise in ("Warning", "LOAD REPORT", "[transformers]", "LeafSpec", "Loading weights", "tokenizing", "it/s",
                  "examples/s"):
        assert noise not in printed, printed
    epochs = [line for line in done.stderr.splitlines() if ": epoch " in line]
    assert [line.split("epoch ")[1][:3] for line in epochs] == ["1/2", "2/2"] and "dev_accuracy" in epochs[0]
    assert "SST-2: 48 train / 32 dev rows" in done.stdout


def test_version_and_every_default_in_help(capsys):

    from nni_adabert import __version__
    from nni_adabert.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["--version"])
    assert capsys.readouterr().out.strip() == f"nni-adabert {__version__}"
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for name, sub in commands.items():
        for action in sub._actions:
            if action.default not in (None, False, True, "==SUPPRESS==") and action.help:
                assert "default" in action.help, f"{name} {action.option_strings}: {action.help}"
    assert "(default 1000)" in commands["teacher"].format_help().replace("\n", " ").replace("  ", " ")
