"""One prepared GPU check: the whole pipeline on a few thousand SST-2 rows, timed step by step.

    bash bench/gpu_check.sh OUT          # on a GPU machine: under 6 minutes on one GPU
    bash bench/gpu_check.sh --cpu OUT    # the same steps on the CPU at a tiny scale (keeps the script alive)

Steps, each the ``nni-adabert`` command a user types: ``teacher`` (fine-tuning, probes, the
knowledge store: its rows per second) -> ``search`` -> ``retrain`` -> ``evaluate --speed``; then
the search-step time of our single-path strategy against NNI's GumbelDARTS on the device
(``bench/search_step.py``), and a DDP search over every GPU when there are several. Writes
OUT/result.json and OUT/result.md; the runs go to ``--runs-dir`` (default runs/gpu-check/<cpu|gpu>).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

if "--cpu" in sys.argv:  # before torch is imported: nothing may see a GPU
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from common import GLUE_DIR, ROOT, command_line, cpu_model, machine, timed, write_results  # noqa: E402
from nni_adabert.teacher.run import open_teacher_run  # noqa: E402
from nni_adabert.workflows.evaluate import compare_with_teacher  # noqa: E402

# Per device: train rows, search/retrain epochs, timed search steps.
SCALE = {"gpu": {"rows": 4000, "epochs": 2, "steps": 20}, "cpu": {"rows": 96, "epochs": 1, "steps": 2}}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu", action="store_true", help="run on the CPU at a tiny scale, even where a GPU is present")
    p.add_argument("--out", required=True, type=Path, help="the folder of the results (and of the runs)")
    p.add_argument("--data", default=None, help="GLUE folder (default: ../shared/data/glue when present, else the "
                   "bundled SST-2 sample)")
    p.add_argument("--runs-dir", type=Path, default=None, help="where the runs go (default: runs/gpu-check/<cpu|gpu>)")
    p.add_argument("--rows", type=int, default=None, help="train rows (default: 4000 on a GPU, 96 with --cpu)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if not args.cpu and not torch.cuda.is_available():
        print("bench/gpu_check.sh: no GPU here; run it with --cpu to check the steps on the CPU", file=sys.stderr)
        return 2
    kind = "cpu" if args.cpu else "gpu"
    scale = SCALE[kind]
    rows = args.rows or scale["rows"]
    data = args.data or (GLUE_DIR if Path(GLUE_DIR, "SST-2").is_dir() else None)
    runs = args.runs_dir or ROOT / "runs" / "gpu-check" / kind
    cache = runs / "cache"
    teacher, searched, retrained = runs / "teacher", runs / "search", runs / "retrain"
    epochs = ["--epochs", str(scale["epochs"])]
    steps = {
        "teacher": timed(["teacher", "--task", "SST-2", *(["--data", data] if data else []), "--train-limit",
                          str(rows), "--epochs", "1", "--aug-copies", "1", "--output-dir", str(teacher),
                          "--cache-dir", str(cache), "--no-progress"]),
        "search": timed(["search", "--teacher", str(teacher), "--output-dir", str(searched), *epochs,
                         "--warmup-epochs", "0", "--max-params", "6400000", "--no-progress"]),
        "retrain": timed(["retrain", "--teacher", str(teacher), "--arch", str(searched), "--output-dir",
                          str(retrained), *epochs, "--no-progress"]),
    }
    if torch.cuda.device_count() > 1:
        steps["search_ddp"] = timed(["search", "--teacher", str(teacher), "--output-dir", str(runs / "search-ddp"),
                                     *epochs, "--warmup-epochs", "0", "--max-params", "6400000", "--devices",
                                     str(torch.cuda.device_count()), "--no-progress"])
    store = open_teacher_run(teacher)
    start = time.perf_counter()
    compared = compare_with_teacher(store, retrained, speed=True)
    steps["evaluate"] = {"command": "compare_with_teacher (nni-adabert evaluate --speed)",
                         "seconds": round(time.perf_counter() - start, 1)}
    start = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "bench" / "search_step.py"), "--device", "cpu" if args.cpu else "cuda",
                    "--variants", "single,gumbel_darts", "--steps", str(scale["steps"]), "--slow-steps",
                    str(max(2, scale["steps"] // 4)), "--epoch-rows", "0", "--out", str(args.out), "--name", kind],
                   check=True)
    steps["search_step"] = {"command": "bench/search_step.py", "seconds": round(time.perf_counter() - start, 1)}
    step_result = json.loads((args.out / "search-step" / kind / "result.json").read_text())

    result = {"command": command_line(["bench/gpu_check.py", *argv]), "machine": machine(), "cpu": cpu_model(),
              "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU",
              "gpus": torch.cuda.device_count(), "train_rows": rows, "steps": steps,
              "total_minutes": round(sum(s["seconds"] for s in steps.values()) / 60, 1),
              "teacher_dev": compared["teacher"]["dev_metrics"], "student_dev": compared["student"]["dev_metrics"],
              "student_params": compared["student"]["params"], "speedup_over_teacher": compared["student"]["speedup"],
              "knowledge_rows": len(store.data["train"]) + len(store.data["dev"]),
              "search_step": step_result["ratios"]}
    write_results(args.out, result, markdown(result))
    print(markdown(result))
    return 0


def markdown(result: dict) -> str:
    lines = [f"# GPU check on {result['device']}", "", f"Command: `{result['command']}`", "",
             f"Machine: {result['cpu']} ({result['machine']}); {result['gpus']} GPU(s).", "",
             f"{result['train_rows']:,} SST-2 train rows; total {result['total_minutes']} min.", "",
             "| step | seconds | command |", "|---|---|---|"]
    lines += [f"| {name} | {step['seconds']} | `{step['command']}` |" for name, step in result["steps"].items()]
    acc = lambda m: f"{100 * m['accuracy']:.2f}"  # noqa: E731
    lines += ["", f"Teacher dev accuracy {acc(result['teacher_dev'])}; student {acc(result['student_dev'])} "
                  f"({result['student_params']:,} params, {result['speedup_over_teacher']:.1f}x the teacher's speed "
                  "at batch 128).", "", f"Knowledge store: {result['knowledge_rows']:,} rows.", "",
              "NNI's GumbelDARTS step over our single-path step: "
              f"{result['search_step']['gumbel_darts_over_single']:.1f}x (search-step/).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
