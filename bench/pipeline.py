"""The default pipeline on a full GLUE task: teacher -> search -> retrain -> speed, as a new user runs it.

    .venv/bin/python bench/pipeline.py --task SST-2 --max-params 6400000 --seeds 0 1 --name SST-2-default

Each step is the ``nni-adabert`` command with its defaults and nothing else but the budget
(``--max-params`` or ``--min-speedup``), the seed and, to compare with the default, a pair task's
``--space``: ``teacher``, then per seed ``search``
and ``retrain`` (the seed of both), then the speed of every retrained student against the
teacher and the BERT-base architecture at batch 128, 1 thread, in one process and one
round-robin (``workflows.speed.measure_speeds``, as ``bench/compression.py``). The commands resume
and skip finished steps, so the script can be started again after a stop (a step the page timed
keeps its minutes).

Runs in ``--runs-dir`` (default runs/bench/pipeline/<name>); writes
bench/results/pipeline/<name>/result.{json,md} and each seed's architecture.json and cell picture.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from common import (GLUE_DIR, ROOT, command_line, cpu_model, keep_earlier_timings, machine, results_dir, timed,  # noqa: E402
                    MINUTES_NOTE, write_results)
from nni_adabert.data.custom import TASK_FILE_SUFFIXES  # noqa: E402
from nni_adabert.teacher.finetune import load_finetuned_teacher  # noqa: E402
from nni_adabert.teacher.run import open_teacher_run  # noqa: E402
from nni_adabert.workflows.evaluate import evaluate_student, teacher_dev_metrics  # noqa: E402
from nni_adabert.workflows.export import check_fits, load_exported, load_student  # noqa: E402
from nni_adabert.workflows.speed import bert_base, dev_examples, measure_speeds  # noqa: E402

REFERENCE = "BERT-base arch"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="SST-2", help="a GLUE task, or a task file of your own data (bench/trec.py)")
    p.add_argument("--data", default=GLUE_DIR, help="GLUE folder (default: ../shared/data/glue or $GLUE_DIR); "
                   "not passed with a task file, which names its own data")
    p.add_argument("--max-params", type=int, default=None, help="the search's parameter budget")
    p.add_argument("--min-speedup", type=float, default=None, help="the search's speed budget")
    p.add_argument("--space", default=None, help="the search's pair space (default: the search's default)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--name", required=True, help="run name: bench/results/pipeline/<name>/")
    p.add_argument("--runs-dir", default=None, help="where the runs go (default: runs/bench/pipeline/<name>)")
    p.add_argument("--cache-dir", default=None, help="knowledge stores (default: <runs-dir>/cache)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the speed measurement")
    return p.parse_args(argv)


def teacher_step(task: str, data: str, teacher: Path, cache: str) -> dict:
    """``nni-adabert teacher`` with its defaults, timed (``data`` is not passed with a task file)."""
    data_flags = [] if Path(task).suffix in TASK_FILE_SUFFIXES else ["--data", data]
    return timed(["teacher", "--task", task, *data_flags, "--output-dir", str(teacher), "--cache-dir", cache,
                  "--no-progress"])


def search_step(teacher: Path, runs: Path, name: str, seed: int, search_flags: list[str], out: Path) -> dict:
    """``search`` of one student into ``runs/search-<name>``, timed; copies its cell picture into ``out``."""
    searched = runs / f"search-{name}"
    search = timed(["search", "--teacher", str(teacher), "--output-dir", str(searched), *search_flags,
                    "--seed", str(seed), "--no-progress"])
    doc = json.loads((searched / "architecture.json").read_text())
    shutil.copy(searched / "cell.png", out / f"cell-{name}.png")
    return {"seed": seed, "search": search, "architecture": doc["architecture"], "embed_dim": doc["embed_dim"],
            "searched": doc["dev_metrics"]}


def retrain_step(teacher: Path, runs: Path, name: str, seed: int, out: Path) -> dict:
    """``retrain`` of the cell searched in ``runs/search-<name>`` into ``runs/retrain-<name>``, timed; copies
    the retrained architecture into ``out``."""
    retrained = runs / f"retrain-{name}"
    retrain = timed(["retrain", "--teacher", str(teacher), "--arch", str(runs / f"search-{name}"), "--output-dir",
                     str(retrained), "--seed", str(seed), "--no-progress"])
    shutil.copy(retrained / "architecture.json", out / f"architecture-{name}.json")
    return {"retrain": retrain, "dir": str(retrained)}


def student_steps(teacher: Path, runs: Path, name: str, seed: int, search_flags: list[str], out: Path) -> dict:
    """:func:`search_step` then :func:`retrain_step` of one student."""
    return {**search_step(teacher, runs, name, seed, search_flags, out), **retrain_step(teacher, runs, name, seed, out)}


# What measure() adds to a student's entry.
MEASURED = ("dev", "params", "params_without_embedding", "depth", "speedup_over_bert_base", "speedup_over_teacher")


def measure(store, students: list[dict], threads: int) -> dict:
    """Dev metrics, size and speed of every retrained student on ``store`` (the teacher run's),
    added to its entry; the teacher's dev metrics. Speed: batch 128, ``threads``, every student in
    one round-robin with the teacher and the BERT-base architecture (each timed once, however many
    students: BERT-base's passes are the slow part)."""
    torch.set_num_threads(threads)
    models = {"teacher": load_finetuned_teacher(store.meta["teacher_dir"], store.spec).cpu(),
              REFERENCE: bert_base(store.spec.num_labels)}
    for i, entry in enumerate(students):
        exported = load_exported(entry["dir"], store)
        check_fits(exported, store)
        models[f"student {i}"] = student = load_student(exported)
        evaluated = evaluate_student(student, store)
        entry.update(dev=evaluated["dev_metrics"], params=evaluated["params"],
                     params_without_embedding=evaluated["params_without_embedding"], depth=evaluated["depth"])
    timing = measure_speeds(models, dev_examples(store), threads=threads)
    for i, entry in enumerate(students):
        faster = timing["speedup_over"][f"student {i}"]
        entry.update(speedup_over_bert_base=faster[REFERENCE], speedup_over_teacher=faster["teacher"])
    return teacher_dev_metrics(store)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    runs = Path(args.runs_dir) if args.runs_dir else ROOT / "runs" / "bench" / "pipeline" / args.name
    search_flags = (["--max-params", str(args.max_params)] if args.max_params else []) + \
             (["--min-speedup", str(args.min_speedup)] if args.min_speedup else []) + \
             (["--space", args.space] if args.space else [])
    teacher = runs / "teacher"
    out = results_dir("pipeline", f"pipeline-{args.name}")
    keep_earlier_timings(out)
    teacher_step_record = teacher_step(args.task, args.data, teacher, args.cache_dir or str(runs / "cache"))
    seeds = [student_steps(teacher, runs, f"seed{seed}", seed, search_flags, out) for seed in args.seeds]
    store = open_teacher_run(teacher)
    teacher_metrics = measure(store, seeds, args.threads)
    metric = store.spec.main_metric
    mean = statistics.mean(100 * e["dev"][metric] for e in seeds)
    result = {"command": command_line(["bench/pipeline.py", *argv]), "cpu": cpu_model(), "machine": machine(),
              "torch": torch.__version__, "task": store.meta["task"], "metric": metric, "search_flags": search_flags,
              "teacher": {"dev": teacher_metrics, **teacher_step_record}, "seeds": seeds,
              "mean": mean, "gap": 100 * teacher_metrics[metric] - mean}
    text = markdown(result)
    write_results(out, result, text)
    print(text)
    return 0


def steps_markdown(result: dict, title: str, students: list[dict]) -> list[str]:
    """The head of a result page: title, command, machine, every step as typed with its minutes,
    the teacher's dev metric."""
    metric, teacher = result["metric"], result["teacher"]
    lines = [f"# {result['task']}: {title}", "", f"Command: `{result['command']}`", "",
             f"Machine: {result['cpu']} ({result['machine']}).", "", f"Steps (each as a user types it; minutes: "
             f"{MINUTES_NOTE}):", "",
             f"    {teacher['command']}    # {teacher['minutes']} min"]
    for e in students:
        lines += [f"    {e['search']['command']}    # {e['search']['minutes']} min",
                  f"    {e['retrain']['command']}    # {e['retrain']['minutes']} min"]
    return lines + ["", f"Teacher dev {metric}: {100 * teacher['dev'][metric]:.2f}", ""]


def markdown(result: dict) -> str:
    metric, teacher = result["metric"], result["teacher"]
    lines = steps_markdown(result, "the default pipeline", result["seeds"])
    lines += ["| seed | K | params | params without embedding | searched (before retraining) | retrained | "
              "behind the teacher | speedup over BERT-base arch | speedup over teacher |",
              "|---|---|---|---|---|---|---|---|---|"]
    for e in result["seeds"]:
        lines.append(f"| {e['seed']} | {e['depth']} | {e['params']:,} | {e['params_without_embedding']:,} "
                     f"| {100 * e['searched'][metric]:.2f} | {100 * e['dev'][metric]:.2f} "
                     f"| {100 * (teacher['dev'][metric] - e['dev'][metric]):.2f} "
                     f"| {e['speedup_over_bert_base']:.1f}x | {e['speedup_over_teacher']:.1f}x |")
    lines += ["", f"Mean of {len(result['seeds'])} seed(s): {result['mean']:.2f}, {result['gap']:.2f} behind the "
                  "teacher. Speed: the store's dev rows at batch 128, 1 thread, median of 3 passes, in one process "
                  "with the teacher and the BERT-base architecture (random weights: they do not change its speed).",
              ""]
    lines += [f"Cell, seed {e['seed']}: ![cell](cell-seed{e['seed']}.png)" for e in result["seeds"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
