"""One owner for every source: builds them from the config, starts, watches, acknowledges and stops them."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from monitor.batching import FrameQueue
from monitor.config import CameraSourceConfig, Config, FolderSourceConfig, SourceConfig, sorted_folder_of
from monitor.journal import read_journal_tail
from monitor.records import Frame, SourceEvent
from monitor.sources.base import Source
from monitor.sources.quarantine import Quarantine

log = logging.getLogger(__name__)


@dataclass
class SourceContext:
    """What sources share with the daemon: the queue, the quarantine, the state folder, the event sink."""

    queue: FrameQueue
    quarantine: Quarantine
    state: Path
    journal: Path
    on_event: Callable[[SourceEvent], None]

    @cached_property
    def recent_records(self) -> list[dict]:
        """The journal's tail, read once: folder sources reconcile their ledgers from it."""
        return read_journal_tail(self.journal)


def _folder(config: FolderSourceConfig, ctx: SourceContext) -> Source:
    from monitor.sources.folder import FolderSource
    from monitor.sources.ledger import Ledger

    source = FolderSource(config, ctx.queue, Ledger(ctx.state / f"ledger-{config.name}.jsonl"), ctx.quarantine,
                          sorted_folder_of(config, ctx.state))
    source.reconcile(ctx.recent_records)
    return source


def _camera(config: CameraSourceConfig, ctx: SourceContext) -> Source:
    from monitor.sources.camera import CameraSource

    return CameraSource(config, ctx.queue, ctx.on_event)


# One row per kind of source: its config class and how to build it. A new kind of source is one row here.
BUILDERS: dict[type, Callable[[SourceConfig, SourceContext], Source]] = {
    FolderSourceConfig: _folder,
    CameraSourceConfig: _camera,
}


def build_source(config: SourceConfig, ctx: SourceContext) -> Source:
    """The source object for one source config, paused before it starts when the config says `paused: true`."""
    source = BUILDERS[type(config)](config, ctx)
    if config.paused:
        source.pause_at_start()
    return source


class SourceSupervisor:
    """Holds `dict[str, Source]` for the daemon; it never needs to know which kind each one is.

    A reload changes the table from the main thread (`add`, `remove`, `replace`) while the scorer thread
    acknowledges frames: each change is one dict operation, and a frame whose source has left the table is
    simply not acknowledged (a folder file is then found again by its ledger's absence).
    """

    def __init__(self, sources: dict[str, Source]) -> None:
        self.sources = sources
        self._started = False

    @classmethod
    def from_config(cls, config: Config, ctx: SourceContext) -> SourceSupervisor:
        return cls({s.name: build_source(s, ctx) for s in config.sources})

    def __len__(self) -> int:
        return len(self.sources)

    def start(self) -> None:
        """Start every source in config order."""
        self._started = True
        for source in self.sources.values():
            source.start()

    def add(self, name: str, source: Source) -> None:
        """Add a source (started at once when the others run); ValueError if the name is taken."""
        if name in self.sources:
            raise ValueError(f"a source named {name!r} already runs")
        self.sources[name] = source
        if self._started:
            source.start()
        log.info("source_added source=%s", name)

    def remove(self, name: str) -> Source:
        """Stop a source, wait for its threads, and take it out of the table; the caller closes it once the
        scorer no longer acknowledges its frames. KeyError for an unknown name."""
        source = self.sources[name]
        source.stop()
        if not source.join(source.join_timeout_s):
            log.error("source_join_timeout source=%s timeout_s=%.3g", name, source.join_timeout_s)
        del self.sources[name]
        log.info("source_removed source=%s", name)
        return source

    def replace(self, name: str, build: Callable[[], Source]) -> Source:
        """Remove, close and rebuild a source (its successor reads what it left on disk); the new one."""
        self.remove(name).close()
        source = build()
        self.add(name, source)
        return source

    def dead(self) -> list[str]:
        """Names of the sources whose thread ended without being finished or stopped."""
        return [name for name, source in self.sources.items() if source.dead]

    def acknowledge(self, frame: Frame, anomaly: bool | None = None) -> None:
        """Hand a durable verdict (`anomaly`, None for a quarantine) back to the source of its frame."""
        source = self.sources.get(frame.source)
        if source is not None:
            source.acknowledge(frame, anomaly)

    def acknowledge_many(self, done: list[tuple[Frame, bool]]) -> None:
        """`acknowledge` for the (frame, anomaly) verdicts of one batch: each source hears its own at once."""
        by_source: dict[str, list[tuple[Frame, bool]]] = {}
        for frame, anomaly in done:
            by_source.setdefault(frame.source, []).append((frame, anomaly))
        for name, items in by_source.items():
            source = self.sources.get(name)
            if source is not None:
                source.acknowledge_many(items)

    def stop(self) -> None:
        """Ask every source to stop; returns at once."""
        for source in self.sources.values():
            source.stop()

    def join(self) -> list[str]:
        """Wait for every source within the longest join time any of them needs; names still running."""
        timeout = max([5.0, *(s.join_timeout_s for s in self.sources.values())])
        deadline = time.monotonic() + timeout
        late = [name for name, s in self.sources.items() if not s.join(max(0.1, deadline - time.monotonic()))]
        if late:
            log.error("sources_join_timeout sources=%s timeout_s=%.3g", ",".join(late), timeout)
        return late

    def close(self) -> None:
        """Close every source's durable state (after the scorer drained the queue)."""
        for source in self.sources.values():
            source.close()
