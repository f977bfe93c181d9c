"""Run identity: whether a run directory is resumed, refused, or already done.

A run's *identity* is JSON data: the settings it was started with and the inputs it reads
(the knowledge store, the data's fingerprints). One policy serves every command:

- **resume or refuse**: ``run.json`` beside a run's checkpoints records its identity. The same
  identity resumes from the last checkpoint; another one is refused (:class:`UserError`),
  since resuming would carry another run's weights and epochs into this one's export
  (:func:`last_checkpoint`);
- **not redo**: a finished run's record (an exported ``architecture.json``, a fine-tuned
  teacher's info) holds its identity under :data:`IDENTITY_KEY`; a command whose identity
  matches returns that record instead of training again (:func:`finished`);
- **one at a time**: a run holds its output directory's lock while it works (:func:`locked`);
  a second command on the same directory is refused at once, saying who holds it.

Identities compare as they read back from JSON (tuples are lists). Run directories of
nni-adabert 0.1 recorded other identities (other setting names, no ``run_identity`` in exports):
their checkpoints are refused and their exports redone, never guessed at.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import sys
import time
import zipfile
from pathlib import Path
from typing import Any, Iterator

import torch

from . import atomic
from .errors import UserError

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
IDENTITY_KEY = "run_identity"
LOCK_FILE = ".nni-adabert.lock"


def identity(settings: dict, store: Any = None) -> dict:
    """A run's identity: ``settings`` and, when given, the knowledge store it reads, as JSON data."""
    inputs = {"knowledge_store": str(store.path)} if store is not None else {}
    return json.loads(json.dumps({**inputs, **settings}))


def finished(record_path: str | os.PathLike, run_identity: dict) -> dict | None:
    """The record at ``record_path`` when it holds ``run_identity``, else ``None`` (no record, an
    unreadable one, or another run's: the run is done again and its record replaced). Records
    are written last, so one that exists means the run's other files are complete."""
    path = Path(record_path)
    try:
        record = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if isinstance(record, dict) and record.get(IDENTITY_KEY) == json.loads(json.dumps(run_identity)):
        return record
    return None


def checkpoint_file(run_dir: str | os.PathLike) -> Path:
    """Where a run's one checkpoint lives (replaced at every save; :func:`training.make_trainer`)."""
    return Path(run_dir) / "checkpoints" / "last.ckpt"


def last_checkpoint(run_dir: str | os.PathLike, run_identity: dict) -> Path | None:
    """The checkpoint to resume from, or ``None`` for a fresh start.

    ``run_identity`` is recorded in ``run_dir/run.json`` beside the checkpoint; a checkpoint
    recorded under another identity, or under none, is refused.
    """
    run_dir = Path(run_dir)
    path = checkpoint_file(run_dir)
    run_identity = json.loads(json.dumps(run_identity))
    recorded = read_run_file(run_dir)
    if path.is_file() and recorded != run_identity:
        what = ("records no settings" if recorded is None
                else f"is of another run ({differences(recorded, run_identity)})")
        raise UserError(f"{run_dir} holds a checkpoint that {what}; use another output directory, "
                        f"or delete {run_dir} to start this run afresh")
    if recorded != run_identity:
        atomic.write_json(run_dir / RUN_FILE, run_identity)
    if not path.is_file():
        return None
    if not _is_checkpoint(path):  # truncated by a full disk (before writes were atomic), or not ours
        aside = path.with_name(f"{path.name}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}")
        os.replace(path, aside)
        log.warning("checkpoint %s cannot be read (not a complete checkpoint); set it aside as %s and started "
                    "this run afresh", path, aside.name)
        return None
    log.info("resuming from %s", path)
    return path


def _is_checkpoint(path: Path) -> bool:
    """A complete Lightning checkpoint: a zip that loads with ``weights_only`` (memory-mapped, so
    cheap) into a dict with the weights and the epoch."""
    if not zipfile.is_zipfile(path):
        return False
    try:
        saved = torch.load(path, weights_only=True, mmap=True, map_location="cpu")
    except Exception:  # any unpickling or format error: it is not a checkpoint we can resume
        return False
    return isinstance(saved, dict) and "state_dict" in saved and "epoch" in saved


def read_run_file(run_dir: Path) -> dict | None:
    """The identity recorded in ``run_dir/run.json``, ``None`` when there is none."""
    path = run_dir / RUN_FILE
    if not path.is_file():
        return None
    try:
        recorded = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} is not valid JSON ({exc}); delete {run_dir} to start the run afresh") from exc
    if not isinstance(recorded, dict):
        raise UserError(f"{path} must hold a JSON object (a run's settings); delete {run_dir} to start afresh")
    return recorded


def differences(recorded: dict, run_identity: dict, shown: int = 3) -> str:
    """``"beta: 4 there, 0.5 now; ..."`` for the first ``shown`` settings that differ."""
    def flat(d: dict, prefix: str = "") -> dict:  # {"config": {"lr": 1}} -> {"config.lr": 1}
        out = {}
        for key, value in d.items():
            out.update(flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value})
        return out

    there, now = flat(recorded), flat(run_identity)
    keys = [k for k in {**there, **now} if k not in there or k not in now or there[k] != now[k]]

    def show(d: dict, key: str) -> str:
        return json.dumps(d[key]) if key in d else "unset"

    parts = [f"{k}: {show(there, k)} there, {show(now, k)} now" for k in keys[:shown]]
    return "; ".join(parts + ([f"{len(keys) - shown} more"] if len(keys) > shown else []))


@contextlib.contextmanager
def locked(out_dir: str | os.PathLike) -> Iterator[None]:
    """Hold ``out_dir``'s lock (an exclusive ``flock`` on ``out_dir/.nni-adabert.lock``, which
    says who holds it) while the block runs. Another holder: a :class:`UserError` at once, naming
    it. The kernel releases the lock of a process that died, so a lock file left by a killed run
    is taken over (with a message). The lock file goes when the block ends, and so does
    ``out_dir`` if this call created it and nothing was written. The DDP workers Lightning starts
    (``LOCAL_RANK`` > 0) run under their first process's lock."""
    out_dir = Path(out_dir)
    if int(os.environ.get("LOCAL_RANK", "0")) > 0:
        yield
        return
    created = not out_dir.exists()
    atomic.ensure_dir(out_dir)
    path = out_dir / LOCK_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise UserError(f"{out_dir} is in use by another nni-adabert run ({holder}); wait for it to end or use "
                            f"another output directory") from None
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)  # the holder we waited for removed the file: lock the one there now
    left = os.read(fd, 4096).decode("utf-8", "replace").strip()
    if left:
        log.warning("%s: took over the lock of a run that is no longer running (%s)", out_dir, left)
    me = (f"pid {os.getpid()} on host {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}: "
          f"{' '.join(Path(sys.argv[0]).name.split()[:1] + sys.argv[1:])}")
    os.ftruncate(fd, 0)
    os.pwrite(fd, me.encode("utf-8"), 0)
    try:
        yield
    finally:
        os.unlink(path)
        os.close(fd)
        if created and not any(out_dir.iterdir()):
            out_dir.rmdir()
