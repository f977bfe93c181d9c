"""The teacher's fine-tuning in fp32 and in bf16 autocast: time per epoch and dev accuracy.

    .venv/bin/python bench/teacher_precision.py --task SST-2 --train-limit 20000 --epochs 1

Fine-tunes the bundled MiniLM twice on the same rows with the same seed, once per
``--precision`` of ``nni-adabert teacher`` (``fp32``, ``bf16``: autocast, weights and optimizer
in fp32), one after the other in one process, and compares their minutes per epoch (a ratio
measured on this machine) and dev metrics. bf16 only pays where the CPU computes it natively
(AVX512-BF16, AMX) or on a GPU; elsewhere it is slower.

Results: bench/results/teacher/precision-<name>/result.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from common import GLUE_DIR, ROOT, command_line, cpu_model, machine, results_dir, write_results  # noqa: E402
from nni_adabert.data.glue import load_task  # noqa: E402
from nni_adabert.data.metrics import majority_class_metrics  # noqa: E402
from nni_adabert.data.tasks import get_task  # noqa: E402
from nni_adabert.logs import configure_logging  # noqa: E402
from nni_adabert.teacher.finetune import TeacherConfig, finetune_teacher  # noqa: E402
from nni_adabert.training import bf16_native  # noqa: E402

PRECISIONS = ("fp32", "bf16")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="SST-2", help="a GLUE task")
    p.add_argument("--data", default=GLUE_DIR, help="GLUE folder (default: ../shared/data/glue or $GLUE_DIR)")
    p.add_argument("--train-limit", type=int, default=None, help="the first N train rows (default: all)")
    p.add_argument("--epochs", type=int, default=1, help="fine-tuning epochs of each teacher (default 1)")
    p.add_argument("--name", default=None, help="result name (default: the task, and the rows when limited)")
    p.add_argument("--runs-dir", default=None, help="where the teachers go (default: runs/bench/teacher-precision)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    configure_logging(progress=False)
    spec = get_task(args.task)
    data = load_task(args.task, args.data)
    if args.train_limit is not None:
        data["train"] = data["train"].select(range(min(args.train_limit, len(data["train"]))))
    name = args.name or args.task + (f"-{len(data['train']) // 1000}k" if args.train_limit else "")
    runs = Path(args.runs_dir) if args.runs_dir else ROOT / "runs" / "bench" / "teacher-precision" / name
    rows = []
    for precision in PRECISIONS:
        start = time.perf_counter()
        info = finetune_teacher(spec, data, None, runs / precision, TeacherConfig(epochs=args.epochs,
                                                                                  precision=precision),
                                progress=False)
        rows.append({"precision": precision, "lightning_precision": info["precision"],
                     "minutes": round((time.perf_counter() - start) / 60, 2), "reused": bool(info.get("reused")),
                     "dev_metrics": info["dev_metrics"], "dev_history": info["dev_history"],
                     "run": str(runs / precision)})
    majority = majority_class_metrics(spec, torch.tensor(list(data["dev"]["label"])))
    result = {"command": command_line(["bench/teacher_precision.py", *argv]), "cpu": cpu_model(),
              "machine": machine(), "bf16_native": bf16_native("cuda" if torch.cuda.is_available() else "cpu"),
              "threads": torch.get_num_threads(), "task": args.task, "train_rows": len(data["train"]),
              "dev_rows": len(data["dev"]), "epochs": args.epochs, "main_metric": spec.main_metric,
              "majority": majority, "rows": rows,
              "speedup": rows[0]["minutes"] / max(rows[1]["minutes"], 1e-9)}
    text = markdown(result)
    write_results(results_dir("teacher", f"precision-{name}"), result, text)
    print(text)
    return 0


def markdown(result: dict) -> str:
    metrics = list(result["majority"])
    native = "computes bf16 natively" if result["bf16_native"] else "does not compute bf16 natively"
    lines = [f"# {result['task']}: the teacher's fine-tuning in fp32 and in bf16", "",
             f"Command: `{result['command']}`", "",
             f"Machine: {result['cpu']} ({result['machine']}; {native}; {result['threads']} threads).", "",
             f"{result['train_rows']:,} train / {result['dev_rows']:,} dev rows; the bundled MiniLM, seed 42, "
             f"batch 32, lr 5e-5, {result['epochs']} epoch(s), the best dev epoch kept; "
             "the two runs one after the other.", "",
             "| precision | minutes | " + " | ".join(f"dev {m}" for m in metrics) + " |",
             "|---|---|" + "---|" * len(metrics)]
    for row in result["rows"]:
        minutes = "reused" if row["reused"] else f"{row['minutes']:.1f}"
        lines.append(f"| {row['precision']} | {minutes} | "
                     + " | ".join(f"{100 * row['dev_metrics'][m]:.2f}" for m in metrics) + " |")
    lines.append("| always the majority class | | " + " | ".join(f"{100 * result['majority'][m]:.2f}"
                                                           for m in metrics) + " |")
    lines += ["", f"bf16 over fp32: {result['speedup']:.2f}x faster (wall time of the whole fine-tuning, "
              "dev passes included)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
