"""AdaBERT search on a full GLUE task with its cached teacher (issue 3's evidence).

    python bench/search.py [--task SST-2] [--epochs 2] [--finetune-epochs 1] [--beta 4] [--name NAME]
    python bench/search.py --arch runs/bench/search/SST-2-... --epochs 3 --name retrain-SST-2
    python bench/search.py --arch ... --teacher-run teacher-SST-2-aug4 --name NAME --final-kd --dropout 0.3

With ``--arch`` it retrains that exported structure from fresh weights on the whole store
(``nni-adabert retrain``, KD from the teacher) instead of searching: the paper's
search-then-train protocol, with the search run elsewhere (e.g. on a subset).

Options this script does not know (``--final-kd``, ``--dropout``, ``--weight-decay``, ...) go
to ``nni-adabert search``/``retrain`` as they are.

Needs the teacher run of ``bench/teacher_probes.sh TASK`` (or ``--teacher-run``). Runs in runs/bench/<NAME> and writes
result.json, result.md, the exported architecture.json and the cell picture cell.png into
bench/results/search/<RUN>/ (with ``--arch``: bench/results/retrain/<RUN>/), RUN being NAME without its
``search-`` / ``retrain-`` prefix (NAME: ``search-<TASK>`` unless given; ``common.results_dir``).
"""

import argparse
import json
import shutil

from common import ROOT, machine, results_dir, run_cli, write_results

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--task", default="SST-2")
parser.add_argument("--epochs", type=int, default=2)
parser.add_argument("--finetune-epochs", type=int, default=1)
parser.add_argument("--beta", type=float, default=4.0)
parser.add_argument("--arc-lr", type=float, default=3e-3, help="Adam learning rate of the architecture")
parser.add_argument("--train-limit", type=int, default=None)
parser.add_argument("--arch", help="retrain this exported structure instead of searching")
parser.add_argument("--name", help="run and result name (default: search-<TASK>)")
parser.add_argument("--teacher-run", help="teacher run under runs/bench (default: teacher-<TASK>)")
args, train_options = parser.parse_known_args()
name = args.name or f"search-{args.task}"

teacher = ROOT / "runs" / "bench" / (args.teacher_run or f"teacher-{args.task}")
out = ROOT / "runs" / "bench" / name
if args.arch:
    train = ["retrain", "--arch", args.arch, "--teacher", str(teacher), "--output-dir", str(out),
             "--epochs", str(args.epochs), "--no-progress"]
else:
    train = ["search", "--teacher", str(teacher), "--output-dir", str(out), "--epochs", str(args.epochs),
             "--warmup-epochs", "1", "--arc-lr", str(args.arc_lr), "--finetune-epochs", str(args.finetune_epochs),
             "--beta", str(args.beta), "--no-progress"]
train += (["--train-limit", str(args.train_limit)] if args.train_limit else []) + train_options
commands = [run_cli(train)]
table = out / "summary.md"
commands.append(run_cli(["evaluate", "--teacher", str(teacher), "--arch", str(out), "--speed",
                         "--json", str(out / "summary.json"), "--markdown", str(table)]))

results = results_dir("retrain" if args.arch else "search", name)
shutil.copy(out / "cell.png", results / "cell.png")
shutil.copy(out / "architecture.json", results / "architecture.json")
result = {"commands": commands, "machine": machine(), **json.loads((out / "summary.json").read_text())}
title = "retrained structure" if args.arch else "searched student"
write_results(results, result, f"# {args.task}: {title} vs teacher\n\nCommands:\n\n"
              + "".join(f"    {c}\n" for c in commands) + f"\nMachine: {machine()}\n\n" + table.read_text()
              + "\nCell: ![cell](cell.png)\n")
