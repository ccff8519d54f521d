"""Wiring and lifecycle: sources -> frame queue -> scorer -> threshold -> journal, evidence, alerts."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import math
import platform
import queue
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monitor import __version__, heap, metrics, systemd
from monitor.batching import FrameQueue
from monitor.config import Config, ConfigError, check_inputs, check_watched_folders, load_config
from monitor.evidence import EvidenceStore, render_evidence
from monitor.files import NotRegularFile, remove_orphan_temps
from monitor.http.control import DaemonController
from monitor.http.server import HttpServer, TokenError
from monitor.journal import Journal
from monitor.model.bundle import Bundle, BundleError
from monitor.model.scorer import ScoredBatch
from monitor.modelset import LoadedModel, load_models, warm_rest
from monitor.originals import OriginalStore
from monitor.outputs import OutputGuard, OutputStopped
from monitor.records import Frame, Region, SourceEvent, Verdict, new_verdict_ids
from monitor.region import locate
from monitor.sources.base import NotPausable
from monitor.sources.quarantine import Quarantine
from monitor.sources.supervisor import SourceContext, SourceSupervisor
from monitor.threads import Handoff, StoppableThread
from monitor.threshold import SavedWindow, Threshold, ThresholdState

log = logging.getLogger(__name__)

JOIN_TIMEOUT_S = 5.0
# After a reload, how long before the heap is frozen again (monitor/heap.py): the scorer takes the new pipeline
# at its next batch, within max_wait_ms; until then its batch in hand keeps the old one alive.
REFREEZE_AFTER_RELOAD_S = 2.0


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
    for output, folder in (("evidence", out.evidence), ("quarantine", out.quarantine), ("state", out.state),
                           ("originals", out.originals)):
        removed = remove_orphan_temps(Path(folder), exclude=watched)
        if removed:
            metrics.ORPHAN_TEMPS_REMOVED.labels(output).inc(removed)
            log.warning("orphan_temps_removed output=%s folder=%s count=%d", output, folder, removed)
        total += removed
    return total


def ok_status(config: Config) -> str:
    """systemd's STATUS= line while every output takes writes."""
    return f"scoring {len(config.sources)} sources"


def check_thresholds(config: Config, models: Mapping[str, LoadedModel]) -> None:
    """StartupError when a rolling threshold has no calibration scores to start from."""
    if config.threshold.fixed is not None:
        return
    for name in sorted({s.model for s in config.sources} | {s.shadow for s in config.sources if s.shadow}):
        bundle = models[name].bundle
        if len(bundle.calibration_scores) == 0:
            raise StartupError(f"{bundle.path}: the bundle has no calibration scores; set threshold.fixed")


def new_threshold(config: Config, bundle: Bundle) -> Threshold:
    """A source's threshold: fixed, or the rolling quantile warm-started from the bundle's calibration scores."""
    t = config.threshold
    quantile = t.quantile if t.quantile is not None else bundle.threshold_quantile
    margin = t.margin if t.margin is not None else bundle.threshold_margin
    return Threshold(fixed=t.fixed, quantile=quantile, window=t.window, margin=margin,
                     calibration=bundle.calibration_scores, learn_from_anomalies=t.learn_from_anomalies)


def build_thresholds(config: Config, models: Mapping[str, LoadedModel], saved: Mapping[str, SavedWindow] = (),
                     running: Pipeline | None = None) -> dict[str, Threshold]:
    """One threshold per source.

    A source whose model identity is unchanged keeps its running threshold (the same object while the
    threshold settings are unchanged, else a new one holding the old window), or at start the window saved
    in the state folder. A source whose model changed starts again from the new bundle's calibration.
    """
    check_thresholds(config, models)
    saved = dict(saved)
    thresholds: dict[str, Threshold] = {}
    for s in config.sources:
        old = running.thresholds.get(s.name) if running is not None else None
        old_model = running.model_of(s.name) if running is not None else None
        thresholds[s.name] = _carry_threshold(config, s.name, s.name, models[s.model], old, old_model, saved,
                                              running)
    return thresholds


def shadow_key(source: str) -> str:
    """The state file's key of `source`'s shadow window: a slash never appears in a source name (schema.Name),
    so it never meets a source's own window."""
    return f"{source}/shadow"


def build_shadow_thresholds(config: Config, models: Mapping[str, LoadedModel],
                            saved: Mapping[str, SavedWindow] = (),
                            running: Pipeline | None = None) -> dict[str, Threshold]:
    """One threshold per source with a `shadow:`, started from the shadow bundle's calibration and kept apart
    from the source's own threshold: same carrying rules as `build_thresholds`."""
    saved = dict(saved)
    thresholds: dict[str, Threshold] = {}
    for s in config.sources:
        if s.shadow is None:
            continue
        old = running.shadow_thresholds.get(s.name) if running is not None else None
        old_model = running.shadow_model_of(s.name) if running is not None else None
        thresholds[s.name] = _carry_threshold(config, s.name, shadow_key(s.name), models[s.shadow], old, old_model,
                                              saved, running)
    return thresholds


def _carry_threshold(config: Config, source: str, key: str, model: LoadedModel, old: Threshold | None,
                     old_model: LoadedModel | None, saved: Mapping[str, SavedWindow],
                     running: Pipeline | None) -> Threshold:
    """A threshold for `model`: the running one while its model and settings are unchanged, else a new one
    holding the old window (same model), or the window saved under `key` at start (same model identity)."""
    same_model = old_model is not None and old_model.identity == model.identity
    if old is not None and same_model and running is not None and running.config.threshold == config.threshold:
        return old
    threshold = new_threshold(config, model.bundle)
    if old is not None and same_model:
        threshold.restore(old.window_values())
    elif old is not None:
        log.info("threshold_restarted source=%s model=%s model_id=%s reason=model_changed", key, model.name,
                 model.identity)
    elif key in saved and saved[key].model_id == model.identity and threshold.restore(saved[key].values):
        log.info("threshold_restored source=%s model_id=%s values=%d", key, model.identity,
                 len(threshold.window_values()))
    return threshold


