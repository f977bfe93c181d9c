"""What makes a sentence-pair student learn: one lever at a time on one teacher (issue 18's cause table).

    .venv/bin/python bench/pairs.py --teacher-run runs/bench/pipeline/MRPC-default/teacher \\
        --weak-teacher-run runs/bench/teacher-recipe/MRPC/before --seeds 0 1 --name MRPC

Every row is the default pipeline after the teacher (``nni-adabert search`` then ``retrain``, the
defaults, per seed) with one thing changed against the first row ("default"):

- ``paper space``: the two texts as the first cell's two inputs (``--space paper``), no ``align``
  op, no matching head;
- ``N copies``: a knowledge store of the same fine-tuned teacher with N augmented copies per pair
  (``teacher --model <teacher> --no-finetune --aug-copies N``);
- ``no final-logit KD``: the default row's searched cells retrained without the final-logit KD term
  (``--no-final-kd``; the search has no such term, so it is not run again);
- ``weaker teacher``: the store of another teacher run (e.g. 3 epochs without augmentation; as every
  teacher run, its best epoch);
- ``random cells``: no search; seeded random cells of the default space (``retrain --arch random:<seed>``,
  seeds ``--random-seeds``) retrained with the defaults, the paper's Table 3 baseline for the default row;
- ``table4``: the paper's Table 4 (knowledge losses) as three more rows, Base-KD, + Probe and + DA, each
  adding one thing to the row above; the default row is its last, + L_CE (:data:`TABLE4`);
- ``table4-cells``: the same rows without their searches: the default row's searched cells retrained under each
  row's loss and store, so that a row differs from the next by its knowledge terms alone, not by the child its
  own search exported (retrainings only: minutes a row).

A store is built once per (teacher, copies) and shared; runs resume and skip finished steps (a step
found finished keeps the minutes this page recorded for it when it ran, or its run's own record of them).
A run whose directory is gone (another machine, a cleaned runs directory) but which this page recorded,
with a teacher of the same dev metrics and copies, keeps its recorded row and is not run again: a table too
long for one session grows over several. The stores the other runs need are built before the first search;
a store of kept runs only is not built. Runs in
``--runs-dir`` (default runs/bench/pairs/<name>); writes bench/results/pairs/<name>/result.{json,md} after
every run, so a table cut short keeps its rows.
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

from common import (ARCH_FILE, GLUE_DIR, ROOT, command_line, cpu_model, keep_earlier_timings, machine, MINUTES_NOTE,  # noqa: E402
                    recorded_run, recorded_runs, results_dir, store_copies, store_precision, store_step, timed,
                    write_results)
from nni_adabert.config import SearchConfig  # noqa: E402
from nni_adabert.teacher.finetune import read_teacher_info  # noqa: E402
from nni_adabert.teacher.run import open_teacher_run  # noqa: E402
from nni_adabert.workflows.evaluate import majority_class_metrics  # noqa: E402


LEVERS = ["paper-space", "copies", "no-final-kd", "weak-teacher", "random", "table4", "table4-cells"]
# The paper's Table 4 (knowledge losses, MRPC dev F1), each row adding one thing to the row above; its last
# row, "+ L_CE (All)", is our default row. (row, store copies: None = the default store's, search flags,
# retrain flags, the paper's F1). Without L_CE (γ = 1) the final-logit term stays in the search as well: nothing
# else would train the final classifier.
TABLE4 = [
    ("Base-KD", 0, ["--no-probe-kd", "--final-kd", "--gamma", "1"], ["--no-probe-kd", "--gamma", "1"], 77.2),
    ("+ Probe", 0, ["--final-kd", "--gamma", "1"], ["--gamma", "1"], 78.7),
    ("+ DA", None, ["--final-kd", "--gamma", "1"], ["--gamma", "1"], 83.9),
]
TABLE4_ALL = ("+ L_CE (All): the default row", 84.7)
ON_DEFAULT_CELLS = " on the default cells"  # the table4-cells rows' names: "Base-KD on the default cells", ...


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="MRPC", help="a GLUE pair task")
    p.add_argument("--data", default=GLUE_DIR, help="GLUE folder (default: ../shared/data/glue or $GLUE_DIR)")
    p.add_argument("--teacher-run", required=True, help="a finished `nni-adabert teacher` run (its store: the "
                   "default row's)")
    p.add_argument("--weak-teacher-run", default=None, help="another teacher's run directory (its teacher/ "
                   "folder) for the 'weaker teacher' row")
    p.add_argument("--copies", type=int, nargs="*", default=[0, 2, 10, 20], help="augmented copies of the rows "
                   "that change only the store (0: no augmentation, the paper's Table 4 without DA)")
    p.add_argument("--levers", nargs="+", default=LEVERS, choices=LEVERS)
    p.add_argument("--random-seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4],
                   help="the structures of the random-cells row")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--name", default="MRPC", help="run name: bench/results/pairs/<name>/")
    p.add_argument("--runs-dir", default=None, help="where the runs go (default: runs/bench/pairs/<name>)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    runs = Path(args.runs_dir) if args.runs_dir else ROOT / "runs" / "bench" / "pairs" / args.name
    teacher_run = Path(args.teacher_run)
    base = open_teacher_run(teacher_run)
    base_copies = store_copies(base)
    # Every store of the table in the default row's precision: the rows change one thing only.
    precision = store_precision(base)
    sources = {"default": teacher_run, "weak": Path(args.weak_teacher_run) if args.weak_teacher_run else None}
    built: dict[str, dict] = {}
    out = results_dir("pairs", args.name)
    keep_earlier_timings(out)
    teacher_dev = base.teacher_info.get("dev_metrics")
    recorded = recorded_runs(out, teacher_dev=teacher_dev, base_copies=base_copies)

    def store(key: tuple) -> Path:
        """The run directory of the store ``key``, (teacher: "default" or "weak", copies); the default
        teacher's own run holds its own copies."""
        teacher, copies = key
        return teacher_run if key == ("default", base_copies) else runs / f"teacher-{teacher}-aug{copies}"

    def build(key: tuple) -> None:
        store_dir = store(key)
        if store_dir != teacher_run and store_dir.name not in built:
            built[store_dir.name] = store_step(args.task, args.data, sources[key[0]] / "teacher", key[1],
                                               precision, store_dir, runs / "cache")

    # One dict per row: its store (teacher, copies), the search's flags (None: random cells, no search),
    # the retraining's flags, and the row whose searched cells it retrains (None: its own search).
    def row(name, key, search=(), retrain=(), searched_by=None):
        return {"name": name, "store": key, "search": None if search is None else list(search),
                "retrain": list(retrain), "searched_by": searched_by}

    rows = [row("default", ("default", base_copies))]
    if "random" in args.levers:  # second: the table's headline comparison (searched against random)
        rows.append(row("random cells", ("default", base_copies), search=None))
    if "paper-space" in args.levers:
        rows.append(row("paper space", ("default", base_copies), search=["--space", "paper"]))
    if "copies" in args.levers:
        rows += [row(f"{n} copies", ("default", n)) for n in args.copies if n != base_copies]
    if "no-final-kd" in args.levers:  # the search has no final-logit KD term: the default row's cells
        rows.append(row("no final-logit KD", ("default", base_copies), retrain=["--no-final-kd"],
                        searched_by="default"))
    if "weak-teacher" in args.levers and args.weak_teacher_run:
        rows.append(row("weaker teacher", ("weak", base_copies)))
    # Table 4's rows with their stores: the default teacher's, with the row's copies (None: the default's).
    table4 = [(name, ("default", base_copies if copies is None else copies), search, retrain)
              for name, copies, search, retrain, _ in TABLE4]
    if "table4" in args.levers:
        rows += [row(name, key, search, retrain) for name, key, search, retrain in table4]
    if "table4-cells" in args.levers:
        rows += [row(name + ON_DEFAULT_CELLS, key, retrain=retrain, searched_by="default")
                 for name, key, _, retrain in table4]
    by_name = {r["name"]: r for r in rows}
    # A store's teacher dev metrics are those of the teacher it was built from (--model <run>/teacher).
    dev_of = {"default": teacher_dev, **{teacher: (read_teacher_info(sources[teacher] / "teacher") or {}).get(
        "dev_metrics") for teacher in {r["store"][0] for r in rows} - {"default"}}}

    # (row, seed, architecture to retrain, retrain dir, retrain command, the page's record to keep or None):
    # a searched row per seed; the random row retrains each random structure once, with the first seed.
    plan = []
    for r in rows:
        if r["search"] is None:
            runs_of_row = [(args.seeds[0], f"random:{i}", runs / _slug(r["name"]) / f"retrain-random{i}")
                           for i in args.random_seeds]
        else:
            searched = _slug(r["searched_by"] or r["name"])
            runs_of_row = [(seed, runs / searched / f"search-seed{seed}",
                            runs / _slug(r["name"]) / f"retrain-seed{seed}") for seed in args.seeds]
        for seed, arch, retrained in runs_of_row:
            retrain_argv = ["retrain", "--teacher", str(store(r["store"])), "--arch", str(arch), "--output-dir",
                            str(retrained), *r["retrain"], "--seed", str(seed), "--no-progress"]
            kept = recorded_run(retrained, retrain_argv, recorded, teacher_dev=dev_of[r["store"][0]])
            plan.append((r, seed, arch, retrained, retrain_argv, kept))
    # The stores the runs to do need (a run's own and its searcher's), all before the first search: a failing
    # build stops the table before hours of searches. A store of kept runs only is not built.
    for r, *_, kept in plan:
        if kept is None:
            build(r["store"])
            build(by_name[r["searched_by"]]["store"] if r["searched_by"] else r["store"])

    majority = majority_class_metrics(base)
    settings = {"copies": args.copies, "levers": args.levers, "seeds": args.seeds, "random_seeds": args.random_seeds,
                "search_augmented_limit": SearchConfig().augmented_limit}
    metrics = list(base.spec.metrics)
    record = {"command": command_line(["bench/pairs.py", *argv]), "cpu": cpu_model(), "machine": machine(),
              "torch": torch.__version__, "task": args.task, "metrics": metrics, "majority": majority,
              "teacher_dev": teacher_dev, "base_copies": base_copies, "settings": settings, "stores_built": built}
    results = []

    def write() -> dict:
        result = {**record, "runs": results, "means": row_means(results, metrics)}
        write_results(out, result, markdown(result))
        return result

    for r, seed, arch, retrained, retrain_argv, kept in plan:
        if kept is not None:
            results.append(kept)
            continue
        search = None
        if r["search"] is not None:  # (None: random cells, no search)
            # A row that retrains another row's cells runs that row's search when it is gone (that row's
            # runs kept from the page on another machine): the same command, so the same directory.
            searcher = by_name[r["searched_by"]] if r["searched_by"] else r
            if r["searched_by"] is None or not (Path(arch) / ARCH_FILE).is_file():
                search = timed(["search", "--teacher", str(store(searcher["store"])), "--output-dir", str(arch),
                                *searcher["search"], "--seed", str(seed), "--no-progress"])
        results.append(run_row(r, seed, arch, retrained, store(r["store"]), dev_of[r["store"][0]], search,
                               retrain_argv))
        write()  # after every run: a table cut short (a failure, a kill) keeps the rows it has
    print(markdown(write()))
    return 0


