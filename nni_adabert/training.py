"""What every training command shares: device choice, a Trainer that checkpoints
each epoch (and every few minutes within one) and resumes, seeding, and the check that
stops a diverged run.

Checkpoints are Lightning's own, written by us into the run's directory under a temporary
name and renamed (:class:`AtomicCheckpointIO`); they are resumed with ``weights_only=True``
so that loading never executes code.

A resumed run must continue exactly as the uninterrupted one would have: every
epoch's randomness (data order, dropout, Gumbel noise) is a function of the seed
and the epoch number alone, never of how many epochs this process has run; a run
resumed within an epoch skips the batches it trained and continues the generators
from their saved states (:class:`CheckpointWithinEpochs`).
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import math
import os
import random
import signal
import time
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint, TQDMProgressBar
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.utilities import rank_zero_only
from torch.utils.data import DataLoader, Sampler
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices

from . import atomic
from .errors import RunStopped, UserError, defer_stops, raise_if_stopped, stop_requested
from .runs import checkpoint_file, last_checkpoint

log = logging.getLogger(__name__)

# The prefix of the choice probabilities NNI's one-shot module logs (BaseOneShotLightningModule.log_probs).
CHOICE_PROBABILITIES = "prob/"

# An epoch takes 10-20 minutes on 2 CPU cores (teacher, retraining): a killed run loses at most this
# much (0: a checkpoint after every step). It changes no result, so it is not a setting of the run.
CHECKPOINT_MINUTES_ENV = "NNI_ADABERT_CHECKPOINT_MINUTES"
DEFAULT_CHECKPOINT_MINUTES = 10.0


def pick_device() -> str:
    """``"cuda"`` when a GPU is present, else ``"cpu"``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def bf16_available() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


PRECISIONS = ("auto", "bf16", "fp32")


def _check_precision(precision: str, what: str) -> None:
    if precision not in PRECISIONS:
        raise UserError(f"{what} precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


def training_precision(precision: str = "auto") -> str:
    """Lightning's ``precision`` for a training run: ``"bf16-mixed"`` (bf16 autocast, fp32 weights
    and optimizer) or ``"32-true"``. ``auto`` is bf16 on a GPU that has it, else fp32 (the students'
    runs; the teacher's: :func:`teacher.finetune.teacher_precision`)."""
    _check_precision(precision, "training")
    if precision == "auto":
        return "bf16-mixed" if bf16_available() else "32-true"
    return "bf16-mixed" if precision == "bf16" else "32-true"


def bf16_native(device: torch.device | str) -> bool:
    """Whether ``device`` computes bf16 matrix products natively: a GPU with bf16, or a CPU with
    AVX512-BF16 or AMX. There bf16 autocast speeds a forward pass up (the MiniLM teacher 3x on an
    AVX512-BF16 CPU, bench/results/knowledge-build); on other CPUs it would slow it down."""
    if torch.device(device).type == "cuda":
        return bf16_available()
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private, so looked up with care
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def inference_precision(device: torch.device | str, precision: str = "auto") -> str:
    """``"bf16"`` or ``"fp32"``: the precision of forward passes without gradients on ``device``;
    ``auto`` is bf16 where the device computes it natively (:func:`bf16_native`)."""
    _check_precision(precision, "inference")
    if precision == "auto":
        return "bf16" if bf16_native(device) else "fp32"
    return precision


def inference_autocast(device: torch.device | str, precision: str = "auto"):
    """bf16 autocast for a forward pass when :func:`inference_precision` says bf16; else nothing changes."""
    device = torch.device(device)
    return torch.autocast(device.type, dtype=torch.bfloat16,
                          enabled=inference_precision(device, precision) == "bf16")


def inference_batch_size(device: torch.device | str) -> int:
    """Examples per forward pass without gradients: a GPU takes many more than a CPU gains from."""
    return 1024 if torch.device(device).type == "cuda" else 128


def pin_memory() -> bool:
    """Page-locked batches when they go to a GPU (faster, asynchronous copies)."""
    return torch.cuda.is_available()


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's randomness: the same for a run and its resumption."""
    return (int(seed) * 1_000_003 + int(epoch)) % 2**31


class EpochOrder:
    """A sampler whose order is a function of ``(seed, epoch)`` alone (:meth:`order`). Lightning
    calls :meth:`set_epoch` before every epoch, also after resuming from a checkpoint, so a resumed
    run sees the same batches as an uninterrupted one; :meth:`resume_after` starts the next pass
    further into the order, for a run resumed within an epoch (:class:`CheckpointWithinEpochs`)."""

    seed: int
    epoch: int = 0
    skip: int = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_after(self, rows: int) -> None:
        """The next pass starts at position ``rows`` of its order (once; later passes are whole)."""
        self.skip = rows

    def epoch_generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))

    def order(self) -> list[int]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[int]:
        skip, self.skip = self.skip, 0
        return iter(self.order()[skip:])


