"""The alert dispatcher: outbox first, then one worker thread per sink that delivers with retries.

notify_* run on the scoring and camera threads: they decide cooldowns, write the alert file (fsync) and
return; they never touch the network. Each sink has its own worker, so a dead or slow sink delays only
itself. A worker delivers its alerts in the order they were made (so per source too), retries the oldest
one with exponential backoff until it succeeds or passes `max_age_s`, and removes a file only after the
sink accepted it. Delivery is at least once: a crash between the sink's answer and the file's removal
sends that alert again after the restart.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from monitor import metrics
from monitor.alerts.base import Sink
from monitor.alerts.config import AlertsConfig, SinkConfig
from monitor.alerts.events import TEST_KIND, Alert, SinkError
from monitor.alerts.outbox import Outbox
from monitor.records import SourceEvent, Verdict

log = logging.getLogger(__name__)

_MAX_DIGEST = 500  # anomalies listed in one digest at most; the rest go in the next one


def build_sink(config: SinkConfig) -> Sink:
    """The sink object for one sink config (modules imported on demand: apprise and paho are heavy)."""
    kind = config.type
    if kind == "webhook":
        from monitor.alerts.webhook import WebhookSink

        return WebhookSink(config)
    if kind == "email":
        from monitor.alerts.smtp import EmailSink

        return EmailSink(config)
    if kind == "apprise":
        from monitor.alerts.apprise_sink import AppriseSink

        return AppriseSink(config)
    if kind == "alertmanager":
        from monitor.alerts.alertmanager import AlertmanagerSink

        return AlertmanagerSink(config)
    if kind == "mqtt":
        from monitor.alerts.mqtt import MqttSink

        return MqttSink(config)
    if kind == "command":
        from monitor.alerts.command import CommandSink

        return CommandSink(config)
    raise ValueError(f"unknown sink type {kind!r}")


@dataclass
class _Held:
    """Anomalies of one source held back by a sink's cooldown since its last alert."""

    window_start: float  # monotonic time of the last alert that went out
    count: int = 0
    first: float = 0.0
    last: float = 0.0
    max_score: float = 0.0

    def summary(self) -> dict | None:
        if not self.count:
            return None
        return {"count": self.count, "first": self.first, "last": self.last, "max_score": self.max_score}


