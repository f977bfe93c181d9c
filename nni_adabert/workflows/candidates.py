"""When a search ends undecided, or under a speed budget: the exported child is picked among a few
children drawn from the search's distributions, each trained briefly and scored on train examples
held out from it.

The argmax of nearly uniform distributions is close to a random child, and random children of one
space retrain to very different students (MRPC: 74 to 85 F1, docs/results.md). A short training
of each candidate tells them apart where the supernet's shared weights do not: the search's
distributions say which children to try, the held-out examples which one to keep. Under a speed
budget the distributions end flat too (the hinge stops at the budget), and each child drawn is
timed before it is trained, and only those timed within the budget are (:func:`fast_enough`): the
latency table's prediction was 14% too fast for a cell of pools.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from pathlib import Path
from typing import Any, Mapping, Sequence

import pytorch_lightning as pl

from ..config import SearchConfig
from ..data.encoding import IGNORE_LABEL
from ..model import cost
from ..model.latency import LatencyTable, measure_speedups
from ..model.space import AdaBertStudent, reads_inputs
from ..nas.budget import Budget
from ..teacher.knowledge import KnowledgeStore, holdout_split, row_loader
from .evaluate import dev_metrics
from .student import fresh_student, searched_student_config, train_student

log = logging.getLogger(__name__)

HELD_OUT_SHARE = 0.2  # of the train examples (with their augmented copies), for scoring the candidates
DRAWS_PER_CANDIDATE = 100  # draws tried per candidate wanted before settling for fewer (all alike, or over budget)


@dataclasses.dataclass
class Candidate:
    """One child tried: its architecture, and its metrics on the held-out train examples."""

    arch: dict
    held_out_metrics: dict
    params: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def draw_candidates(config, probs: Mapping[str, Mapping[Any, float]], first: Mapping[str, Any], count: int,
                    seed: int = 0, budgets: Sequence[Budget] = ()) -> list[dict]:
    """``first`` (the child the search exports), then up to ``count - 1`` other distinct children,
    each choice drawn from its distribution in ``probs`` (``{label: {candidate: probability}}``,
    :meth:`AdaBertLightningModule.export_probs`), each within every budget's ``[minimum, maximum]``
    and with a cell that reads its inputs (:func:`space.reads_inputs`)."""
    rng = random.Random(seed)
    chosen = [dict(first)]
    for _ in range(DRAWS_PER_CANDIDATE * count):
        if len(chosen) >= count:
            break
        arch = {label: rng.choices(list(p), weights=list(p.values()))[0] for label, p in probs.items()}
        if arch not in chosen and reads_inputs(arch, config) and all(b.fits(config, arch) for b in budgets):
            chosen.append(arch)
    return chosen


def time_candidates(config, archs: Sequence[dict], latency: LatencyTable, reference_config) -> list[dict]:
    """``{"arch", "predicted", "measured"}`` speedup over the reference of each child of ``archs``:
    predicted by ``latency``, and measured (:func:`latency.measure_speedups`, one round-robin)."""
    timed = [{"arch": arch, "predicted": latency.speedup(config, arch), "measured": measured}
             for arch, measured in zip(archs, measure_speedups(config, archs, latency, reference_config))]
    for t in timed:
        log.info("candidate (depth %d): timed %.1fx, predicted %.1fx", t["arch"]["depth"], t["measured"],
                 t["predicted"])
    return timed


def fast_enough(speedups: Sequence[float], min_speedup: float) -> list[int]:
    """Which of the candidates timed at ``speedups`` (:func:`latency.measure_speedups`) to train: those
    at least ``min_speedup`` times as fast as the reference, or the fastest alone when none is."""
    kept = [i for i, speedup in enumerate(speedups) if speedup >= min_speedup]
    if kept:
        return kept
    fastest = max(range(len(speedups)), key=speedups.__getitem__)
    log.warning("search: no candidate runs at %sx the reference's speed when timed (the fastest: %.1fx); keeping "
                "the fastest", f"{min_speedup:g}", speedups[fastest])
    return [fastest]


def task_score(metrics: Mapping[str, float]) -> float:
    """The mean of a task's metrics, as GLUE scores a task (MRPC: F1 and accuracy). F1 alone would
    favour a child that calls every pair a paraphrase (F1 81 on MRPC with 68% positive pairs)."""
    return sum(metrics.values()) / len(metrics)


def candidate_runs(run_dir: Path, count: int, only: Sequence[int] | None = None) -> dict[int, Path]:
    """``{index: run directory}`` of the candidates :func:`pick_candidate` trains: all ``count``, or ``only``."""
    return {i: run_dir / str(i) for i in (range(count) if only is None else only)}


def pick_candidate(store: KnowledgeStore, archs: Sequence[dict], config: SearchConfig, run_dir: Path,
                   run_identity: dict, progress: bool = True, only: Sequence[int] | None = None
                   ) -> tuple[AdaBertStudent, list[Candidate]]:
    """Train each child of ``archs`` (or those at the indices ``only``: :func:`fast_enough`'s) from fresh
    weights (:meth:`SearchConfig.candidate_config`) on the search's train rows less a seeded
    :data:`HELD_OUT_SHARE` of the examples, score it on those held-out examples' labels
    (:func:`task_score`) and return the best one, trained (ties: the earlier one, so the more
    probable), with every candidate's scores. Each training checkpoints under ``run_dir/<index>``
    and resumes."""
    training = config.candidate_config()
    rows = store.rows("train", config.train_limit, config.augmented_limit)
    kept, held_out = holdout_split(rows, HELD_OUT_SHARE, config.seed)
    held_out = held_out.filter(lambda label: label != IGNORE_LABEL, input_columns="label")  # gold labels only
    train = row_loader(kept, training.batch_size, shuffle=True, seed=training.seed,
                       group_by_length=training.group_by_length)
    scoring = row_loader(held_out, 256)
    space_config = searched_student_config(store, config)
    best, candidates = None, []
    trained = candidate_runs(run_dir, len(archs), only)
    for n, (i, candidate_dir) in enumerate(trained.items()):
        arch = archs[i]
        pl.seed_everything(training.seed)  # each candidate's fresh weights, whatever ran before it
        student = fresh_student(arch, store, space_config)
        identity = {**run_identity, "candidate": arch}
        student = train_student(student, store, candidate_dir, training, identity, progress, train=train,
                                val=scoring)
        metrics = dev_metrics(lambda inputs: student(**inputs, return_probes=False).logits, store, scoring)
        candidates.append(Candidate(arch, metrics, cost.child_params(student.config, arch)))
        score = task_score(metrics)
        log.info("candidate %d of %d (depth %d, %s params): held-out %s", n + 1, len(trained), arch["depth"],
                 f"{candidates[-1].params:,}", ", ".join(f"{k} {100 * v:.2f}" for k, v in metrics.items()))
        if best is None or score > best[0]:
            best = (score, student)
    return best[1], candidates
