"""Logging for the two front ends (the CLI and the NNI trials): our INFO lines, the
libraries' warnings only."""

from __future__ import annotations

import logging
import os
import warnings

# Messages of NNI's about machinery a one-shot search runs in-process, said on every run: no news to a user.
# (A search that fails still raises, and the front end prints why.)
_ROUTINE_NNI_LOGGERS = ("nni.nas.experiment.config.experiment", "nni.nas.oneshot.pytorch.strategy",
                        "nni.nas.execution.sequential", "nni.nas.strategy.base")


def configure_logging(verbose: bool = False) -> None:
    """Our INFO lines (DEBUG with ``verbose``), the libraries' warnings only."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("transformers", "datasets", "pytorch_lightning", "lightning", "lightning_fabric", "nni"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not verbose:
        for routine in _ROUTINE_NNI_LOGGERS:
            logging.getLogger(routine).setLevel(logging.CRITICAL)
        warnings.filterwarnings("ignore", message="When using training service to spawn trials")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
