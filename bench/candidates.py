"""Does a candidate's short training rank children as their retrainings do? (the selection an undecided search uses)

    .venv/bin/python bench/candidates.py --teacher-run runs/bench/pipeline/MRPC-default/teacher --name MRPC

For seeded random children of the task's default space (``random:<seed>``, ``--random-seeds``), two
numbers each: the held-out score an undecided ``search`` picks its export by
(``workflows.candidates.pick_candidate``: ``--candidate-epochs`` of a retraining's recipe on the
train examples less a held-out fifth, metrics on that fifth), and the dev metrics of
``nni-adabert retrain --arch random:<seed>`` with the defaults (what the user gets). Reports both,
their Spearman rank correlation (on the task score, the mean of the task's metrics), and the dev
metrics of the child the held-out score picks against the mean of all.

Runs in ``--runs-dir`` (default runs/bench/candidates/<name>), resuming finished steps; writes
bench/results/candidates/<name>/result.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from common import ROOT, command_line, cpu_model, machine, results_dir, timed, write_results  # noqa: E402
from nni_adabert import runs as run_records  # noqa: E402
from nni_adabert.config import SearchConfig  # noqa: E402
from nni_adabert.teacher.run import open_teacher_run  # noqa: E402
from nni_adabert.workflows.candidates import pick_candidate, task_score  # noqa: E402
from nni_adabert.workflows.retrain import arch_to_retrain  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher-run", required=True, help="a finished `nni-adabert teacher` run")
    p.add_argument("--random-seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="the children: random:<seed>")
    p.add_argument("--seed", type=int, default=0, help="seed of the candidate trainings and the retrainings")
    p.add_argument("--candidate-epochs", type=int, default=SearchConfig.candidate_epochs)
    p.add_argument("--name", required=True, help="run name: bench/results/candidates/<name>/")
    p.add_argument("--runs-dir", default=None, help="where the runs go (default: runs/bench/candidates/<name>)")
    return p.parse_args(argv)


def ranks(values: list[float]) -> list[float]:
    """Ranks from 1, ties sharing their mean rank."""
    order = sorted(range(len(values)), key=values.__getitem__)
    result = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            result[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return result


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rank correlation: Pearson's on the ranks."""
    return statistics.correlation(ranks(x), ranks(y))


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    runs = Path(args.runs_dir) if args.runs_dir else ROOT / "runs" / "bench" / "candidates" / args.name
    store = open_teacher_run(args.teacher_run)
    names = [f"random:{seed}" for seed in args.random_seeds]
    archs = [arch_to_retrain(name, store).arch for name in names]
    config = SearchConfig(seed=args.seed, candidate_epochs=args.candidate_epochs)
    identity = run_records.identity({"bench": "candidates", "seed": args.seed,
                                     "candidate_epochs": args.candidate_epochs}, store)
    _, scored = pick_candidate(store, archs, config, runs / "candidates", identity, progress=False)
    children = []
    for name, candidate in zip(names, scored):
        out = runs / f"retrain-{name.replace(':', '')}"
        step = timed(["retrain", "--teacher", str(args.teacher_run), "--arch", name, "--output-dir", str(out),
                      "--seed", str(args.seed), "--no-progress"])
        doc = json.loads((out / "architecture.json").read_text())
        children.append({"arch_name": name, "depth": candidate.arch["depth"], "params": candidate.params,
                         "held_out": candidate.held_out_metrics, "dev": doc["dev_metrics"], "retrain": step})
    held = [task_score(c["held_out"]) for c in children]
    dev = [task_score(c["dev"]) for c in children]
    picked = children[held.index(max(held))]
    result = {"command": command_line(["bench/candidates.py", *argv]), "cpu": cpu_model(), "machine": machine(),
              "torch": torch.__version__, "task": store.meta["task"], "metrics": list(store.spec.metrics),
              "candidate_epochs": args.candidate_epochs, "children": children,
              "spearman_task_score": spearman(held, dev), "picked": picked["arch_name"],
              "picked_dev": picked["dev"],
              "mean_dev": {m: statistics.mean(c["dev"][m] for c in children) for m in store.spec.metrics}}
    text = markdown(result)
    write_results(results_dir("candidates", args.name), result, text)
    print(text)
    return 0


def markdown(result: dict) -> str:
    metrics = result["metrics"]
    shown = lambda values: " / ".join(f"{100 * values[m]:.2f}" for m in metrics)  # noqa: E731
    lines = [f"# {result['task']}: does a candidate's short training rank children as their retrainings do?", "",
             f"Command: `{result['command']}`", "", f"Machine: {result['cpu']} ({result['machine']}).", "",
             f"Held out: {result['candidate_epochs']} epoch(s) on the train examples less a held-out fifth, metrics "
             "on that fifth (what an undecided `search` picks by); dev: `nni-adabert retrain --arch random:<seed>` "
             f"with the defaults. Metrics: {' / '.join(metrics)}.", "",
             "| child | depth | params | held-out | retrained, dev | retraining (min) |", "|---|---|---|---|---|---|"]
    lines += [f"| {c['arch_name']} | {c['depth']} | {c['params']:,} | {shown(c['held_out'])} | {shown(c['dev'])} | "
              f"{c['retrain']['minutes']} |" for c in result["children"]]
    lines += ["", f"Spearman rank correlation of the two task scores (mean of the metrics): "
              f"{result['spearman_task_score']:.2f}. The held-out score picks {result['picked']}: "
              f"{shown(result['picked_dev'])} on dev, against the children's mean {shown(result['mean_dev'])}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
