"""In-process harnesses: a daemon served by its HTTP server, and a folder source with its queue, ledger and
quarantine. (`daemon_proc` runs the daemon as a subprocess instead.)"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

from monitor.batching import FrameQueue
from monitor.config import FolderSourceConfig, parse_config
from monitor.daemon import Daemon
from monitor.http.control import DaemonController
from monitor.http.server import HttpServer
from monitor.model.bundle import load_bundle
from monitor.records import Frame
from monitor.sources.folder import FolderSource
from monitor.sources.ledger import Ledger
from monitor.sources.quarantine import Quarantine

TWO_LINES = [{"name": "line1", "folder": "inbox1", "settle_ms": 20},
             {"name": "line2", "folder": "inbox2", "settle_ms": 20}]


def make_daemon(workdir: Path, bundle: Path, sources: list[dict] = TWO_LINES) -> Daemon:
    """A daemon with folder `sources` (two by default); the metrics server of today is off: tests start ours."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = parse_config({"model": str(bundle), "sources": sources, "metrics": {"enabled": False}},
                          workdir / "config.yaml")
    return Daemon(config, load_bundle(bundle))


class Served:
    """A started daemon and its HTTP server on a free loopback port."""

    def __init__(self, daemon: Daemon, server: HttpServer) -> None:
        self.daemon = daemon
        self.server = server
        self.url = f"http://127.0.0.1:{server.port}"


def serve(daemon: Daemon, served_class: type[Served] = Served) -> Iterator[Served]:
    """Start `daemon` behind an HttpServer on loopback, yield it as `served_class`, then stop both.

    For a fixture: `yield from serve(daemon)`."""
    server = HttpServer("127.0.0.1", 0, DaemonController(daemon))
    server.start()
    daemon.start()
    waiter = threading.Thread(target=daemon.wait, name="daemon-wait")
    waiter.start()
    yield served_class(daemon, server)
    daemon.stop()
    waiter.join(30)
    server.stop()
    assert server.join(5)


class FolderLine:
    """A folder source on `tmp_path / "inbox"` with its queue, ledger and quarantine under `tmp_path`, started and
    stopped as the daemon does; `sorted_root` is where `after_scoring: move` sorts files."""

    def __init__(self, tmp_path: Path, name: str, capacity: int, sorted_root: Path | None = None,
                 **options) -> None:
        self.inbox = tmp_path / "inbox"
        self.ledger_path = tmp_path / "state" / f"ledger-{name}.jsonl"
        self.quarantine = tmp_path / "quarantine"
        self.sorted_root = sorted_root
        self.config = FolderSourceConfig(name=name, folder=self.inbox, **options)
        self.queue = FrameQueue(capacity)
        self.source: FolderSource | None = None

    def start(self, records: list[dict] = ()) -> FolderSource:
        """Start the source, after reconciling journal `records` into its ledger as the daemon does."""
        self.source = FolderSource(self.config, self.queue, Ledger(self.ledger_path), Quarantine(self.quarantine),
                                   self.sorted_root)
        self.source.reconcile(list(records))
        self.source.start()
        return self.source

    def stop(self) -> None:
        if self.source is not None:
            self.source.stop()
            self.queue.close()
            self.source.join(5)
            self.source.close()
            self.source = None
            self.queue = FrameQueue(self.queue.capacity)

    def frames(self, n: int, timeout: float = 10.0) -> list[Frame]:
        """The frames queued until there are `n` or `timeout` s have passed."""
        got: list[Frame] = []
        deadline = time.monotonic() + timeout
        while len(got) < n and time.monotonic() < deadline:
            got += self.queue.collect(max_batch=64, max_wait_s=0.0, poll_s=0.02)
        return got
