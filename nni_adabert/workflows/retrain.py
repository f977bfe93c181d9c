"""``nni-adabert retrain``: a fixed architecture trained from fresh weights, on the task it
was searched on or on another one."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import pytorch_lightning as pl

from .. import runs
from ..config import RetrainConfig
from ..errors import UserError
from ..model.space import DEAD_CELL, StudentConfig, random_arch, reads_inputs, resolve_space, validate_arch
from ..teacher.knowledge import KnowledgeStore
from ..training import is_main_process, trained_seconds
from .evaluate import evaluate_student, warn_if_no_better_than_majority
from .export import ARCH_FILE, load_exported, write_student
from .student import (fresh_student, pooling_identity, retrain_space, space_identity, student_config, student_info,
                      train_student)

log = logging.getLogger(__name__)

RANDOM_PREFIX = "random:"
# The help of --arch and of the options that shape a random one (CLI and NNI trials).
ARCH_HELP = (f"architecture.json (or its directory) to retrain, or '{RANDOM_PREFIX}<seed>' for a seeded random "
             "architecture of the space (the paper's Table 3 baseline)")
ARCH_GROUP_HELP = (f"--embed-dim, --k-max and --space shape a '{RANDOM_PREFIX}<seed>' architecture; an exported one is "
                   "rebuilt in its own space")


@dataclasses.dataclass(frozen=True)
class ArchToRetrain:
    """A fixed child and the space to build it in: what ``--arch`` names, resolved."""

    arch: dict
    source: dict  # {"from": file or "random:<seed>", "searched_on": task or None}
    embed_dim: int
    k_max: int
    space: str  # the pair space; "auto" is resolved for the store's task where it is used
    pooling: str  # the exported student's (mean for a random one); a retraining's --pooling overrides it

    @classmethod
    def of_space(cls, arch: dict, source: dict, space: StudentConfig, store: KnowledgeStore) -> ArchToRetrain:
        """``arch`` of the space ``space`` (an exported student's config), rebuilt on ``store``'s task in
        its width, depth limit and pooling, and :func:`student.retrain_space`'s pair space."""
        return cls(arch, source, space.embed_dim, space.k_max, retrain_space(space, store), space.pooling)


def arch_to_retrain(name: str, store: KnowledgeStore, embed_dim: int = 128, k_max: int = 8,
                    space: str = "auto") -> ArchToRetrain:
    """``name``: an exported architecture (JSON or its directory), rebuilt in its own space's width and
    depth (:func:`student.retrain_space` for the pair space), or ``random:<seed>``, a seeded random
    architecture (the paper's Table 3 baseline) of the space ``embed_dim``, ``k_max``, ``space`` on
    ``store``'s task. The other settings only apply to a random one."""
    name = str(name)
    if name.startswith(RANDOM_PREFIX):
        try:
            seed = int(name[len(RANDOM_PREFIX):])
        except ValueError:
            raise UserError(f"arch {name!r}: expected '{RANDOM_PREFIX}<integer seed>'") from None
        space = resolve_space(space, store.spec.is_pair)
        arch = random_arch(student_config(store, embed_dim, k_max, space=space), seed)
        return ArchToRetrain(arch, {"from": name, "searched_on": None}, embed_dim, k_max, space, StudentConfig.pooling)
    exported = load_exported(name, store)
    # Resolved: the same file reached by a relative path or a link names the same run.
    source = {"from": str(Path(exported.path).resolve()), "searched_on": exported.doc.get("task")}
    return ArchToRetrain.of_space(exported.arch, source, exported.config, store)


def retrain_pooling(chosen: ArchToRetrain, config: RetrainConfig) -> str:
    """The pooling a retraining of ``chosen`` with ``config`` builds: ``--pooling`` when set, else the
    architecture's own."""
    return config.pooling or chosen.pooling


def retrain_run_settings(chosen: ArchToRetrain, config: RetrainConfig, store: KnowledgeStore) -> dict:
    """What names a retraining of ``chosen`` with ``config`` on ``store`` (its identity with the store,
    :func:`runs.identity`). The architecture itself, not only where it came from: a file searched anew
    names another run. The space resolved for the task, so "auto" names the same run as what it resolves
    to; the pooling of :func:`retrain_pooling`."""
    settings = {key: value for key, value in config.identity().items() if key != "pooling"}
    space = resolve_space(chosen.space, store.spec.is_pair)
    return {"arch": dict(chosen.arch), **chosen.source, "embed_dim": chosen.embed_dim, "k_max": chosen.k_max,
            **space_identity(space), **settings, **pooling_identity(retrain_pooling(chosen, config))}


def run_retrain(chosen: ArchToRetrain, store: KnowledgeStore, out_dir: str | os.PathLike,
                config: RetrainConfig = RetrainConfig(), *, progress: bool = True, report_to_nni: bool = False) -> dict:
    """Retrain the fixed child ``chosen`` (:func:`arch_to_retrain`: its architecture, where it came from,
    the space to build it in and its pooling, which ``config.pooling`` overrides when set) from fresh
    weights on ``store``'s task and export it to ``out_dir``; returns its architecture document.
    Resumes, is not redone, and holds ``out_dir``'s lock like :func:`search.run_search`. A cell that
    does not read its inputs (:func:`model.space.reads_inputs`) is a :class:`UserError` before anything
    is written."""
    child_config = student_config(store, chosen.embed_dim, chosen.k_max, config.dropout, chosen.space,
                                  retrain_pooling(chosen, config))
    if not reads_inputs(validate_arch(chosen.arch, child_config), child_config):
        raise UserError(f"arch {chosen.source['from']}: {DEAD_CELL}; retraining it cannot learn the task: search "
                        "again, or pick another architecture")
    with runs.locked(out_dir):
        return _retrain(chosen, child_config, store, Path(out_dir), config, progress, report_to_nni)


def _retrain(chosen: ArchToRetrain, child_config: StudentConfig, store: KnowledgeStore, out_dir: Path,
             config: RetrainConfig, progress: bool, report_to_nni: bool) -> dict:
    settings = retrain_run_settings(chosen, config, store)
    run_identity = runs.identity(settings, store)
    done = runs.finished(out_dir / ARCH_FILE, run_identity)
    if done is not None:
        log.info("retraining already finished in %s with these settings; not redoing it", out_dir)
        return done
    pl.seed_everything(config.seed, workers=True)  # the fresh weights too: the same run whatever ran before it
    student = fresh_student(chosen.arch, store, child_config)
    student = train_student(student, store, out_dir / "retrain", config, run_identity, progress, report_to_nni)
    info = {**student_info(store), **evaluate_student(student, store), "retrain": settings,
            "train_seconds": trained_seconds([out_dir / "retrain"]), runs.IDENTITY_KEY: run_identity}
    if not is_main_process():
        return info
    warn_if_no_better_than_majority(info["dev_metrics"], store, "train it longer (--epochs) or with another --lr")
    title = f"{chosen.source.get('searched_on') or chosen.source['from']} cell retrained on {store.meta['task']}"
    return write_student(out_dir, student, info, title=title, tokenizer=store.tokenizer)
