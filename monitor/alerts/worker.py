"""Delivery for one sink, on its own thread: oldest alert first, retries with backoff, expiry, rejection.

A worker sends its pending alerts in sequence order (so per source too), retries the oldest one with
exponential backoff until the sink accepts it or it passes `max_age_s`, and removes a file only after the
sink accepted it. A sink that refuses an alert for good (PermanentSinkError: HTTP 400, SMTP 550) has it
parked in `rejected/` at once, and the next alert goes out without waiting: retrying cannot help it, and
it must not hold every alert behind it for a day. Its sink's AlertPolicy lives here, under the worker's
lock, because the worker is the one that waits: it wakes when a cooldown that holds anomalies ends and
queues their digest.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections.abc import Callable

from monitor import metrics
from monitor.alerts.base import Sink
from monitor.alerts.config import AlertsConfig, SinkConfig
from monitor.alerts.events import Alert, SinkError, iso
from monitor.alerts.outbox import Outbox, log_safe
from monitor.alerts.policy import AlertPolicy, Decision
from monitor.threads import StoppableThread

log = logging.getLogger(__name__)


def write_alert(outbox: Outbox, alert: Alert) -> bool:
    """Persist an alert; False (counted and logged) when the disk refuses it."""
    try:
        outbox.write(alert)
    except OSError as exc:
        # The journal still has the verdict; say loudly that this alert could not be kept.
        metrics.ERRORS.labels("alerts").inc()
        log.error("alert_outbox_write_failed sink=%s kind=%s source=%s error=%s", alert.sink, alert.kind,
                  alert.source, exc)
        return False
    return True


class SinkWorker:
    """The pending alerts of one sink (oldest first), its cooldown policy and its retry state."""

    def __init__(self, config: SinkConfig, sink: Sink, settings: AlertsConfig, outbox: Outbox,
                 next_seq: Callable[[], int], outbox_changed: Callable[[int], None]) -> None:
        self.config = config
        self.sink = sink
        self.name = config.name
        self._settings = settings  # backoff, max_age_s, expired_keep
        self._outbox = outbox
        self._next_seq = next_seq  # sequence numbers are shared by every sink: the dispatcher hands them out
        self._outbox_changed = outbox_changed
        self._cond = threading.Condition()  # guards everything below
        self._policy = AlertPolicy(config.cooldown_s, config.digest_after)
        self._pending: list[Alert] = []
        self._draining = False
        self._attempts = 0
        self._next_attempt = 0.0  # monotonic
        self._last_error = ""  # the sink's last answer, kept in the reason file of an expired alert
        # A digest the sink refused for good is sent again one alert at a time, up to this sequence number,
        # so a refusal of the merged message (too large, say) rejects only the alerts the sink refuses alone.
        self._single_through = -1
        self._done = threading.Event()
        self.thread = StoppableThread(f"alerts-{self.name}", self._run)

    # --- called by the dispatcher ------------------------------------------------------------
    def on_anomaly(self, source: str, scored_at: float, score: float, now: float) -> Decision:
        """Ask the cooldown policy about an anomaly of `source` (monotonic `now`); counts what it holds."""
        with self._cond:
            decision = self._policy.on_anomaly(source, scored_at, score, now)
            if decision.held == 1:
                self._cond.notify()  # an idle worker must wake at the cooldown's end for the digest
        if not decision.send:
            metrics.ALERTS_SUPPRESSED.labels(self.name).inc()
            log.debug("alert_suppressed sink=%s source=%s held=%d", self.name, source, decision.held)
        return decision

    def add(self, alert: Alert) -> None:
        """Queue an alert that is on disk; the sequence number decides its place."""
        with self._cond:
            self._insert(alert)

    def requeue(self, alerts: list[Alert]) -> int:
        """Queue what a previous run left in the outbox; alerts already pending are not queued twice."""
        with self._cond:
            known = {a.id for a in self._pending}
            fresh = [a for a in alerts if a.id not in known]
            for alert in fresh:
                self._insert(alert)
            return len(fresh)

    def pending_count(self) -> int:
        """Alerts waiting for this sink."""
        with self._cond:
            return len(self._pending)

    def start(self) -> None:
        """Start the delivery thread."""
        self.thread.start()

    def drain(self) -> None:
        """Digest what the cooldowns hold, deliver what goes out quickly, then end the thread.

        The thread ends once nothing is pending, or at once when the sink is failing (what is left
        stays in the outbox for the next start).
        """
        with self._cond:
            self._draining = True
            self._cond.notify_all()

    def wait_drained(self, timeout: float) -> bool:
        """Wait up to `timeout` s for the thread to end after drain(); True when it has (or never started)."""
        return not self.thread.alive or self._done.wait(max(0.0, timeout))

    def halt(self) -> None:
        """End the thread after the send in progress, whatever is pending."""
        self.thread.stop()
        with self._cond:
            self._cond.notify_all()

    def _insert(self, alert: Alert) -> None:
        bisect.insort(self._pending, alert, key=lambda a: a.seq)
        self._cond.notify()

    # --- the thread ----------------------------------------------------------------------------
    def _run(self, stop: threading.Event) -> None:
        try:
            self.sink.open()
        except Exception as exc:  # noqa: BLE001 - a sink that cannot open is retried at each send
            log.warning("alert_sink_open_failed sink=%s error=%s", self.name, exc)
        try:
            self._loop(stop)
        finally:
            try:
                self.sink.close()
            except Exception as exc:  # noqa: BLE001 - closing must not hide the reason we stopped
                log.warning("alert_sink_close_failed sink=%s error=%s", self.name, exc)
            self._done.set()

    def _loop(self, stop: threading.Event) -> None:
        while True:
            with self._cond:
                if stop.is_set():
                    return
                now = time.monotonic()
                digests = self._digests(now)
                batch = [] if digests else self._ready(now)
                if batch is None:
                    return
            # Written outside the lock: an fsync must not hold up the scorer asking on_anomaly.
            for alert in digests:
                if write_alert(self._outbox, alert):
                    self.add(alert)
                    self._outbox_changed(+1)
            if batch:
                self._send(batch)

    def _digests(self, now: float) -> list[Alert]:
        """Alerts for what finished cooldowns held back (all of it when draining), so nothing is only counted."""
        return [Alert.new(self._next_seq(), self.name, "anomaly", source, time.time(), suppressed=summary)
                for source, summary in self._policy.due_digests(now, everything=self._draining)]

    def _ready(self, now: float) -> list[Alert] | None:
        """The next alerts to send as one message; [] after waiting or expiring; None when the thread ends."""
        if not self._pending:
            if self._draining:
                return None
            self._wait(self._policy.next_digest_at(), now)
            return []
        head = self._pending[0]
        age = time.time() - head.created
        if age > self._settings.max_age_s:
            self._expire(head, age)
            return []
        if now < self._next_attempt:
            if self._draining:
                return None  # the sink is failing: leave the rest in the outbox for the next start
            digest_at = self._policy.next_digest_at()
            self._wait(self._next_attempt if digest_at is None else min(self._next_attempt, digest_at), now)
            return []
        if head.seq <= self._single_through:
            return [head]
        return self._policy.take(self._pending)

    def _wait(self, until: float | None, now: float) -> None:
        """Sleep until `until` (monotonic; None: until woken), or until add(), drain() or halt() wake us."""
        self._cond.wait(timeout=None if until is None else max(0.0, until - now))

    def _send(self, batch: list[Alert]) -> None:
        message = batch[0].merged(batch[1:]) if len(batch) > 1 else batch[0]
        error = None
        permanent = False
        try:
            self.sink.send(message)
        except SinkError as exc:
            error = str(exc)
            permanent = exc.permanent
        except Exception as exc:  # noqa: BLE001 - a sink bug must not kill its worker
            # Temporary: a bug may depend on the moment; the outbox loader already refuses malformed alerts.
            error = f"{type(exc).__name__}: {exc}"
        with self._cond:
            if error is None:
                self._delivered(batch)
            elif permanent and len(batch) > 1:
                self._unmerge(batch, error)
            elif permanent:
                self._rejected(message, error)
            else:
                self._failed(message, error)

    def _delivered(self, batch: list[Alert]) -> None:
        now = time.time()
        for alert in batch:
            self._outbox.remove(alert)
            self._pending.remove(alert)
            metrics.ALERT_DELIVERY_SECONDS.labels(self.name).observe(max(0.0, now - alert.created))
        self._outbox_changed(-len(batch))
        metrics.ALERTS_SENT.labels(self.name).inc()
        self._attempts = 0
        self._next_attempt = 0.0
        self._last_error = ""
        head = batch[0]
        log.info("alert_sent sink=%s id=%s kind=%s source=%s anomalies=%d latency_s=%.3f", self.name,
                 head.id, head.kind, log_safe(head.source), sum(len(a.verdicts) for a in batch), now - head.created)

    def _failed(self, message: Alert, error: str) -> None:
        cfg = self._settings
        self._attempts += 1
        self._last_error = error
        delay = min(cfg.backoff_max_s, cfg.backoff_initial_s * 2 ** (self._attempts - 1))
        self._next_attempt = time.monotonic() + delay
        metrics.ALERTS_FAILED.labels(self.name).inc()
        log.warning("alert_failed sink=%s id=%s kind=%s source=%s attempt=%d retry_in_s=%.3g waiting=%d "
                    "error=%s", self.name, message.id, message.kind, log_safe(message.source), self._attempts, delay,
                    len(self._pending), log_safe(error))

    def _unmerge(self, batch: list[Alert], error: str) -> None:
        """The sink refused a digest for good: send its alerts one by one, now, so each is judged alone."""
        self._single_through = batch[-1].seq
        metrics.ALERTS_FAILED.labels(self.name).inc()
        log.warning("alert_digest_rejected sink=%s id=%s source=%s alerts=%d action=send_singly error=%s",
                    self.name, batch[0].id, log_safe(batch[0].source), len(batch), log_safe(error))

    def _rejected(self, alert: Alert, error: str) -> None:
        """Park an alert the sink refused for good in `rejected/` and go on with the next one at once."""
        self._pending.remove(alert)
        reason = (f"rejected by sink {self.name} at {iso(time.time())} (alert {alert.kind} of {alert.source}, "
                  f"created {iso(alert.created)}, attempt {self._attempts + 1}): {error}")
        try:
            kept = self._outbox.reject(alert, reason, self._settings.expired_keep)
        except OSError as exc:
            # Out of the queue all the same: the file stays in the outbox and is tried again at the next start.
            metrics.ERRORS.labels("alerts").inc()
            log.error("alert_reject_failed sink=%s id=%s error=%s", self.name, alert.id, log_safe(str(exc)))
            kept = None
        self._outbox_changed(-1)
        metrics.ALERTS_REJECTED.labels(self.name).inc()
        log.error("alert_rejected sink=%s id=%s kind=%s source=%s kept=%s reason=%s", self.name, alert.id,
                  alert.kind, log_safe(alert.source), kept or "no", log_safe(error))
        # No backoff: the sink is up and answering, so the next alert goes out now with its own retries.
        self._attempts = 0
        self._next_attempt = 0.0
        self._last_error = ""

    def _expire(self, alert: Alert, age: float) -> None:
        self._pending.remove(alert)
        reason = (f"expired after {age:.0f} s and {self._attempts} attempts at sink {self.name}; last error: "
                  f"{self._last_error or 'none'}")
        try:
            kept = self._outbox.expire(alert, self._settings.expired_keep, reason)
        except OSError as exc:
            metrics.ERRORS.labels("alerts").inc()
            log.error("alert_expire_failed sink=%s id=%s error=%s", self.name, alert.id, log_safe(str(exc)))
            kept = None
        self._outbox_changed(-1)
        metrics.ALERTS_EXPIRED.labels(self.name).inc()
        log.error("alert_expired sink=%s id=%s kind=%s source=%s age_s=%.0f attempts=%d anomalies=%d kept=%s",
                  self.name, alert.id, alert.kind, log_safe(alert.source), age, self._attempts, len(alert.verdicts),
                  kept or "no")
        # The next alert gets its own full set of retries.
        self._attempts = 0
        self._next_attempt = 0.0
        self._last_error = ""