def run_row(r: dict, seed: int, arch: Path | str, retrained: Path, teacher: Path, teacher_dev: dict | None,
            search: dict | None, retrain_argv: list[str]) -> dict:
    """The retraining of one run of row ``r`` (after its ``search``, timed, if it ran one) on the store
    ``teacher`` (whose teacher scored ``teacher_dev``); the run's record on the page."""
    retrain = timed(retrain_argv)
    doc = json.loads((retrained / ARCH_FILE).read_text())
    print(f"{r['name']}, {run_label(arch, seed)}: {doc['dev_metrics']}", flush=True)
    return {"row": r["name"], "seed": seed, "arch": str(arch), "teacher_run": str(teacher), "copies": r["store"][1],
            "search": search, "retrain": retrain, "dev": doc["dev_metrics"], "params": doc["params"],
            "depth": doc["depth"], "architecture": doc["architecture"], "space": doc["student_config"]["space"],
            "teacher_dev": teacher_dev}


def run_label(arch, seed: int) -> str:
    """How a page names a run of a row: its random structure ("random:3") or its seed ("seed 0")."""
    return str(arch) if str(arch).startswith("random:") else f"seed {seed}"


def _slug(row_name: str) -> str:
    """A row's folder name: "no final-logit KD" -> "no-final-KD", "+ Probe" -> "table4-Probe",
    "+ DA on the default cells" -> "table4-DA-on-the-default-cells"."""
    slug = row_name.replace(" ", "-").replace("-logit", "")
    return "table4-" + slug.lstrip("+-") if row_name.startswith("+") else slug


