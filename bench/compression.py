"""Compression results (paper Tables 1-2): teacher, BERT-base architecture and searched student.

    .venv/bin/python bench/compression.py --teacher runs/bench/teacher-SST-2 \\
        --student runs/bench/search-SST-2 --name SST-2 --threads 1

Dev metrics, params (with and without embeddings), FLOPs per example of 128 tokens, the
number of layers K, and the inference speed at batch 128 over the same dev rows, measured
in one process for (a) the fine-tuned teacher, (b) the BERT-base architecture
(``transformers.BertConfig()`` defaults, randomly initialised: weights do not change its
speed, and nothing is downloaded) and (c) the student; warm-up pass, then the median of
``--repeats`` passes, round-robin over the three models, ``--threads`` intra-op threads.
All of it is ``nni_adabert.workflows.evaluate.compare_with_teacher``; this script records and formats.

Writes bench/results/compression/<name>/result.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from common import command_line, cpu_model, machine, results_dir, write_results  # noqa: E402
from nni_adabert.teacher.run import open_teacher_run  # noqa: E402
from nni_adabert.workflows.evaluate import compare_with_teacher  # noqa: E402
from nni_adabert.workflows.speed import bert_base  # noqa: E402


# Paper (Chen et al., IJCAI 2020), Table 1 (accuracy from the GLUE test server; BERT12 is
# Devlin et al.'s BERT-base, BERT12-T the authors' own fine-tuning) and Table 2 (AdaBERT's
# searched structure per task; speedup over BERT-base at batch 128 over 50,000 samples).
PAPER = {
    "SST-2": {"bert_params": "109M", "bert": 93.5, "bert_t": 93.3, "K": 3, "params": "6.4M", "speedup": "29.3x",
              "adabert": 91.8},
    "MRPC": {"bert_params": "109M", "bert": 88.9, "bert_t": 88.7, "K": 4, "params": "7.5M", "speedup": "19.2x",
             "adabert": 85.1},
}
REFERENCE = "BERT-base arch"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", required=True, help="teacher run directory (bench/teacher_probes.sh)")
    p.add_argument("--student", required=True, help="exported student (directory or architecture JSON)")
    p.add_argument("--weights", default=None, help="student weights (default: the exported ones)")
    p.add_argument("--name", required=True, help="run name: bench/results/compression/<name>/result.{json,md}")
    p.add_argument("--rows", type=int, default=None, help="time on the first N dev rows (default: all)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per example for the FLOP counts")
    return p.parse_args(argv)


def metric_text(metrics: dict | None) -> str:
    return ", ".join(f"{k} {100 * v:.2f}" for k, v in metrics.items()) if metrics else "- (random weights)"


def markdown(result: dict, args) -> str:
    teacher, student, ref = result["teacher"], result["student"], result["references"][REFERENCE]
    speed = result["speed"]
    rows = [
        (f"{REFERENCE} (BertConfig() defaults, random init)", ref["layers"], None, ref),
        (f"teacher (fine-tuned, {teacher['layers']} layers x {teacher['hidden']})", teacher["layers"],
         teacher["dev_metrics"], teacher),
        (f"student (searched, K={student['depth']}, D={student['embed_dim']})", student["depth"],
         student["dev_metrics"], student),
    ]
    lines = [
        f"# {result['task']}: compression (paper Tables 1-2)",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Machine: {result['cpu']}, {speed['threads']} torch thread(s), torch {torch.__version__} "
        f"({result['machine']}).",
        "",
        f"Speed: {speed['examples']} dev rows (the first ones of the store's dev set, each batch padded to its "
        f"longest row), batch {speed['batch_size']}, {speed['warmup']} warm-up pass, median of {speed['repeats']} "
        "timed passes, round-robin over the models, in one process. Seconds are for the ratios only.",
        "",
        f"| model | K (layers) | dev | params | params without embedding | FLOPs/example ({args.seq_len} tokens) "
        f"| s per pass | speedup over {REFERENCE} | speedup over teacher |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, k, metrics, r in rows:
        over = r["speedup_over"]
        lines.append(f"| {name} | {k} | {metric_text(metrics)} | {r['params']:,} | {r['params_without_embedding']:,} "
                     f"| {r['flops']:,} | {r['seconds']:.3f} | {over.get(REFERENCE, 1.0):.1f}x "
                     f"| {over.get('teacher', 1.0):.1f}x |")
    lines += [
        "",
        f"Student vs {REFERENCE}: {ref['params'] / student['params']:.1f}x fewer params, "
        f"{student['speedup_over'][REFERENCE]:.1f}x faster. Student vs teacher: "
        f"{teacher['params'] / student['params']:.1f}x fewer params, {student['speedup_over']['teacher']:.1f}x faster.",
        "",
        "FLOPs count the matmul-class operations, 2 per multiply-add (`torch.utils.flop_counter` for the "
        "Transformers, attention included; `nni_adabert.model.cost` for the student, whose pooling, skip and "
        "BatchNorm work is not counted). The embedding lookups cost no FLOPs.",
    ]
    paper = PAPER.get(result["task"])
    if paper:
        lines += [
            "",
            "## The paper's numbers (Tables 1-2)",
            "",
            "Accuracy from the GLUE test server (ours: dev set); speedup over BERT-base at batch 128 "
            "over 50,000 samples (their machine).",
            "",
            f"| model | K | params | speedup over BERT-base | {result['task']} (test) |",
            "|---|---|---|---|---|",
            f"| BERT-base (BERT12; BERT12-T: the authors' fine-tuning) | 12 | {paper['bert_params']} | 1x | "
            f"{paper['bert']} (BERT12-T: {paper['bert_t']}) |",
            f"| AdaBERT | {paper['K']} | {paper['params']} | {paper['speedup']} | {paper['adabert']} |",
        ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    store = open_teacher_run(args.teacher)
    result = compare_with_teacher(store, args.student, args.weights, speed=True, seq_len=args.seq_len,
                                  references={REFERENCE: bert_base(store.spec.num_labels)}, rows=args.rows,
                                  batch_size=args.batch_size, repeats=args.repeats, warmup=args.warmup,
                                  threads=args.threads)
    result = {"command": command_line(["bench/compression.py", *argv]), "cpu": cpu_model(), "machine": machine(),
              "torch": torch.__version__, "paper": PAPER.get(result["task"]), **result}
    write_results(results_dir("compression", f"compression-{args.name}"), result, markdown(result, args))
    print(markdown(result, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
