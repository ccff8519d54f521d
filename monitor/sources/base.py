"""The one shape every source has, so the daemon can hold `dict[str, Source]` and not care which kind.

A source runs its own thread(s), feeds frames into the frame queue, and learns through `acknowledge`
when a frame's verdict (or its quarantine) is durable; only then may it forget the frame for good.
A source whose thread ends is either `finished` (a video file played to its end: fine) or dead (a bug or
a fault: the daemon exits 1 so the service manager restarts it).

An operator may pause a source that supports it (`PausableSource`: folders and cameras) and resume it later:
a paused source hands nothing new to the queue, and nothing it would have handed is lost. A source whose
config says `paused: true` is paused before it starts (`pause_at_start`), so not one backlog file is read.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from typing import ClassVar

from monitor import metrics
from monitor.records import Frame
from monitor.threads import StoppableThread

log = logging.getLogger(__name__)

# The values of `Source.state`, as the status API reports them.
STATES = ("running", "paused", "finished", "dead", "stopped")


class NotPausable(Exception):
    """The source cannot be paused or resumed: its kind cannot, or it is not running (finished, dead, stopped)."""


class Source(ABC):
    """A producer of frames with a start/stop/join lifecycle."""

    name: str
    thread: StoppableThread
    # What the status API calls this kind of source ("folder", "camera").
    source_kind: ClassVar[str] = "source"

    @abstractmethod
    def start(self) -> None:
        """Begin producing frames (a folder's backlog scan happens here)."""

    def stop(self) -> None:
        """Stop producing; frames already queued are still scored. Returns at once."""
        self.thread.stop()

    def join(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the source's threads to end; True when they have."""
        return self.thread.join(timeout)

    @property
    def alive(self) -> bool:
        """True while the source's thread runs."""
        return self.thread.alive

    @property
    def finished(self) -> bool:
        """True when the source ended by design and will produce no more (e.g. a video file's end)."""
        return False

    @property
    def dead(self) -> bool:
        """Started, not asked to stop, not finished, and yet its thread has ended: a fault."""
        return self.thread.started and not self.thread.alive and not self.thread.stopping and not self.finished

    @property
    def pausable(self) -> bool:
        """True when this kind of source can be paused (see PausableSource)."""
        return False

    @property
    def paused(self) -> bool:
        """True while an operator has the source paused."""
        return False

    def pause(self) -> None:
        """Stop handing new frames to the queue until `resume()`; NotPausable when the source cannot."""
        raise NotPausable(f"source {self.name!r} ({self.source_kind}) cannot be paused")

    def resume(self) -> None:
        """Hand frames to the queue again after `pause()`; NotPausable when the source cannot."""
        raise NotPausable(f"source {self.name!r} ({self.source_kind}) cannot be resumed")

    @property
    def state(self) -> str:
        """One of STATES: finished and dead first (they are final), then paused, running, or stopped."""
        if self.finished:
            return "finished"
        if self.dead:
            return "dead"
        if self.alive:
            return "paused" if self.paused else "running"
        return "stopped"  # not started yet, or asked to stop

    @property
    def join_timeout_s(self) -> float:
        """How long `join` may need after `stop` (a camera blocked in a read needs its read timeout)."""
        return 5.0

    def pause_at_start(self) -> None:
        """Start paused (config `paused: true`); called before `start()`. NotPausable when the source cannot."""
        raise NotPausable(f"source {self.name!r} ({self.source_kind}) cannot be paused")

    def acknowledge(self, frame: Frame, anomaly: bool | None = None) -> None:
        """The verdict (`anomaly`) or the quarantine (None) of `frame` is durable: the source may forget it."""
        return  # a camera keeps no state per frame

    def acknowledge_many(self, done: list[tuple[Frame, bool]]) -> None:
        """`acknowledge` for the (frame, anomaly) verdicts of one batch, all durable."""
        for frame, anomaly in done:
            self.acknowledge(frame, anomaly)

    def close(self) -> None:
        """Release durable state (files) once the queue is drained and the scorer has stopped."""
        return  # only sources with files (a folder's ledger) have anything to close


class PausableSource(Source):
    """A source an operator can pause and resume while it runs.

    The request only flips an event and returns at once: the source's own thread notices it and does
    the work (a folder holds its candidates, a camera releases its capture), so an HTTP handler never
    touches a source's internals from another thread. Subclasses call `super().__init__(name)`.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._pause_requested = threading.Event()
        # The series exists from the start (0), so a rule can say "down unless paused" from the first scrape.
        metrics.SOURCE_PAUSED.labels(name).set(0)

    @property
    def pausable(self) -> bool:
        return True

    @property
    def paused(self) -> bool:
        return self._pause_requested.is_set()

    def _check_running(self, action: str) -> None:
        if not self.alive or self.finished or self.thread.stopping:
            raise NotPausable(f"source {self.name!r} is {self.state}: only a running source can be {action}")

    def pause_at_start(self) -> None:
        """Be paused from the start: pause() needs a running source, and by then a backlog file may be read."""
        if self.thread.started:
            raise NotPausable(f"source {self.name!r} has started: pause it with pause()")
        self._pause_requested.set()
        metrics.SOURCE_PAUSED.labels(self.name).set(1)
        log.info("source_paused source=%s kind=%s reason=config", self.name, self.source_kind)

    def pause(self) -> None:
        """Pause the source; pausing a paused source changes nothing."""
        self._check_running("paused")
        if self._pause_requested.is_set():
            return
        self._pause_requested.set()
        metrics.SOURCE_PAUSED.labels(self.name).set(1)
        log.info("source_paused source=%s kind=%s", self.name, self.source_kind)
        self._paused_changed()

    def resume(self) -> None:
        """Resume the source; resuming a running source changes nothing."""
        self._check_running("resumed")
        if not self._pause_requested.is_set():
            return
        self._pause_requested.clear()
        metrics.SOURCE_PAUSED.labels(self.name).set(0)
        log.info("source_resumed source=%s kind=%s", self.name, self.source_kind)
        self._paused_changed()

    def _paused_changed(self) -> None:
        """Hook: wake the source's thread so it sees the new state now rather than at its next poll."""
        return
