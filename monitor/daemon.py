"""Wiring and lifecycle: sources -> frame queue -> scorer -> threshold -> journal, evidence, alerts."""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from monitor import metrics, systemd
from monitor.batching import FrameQueue
from monitor.config import Config
from monitor.evidence import EvidenceStore, render_evidence
from monitor.journal import Journal
from monitor.model.bundle import Bundle
from monitor.model.scorer import BatchScorer, ScoredBatch
from monitor.records import Frame, SourceEvent, Verdict
from monitor.sources.quarantine import Quarantine
from monitor.sources.supervisor import SourceContext, SourceSupervisor
from monitor.threads import StoppableThread
from monitor.threshold import Threshold

log = logging.getLogger(__name__)

JOIN_TIMEOUT_S = 5.0


class StartupError(Exception):
    """The config and the bundle cannot work together (exit code 2)."""


def build_thresholds(config: Config, bundle: Bundle) -> dict[str, Threshold]:
    """One threshold per source: fixed, or the rolling quantile warm-started from calibration scores."""
    t = config.threshold
    quantile = t.quantile if t.quantile is not None else bundle.threshold_quantile
    margin = t.margin if t.margin is not None else bundle.threshold_margin
    calibration = bundle.calibration_scores
    if t.fixed is None and len(calibration) == 0:
        raise StartupError(f"{bundle.path}: the bundle has no calibration scores; set threshold.fixed")
    return {
        s.name: Threshold(fixed=t.fixed, quantile=quantile, window=t.window, margin=margin,
                          calibration=calibration, learn_from_anomalies=t.learn_from_anomalies)
        for s in config.sources
    }


