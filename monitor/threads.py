"""The one lifecycle every pipeline thread shares: a name, a stop event, a join with a timeout."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class StoppableThread:
    """A named daemon thread running `target(stop_event)`; `stop()` sets the event, `join()` waits.

    The target watches the event (`stop_event.wait(timeout)` instead of `time.sleep`) and returns when
    it is set; a thread that outlives its join timeout is logged, never waited for forever.
    """

    def __init__(self, name: str, target: Callable[[threading.Event], None]) -> None:
        self.name = name
        self.stop_event = threading.Event()
        self._target = target
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)

    def _main(self) -> None:
        try:
            self._target(self.stop_event)
        except BaseException:
            # Logged here, once, for every thread; the owner sees `alive` turn False and decides.
            log.exception("thread_crashed thread=%s", self.name)

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to end; returns at once."""
        self.stop_event.set()

    @property
    def stopping(self) -> bool:
        """True once stop() was called."""
        return self.stop_event.is_set()

    @property
    def started(self) -> bool:
        return self._thread.ident is not None

    @property
    def alive(self) -> bool:
        """True while the target runs."""
        return self._thread.is_alive()

    def join(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the thread to end; True when it has ended (or never started)."""
        if self._thread.ident is not None and self._thread.is_alive():
            self._thread.join(max(0.0, timeout))
        if self._thread.is_alive():
            log.warning("thread_join_timeout thread=%s timeout_s=%.3g", self.name, timeout)
            return False
        return True


def join_all(threads: list[StoppableThread], timeout: float) -> list[str]:
    """Join every thread within one shared deadline; the names of those still running."""
    deadline = time.monotonic() + timeout
    return [t.name for t in threads if not t.join(deadline - time.monotonic())]


class Handoff:
    """A job at a time on a thread of its own, while the thread that hands it goes on (one job in flight).

    The daemon's scorer hands each batch's commit (journal fsync, ledger, alerts, counters) here and scores the
    next batch meanwhile, so that the model never waits for the disk. `submit` first waits for the job before
    it and raises what that job raised: the caller learns of a failed job at its next hand-off.
    """

    def __init__(self, name: str) -> None:
        self._cond = threading.Condition()
        self._job: Callable[[], None] | None = None
        self._error: BaseException | None = None
        self.thread = StoppableThread(name, self._run)

    def start(self) -> None:
        """Start the thread."""
        self.thread.start()

    def submit(self, job: Callable[[], None]) -> None:
        """Run `job` on the thread once the job before it has ended (raising what that one raised)."""
        self.wait()
        with self._cond:
            self._job = job
            self._cond.notify_all()

    def wait(self) -> None:
        """Return once no job runs; raise what the last one raised (once)."""
        with self._cond:
            while self._job is not None:
                self._cond.wait()
            error, self._error = self._error, None
        if error is not None:
            raise error

    def idle(self, timeout: float) -> bool:
        """True once no job runs, within `timeout` seconds; a job's error stays for `wait` or `submit`."""
        with self._cond:
            return self._cond.wait_for(lambda: self._job is None, timeout)

    def _run(self, stop: threading.Event) -> None:
        while True:
            with self._cond:
                while self._job is None and not stop.is_set():
                    self._cond.wait(0.5)
                job = self._job
            if job is None:
                return  # stopped with nothing in hand
            error = None
            try:
                job()
            except BaseException as exc:  # noqa: BLE001 - handed back to the submitter
                error = exc
            with self._cond:
                self._job, self._error = None, error
                self._cond.notify_all()

    def stop(self) -> None:
        """Ask the thread to end once the job in hand (if any) has."""
        self.thread.stop()
        with self._cond:
            self._cond.notify_all()

    def join(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the thread to end."""
        return self.thread.join(timeout)