def row_means(runs: list[dict], metrics: list[str]) -> dict:
    """``{row: {metric: mean in points}}`` over each row's runs (seeds, or random structures)."""
    names = dict.fromkeys(r["row"] for r in runs)
    return {name: {m: statistics.mean(100 * r["dev"][m] for r in runs if r["row"] == name) for m in metrics}
            for name in names}


TABLE4_NAMES = {name + suffix for name, *_ in TABLE4 for suffix in ("", ON_DEFAULT_CELLS)}


def table_row(result: dict, label: str, name: str | None = None) -> str:
    """One Markdown table row, ``label`` in the first column, of the runs of row ``name`` (default ``label``):
    each metric's mean (each run's value in brackets), the teacher, the params and depths."""
    runs = [r for r in result["runs"] if r["row"] == (name or label)]
    cells = []
    for m in result["metrics"]:
        values = [100 * r["dev"][m] for r in runs]
        cells.append(f"{statistics.mean(values):.2f} ({', '.join(f'{v:.2f}' for v in values)})")
    teacher = runs[0]["teacher_dev"] or {}
    teacher_text = " / ".join(f"{100 * teacher[m]:.2f}" for m in result["metrics"] if m in teacher)
    params = ", ".join(f"{r['params']:,}" for r in runs)
    depths = ", ".join(str(r["depth"]) for r in runs)
    return (f"| {label} | {runs[0]['space']} | {runs[0]['copies']} | {teacher_text} | " + " | ".join(cells)
            + f" | {params} | {depths} |")


