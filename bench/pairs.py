"""What makes a sentence-pair student learn: one lever at a time on one teacher (issue 18's cause table).

    .venv/bin/python bench/pairs.py --teacher-run runs/bench/pipeline/MRPC-default/teacher \\
        --weak-teacher-run runs/bench/teacher-recipe/MRPC/before --seeds 0 1 --name MRPC

Every row is the default pipeline after the teacher (``nni-adabert search`` then ``retrain``, the
defaults, per seed) with one thing changed against the first row ("default"):

- ``paper space``: the two texts as the first cell's two inputs (``--space paper``), no ``align``
  op, no matching head;
- ``N copies``: a knowledge store of the same fine-tuned teacher with N augmented copies per pair
  (``teacher --model <teacher> --no-finetune --aug-copies N``);
- ``no final-logit KD``: the retraining without the final-logit KD term (``--no-final-kd``);
- ``weaker teacher``: the store of another teacher run (the 3-epoch, last-epoch recipe of before);
- ``random cells``: no search; seeded random cells of the default space (``retrain --arch random:<seed>``,
  seeds ``--random-seeds``) retrained with the defaults, the paper's Table 3 baseline for the default row.

A store is built once per (teacher, copies) and shared; runs resume and skip finished steps.
Runs in ``--runs-dir`` (default runs/bench/pairs/<name>); writes bench/results/pairs/<name>/result.{json,md}.
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

from common import GLUE_DIR, ROOT, command_line, cpu_model, machine, results_dir, timed, write_results  # noqa: E402
from nni_adabert.teacher.run import open_teacher_run  # noqa: E402
from nni_adabert.workflows.evaluate import majority_class_metrics  # noqa: E402


LEVERS = ["paper-space", "copies", "no-final-kd", "weak-teacher", "random"]


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
    base_copies = (base.meta["inputs"]["augment"] or {}).get("copies", 0)
    # Every store of the table in the default row's precision: the rows change one thing only.
    precision = base.meta["inputs"].get("teacher_precision", "fp32")
    stores: dict[tuple, Path] = {("default", base_copies): teacher_run}
    built: dict[str, dict] = {}

    def store(teacher: str, copies: int) -> Path:
        """The run directory of a store of ``teacher`` ("default" or "weak") with ``copies`` copies."""
        key = (teacher, copies)
        if key not in stores:
            source = teacher_run if teacher == "default" else Path(args.weak_teacher_run)
            out = runs / f"teacher-{teacher}-aug{copies}"
            built[out.name] = timed(["teacher", "--task", args.task, "--data", args.data, "--model",
                                     str(source / "teacher"), "--no-finetune", "--aug-copies", str(copies),
                                     "--inference-precision", precision,
                                     "--output-dir", str(out), "--cache-dir", str(runs / "cache"), "--no-progress"])
            stores[key] = out
        return stores[key]

    # (row name, store key, search flags, retrain flags)
    rows = [("default", ("default", base_copies), [], [])]
    if "paper-space" in args.levers:
        rows.append(("paper space", ("default", base_copies), ["--space", "paper"], []))
    if "copies" in args.levers:
        rows += [(f"{n} copies", ("default", n), [], []) for n in args.copies if n != base_copies]
    if "no-final-kd" in args.levers:
        rows.append(("no final-logit KD", ("default", base_copies), [], ["--no-final-kd"]))
    if "weak-teacher" in args.levers and args.weak_teacher_run:
        rows.append(("weaker teacher", ("weak", base_copies), [], []))
    if "random" in args.levers:  # second: the table's headline comparison (searched against random)
        rows.insert(1, ("random cells", ("default", base_copies), None, []))

    results = []
    for name, key, search_flags, retrain_flags in rows:
        teacher = store(*key)
        slug = name.replace(" ", "-").replace("-logit", "")
        # (seed, architecture to retrain): a searched row searches per seed; the random row retrains each
        # random structure once, with the first seed.
        if search_flags is None:
            plan = [(args.seeds[0], f"random:{r}", runs / slug / f"retrain-random{r}") for r in args.random_seeds]
        else:
            plan = [(seed, runs / slug / f"search-seed{seed}", runs / slug / f"retrain-seed{seed}")
                    for seed in args.seeds]
        for seed, arch, retrained in plan:
            search = None
            if search_flags is not None:
                search = timed(["search", "--teacher", str(teacher), "--output-dir", str(arch), *search_flags,
                                "--seed", str(seed), "--no-progress"])
            retrain = timed(["retrain", "--teacher", str(teacher), "--arch", str(arch), "--output-dir",
                             str(retrained), *retrain_flags, "--seed", str(seed), "--no-progress"])
            doc = json.loads((retrained / "architecture.json").read_text())
            results.append({"row": name, "seed": seed, "arch": str(arch), "teacher_run": str(teacher), "copies": key[1],
                            "search": search, "retrain": retrain, "dev": doc["dev_metrics"],
                            "params": doc["params"], "depth": doc["depth"], "architecture": doc["architecture"],
                            "space": doc["student_config"]["space"],
                            "teacher_dev": open_teacher_run(teacher).teacher_info.get("dev_metrics")})
            print(f"{name}, {arch if search is None else f'seed {seed}'}: {doc['dev_metrics']}", flush=True)
    spec = base.spec
    majority = majority_class_metrics(base)
    result = {"command": command_line(["bench/pairs.py", *argv]), "cpu": cpu_model(), "machine": machine(),
              "torch": torch.__version__, "task": args.task, "metrics": list(spec.metrics), "majority": majority,
              "stores_built": built, "runs": results}
    out = results_dir("pairs", args.name)
    text = markdown(result)
    write_results(out, result, text)
    print(text)
    return 0


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
    for name in names:
        runs = [r for r in result["runs"] if r["row"] == name]
        cells = []
        for m in metrics:
            values = [100 * r["dev"][m] for r in runs]
            cells.append(f"{statistics.mean(values):.2f} ({', '.join(f'{v:.2f}' for v in values)})")
        teacher = runs[0]["teacher_dev"] or {}
        teacher_text = " / ".join(f"{100 * teacher[m]:.2f}" for m in metrics if m in teacher)
        params = ", ".join(f"{r['params']:,}" for r in runs)
        depths = ", ".join(str(r["depth"]) for r in runs)
        lines.append(f"| {name} | {runs[0]['space']} | {runs[0]['copies']} | {teacher_text} | "
                     + " | ".join(cells) + f" | {params} | {depths} |")
    majority = result["majority"]
    means = {name: statistics.mean(100 * r["dev"][metrics[0]] for r in result["runs"] if r["row"] == name)
             for name in names}
    if {"default", "random cells"} <= set(means):
        lines += ["", f"Searched (the default row) against random cells of the same space, {metrics[0]}: "
                      f"{means['default'] - means['random cells']:+.2f} points (the paper's Table 3 on MRPC: "
                      "84.7 against 79.2, +5.5)."]
    lines += ["", "Majority class: " + " / ".join(f"{100 * majority[m]:.2f}" for m in metrics if m in majority) + ".",
              "", "Commands and minutes (wall time on this machine):", ""]
    for name, step in result["stores_built"].items():
        lines.append(f"    {step['command']}    # {step['minutes']} min")
    for r in result["runs"]:
        steps = [r["search"], r["retrain"]] if r["search"] else [r["retrain"]]
        lines += [f"    {step['command']}    # {step['minutes']} min" for step in steps]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