class _Worker:
    """Delivery for one sink: its pending alerts (oldest first), cooldown state, retry state."""

    def __init__(self, dispatcher: AlertDispatcher, config: SinkConfig, sink: Sink) -> None:
        self.d = dispatcher
        self.config = config
        self.sink = sink
        self.name = config.name
        self.cond = threading.Condition(dispatcher._lock)
        self.pending: list[Alert] = []
        self.held: dict[str, _Held] = {}
        self.attempts = 0
        self.next_attempt = 0.0  # monotonic
        self.thread = threading.Thread(target=self._run, name=f"alerts-{self.name}", daemon=True)

    # --- called with the dispatcher lock held -----------------------------------------------
    def add(self, alert: Alert) -> None:
        bisect.insort(self.pending, alert, key=lambda a: a.seq)
        self.cond.notify()

    def _next_flush(self) -> float | None:
        """Monotonic time at which the earliest cooldown with held anomalies ends."""
        due = [h.window_start + self.config.cooldown_s for h in self.held.values() if h.count]
        return min(due) if due else None

    def _flush_held(self, now: float, everything: bool = False) -> None:
        """Send a digest of what a finished cooldown held back, so nothing is only counted."""
        for source, held in list(self.held.items()):
            if held.count and (everything or now >= held.window_start + self.config.cooldown_s):
                alert = self.d._new_alert(self, "anomaly", source, suppressed=held.summary())
                if self.d._write(alert):
                    self.add(alert)
                    self.d._outbox_changed(+1)
                self.held[source] = _Held(window_start=now)

    def _take(self, now: float) -> list[Alert]:
        """The next alerts to send as one message: the oldest one, merged with its burst if a digest."""
        head = self.pending[0]
        batch = [head]
        digest_after = self.config.digest_after
        if head.kind == "anomaly" and digest_after > 0:
            for alert in self.pending[1:]:
                if alert.source != head.source:
                    continue
                if alert.kind != "anomaly" or len(batch) >= _MAX_DIGEST:
                    break  # an event of the same source must not be overtaken
                batch.append(alert)
            if len(batch) < digest_after:
                batch = [head]
        return batch

    # --- the thread --------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self.sink.open()
        except Exception as exc:  # noqa: BLE001 - a sink that cannot open is retried at each send
            log.warning("alert_sink_open_failed sink=%s error=%s", self.name, exc)
        try:
            self._loop()
        finally:
            try:
                self.sink.close()
            except Exception as exc:  # noqa: BLE001 - closing must not hide the reason we stopped
                log.warning("alert_sink_close_failed sink=%s error=%s", self.name, exc)

    def _loop(self) -> None:
        d = self.d
        while True:
            with self.cond:
                if d._halt.is_set():
                    return
                now = time.monotonic()
                self._flush_held(now, everything=d._draining.is_set())
                if not self.pending:
                    if d._draining.is_set():
                        return
                    flush = self._next_flush()
                    self.cond.wait(timeout=None if flush is None else max(0.0, flush - now))
                    continue
                head = self.pending[0]
                age = time.time() - head.created
                if age > d.config.max_age_s:
                    self._expire(head, age)
                    continue
                if now < self.next_attempt:
                    if d._draining.is_set():
                        return  # the sink is failing: leave the rest in the outbox for the next start
                    until = self.next_attempt
                    flush = self._next_flush()
                    if flush is not None:
                        until = min(until, flush)
                    self.cond.wait(timeout=max(0.0, until - now))
                    continue
                batch = self._take(now)
            message = batch[0].merged(batch[1:]) if len(batch) > 1 else batch[0]
            error = None
            try:
                self.sink.send(message)
            except SinkError as exc:
                error = str(exc)
            except Exception as exc:  # noqa: BLE001 - a sink bug must not kill its worker
                error = f"{type(exc).__name__}: {exc}"
            with self.cond:
                if error is None:
                    self._delivered(batch)
                else:
                    self._failed(message, error)

    def _delivered(self, batch: list[Alert]) -> None:
        now = time.time()
        for alert in batch:
            self.d.outbox.remove(alert)
            self.pending.remove(alert)
            metrics.ALERT_DELIVERY_SECONDS.labels(self.name).observe(max(0.0, now - alert.created))
        self.d._outbox_changed(-len(batch))
        metrics.ALERTS_SENT.labels(self.name).inc()
        self.attempts = 0
        self.next_attempt = 0.0
        head = batch[0]
        log.info("alert_sent sink=%s id=%s kind=%s source=%s anomalies=%d latency_s=%.3f", self.name,
                 head.id, head.kind, head.source, sum(len(a.verdicts) for a in batch), now - head.created)

    def _failed(self, message: Alert, error: str) -> None:
        cfg = self.d.config
        self.attempts += 1
        delay = min(cfg.backoff_max_s, cfg.backoff_initial_s * 2 ** (self.attempts - 1))
        self.next_attempt = time.monotonic() + delay
        metrics.ALERTS_FAILED.labels(self.name).inc()
        log.warning("alert_failed sink=%s id=%s kind=%s source=%s attempt=%d retry_in_s=%.3g waiting=%d "
                    "error=%s", self.name, message.id, message.kind, message.source, self.attempts, delay,
                    len(self.pending), error)

    def _expire(self, alert: Alert, age: float) -> None:
        self.pending.remove(alert)
        kept = self.d.outbox.expire(alert, self.d.config.expired_keep)
        self.d._outbox_changed(-1)
        metrics.ALERTS_EXPIRED.labels(self.name).inc()
        log.error("alert_expired sink=%s id=%s kind=%s source=%s age_s=%.0f attempts=%d anomalies=%d kept=%s",
                  self.name, alert.id, alert.kind, alert.source, age, self.attempts, len(alert.verdicts),
                  kept or "no")
        # The next alert gets its own full set of retries.
        self.attempts = 0
        self.next_attempt = 0.0


