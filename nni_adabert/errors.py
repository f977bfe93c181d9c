"""The one exception type for mistakes a user can fix, and the one for a run stopped by a signal.

The CLI prints a :class:`UserError`'s message (no traceback) and exits with code 2; library
callers can catch it like any ``ValueError``. :class:`RunStopped` ends a run that a signal
stopped, with the status a shell expects (128 + the signal's number).

A signal handler's exception is raised wherever the main thread happens to be. Inside a library's
C callback (pyarrow reading a batch) it becomes that library's own error (``ArrowInvalid``), so
during training a signal only asks for the stop, which the next batch boundary raises
(:func:`defer_stops`, :func:`raise_if_stopped`), and any error that ends a run after a signal
is taken as the stop it caused.
"""

from __future__ import annotations

import contextlib
import errno
import signal
import threading


class UserError(ValueError):
    """Bad input from the user: a file, a field, a name. The message says what,
    where, and what was expected."""

    exit_code = 2


class RunStopped(BaseException):
    """SIGTERM or SIGINT arrived: the run stops where it is (its last checkpoint stays). A
    ``BaseException``, so that no ``except Exception`` on the way swallows it, and not a
    ``KeyboardInterrupt``, which Lightning turns into exit status 1."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = int(signum)


def from_os_error(exc: OSError) -> UserError | None:
    """The :class:`UserError` for an ``OSError`` a user can fix (a full disk, a directory
    we may not write, a file where a directory should be), or ``None`` for any other."""
    where = f" {exc.filename}" if exc.filename else ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return UserError(f"no space left on the device while writing{where}: free some space or choose "
                         f"another --output-dir / --cache-dir (nothing half-written was kept)")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return UserError(f"cannot write{where}: {exc.strerror}; choose a directory you may write to")
    if exc.errno == errno.ENOTDIR:
        return UserError(f"cannot use{where} as a directory: a part of the path is a file")
    return None


def as_user_error(exc: Exception) -> UserError | None:
    """What a command reports as the user's to fix: ``exc`` itself when a :class:`UserError`,
    :func:`from_os_error` for an ``OSError``; ``None`` (a bug: let it raise) otherwise."""
    if _stop.signum is not None:
        return None  # the signal's consequence, not the user's to fix: stop_on_signals reports the stop
    if isinstance(exc, UserError):
        return exc
    return from_os_error(exc) if isinstance(exc, OSError) else None


class _StopRequest:
    """The signal that asked the running command to stop (``None``: none did), and whether
    raising it waits for the next safe point (:func:`defer_stops`)."""

    signum: int | None = None
    deferred: bool = False


_stop = _StopRequest()


def defer_stops(deferred: bool) -> None:
    """While ``deferred``, a first SIGTERM or SIGINT only asks for the stop; :func:`raise_if_stopped`
    raises it at the next safe point (a batch boundary: ``training.StopBetweenBatches``). A second
    signal raises at once, so Ctrl+C twice always stops."""
    _stop.deferred = deferred


def stop_requested() -> int | None:
    """The signal that asked for the stop and has not been raised yet, else ``None``."""
    return _stop.signum


def raise_if_stopped() -> None:
    """Raise :class:`RunStopped` when a signal asked for the stop; a safe point calls this."""
    if _stop.signum is not None:
        raise RunStopped(_stop.signum)


@contextlib.contextmanager
def stop_on_signals(signums=(signal.SIGTERM, signal.SIGINT)):
    """Turn these signals into :class:`RunStopped` while the block runs (the handlers before it
    are restored after). Lightning then keeps its SIGTERM notice but no longer ends the run with
    status 0 (its ``SIGTERMException`` is a ``SystemExit``), nor SIGINT with 1 and a traceback.
    Any other exception that ends the block after a signal (a library's error made of it) is
    raised as the :class:`RunStopped` it is, and a block that ends normally after a signal (a
    library caught what it made of it) raises it too."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        first = _stop.signum is None
        _stop.signum = signum
        if not (_stop.deferred and first):
            raise RunStopped(signum)

    outer = _stop.signum, _stop.deferred  # a block within another gives the outer one its state back
    _stop.signum, _stop.deferred = None, False
    before = {signum: signal.signal(signum, stop) for signum in signums}
    try:
        yield
        raise_if_stopped()
    except RunStopped:
        raise
    except BaseException as exc:
        if _stop.signum is None:
            raise
        raise RunStopped(_stop.signum) from exc
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
        _stop.signum, _stop.deferred = outer


def stopped_message(command: str, stopped: RunStopped) -> str:
    """The one line a front end prints for a run a signal stopped."""
    return (f"nni-adabert {command}: stopped by {signal.Signals(stopped.signum).name}; run the same command again "
            f"to resume from the last finished epoch")
