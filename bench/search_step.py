"""Time per search step and per epoch: AdaBertStrategy (single-path / full straight-through) vs NNI's GumbelDARTS.

One run, one process, same space (K_max=8, D=128, vocab 30522), same synthetic
token-shaped batches (real WordPiece id range, variable lengths, teacher logits for a
6-layer teacher), each strategy run through ``NasExperiment`` exactly as a user would.
A Lightning callback times every training step; the first ``--warmup`` steps are
dropped. With ``--epoch-rows N`` each variant also runs one whole epoch over N rows
(N / batch steps), timed from the epoch's start to its end: a measured time per epoch,
not an extrapolation. Ratios are reported, not absolute times (those depend on the machine).

    python bench/search_step.py                                 # default, a few minutes on 2 CPU cores
    python bench/search_step.py --device cuda --batch-size 64 --name cuda

Writes result.json and result.md into bench/results/search-step/<name>/ (default: default).

Variants:
  single       AdaBertStrategy, single-path, one joint weight+architecture step (default)
  single_alt   AdaBertStrategy, single-path, DARTS-style alternation (2 forward/backward per step)
  full         AdaBertStrategy, full straight-through (every op, every cell)
  gumbel_darts NNI's built-in GumbelDARTS (soft, every op, every cell, alternation)
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pytorch_lightning as pl  # noqa: E402
from nni.nas.evaluator.pytorch import DataLoader, Lightning, Trainer  # noqa: E402
from nni.nas.experiment import NasExperiment  # noqa: E402
from nni.nas.strategy import GumbelDARTS  # noqa: E402

from common import RESULT_JSON, RESULT_MD, command_line, results_dir  # noqa: E402
from nni_adabert.atomic import write_json, write_text  # noqa: E402
from nni_adabert.nas.distill import AdaBertDistillModule  # noqa: E402
from nni_adabert.model.space import AdaBertSpace, StudentConfig  # noqa: E402
from nni_adabert.nas.strategy import AdaBertStrategy  # noqa: E402

VARIANTS = {
    "single": dict(kind="adabert", full=False, alternate=False, passes=1),
    "single_alt": dict(kind="adabert", full=False, alternate=True, passes=2),
    "full": dict(kind="adabert", full=True, alternate=False, passes=1),
    "gumbel_darts": dict(kind="nni", passes=2),
}


def synthetic_rows(n: int, seq_len: int, vocab: int, num_labels: int, teacher_layers: int, seed: int):
    """Token-shaped examples: ids in the WordPiece range, lengths between L/4 and L, padded to L."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, vocab, (n, seq_len), generator=g)
    lengths = torch.randint(max(seq_len // 4, 2), seq_len + 1, (n,), generator=g)
    mask = (torch.arange(seq_len)[None] < lengths[:, None]).long()
    ids = ids * mask
    ids[:, 0] = 101                                                   # [CLS]
    labels = torch.randint(0, num_labels, (n,), generator=g)
    teacher = torch.randn(n, teacher_layers, num_labels, generator=g)
    return [dict(input_ids_a=ids[i], attention_mask_a=mask[i], labels=labels[i], teacher_logits=teacher[i])
            for i in range(n)]


class StepTimer(pl.Callback):
    """Times every training step, and the rest of the epoch after its first ``skip`` (warm-up) steps:
    from the start of step ``skip`` to the epoch's end, data loading and Lightning hooks included."""

    def __init__(self, cuda: bool, skip: int = 0):
        self.cuda, self.times, self._t0 = cuda, [], 0.0
        self.skip, self.epoch_s, self._epoch_t0 = skip, None, 0.0

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        self.epoch_s = self._now() - self._epoch_t0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._t0 = self._now()
        if batch_idx == self.skip:
            self._epoch_t0 = self._t0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.times.append(self._now() - self._t0)


def run_variant(name: str, args, config: StudentConfig, rows) -> dict:
    """Time ``--warmup`` + ``--steps`` (or ``--slow-steps``) steps of ``name``; the first ``--warmup`` are dropped."""
    spec = VARIANTS[name]
    steps = args.steps if spec["kind"] == "adabert" and not spec.get("full") else args.slow_steps
    timer = fit_variant(name, args, config, rows, args.warmup + steps)
    times = timer.times[args.warmup:]
    if len(times) < 1:
        raise RuntimeError(f"{name}: no timed steps (got {len(timer.times)} steps in total)")
    return {
        "steps_timed": len(times), "mean_s": statistics.fmean(times), "median_s": statistics.median(times),
        "min_s": min(times), "max_s": max(times), "forward_backward_per_step": spec["passes"], "times_s": times,
    }


def run_epoch(name: str, args, config: StudentConfig, rows) -> dict:
    """A whole epoch of ``name`` over ``rows``, measured: a run over ``--warmup`` batches then ``rows``,
    timed from the first step after the warm-up to the end of the epoch."""
    warm = args.warmup * args.batch_size
    timer = fit_variant(name, args, config, rows[-warm:] + rows if warm else rows, None, skip=args.warmup)
    steps = timer.times[args.warmup:]
    return {"rows": len(rows), "steps": len(steps), "seconds": timer.epoch_s, "mean_step_s": statistics.fmean(steps),
            "warmup_steps_before": args.warmup}


def fit_variant(name: str, args, config: StudentConfig, rows, n_batches: int | None, skip: int = 0) -> StepTimer:
    """Run the search of variant ``name`` through ``NasExperiment`` for one epoch over ``rows``
    (at most ``n_batches`` batches) and return its timer."""
    spec = VARIANTS[name]
    pl.seed_everything(args.seed, verbose=False)
    space = AdaBertSpace(config)
    timer = StepTimer(args.device == "cuda", skip)
    trainer = Trainer(max_epochs=1, limit_train_batches=n_batches, limit_val_batches=0, num_sanity_val_steps=0,
                      enable_checkpointing=False, logger=False, enable_progress_bar=False, enable_model_summary=False,
                      callbacks=[timer], accelerator="gpu" if args.device == "cuda" else "cpu", devices=1,
                      default_root_dir=str(args.workdir))
    loader = DataLoader(rows, batch_size=args.batch_size, shuffle=False)
    evaluator = Lightning(AdaBertDistillModule(config.num_labels), trainer,
                          train_dataloaders=loader, val_dataloaders=DataLoader(rows, batch_size=args.batch_size))
    if spec["kind"] == "adabert":
        strategy = AdaBertStrategy(full=spec["full"], alternate=spec["alternate"], seed=args.seed)
    else:
        strategy = GumbelDARTS()
    exp = NasExperiment(space, evaluator, strategy)
    exp.config.experiment_working_directory = str(args.workdir / "nni")
    exp.run()
    exp.stop()
    return timer


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("bench/results"), help="results root (bench/results)")
    p.add_argument("--name", default=None, help="run name: <out>/search-step/<name>/ (default: default)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--vocab", type=int, default=30522)
    p.add_argument("--embed-dim", type=int, default=128)
    p.add_argument("--k-max", type=int, default=8)
    p.add_argument("--steps", type=int, default=12, help="timed steps for the single-path variants")
    p.add_argument("--slow-steps", type=int, default=3, help="timed steps for full ST and GumbelDARTS")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--epoch-rows", type=int, default=512,
                   help="also time one whole epoch over this many rows per variant (0: skip)")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.getLogger("nni").setLevel(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.workdir = Path(tempfile.mkdtemp(prefix="search_step-"))  # Lightning / NNI scratch, removed at the end
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}; known: {list(VARIANTS)}")

    config = StudentConfig(vocab_size=args.vocab, num_labels=2, embed_dim=args.embed_dim, k_max=args.k_max,
                           max_positions=max(128, args.seq_len))
    n_rows = args.batch_size * (args.warmup + max(args.steps, args.slow_steps))
    rows = synthetic_rows(max(n_rows, args.epoch_rows), args.seq_len, args.vocab, 2, 6, args.seed)
    if args.epoch_rows % args.batch_size:
        p.error("--epoch-rows must be a multiple of --batch-size (whole batches)")

    results = {}
    try:
        for name in variants:
            print(f"[search_step] {name} ...", flush=True)
            results[name] = run_variant(name, args, config, rows)
            print(f"[search_step] {name}: mean {results[name]['mean_s']:.3f}s/step "
                  f"(median {results[name]['median_s']:.3f}s, {results[name]['steps_timed']} steps)", flush=True)
            if args.epoch_rows > 0:
                epoch = results[name]["epoch"] = run_epoch(name, args, config, rows[:args.epoch_rows])
                print(f"[search_step] {name}: one epoch of {epoch['rows']} rows ({epoch['steps']} steps) "
                      f"{epoch['seconds']:.1f}s", flush=True)
    finally:
        shutil.rmtree(args.workdir, ignore_errors=True)

    ratios = {}
    if "single" in results:
        for other in ("full", "gumbel_darts", "single_alt"):
            if other in results:
                ratios[f"{other}_over_single"] = results[other]["mean_s"] / results["single"]["mean_s"]
                if "epoch" in results[other] and "epoch" in results["single"]:
                    ratios[f"{other}_over_single_per_epoch"] = (results[other]["epoch"]["seconds"]
                                                                / results["single"]["epoch"]["seconds"])
    if "single_alt" in results and "gumbel_darts" in results:
        ratios["gumbel_darts_over_single_alt"] = results["gumbel_darts"]["mean_s"] / results["single_alt"]["mean_s"]

    report = {
        "command": command_line([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "setup": {"batch_size": args.batch_size, "seq_len": args.seq_len, "vocab": args.vocab,
                  "embed_dim": args.embed_dim, "k_max": args.k_max, "num_nodes": 3, "ops": len(config.op_names),
                  "teacher_layers": 6, "device": args.device, "torch_threads": torch.get_num_threads(),
                  "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
                  "warmup_steps_dropped": args.warmup, "epoch_rows": args.epoch_rows},
        "results": results,
        "ratios": ratios,
        "note": ("Time per training step of the search (forward, backward, optimizer steps), mean over the timed "
                 "steps. Single-path cost varies with the sampled depth and ops, hence more steps for it. "
                 "GumbelDARTS and single_alt do two forward/backward passes per step (architecture step on the "
                 "'val' batch, then weight step); single and full do one joint pass. "
                 f"Per epoch: a separate run of each variant over {args.warmup} warm-up batch(es) then the first "
                 f"{args.epoch_rows} synthetic rows (batch {args.batch_size}), timed from the first step after "
                 "the warm-up to the epoch's end (data loading and Lightning hooks included): a measured epoch "
                 "of those rows, not extrapolated from the step times."),
    }
    out = results_dir("search-step", args.name and f"search-step-{args.name}", root=args.out)
    write_json(out / RESULT_JSON, report)
    lines = [
        "# Search step time: AdaBertStrategy vs NNI GumbelDARTS",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Space: K_max={args.k_max}, D={args.embed_dim}, 3 nodes (9 edges), {len(config.op_names)} ops, "
        f"vocab {args.vocab}. Batch {args.batch_size} x {args.seq_len} tokens, {args.device}, "
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}.",
        "",
        "| variant | fwd+bwd per step | mean s/step | median s/step | steps timed | step ratio to `single` "
        "| s per epoch (measured) | epoch ratio to `single` |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        ratio = r["mean_s"] / results["single"]["mean_s"] if "single" in results else float("nan")
        epoch, single_epoch = r.get("epoch"), results.get("single", {}).get("epoch")
        epoch_cells = (f"{epoch['seconds']:.1f} ({epoch['rows']} rows, {epoch['steps']} steps) | "
                       + (f"{epoch['seconds'] / single_epoch['seconds']:.2f}x" if single_epoch else "-")
                       if epoch else "- | -")
        lines.append(f"| {name} | {r['forward_backward_per_step']} | {r['mean_s']:.3f} | {r['median_s']:.3f} | "
                     f"{r['steps_timed']} | {ratio:.2f}x | {epoch_cells} |")
    lines += ["", "Ratios (mean step time; `_per_epoch`: measured epoch time):", ""]
    lines += [f"- `{k}`: {v:.2f}x" for k, v in ratios.items()]
    lines += ["", report["note"], ""]
    write_text(out / RESULT_MD, "\n".join(lines))
    print(json.dumps(ratios, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