def markdown(result: dict) -> str:
    metrics = result["metrics"]
    lines = [f"# {result['task']}: what makes a pair student learn (one lever at a time)", "",
             f"Command: `{result['command']}`", "", f"Machine: {result['cpu']} ({result['machine']}).", "",
             "Each row: `nni-adabert search` then `retrain` with the defaults and one change; dev "
             f"{' / '.join(metrics)}, mean over the seeds (each seed in brackets); the random-cells row: one "
             "retraining per random structure, mean over the structures.", "",
             "| row | space | copies | teacher dev | " + " | ".join(metrics) + " | params | K |",
             "|---|---|---|---|" + "---|" * len(metrics) + "---|---|"]
    names = list(dict.fromkeys(r["row"] for r in result["runs"]))
    lines += [table_row(result, name) for name in names if name not in TABLE4_NAMES]
    majority = result["majority"]
    means = {name: values[metrics[0]] for name, values in result["means"].items()}
    if {"default", "random cells"} <= set(means):
        lines += ["", f"Searched (the default row) against random cells of the same space, {metrics[0]}: "
                      f"{means['default'] - means['random cells']:+.2f} points (the paper's Table 3 on MRPC: "
                      "84.7 against 79.2, +5.5)."]
    if {"default", "0 copies"} <= set(means):
        copies = next(r["copies"] for r in result["runs"] if r["row"] == "default")
        lines += ["", f"Data augmentation ({copies} cop{'y' if copies == 1 else 'ies'} against none), {metrics[0]}: "
                      f"{means['default'] - means['0 copies']:+.2f} points (the paper's Table 4 on MRPC: +DA "
                      "83.9 against 78.7 before it, +5.2)."]
    for suffix, title, how in [
            ("", "The paper's Table 4 on MRPC, rerun with the default pipeline", "Each row searches and retrains"),
            (ON_DEFAULT_CELLS, "Table 4 on one structure: the default row's cells",
             "No row searches: each retrains the default row's searched cells (per seed)")]:
        table4 = [(name, name + suffix, f1) for name, *_, f1 in TABLE4]
        if not any(name in names for _, name, _ in table4):
            continue
        lines += ["", f"## {title}", "",
                  f"{how} with one thing added to the row above: Base-KD (the final-logit KD term only, no "
                  "augmented rows, no L_CE: γ = 1), + Probe (every teacher layer's probe), + DA (the default "
                  "store's augmented rows), + L_CE (γ = 0.8: the defaults, whose search drops the final-logit term).",
                  "", "| row | space | copies | teacher dev | " + " | ".join(metrics) + " | params | K | paper F1 |",
                  "|---|---|---|---|" + "---|" * len(metrics) + "---|---|---|"]
        table4.append((TABLE4_ALL[0], "default", TABLE4_ALL[1]))
        lines += [table_row(result, label, name) + f" {f1} |" for label, name, f1 in table4 if name in names]
    limit = result["settings"]["search_augmented_limit"]
    if limit is not None and any(name.endswith(" copies") for name in names):
        lines += ["", f"The search reads at most {limit:,} augmented rows (its default `--augmented-limit`), the "
                      "retraining all of them: a store of more copies than that changes the retraining's data "
                      "more than the search's."]
    kept = [r for r in result["runs"] if r.get("recorded")]
    if kept:
        names = "; ".join(f"{r['row']}, {run_label(r['arch'], r['seed'])}" for r in kept)
        lines += ["", "Kept as an earlier run of this page recorded them (their run directories were gone; a teacher "
                      "of the same dev metrics, a store of the same copies), not run by this run of the command: "
                      f"{names}."]
    lines += ["", "Majority class: " + " / ".join(f"{100 * majority[m]:.2f}" for m in metrics if m in majority) + ".",
              "", f"Commands and minutes ({MINUTES_NOTE}):", ""]
    for name, step in result["stores_built"].items():
        lines.append(f"    {step['command']}    # {step['minutes']} min")
    for r in result["runs"]:
        steps = [r["search"], r["retrain"]] if r["search"] else [r["retrain"]]
        lines += [f"    {step['command']}    # {step['minutes']} min" for step in steps]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
