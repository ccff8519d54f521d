"""What the HTTP server may ask of the daemon, and the adapter that asks today's Daemon.

The server sees only `Controller`: readiness, a status snapshot, pause/resume of a source by name, reload,
and for the review page the journal's and evidence folder's paths and a durable journal append (labels), and for
its what-if panel the threshold settings in force, each source's calibration and the config file's path.
A request names sources by their config name and verdicts by id, nothing else: no path ever comes from a request.
"""

from __future__ import annotations

import logging
import math
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from monitor.config import ThresholdConfig
from monitor.replay import Calibration
from monitor.sources.base import NotPausable, Source

if TYPE_CHECKING:
    from monitor.daemon import Daemon

log = logging.getLogger(__name__)

__all__ = ["Controller", "DaemonController", "NotPausable"]


class Controller(Protocol):
    """The daemon as the HTTP server sees it. Every method may be called from the server's threads."""

    def ready(self) -> bool:
        """True once the daemon has started and its scorer runs; False before and while stopping."""

    def status(self) -> dict[str, Any]:
        """A JSON-ready snapshot: sources, models, thresholds, queue, cameras."""

    def pause(self, name: str) -> None:
        """Pause source `name`. KeyError: no such source; NotPausable: it cannot be paused now."""

    def resume(self, name: str) -> None:
        """Resume source `name`. KeyError: no such source; NotPausable: it cannot be resumed now."""

    def reload(self) -> tuple[bool, str]:
        """Re-read the config and the bundles; (succeeded, message)."""

    def journal_path(self) -> Path:
        """The journal file (`output.journal`); its rotated files lie beside it."""

    def evidence_folder(self) -> Path:
        """The evidence folder (`output.evidence`): the server serves images from it and `originals_folder`."""

    def originals_folder(self) -> Path:
        """The kept originals' folder (`output.originals`)."""

    def append_journal(self, record: dict[str, Any]) -> None:
        """Append `record` to the daemon's journal and fsync it. OSError when the disk refuses: the record
        then stays queued and is written with the daemon's next journal write (never twice)."""

    def threshold_settings(self) -> ThresholdConfig:
        """The config's `threshold:` section in force now (the what-if's starting point)."""

    def calibrations(self) -> dict[str, Calibration]:
        """By source: the calibration its loaded model's rolling window starts from (none for a bundle without
        calibration scores), so that a what-if starts where the daemon started."""

    def config_path(self) -> Path | None:
        """The config file a reload reads (and a threshold is applied to); None without one."""


