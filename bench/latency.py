"""The latency table of this machine, and how well it predicts a child's measured speedup.

    .venv/bin/python bench/latency.py --teacher runs/demo --name SST-2

Measures the space's per-op latency table (``nni_adabert.model.latency``, what ``search
--min-speedup`` reads) on the store's first 512 dev rows at batch 128, 1 thread, against the
BERT-base architecture; then times a few children and the BERT-base architecture (all 12
layers) over the same rows in one process and compares each child's measured speedup with the
table's prediction. Children: a timing floor (one cell of ``zero`` edges: it reads no text, so no
search exports it), the slowest (``k_max`` cells of ``std_conv_7``), one cell of each op on every
edge, ``k_max`` cells of each pool and of ``skip``, and random ones.

Writes bench/results/latency/<name>/result.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from common import command_line, cpu_model, machine, results_dir, write_results  # noqa: E402
from nni_adabert.model.depth import DEPTH_LABEL  # noqa: E402
from nni_adabert.model.latency import measure_latency  # noqa: E402
from nni_adabert.model.space import AdaBertStudent, random_arch, uniform_arch  # noqa: E402
from nni_adabert.teacher.run import open_teacher_run  # noqa: E402
from nni_adabert.workflows.speed import (LATENCY_ROWS, batch_lengths, bert_base, dev_examples,  # noqa: E402
                                         measure_speeds, reference_config)
from nni_adabert.workflows.student import student_config  # noqa: E402

REFERENCE = "BERT-base arch"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", required=True, help="teacher run directory (its dev rows give the lengths)")
    p.add_argument("--name", required=True, help="run name: bench/results/latency/<name>/result.{json,md}")
    p.add_argument("--random-children", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3, help="timed passes of the check (the table: 5 per entry)")
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


def children(space, n_random: int) -> dict:
    named = {"floor (1 cell, zero edges: not a student)": uniform_arch(space, "zero", 1),
             f"slowest ({space.k_max} cells, std_conv_7)": uniform_arch(space, "std_conv_7", space.k_max)}
    for op in space.op_names:
        if op != "zero":
            named[f"1 cell, {op} on every edge"] = uniform_arch(space, op, 1)
    for op in ("avg_pool_3", "max_pool_3", "skip"):   # cheap ops run deep: where a cell's input layout showed
        named[f"{space.k_max} cells, {op} on every edge"] = uniform_arch(space, op, space.k_max)
    for seed in range(n_random):
        named[f"random {seed}"] = random_arch(space, seed)
    return named


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    store = open_teacher_run(args.teacher)
    space = student_config(store)
    lengths, reference_lengths = batch_lengths(store, args.batch_size)
    table = measure_latency(space, lengths, reference_lengths, reference_config(store, "bert-base"), "bert-base",
                            args.batch_size, threads=args.threads)
    archs = children(space, args.random_children)
    models = {REFERENCE: bert_base(store.spec.num_labels)}
    for name, arch in archs.items():
        models[name] = AdaBertStudent(space, arch)
    timing = measure_speeds(models, dev_examples(store, LATENCY_ROWS), args.batch_size, args.repeats,
                            threads=args.threads)
    rows = []
    for name, arch in archs.items():
        measured = timing["speedup_over"][name][REFERENCE]
        predicted = table.speedup(space, arch)
        rows.append({"child": name, "depth": arch[DEPTH_LABEL], "predicted": predicted, "measured": measured,
                     "error": predicted / measured - 1, "architecture": arch})
    errors = [abs(r["error"]) for r in rows]
    result = {"command": command_line(["bench/latency.py", *argv]), "cpu": cpu_model(), "machine": machine(),
              "torch": torch.__version__, "table": table.to_dict(), "children": rows,
              "reference_seconds_measured": timing["seconds"][REFERENCE],
              "median_abs_error": statistics.median(errors), "max_abs_error": max(errors)}
    text = markdown(result, table)
    write_results(results_dir("latency", f"latency-{args.name}"), result, text)
    print(text)
    return 0


def markdown(result: dict, table) -> str:
    setting = table.setting
    scale = 1000 / table.reference_seconds
    lines = ["# The latency table of this machine, and its predictions", "",
             f"Command: `{result['command']}`", "",
             f"Machine: {result['cpu']}, {setting['threads']} torch thread(s), torch {result['torch']} "
             f"({result['machine']}).", "",
             f"Timed on the store's first {LATENCY_ROWS} dev rows in batches of {setting['batch_size']} (student "
             f"lengths {setting['lengths']}, BERT lengths {setting['reference_lengths']}), median of "
             f"{setting['repeats']} passes per entry; the BERT-base architecture extrapolated from its 1- and "
             "2-layer copies. Times are per mille of the BERT-base architecture's (machine-independent ratios).", "",
             "| op (one edge) | time (per mille of BERT-base) |", "|---|---|"]
    lines += [f"| {op} | {s * scale:.2f} |" for op, s in table.op_seconds.items()]
    lines += [f"| each cell besides its edges | {table.cell_seconds * scale:.2f} |",
              f"| once: embedding, pooling, classifier | {table.once_seconds * scale:.2f} |", "",
              f"The BERT-base architecture extrapolated: {table.reference_seconds:.2f} s per pass; timed whole "
              f"in the check below: {result['reference_seconds_measured']:.2f} s.", "",
              "## Predicted against measured speedup over the BERT-base architecture", "",
              "Each child timed with the BERT-base architecture (all 12 layers) over the same rows in one process "
              "(`workflows.speed.measure_speeds`, the timing of `bench/compression.py`).", "",
              "| child | K | predicted | measured | error |", "|---|---|---|---|---|"]
    for r in result["children"]:
        lines.append(f"| {r['child']} | {r['depth']} | {r['predicted']:.1f}x | {r['measured']:.1f}x "
                     f"| {100 * r['error']:+.0f}% |")
    lines += ["", f"Median absolute error {100 * result['median_abs_error']:.0f}%, largest "
                  f"{100 * result['max_abs_error']:.0f}%."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
