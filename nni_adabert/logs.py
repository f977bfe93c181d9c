"""Logging for the two front ends (the CLI and the NNI trials): our INFO lines, the
libraries' warnings only, and none of the libraries' routine noise."""

from __future__ import annotations

import contextlib
import logging
import os
import warnings

import datasets
import transformers

# Messages of NNI's about machinery a one-shot search runs in-process, said on every run: no news to a user.
# (A search that fails still raises, and the front end prints why.)
_ROUTINE_NNI_LOGGERS = ("nni.nas.experiment.config.experiment", "nni.nas.oneshot.pytorch.strategy",
                        "nni.nas.execution.sequential", "nni.nas.strategy.base")

# Warnings that libraries give on every run and that ask nothing of a user, each matched by its
# own text (and category), so that any other warning of theirs, and all of ours, still shows.
LIBRARY_NOISE = (
    # NNI 3.0 scans torch.nn at import and meets classes newer than itself (torch.nn.parameter.Buffer).
    (RuntimeWarning, r"<class '[\w.]+'> is found to be not a nn\.Module, which is unexpected"),
    # Lightning 2.6 calls a torch pytree API that torch 2.13 deprecates: Lightning's to fix.
    (Warning, r"`isinstance\(treespec, LeafSpec\)` is deprecated"),
    # Lightning's advice for tiny data sets and in-process loading, which we choose on purpose.
    (Warning, r"The number of training batches \(\d+\) is smaller than the logging interval"),
    (Warning, r"The '\w+_dataloader' does not have many workers which may be a bottleneck"),
    # Resuming on purpose: our samplers skip an epoch's trained batches (training.CheckpointWithinEpochs),
    # which Lightning cannot see (it knows stateful DataLoaders only), and the run's folder holds its checkpoint.
    (Warning, r"You're resuming from a checkpoint that ended before the epoch ended"),
    (Warning, r"Checkpoint directory .* exists and is not empty"),
)


def silence_library_noise() -> None:
    """Ignore :data:`LIBRARY_NOISE` (run when the package is imported: NNI's warning comes at import)."""
    for category, message in LIBRARY_NOISE:
        warnings.filterwarnings("ignore", message=message, category=category)


def configure_logging(verbose: bool = False, progress: bool = True) -> None:
    """Our INFO lines (DEBUG with ``verbose``), the libraries' warnings only; no progress bars of
    the libraries' own (loading weights), and with ``progress=False`` none of ``datasets``' either."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("transformers", "datasets", "pytorch_lightning", "lightning", "lightning_fabric", "nni"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    transformers.utils.logging.disable_progress_bar()
    if not progress:
        datasets.disable_progress_bars()
    if not verbose:
        for routine in _ROUTINE_NNI_LOGGERS:
            logging.getLogger(routine).setLevel(logging.CRITICAL)
        warnings.filterwarnings("ignore", message="When using training service to spawn trials")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@contextlib.contextmanager
def quiet_loggers(*names: str, level: int = logging.ERROR):
    """Only messages of ``level`` and above from the loggers ``names`` (``""``: the root logger) while
    inside: around a library call whose warnings are expected, e.g. transformers' load report of a
    new classification head on a base checkpoint."""
    loggers = [logging.getLogger(name or None) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(level)
    try:
        yield
    finally:
        for logger, before in zip(loggers, levels):
            logger.setLevel(before)