class EpochShuffleSampler(EpochOrder, Sampler[int]):
    """A shuffle of ``num_rows`` rows (a ``DataLoader`` with ``shuffle=True`` would restart its
    generator's stream after a resume instead: :class:`EpochOrder`)."""

    def __init__(self, num_rows: int, seed: int = 0):
        self.num_rows, self.seed = num_rows, seed

    def __len__(self) -> int:
        return self.num_rows

    def order(self) -> list[int]:
        return torch.randperm(self.num_rows, generator=self.epoch_generator()).tolist()


class EpochLengthGroupedSampler(EpochOrder, LengthGroupedSampler):
    """transformers' length-grouped shuffle (``group_by_length``): each epoch a permutation, cut
    into groups of up to 50 batches, each group sorted by length (longest first), so a batch pads to
    a length close to its rows' (on SST-2 3.2x fewer tokens, real and padding, than a plain shuffle).
    The order is a function of ``(seed, epoch)`` alone (:class:`EpochOrder`). With ``devices > 1``
    each process gets whole batches of it (:func:`deal_batches`).

    ``lengths``: each row's length in tokens (:func:`data.encoding.row_lengths`).
    ``shuffle_batches``: then the full batches in a random order (the short last one stays last), so
    that the epoch does not end on the shortest rows of a group: BatchNorm's running statistics,
    which remember the last few batches, would describe short rows only (a student retrained on
    such batches lost 2.2 points of SST-2 dev accuracy, bench/results/group-by-length)."""

    def __init__(self, batch_size: int, lengths: list[int], seed: int = 0, shuffle_batches: bool = False):
        super().__init__(batch_size, lengths=lengths)
        self.seed, self.shuffle_batches = seed, shuffle_batches

    def order(self) -> list[int]:
        if not self.lengths:
            return []
        generator = self.epoch_generator()
        order = get_length_grouped_indices(self.lengths, self.batch_size, generator=generator)
        size = self.batch_size
        if self.shuffle_batches:
            full = len(order) // size  # batches cut where the DataLoader will cut them
            batches = [order[i * size:(i + 1) * size] for i in torch.randperm(full, generator=generator).tolist()]
            order = [i for batch in batches for i in batch] + order[full * size:]
        return deal_batches(order, size, distributed_replicas())


def distributed_replicas() -> int:
    """How many processes share each step's rows: DDP's world size, 1 without a process group."""
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def deal_batches(order: list[int], batch_size: int, replicas: int) -> list[int]:
    """``order`` rearranged so that each of ``replicas`` processes gets whole batches of it.

    Under DDP, Lightning wraps a custom sampler in a DistributedSampler without shuffling, which
    gives rank ``r`` the positions ``r, r + replicas, r + 2 * replicas, ...``: taken as they are,
    each process's batch would mix rows of ``replicas`` neighbouring batches (of different lengths,
    once the batches are shuffled). So each run of ``replicas`` full batches is interleaved row by
    row, which the strided split undoes: rank ``r`` reads batch ``r`` of every run. The rows that do
    not fill a run keep their order."""
    if replicas == 1:
        return order
    run = replicas * batch_size
    dealt = []
    for start in range(0, len(order) - run + 1, run):
        batches = [order[start + r * batch_size:start + (r + 1) * batch_size] for r in range(replicas)]
        dealt += [batch[i] for i in range(batch_size) for batch in batches]
    return dealt + order[len(dealt):]


def checkpoint_minutes() -> float:
    """Minutes of training between checkpoints within an epoch: ``$NNI_ADABERT_CHECKPOINT_MINUTES``,
    else :data:`DEFAULT_CHECKPOINT_MINUTES`."""
    text = os.environ.get(CHECKPOINT_MINUTES_ENV, "").strip()
    if not text:
        return DEFAULT_CHECKPOINT_MINUTES
    try:
        minutes = float(text)
    except ValueError:
        minutes = math.nan
    if not math.isfinite(minutes) or minutes < 0:
        raise UserError(f"{CHECKPOINT_MINUTES_ENV} must be a number of minutes >= 0, got {text!r}")
    return minutes


