"""Time per retraining step of one child, by part: forward and loss, backward, and the AdamW step, fused or not.

One process, the child of an exported ``architecture.json`` built fresh (its embedding random: it does not change
the speed), synthetic token-shaped batches of ``--batch-size`` rows padded to ``--seq-len`` (lengths between L/4
and L), teacher logits of a 6-layer teacher, ``retrain``'s default loss; the two optimizers alternate step by step
so that both see the same machine state. Ratios are the result, not absolute times.

    python bench/retrain_step.py --arch bench/results/pipeline/SST-2-speedup100-amd/architecture-seed0.json

Writes bench/results/retrain-step/<name>/result.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from common import command_line, cpu_model, machine, results_dir, write_results
from search_step import synthetic_rows
from nni_adabert.config import RetrainConfig
from nni_adabert.model.space import AdaBertStudent, StudentConfig
from nni_adabert.nas.distill import AdaBertDistillModule
from nni_adabert.training import weight_decay_groups

PARTS = ("forward and loss", "backward", "optimizer")
OPTIMIZERS = {"AdamW": {}, "AdamW, fused": {"fused": True}}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", required=True, help="an exported architecture.json")
    p.add_argument("--batch-size", type=int, default=RetrainConfig().batch_size)
    p.add_argument("--seq-len", type=int, default=40, help="padded length of a batch (SST-2's: about 40)")
    p.add_argument("--steps", type=int, default=40, help="timed steps per optimizer (after 5 untimed)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--name", default="retrain-step", help="run name: bench/results/retrain-step/<name>/")
    return p.parse_args(argv)


def step_parts(module: AdaBertDistillModule, optimizer: torch.optim.Optimizer, batch: dict) -> list[float]:
    """One training step; seconds of each of :data:`PARTS`."""
    marks = [time.perf_counter()]
    loss = module.compute_loss(batch).total
    marks.append(time.perf_counter())
    optimizer.zero_grad()
    loss.backward()
    marks.append(time.perf_counter())
    optimizer.step()
    marks.append(time.perf_counter())
    return [b - a for a, b in zip(marks, marks[1:])]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    doc = json.loads(Path(args.arch).read_text())
    config = StudentConfig(**doc["student_config"])
    rows = synthetic_rows(args.batch_size, args.seq_len, config.vocab_size, config.num_labels, 7, seed=0)
    batch = {key: torch.stack([row[key] for row in rows]) for key in rows[0]}
    runs, defaults = {}, RetrainConfig()
    for name, options in OPTIMIZERS.items():  # one child each, the same fresh weights
        torch.manual_seed(0)
        module = AdaBertDistillModule(config.num_labels, defaults)
        module.set_model(AdaBertStudent(config, doc["architecture"]).train())
        groups = weight_decay_groups(module.model, defaults.weight_decay)
        runs[name] = (module, torch.optim.AdamW(groups, lr=defaults.lr, **options), [])
    drift = []  # after the first step and after the last: the largest difference between the two children
    for i in range(5 + args.steps):
        for module, optimizer, times in runs.values():
            torch.manual_seed(i)  # the same dropout masks in both
            parts = step_parts(module, optimizer, batch)
            if i >= 5:
                times.append(parts)
        if i in (0, 4 + args.steps):
            (a, *_), (b, *_) = runs.values()
            drift.append(max((x - y).abs().max().item() for x, y in zip(a.model.parameters(), b.model.parameters())))
    medians = {name: {part: 1000 * statistics.median(t[j] for t in times) for j, part in enumerate(PARTS)}
               for name, (_, _, times) in runs.items()}
    steps = {name: 1000 * statistics.median(sum(t) for t in times) for name, (_, _, times) in runs.items()}
    plain, fused = steps.values()
    result = {"command": command_line(["bench/retrain_step.py", *argv]), "cpu": cpu_model(), "machine": machine(),
              "threads": args.threads, "arch": args.arch, "params": doc.get("params"),
              "batch_size": args.batch_size, "seq_len": args.seq_len, "steps": args.steps,
              "ms_per_part": medians, "ms_per_step": steps, "speedup_fused": plain / fused,
              "max_weight_difference": {"first step": drift[0], "last step": drift[1]}}
    write_results(results_dir("retrain-step", args.name), result, markdown(result))
    print(markdown(result))
    return 0


def markdown(result: dict) -> str:
    lines = ["# A retraining step, by part: AdamW fused or not", "", f"Command: `{result['command']}`", "",
             f"Machine: {result['cpu']} ({result['machine']}), {result['threads']} thread(s).", "",
             f"The child of `{result['arch']}` ({result['params']:,} params), batches of {result['batch_size']} rows "
             f"padded to {result['seq_len']} tokens; median milliseconds of {result['steps']} steps each, the two "
             "optimizers alternating in one process.", "",
             "| optimizer | " + " | ".join(PARTS) + " | step |", "|---|" + "---|" * (len(PARTS) + 1)]
    for name, parts in result["ms_per_part"].items():
        lines.append(f"| {name} | " + " | ".join(f"{parts[p]:.1f}" for p in PARTS) +
                     f" | {result['ms_per_step'][name]:.1f} |")
    drift = result["max_weight_difference"]
    lines += ["", f"A step with the fused AdamW: {result['speedup_fused']:.2f}x the speed. The two children, "
                  f"trained on the same batch with the same dropout masks, differ by at most {drift['first step']:.1e} "
                  f"after the first step (float rounding) and {drift['last step']:.1e} after the "
                  f"{5 + result['steps']}th: Adam divides each step by the root of its second moment, which "
                  "magnifies rounding where gradients are tiny."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
