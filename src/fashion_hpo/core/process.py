"""How the process runs: signals (SIGTERM handled like Ctrl-C), errors it rides through or stops on, glibc's
allocator, torch's thread count."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import threading
from collections.abc import Callable
from typing import TypeVar

import tenacity

T = TypeVar("T")
# glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
# How SQLAlchemy names a unique-constraint violation (SQLite, MySQL drivers; psycopg) in the text of MLflow's error.
CONFLICT_MARKERS = ("IntegrityError", "UniqueViolation")
RACE_ATTEMPTS = 3  # one lost race per other process writing the same row at the same moment is plenty
HELD_BACK = 2  # the count of the stop signal that waits for the clean-up (see StopSignals)


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: runs are closed as KILLED, finished trials are kept."""


class StopSignals:
    """The SIGINT / SIGTERM handler. The first raises, and the study closes its runs on the way out. The second is
    held back, so that it cannot cut that clean-up short and leave a run RUNNING: `mlflow run` sends SIGTERM right
    after passing a Ctrl-C on, and an impatient user presses twice. A third raises again, for one who will not wait
    (the study's next invocation reconciles what that leaves RUNNING)."""

    def __init__(self, prog: str) -> None:
        self.prog = prog
        self.received = 0

    def __call__(self, signum: int, frame: object) -> None:
        """Raise Terminated for SIGTERM, KeyboardInterrupt for SIGINT; or, the second time, say why not."""
        self.received += 1
        if self.received == HELD_BACK:
            name = signal.Signals(signum).name
            note = f"\n{self.prog}: {name} while stopping: finishing the clean-up first ({name} again cuts it short)\n"
            with contextlib.suppress(OSError):  # stderr gone (a pipe whose reader the same Ctrl-C stopped)
                os.write(2, note.encode())  # not print: the handler may run inside a write to stderr
            return
        raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def signal_name(interrupt: KeyboardInterrupt) -> signal.Signals:
    """The signal behind an interrupt: SIGTERM for Terminated, else SIGINT (Ctrl-C)."""
    return signal.SIGTERM if isinstance(interrupt, Terminated) else signal.SIGINT


def raised_from(err: BaseException, matches: Callable[[BaseException], bool]) -> bool:
    """Whether `err`, or an error it was raised from or while handling, `matches`."""
    seen: set[int] = set()
    cause: BaseException | None = err
    while cause is not None and id(cause) not in seen:
        if matches(cause):
            return True
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return False


def connection_lost(err: BaseException) -> bool:
    """Whether `err` comes from a lost HTTP connection: how MLflow reports a tracking server that stayed unreachable
    through all its retries (refused, reset or timed out)."""
    import requests  # deferred: `--help` and bad flags answer without loading MLflow's HTTP stack

    lost = (requests.exceptions.ConnectionError, requests.exceptions.Timeout)
    return raised_from(err, lambda cause: isinstance(cause, lost))


def lost_insert_race(err: BaseException) -> bool:
    """Whether `err` is a database's unique-constraint violation: how MLflow reports an insert race it lost."""
    return any(marker in str(err) for marker in CONFLICT_MARKERS)


def racing(write: Callable[[], T]) -> T:
    """`write`, tried again when it lost an insert race. MLflow's store looks a row up, then inserts it: processes
    writing the same new row at once (workers started together logging a dataset, tagging the experiment) all but
    one fail on the unique constraint, and a second try finds the winner's row."""
    retry = tenacity.Retrying(
        retry=tenacity.retry_if_exception(lost_insert_race),
        stop=tenacity.stop_after_attempt(RACE_ATTEMPTS),
        before_sleep=lambda _: logging.getLogger(__name__).info("another process wrote the same row first; again"),
        reraise=True,
    )
    return retry(write)


class DropInterruptTraceback(logging.Filter):
    """Optuna logs a trial stopped by Ctrl-C, or by a tracking server that went away, with the traceback of that
    error; the line is enough."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Keep the record, without the interrupt's or the lost connection's traceback."""
        error = record.exc_info[1] if record.exc_info else None
        if error is not None and (isinstance(error, KeyboardInterrupt) or connection_lost(error)):
            record.exc_info, record.exc_text = None, None
        return True


def handle_interrupts(prog: str) -> None:
    """SIGINT and SIGTERM go to StopSignals (from the main thread only, where Python runs handlers); failed-trial
    logs of interrupted trials carry no traceback."""
    if threading.current_thread() is threading.main_thread():
        handler = StopSignals(prog)
        signal.signal(signal.SIGTERM, handler)
        current = signal.getsignal(signal.SIGINT)
        if current is signal.default_int_handler or isinstance(current, StopSignals):  # not where Ctrl-C is ignored
            signal.signal(signal.SIGINT, handler)
    logging.getLogger("optuna.study._optimize").addFilter(DropInterruptTraceback())  # the logger of failed trials


def keep_freed_memory() -> None:
    """Let glibc keep freed memory for the next batch instead of unmapping it each time.

    Conv activations are tens of MB per batch; with glibc's defaults every batch maps and unmaps them again, which
    doubled a CNN epoch's time here (system time; 18.6 s -> 9.3 s on 5,000 images). The cost is a resident size that
    stays at its peak, which a training process reaches anyway.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return  # not glibc (macOS, musl): its allocator does not need this
    libc.mallopt(M_MMAP_THRESHOLD, 1 << 30)
    libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)


def wait_passively() -> None:
    """Have OpenMP's idle threads sleep rather than spin, unless the user chose otherwise; before torch loads.

    Spinning threads take the cores that other processes need: on a busy 2-core machine (load 5-9) an MLP epoch took
    141 s with 2 spinning threads, 14 s with 1, and 10 s with 2 passive ones (benchmarks/threads.json)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def use_threads(threads: int) -> None:
    """Set torch's intra-op threads, so that workers sharing a machine do not oversubscribe its cores."""
    import torch  # deferred: `--help` and bad flags answer without loading torch

    torch.set_num_threads(threads)