class Daemon:
    """The running monitor. `start()`, then `stop()` from any thread; `wait()` until drained."""

    def __init__(self, config: Config, bundle: Bundle) -> None:
        self.config = config
        self.bundle = bundle
        self.thresholds = build_thresholds(config, bundle)
        out = config.output
        self.queue = FrameQueue(config.batching.queue_size,
                                on_camera_drop=lambda s: metrics.FRAMES_DROPPED.labels(s).inc())
        self.journal = Journal(out.journal, out.journal_max_bytes, out.journal_backups)
        self.evidence = EvidenceStore(out.evidence, out.evidence_max_files, out.evidence_max_bytes)
        self.quarantine = Quarantine(out.quarantine)
        self.scorer = BatchScorer(bundle, config.batching.max_batch)
        context = SourceContext(queue=self.queue, quarantine=self.quarantine, state=out.state,
                                journal=out.journal, on_event=self.on_event)
        self.sources = SourceSupervisor.from_config(config, context)
        self.alerts: Any = None
        self._stop = threading.Event()
        self._scorer_alive = time.monotonic()
        self._scorer = StoppableThread("scorer", self._score_loop)
        self.metrics_port: int | None = None

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        """Start metrics, alerts, the scorer, then the sources (backlog scans happen here)."""
        cfg = self.config
        metrics.START_TIME.set(time.time())
        metrics.MODEL_INFO.info({
            "bundle": self.bundle.path.name,
            "input": f"{self.bundle.height}x{self.bundle.width}x{self.bundle.channels}",
            "score": self.bundle.score_name,
            "device": self.scorer.device,
        })
        metrics.QUEUE_DEPTH.set_function(lambda: len(self.queue))
        for name, threshold in self.thresholds.items():
            metrics.THRESHOLD.labels(name).set(threshold.value)
        if cfg.metrics.enabled:
            self.metrics_port = metrics.serve(cfg.metrics.host, cfg.metrics.port)
            log.info("metrics_serving host=%s port=%d", cfg.metrics.host, self.metrics_port)
        if cfg.alerts.sinks:
            from monitor.alerts.dispatcher import AlertDispatcher

            self.alerts = AlertDispatcher(cfg.alerts, cfg.output.state / "outbox")
            self.alerts.start()
        # Trace the compiled forward pass now, so the first real image is not the one that waits for it.
        b = self.bundle
        self.scorer.score_inputs(np.zeros((1, b.height, b.width, b.channels), np.float32))
        self._scorer.start()
        self.sources.start()
        self.on_event(SourceEvent("daemon", "daemon_start", time.time(), self.bundle.describe()))
        log.info("daemon_started sources=%d folders=%d cameras=%d", len(self.sources), len(cfg.folder_sources),
                 len(cfg.camera_sources))

    def stop(self) -> None:
        """Stop accepting frames; the scorer finishes what is queued. Safe to call from a signal handler."""
        self._stop.set()

    def wait(self) -> int:
        """Block until stop() is called, then drain the queue and close everything; returns the exit code.

        A dead scorer or source thread ends the daemon with exit code 1, so that systemd restarts it.
        """
        code = 0
        interval = systemd.watchdog_interval()
        next_ping = time.monotonic()
        while not self._stop.wait(0.2 if interval is None else min(0.2, interval)):
            now = time.monotonic()
            if interval is not None and now >= next_ping:
                # Ping only while the scorer loop turns: a hung scorer gets the service restarted.
                if now - self._scorer_alive < 2 * interval:
                    systemd.notify("WATCHDOG=1")
                next_ping = now + interval
            dead = self.sources.dead()
            if not self._scorer.alive or dead:
                log.error("thread_died scorer_alive=%s dead_sources=%s", self._scorer.alive, ",".join(dead))
                code = 1
                break
        self.shutdown()
        return code

    def shutdown(self) -> None:
        """Stop the sources, drain the queue, flush the journal and the ledgers."""
        systemd.notify("STOPPING=1")
        log.info("daemon_stopping queued=%d", len(self.queue))
        self.sources.stop()
        self.queue.close()
        self.sources.join()  # a camera blocked in an open or a read returns within its read timeout
        self._stop.set()
        self._scorer.stop()
        if not self._scorer.join(JOIN_TIMEOUT_S * 2):
            log.error("scorer_join_timeout queued=%d", len(self.queue))
        self.on_event(SourceEvent("daemon", "daemon_stop", time.time()))
        if self.alerts is not None:
            self.alerts.stop(JOIN_TIMEOUT_S)
        self.journal.close()
        self.sources.close()
        log.info("daemon_stopped")

    # --- events and verdicts ----------------------------------------------------------------------
    def on_event(self, event: SourceEvent) -> None:
        """A source or daemon event: journal first, then the alert sinks."""
        self.journal.append(event.to_json())
        log.info("event kind=%s source=%s detail=%r", event.kind, event.source, event.detail)
        if self.alerts is not None:
            self.alerts.notify_event(event)

    def _score_loop(self, stop: threading.Event) -> None:
        # Runs until stopped AND drained: `stop` alone must not drop what the queue still holds.
        max_batch = self.config.batching.max_batch
        max_wait = self.config.batching.max_wait_ms / 1000
        while True:
            self._scorer_alive = time.monotonic()
            frames = self.queue.collect(max_batch, max_wait)
            if not frames:
                if stop.is_set() and self.queue.closed:
                    return
                continue
            try:
                self._process(frames)
            except Exception:  # noqa: BLE001 - the scorer must outlive any one batch
                metrics.ERRORS.labels("score").inc()
                log.exception("batch_failed size=%d", len(frames))

    def _score_frames(self, frames: list[Frame]) -> list[tuple[Frame, ScoredBatch, int]]:
        """Score a batch; if it fails, score one by one so a single bad frame costs only itself."""
        start = time.perf_counter()
        try:
            scored = self.scorer.score([f.image for f in frames])
            metrics.INFERENCE_SECONDS.observe(time.perf_counter() - start)
            metrics.BATCH_SIZE.observe(len(frames))
            return [(f, scored, i) for i, f in enumerate(frames)]
        except Exception:  # noqa: BLE001
            log.exception("batch_scoring_failed retry=one_by_one size=%d", len(frames))
        results = []
        for frame in frames:
            try:
                results.append((frame, self.scorer.score([frame.image]), 0))
            except Exception as exc:  # noqa: BLE001
                metrics.ERRORS.labels("score").inc()
                log.error("frame_scoring_failed source=%s path=%s error=%s", frame.source, frame.path, exc)
                if frame.path is not None:
                    self.quarantine.put(frame.source, frame.path, "undecodable", f"scoring failed: {exc}")
                self.sources.acknowledge(frame)
        return results

    def _process(self, frames: list[Frame]) -> None:
        verdicts: list[tuple[Frame, Verdict]] = []
        prepared: list = []  # alerts written to the outbox, handed to their sinks once the journal is synced
        # One scorer call for an untiled batch; a tiled bundle's large images a few per call, since a call
        # holds each image's stitched maps at working resolution until its verdicts and evidence are done.
        scored_frames = (item for part in self.scorer.call_groups([f.image for f in frames])
                         for item in self._score_frames(frames[part]))
        for frame, scored, i in scored_frames:
            score = float(scored.scores[i])
            anomaly, threshold = self.thresholds[frame.source].judge(score)
            evidence = self._write_evidence(frame, scored, i, score, threshold) if anomaly else None
            verdict = Verdict(source=frame.source, frame_time=frame.frame_time, scored_at=time.time(),
                              score=score, threshold=threshold, anomaly=anomaly, path=frame.path,
                              evidence=evidence, file_key=frame.file_key)
            if anomaly and self.alerts is not None:
                # On disk before the journal line, released after the journal's fsync (prepare_verdict).
                prepared.extend(self.alerts.prepare_verdict(verdict))
            self.journal.append(verdict.to_json())
            verdicts.append((frame, verdict))
        self.journal.sync()  # verdicts are durable before the ledger says "done" and before any alert
        if self.alerts is not None:
            self.alerts.release(prepared)
        for frame, verdict in verdicts:
            source = frame.source
            self.sources.acknowledge(frame)
            outcome = "anomaly" if verdict.anomaly else "normal"
            metrics.IMAGES_SCORED.labels(source, outcome).inc()
            metrics.SCORE.labels(source).observe(verdict.score)
            metrics.THRESHOLD.labels(source).set(self.thresholds[source].value)
            # The journal's `time - frame_time`: file arrival or frame capture to verdict.
            metrics.END_TO_END_SECONDS.labels(source).observe(max(0.0, verdict.scored_at - frame.frame_time))
            if verdict.anomaly:
                metrics.ANOMALIES.labels(source).inc()
                log.warning("anomaly source=%s path=%s score=%.6g threshold=%.6g evidence=%s", source,
                            frame.path, verdict.score, verdict.threshold, verdict.evidence)
            else:
                log.debug("normal source=%s path=%s score=%.6g threshold=%.6g", source, frame.path,
                          verdict.score, verdict.threshold)

    def _write_evidence(self, frame: Frame, scored: ScoredBatch, i: int, score: float,
                        threshold: float) -> Path | None:
        try:
            stem = frame.path.stem if frame.path is not None else "frame"
            title = f"{frame.source} {frame.path.name if frame.path is not None else 'camera frame'}"
            image = render_evidence(scored.inputs[i], scored.reconstructions[i], scored.error_maps[i], score,
                                    threshold, title)
            return self.evidence.save(image, frame.source, frame.frame_time, stem)
        except Exception as exc:  # noqa: BLE001 - a full disk must not stop verdicts
            metrics.ERRORS.labels("evidence").inc()
            log.error("evidence_failed source=%s path=%s error=%s", frame.source, frame.path, exc)
            return None


