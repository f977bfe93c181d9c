"""The default teacher recipe before and after keeping the best dev epoch and a minimum step count.

    .venv/bin/python bench/teacher_recipe.py --task MRPC
    .venv/bin/python bench/teacher_recipe.py --task SST-2 --epochs-run runs/bench/pipeline/SST-2-default/teacher

Before (up to 0.1): 3 epochs, the last one kept. After (the defaults now): 3 epochs, or as many
as make ``--min-steps`` 1000 update steps on a small train set, and the best dev epoch kept.
Each recipe is one ``finetune_teacher`` run (seed 42) on the whole task; the "before" number is
the last entry of its run's per-epoch dev metrics. Where both recipes train the same epochs
(a large task such as SST-2: 3 epochs make 6,315 steps) they are one run, and ``--epochs-run``
can name a finished 3-epoch teacher run of an older version (its TensorBoard log holds the
per-epoch dev metrics) instead of training again. Dev metrics beside the majority class.

Results: bench/results/teacher/recipe-<task>/result.{json,md}.
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

from common import (GLUE_DIR, ROOT, command_line, cpu_model, logged_epochs, machine, results_dir,  # noqa: E402
                    write_results)
from nni_adabert.data.glue import load_task  # noqa: E402
from nni_adabert.data.metrics import majority_class_metrics  # noqa: E402
from nni_adabert.data.tasks import get_task  # noqa: E402
from nni_adabert.logs import configure_logging  # noqa: E402
from nni_adabert.teacher.finetune import DEFAULT_EPOCHS, TeacherConfig, finetune_epochs, finetune_teacher  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="MRPC", help="a GLUE task")
    p.add_argument("--data", default=GLUE_DIR, help="GLUE folder (default: ../shared/data/glue or $GLUE_DIR)")
    p.add_argument("--runs-dir", default=None, help="where the teachers go (default: runs/bench/teacher-recipe/<task>)")
    p.add_argument("--epochs-run", default=None, help="a finished 3-epoch teacher run whose per-epoch dev metrics "
                   "stand for both recipes when they train the same epochs")
    return p.parse_args(argv)


def kept(history: list[dict], metric: str, best: bool) -> dict:
    entry = max(history, key=lambda h: h[f"dev_{metric}"]) if best else history[-1]
    return {"epoch": entry["epoch"], **{k[4:]: v for k, v in entry.items() if k.startswith("dev_")}}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    configure_logging(progress=False)
    spec = get_task(args.task)
    data = load_task(args.task, args.data)
    runs = Path(args.runs_dir) if args.runs_dir else ROOT / "runs" / "bench" / "teacher-recipe" / args.task
    before_config, after_config = TeacherConfig(epochs=DEFAULT_EPOCHS), TeacherConfig()
    after_epochs = finetune_epochs(after_config, len(data["train"]))
    recipes = {}
    if args.epochs_run and after_epochs == DEFAULT_EPOCHS:
        history = logged_epochs(Path(args.epochs_run) / "teacher_train" / "logs", "dev_")
        recipes["before"] = recipes["after"] = {"history": history, "run": str(args.epochs_run), "minutes": None}
    else:
        for name, config in (("before", before_config), ("after", after_config)):
            if name == "after" and after_epochs == DEFAULT_EPOCHS:
                recipes["after"] = recipes["before"]
                continue
            start = time.perf_counter()
            info = finetune_teacher(spec, data, None, runs / name, config, progress=False)
            recipes[name] = {"history": info["dev_history"], "run": str(runs / name),
                             "minutes": round((time.perf_counter() - start) / 60, 1)}
    majority = majority_class_metrics(spec, torch.tensor(list(data["dev"]["label"])))
    rows = [{"recipe": "before: 3 epochs, last kept", "epochs": len(recipes["before"]["history"]),
             "kept": kept(recipes["before"]["history"], spec.main_metric, best=False)},
            {"recipe": "after: the defaults, best dev epoch kept", "epochs": len(recipes["after"]["history"]),
             "kept": kept(recipes["after"]["history"], spec.main_metric, best=True)}]
    result = {"command": command_line(["bench/teacher_recipe.py", *argv]), "cpu": cpu_model(), "machine": machine(),
              "task": args.task, "train_rows": len(data["train"]), "dev_rows": len(data["dev"]),
              "main_metric": spec.main_metric, "majority": majority, "rows": rows, "recipes": recipes}
    text = markdown(result)
    write_results(results_dir("teacher", f"recipe-{args.task}"), result, text)
    print(text)
    return 0


def markdown(result: dict) -> str:
    metrics = list(result["majority"])
    lines = [f"# {result['task']}: the default teacher recipe, before and after", "",
             f"Command: `{result['command']}`", "", f"Machine: {result['cpu']} ({result['machine']}).", "",
             f"{result['train_rows']:,} train / {result['dev_rows']:,} dev rows; the bundled MiniLM, seed 42, "
             "batch 32, lr 5e-5.", "",
             "| recipe | epochs | kept epoch | " + " | ".join(f"dev {m}" for m in metrics) + " |",
             "|---|---|---|" + "---|" * len(metrics)]
    for row in result["rows"]:
        lines.append(f"| {row['recipe']} | {row['epochs']} | {row['kept']['epoch']} | "
                     + " | ".join(f"{100 * row['kept'][m]:.2f}" for m in metrics) + " |")
    lines.append("| always the majority class | | | " + " | ".join(f"{100 * result['majority'][m]:.2f}"
                                                               for m in metrics) + " |")
    lines += ["", "Dev metrics per epoch:", ""]
    seen = set()
    for name in ("before", "after"):
        recipe = result["recipes"][name]
        if recipe["run"] in seen:
            continue
        seen.add(recipe["run"])
        key = f"dev_{result['main_metric']}"
        lines.append(f"- {name} ({len(recipe['history'])} epochs): " + ", ".join(
            f"{h['epoch']}: {100 * h[key]:.2f}" for h in recipe["history"]))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