@dataclass(frozen=True)
class Pipeline:
    """What the scorer thread reads once per batch, under the batch lock; a reload swaps the whole of it.

    `since`: monotonic time each source's current instance was added. A frame queued before it came from an
    instance that a reload removed or replaced, and is dropped unscored and unacknowledged: a folder's file
    is then found again by the replacing source's backlog scan, or at the next start (its ledger lacks it).
    """

    config: Config
    models: dict[str, LoadedModel]
    thresholds: dict[str, Threshold]
    since: dict[str, float]
    alerts: Any = None  # AlertDispatcher | None
    # By source with a `shadow:`: the shadow model's own threshold (never the source's, so neither window
    # ever holds the other model's scores).
    shadow_thresholds: dict[str, Threshold] = dataclasses.field(default_factory=dict)

    def model_of(self, source: str) -> LoadedModel | None:
        """The model that scores `source`, or None for a source this pipeline does not have."""
        cfg = self.config.source(source)
        return self.models[cfg.model] if cfg is not None else None

    def shadow_model_of(self, source: str) -> LoadedModel | None:
        """The shadow model that also scores `source`, or None (no shadow, or no such source)."""
        cfg = self.config.source(source)
        return self.models[cfg.shadow] if cfg is not None and cfg.shadow is not None else None

    def accepts(self, frame: Frame) -> bool:
        """False for a frame of a removed source, or of an instance a reload replaced."""
        since = self.since.get(frame.source)
        return since is not None and frame.enqueued >= since


@dataclass(frozen=True)
class ReloadResult:
    """What `Daemon.reload()` did: `ok`, and one line saying what changed or why nothing did."""

    ok: bool
    message: str


@dataclass
class SourceStats:
    """Counts for one source's `source_summary` line, since the last one."""

    scored: int = 0
    anomalies: int = 0
    threshold: float = float("nan")


RESTART_ONLY_KEYS = ("output", "metrics", "batching", "scoring")


def apply_log_level(level: str) -> None:
    """Set the root logger's level (a reload's `logging.level`)."""
    logging.getLogger().setLevel(getattr(logging, level))


def build_info() -> dict[str, str]:
    """Versions for anomaly_monitor_build_info (TensorFlow's only when it is already imported)."""
    import sys

    tf = sys.modules.get("tensorflow")
    return {"version": __version__, "python": platform.python_version(),
            "tensorflow": getattr(tf, "__version__", "unknown") if tf is not None else "not_loaded"}