class AlertDispatcher:
    """Receives verdicts and source events, persists them as alerts, and delivers them to every sink."""

    def __init__(self, config: AlertsConfig, outbox_dir: Path) -> None:
        self.config = config
        self.outbox = Outbox(outbox_dir)
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self._draining = threading.Event()
        self._seq = self.outbox.max_seq() + 1
        self._size = 0
        self._started = False
        self._workers: list[_Worker] = [_Worker(self, sc, build_sink(sc)) for sc in config.active_sinks]

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Re-queue what a previous run left in the outbox, then start one named thread per sink."""
        with self._lock:
            if self._started:
                return
            self._started = True
            known = {w.name for w in self._workers}
            for worker in self._workers:
                leftover = self.outbox.load(worker.name)
                for alert in leftover:
                    worker.add(alert)
                if leftover:
                    log.info("alert_outbox_requeued sink=%s alerts=%d", worker.name, len(leftover))
            self._size = sum(len(w.pending) for w in self._workers)
            for other in set(self.outbox.sinks_on_disk()) - known:
                n = self.outbox.count(other)
                if n:
                    log.warning("alert_outbox_orphaned sink=%s alerts=%d reason=sink_not_configured",
                                other, n)
            metrics.ALERT_OUTBOX_SIZE.set(self._size)
        for worker in self._workers:
            worker.thread.start()
        log.info("alert_dispatcher_started sinks=%s", ",".join(w.name for w in self._workers) or "none")

    def stop(self, timeout: float = 5.0) -> None:
        """Deliver what can go out quickly, then stop the threads; the rest stays in the outbox."""
        deadline = time.monotonic() + timeout
        self._draining.set()  # workers leave once their queue is empty or their sink is failing
        with self._lock:
            for worker in self._workers:
                worker.cond.notify_all()
        drain_until = time.monotonic() + 0.8 * timeout
        for worker in self._workers:
            if worker.thread.is_alive():
                worker.thread.join(max(0.0, drain_until - time.monotonic()))
        self._halt.set()
        with self._lock:
            for worker in self._workers:
                worker.cond.notify_all()
        for worker in self._workers:
            if worker.thread.is_alive():
                worker.thread.join(max(0.0, deadline - time.monotonic()))
            if worker.thread.is_alive():
                log.warning("alert_worker_still_busy sink=%s (a send is blocked; it stays in the outbox)",
                            worker.name)
        left = self.pending_count()
        log.info("alert_dispatcher_stopped undelivered=%d", left)

    # --- producers (scoring and camera threads) ----------------------------------------------
    def notify_verdict(self, verdict: Verdict) -> None:
        """Queue an anomaly for every sink that wants anomalies; returns once it is on disk."""
        if not verdict.anomaly:
            return
        record = verdict.to_json()
        now = time.monotonic()
        made: list[tuple[_Worker, Alert]] = []
        with self._lock:
            for worker in self._workers:
                if "anomaly" not in worker.config.events:
                    continue
                cooldown = worker.config.cooldown_s
                held = worker.held.get(verdict.source)
                if cooldown > 0 and held is not None and now < held.window_start + cooldown:
                    if not held.count:
                        held.first = verdict.scored_at
                        worker.cond.notify()  # an idle worker must wake at the cooldown's end for the digest
                    held.count += 1
                    held.last = verdict.scored_at
                    held.max_score = max(held.max_score, verdict.score)
                    metrics.ALERTS_SUPPRESSED.labels(worker.name).inc()
                    log.debug("alert_suppressed sink=%s source=%s held=%d", worker.name, verdict.source,
                              held.count)
                    continue
                summary = held.summary() if held is not None else None
                worker.held[verdict.source] = _Held(window_start=now)
                made.append((worker, self._new_alert(worker, "anomaly", verdict.source, verdicts=(record,),
                                                     suppressed=summary)))
        self._persist(made)

    def notify_event(self, event: SourceEvent) -> None:
        """Queue a camera_lost/camera_found/daemon_start/daemon_stop event for the sinks that want it."""
        record = event.to_json()
        with self._lock:
            made = [(w, self._new_alert(w, event.kind, event.source, event=record))
                    for w in self._workers if event.kind in w.config.events]
        self._persist(made)

    # --- internals ------------------------------------------------------------------------------
    def _new_alert(self, worker: _Worker, kind: str, source: str, **fields) -> Alert:  # noqa: ANN003
        """A new alert with the next sequence number (dispatcher lock held)."""
        alert = Alert.new(self._seq, worker.name, kind, source, time.time(), **fields)
        self._seq += 1
        return alert

    def _write(self, alert: Alert) -> bool:
        """Persist an alert; False (counted and logged) when the disk refuses it."""
        try:
            self.outbox.write(alert)
        except OSError as exc:
            # The journal still has the verdict; say loudly that this alert could not be kept.
            metrics.ERRORS.labels("alerts").inc()
            log.error("alert_outbox_write_failed sink=%s kind=%s source=%s error=%s", alert.sink, alert.kind,
                      alert.source, exc)
            return False
        return True

    def _persist(self, made: list[tuple[_Worker, Alert]]) -> None:
        """Write new alerts outside the lock (fsync is slow), then hand them to their workers.

        Sequence numbers were taken under the lock and workers insert by them, so the order stays the
        order of the notify calls; alerts of one source come from one thread (the scorer) anyway.
        """
        written = [(w, a) for w, a in made if self._write(a)]
        if not written:
            return
        with self._lock:
            for worker, alert in written:
                worker.add(alert)
            self._outbox_changed(+len(written))

    def _outbox_changed(self, delta: int) -> None:
        self._size += delta
        metrics.ALERT_OUTBOX_SIZE.set(self._size)

    def pending_count(self) -> int:
        """Alerts waiting in the outbox for the configured sinks."""
        with self._lock:
            return sum(len(w.pending) for w in self._workers)


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
