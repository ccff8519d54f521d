"""The one shape every source has, so the daemon can hold `dict[str, Source]` and not care which kind.

A source runs its own thread(s), feeds frames into the frame queue, and learns through `acknowledge`
when a frame's verdict (or its quarantine) is durable; only then may it forget the frame for good.
A source whose thread ends is either `finished` (a video file played to its end: fine) or dead (a bug or
a fault: the daemon exits 1 so the service manager restarts it).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from monitor.records import Frame
from monitor.threads import StoppableThread


class Source(ABC):
    """A producer of frames with a start/stop/join lifecycle."""

    name: str
    thread: StoppableThread

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
    def join_timeout_s(self) -> float:
        """How long `join` may need after `stop` (a camera blocked in a read needs its read timeout)."""
        return 5.0

    def acknowledge(self, frame: Frame) -> None:
        """The verdict or quarantine of `frame` is durable: the source may forget it for good."""
        return  # a camera keeps no state per frame

    def close(self) -> None:
        """Release durable state (files) once the queue is drained and the scorer has stopped."""
        return  # only sources with files (a folder's ledger) have anything to close
