"""Adaptiveness (paper Table 3): each task's searched structure and random ones, retrained on every task.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/adaptiveness.py --tasks SST-2 MRPC \\
        --rows SST-2=4000 --threads 1

Needs a teacher run per task (``bench/teacher_probes.sh``; ``--teacher-runs``). For each task it
searches a structure (``workflows.search.run_search``, the full loss with β; see ``common.search_settings``),
then retrains every structure — each task's searched one and ``space.random_arch`` with seeds
``--random-seeds`` — from fresh weights with KD from each task's cached teacher knowledge
(``workflows.retrain.run_retrain``) on every task. Rows: structures (random: mean ± std over the seeds),
columns: tasks; the cells are the task's main dev metric (SST-2: accuracy, MRPC: F1), and
accuracy in a second table. Finished runs with the same settings are reused (runs/bench/search,
runs/bench/retrain).

Writes bench/results/adaptiveness/<run>/ (``--name``; default: adaptiveness/default): result.json,
result.md and the searched cells (cell-<TASK>.png).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
from collections import defaultdict

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from common import (ROOT, add_scale_args, header, main_metric, prepare, publish, reference_text,  # noqa: E402
                    results_dir, retrain, retrain_settings, run_record, search, search_settings, student_row)
from nni_adabert.model import cost  # noqa: E402
from nni_adabert.model.space import StudentConfig, random_arch  # noqa: E402
from nni_adabert.tables import format_table, format_transfer_table  # noqa: E402
from nni_adabert.workflows.student import student_config  # noqa: E402


# Paper Table 3 (dev set; "Random": mean ± std over 5 random structures), the SST-2 and MRPC columns.
PAPER = {
    "searched on SST-2": {"SST-2": "91.9", "MRPC": "78.1"},
    "searched on MRPC": {"SST-2": "81.5", "MRPC": "84.7"},
    "random": {"SST-2": "80.4 ± 4.3", "MRPC": "79.2 ± 2.8"},
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_scale_args(p, ["SST-2", "MRPC"], "adaptiveness")
    p.add_argument("--random-seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4],
                   help="seeds of space.random_arch (the paper: 5 random structures)")
    return p.parse_args(argv)


def markdown(result: dict, args) -> str:
    tasks = result["tasks"]
    metrics = {t: main_metric(t) for t in tasks}
    tables = {}
    for metric in ("main", "accuracy"):
        table: dict = defaultdict(lambda: defaultdict(list))
        for r in result["retrained"]:
            key = metrics[r["task"]] if metric == "main" else "accuracy"
            table[r["structure"]][r["task"]].append(100 * r["dev_metrics"][key])
        tables[metric] = format_transfer_table(table, tasks=tasks)
    lines = header("Adaptiveness: searched structures across tasks (paper Table 3)", result["command"],
                   result["threads"], result["scale"])
    lines += [reference_text(result["references"]), ""]
    lines += [
        f"Retraining: every structure from fresh weights, {args.retrain_epochs} epoch(s), KD from the task's cached "
        "teacher knowledge, same rows as the search (AdamW, the library's retrain defaults). Random: "
        f"`space.random_arch` with seeds {', '.join(map(str, args.random_seeds))}, mean ± std.",
        "",
        "Dev " + ", ".join(f"{t}: {m}" for t, m in metrics.items()) + " (%):",
        "",
        tables["main"],
        "",
        "Dev accuracy (%):",
        "",
        tables["accuracy"],
        "",
        "The searched structures:",
        "",
        format_table(["searched on", "K", "params", "params w/o embedding", "FLOPs (128 tokens)", "cell (edges)"],
                     [[s["task"], s["depth"], f"{s['params']:,}", f"{s['params_without_embedding']:,}",
                       f"{s['flops']:,}", ", ".join(v for k, v in s["architecture"].items() if k != "depth")]
                      for s in result["searched"].values()]),
        "",
        "Random structures:",
        "",
        format_table(["seed", "K", "params w/o embedding", "FLOPs (128 tokens)"],
                     [[seed, a["depth"], f"{a['params_without_embedding']:,}", f"{a['flops']:,}"]
                      for seed, a in result["random"].items()]),
        "",
        *[f"- {line}" for line in result["findings"]],
        *[f"- Not run: the structure {s['structure']} on {s['task']}: {s['reason']}."
          for s in result.get("skipped", [])],
        "",
        "## The paper's numbers (Table 3, dev; its full-data BERT-base teacher)",
        "",
        "| structure | " + " | ".join(tasks) + " |",
        "|---|" + "---|" * len(tasks),
        *[f"| {name} | " + " | ".join(PAPER[name].get(t, "") for t in tasks) + " |" for name in PAPER],
        "",
        *[f"![{t} cell](cell-{t}.png)" for t in result["searched"]],
    ]
    return "\n".join(lines) + "\n"


def findings(result: dict) -> list[str]:
    """What the table says, in words (computed, so the text cannot drift from the numbers)."""
    import statistics

    out = []
    score = defaultdict(dict)
    for r in result["retrained"]:
        if r["structure"] != "random":
            score[r["structure"]][r["task"]] = 100 * r["dev_metrics"][main_metric(r["task"])]
    random = defaultdict(list)
    for r in result["retrained"]:
        if r["structure"] == "random":
            random[r["task"]].append(100 * r["dev_metrics"][main_metric(r["task"])])
    for task in result["tasks"]:
        own = score.get(f"searched on {task}", {}).get(task)
        if own is None:
            continue
        others = {s: v[task] for s, v in score.items() if s != f"searched on {task}" and task in v}
        best = all(own >= v for v in others.values())
        mean = statistics.mean(random[task]) if random[task] else None
        text = (f"{task}: its own searched structure scores {own:.2f}; "
                + (", ".join(f"{s}: {v:.2f}" for s, v in others.items()) + "; " if others else "")
                + ("best in its column" if best else "NOT best in its column"))
        if mean is not None:
            text += (f"; random mean {mean:.2f} (max {max(random[task]):.2f}): the searched structure is "
                     + ("above" if own > mean else "NOT above") + " the random mean")
        out.append(text)
    return out


def main(argv=None) -> int:
    argv, args, stores = prepare(parse_args, argv)
    searched = {task: search(store, search_settings(store, args)) for task, store in stores.items()}
    structures = [(f"searched on {task}", doc["architecture"], {"from": doc["dir"], "searched_on": task},
                   StudentConfig.from_dict(doc["student_config"])) for task, doc in searched.items()]
    # Random structures of the paper's ten ops (a single-text config of the first task's vocabulary), so
    # that every one runs on every task; a pair task retrains them in its own default space.
    space_cfg = dataclasses.replace(student_config(stores[args.tasks[0]], space="paper"), is_pair=False)
    randoms = {seed: random_arch(space_cfg, seed) for seed in args.random_seeds}
    structures += [("random", arch, {"from": f"random:{seed}", "searched_on": None}, space_cfg)
                   for seed, arch in randoms.items()]

    retrained, skipped = [], []
    for name, arch, source, space in structures:
        for task, store in stores.items():
            if "align" in arch.values() and not store.spec.is_pair:
                skipped.append({"structure": name, "task": task,
                                "reason": "its cell uses align, which compares the two texts of a pair"})
                continue
            doc = retrain(arch, source, store, retrain_settings(store, args), space)
            retrained.append({"structure": name, "source": source, **student_row(doc)})
            print(f"{name} on {task}: {doc['dev_metrics']}", flush=True)

    out = results_dir("adaptiveness", args.name)
    for task, doc in searched.items():
        shutil.copy(ROOT / doc["dir"] / "cell.png", out / f"cell-{task}.png")
    result = {
        **run_record("bench/adaptiveness.py", argv, args, stores), "paper": PAPER,
        "searched": {task: student_row(doc) for task, doc in searched.items()},
        "random": {seed: {"architecture": arch, "depth": arch["depth"],
                          "params_without_embedding": cost.child_params(space_cfg, arch, include_embedding=False),
                          "flops": cost.child_flops(space_cfg, arch, 128)} for seed, arch in randoms.items()},
        "retrained": retrained, "skipped": skipped,
    }
    return publish(out, result, findings, lambda r: markdown(r, args))


if __name__ == "__main__":
    raise SystemExit(main())
