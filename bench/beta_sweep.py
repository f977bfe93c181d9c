"""Efficiency loss weight β = 0, 4, 8 on the same data and seed (paper Table 5).

    python bench/beta_sweep.py [--task SST-2] [--epochs 2] [--train-limit 20000]

Needs the teacher run of ``bench/teacher_probes.sh TASK``. Writes
bench/results/beta-sweep-<TASK>.{json,md,png}: params and dev metric of each exported student.
"""

import argparse
import json

from common import RESULTS, ROOT, machine, run_cli, write_results

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--task", default="SST-2")
parser.add_argument("--epochs", type=int, default=2)
parser.add_argument("--finetune-epochs", type=int, default=1)
parser.add_argument("--train-limit", type=int, default=20000)
parser.add_argument("--betas", type=float, nargs="+", default=[0.0, 4.0, 8.0])
args = parser.parse_args()

teacher = ROOT / "runs" / "bench" / f"teacher-{args.task}"
rows, commands = [], []
for beta in args.betas:
    out = ROOT / "runs" / "bench" / f"beta-{args.task}-{beta:g}"
    commands.append(run_cli(["search", "--teacher", str(teacher), "--output-dir", str(out),
                             "--epochs", str(args.epochs), "--warmup-epochs", "1", "--arc-lr", "3e-3",
                             "--finetune-epochs", str(args.finetune_epochs), "--beta", str(beta),
                             "--train-limit", str(args.train_limit), "--seed", "0", "--no-progress"]))
    doc = json.loads((out / "architecture.json").read_text())
    rows.append({"beta": beta, "params": doc["params"], "params_without_embedding": doc["params_without_embedding"],
                 "flops": doc["flops"], "depth": doc["depth"], "dev_metrics": doc["dev_metrics"],
                 "architecture": doc["architecture"]})

from nni_adabert.pipeline import format_table  # noqa: E402
from nni_adabert.plots import plot_tradeoff  # noqa: E402

main_metric = next(iter(rows[0]["dev_metrics"]))
table = format_table(["β", "K", "params", "params w/o embedding", "FLOPs", f"dev {main_metric}"],
                     [[f"{r['beta']:g}", r["depth"], f"{r['params']:,}", f"{r['params_without_embedding']:,}",
                       f"{r['flops']:,}", f"{100 * r['dev_metrics'][main_metric]:.2f}"] for r in rows])
name = f"beta-sweep-{args.task}"
plot_tradeoff([(f"β={r['beta']:g}", r["params"], r["dev_metrics"][main_metric]) for r in rows],
              RESULTS / f"{name}.png", f"{args.task}: efficiency loss weight", main_metric)
monotone = all(a["params"] >= b["params"] for a, b in zip(rows, rows[1:]))
write_results(name, {"commands": commands, "machine": machine(), "rows": rows,
                     "params_non_increasing_in_beta": monotone},
              f"# {args.task}: β sweep\n\nCommands:\n\n" + "".join(f"    {c}\n" for c in commands)
              + f"\nMachine: {machine()}\n\n{table}\n\nParams non-increasing as β grows: {monotone}\n\n"
              f"![tradeoff]({name}.png)\n")