class Daemon:
    """The running monitor. `start()`, then `stop()` from any thread; `wait()` until drained.

    `reload()` (SIGHUP, on the main thread) re-reads the config file and swaps the pipeline between batches.
    """

    def __init__(self, config: Config, bundle: Bundle | None = None, config_path: Path | None = None) -> None:
        self.config = config
        self.config_path = config_path
        out = config.output
        # Every model loaded and warmed before anything else starts (`bundle`, when given, serves its folder).
        # The smaller batch buckets are warmed after start, beside the line (`warm_rest`): READY=1 sooner.
        models = load_models(config.models, config.batching.max_batch, preloaded=bundle,
                             backend=config.scoring.backend, threads=config.scoring.threads, all_buckets=False)
        self.threshold_state = ThresholdState(out.state)
        saved = self.threshold_state.load()
        thresholds = build_thresholds(config, models, saved)
        self.pipeline = Pipeline(config=config, models=models, thresholds=thresholds,
                                 since={s.name: 0.0 for s in config.sources},
                                 shadow_thresholds=build_shadow_thresholds(config, models, saved))
        self.queue = FrameQueue(config.batching.queue_size,
                                on_camera_drop=lambda s: metrics.FRAMES_DROPPED.labels(s).inc())
        # One outcome for every refused write (disk full, I/O error): see monitor.outputs.
        self.outputs = OutputGuard(ok_status=ok_status(config))
        self.journal = open_journal(out.journal, out.journal_max_bytes, out.journal_backups)
        remove_output_temps(config)
        self.evidence = EvidenceStore(out.evidence, out.evidence_max_files, out.evidence_max_bytes)
        self.quarantine = Quarantine(out.quarantine, self.outputs)
        self.originals = OriginalStore(out.originals, config, self.outputs)
        self.context = SourceContext(queue=self.queue, quarantine=self.quarantine, state=out.state,
                                     journal=out.journal, on_event=self.on_event)
        self.sources = SourceSupervisor.from_config(config, self.context)
        # Stop and reload requests reach the main loop through a SimpleQueue, whose put() is reentrant: a signal
        # handler runs on the main thread, possibly while the interrupted loop holds a lock, and an Event's
        # set() would wait for that lock forever (a SIGTERM that hung the daemon). `_stopping` is a plain flag
        # for the same reason.
        self._stopping = False
        self._requests: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._scorer_alive = time.monotonic()
        self._scorer = StoppableThread("scorer", self._score_loop)
        # Each batch's commit (journal fsync, ledger, alerts, counters) runs here while the scorer scores the next.
        self._commits = Handoff("commit")
        self._warmer = StoppableThread("warm-buckets", self._warm)
        # Held by the scorer while it processes a batch: a reload swaps the pipeline only between batches.
        self._batch_lock = threading.Lock()
        self._reload_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self._stats: dict[str, SourceStats] = {}
        self._last_summary = time.monotonic()
        self._refreeze_at: float | None = None  # monotonic: when the main loop freezes the heap after a reload
        self.metrics_port: int | None = None
        self.http: HttpServer | None = None

    @property
    def bundle(self) -> Bundle:
        """The bundle of the model called `default`, else of the first model (the one-model case)."""
        models = self.pipeline.models
        return (models.get("default") or next(iter(models.values()))).bundle

    @property
    def thresholds(self) -> dict[str, Threshold]:
        return self.pipeline.thresholds

    @property
    def alerts(self) -> Any:
        return self.pipeline.alerts

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        """Start metrics, alerts, the scorer, then the sources (backlog scans happen here)."""
        cfg = self.config
        metrics.START_TIME.set(time.time())
        metrics.BUILD_INFO.labels(**build_info()).set(1)
        metrics.CONFIG_LAST_RELOAD_SUCCESSFUL.set(1)
        metrics.CONFIG_LAST_RELOAD_SUCCESS_TIMESTAMP.set(time.time())
        device = next(iter(self.pipeline.models.values())).scorer.device
        metrics.MODEL_INFO.info({
            "bundle": self.bundle.path.name,
            "input": f"{self.bundle.height}x{self.bundle.width}x{self.bundle.channels}",
            "score": self.bundle.score_label,
            "device": device,
        })
        metrics.QUEUE_DEPTH.set_function(lambda: len(self.queue))
        self._publish_pipeline_metrics(self.pipeline)
        if cfg.metrics.enabled:
            self.http = HttpServer(cfg.metrics.host, cfg.metrics.port, DaemonController(self),
                                   token_file=cfg.metrics.token_file,
                                   read_token_required=cfg.metrics.read_token_required)
            try:
                self.metrics_port = self.http.start()  # a busy port: OSError, exit 1 (systemd retries)
            except TokenError as exc:  # a config error: exit 2
                raise StartupError(f"metrics.token_file: {exc}") from None
            log.info("metrics_serving host=%s port=%d", cfg.metrics.host, self.metrics_port)
        alerts = self._build_alerts(cfg)
        if alerts is not None:
            alerts.start()
            self.pipeline = dataclasses.replace(self.pipeline, alerts=alerts)
        heap.freeze("start")  # before any pipeline thread runs: the one full pass stops nothing
        self._commits.start()
        self._scorer.start()
        self._warmer.start()
        self.originals.start()
        self.sources.start()
        detail = " ".join(f"model={m.name} model_id={m.identity} {m.bundle.describe()}"
                          for m in self.pipeline.models.values())
        self.on_event(SourceEvent("daemon", "daemon_start", time.time(), detail))
        log.info("daemon_started sources=%d folders=%d cameras=%d models=%d", len(self.sources),
                 len(cfg.folder_sources), len(cfg.camera_sources), len(self.pipeline.models))

    @staticmethod
    def _build_alerts(config: Config) -> Any:
        """The alert dispatcher of `config` (not started), or None without sinks."""
        if not config.alerts.sinks:
            return None
        from monitor.alerts.dispatcher import AlertDispatcher

        return AlertDispatcher(config.alerts, config.output.state / "outbox")

    def stop(self) -> None:
        """Ask the daemon to stop: `wait()` drains the queue and closes everything. Takes no lock, so that a
        signal handler and any thread may call it."""
        self._stopping = True
        self._requests.put("stop")

    def request_reload(self) -> None:
        """Ask the main loop (`wait()`) to reload the config; takes no lock, so that a signal handler may call it."""
        self._requests.put("reload")

    def wait(self) -> int:
        """Block until stop() is called, then drain the queue and close everything; returns the exit code.

        A dead scorer, commit or source thread ends the daemon with exit code 1, so that systemd restarts it.
        """
        code = 0
        interval = systemd.watchdog_interval()
        next_ping = time.monotonic()
        while not self._stopping:
            try:
                request = self._requests.get(timeout=0.2 if interval is None else min(0.2, interval))
            except queue.Empty:
                request = None
            if self._stopping:
                break
            if request == "reload":
                self.reload()
            now = time.monotonic()
            if interval is not None and now >= next_ping:
                # Ping only while the scorer loop turns: a hung scorer gets the service restarted. A thread that
                # waits to retry a refused write is not hung: a full disk must not become a restart loop.
                if now - self._scorer_alive < 2 * interval or self.outputs.retrying():
                    systemd.notify("WATCHDOG=1")
                next_ping = now + interval
            self._maybe_log_summary(now)
            if self._refreeze_at is not None and now >= self._refreeze_at:
                self._refreeze_at = None
                heap.freeze("reload")  # one full pass: what the reload replaced is freed
            dead = self.sources.dead()
            if not self._scorer.alive or not self._commits.thread.alive or dead:
                log.error("thread_died scorer_alive=%s commit_alive=%s dead_sources=%s", self._scorer.alive,
                          self._commits.thread.alive, ",".join(dead))
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
        self._stopping = True
        self._warmer.stop()
        self._scorer.stop()
        scorer_ended = self._scorer.join(JOIN_TIMEOUT_S * 2)
        if not scorer_ended:
            log.error("scorer_join_timeout queued=%d", len(self.queue))
        else:
            self._save_thresholds(force=True)  # the scorer is gone: the windows hold still
        self._commits.stop()  # after the commit in hand, if the scorer left one
        self._commits.join(JOIN_TIMEOUT_S * 2)
        self._warmer.join(JOIN_TIMEOUT_S)  # ends between two buckets
        self.on_event(SourceEvent("daemon", "daemon_stop", time.time()))
        if self.alerts is not None:
            self.alerts.stop(JOIN_TIMEOUT_S)
        self.journal.close()
        self.sources.close()
        self.originals.stop()
        self.originals.join(JOIN_TIMEOUT_S)
        if self.http is not None:  # last: /metrics and /-/ready (503 now) answer until the end
            self.http.stop()
            self.http.join(JOIN_TIMEOUT_S)
        heap.thaw()
        log.info("daemon_stopped")

    def _warm(self, stop: threading.Event) -> None:
        """The warm-buckets thread: trace the buckets `load_models` left, then freeze what the traces made.

        The models are read from the pipeline, not held by the thread: a model a reload replaced must be freed.
        """
        warm_rest(self.pipeline.models, stop)
        if not stop.is_set():
            heap.freeze("buckets_warm")

    # --- reload ---------------------------------------------------------------------------------
    def reload(self) -> ReloadResult:
        """Re-read the config file and apply it without a restart; the old config runs on when it fails.

        Runs on the main loop (SIGHUP, through `request_reload`) or on the HTTP server's side (`POST /-/reload`,
        which answers with the result). Loading and warming changed bundles happens first,
        beside the running models, while the scorer goes on with them; then, between two batches, the
        pipeline (models, thresholds, alert dispatcher) is swapped and sources are removed, replaced or added.
        `output`, `metrics`, `batching` and `scoring` need a restart: a change to them is logged and not applied.
        """
        if not self._scorer.started or self._stopping:
            log.warning("reload_ignored reason=%s", "stopping" if self._stopping else "not_started_yet")
            return ReloadResult(False, "the daemon is not running")
        # One reload at a time, never waited for: the main loop and the HTTP API may ask at the same time.
        if not self._reload_lock.acquire(blocking=False):
            log.warning("reload_ignored reason=already_reloading")
            return ReloadResult(False, "a reload is already running")
        try:
            return self._reload_locked()
        finally:
            self._reload_lock.release()

    def _reload_locked(self) -> ReloadResult:
        systemd.notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
        path = self.config_path
        log.info("reload_started file=%s", path)
        try:
            if path is None:
                raise ConfigError("the daemon was started without a config file: nothing to reload")
            message = self._reload(path)
        except (ConfigError, BundleError, StartupError) as exc:
            error = str(exc).replace("\n", "; ")
            log.error("reload_failed file=%s error=%s", path, error)
            metrics.CONFIG_LAST_RELOAD_SUCCESSFUL.set(0)
            metrics.CONFIG_RELOADS.labels("failure").inc()
            systemd.notify(f"READY=1\nSTATUS=reload failed, running the previous config: {' '.join(error.split())}")
            return ReloadResult(False, error)
        except Exception as exc:  # noqa: BLE001 - a reload never ends the daemon
            error = f"{type(exc).__name__}: {exc}".replace("\n", "; ")
            log.exception("reload_failed file=%s error=%s", path, error)
            metrics.CONFIG_LAST_RELOAD_SUCCESSFUL.set(0)
            metrics.CONFIG_RELOADS.labels("failure").inc()
            systemd.notify(f"READY=1\nSTATUS=reload failed: {' '.join(error.split())}")
            return ReloadResult(False, error)
        metrics.CONFIG_LAST_RELOAD_SUCCESSFUL.set(1)
        metrics.CONFIG_LAST_RELOAD_SUCCESS_TIMESTAMP.set(time.time())
        metrics.CONFIG_RELOADS.labels("success").inc()
        log.info("reload_done file=%s %s", path, message)
        systemd.notify(f"READY=1\nSTATUS={ok_status(self.config)}")
        return ReloadResult(True, message)

    def _reload(self, path: Path) -> str:
        """Apply the config at `path`; raises before changing anything when it or a bundle cannot be used."""
        old = self.pipeline
        new_config = load_config(path)
        check_inputs(new_config, path)
        check_watched_folders(new_config, path)
        kept = [k for k in RESTART_ONLY_KEYS if getattr(new_config, k) != getattr(old.config, k)]
        if kept:
            log.warning("reload_restart_needed keys=%s action=kept_running_values", ",".join(kept))
            new_config = new_config.model_copy(update={k: getattr(old.config, k) for k in RESTART_ONLY_KEYS})
        # The heavy part, beside the running models: the scorer goes on with those meanwhile.
        models = load_models(new_config.models, new_config.batching.max_batch, running=old.models,
                             backend=new_config.scoring.backend, threads=new_config.scoring.threads)
        check_thresholds(new_config, models)
        old_sources = {s.name: s for s in old.config.sources}
        new_sources = {s.name: s for s in new_config.sources}
        removed = [n for n in old_sources if n not in new_sources]
        added = [n for n in new_sources if n not in old_sources]
        # A source whose settings changed is replaced; one whose model or shadow alone changed is only routed anew.
        routing = {"model", "shadow"}
        changed = [n for n in new_sources if n in old_sources and
                   new_sources[n].model_dump(exclude=routing) != old_sources[n].model_dump(exclude=routing)]
        new_alerts = None
        if new_config.alerts != old.config.alerts:
            new_alerts = self._build_alerts(new_config)
        # A pause survives a reload (not a restart): a replaced source is paused again once it runs.
        # Unless the config's own `paused` changed: then the config says what the operator wants now.
        paused = [n for n in changed if getattr(self.sources.sources.get(n), "paused", False)
                  and old_sources[n].paused == new_sources[n].paused]
        # Retiring sources stop producing first; what they queued is dropped at the swap.
        retired = [self.sources.remove(n) for n in removed + changed]
        if not self._acquire_batch_lock():
            for source in retired:  # stopping: their frames are scored in the drain, unacknowledged
                source.close()
            raise StartupError("the daemon is stopping: reload abandoned")
        try:
            now = time.monotonic()
            since = {n: (old.since.get(n, 0.0) if n not in added + changed else now) for n in new_sources}
            thresholds = build_thresholds(new_config, models, running=old)
            shadow_thresholds = build_shadow_thresholds(new_config, models, running=old)
            alerts = old.alerts
            if new_config.alerts != old.config.alerts:
                if old.alerts is not None:
                    old.alerts.stop(JOIN_TIMEOUT_S)  # what it did not send stays in the outbox for the new one
                alerts = new_alerts
                if alerts is not None:
                    alerts.start()
            self.pipeline = Pipeline(config=new_config, models=models, thresholds=thresholds, since=since,
                                     alerts=alerts, shadow_thresholds=shadow_thresholds)
            self.config = new_config
            dropped = self.queue.discard(set(removed + changed))
        finally:
            self._batch_lock.release()
        for name, count in dropped.items():
            metrics.FRAMES_DISCARDED.labels(name).inc(count)
            log.info("frames_discarded source=%s count=%d reason=source_%s", name, count,
                     "removed" if name in removed else "replaced")
        for source in retired:
            source.close()
        for name in changed + added:
            self.sources.add(name, self._build_source(new_sources[name]))
        for name in paused:
            try:
                self.sources.sources[name].pause()
            except NotPausable as exc:  # e.g. a source that is no longer pausable after its change
                log.warning("pause_not_kept source=%s reason=%r", name, str(exc))
        apply_log_level(new_config.logging.level)
        self.originals.configure(new_config)
        self.outputs.ok_status = ok_status(new_config)
        self._publish_pipeline_metrics(self.pipeline, old)
        swapped = sorted(n for n, m in models.items() if n not in old.models or old.models[n] is not m)
        if any(n not in models or models[n] is not m for n, m in old.models.items()):
            # The replaced models' objects were frozen: thawed now, so that they can be collected, and frozen again
            # from the main loop once the scorer's batch in hand no longer holds the old pipeline. That one full
            # pass costs what the automatic one it replaces would have (monitor/heap.py).
            heap.thaw()
            self._refreeze_at = time.monotonic() + REFREEZE_AFTER_RELOAD_S
        return (f"sources_added={','.join(added) or 'none'} sources_removed={','.join(removed) or 'none'} "
                f"sources_replaced={','.join(changed) or 'none'} models_loaded={','.join(swapped) or 'none'} "
                f"alerts_rebuilt={'yes' if new_config.alerts != old.config.alerts else 'no'}")

    def _acquire_batch_lock(self) -> bool:
        """Wait for the scorer to finish its batch and for that batch's commit; False when the daemon is stopped
        meanwhile (the lock then not held).

        The commit can wait on a journal write that a full disk retries, and the scorer holds the lock while it
        waits for that commit: the wait goes on (the watchdog still pinged while the output retries, as the main
        loop does), and SIGTERM ends it. The commit is waited for too because a swap must not stop the alert
        dispatcher it releases alerts to.
        """
        if not self._wait_until(lambda: self._batch_lock.acquire(timeout=0.5)):
            return False
        if not self._wait_until(lambda: self._commits.idle(timeout=0.5)):
            self._batch_lock.release()
            return False
        return True

    def _wait_until(self, ready: Callable[[], bool]) -> bool:
        """Call `ready` (which waits a little itself) until it is True; False once the daemon is stopping."""
        interval = systemd.watchdog_interval()
        while not ready():
            if self._stopping:
                return False
            if interval is not None and self.outputs.retrying():
                systemd.notify("WATCHDOG=1")
        return True

    def _build_source(self, config: Any) -> Any:
        """A source built anew: a fresh context reads the journal's tail again, so a folder source's ledger
        learns of the verdicts its predecessor's last batch wrote."""
        from monitor.sources.supervisor import build_source

        return build_source(config, dataclasses.replace(self.context))

    def _publish_pipeline_metrics(self, pipeline: Pipeline, old: Pipeline | None = None) -> None:
        """The per-model and per-source info and threshold series; a removed source's or model's go away."""
        if old is not None:
            metrics.MODEL_BUNDLE.clear()
            metrics.SOURCE_MODEL.clear()
            for name in set(old.thresholds) - set(pipeline.thresholds):
                for gauge in (metrics.THRESHOLD, metrics.THRESHOLD_RATIO):
                    with contextlib.suppress(KeyError):
                        gauge.remove(name)
        for model in pipeline.models.values():
            metrics.MODEL_BUNDLE.labels(model.name, model.identity, model.bundle.path.name,
                                        model.bundle.score_label).set(1)
        for source in pipeline.config.sources:
            model = pipeline.models[source.model]
            metrics.SOURCE_MODEL.labels(source.name, model.name, model.identity).set(1)
            self._set_threshold_metrics(pipeline, source.name)

    @staticmethod
    def _set_threshold_metrics(pipeline: Pipeline, source: str, value: float | None = None) -> None:
        value = pipeline.thresholds[source].value if value is None else value
        metrics.THRESHOLD.labels(source).set(value)
        model = pipeline.model_of(source)
        if model is not None and model.default_threshold > 0:
            metrics.THRESHOLD_RATIO.labels(source).set(value / model.default_threshold)

    # --- state: threshold windows and summaries ---------------------------------------------------
    def _save_thresholds(self, force: bool = False) -> None:
        """Save each rolling window with its model's identity (at most every few seconds unless `force`)."""
        pipeline = self.pipeline
        windows = {}
        for source, threshold in pipeline.thresholds.items():
            model = pipeline.model_of(source)
            if threshold.rolling and model is not None:
                windows[source] = SavedWindow(model.identity, threshold.window_values())
        for source, threshold in pipeline.shadow_thresholds.items():
            model = pipeline.shadow_model_of(source)
            if threshold.rolling and model is not None:
                windows[shadow_key(source)] = SavedWindow(model.identity, threshold.window_values())
        if windows:
            self.threshold_state.save(windows, force=force)

    def _maybe_log_summary(self, now: float) -> None:
        """One `source_summary` line per source every `logging.summary_interval_s` (0: never)."""
        interval = self.config.logging.summary_interval_s
        if interval <= 0 or now - self._last_summary < interval:
            return
        elapsed = now - self._last_summary
        self._last_summary = now
        with self._stats_lock:
            stats, self._stats = self._stats, {}
        for source in self.config.sources:
            st = stats.get(source.name, SourceStats())
            threshold = st.threshold
            if threshold != threshold:  # nothing scored: the current threshold
                t = self.pipeline.thresholds.get(source.name)
                threshold = t.value if t is not None and not t.rolling else float("nan")
            log.info("source_summary source=%s scored=%d anomalies=%d threshold=%.6g rate_per_s=%.3g", source.name,
                     st.scored, st.anomalies, threshold, st.scored / elapsed if elapsed > 0 else 0.0)

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
        alerts = self.alerts
        if alerts is not None:
            alerts.notify_event(event)

    def _score_loop(self, stop: threading.Event) -> None:
        # Runs until stopped AND drained: `stop` alone must not drop what the queue still holds.
        batching = self.config.batching  # a restart-only section: a reload never changes it
        max_batch = batching.max_batch
        max_wait = batching.max_wait_ms / 1000
        while True:
            self._scorer_alive = time.monotonic()
            frames = self.queue.collect(max_batch, max_wait)
            try:
                with self._batch_lock:  # the pipeline is read once, after the collect: a swap lands between
                    pipeline = self.pipeline
                    if not frames:
                        self._commits.wait()  # an idle line: the last batch's commit is done before stop
                        if self.journal.queued:  # events the disk refused, on an idle line: retry them here
                            self._write_journal()
                    else:
                        self._process(pipeline, frames)
                        self._save_thresholds()
                if not frames and stop.is_set() and self.queue.closed:
                    return
            except OutputStopped:
                # Stopping while the journal refuses writes: what is held and queued is not acknowledged.
                log.warning("scorer_gave_up_blocked_output held_frames=%d queued=%d", len(frames), len(self.queue))
                return
            except Exception:  # noqa: BLE001 - the scorer must outlive any one batch
                metrics.ERRORS.labels("score").inc()
                log.exception("batch_failed size=%d", len(frames))

    def _score_frames(self, model: LoadedModel, frames: list[Frame]) -> list[tuple[Frame, ScoredBatch, int]]:
        """Score a batch; if it fails, score one by one so a single bad frame costs only itself.

        A frame whose score is not finite (NaN: no threshold would ever flag it) is handled as one that failed.
        """
        start = time.perf_counter()
        try:
            scored = model.scorer.score([f.image for f in frames])
            metrics.INFERENCE_SECONDS.labels(model.name).observe(time.perf_counter() - start)
            metrics.BATCH_SIZE.labels(model.name).observe(len(frames))
            results = [(f, scored, i) for i, f in enumerate(frames)]
        except Exception:  # noqa: BLE001
            log.exception("batch_scoring_failed retry=one_by_one size=%d model=%s", len(frames), model.name)
            results = []
            for frame in frames:
                try:
                    results.append((frame, model.scorer.score([frame.image]), 0))
                except Exception as exc:  # noqa: BLE001
                    self._reject(frame, f"scoring failed: {exc}")
        finite = []
        for frame, scored, i in results:
            score = float(scored.scores[i])
            if math.isfinite(score):
                finite.append((frame, scored, i))
            else:
                self._reject(frame, f"scoring failed: the model gave a score of {score}, which no threshold flags")
        return finite

    def _reject(self, frame: Frame, reason: str) -> None:
        """A frame that could not be scored: counted, logged, a file quarantined with the reason, acknowledged."""
        metrics.ERRORS.labels("score").inc()
        log.error("frame_scoring_failed source=%s path=%s error=%s", frame.source, frame.path, reason)
        if frame.path is not None:
            self.quarantine.put(frame.source, frame.path, "undecodable", reason)
            if self.outputs.stopping and frame.path.exists():
                return  # given up unmoved: not acknowledged, so it is tried again at the next start
        self.sources.acknowledge(frame)

    @staticmethod
    def group_by_model(pipeline: Pipeline, frames: list[Frame]) -> list[tuple[LoadedModel, list[Frame]]]:
        """Split a collected batch by the model of each frame's source, in order of first appearance.

        One queue serves every model (see monitor.batching): its back-pressure, latest-wins slots and
        max-wait bound stay in one place, and a reload never has to move frames between queues. Sources that
        share a model share its calls; a mixed batch makes smaller calls, each padded to its batch bucket.
        """
        groups: dict[str, tuple[LoadedModel, list[Frame]]] = {}
        of_source: dict[str, LoadedModel] = {}  # a config lookup per source, not per frame
        for frame in frames:
            model = of_source.get(frame.source)
            if model is None:
                model = of_source[frame.source] = pipeline.model_of(frame.source)
            groups.setdefault(model.name, (model, []))[1].append(frame)
        return list(groups.values())

    def _process(self, pipeline: Pipeline, frames: list[Frame]) -> None:
        accepted = []
        for frame in frames:
            if pipeline.accepts(frame):
                accepted.append(frame)
            else:  # a removed or replaced source's: never acknowledged
                metrics.FRAMES_DISCARDED.labels(frame.source).inc()
                log.info("frame_discarded source=%s path=%s reason=source_reloaded", frame.source, frame.path)
        verdict_ids = iter(new_verdict_ids(len(accepted)))
        verdicts: list[tuple[Frame, Verdict]] = []
        prepared: list = []  # alerts written to the outbox, handed to their sinks once the journal is synced
        alerts = pipeline.alerts
        external_url = pipeline.config.http.external_url
        for model, group in self.group_by_model(pipeline, accepted):
            # One scorer call for an untiled batch; a tiled bundle's large images a few per call, since a call
            # holds each image's stitched maps at working resolution until its verdicts and evidence are done.
            scored_frames = (item for part in model.scorer.call_groups([f.image for f in group])
                             for item in self._score_frames(model, group[part]))
            for frame, scored, i in scored_frames:
                score = float(scored.scores[i])
                anomaly, threshold = pipeline.thresholds[frame.source].judge(score)
                evidence = region = None
                if anomaly:
                    roi = getattr(pipeline.config.source(frame.source), "roi", None)
                    boxes = self._locate(frame, scored, i, roi)
                    region = boxes[1] if boxes is not None else None
                    evidence = self._write_evidence(frame, scored, i, score, threshold, boxes, roi)
                verdict_id = next(verdict_ids)
                original = self.originals.keep(frame, verdict_id, anomaly)
                verdict = Verdict(source=frame.source, frame_time=frame.frame_time, scored_at=time.time(),
                                  score=score, threshold=threshold, anomaly=anomaly, path=frame.path,
                                  evidence=evidence, file_key=frame.file_key, model=model.name,
                                  model_id=model.identity, region=region, original=original, id=verdict_id)
                if anomaly and alerts is not None:
                    # On disk before the journal line, released after the journal's fsync (prepare_verdict).
                    prepared.extend(alerts.prepare_verdict(verdict, external_url))
                verdicts.append((frame, verdict))
        if not verdicts:
            return
        # After the primaries, so that they never wait on it; in the same journal write (one fsync).
        shadows = self._score_shadows(pipeline, verdicts)
        levels = {source: pipeline.thresholds[source].value for source in {v.source for _, v in verdicts}}
        # The batch before is committed (durable, acknowledged) before this one's lines queue behind it: one
        # batch in flight, so a disk that refuses writes stops the scorer here (back-pressure).
        self._commits.wait()
        self.journal.enqueue_verdicts([verdict for _, verdict in verdicts] + shadows)
        self._commits.submit(lambda: self._commit(pipeline, verdicts, shadows, prepared, levels))

    def _commit(self, pipeline: Pipeline, verdicts: list[tuple[Frame, Verdict]], shadows: list[Verdict],
                prepared: list, levels: dict[str, float]) -> None:
        """A batch's verdicts made durable, then acknowledged, alerted and counted (on the commit thread).

        OutputStopped (stopping while the journal refuses writes) reaches the scorer, which then gives up.
        """
        try:
            # Durable before the ledger says "done" and before any alert. On a full disk this holds the batch and
            # retries (the scorer stops at its next hand-off: back-pressure); each line is written exactly once.
            self._write_journal()
            if pipeline.alerts is not None:
                pipeline.alerts.release(prepared)
            self.sources.acknowledge_many([(frame, verdict.anomaly) for frame, verdict in verdicts])
            self._count(pipeline, verdicts, levels)
            for verdict in shadows:
                metrics.SHADOW_IMAGES_SCORED.labels(verdict.source, verdict.model,
                                                    "anomaly" if verdict.anomaly else "normal").inc()
        except OutputStopped:
            raise
        except Exception:  # noqa: BLE001 - this batch's files stay unacknowledged (scored again at the next start)
            metrics.ERRORS.labels("score").inc()
            log.exception("batch_commit_failed size=%d", len(verdicts))

    def _score_shadows(self, pipeline: Pipeline, verdicts: list[tuple[Frame, Verdict]]) -> list[Verdict]:
        """The shadow verdicts of the frames (with their primary verdicts) whose source has a `shadow:`.

        Frames are grouped per shadow model, so sources sharing a candidate share its calls. A shadow verdict
        has no evidence and no region, never reaches the alerts, and names its primary (`shadow_of`); a
        shadow scorer that fails costs only the shadow verdicts (logged, counted), never the primary ones.
        """
        groups: dict[str, tuple[LoadedModel, list[tuple[Frame, Verdict]]]] = {}
        of_source: dict[str, LoadedModel | None] = {}
        for frame, primary in verdicts:
            if frame.source not in of_source:
                of_source[frame.source] = pipeline.shadow_model_of(frame.source)
            model = of_source[frame.source]
            if model is not None:
                groups.setdefault(model.name, (model, []))[1].append((frame, primary))
        shadows: list[Verdict] = []
        for model, group in groups.values():
            try:
                parts = model.scorer.call_groups([frame.image for frame, _ in group])
            except Exception:  # noqa: BLE001 - judged below, call by call
                parts = [slice(0, len(group))]
            for part in parts:
                members = group[part]
                try:
                    scored = model.scorer.score([frame.image for frame, _ in members])
                    for i, (frame, primary) in enumerate(members):
                        score = float(scored.scores[i])
                        anomaly, threshold = pipeline.shadow_thresholds[frame.source].judge(score)
                        shadows.append(Verdict(source=frame.source, frame_time=frame.frame_time,
                                               scored_at=time.time(), score=score, threshold=threshold,
                                               anomaly=anomaly, path=frame.path, model=model.name,
                                               model_id=model.identity, shadow=True, shadow_of=primary.id))
                except Exception as exc:  # noqa: BLE001 - a candidate model must never cost the line its verdicts
                    metrics.ERRORS.labels("shadow").inc()
                    log.error("shadow_scoring_failed model=%s size=%d error=%s", model.name, len(members), exc)
        return shadows

    def _count(self, pipeline: Pipeline, verdicts: list[tuple[Frame, Verdict]], levels: dict[str, float]) -> None:
        """Metrics, summary counts and log lines of one batch's durable verdicts; `levels`: each source's
        threshold after the batch (read by the scorer, whose next batch moves the rolling windows meanwhile).

        Counters move once per source and batch: per-file bookkeeping would cap a line whose model is
        nearly free (a GPU) at what one Python thread can count. Histograms still see every value.
        """
        by_source: dict[str, list[Verdict]] = {}
        for _, verdict in verdicts:
            by_source.setdefault(verdict.source, []).append(verdict)
        by_model: collections.Counter[str | None] = collections.Counter()
        debug = log.isEnabledFor(logging.DEBUG)
        for source, mine in by_source.items():
            anomalies = sum(v.anomaly for v in mine)
            if anomalies:
                metrics.IMAGES_SCORED.labels(source, "anomaly").inc(anomalies)
                metrics.ANOMALIES.labels(source).inc(anomalies)
            if len(mine) > anomalies:
                metrics.IMAGES_SCORED.labels(source, "normal").inc(len(mine) - anomalies)
            metrics.observe_many(metrics.SCORE.labels(source), [v.score for v in mine])
            # The journal's `time - frame_time`: file arrival or frame capture to verdict.
            metrics.observe_many(metrics.END_TO_END_SECONDS.labels(source),
                                 [max(0.0, v.scored_at - v.frame_time) for v in mine])
            by_model.update(v.model for v in mine)
            for verdict in mine if anomalies or debug else ():
                if verdict.anomaly:
                    log.warning("anomaly source=%s path=%s score=%.6g threshold=%.6g evidence=%s model=%s", source,
                                verdict.path, verdict.score, verdict.threshold, verdict.evidence, verdict.model)
                elif debug:
                    log.debug("normal source=%s path=%s score=%.6g threshold=%.6g", source, verdict.path,
                              verdict.score, verdict.threshold)
            self._set_threshold_metrics(pipeline, source, levels[source])
            with self._stats_lock:
                st = self._stats.setdefault(source, SourceStats())
                st.scored += len(mine)
                st.anomalies += anomalies
                st.threshold = levels[source]
        for model, count in by_model.items():
            metrics.MODEL_IMAGES_SCORED.labels(model).inc(count)

    def _write_journal(self) -> None:
        """Write and fsync what the journal holds, retried while the disk refuses (OutputStopped on stop)."""

        def attempt() -> None:
            self._scorer_alive = time.monotonic()
            self.journal.sync()

        self.outputs.write("journal", attempt)

    @staticmethod
    def _locate(frame: Frame, scored: ScoredBatch, i: int,
                roi: tuple[int, int, int, int] | None) -> tuple[Region, Region] | None:
        """(box on the error map, box in the source's pixels) of the hottest region, or None.

        The source's pixels: the file's; a camera's whole frame, so the ROI crop's corner is added.
        """
        try:
            offset = (roi[0], roi[1]) if roi is not None and frame.path is None else (0, 0)
            return locate(scored.error_maps[i], frame.image.shape[:2], offset)
        except Exception as exc:  # noqa: BLE001 - a verdict goes on without its region, never without itself
            metrics.ERRORS.labels("region").inc()
            log.error("region_failed source=%s path=%s error=%s", frame.source, frame.path, exc)
            return None

    def _write_evidence(self, frame: Frame, scored: ScoredBatch, i: int, score: float, threshold: float,
                        boxes: tuple[Region, Region] | None = None,
                        roi: tuple[int, int, int, int] | None = None) -> Path | None:
        try:
            stem = frame.path.stem if frame.path is not None else "frame"
            title = f"{frame.source} {frame.path.name if frame.path is not None else 'camera frame'}"
            box, region = boxes if boxes is not None else (None, None)
            # A camera frame's time is its capture; a file's, when it arrived in the folder.
            image = render_evidence(scored.inputs[i], scored.reconstructions[i], scored.error_maps[i], score,
                                    threshold, title, box=box, region=region, frame_time=frame.frame_time,
                                    time_label="captured" if frame.path is None else "arrived",
                                    full_frame=frame.full_frame, roi=roi if frame.path is None else None)
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
    """SIGHUP: the main loop reloads the config and the bundles. Before the daemon is built there is nothing to
    reload: logged, and the start goes on with the file as it was read."""
    log.info("reload_requested signal=SIGHUP")
    if daemon is None:
        log.warning("reload_ignored reason=starting hint=%r", "send SIGHUP again once the daemon is ready")
        return
    daemon.request_reload()


def run(config: Config, bundle: Bundle | None = None, config_path: Path | None = None) -> int:
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
    daemon = Daemon(config, bundle, config_path=config_path)

    def _on_signal(signum: int, _frame: Any) -> None:
        log.info("signal_received signal=%s", signal.Signals(signum).name)
        daemon.stop()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    daemon.start()
    systemd.notify(f"READY=1\nSTATUS={ok_status(config)}")
    return daemon.wait()
