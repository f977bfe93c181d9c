"""Retraining recipes on fixed searched children: which of them closes the gap to the teacher (issue 17's levers).

    .venv/bin/python bench/retrain_recipes.py --teacher-run runs/bench/pipeline/SST-2-default/teacher \\
        --arch runs/bench/pipeline/SST-2-default/search-seed0 runs/bench/pipeline/SST-2-default/search-seed1 \\
        --seeds 0 1 --name SST-2

The children stay fixed (``--arch``: one search run or architecture.json per seed of ``--seeds``), so a row
differs from the first only by how they are retrained: ``nni-adabert retrain`` with the defaults plus the row's
flags (``--recipes NAME=FLAGS ...``, the first row: the defaults). ``--aug-copies N`` among a row's flags is the
teacher's: the row retrains on a store of N augmented copies per row of the same teacher (built once with
``teacher --no-finetune``, in the teacher run's precision). Each run's dev metric per epoch comes from its
TensorBoard log, so a row of more epochs also shows where the default's epochs would have stopped. Run it alone on
the machine: minutes per epoch are a column. Runs resume and skip finished steps (a step found finished keeps the
minutes this page recorded for it, or its run's own record of them). A run whose directory is gone (another
machine, a cleaned runs directory) but which this page recorded, with a teacher of the same dev metric and copies,
keeps its recorded row and is not retrained, so a table can grow over several sessions: rows or seeds added later
run, the recorded ones stay (marked on the page). Runs in ``--runs-dir`` (default
runs/bench/retrain-recipes/<name>); writes bench/results/retrain-recipes/<name>/result.{json,md} after every run,
so a table cut short keeps its rows.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from common import (GLUE_DIR, MINUTES_NOTE, ROOT, command_line, cpu_model, keep_earlier_timings,  # noqa: E402
                    logged_epochs, machine, recorded_run, recorded_runs, results_dir, store_copies, store_precision,
                    store_step, timed, write_results)
from nni_adabert.config import RetrainConfig  # noqa: E402
from nni_adabert.nas.distill import val_metric_key  # noqa: E402
from nni_adabert.teacher.run import open_teacher_run  # noqa: E402

# Grouped batches take half a plain epoch's time (bench/results/group-by-length): 6 grouped epochs cost 3 plain ones.
# A store of 8 copies doubles an epoch: grouped, it costs what the default's plain epochs do.
RECIPES = ["default=", "grouped batches=--group-by-length", "grouped batches, 6 epochs=--group-by-length --epochs 6",
           "8 copies, grouped batches=--aug-copies 8 --group-by-length", "5 epochs=--epochs 5"]
STORE_FLAG = "--aug-copies"


def recipe(text: str) -> tuple[str, list[str], int | None]:
    """``"NAME=FLAGS"`` -> ``(NAME, [retrain flags], augmented copies of its store or None: the teacher run's)``."""
    name, sep, flags = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=FLAGS (e.g. 'grouped=--group-by-length'), got {text!r}")
    flags = shlex.split(flags)
    if STORE_FLAG not in flags:
        return name.strip(), flags, None
    at = flags.index(STORE_FLAG)
    copies = flags[at + 1] if at + 1 < len(flags) else ""
    if not copies.isdigit():
        raise argparse.ArgumentTypeError(f"{name.strip()}: {STORE_FLAG} takes a number of copies, got {copies!r}")
    return name.strip(), flags[:at] + flags[at + 2:], int(copies)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher-run", required=True, help="a finished `nni-adabert teacher` run (its store)")
    p.add_argument("--arch", nargs="+", required=True, help="the children: one search run (or architecture.json) "
                   "per seed of --seeds")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--recipes", type=recipe, nargs="+", default=[recipe(r) for r in RECIPES],
                   help="rows as NAME=FLAGS (retrain flags added to the defaults, and --aug-copies N: a store of N "
                   "copies); the first is the baseline")
    p.add_argument("--data", default=GLUE_DIR, help="the task's data folder (default: "
                   "../shared/data/glue or $GLUE_DIR)")
    p.add_argument("--name", default="SST-2", help="run name: bench/results/retrain-recipes/<name>/")
    p.add_argument("--runs-dir", default=None, help="where the runs go (default: runs/bench/retrain-recipes/<name>)")
    args = p.parse_args(argv)
    if len(args.arch) != len(args.seeds):
        p.error(f"--arch: expected one child per seed of --seeds ({len(args.seeds)}), got {len(args.arch)}")
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    runs = Path(args.runs_dir) if args.runs_dir else ROOT / "runs" / "bench" / "retrain-recipes" / args.name
    teacher_run = Path(args.teacher_run)
    base = open_teacher_run(teacher_run)
    base_copies = store_copies(base)
    precision = store_precision(base)
    out = results_dir("retrain-recipes", args.name)
    keep_earlier_timings(out)
    metric = base.spec.main_metric
    teacher_dev = base.teacher_info["dev_metrics"][metric]
    recorded = recorded_runs(out, teacher_dev=teacher_dev, base_copies=base_copies)
    # Per row: its name, retrain flags, store run, copies and runs (seed, output dir, retrain argv). Every store
    # a run still needs first: a failing build stops the table early.
    rows, built = [], {}
    for name, flags, copies in args.recipes:
        store = teacher_run if copies is None or copies == base_copies else runs / f"teacher-aug{copies}"
        row_runs = []
        for seed, arch in zip(args.seeds, args.arch):
            retrained = runs / _slug(name) / f"retrain-seed{seed}"
            retrain_argv = ["retrain", "--teacher", str(store), "--arch", str(arch), "--output-dir", str(retrained),
                            *flags, "--seed", str(seed), "--no-progress"]
            row_runs.append((seed, arch, retrained, retrain_argv, recorded_run(retrained, retrain_argv, recorded)))
        to_run = [r for r in row_runs if r[-1] is None]
        if store != teacher_run and to_run and store.name not in built:
            built[store.name] = store_step(base.spec.name, args.data, teacher_run / "teacher", copies, precision,
                                           store, runs / "cache")
        rows.append((name, flags, base_copies if copies is None else copies, row_runs))
    logged_metric = val_metric_key(metric)  # its name in a retraining's log
    record = {"command": command_line(["bench/retrain_recipes.py", *argv]), "cpu": cpu_model(), "machine": machine(),
              "torch": torch.__version__, "task": base.spec.name, "metric": metric,
              "teacher_dev": teacher_dev, "base_copies": base_copies,
              "retrain_epochs": RetrainConfig().epochs, "stores_built": built}
    results = []
    for name, flags, copies, row_runs in rows:
        for seed, arch, retrained, retrain_argv, earlier in row_runs:
            if earlier is not None:
                results.append(earlier)
            else:
                step = timed(retrain_argv)
                doc = json.loads((retrained / "architecture.json").read_text())
                history = logged_epochs(retrained / "retrain" / "logs", logged_metric)
                results.append({"row": name, "flags": flags, "copies": copies, "seed": seed, "arch": str(arch),
                                "retrain": step, "epochs": doc["retrain"]["epochs"], "dev": doc["dev_metrics"][metric],
                                "dev_per_epoch": [h[logged_metric] for h in history],
                                "params": doc["params"], "depth": doc["depth"]})
                print(f"{name}, seed {seed}: {doc['dev_metrics']}", flush=True)
            result = {**record, "runs": results, "means": row_means(results)}
            write_results(out, result, markdown(result))  # after every run: a table cut short keeps its rows
    print(markdown(result))
    return 0