# Signals that end the process by default but must not: an operator's `systemctl reload` (SIGHUP) or a stray
# `kill -USR1` would otherwise drop the queue without a drain and without `daemon_stop`.
IGNORED_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)


def request_reload(daemon: Daemon | None) -> None:
    """SIGHUP: reload the config and the bundle. The hook for live reload; until it exists, log and go on.

    A later `Daemon.reload()` is called from here (on the main thread, where Python runs signal handlers);
    until then the running config stays in force and the log says how to apply a new one.
    """
    log.info("reload_requested signal=SIGHUP")
    reload = getattr(daemon, "reload", None)
    if callable(reload):
        reload()
        return
    log.warning("reload_unsupported hint=%r", "live reload is not implemented yet: restart the service "
                "(systemctl restart) to apply a new config or bundle; the daemon keeps running as it is")


def run(config: Config, bundle: Bundle) -> int:
    """Run the daemon in the foreground until SIGTERM or SIGINT; returns the exit code.

    SIGHUP asks for a reload (`request_reload`); SIGUSR1 and SIGUSR2 are logged and ignored. Their handlers
    go in first, so that one arriving while the daemon is still being built does not end the process.
    """
    daemon: Daemon | None = None

    def _on_hup(_signum: int, _frame: Any) -> None:
        request_reload(daemon)

    def _on_ignored(signum: int, _frame: Any) -> None:
        log.info("signal_ignored signal=%s", signal.Signals(signum).name)

    signal.signal(signal.SIGHUP, _on_hup)
    for sig in IGNORED_SIGNALS:
        signal.signal(sig, _on_ignored)
    daemon = Daemon(config, bundle)

    def _on_signal(signum: int, _frame: Any) -> None:
        log.info("signal_received signal=%s", signal.Signals(signum).name)
        daemon.stop()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    daemon.start()
    systemd.notify(f"READY=1\nSTATUS=scoring {len(config.sources)} sources")
    return daemon.wait()
