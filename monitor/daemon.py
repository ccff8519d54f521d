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
from monitor.files import NotRegularFile, remove_orphan_temps
from monitor.journal import Journal
from monitor.model.bundle import Bundle
from monitor.model.scorer import BatchScorer, ScoredBatch
from monitor.outputs import OutputGuard, OutputStopped
from monitor.records import Frame, SourceEvent, Verdict
from monitor.sources.quarantine import Quarantine
from monitor.sources.supervisor import SourceContext, SourceSupervisor
from monitor.threads import StoppableThread
from monitor.threshold import Threshold

log = logging.getLogger(__name__)

JOIN_TIMEOUT_S = 5.0


class StartupError(Exception):
    """The config and the bundle cannot work together, or an output cannot be one (exit code 2)."""


def open_journal(path: Path, max_bytes: int, backups: int) -> Journal:
    """The journal; StartupError when its path is a FIFO, a socket or a device (never opened blocking)."""
    try:
        return Journal(path, max_bytes, backups)
    except NotRegularFile as exc:
        raise StartupError(f"{path}: output.journal: not a regular file (a {exc.kind})") from None


def remove_output_temps(config: Config) -> int:
    """Remove the temporary files a crash or a refused write left in the output folders; how many.

    Runs at start, before any store writes. Watched folders below an output folder are left alone: their
    hidden `.tmp` files belong to the writers that copy images in.
    """
    out = config.output
    watched = [Path(s.folder) for s in config.folder_sources]
    total = 0
    for output, folder in (("evidence", out.evidence), ("quarantine", out.quarantine), ("state", out.state)):
        removed = remove_orphan_temps(Path(folder), exclude=watched)
        if removed:
            metrics.ORPHAN_TEMPS_REMOVED.labels(output).inc(removed)
            log.warning("orphan_temps_removed output=%s folder=%s count=%d", output, folder, removed)
        total += removed
    return total


def ok_status(config: Config) -> str:
    """systemd's STATUS= line while every output takes writes."""
    return f"scoring {len(config.sources)} sources"


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
        # One outcome for every refused write (disk full, I/O error): see monitor.outputs.
        self.outputs = OutputGuard(ok_status=ok_status(config))
        self.journal = open_journal(out.journal, out.journal_max_bytes, out.journal_backups)
        remove_output_temps(config)
        self.evidence = EvidenceStore(out.evidence, out.evidence_max_files, out.evidence_max_bytes)
        self.quarantine = Quarantine(out.quarantine, self.outputs)
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
            "score": self.bundle.score_label,
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
                # Ping only while the scorer loop turns: a hung scorer gets the service restarted. A thread that
                # waits to retry a refused write is not hung: a full disk must not become a restart loop.
                if now - self._scorer_alive < 2 * interval or self.outputs.retrying():
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
        log.info("daemon_stopping queued=%d blocked=%s", len(self.queue), ",".join(self.outputs.blocked()) or "none")
        # Work held for a blocked output is given up now (not acknowledged: folder files are scored again at
        # the next start), so that a full disk cannot stretch the stop beyond the join timeouts.
        self.outputs.stop()
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
        """A source or daemon event: journal first, then the alert sinks. Never raises for a refused write:
        the event then waits in the journal's queue, and the scorer writes it with the next batch."""
        try:
            self.journal.append(event.to_json())
        except OSError as exc:
            self.outputs.failed("journal", exc, "hold_and_retry")
        else:
            self.outputs.succeeded("journal")
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
            try:
                if not frames:
                    if self.journal.queued:  # events the disk refused, on an idle line: retry them here
                        self._write_journal()
                    if stop.is_set() and self.queue.closed:
                        return
                    continue
                self._process(frames)
            except OutputStopped:
                # Stopping while the journal refuses writes: what is held and queued is not acknowledged.
                log.warning("scorer_gave_up_blocked_output held_frames=%d queued=%d", len(frames), len(self.queue))
                return
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
                    if self.outputs.stopping and frame.path.exists():
                        continue  # given up unmoved: not acknowledged, so it is tried again at the next start
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
            verdicts.append((frame, verdict))
        self.journal.enqueue([verdict.to_json() for _, verdict in verdicts])
        # Durable before the ledger says "done" and before any alert. On a full disk this holds the batch and
        # retries (no new frames are collected meanwhile: back-pressure); each line is written exactly once.
        self._write_journal()
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

    def _write_journal(self) -> None:
        """Write and fsync what the journal holds, retried while the disk refuses (OutputStopped on stop)."""

        def attempt() -> None:
            self._scorer_alive = time.monotonic()
            self.journal.sync()

        self.outputs.write("journal", attempt)

    def _write_evidence(self, frame: Frame, scored: ScoredBatch, i: int, score: float,
                        threshold: float) -> Path | None:
        try:
            stem = frame.path.stem if frame.path is not None else "frame"
            title = f"{frame.source} {frame.path.name if frame.path is not None else 'camera frame'}"
            image = render_evidence(scored.inputs[i], scored.reconstructions[i], scored.error_maps[i], score,
                                    threshold, title)
            path = self.evidence.save(image, frame.source, frame.frame_time, stem)
        except OSError as exc:
            # A full disk must not stop verdicts: the verdict goes on without its picture (logged once per
            # episode by the guard, its temporary file already removed by atomic_write).
            self.outputs.failed("evidence", exc, "no_evidence")
            return None
        except Exception as exc:  # noqa: BLE001 - nor may a picture that cannot be drawn
            metrics.ERRORS.labels("evidence").inc()
            log.error("evidence_failed source=%s path=%s error=%s", frame.source, frame.path, exc)
            return None
        self.outputs.succeeded("evidence")
        return path


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
    systemd.notify(f"READY=1\nSTATUS={ok_status(config)}")
    return daemon.wait()
