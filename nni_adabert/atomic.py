"""Files: every file we produce appears complete or not at all; content hashes.

Write to a temporary name in the destination directory, fsync, then ``os.replace``;
a killed run leaves at most a ``.tmp-*`` file that no reader ever opens.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .errors import UserError, from_os_error


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it; set back at once (at import, before any thread starts)
    os.umask(mask)
    return mask


_UMASK = _umask()


def ensure_dir(directory: Path) -> None:
    """Create ``directory`` (and its parents), or a :class:`UserError` saying why it cannot be."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create output directory {directory}: {exc.strerror}") from exc
    if not os.access(directory, os.W_OK):
        raise UserError(f"output directory {directory} is not writable")


def check_writable(path: str | os.PathLike) -> None:
    """Fail early, creating nothing, when the directory ``path`` could not be created or
    written: its nearest existing ancestor must be a directory we may write to."""
    path = Path(path).absolute()
    existing = next(p for p in [path, *path.parents] if p.exists())
    if not existing.is_dir():
        raise UserError(f"cannot use {path} as a directory: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"cannot write to {path}: {existing} is not writable; choose a directory you may write to")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    Works for files and for directories (e.g. a Hugging Face ``save_pretrained``
    folder or a ``datasets`` Arrow store): whatever the body creates at the
    temporary path replaces ``path`` in one step.
    """
    path = Path(path)
    ensure_dir(path.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{path.name}-", dir=path.parent)) / path.name
    try:
        yield tmp
        _default_modes(tmp)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except OSError as exc:
        if exc.filename is None:
            exc.filename = str(path)
        raise from_os_error(exc) or exc from exc
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def _default_modes(path: Path) -> None:
    """Give ``path`` (and what is under it) the modes a plain ``open`` would: some writers (the
    safetensors files of ``save_pretrained``) create files readable by their owner only."""
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        if p.exists() and not p.is_symlink():
            p.chmod((0o777 if p.is_dir() else 0o666) & ~_UMASK)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def hash_file(path: str | os.PathLike, digest=None):
    """Feed the file's bytes to ``digest`` (default a new SHA-256) in 4 MiB chunks; return it."""
    digest = hashlib.sha256() if digest is None else digest
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest
