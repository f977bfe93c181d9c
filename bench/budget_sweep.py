"""A budget sweep: the default pipeline at several budgets on one teacher, and the picture of accuracy
against size and speed.

    .venv/bin/python bench/budget_sweep.py --task SST-2 --max-params 6400000 5400000 4800000 \\
        --min-speedup 100 --name SST-2

One student per budget and seed (``--seeds``, default 0): ``nni-adabert teacher`` once (or ``--teacher-run``:
a finished one), then per budget and seed ``search`` with that budget (``--max-params N`` or ``--min-speedup S``,
nothing else but the seed) and ``retrain`` with its defaults, as :mod:`pipeline` runs them; then every
student's dev metric, params and speed (batch 128, 1 thread, one round-robin with the teacher and the
BERT-base architecture). The result checks issue 17's
terms: each student within ``--tolerance`` of its budget (params, or the measured speedup over
BERT-base), the metric non-increasing as the budgets' students get smaller (with several seeds: each budget's
mean, so that the order compares means, not single draws), the smallest within 4 points of
the teacher, the students at >= 100x BERT-base's speed within 2, none parameter-free. The commands
resume and skip finished steps. ``--also-without-candidates``: each search is also exported without
candidates (``search --candidates 0`` on a copy of its finished search phase, so only the export runs:
the budget-constrained argmax) and retrained (unless it is the picked child), to measure what the pick among
candidates gains.

Runs in ``--runs-dir`` (default runs/bench/budget-sweep/<name>); writes
bench/results/budget-sweep/<name>/result.{json,md}, tradeoff.png and each student's cell picture.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from common import (GLUE_DIR, ROOT, command_line, cpu_model, keep_earlier_timings, machine, results_dir,  # noqa: E402
                    write_results)
from pipeline import (MEASURED, measure, retrain_step, search_step, steps_markdown, student_steps,  # noqa: E402
                      teacher_step)
from nni_adabert.model.cost import op_params  # noqa: E402
from nni_adabert.plots import plot_accuracy_vs_cost  # noqa: E402
from nni_adabert.teacher.run import open_teacher_run  # noqa: E402

# Published SST-2 dev points: the paper's Table 5 (params; speedup from its Table 1 where it gives one)
# and NAS-BERT's 5M model (its Table 2).
REFERENCES = [
    {"label": "AdaBERT β=0", "params": 7.5e6, "speedup": None, "value": 91.8},
    {"label": "AdaBERT β=4", "params": 6.4e6, "speedup": 29.3, "value": 91.9},
    {"label": "AdaBERT β=8", "params": 5.3e6, "speedup": None, "value": 91.3},
    {"label": "NAS-BERT5", "params": 5.0e6, "speedup": None, "value": 87.3},
]
FAST = 100.0  # the speedup over BERT-base of the sweep's fast point (issue 17)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="SST-2", help="a GLUE task, or a task file of your own data")
    p.add_argument("--data", default=GLUE_DIR, help="GLUE folder (default: ../shared/data/glue or $GLUE_DIR)")
    p.add_argument("--max-params", type=int, nargs="*", default=[], help="parameter budgets, one student each")
    p.add_argument("--min-speedup", type=float, nargs="*", default=[], help="speed budgets, one student each")
    p.add_argument("--teacher-run", default=None, help="a finished `nni-adabert teacher` run to use instead of "
                   "building one with the defaults (e.g. a smaller store for a quick sweep)")
    p.add_argument("--seeds", "--seed", dest="seeds", type=int, nargs="+", default=[0],
                   help="one student per budget and seed; issue 17's terms on each budget's mean")
    p.add_argument("--tolerance", type=float, default=0.15, help="how far from its budget a student may be")
    p.add_argument("--name", required=True, help="run name: bench/results/budget-sweep/<name>/")
    p.add_argument("--runs-dir", default=None, help="where the runs go (default: runs/bench/budget-sweep/<name>)")
    p.add_argument("--cache-dir", default=None, help="knowledge stores (default: <runs-dir>/cache)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the speed measurement")
    p.add_argument("--also-without-candidates", action="store_true", help="also export each search with "
                   "--candidates 0 (the budget-constrained argmax) and retrain it: what the candidates gain")
    args = p.parse_args(argv)
    if len(args.max_params) + len(args.min_speedup) < 1:
        p.error("give at least one budget (--max-params N ... and/or --min-speedup S ...)")
    return args


def budgets(args) -> list[dict]:
    """``{"kind": "params" | "speedup", "value", "flags", "name"}`` per budget, in the order given."""
    return [{"kind": "params", "value": n, "flags": ["--max-params", str(n)], "name": f"params{n}"}
            for n in args.max_params] + \
           [{"kind": "speedup", "value": s, "flags": ["--min-speedup", f"{s:g}"], "name": f"speedup{s:g}"}
            for s in args.min_speedup]


def copy_search_phase(runs: Path, name: str, to: str) -> None:
    """Give ``runs/search-<to>`` the finished search phase of ``runs/search-<name>`` (its Lightning run
    directory), so that ``search`` there with other export settings resumes from its last checkpoint and
    only exports."""
    target = runs / f"search-{to}" / "search"
    if not target.exists():
        shutil.copytree(runs / f"search-{name}" / "search", target)


def export_without_candidates(teacher: Path, runs: Path, picked: dict, flags: list[str], out: Path) -> dict:
    """The search of ``picked`` (a student entry) exported again with ``--candidates 0`` from a copy of its
    search phase, and retrained unless it is the same child (``same_child``: then it shares the picked entry's
    retraining, and after :func:`measure` its measurements)."""
    name = f"{picked['budget']['name']}-seed{picked['seed']}"
    copy_search_phase(runs, name, f"{name}-argmax")
    entry = {"budget": picked["budget"],
             **search_step(teacher, runs, f"{name}-argmax", picked["seed"], [*flags, "--candidates", "0"], out)}
    entry["same_child"] = entry["architecture"] == picked["architecture"]  # the pick was the argmax
    if entry["same_child"]:
        return {**entry, "retrain": picked["retrain"], "dir": picked["dir"]}
    return {**entry, **retrain_step(teacher, runs, f"{name}-argmax", picked["seed"], out)}


def parametric_edges(arch: dict, dim: int) -> int:
    """Edges of the cell (at its depth) whose op has weights: 0 is the collapse the sweep must not show."""
    return sum(op_params(op, dim) > 0 for label, op in arch.items() if label.startswith("edge_"))


def off_budget(student: dict) -> float:
    """How far a student is from its budget, as a fraction: its params, or its measured speedup over
    BERT-base, against the budget's value (-0.05: 5% below)."""
    budget = student["budget"]
    measured = student["params"] if budget["kind"] == "params" else student["speedup_over_bert_base"]
    return measured / budget["value"] - 1


