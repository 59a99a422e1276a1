"""What a training run does to the process it runs in, in one place, and only when a run needs it (never in a
constructor): the console log handler (`ensure_console_logging`), joining the process group or re-launching
the script under several GPUs (`prepare_process`), SIGINT / SIGTERM held while a step is in flight
(`deferred_signals`), and log lines printed above a progress bar (`logging_above`).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading

import torch

from . import distributed

logger = logging.getLogger("torchpalm")


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever `sys.stdout` is at the time (so redirection and capture keep working)."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value):
        pass


def ensure_console_logging() -> None:
    """PALM printed its progress lines; show ours on stdout unless the user configured logging."""
    if not logger.handlers and not logging.getLogger().handlers:
        handler = _StdoutHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO if distributed.is_main() else logging.WARNING)  # one rank logs
        logger.propagate = False


def prepare_process(device: torch.device | None) -> None:
    """What a training or prediction process needs once, done by the first Trainer call that needs it
    (`build_backward`, `fit_reader`, `train`), never by a constructor: under torchrun, join the process group;
    with several GPUs (or TORCHPALM_NPROC > 1) and no launcher, re-run the script as that many processes and
    exit with their status (`distributed.init`); show progress lines on stdout unless logging is configured.
    Repeated calls do nothing."""
    distributed.init(device)
    ensure_console_logging()


class StopRequest:
    """A SIGINT or SIGTERM that arrived while the loop ran (see `deferred_signals`); false while none did."""

    def __init__(self):
        self.signum: int | None = None

    def __bool__(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    def exception(self) -> BaseException:
        """What the signal would have raised: KeyboardInterrupt for Ctrl-C, else exit status 128 + signal."""
        return KeyboardInterrupt() if self.signum == signal.SIGINT else SystemExit(128 + self.signum)


@contextlib.contextmanager
def deferred_signals():
    """Holds SIGINT (Ctrl-C) and SIGTERM (schedulers' preemption) until the step in flight is done.

    A KeyboardInterrupt raised inside a step leaves the reader one batch ahead of the step counter (the batch
    was drawn, the step not counted, the update maybe half applied), so a checkpoint saved then skips a batch on
    resume. Here the handler only records the signal: the loop finishes the step (its log line, a due
    evaluation and save), saves a checkpoint, and then raises what the signal would have raised. A second
    Ctrl-C stops at once, without saving. Signals reach only the main thread; elsewhere nothing is installed.
    """
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum, frame):
        if request and signum == signal.SIGINT:
            raise KeyboardInterrupt
        request.signum = signum
        logger.warning("%s received: finishing this step, then saving a checkpoint and stopping (Ctrl-C again "
                       "stops at once, without saving)", signal.Signals(signum).name)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield request
    finally:
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)


@contextlib.contextmanager
def logging_above(progress):
    """While a progress bar is drawn, console log lines go through its `write` (printed above the bar, which is
    redrawn below them) instead of landing inside it; other handlers (log files) are left alone."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    def console(handler: logging.Handler) -> bool:  # the handlers tqdm redirects
        return isinstance(handler, logging.StreamHandler) and handler.stream in (sys.stdout, sys.stderr)

    consoles = [lg for lg in (logger, logging.getLogger()) if any(map(console, lg.handlers))]
    if getattr(progress, "disable", True) or not consoles:
        yield
        return
    with logging_redirect_tqdm(consoles, tqdm_class=type(progress)):
        yield
