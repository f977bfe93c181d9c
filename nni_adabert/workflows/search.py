"""``nni-adabert search``: search a student on a teacher-knowledge store and export it.

The glue between the paper's pieces and NNI: :func:`run_search` builds the model space
from the store (vocabulary, labels, the teacher's factorized embedding), runs
``NasExperiment(space, Lightning(AdaBertDistillModule), AdaBertStrategy)``, optionally
fine-tunes the argmax child, and exports it with its trained weights
(:func:`export.write_student`).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytorch_lightning as pl
from nni.nas.evaluator.pytorch import Lightning, Trainer
from nni.nas.experiment import NasExperiment

from .. import runs
from ..config import SearchConfig
from ..errors import UserError
from ..model.pretrained import architecture_of
from ..model.space import DEAD_CELL, AdaBertSpace, factorized_embedding, reads_inputs, resolve_space
from ..nas.budget import budget_warnings, budgets_of, check_budgets
from ..nas.distill import AdaBertDistillModule, val_metric_key
from ..nas.strategy import AdaBertStrategy
from ..teacher.knowledge import KnowledgeStore, holdout_split, row_loader
from ..training import is_main_process, make_trainer, trained_seconds
from .candidates import candidate_runs, draw_candidates, fast_enough, pick_candidate, time_candidates
from .evaluate import evaluate_student, warn_if_no_better_than_majority
from .export import ARCH_FILE, write_student
from .speed import latency_table, reference_config
from .student import searched_student_config, space_identity, student_info, train_student

log = logging.getLogger(__name__)

# Below this :func:`strategy.top_prob_ratio` the exported cell is close to a random draw. Measured
# at the end of default searches: 1.35 on full SST-2 (students within 1 point of the teacher
# with a budget), 1.08 and 1.15 on MRPC (cells no better than random ones; docs/results.md).
UNDECIDED_RATIO = 1.2


def is_undecided(history: list[dict], config: SearchConfig) -> bool:
    """Whether the architecture moved during the search (:attr:`SearchConfig.architecture_moves`) but
    its distributions ended nearly uniform (the last epoch's ``top_prob_ratio`` in ``history`` below
    :data:`UNDECIDED_RATIO`)."""
    ratio = history[-1].get("top_prob_ratio") if history else None
    return ratio is not None and config.architecture_moves and ratio < UNDECIDED_RATIO


def picks_among_candidates(history: list[dict], config: SearchConfig) -> bool:
    """Whether the exported child is picked among ``--candidates`` (:mod:`candidates`): when the
    search ended undecided (:func:`is_undecided`), or under a speed budget. There the hinge stops
    at E[time] = T and leaves flat distributions skewed towards cheap ops, whose top_prob_ratio
    (2.87 on full SST-2 at 100x) says the budget, not the task, decided: the one child exported from
    them retrained to 85.44, the best of 8 candidates to 87.73 (docs/results.md)."""
    moved = config.architecture_moves and bool(history)
    return config.candidates > 1 and (is_undecided(history, config) or (moved and config.min_speedup is not None))


def warn_if_undecided(history: list[dict], config: SearchConfig, candidates: int = 0) -> bool:
    """Warn, and return True, when the search ended undecided (:func:`is_undecided`); ``candidates``:
    how many children the exported one was picked among (:mod:`candidates`), so only say so."""
    if not is_undecided(history, config):
        return False
    ratio = history[-1]["top_prob_ratio"]
    if candidates > 1:
        log.info("search: the architecture distributions ended nearly uniform (top_prob_ratio %.2f), so the "
                 "exported child is the best of %d candidates drawn from them, each trained %d epoch(s) and scored "
                 "on held-out train examples", ratio, candidates, config.candidate_epochs)
        return True
    log.warning("search: the architecture distributions ended nearly uniform (the most likely candidate of a "
                "choice is %.2fx as likely as a uniform pick, on average; 1.00 = undecided), so the exported cell "
                "is close to a random one of the space: search longer (--epochs), on more rows "
                "(--augmented-limit, more --aug-copies in the teacher run), or pick among --candidates", ratio)
    return True


def train_loaders(store: KnowledgeStore, config: SearchConfig):
    """The search's train batches: one loader of the store's rows, or with ``arch_holdout`` the
    dict ``{"weights": ..., "arch": ...}`` of the two sides of :func:`knowledge.holdout_split`
    (Lightning draws one batch of each per step; :class:`AdaBertLightningModule` steps the
    architecture on the held-out one)."""
    rows = store.rows("train", config.train_limit, config.augmented_limit)
    grouped = config.group_by_length
    if config.arch_holdout == 0:
        return row_loader(rows, config.batch_size, shuffle=True, seed=config.seed, group_by_length=grouped)
    if not store.records_origins:
        raise UserError(f"search setting arch_holdout needs a knowledge store that records each augmented row's "
                        f"original; {store.path} was built before stores did: run nni-adabert teacher again "
                        f"(it rebuilds the store, not the teacher) or pass --arch-holdout 0")
    weight_rows, arch_rows = holdout_split(rows, config.arch_holdout, config.seed)
    return {"weights": row_loader(weight_rows, config.batch_size, shuffle=True, seed=config.seed,
                                  group_by_length=grouped),
            "arch": row_loader(arch_rows, config.batch_size, shuffle=True, seed=config.seed + 1,
                               group_by_length=grouped)}


def search_run_settings(config: SearchConfig, store: KnowledgeStore) -> dict:
    """What names a search (its identity with the store, :func:`runs.identity`): the settings, the
    space resolved for the store's task and named only when it is not the paper's
    (:func:`student.space_identity`)."""
    settings = {k: v for k, v in config.identity().items() if k != "space"}
    return {**settings, **space_identity(resolve_space(config.space, store.spec.is_pair))}


# What happens after the search phase: how the exported child is picked and fine-tuned.
DERIVATION_SETTINGS = ("finetune_epochs", "candidates", "candidate_epochs")


def search_phase(config: SearchConfig, store: KnowledgeStore) -> dict:
    """The settings the search phase's checkpoints are written under: all but the derivation's
    (:data:`DERIVATION_SETTINGS`), so a finished search resumes under another ``finetune_epochs`` or
    ``candidates`` and only what follows the search runs."""
    return {k: v for k, v in search_run_settings(config, store).items() if k not in DERIVATION_SETTINGS}


def run_search(store: KnowledgeStore, out_dir: str | os.PathLike, config: SearchConfig = SearchConfig(),
               progress: bool = True, report_to_nni: bool = False) -> dict:
    """Search a student on ``store`` and export it to ``out_dir``; returns the architecture document.

    The run checkpoints every epoch in ``out_dir/search`` and resumes from there; a
    finished run with the same settings and store is returned as it is; it holds ``out_dir``'s
    lock while it works (:mod:`runs`).
    """
    with runs.locked(out_dir):
        return _search(store, Path(out_dir), config, progress, report_to_nni)


# What a search trains after its search phase, for the child it derives (see DERIVATION_SETTINGS).
CANDIDATES_DIR, FINETUNE_DIR = "candidates", "finetune"


def export_problem(record: dict) -> str | None:
    """Why a finished search's record cannot stand as it is: its cell does not read its inputs
    (:func:`reads_inputs`), or the record cannot be read; ``None`` when it can."""
    try:
        config, arch = architecture_of(record)
    except UserError as exc:
        return f"its architecture record cannot be read ({exc})"
    return None if reads_inputs(arch, config) else DEAD_CELL


def rederive(out_dir: Path, run_dir: Path, problem: str) -> None:
    """A finished search whose export has a ``problem`` (:func:`export_problem`: e.g. exported before
    the derivation checked its cell) is derived again from its last checkpoint: what was trained for
    the old child goes."""
    resumes = runs.checkpoint_file(run_dir).is_file()
    log.warning("search in %s finished with a student: %s; %s", out_dir, problem,
                "deriving it again from its last checkpoint" if resumes else "its checkpoint is gone: searching again")
    for name in (CANDIDATES_DIR, FINETUNE_DIR):
        shutil.rmtree(out_dir / name, ignore_errors=True)


def _search(store: KnowledgeStore, out_dir: Path, config: SearchConfig, progress: bool, report_to_nni: bool) -> dict:
    run_dir = out_dir / "search"
    run_identity = runs.identity(search_run_settings(config, store), store)
    done = runs.finished(out_dir / ARCH_FILE, run_identity)
    problem = None if done is None else export_problem(done)
    if done is not None and problem is None:
        log.info("search already finished in %s with these settings; not redoing it", out_dir)
        return done
    if done is not None:
        rederive(out_dir, run_dir, problem)
    space_config = searched_student_config(store, config)
    latency = None
    if config.min_speedup is not None:
        latency = latency_table(store, space_config, config.speedup_over, config.latency_batch_size,
                                config.latency_threads, echo=log.info)
    # Before anything is written: a budget no child meets is the user's to fix.
    budgets = budgets_of(space_config, config, latency)
    check_budgets(space_config, budgets)
    for line in budget_warnings(space_config, budgets):
        log.warning(line)
    train = train_loaders(store, config)  # and a split the store cannot make
    if not config.architecture_moves:
        log.warning("search: --warmup-epochs %d covers all %d epochs, so the architecture never moves; raise "
                    "--epochs or lower --warmup-epochs", config.warmup_epochs, config.epochs)
    # Refused (another run's checkpoint) before any setup:
    phase_identity = runs.identity(search_phase(config, store), store)
    resume = runs.last_checkpoint(run_dir, phase_identity)
    pl.seed_everything(config.seed, workers=True)
    embedding = factorized_embedding(store.word_embeddings(), config.embed_dim)
    space = AdaBertSpace(space_config, embedding)

    dev = store.loader("dev", 256)
    trainer = make_trainer(run_dir, config.epochs, progress=progress, trainer_cls=Trainer, seed=config.seed,
                           devices=config.devices)
    module = AdaBertDistillModule(store.meta["num_labels"], config, beta=config.efficiency_beta,
                                  report_to_nni=report_to_nni,
                                  main_metric=val_metric_key(store.spec.main_metric), task=store.spec.to_dict())
    evaluator = Lightning(module, trainer, train_dataloaders=train, val_dataloaders=dev,
                          fit_kwargs={"ckpt_path": str(resume) if resume else None, "weights_only": True})
    strategy = AdaBertStrategy(config, seed=config.seed, grad_clip=config.grad_clip, latency=latency)
    experiment = NasExperiment(space, evaluator, strategy)
    experiment.config.experiment_working_directory = str((run_dir / "nni").resolve())
    experiment.run()
    experiment.stop()

    arch = experiment.export_top_models(formatter="dict")[0]
    student = space.freeze(arch).cpu().eval()
    history = [{k: v for k, v in h.items() if k != "arch"} for h in strategy.oneshot_module.history]
    candidates = timed = trained = None
    trained_dirs = [run_dir]  # the runs whose training this search's record counts
    if picks_among_candidates(history, config):
        if store.records_origins:
            archs = draw_candidates(space_config, strategy.oneshot_module.export_probs(), arch, config.candidates,
                                    config.seed, budgets)
            if latency is not None:  # the table predicts; the child itself, timed, meets the budget or not
                timed = time_candidates(space_config, archs, latency, reference_config(store, config.speedup_over))
                trained = fast_enough([t["measured"] for t in timed], config.min_speedup)
            # Named by the search phase: another --candidates count reuses the candidates already trained.
            student, candidates = pick_candidate(store, archs, config, out_dir / CANDIDATES_DIR,
                                                 {**phase_identity, "candidate_epochs": config.candidate_epochs},
                                                 progress, trained)
            arch = student.arch
            trained_dirs += candidate_runs(out_dir / CANDIDATES_DIR, len(archs), trained).values()
        else:
            log.warning("search: --candidates needs a knowledge store that records each augmented row's original; "
                        "%s was built before stores did (nni-adabert teacher rebuilds it)", store.path)
    if config.finetune_epochs > 0:
        student = train_student(student, store, out_dir / FINETUNE_DIR, config.finetune_config(), run_identity,
                                progress, report_to_nni)
        trained_dirs.append(out_dir / FINETUNE_DIR)
    predicted = {"predicted_speedup": {"over": config.speedup_over, "speedup": latency.speedup(space_config, arch),
                                       "latency_table": latency.setting}} if latency is not None else {}
    measured = [t["measured"] for t in timed or () if t["arch"] == arch]
    if measured:
        predicted["predicted_speedup"]["measured"] = measured[0]  # the child timed, on the table's batches
    info = {**student_info(store), **evaluate_student(student, store), **predicted,
            "search": {**config.to_dict(), "history": history,
                       **({"candidates_tried": [c.to_dict() for c in candidates]} if candidates else {}),
                       **({"candidates_timed": timed} if timed else {})},
            "train_seconds": trained_seconds(trained_dirs), runs.IDENTITY_KEY: run_identity}
    if not is_main_process():
        return info  # the other DDP processes: the first one warns and writes
    warn_if_undecided(history, config, len(candidates or ()))
    # The paper keeps the supernet's weights; a rarely sampled child may come out uncalibrated.
    if config.finetune_epochs == 0:
        warn_if_no_better_than_majority(info["dev_metrics"], store,
                                        "fine-tune it (--finetune-epochs 2) or retrain it (nni-adabert retrain)")
    return write_student(out_dir, student, info, title=f"{store.meta['task']} searched cell",
                         tokenizer=store.tokenizer)