def budget_means(students: list[dict]) -> list[dict]:
    """One point per budget, in the order of ``students``: the mean ``params``, ``speedup_over_bert_base`` and
    ``value`` of its seeds' students, the fewest ``parametric_edges`` among them and their ``seeds``."""
    by_budget: dict[str, list[dict]] = {}
    for s in students:
        by_budget.setdefault(s["budget"]["name"], []).append(s)
    return [{"budget": group[0]["budget"], "seeds": [s.get("seed") for s in group],
             **{key: statistics.mean(s[key] for s in group) for key in ("params", "speedup_over_bert_base", "value")},
             "parametric_edges": min(s["parametric_edges"] for s in group)} for group in by_budget.values()]


def findings(students: list[dict], teacher_value: float, metric: str, tolerance: float) -> dict:
    """Issue 17's terms over the sweep's ``students`` (entries with ``budget``, ``params``,
    ``speedup_over_bert_base``, ``value`` in points, ``parametric_edges``), ``teacher_value`` in points:
    every student within budget and with weights; the order and the gaps on each budget's mean
    (:func:`budget_means`; with one seed, the students themselves)."""
    points = budget_means(students)
    by_size = sorted(points, key=lambda p: -p["params"])
    fast = [p for p in points if p["speedup_over_bert_base"] >= FAST]
    terms = {
        "within_budget": all(abs(off_budget(s)) <= tolerance for s in students),
        "non_increasing": all(b["value"] <= a["value"] for a, b in zip(by_size, by_size[1:])),
        "smallest_gap": teacher_value - by_size[-1]["value"],
        "fast_gap": min((teacher_value - s["value"] for s in fast), default=None),
        "parametric": all(s["parametric_edges"] > 0 for s in students),
    }
    terms["met"] = (len(points) >= 3 and terms["within_budget"] and terms["non_increasing"]
                    and terms["smallest_gap"] <= 4 and terms["fast_gap"] is not None and terms["fast_gap"] <= 2
                    and terms["parametric"])
    return terms


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    runs = Path(args.runs_dir) if args.runs_dir else ROOT / "runs" / "bench" / "budget-sweep" / args.name
    out = results_dir("budget-sweep", args.name)
    keep_earlier_timings(out)
    if args.teacher_run:
        teacher = Path(args.teacher_run)
        teacher_record = {"command": f"# the finished teacher run {teacher}", "minutes": 0.0, "seconds": 0.0}
    else:
        teacher = runs / "teacher"
        teacher_record = teacher_step(args.task, args.data, teacher, args.cache_dir or str(runs / "cache"))
    students, argmax_exports = [], []
    for budget in budgets(args):
        for seed in args.seeds:
            entry = student_steps(teacher, runs, f"{budget['name']}-seed{seed}", seed, budget["flags"], out)
            students.append({"budget": {k: budget[k] for k in ("kind", "value", "name")}, **entry})
            if args.also_without_candidates:
                argmax_exports.append(export_without_candidates(teacher, runs, students[-1], budget["flags"], out))
    store = open_teacher_run(teacher)
    teacher_metrics = measure(store, students + [e for e in argmax_exports if not e["same_child"]], args.threads)
    picked = {_key(s): s for s in students}
    for e in argmax_exports:
        if e["same_child"]:
            e.update({k: picked[_key(e)][k] for k in MEASURED})
    metric = store.spec.main_metric
    for s in students + argmax_exports:
        s["value"] = 100 * s["dev"][metric]
        s["parametric_edges"] = parametric_edges(s["architecture"], s["embed_dim"])
    teacher_value = 100 * teacher_metrics[metric]
    result = {"command": command_line(["bench/budget_sweep.py", *argv]), "cpu": cpu_model(), "machine": machine(),
              "torch": torch.__version__, "task": store.meta["task"], "metric": metric,
              "teacher": {"dev": teacher_metrics, **teacher_record}, "students": students,
              "findings": findings(students, teacher_value, metric, args.tolerance), "tolerance": args.tolerance,
              "references": REFERENCES, "argmax_exports": argmax_exports}
    plot_tradeoff(result, teacher_value, out / "tradeoff.png")
    text = markdown(result)
    write_results(out, result, text)
    print(text)
    return 0