def _slug(row_name: str) -> str:
    """A row's folder name: "grouped batches, 6 epochs" -> "grouped-batches-6-epochs"."""
    return "-".join(row_name.replace(",", " ").split())


def row_means(runs: list[dict]) -> dict:
    """``{row: mean dev metric in points}`` over each row's seeds."""
    names = dict.fromkeys(r["row"] for r in runs)
    return {name: statistics.mean(100 * r["dev"] for r in runs if r["row"] == name) for name in names}


def against_first_row(runs: list[dict]) -> dict[str, tuple[float | None, list[int]]]:
    """``{row: (its mean minus the first row's, in points, or None; the seeds compared)}``, both means over
    the seeds the two rows share: a row stopped after one seed is compared with that seed of the first row,
    not with its mean over every seed."""
    dev = {(r["row"], r["seed"]): 100 * r["dev"] for r in runs}
    names = list(dict.fromkeys(r["row"] for r in runs))
    out = {}
    for name in names:
        seeds = [s for (row, s) in dev if row == name and (names[0], s) in dev]
        out[name] = (statistics.mean(dev[name, s] - dev[names[0], s] for s in seeds) if seeds else None, seeds)
    return out


def markdown(result: dict) -> str:
    teacher = 100 * result["teacher_dev"]
    lines = [f"# {result['task']}: retraining recipes on fixed searched children", "",
             f"Command: `{result['command']}`", "", f"Machine: {result['cpu']} ({result['machine']}).", "",
             f"Every row retrains the same children (one per seed) with `nni-adabert retrain`'s defaults "
             f"({result['retrain_epochs']} epochs, {result['base_copies']} augmented copies) and the row's change; "
             f"dev {result['metric']} per epoch, the last one kept (**bold**); teacher {teacher:.2f}.", "",
             f"| row | retrain flags | copies | seed | params | K | dev {result['metric']} per epoch | kept | "
             "minutes per epoch |", "|---|---|---|---|---|---|---|---|---|"]
    for r in result["runs"]:
        curve = ", ".join(f"{100 * v:.2f}" for v in r["dev_per_epoch"])
        flags = f"`{shlex.join(r['flags'])}`" if r["flags"] else ""
        mark = " (recorded)" if r.get("recorded") else ""
        lines.append(f"| {r['row']} | {flags} | {r['copies']} | {r['seed']}{mark} | {r['params']:,} | {r['depth']} | "
                     f"{curve} | **{100 * r['dev']:.2f}** | {r['retrain']['minutes'] / r['epochs']:.1f} |")
    if any(r.get("recorded") for r in result["runs"]):
        lines += ["", "(recorded): kept as an earlier run of this page recorded it (its run directory was gone), with "
                      "a teacher of the same dev metric; not retrained by this run of the command."]
    lines += ["", "| row | seeds | mean over its seeds | behind the teacher | against the first row, on the seeds "
                  "both have |", "|---|---|---|---|---|"]
    seeds = {name: [r["seed"] for r in result["runs"] if r["row"] == name] for name in result["means"]}
    first_seeds = next(iter(seeds.values()))
    for name, (difference, shared) in against_first_row(result["runs"]).items():
        mean = result["means"][name]
        compared = "no seed in common" if difference is None else f"{difference:+.2f}"
        if shared and not set(shared) == set(seeds[name]) == set(first_seeds):  # not the two means: say on what
            compared += f" (seed{'s' if len(shared) > 1 else ''} {', '.join(map(str, shared))})"
        lines.append(f"| {name} | {', '.join(map(str, seeds[name]))} | {mean:.2f} | {teacher - mean:.2f} | "
                     f"{compared} |")
    lines += ["", f"Commands and minutes ({MINUTES_NOTE}):", ""]
    lines += [f"    {step['command']}    # {step['minutes']} min" for step in result["stores_built"].values()]
    lines += [f"    {r['retrain']['command']}    # {r['retrain']['minutes']} min" for r in result["runs"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
