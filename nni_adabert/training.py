"""What every training command shares: device choice, a Trainer that checkpoints
each epoch and resumes, and seeding.

Checkpoints are Lightning's own, written by us into the run's directory; they
are resumed with ``weights_only=True`` so that loading never executes code.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint, TQDMProgressBar
from pytorch_lightning.loggers import TensorBoardLogger


def pick_device() -> str:
    """``"cuda"`` when a GPU is present, else ``"cpu"``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def make_trainer(run_dir: str | os.PathLike, max_epochs: int, *, progress: bool = True,
                 name: str = "logs", trainer_cls: type = pl.Trainer, **kwargs) -> pl.Trainer:
    """A Trainer that saves ``run_dir/checkpoints/last.ckpt`` after every epoch
    (atomically: Lightning writes to a temporary file and renames) and logs to
    TensorBoard under ``run_dir/<name>``.

    ``trainer_cls``: NNI's evaluators want ``nni.nas.evaluator.pytorch.Trainer``
    (the same Trainer, traced so that NNI can record its arguments)."""
    run_dir = Path(run_dir)
    checkpoint = ModelCheckpoint(dirpath=run_dir / "checkpoints", save_last=True, save_top_k=0,
                                 every_n_epochs=1, save_on_train_epoch_end=True)
    callbacks = [checkpoint] + ([TQDMProgressBar(refresh_rate=20)] if progress else [])
    return trainer_cls(
        max_epochs=max_epochs,
        accelerator="auto",
        devices=1,
        default_root_dir=run_dir,
        logger=TensorBoardLogger(run_dir, name=name, version=""),
        callbacks=callbacks,
        enable_progress_bar=progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic="warn",
        **kwargs,
    )


def last_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The checkpoint to resume from, or ``None`` for a fresh start."""
    path = Path(run_dir) / "checkpoints" / "last.ckpt"
    return path if path.is_file() else None


def fit(trainer: pl.Trainer, module: pl.LightningModule, train_loader, val_loader, run_dir) -> None:
    """``trainer.fit`` that resumes from ``run_dir``'s last checkpoint when there is one."""
    trainer.fit(module, train_loader, val_loader, ckpt_path=last_checkpoint(run_dir), weights_only=True)