def several_seeds(students: list[dict]) -> bool:
    """Whether some budget has more than one student (then the order compares each budget's mean)."""
    return len({s["budget"]["name"] for s in students}) < len(students)


def plot_tradeoff(result: dict, teacher_value: float, path: Path) -> None:
    """The sweep's picture: each budget's mean (:func:`budget_means`) and, with several seeds, each student."""
    def point(s: dict) -> dict:
        return {"label": _label(s), "params": s["params"], "speedup": s["speedup_over_bert_base"], "value": s["value"]}

    students = result["students"]
    plot_accuracy_vs_cost([point(p) for p in budget_means(students)], REFERENCES, path,
                          f"{result['task']}: students of the budget sweep", result["metric"], teacher_value,
                          each_seed=[point(s) for s in students] if several_seeds(students) else None)


def _key(student: dict) -> tuple:
    """A student's budget and seed: what names it among the sweep's students."""
    return student["budget"]["name"], student.get("seed")


def _label(student: dict, with_seed: bool = False) -> str:
    budget = student["budget"]
    label = f"≤{budget['value'] / 1e6:.1f}M" if budget["kind"] == "params" else f"≥{budget['value']:g}x"
    return f"{label}, seed {student['seed']}" if with_seed else label


def markdown(result: dict) -> str:
    metric, teacher, f = result["metric"], result["teacher"], result["findings"]
    teacher_value = 100 * teacher["dev"][metric]
    argmax_exports = result.get("argmax_exports", [])
    points = budget_means(result["students"])
    with_seed = several_seeds(result["students"])  # rows say which seed, means below
    lines = steps_markdown(result, "a budget sweep of the default pipeline", result["students"] + argmax_exports)
    lines += ["| budget | K | params | params without embedding | off budget | conv/pool edges with weights "
              "| searched | retrained | behind the teacher | speedup over BERT-base arch | over teacher |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in sorted(result["students"], key=lambda s: -s["params"]):
        lines.append(f"| {_label(s, with_seed)} | {s['depth']} | {s['params']:,} "
                     f"| {s['params_without_embedding']:,} | {100 * off_budget(s):+.1f}% | {s['parametric_edges']} "
                     f"| {100 * s['searched'][metric]:.2f} | {s['value']:.2f} | {teacher_value - s['value']:.2f} "
                     f"| {s['speedup_over_bert_base']:.1f}x | {s['speedup_over_teacher']:.1f}x |")
    if with_seed:
        lines += ["", "Each budget's mean over its seeds (what the order and the gaps below compare):", "",
                  "| budget | seeds | params | retrained | behind the teacher | speedup over BERT-base arch |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {_label(p)} | {', '.join(str(seed) for seed in p['seeds'])} | {p['params']:,.0f} "
                  f"| {p['value']:.2f} | {teacher_value - p['value']:.2f} | {p['speedup_over_bert_base']:.1f}x |"
                  for p in sorted(points, key=lambda p: -p["params"])]
    fast = "none at >= 100x" if f["fast_gap"] is None else f"{f['fast_gap']:.2f} behind (goal <= 2)"
    compared = "the budgets' means" if with_seed else "the students"
    lines += ["", f"Issue 17's terms: every student within ±{100 * result['tolerance']:.0f}% of its budget: "
                  f"{'yes' if f['within_budget'] else 'no'}; {metric} non-increasing as {compared} get smaller: "
                  f"{'yes' if f['non_increasing'] else 'no'}; the smallest {f['smallest_gap']:.2f} behind the "
                  f"teacher (goal <= 4); at >= 100x BERT-base's speed: {fast}; none parameter-free: "
                  f"{'yes' if f['parametric'] else 'no'}. **All met: {'yes' if f['met'] else 'no'}.**", "",
              "Speed: the store's dev rows at batch 128, 1 thread, median of 3 passes, every student in one "
              "round-robin with the teacher and the BERT-base architecture (random weights: they do not change "
              "its speed).", "",
              "![accuracy against params and speed](tradeoff.png)", ""]
    if argmax_exports:
        picked = {_key(s): s for s in result["students"]}
        lines += ["The same searches exported without candidates (`--candidates 0`: the budget-constrained argmax), "
                  "retrained with the defaults:", "",
                  "| budget | K | params | searched | retrained | the default's export minus this | "
                  "speedup over BERT-base arch |", "|---|---|---|---|---|---|---|"]
        for s in argmax_exports:
            gain = picked[_key(s)]["value"] - s["value"]
            same = " (the same child: not retrained again)" if s.get("same_child") else ""
            lines.append(f"| {_label(s, with_seed)}{same} | {s['depth']} | {s['params']:,} "
                         f"| {100 * s['searched'][metric]:.2f} | {s['value']:.2f} | {gain:+.2f} "
                         f"| {s['speedup_over_bert_base']:.1f}x |")
        lines.append("")
    lines += [f"Cell, {_label(s, with_seed)}: ![cell](cell-{s['budget']['name']}-seed{s['seed']}.png)"
              for s in result["students"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
