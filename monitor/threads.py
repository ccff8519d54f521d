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