def generator_states() -> dict:
    """The global generators' states (Python, NumPy, torch, CUDA), as plain values and tensors
    that a ``weights_only`` checkpoint load accepts."""
    numpy_state = np.random.get_state(legacy=False)
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "numpy": {"key": numpy_state["state"]["key"].tolist(), "pos": numpy_state["state"]["pos"],
                      "has_gauss": numpy_state["has_gauss"], "gauss": numpy_state["gauss"]},
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_generator_states(states: dict) -> None:
    """The inverse of :func:`generator_states`."""
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))
    torch.set_rng_state(states["torch"])
    numpy_state = states["numpy"]
    np.random.set_state({"bit_generator": "MT19937", "has_gauss": numpy_state["has_gauss"],
                         "gauss": numpy_state["gauss"],
                         "state": {"key": np.array(numpy_state["key"], dtype=np.uint32), "pos": numpy_state["pos"]}})
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def train_loaders_of(trainer: pl.Trainer) -> list:
    """The DataLoaders of the run's training batches, one or several (a dict or list of them)."""
    loaders = trainer.train_dataloader
    if isinstance(loaders, dict):
        return list(loaders.values())
    return list(loaders) if isinstance(loaders, (list, tuple)) else [loaders]


class CheckpointWithinEpochs(Callback):
    """Saves the run's checkpoint (``path``, the epoch's own) also every ``minutes`` of training
    within an epoch, and resumes such a checkpoint where it was taken: each training loader's sampler
    skips the batches of the epoch already trained (its order is a function of seed and epoch:
    :meth:`EpochOrder.resume_after`) and the global generators continue from their saved
    states, so the resumed run trains on the batches, with the dropout masks and Gumbel noise, of
    an uninterrupted one. One process only (the processes of a DDP run would have to agree on the
    moment) and only on loaders with such samplers; otherwise a run checkpoints at epoch ends."""

    def __init__(self, path: str | os.PathLike, minutes: float):
        self.path, self.minutes = Path(path), minutes
        self.resume_at: dict | None = None   # a checkpoint within an epoch, being resumed
        self.saving: dict | None = None      # what the checkpoint being written records
        self.last_save = time.monotonic()
        self.enabled = False

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loaders = train_loaders_of(trainer)
        self.enabled = trainer.world_size == 1 and all(hasattr(getattr(loader, "sampler", None), "resume_after")
                                                       for loader in loaders)
        self.last_save = time.monotonic()
        resume, self.resume_at = self.resume_at, None
        if not resume or resume["epoch"] != trainer.current_epoch:
            return
        for loader in loaders:  # a shorter loader cycled in max_size_cycle mode: where it stood
            loader.sampler.resume_after(resume["batches"] % len(loader) * loader.batch_size)
        set_generator_states(resume["generators"])
        log.info("resuming epoch %d at batch %d of %d", trainer.current_epoch + 1, resume["batches"] + 1,
                 trainer.num_training_batches)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.last_save = time.monotonic()  # the previous epoch's checkpoint was just written

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        if not self.enabled or batch_idx + 1 >= trainer.num_training_batches or not self.due(trainer):
            return  # (after the epoch's last batch, the epoch's own checkpoint follows)
        self.saving = {"epoch": trainer.current_epoch, "batches": batch_idx + 1, "generators": generator_states()}
        try:
            trainer.save_checkpoint(self.path)
        finally:
            self.saving = None
        self.last_save = time.monotonic()

    def due(self, trainer: pl.Trainer) -> bool:
        """Whether a checkpoint is due: ``minutes`` of training since the last one."""
        return time.monotonic() - self.last_save >= self.minutes * 60

    def state_dict(self) -> dict:
        return self.saving or {}  # an epoch's end: nothing to skip when resumed

    def load_state_dict(self, state_dict: dict) -> None:
        self.resume_at = state_dict or None


# Beside a run's checkpoint: the seconds it has trained, over every start (TrainingClock).
CLOCK_FILE = "training_time.json"


def clock_file(run_dir: str | os.PathLike) -> Path:
    """Where a run's :class:`TrainingClock` writes its seconds: beside its checkpoint."""
    return checkpoint_file(run_dir).with_name(CLOCK_FILE)


