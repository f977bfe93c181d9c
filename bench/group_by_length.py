"""Batches grouped by length against a plain shuffle: padding, time and dev metric on one store.

    .venv/bin/python bench/group_by_length.py --teacher-run runs/gl/teacher \\
        --arch bench/results/search/SST-2-default-budget6.4M/architecture.json --name SST-2-20k

For each batch order (a plain shuffle: ``--no-group-by-length``; grouped by length: ``--group-by-length``) the
tokens one epoch of the store's train rows pads to at the default batch size, then ``nni-adabert
retrain --arch ARCH`` and ``nni-adabert search --max-params N`` (the default pipeline's budget),
defaults otherwise, each timed. Run it alone on the
machine: its times are the point. Runs in ``--runs-dir`` (default runs/bench/group-by-length/<name>);
writes bench/results/group-by-length/<name>/result.{json,md} after every run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import datasets  # noqa: E402
import torch  # noqa: E402

from common import ROOT, command_line, cpu_model, machine, results_dir, timed, write_results  # noqa: E402
from nni_adabert.config import RetrainConfig, SearchConfig  # noqa: E402
from nni_adabert.data.encoding import row_lengths, student_id_keys  # noqa: E402
from nni_adabert.teacher.knowledge import row_loader  # noqa: E402
from nni_adabert.teacher.run import open_teacher_run  # noqa: E402

ORDERS = {"plain shuffle": False, "grouped by length": True}  # batch order -> group_by_length


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher-run", required=True, help="a finished `nni-adabert teacher` run (its store)")
    p.add_argument("--arch", required=True, help="the architecture the retrainings train (an architecture.json)")
    p.add_argument("--steps", nargs="+", default=["retrain", "search"], choices=["retrain", "search"])
    p.add_argument("--max-params", type=int, default=6_400_000, help="the search's budget, as the default pipeline's "
                   "(0: none, the search's β alone)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", required=True, help="run name: bench/results/group-by-length/<name>/")
    p.add_argument("--runs-dir", default=None, help="where the runs go (default: runs/bench/group-by-length/<name>)")
    return p.parse_args(argv)


def padded_tokens(rows: datasets.Dataset, batch_size: int, group_by_length: bool, seed: int = 0) -> int:
    """Tokens (real and padding) of one epoch's batches of store ``rows`` in that order."""
    lengths = row_lengths(rows, student_id_keys(rows.column_names))
    order = list(row_loader(rows, batch_size, shuffle=True, seed=seed, group_by_length=group_by_length).sampler)
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    return sum(len(batch) * max(lengths[i] for i in batch) for batch in batches)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    runs = Path(args.runs_dir) if args.runs_dir else ROOT / "runs" / "bench" / "group-by-length" / args.name
    store = open_teacher_run(args.teacher_run)
    rows = store.rows("train")  # a retraining's; a search reads its limits' rows
    search = SearchConfig()
    search_rows = store.rows("train", search.train_limit, search.augmented_limit)
    keys = student_id_keys(rows.column_names)
    real, search_real = sum(row_lengths(rows, keys)), sum(row_lengths(search_rows, keys))
    out = results_dir("group-by-length", args.name)
    result = {"command": command_line(["bench/group_by_length.py", *argv]), "cpu": cpu_model(), "machine": machine(),
              "torch": torch.__version__, "task": store.spec.name, "train_rows": len(rows), "real_tokens": real,
              "search_rows": len(search_rows), "search_real_tokens": search_real,
              "metric": store.spec.main_metric, "teacher_dev": store.teacher_info.get("dev_metrics"),
              "padded_tokens": {}, "runs": []}
    for order, grouped in ORDERS.items():
        result["padded_tokens"][order] = {
            "retrain": padded_tokens(rows, RetrainConfig().batch_size, grouped, args.seed),
            "search": padded_tokens(search_rows, search.batch_size, grouped, args.seed)}
    for step in args.steps:
        for order, grouped in ORDERS.items():
            run_dir = runs / f"{step}-{'grouped' if grouped else 'plain'}"
            flag = "--group-by-length" if grouped else "--no-group-by-length"
            budget = ["--max-params", str(args.max_params)] if args.max_params else []
            command = ["retrain", "--arch", args.arch] if step == "retrain" else ["search", *budget]
            timing = timed([*command, "--teacher", str(args.teacher_run), "--output-dir", str(run_dir), flag,
                            "--seed", str(args.seed), "--no-progress"])
            doc = json.loads((run_dir / "architecture.json").read_text())
            result["runs"].append({"step": step, "order": order, **timing, "dev": doc["dev_metrics"],
                                   "params": doc["params"], "depth": doc["depth"]})
            write_results(out, result, markdown(result))
    print(markdown(result))
    return 0


def markdown(result: dict) -> str:
    metric = result["metric"]
    teacher = (result["teacher_dev"] or {}).get(metric)
    lines = [f"# {result['task']}: batches grouped by length against a plain shuffle", "",
             f"Command: `{result['command']}`", "", f"Machine: {result['cpu']} ({result['machine']}).", "",
             f"The store's {result['train_rows']:,} train rows hold {result['real_tokens']:,} real tokens (a "
             f"retraining reads them all), the search's {result['search_rows']:,} {result['search_real_tokens']:,}"
             + (f"; teacher dev {metric}: {100 * teacher:.2f}." if teacher is not None else "."), "",
             "Tokens of one epoch's batches (real and padding; against the real tokens):", "",
             "| order | retrain | search |", "|---|---|---|"]
    for order, tokens in result["padded_tokens"].items():
        lines.append(f"| {order} | {tokens['retrain']:,} ({tokens['retrain'] / result['real_tokens']:.2f}x) | "
                     f"{tokens['search']:,} ({tokens['search'] / result['search_real_tokens']:.2f}x) |")
    lines += ["", f"| step | order | minutes | dev {metric} | params | K |", "|---|---|---|---|---|---|"]
    for run in result["runs"]:
        lines.append(f"| {run['step']} | {run['order']} | {run['minutes']} | {100 * run['dev'][metric]:.2f} | "
                     f"{run['params']:,} | {run['depth']} |")
    by = {(run["step"], run["order"]): run["seconds"] for run in result["runs"]}
    speedups = [f"{step}: {by[(step, 'plain shuffle')] / by[(step, 'grouped by length')]:.2f}x"
                for step in dict.fromkeys(run["step"] for run in result["runs"])
                if (step, "plain shuffle") in by and (step, "grouped by length") in by]
    if speedups:
        lines += ["", "Grouped by length against a plain shuffle, times faster: " + ", ".join(speedups) + "."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
