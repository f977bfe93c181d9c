"""Efficiency-loss weight β = 0, 4, 8 on the same store, rows and seed (paper Table 5).

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/beta_sweep.py --tasks SST-2 MRPC \\
        --rows SST-2=4000 --threads 1

Needs a teacher run per task (``bench/teacher_probes.sh``; ``--teacher-runs``). One AdaBERT run per β and task
(search, then fine-tuning of the derived child; the full loss; ``common.search_settings``), for
each seed of ``--seeds``: params with and without the embedding, FLOPs, depth K and dev metric of
each exported student (mean ± std over the seeds).
The β = 4 run is the same one the adaptiveness and ablation benchmarks use (shared run directory).

Writes bench/results/beta-sweep/<run>/ (``--name``; default: beta-sweep/default; ``--name
beta-calibration-SST-2``: beta-calibration/SST-2): result.json, result.md and a dev-metric-vs-params
plot per task (tradeoff-<TASK>.png).
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from common import (add_scale_args, header, main_metric, percent, prepare, publish,  # noqa: E402
                    reference_text, results_dir, run_record, search, search_settings, student_row)
from nni_adabert.plots import plot_tradeoff  # noqa: E402
from nni_adabert.tables import format_mean_std, format_table  # noqa: E402

NAME = "beta-sweep"

# Paper Table 5 (dev; params in parentheses), the columns of the tasks we have.
PAPER = {0.0: {"SST-2": "91.8 (7.5M)", "MRPC": "84.5 (7.8M)"}, 4.0: {"SST-2": "91.9 (6.4M)", "MRPC": "84.7 (7.5M)"},
         8.0: {"SST-2": "91.3 (5.3M)", "MRPC": "84.2 (6.4M)"}}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_scale_args(p, ["SST-2", "MRPC"], NAME)
    p.add_argument("--betas", type=float, nargs="+", default=[0.0, 4.0, 8.0])
    return p.parse_args(argv)


def markdown(result: dict) -> str:
    import statistics

    summary = []
    for task in result["tasks"]:
        metric = main_metric(task)
        for beta in result["betas"]:
            runs = [r for r in result["rows"] if (r["task"], r["beta"]) == (task, beta)]
            summary.append([task, f"{beta:g}", ", ".join(str(r["depth"]) for r in runs),
                            f"{statistics.mean(r['params'] for r in runs):,.0f}",
                            f"{statistics.mean(r['params_without_embedding'] for r in runs):,.0f}",
                            f"{statistics.mean(r['flops'] for r in runs):,.0f}",
                            f"{metric} {format_mean_std([percent(r, metric) for r in runs])}",
                            format_mean_std([percent(r, "accuracy") for r in runs])])
    lines = header("Efficiency loss: β = 0, 4, 8 (paper Table 5)", result["command"], result["threads"],
                   result["scale"])
    lines += [reference_text(result["references"]), ""]
    lines += [
        "Each run is a full AdaBERT run (search, then fine-tuning of the derived child) with the full loss; only β "
        "and the seed change. Params, params without the embedding and FLOPs per example of 128 tokens "
        "(matmul-class work of the cells and classifier) are means over the seeds; dev: mean ± std.",
        "",
        format_table(["task", "β", "K (per seed)", "params", "params w/o embedding", "FLOPs", "dev (%)",
                      "dev accuracy (%)"], summary),
        "",
        *[f"- {line}" for line in result["findings"]],
        "",
        "Every run:",
        "",
        format_table(["task", "β", "seed", "K", "params w/o embedding", "dev (%)", "cell (edges)"],
                     [[r["task"], f"{r['beta']:g}", r["seed"], r["depth"], f"{r['params_without_embedding']:,}",
                       f"{percent(r, main_metric(r['task'])):.2f}",
                       ", ".join(v for k, v in r["architecture"].items() if k != "depth")] for r in result["rows"]]),
        "",
        *[f"![{t}](tradeoff-{t}.png)" for t in result["tasks"]],
        "",
        "## The paper's numbers (Table 5, dev; params in parentheses)",
        "",
        format_table(["β", *result["tasks"]],
                     [[f"{b:g}", *[PAPER.get(b, {}).get(t, "") for t in result["tasks"]]] for b in result["betas"]]),
    ]
    return "\n".join(lines) + "\n"


def findings(result: dict) -> list[str]:
    out = []
    for task in result["tasks"]:
        for seed in sorted({r["seed"] for r in result["rows"]}):
            rows = sorted((r for r in result["rows"] if (r["task"], r["seed"]) == (task, seed)),
                          key=lambda r: r["beta"])
            monotone = all(a["params"] >= b["params"] for a, b in zip(rows, rows[1:]))
            out.append(f"{task}, seed {seed}: params without the embedding "
                       + " → ".join(f"{r['params_without_embedding']:,}" for r in rows)
                       + " as β goes " + " → ".join(f"{r['beta']:g}" for r in rows) + ": "
                       + ("never larger for a larger β" if monotone else "NOT monotone in β"))
    return out


def main(argv=None) -> int:
    argv, args, stores = prepare(parse_args, argv)
    out = results_dir(NAME, args.name)
    rows = []
    for task, store in stores.items():
        for seed in args.seeds:
            for beta in args.betas:
                doc = search(store, search_settings(store, args, beta=beta, seed=seed))
                rows.append({"beta": beta, "seed": seed, **student_row(doc)})
                print(f"β={beta:g} on {task}, seed {seed}: {doc['dev_metrics']}, {doc['params']:,} params", flush=True)
        metric = main_metric(task)
        points: dict = {}  # runs that land on one point (same seed, size and score) share one label
        for r in (r for r in rows if r["task"] == task):
            points.setdefault((r["seed"], r["depth"], r["params"], r["dev_metrics"][metric]), []).append(r["beta"])
        plot_tradeoff([(f"β={','.join(f'{b:g}' for b in betas)} seed {seed}, K={k}", params, value)
                       for (seed, k, params, value), betas in points.items()],
                      out / f"tradeoff-{task}.png", f"{task}: efficiency-loss weight β", metric)
    result = {**run_record("bench/beta_sweep.py", argv, args, stores), "betas": args.betas,
              "paper": {str(k): v for k, v in PAPER.items()}, "rows": rows}
    return publish(out, result, findings, markdown)


if __name__ == "__main__":
    raise SystemExit(main())