class TrainingClock(Callback):
    """The wall time of a run's training loop (its epochs and their validation), over every start: the
    seconds ride in each checkpoint, so a resumed run adds to those of the checkpoint it resumes (time spent
    after it, redone, counts once). Each save and the end also write them to ``CLOCK_FILE`` beside the
    checkpoint, for the exported record (:func:`trained_seconds`) to read without loading the checkpoint.
    A run resumed from a checkpoint of before the clock is ``partial``: its seconds are a part only."""

    def __init__(self, run_dir: str | os.PathLike):
        self.path = clock_file(run_dir)
        self.before, self.started, self.partial = 0.0, None, False

    @property
    def seconds(self) -> float:
        return self.before + (time.monotonic() - self.started if self.started is not None else 0.0)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.started = time.monotonic()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.before, self.started = self.seconds, None
        self.write()

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        self.write()

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        self.partial = self.state_key not in checkpoint.get("callbacks", {})  # (else load_state_dict follows)

    def write(self) -> None:
        if is_main_process():
            atomic.write_json(self.path, self.state_dict())

    def state_dict(self) -> dict:
        return {"seconds": round(self.seconds, 1), **({"partial": True} if self.partial else {})}

    def load_state_dict(self, state_dict: dict) -> None:
        self.before, self.partial = state_dict["seconds"], state_dict.get("partial", False)


