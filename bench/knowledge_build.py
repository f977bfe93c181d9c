"""Throughput of the knowledge build (the teacher over every original and augmented row), fp32 against
the default precision, in one run on this machine.

    .venv/bin/python bench/knowledge_build.py --teacher-run runs/bench/pipeline/SST-2-default/teacher \\
        --rows 4000 --copies 8

Builds the same store twice into fresh cache folders (never a cache hit): with the teacher's passes in
fp32 (how every store was built on a CPU before), then with ``--inference-precision auto`` (the default: bf16
where the CPU computes it natively). Reports rows per second of each build, their ratio, and how far
the two stores' teacher outputs are apart (the largest difference of a teacher or probe logit, and how
often the teacher's label agrees on the augmented rows), and the probes' dev accuracy from each.

Writes bench/results/knowledge-build/<name>/result.{json,md} (``--name``, default ``default``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from common import GLUE_DIR, command_line, cpu_model, machine, results_dir, write_results  # noqa: E402
from nni_adabert.data.glue import load_task  # noqa: E402
from nni_adabert.logs import configure_logging  # noqa: E402
from nni_adabert.teacher.augment import AugmentConfig  # noqa: E402
from nni_adabert.teacher.knowledge import build_knowledge  # noqa: E402
from nni_adabert.teacher.probes import ProbeConfig  # noqa: E402
from nni_adabert.teacher.run import open_teacher_run  # noqa: E402
from nni_adabert.training import inference_precision, pick_device  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher-run", required=True, help="a finished `nni-adabert teacher` run (its fine-tuned teacher)")
    p.add_argument("--data", default=GLUE_DIR, help="GLUE folder (default: ../shared/data/glue or $GLUE_DIR)")
    p.add_argument("--rows", type=int, default=4000, help="first N train rows (all: 0)")
    p.add_argument("--copies", type=int, default=8, help="augmented copies per train row")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: as set)")
    p.add_argument("--name", default=None, help="run name: bench/results/knowledge-build/<name>/")
    return p.parse_args(argv)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    configure_logging(progress=False)
    if args.threads:
        torch.set_num_threads(args.threads)
    teacher = open_teacher_run(args.teacher_run)
    spec = teacher.spec
    data = load_task(spec, args.data)
    if args.rows:
        data["train"] = data["train"].select(range(min(args.rows, len(data["train"]))))
    teacher_dir = Path(args.teacher_run) / "teacher"
    augment = AugmentConfig(copies=args.copies) if args.copies else None
    builds = {}
    for name, precision in (("fp32 (before)", "fp32"), ("default (after)", "auto")):
        cache = Path(tempfile.mkdtemp(prefix="knowledge-build-"))
        try:
            start = time.perf_counter()
            store = build_knowledge(spec, data, teacher_dir, augment, cache, ProbeConfig(), progress=False,
                                    precision=precision)
            seconds = time.perf_counter() - start
            rows = len(store.data["train"]) + len(store.data["dev"])
            logits = {split: store.data[split].with_format("torch")[:]["teacher_logits"] for split in ("train", "dev")}
            builds[name] = {"precision": inference_precision(pick_device(), precision), "rows": rows,
                            "seconds": round(seconds, 1), "rows_per_second": round(rows / seconds, 1),
                            "probe_dev_accuracy": store.meta["probe_dev_accuracy"],
                            "train_logits": logits["train"], "dev_logits": logits["dev"]}
        finally:
            shutil.rmtree(cache, ignore_errors=True)
    before, after = builds["fp32 (before)"], builds["default (after)"]
    augmented = slice(len(data["train"]), None)
    agreement = (before["train_logits"][augmented, -1].argmax(-1) == after["train_logits"][augmented, -1].argmax(-1))
    result = {"command": command_line(["bench/knowledge_build.py", *argv]), "cpu": cpu_model(), "machine": machine(),
              "torch": torch.__version__, "threads": torch.get_num_threads(), "task": spec.name,
              "train_rows": len(data["train"]), "copies": args.copies,
              "builds": {k: {n: v for n, v in b.items() if not n.endswith("_logits")} for k, b in builds.items()},
              "speedup": round(before["seconds"] / after["seconds"], 2),
              "max_logit_difference": {
                  "train": float((before["train_logits"] - after["train_logits"]).abs().max()),
                  "dev": float((before["dev_logits"] - after["dev_logits"]).abs().max())},
              "augmented_label_agreement": float(agreement.float().mean()) if len(agreement) else None}
    out = results_dir("knowledge-build", args.name)
    text = markdown(result)
    write_results(out, result, text)
    print(text)
    return 0


def markdown(result: dict) -> str:
    lines = [f"# Knowledge build: {result['task']}, {result['train_rows']:,} train rows x {result['copies']} "
             "augmented copies", "", f"Command: `{result['command']}`", "",
             f"Machine: {result['cpu']} ({result['machine']}), {result['threads']} torch thread(s), "
             f"torch {result['torch']}.", "",
             "| build | teacher precision | rows (train + dev) | minutes | rows/s | probe dev accuracy, layers 1..J |",
             "|---|---|---|---|---|---|"]
    for name, b in result["builds"].items():
        probes = ", ".join(f"{100 * a:.1f}" for a in b["probe_dev_accuracy"])
        lines.append(f"| {name} | {b['precision']} | {b['rows']:,} | {b['seconds'] / 60:.1f} | "
                     f"{b['rows_per_second']:.0f} | {probes} |")
    diff = result["max_logit_difference"]
    agreement = result["augmented_label_agreement"]
    lines += ["", f"The default build is **{result['speedup']:.2f}x** as fast (the same rows, augmentation "
                  "included). Largest difference of a stored teacher/probe logit between the two stores: "
                  f"{diff['train']:.3f} (train rows), {diff['dev']:.3f} (dev rows)"
                  + (f"; the teacher's label agrees on {100 * agreement:.2f}% of the augmented rows." if agreement
                     is not None else ".")]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