def _finite(value: Any) -> float | None:
    """A float for JSON, None for nan/inf/not a number (JSON has no NaN)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _describe_model(model: Any) -> dict[str, Any]:
    """A model (a Bundle, or a loaded model holding one as `.bundle`) as the status shows it: the bundle's
    folder name (never the full path), input shape, score, and the content identity when known."""
    bundle = getattr(model, "bundle", model)
    out = {
        "bundle": bundle.path.name,
        "input": f"{bundle.height}x{bundle.width}x{bundle.channels}",
        "score": bundle.score_label,
    }
    identity = getattr(model, "identity", None)
    if identity is not None:
        out["model_id"] = identity
    return out


class DaemonController:
    """`Controller` over a `monitor.daemon.Daemon`, read through its public attributes.

    Parts of the Daemon that live reload changes are looked up with getattr, so this works with either
    shape: `reload()` (returning a result with `ok` and `message`, or a tuple, or raising), `ready` (a bool
    property or method), and the swappable `pipeline` (config, models by name, thresholds by source) or,
    without one, `config`, `thresholds` and the single `bundle` (the model called "default").
    """

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        # One reload at a time from the API: a second request waits for the first instead of racing it.
        self._reload_lock = threading.Lock()

    # --- reading ------------------------------------------------------------------------------------
    def _sources(self) -> dict[str, Source]:
        # A copy: a reload may add or remove sources while a request iterates them.
        return dict(self.daemon.sources.sources)

    def _source(self, name: str) -> Source:
        source = self._sources().get(name)
        if source is None:
            raise KeyError(name)
        return source

    def ready(self) -> bool:
        own = getattr(self.daemon, "ready", None)
        if own is not None:
            return bool(own() if callable(own) else own)
        scorer = getattr(self.daemon, "_scorer", None)
        stopping = getattr(self.daemon, "_stop", None)
        if scorer is None or not scorer.alive or (stopping is not None and stopping.is_set()):
            return False
        # Sources start after the scorer, each after its backlog scan: ready once every one has started.
        return all(s.thread.started for s in self._sources().values())

    def _current(self) -> tuple[Any, dict[str, Any], dict[str, Any]]:
        """(config, models by name, thresholds by source) in force now: one pipeline read, never half of two."""
        pipeline = getattr(self.daemon, "pipeline", None)
        if pipeline is not None:
            return pipeline.config, dict(pipeline.models), dict(pipeline.thresholds)
        return self.daemon.config, {"default": self.daemon.bundle}, dict(self.daemon.thresholds)

    def status(self) -> dict[str, Any]:
        daemon = self.daemon
        config, models, current_thresholds = self._current()
        sources = self._sources()
        sources_out = []
        cameras = []
        for name, source in sources.items():
            # From the config in force, not the running source's own: a reload that changes only `model:` or
            # `shadow:` routes the source anew and keeps it running with the config it was built from.
            source_config = self._source_config(config, name) or getattr(source, "config", None)
            sources_out.append({
                "name": name,
                "kind": source.source_kind,
                "state": source.state,
                "pausable": source.pausable,
                "model": getattr(source_config, "model", "default"),
                "shadow": getattr(source_config, "shadow", None),
            })
            if source.source_kind == "camera":
                cameras.append(self._camera(source))
        thresholds = {}
        settings = config.threshold
        for name, threshold in current_thresholds.items():
            try:
                value = threshold.value
            except (IndexError, RuntimeError):  # read while the scorer thread updates the window
                value = None
            model_of = getattr(getattr(daemon, "pipeline", None), "model_of", None)
            model = model_of(name) if callable(model_of) else None
            thresholds[name] = {
                "value": _finite(value),
                # The bundle's calibrated threshold: how far the rolling one has drifted from it.
                "calibrated": _finite(getattr(model, "default_threshold", None)),
                "mode": "fixed" if getattr(threshold, "fixed", None) is not None else "rolling",
                "window": settings.window,
            }
        return {
            "ready": self.ready(),
            "sources": sources_out,
            "models": {name: _describe_model(m) for name, m in models.items()},
            "thresholds": thresholds,
            "queue": {"depth": len(daemon.queue), "capacity": daemon.queue.capacity},
            "cameras": cameras,
        }

    @staticmethod
    def _source_config(config: Any, name: str) -> Any:
        find = getattr(config, "source", None)
        return find(name) if callable(find) else None

    @staticmethod
    def _camera(source: Any) -> dict[str, Any]:
        from monitor.sources.camera import redact

        return {
            "name": source.name,
            "camera": redact(source.config.camera),  # a URL without its password
            "kind": source.kind,
            "fps": source.config.fps,
            "up": source.up,
            "frames_read": source.frames_read,
            "seconds_since_last_frame": _finite(source.seconds_since_last_frame()),
        }

    def journal_path(self) -> Path:
        return Path(self.daemon.config.output.journal)

    def evidence_folder(self) -> Path:
        return Path(self.daemon.config.output.evidence)

    def originals_folder(self) -> Path:
        return Path(self.daemon.config.output.originals)

    def threshold_settings(self) -> ThresholdConfig:
        config, _, _ = self._current()
        return config.threshold

    def calibrations(self) -> dict[str, Calibration]:
        # From the models the daemon loaded, not from the bundle files: a bundle rewritten on disk since does
        # not move the what-if away from the window the daemon actually started. The bundle is named by its
        # folder, as the status names it: the API never answers a full path.
        config, models, _ = self._current()
        found: dict[str, Calibration] = {}
        for source in config.sources:
            model = models.get(getattr(source, "model", "default"))
            bundle = getattr(model, "bundle", model)
            scores = getattr(bundle, "calibration_scores", None)
            if bundle is None or scores is None or len(scores) == 0:
                continue
            found[source.name] = Calibration(tuple(float(s) for s in scores), float(bundle.threshold_quantile),
                                             float(bundle.threshold_margin), Path(bundle.path).name)
        return found

    def config_path(self) -> Path | None:
        path = getattr(self.daemon, "config_path", None)
        return None if path is None else Path(path)

    # --- acting -------------------------------------------------------------------------------------
    def append_journal(self, record: dict[str, Any]) -> None:
        journal = self.daemon.journal
        # The journal's own lock orders this line with the scorer's batches; sync makes it durable before the
        # API answers. A refused append leaves the line queued: the scorer's next sync writes it, once.
        journal.append(record)
        journal.sync()

    def pause(self, name: str) -> None:
        self._source(name).pause()

    def resume(self, name: str) -> None:
        self._source(name).resume()

    def reload(self) -> tuple[bool, str]:
        reload = getattr(self.daemon, "reload", None)
        if not callable(reload):
            return False, "reload not available"
        with self._reload_lock:
            try:
                result = reload()
            except Exception as exc:  # noqa: BLE001 - the API answers with the reason; the daemon goes on
                log.exception("reload_failed via=http")
                return False, f"{type(exc).__name__}: {exc}"
        # The daemon's reload may answer a result with `ok` and `message`, (ok, message), a bool, or nothing
        # (it raises when it fails).
        if hasattr(result, "ok") and hasattr(result, "message"):
            return bool(result.ok), str(result.message)
        if isinstance(result, tuple) and len(result) == 2:
            return bool(result[0]), str(result[1])
        if isinstance(result, bool):
            return result, "reloaded" if result else "reload failed"
        return True, "reloaded"
