"""The bounded frame queue and the batch collector.

Folder files wait in a bounded FIFO: a producer blocks when it is full, so no file is ever dropped.
Camera frames live in one slot per camera: a newer frame replaces the older one (latest wins, the drop
is counted), so a camera never falls behind and never crowds folder files out of a batch.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable

from monitor.records import Frame


class QueueClosed(Exception):
    """Raised by `put` once the queue no longer accepts frames (the daemon is stopping)."""


class FrameQueue:
    """Bounded FIFO for files plus a latest-wins slot per camera."""

    def __init__(self, capacity: int, on_camera_drop: Callable[[str], None] | None = None) -> None:
        self.capacity = capacity
        self._files: deque[Frame] = deque()
        self._cameras: OrderedDict[str, Frame] = OrderedDict()
        self._cond = threading.Condition()
        self._closed = False
        self._on_camera_drop = on_camera_drop

    def __len__(self) -> int:
        with self._cond:
            return len(self._files) + len(self._cameras)

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, frame: Frame, timeout: float | None = None) -> bool:
        """Queue a file frame, blocking while the queue is full; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while len(self._files) >= self.capacity and not self._closed:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
            if self._closed:
                raise QueueClosed("the frame queue is closed")
            self._files.append(frame)
            self._cond.notify_all()
            return True

    def put_latest(self, frame: Frame) -> bool:
        """Offer a camera frame; it replaces a still-queued frame of the same source. Never blocks.

        Returns False when an older frame was dropped for it.
        """
        with self._cond:
            if self._closed:
                raise QueueClosed("the frame queue is closed")
            dropped = self._cameras.pop(frame.source, None) is not None
            self._cameras[frame.source] = frame
            self._cond.notify_all()
        if dropped and self._on_camera_drop is not None:
            self._on_camera_drop(frame.source)
        return not dropped

    def discard(self, sources: set[str]) -> dict[str, int]:
        """Drop the queued frames of `sources` (a reload removed or replaced them); counts by source.

        Never acknowledged: a folder's file stays out of its ledger and is found again by the source that
        replaces it, or at the next start.
        """
        counts: dict[str, int] = {}
        with self._cond:
            kept = deque(f for f in self._files if f.source not in sources)
            for frame in self._files:
                if frame.source in sources:
                    counts[frame.source] = counts.get(frame.source, 0) + 1
            self._files = kept
            for name in sources & set(self._cameras):
                del self._cameras[name]
                counts[name] = counts.get(name, 0) + 1
            self._cond.notify_all()  # room for producers blocked on a full queue
        return counts

    def close(self) -> None:
        """Stop accepting frames; frames already queued can still be collected."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _oldest_enqueued(self) -> float:
        times = [f.enqueued for f in self._cameras.values()]
        if self._files:
            times.append(self._files[0].enqueued)
        return min(times)

    def _take(self, n: int) -> list[Frame]:
        # Camera slots first (at most one frame per camera, so they cannot starve files), then files.
        batch: list[Frame] = []
        while self._cameras and len(batch) < n:
            batch.append(self._cameras.popitem(last=False)[1])
        while self._files and len(batch) < n:
            batch.append(self._files.popleft())
        self._cond.notify_all()  # producers blocked on a full queue
        return batch

    def collect(self, max_batch: int, max_wait_s: float, poll_s: float = 0.2) -> list[Frame]:
        """Return the next batch: closed at `max_batch` frames or when its oldest frame has waited
        `max_wait_s`. Returns [] after `poll_s` with nothing queued, so callers can check for stop."""
        with self._cond:
            if not self._files and not self._cameras:
                self._cond.wait(poll_s)
                if not self._files and not self._cameras:
                    return []
            while True:
                count = len(self._files) + len(self._cameras)
                if count >= max_batch or self._closed:
                    return self._take(max_batch)
                remaining = self._oldest_enqueued() + max_wait_s - time.monotonic()
                if remaining <= 0:
                    return self._take(max_batch)
                self._cond.wait(remaining)
