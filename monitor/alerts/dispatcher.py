"""The alert dispatcher: outbox first, then one worker thread per sink that delivers with retries.

notify_* run on the scoring and camera threads: they ask each sink's cooldown policy, write the alert file
(fsync) and return; they never touch the network. Each sink has its own SinkWorker, so a dead or slow sink
delays only itself. Delivery is at least once: a crash between the sink's answer and the file's removal
sends that alert again after the restart.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from monitor import metrics
from monitor.alerts.base import build_sink
from monitor.alerts.config import AlertsConfig
from monitor.alerts.events import TEST_KIND, Alert, SinkError
from monitor.alerts.outbox import Outbox, log_safe
from monitor.alerts.worker import SinkWorker, write_alert
from monitor.records import SourceEvent, Verdict

log = logging.getLogger(__name__)

Prepared = list[tuple[SinkWorker, Alert]]  # alerts on disk, not yet handed to their workers


class AlertDispatcher:
    """Receives verdicts and source events, persists them as alerts, and delivers them to every sink."""

    def __init__(self, config: AlertsConfig, outbox_dir: Path) -> None:
        self.config = config
        self.outbox = Outbox(outbox_dir)
        # Producers run one at a time, so every sink sees the notify calls in the same order.
        self._lock = threading.Lock()
        self._started = False
        # Sequence numbers and the outbox size are shared with the workers; nothing else is taken under
        # this lock, so a worker may ask for a number while it holds its own lock.
        self._count_lock = threading.Lock()
        self._seq = self.outbox.max_seq() + 1
        self._size = 0
        self._workers: list[SinkWorker] = [
            SinkWorker(sc, build_sink(sc), config, self.outbox, self._next_seq, self._outbox_changed)
            for sc in config.active_sinks
        ]

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Re-queue what a previous run left in the outbox, then start one named thread per sink."""
        with self._lock:
            if self._started:
                return
            self._started = True
            requeued = 0
            for worker in self._workers:
                n = worker.requeue(self.outbox.load(worker.name))
                requeued += n
                if n:
                    log.info("alert_outbox_requeued sink=%s alerts=%d", worker.name, n)
            self._outbox_changed(requeued)
            for other in set(self.outbox.sinks_on_disk()) - {w.name for w in self._workers}:
                n = self.outbox.count(other)
                if n:
                    log.warning("alert_outbox_orphaned sink=%s alerts=%d reason=sink_not_configured",
                                log_safe(other), n)
        for worker in self._workers:
            worker.start()
        log.info("alert_dispatcher_started sinks=%s", ",".join(w.name for w in self._workers) or "none")

    def stop(self, timeout: float = 5.0) -> None:
        """Deliver what can go out quickly, then stop the threads; the rest stays in the outbox."""
        deadline = time.monotonic() + timeout
        for worker in self._workers:
            worker.drain()
        drain_until = time.monotonic() + 0.8 * timeout
        for worker in self._workers:
            worker.wait_drained(drain_until - time.monotonic())
        for worker in self._workers:
            worker.halt()
        for worker in self._workers:
            if not worker.thread.join(deadline - time.monotonic()):
                log.warning("alert_worker_still_busy sink=%s reason=send_blocked", worker.name)
        log.info("alert_dispatcher_stopped undelivered=%d", self.pending_count())

    # --- producers (scoring and camera threads) ----------------------------------------------
    def notify_verdict(self, verdict: Verdict, external_url: str | None = None) -> None:
        """Queue an anomaly for every sink that wants anomalies; returns once it is on disk."""
        self.release(self.prepare_verdict(verdict, external_url))

    def prepare_verdict(self, verdict: Verdict, external_url: str | None = None) -> Prepared:
        """Write the alerts of an anomaly to the outbox (durable) without handing them to the workers yet.

        `external_url` (the config's `http.external_url`) gives each alert its link to the verdict on the
        review page. It is passed per call, not kept here: the daemon reads it from the config in force, so a
        reload that changes only the URL applies to the next alert without rebuilding the dispatcher.

        The daemon prepares before the verdict's journal line and releases after the journal's fsync: a crash
        in between leaves an alert whose file is scored again (a duplicate, never a loss), and no alert is sent
        before its verdict is in the journal. Alerts never released go out after the next start.
        """
        if not verdict.anomaly:
            return []
        record = verdict.to_json()
        now = time.monotonic()
        made: list[tuple[SinkWorker, Alert]] = []
        with self._lock:
            for worker in self._workers:
                if "anomaly" not in worker.config.events:
                    continue
                decision = worker.on_anomaly(verdict.source, verdict.scored_at, verdict.score, now)
                if decision.send:
                    made.append((worker, self._new_alert(worker, "anomaly", verdict.source, verdicts=(record,),
                                                         suppressed=decision.suppressed,
                                                         external_url=external_url)))
        return self._write(made)

    def release(self, prepared: Prepared) -> None:
        """Hand prepared (written) alerts to their workers."""
        for worker, alert in prepared:
            worker.add(alert)
        if prepared:
            self._outbox_changed(+len(prepared))

    def notify_event(self, event: SourceEvent) -> None:
        """Queue a camera_lost/camera_found/daemon_start/daemon_stop event for the sinks that want it."""
        record = event.to_json()
        with self._lock:
            made = [(w, self._new_alert(w, event.kind, event.source, event=record))
                    for w in self._workers if event.kind in w.config.events]
        self._persist(made)

    def pending_count(self) -> int:
        """Alerts waiting in the outbox for the configured sinks."""
        return sum(w.pending_count() for w in self._workers)

    # --- internals ------------------------------------------------------------------------------
    def _new_alert(self, worker: SinkWorker, kind: str, source: str, **fields: Any) -> Alert:
        """A new alert with the next sequence number (taken under the producer lock: notify order)."""
        return Alert.new(self._next_seq(), worker.name, kind, source, time.time(), **fields)

    def _persist(self, made: list[tuple[SinkWorker, Alert]]) -> None:
        """Write new alerts outside the lock (fsync is slow), then hand them to their workers.

        Workers insert by sequence number, so the order stays the order of the notify calls; alerts of
        one source come from one thread (the scorer) anyway.
        """
        self.release(self._write(made))

    def _write(self, made: list[tuple[SinkWorker, Alert]]) -> Prepared:
        """The alerts that reached the disk (a refused write is counted and logged by write_alert)."""
        return [(w, a) for w, a in made if write_alert(self.outbox, a)]

    def _next_seq(self) -> int:
        with self._count_lock:
            seq = self._seq
            self._seq += 1
            return seq

    def _outbox_changed(self, delta: int) -> None:
        with self._count_lock:
            self._size += delta
            metrics.ALERT_OUTBOX_SIZE.set(self._size)


def send_test_alert(config: AlertsConfig) -> list[tuple[str, bool, str]]:
    """Send one test alert to every enabled sink, directly (no outbox); (sink name, ok, detail) each."""
    results: list[tuple[str, bool, str]] = []
    for sink_config in config.active_sinks:
        sink = build_sink(sink_config)
        sink.announce = False
        alert = Alert.new(0, sink.name, TEST_KIND, "test", time.time())
        try:
            sink.open()
            sink.send(alert)
            results.append((sink.name, True, f"{sink_config.type} delivered"))
        except SinkError as exc:
            results.append((sink.name, False, str(exc)))
        except Exception as exc:  # noqa: BLE001 - report every sink, whatever breaks in one
            results.append((sink.name, False, f"{type(exc).__name__}: {exc}"))
        finally:
            try:
                sink.close()
            except Exception as exc:  # noqa: BLE001
                log.warning("alert_sink_close_failed sink=%s error=%s", sink.name, exc)
    return results
