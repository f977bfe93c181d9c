"""Knowledge-loss ablation (paper Table 4): Base-KD, + Probe, + DA, + L_CE, and AdaBERT as shipped.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/ablation.py --tasks SST-2 MRPC \\
        --rows SST-2=4000 --threads 1

Needs a teacher run per task (``bench/teacher_probes.sh``; ``--teacher-runs``). Each variant is a whole AdaBERT
run — search, then fine-tuning of the derived child — with the same rows, epochs, β and seed,
only the loss changing (``SearchConfig`` fields); each row adds one thing to the row above:

- Base-KD: ``final_kd=True, probe_kd=False`` (the student's final logits against the teacher's
  last layer only), ``gamma=1`` (no ``L_CE``), ``augmented_limit=0`` (original rows only);
- + Probe: ``probe_kd=True`` too (every teacher layer into the student's cell probes, attentive
  weights); the final-logit term stays: without ``L_CE`` nothing else trains the final classifier;
- + DA: plus the augmented rows made from the same originals (label -100: KD only);
- + L_CE: ``gamma=0.8``;
- AdaBERT as shipped (the paper's "All"): ``probe_kd`` only and ``gamma=0.8``, ``L_CE`` in place
  of the final-logit term: the library's defaults, the same run as the β = 4 search of the
  adaptiveness and efficiency benchmarks.

Writes bench/results/ablation/<run>/result.{json,md} (``--name``; default: ablation/default).
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from common import (add_scale_args, header, main_metric, percent, prepare, publish,  # noqa: E402
                    reference_text, results_dir, run_record, search, search_settings, student_row)
from nni_adabert.tables import format_mean_std, format_table  # noqa: E402

# (name, augmented rows, SearchConfig overrides).
VARIANTS = [
    ("Base-KD", False, {"probe_kd": False, "final_kd": True, "gamma": 1.0}),
    ("+ Probe", False, {"probe_kd": True, "final_kd": True, "gamma": 1.0}),
    ("+ DA", True, {"probe_kd": True, "final_kd": True, "gamma": 1.0}),
    ("+ L_CE", True, {"probe_kd": True, "final_kd": True, "gamma": 0.8}),
    ("AdaBERT (All)", True, {"probe_kd": True, "final_kd": False, "gamma": 0.8}),
]
# Paper Table 4 (dev), the columns of the tasks we have.
PAPER = {"Base-KD": {"SST-2": 86.6, "MRPC": 77.2}, "+ Probe": {"SST-2": 88.4, "MRPC": 78.7},
         "+ DA": {"SST-2": 91.4, "MRPC": 83.9}, "+ L_CE (All)": {"SST-2": 91.9, "MRPC": 84.7}}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_scale_args(p, ["SST-2", "MRPC"], "ablation")
    return p.parse_args(argv)


def scores(result: dict, name: str, task: str, metric: str | None = None) -> list[float]:
    """The dev metric (%) of variant ``name`` on ``task``, one per seed."""
    return [percent(r, metric or main_metric(task)) for r in result["runs"]
            if (r["variant"], r["task"]) == (name, task)]


def markdown(result: dict) -> str:
    tasks = result["tasks"]

    def cell(name, task):
        runs = [r for r in result["runs"] if (r["variant"], r["task"]) == (name, task)]
        main, accuracy = scores(result, name, task), scores(result, name, task, "accuracy")
        return (f"{format_mean_std(main)} (acc {format_mean_std(accuracy)}; "
                f"K = {', '.join(str(r['depth']) for r in runs)})")

    lines = header("Knowledge-loss ablation (paper Table 4)", result["command"], result["threads"], result["scale"])
    lines += [reference_text(result["references"]), ""]
    lines += [
        "Each row is a full run (search, then fine-tuning of the derived child) with that loss; same rows "
        "(Base-KD and + Probe: the original rows only), epochs, β and seeds; each of the first four rows adds one "
        "thing to the row above. Cells: dev " + ", ".join(f"{t} {main_metric(t)}" for t in tasks)
        + " (%), mean ± std over the seeds, then dev accuracy and the searched depth K of each seed's run.",
        "",
        format_table(["variant", "L_KD", "augmented rows", "γ", *tasks],
                     [[name, " + ".join(t for t, on in (("final logits", o["final_kd"]), ("probes, all layers",
                                                                                            o["probe_kd"])) if on),
                       "yes" if aug else "no", o["gamma"], *[cell(name, t) for t in tasks]]
                      for name, aug, o in VARIANTS]),
        "",
        *[f"- {line}" for line in result["findings"]],
        "",
        "## The paper's numbers (Table 4, dev; its full-data BERT-base teacher)",
        "",
        format_table(["variant", *tasks], [[name, *[v.get(t, "") for t in tasks]] for name, v in PAPER.items()]),
    ]
    return "\n".join(lines) + "\n"


def findings(result: dict) -> list[str]:
    import statistics

    out = []
    for task in result["tasks"]:
        mean = {name: statistics.mean(scores(result, name, task)) for name, _, _ in VARIANTS}
        ladder = [name for name, _, _ in VARIANTS[:4]]  # each adds one thing to the one above
        steps = [f"{b}: {mean[b] - mean[a]:+.2f}" for a, b in zip(ladder, ladder[1:])]
        monotone = all(mean[b] >= mean[a] for a, b in zip(ladder, ladder[1:]))
        shipped = VARIANTS[4][0]
        out.append(f"{task}: each step's change in mean dev {main_metric(task)}: {', '.join(steps)} "
                   f"({'every step helps, as in the paper' if monotone else 'not every step helps here'}); "
                   f"{shipped}: {mean[shipped]:.2f} ({mean[shipped] - mean[ladder[-1]]:+.2f} against {ladder[-1]})")
    return out


def main(argv=None) -> int:
    argv, args, stores = prepare(parse_args, argv)
    runs = []
    for seed in args.seeds:
        for task, store in stores.items():
            for name, augmented, overrides in VARIANTS:
                config = search_settings(store, args, augmented=augmented, seed=seed, **overrides)
                doc = search(store, config)
                runs.append({"variant": name, "seed": seed, "augmented": augmented, **overrides,
                             "train_limit": config.train_limit, "augmented_limit": config.augmented_limit,
                             **student_row(doc)})
                print(f"{name} on {task}, seed {seed}: {doc['dev_metrics']}", flush=True)
    result = {**run_record("bench/ablation.py", argv, args, stores), "paper": PAPER, "runs": runs}
    return publish(results_dir("ablation", args.name), result, findings, markdown)


if __name__ == "__main__":
    raise SystemExit(main())