def trained_seconds(run_dirs: Iterable[str | os.PathLike]) -> float | None:
    """Seconds the runs in ``run_dirs`` (a search's phase, the candidates it trained and its fine-tuning; a
    retraining; a teacher's fine-tuning) trained, over all their starts (:class:`TrainingClock`); None when
    one of them has no complete record (a run of before the clock, or resumed from one)."""
    total = 0.0
    for run_dir in run_dirs:
        try:
            clock = json.loads(clock_file(run_dir).read_text())
            total += float(clock["seconds"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if clock.get("partial"):
            return None
    return round(total, 1)


class StopBetweenBatches(Callback):
    """A SIGTERM or SIGINT during training stops the run at the next batch boundary
    (:func:`errors.defer_stops`): raised at once, it could land inside the data loader's C code
    (pyarrow), which turns it into an error of its own and a traceback. With several processes (DDP)
    they agree at the start of each training batch, so that all stop at the same one (a process
    that went on would wait forever in the next gradient all-reduce)."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        defer_stops(True)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        if trainer.world_size == 1:
            raise_if_stopped()
        elif trainer.strategy.reduce_boolean_decision(stop_requested() is not None, all=False):
            raise RunStopped(stop_requested() or signal.SIGTERM)  # (a process the signal did not reach)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        if trainer.world_size == 1:
            raise_if_stopped()

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if trainer.world_size == 1:
            raise_if_stopped()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        defer_stops(False)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        defer_stops(False)
        raise_if_stopped()  # a signal after the last batch: the command stops before its next stage


class SeedEachEpoch(Callback):
    """Reseed Python, NumPy and torch at the start of every training epoch (dropout
    masks and any other draw from the global generators)."""

    def __init__(self, seed: int):
        self.seed = seed

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        seed = epoch_seed(self.seed, trainer.current_epoch)
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)


class EpochLog(Callback):
    """One log line per finished epoch, with the epoch's metrics and time: what a run without
    progress bars says, so that a long run on a server is never silent for minutes. An epoch resumed
    within (:class:`CheckpointWithinEpochs`) says so: its means and minutes are of the resumed part."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start_epoch()  # an epoch resumed where it was checkpointed starts no epoch

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start_epoch()

    def start_epoch(self) -> None:
        self.started, self.batches = time.perf_counter(), 0

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        self.batches += 1

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not is_main_process():
            return
        # A metric logged per step and per epoch is in callback_metrics three times: keep the epoch's mean.
        # The search's choice probabilities (one per op of every edge, over 100) stay in the metrics logger.
        metrics = ", ".join(f"{name} {float(value):.4f}" for name, value in sorted(trainer.callback_metrics.items())
                            if value.numel() == 1 and not name.endswith(("_step", "_epoch"))
                            and not name.startswith(CHOICE_PROBABILITIES))
        minutes = (time.perf_counter() - self.started) / 60
        total = trainer.num_training_batches
        part = (f"; resumed at batch {total - self.batches + 1} of {total}: means and minutes of that part"
                if math.isfinite(total) and 0 < self.batches < total else "")
        log.info("epoch %d/%d: %s (%.1f min%s)", trainer.current_epoch + 1, trainer.max_epochs,
                 metrics or "no metrics", minutes, part)


@torch.no_grad()
def recompute_batchnorm_statistics(module: torch.nn.Module, batches: Iterable, seed: int = 0) -> int:
    """Replace every BatchNorm layer's running statistics in ``module`` by their mean over ``batches``
    (each passed whole to ``module``, which must already be on their device), forwarded in training mode
    (dropout on, as the weights learnt) without gradients; returns how many batches there were. The
    module's modes and its layers' momenta are restored; the dropout draws come from ``seed`` and leave
    the global generators as they were. Without batches the statistics are left as they were."""
    norms = [m for m in module.modules()
             if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return 0
    saved = [{k: v.clone() for k, v in m.state_dict().items()} for m in norms]
    modes = [(m, m.training) for m in module.modules()]
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative mean over the batches, not a moving average
    module.train()
    seen = 0
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            for batch in batches:
                module(batch)
                seen += 1
    finally:
        for norm, momentum, state in zip(norms, momenta, saved):
            norm.momentum = momentum
            if not seen:
                norm.load_state_dict(state)
        for m, training in modes:
            m.training = training
    return seen


class PreciseBatchNorm(Callback):
    """Before every dev evaluation, BatchNorm's running statistics are re-estimated over the first
    ``batches`` batches of ``loader`` (:func:`recompute_batchnorm_statistics`; PreciseBN: Wu & Johnson,
    "Rethinking 'Batch' in BatchNorm", 2021). The moving average BatchNorm keeps remembers the last few
    dozen steps only, so it describes whatever lengths of rows they held: after a full-SST-2 retraining
    in batches grouped by length the same weights scored 86.24 with it and 88.07 re-estimated
    (bench/results/retrain-recipes). The weights and the training's generators are untouched, so
    the training itself is the same; the epoch's checkpoint and the exported student keep the
    re-estimated statistics. ``loader``: training rows in a plain shuffle (every length mixed)."""

    def __init__(self, loader: DataLoader, batches: int, seed: int = 0):
        self.loader, self.batches, self.seed = loader, batches, seed

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        on_device = (pl_module.transfer_batch_to_device(batch, pl_module.device, 0)
                     for batch in itertools.islice(self.loader, self.batches))
        with trainer.precision_plugin.forward_context():
            recompute_batchnorm_statistics(pl_module, on_device, self.seed)


class KeepBestEpoch(Callback):
    """Training ends with the weights of the epoch whose ``monitor`` (a logged dev metric, higher
    is better) was best, not with the last epoch's. Every epoch's dev metrics are kept in
    ``history``. Best weights, score and history travel in the checkpoint, so a resumed run
    ends as an uninterrupted one would."""

    def __init__(self, monitor: str):
        self.monitor = monitor
        self.best_score: float | None = None
        self.best_epoch: int | None = None
        self.best_weights: dict[str, torch.Tensor] | None = None
        self.history: list[dict] = []

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit" or self.monitor not in trainer.callback_metrics:
            return
        metrics = {name: float(value) for name, value in trainer.callback_metrics.items()
                   if name.startswith("dev_") and value.numel() == 1}
        self.history.append({"epoch": trainer.current_epoch + 1, **metrics})
        if self.best_score is None or metrics[self.monitor] > self.best_score:
            self.best_score, self.best_epoch = metrics[self.monitor], trainer.current_epoch + 1
            self.best_weights = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.best_weights is not None:
            pl_module.load_state_dict(self.best_weights)

    def state_dict(self) -> dict:
        return {"best_score": self.best_score, "best_epoch": self.best_epoch, "best_weights": self.best_weights,
                "history": self.history}

    def load_state_dict(self, state_dict: dict) -> None:
        self.best_score, self.best_epoch = state_dict["best_score"], state_dict["best_epoch"]
        self.best_weights, self.history = state_dict["best_weights"], state_dict["history"]


def weight_decay_groups(module: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Optimizer parameter groups: ``weight_decay`` on weight matrices and kernels, none on
    biases and norm scales (1-d tensors), as BERT fine-tuning does."""
    params = [p for p in module.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]


def adamw(module: pl.LightningModule, groups: list[dict], lr: float) -> torch.optim.AdamW:
    """AdamW over ``groups`` (:func:`weight_decay_groups`), fused into one kernel for every parameter when
    ``module`` trains in full precision on a CPU or GPU: on 2 CPU cores it steps a student (its 3.9M-parameter
    embedding) 8x faster, from a sixth of a retraining step to 2%. Not under mixed precision: Lightning
    refuses gradient clipping with a fused optimizer there."""
    trainer = module._trainer  # (module.trainer raises when none is attached)
    fused = (trainer is not None and trainer.precision == "32-true"
             and all(p.device.type in ("cpu", "cuda") for group in groups for p in group["params"]))
    return torch.optim.AdamW(groups, lr=lr, fused=fused or None)


def check_finite(loss: torch.Tensor, module: pl.LightningModule) -> None:
    """Stop a diverged run with the epoch, the step and a hint, instead of training on NaN.
    The checkpoint of the last good epoch stays; the same command resumes from it."""
    value = float(loss.detach())
    if not math.isfinite(value):
        trainer = module.trainer
        raise UserError(f"the training loss became {value} at epoch {trainer.current_epoch}, step "
                        f"{trainer.global_step}: lower the learning rate (--lr) or --grad-clip, or check the inputs; "
                        f"the last finished epoch's checkpoint is kept")


def is_main_process() -> bool:
    """``False`` in the extra processes of a multi-device (DDP) run: every process trains,
    only the first one writes results and prints them."""
    return getattr(rank_zero_only, "rank", 0) == 0


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, but the file is written beside its destination under a
    temporary name and renamed (:func:`atomic.write_bytes`): Lightning's own goes through the
    system's temp directory and copies across file systems, so a full disk left a truncated
    ``last.ckpt`` that the next run could not resume from."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        atomic.write_bytes(path, buffer.getbuffer())


def make_trainer(run_dir: str | os.PathLike, max_epochs: int, *, progress: bool = True,
                 name: str = "logs", trainer_cls: type = pl.Trainer, seed: int | None = None,
                 devices: int = 1, callbacks: tuple[Callback, ...] = (), **kwargs) -> pl.Trainer:
    """A Trainer that saves ``run_dir/checkpoints/last.ckpt`` after every epoch and every
    :func:`checkpoint_minutes` within one (:class:`CheckpointWithinEpochs`), atomically
    (:class:`AtomicCheckpointIO`), keeps the time trained over every start (:class:`TrainingClock`),
    stops at a batch boundary on a signal (:class:`StopBetweenBatches`), and logs to TensorBoard
    under ``run_dir/<name>``; ``callbacks`` are added to these. With ``seed``,
    every epoch reseeds the global generators from ``(seed, epoch)`` (:class:`SeedEachEpoch`).
    ``devices`` > 1 trains on that many GPUs (or CPU processes) with DDP; every process draws the
    same Gumbel sample, since all start from the same seed.

    ``trainer_cls``: NNI's evaluators want ``nni.nas.evaluator.pytorch.Trainer``
    (the same Trainer, traced so that NNI can record its arguments)."""
    run_dir = Path(run_dir)
    # One checkpoint named "last", replaced every epoch. (save_last=True with save_top_k=0 would
    # save only when training ends: Lightning writes "last" only after a top-k save.)
    path = checkpoint_file(run_dir)
    checkpoint = ModelCheckpoint(dirpath=path.parent, filename=path.stem, save_top_k=1,
                                 every_n_epochs=1, save_on_train_epoch_end=True, enable_version_counter=False)
    within_epochs = CheckpointWithinEpochs(path, checkpoint_minutes())
    callbacks = [checkpoint, within_epochs, TrainingClock(run_dir), *callbacks]
    callbacks += [TQDMProgressBar(refresh_rate=20)] if progress else [EpochLog()]
    callbacks += [SeedEachEpoch(seed)] if seed is not None else []
    callbacks += [StopBetweenBatches()]  # last: its teardown may raise the stop, after the others'
    return trainer_cls(
        max_epochs=max_epochs,
        accelerator="auto",
        devices=devices,
        # Several devices: Lightning's DDP, one process each. A single-path step leaves the ops it did
        # not sample without gradients, which DDP must be told to expect.
        strategy="ddp_find_unused_parameters_true" if devices > 1 else "auto",
        default_root_dir=run_dir,
        logger=TensorBoardLogger(run_dir, name=name, version=""),
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic="warn",
        precision=kwargs.pop("precision", training_precision()),
        **kwargs,
    )


def fit(trainer: pl.Trainer, module: pl.LightningModule, train_loader, val_loader, run_dir,
        identity: dict) -> None:
    """``trainer.fit`` that resumes from ``run_dir``'s last checkpoint when there is one
    of the same ``identity`` (:func:`runs.last_checkpoint`)."""
    trainer.fit(module, train_loader, val_loader, ckpt_path=last_checkpoint(run_dir, identity), weights_only=True)
