"""Every Prometheus metric of the daemon, in one place (the only module-level mutable state).

Names follow Prometheus conventions: prefix `anomaly_monitor_`, base units, `_total` for counters.
Label values are bounded: source names, sink names, stages and reasons from fixed lists, never a path.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
)

# `_created` series double every counter for no dashboard use.
disable_created_metrics()

PREFIX = "anomaly_monitor"
REGISTRY = CollectorRegistry(auto_describe=True)

# Scores of [0, 1] images: mse lives between ~1e-5 and ~1e-1, SSIM-based scores up to ~1, a badly fitting
# model higher: quarter decades from 1e-6 to 10.
_SCORE_BUCKETS = tuple(round(10 ** (e / 4), 8) for e in range(-24, 5))
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


def _name(short: str) -> str:
    return f"{PREFIX}_{short}"


def observe_many(histogram: Histogram, values: Sequence[float] | np.ndarray) -> None:
    """`histogram.observe(v)` for every value, each bucket moved once: what the scrape shows is the same.

    A batch's scores and latencies go in together: observing them one by one (a lock and a linear search of 29
    bounds each) cost the scorer's thread 7 µs per image on a line whose model is nearly free. This reads the
    client's bucket bounds and values (private, stable since 0.4); a client without them gets `observe` per value.
    """
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets):
        for value in values:
            histogram.observe(float(value))
        return
    amounts = np.asarray(values, np.float64).ravel()
    if amounts.size == 0:
        return
    histogram._raise_if_not_observable()  # a parent (labelled) histogram raises here, as observe() does
    # observe() puts a value in the first bucket whose bound is >= it: searchsorted's 'left' side. NaN matches
    # no bound there and lands past the end here: counted in neither, summed in both.
    counts = np.bincount(np.searchsorted(np.asarray(bounds, np.float64), amounts, side="left"),
                         minlength=len(bounds) + 1)
    total.inc(float(amounts.sum()))
    for i in np.flatnonzero(counts[:len(bounds)]):
        buckets[i].inc(int(counts[i]))


# --- scoring -------------------------------------------------------------------------------
IMAGES_SCORED = Counter(
    _name("images_scored"), "Images scored, by source and outcome (normal or anomaly).",
    ["source", "outcome"], registry=REGISTRY,
)
ANOMALIES = Counter(_name("anomalies"), "Images judged anomalous.", ["source"], registry=REGISTRY)
SCORE = Histogram(
    _name("score"), "Anomaly score (reconstruction error) of scored images.", ["source"],
    buckets=_SCORE_BUCKETS, registry=REGISTRY,
)
THRESHOLD = Gauge(
    _name("threshold"), "Current anomaly threshold of the source.", ["source"], registry=REGISTRY,
)
# `model` is a name from the config's `models:` (bounded); `sum by (le)` still reads all models together.
INFERENCE_SECONDS = Histogram(
    _name("inference_seconds"), "Model forward pass time of one batch, by model.", ["model"],
    buckets=_LATENCY_BUCKETS, registry=REGISTRY,
)
BATCH_SIZE = Histogram(
    _name("batch_size"), "Images per scored batch, by model.", ["model"], buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
    registry=REGISTRY,
)
MODEL_IMAGES_SCORED = Counter(
    _name("model_images_scored"), "Images scored, by model (a name of the config's models).", ["model"],
    registry=REGISTRY,
)
SHADOW_IMAGES_SCORED = Counter(
    _name("shadow_images_scored"), "Images a shadow model scored beside the source's own model, by source, shadow "
    "model and its outcome (normal or anomaly); never alerted, not in images_scored.", ["source", "model", "outcome"],
    registry=REGISTRY,
)
END_TO_END_SECONDS = Histogram(
    _name("end_to_end_seconds"), "Time from file arrival or frame capture to verdict.", ["source"],
    buckets=_LATENCY_BUCKETS, registry=REGISTRY,
)
QUEUE_DEPTH = Gauge(_name("queue_depth"), "Frames waiting to be scored.", registry=REGISTRY)
ERRORS = Counter(_name("errors"), "Errors, by pipeline stage.", ["stage"], registry=REGISTRY)
MODEL_INFO = Info(_name("model"), "The loaded model bundle.", registry=REGISTRY)
START_TIME = Gauge(_name("start_time_seconds"), "Unix time the daemon started.", registry=REGISTRY)

# --- folder sources ------------------------------------------------------------------------
FILES_IGNORED = Counter(
    _name("files_ignored"), "Files in watched folders that are not images (by extension).", ["source"],
    registry=REGISTRY,
)
FILES_QUARANTINED = Counter(
    _name("files_quarantined"), "Files moved to quarantine, by reason.", ["source", "reason"],
    registry=REGISTRY,
)

# --- camera sources ------------------------------------------------------------------------
FRAMES_READ = Counter(_name("frames_read"), "Frames read from the camera.", ["source"], registry=REGISTRY)
FRAMES_DROPPED = Counter(
    _name("frames_dropped"), "Camera frames replaced by a newer one before they were scored.", ["source"],
    registry=REGISTRY,
)
SOURCE_UP = Gauge(_name("source_up"), "1 when the source delivers frames, 0 when it is down.", ["source"],
                  registry=REGISTRY)
RECONNECTS = Counter(_name("reconnects"), "Camera reconnect attempts.", ["source"], registry=REGISTRY)
SECONDS_SINCE_LAST_FRAME = Gauge(
    _name("seconds_since_last_frame"), "Seconds since the camera delivered its last frame.", ["source"],
    registry=REGISTRY,
)

# --- alerts --------------------------------------------------------------------------------
ALERTS_SENT = Counter(_name("alerts_sent"), "Alerts delivered, by sink.", ["sink"], registry=REGISTRY)
ALERTS_FAILED = Counter(_name("alerts_failed"), "Failed alert delivery attempts, by sink.", ["sink"],
                        registry=REGISTRY)
ALERTS_SUPPRESSED = Counter(
    _name("alerts_suppressed"), "Alerts held back by a cooldown, by sink.", ["sink"], registry=REGISTRY,
)
ALERTS_EXPIRED = Counter(
    _name("alerts_expired"), "Alerts given up after their maximum age, by sink.", ["sink"], registry=REGISTRY,
)
ALERT_OUTBOX_SIZE = Gauge(_name("alert_outbox_size"), "Alerts waiting in the outbox.", registry=REGISTRY)
ALERT_DELIVERY_SECONDS = Histogram(
    _name("alert_delivery_seconds"), "Time from alert creation to delivery, by sink.", ["sink"],
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600), registry=REGISTRY,
)


# --- sources: paused by an operator (pause/resume API) ---------------------------------------
SOURCE_PAUSED = Gauge(
    _name("source_paused"), "1 while an operator has paused the source (pause/resume API), 0 while it runs.",
    ["source"], registry=REGISTRY,
)

# --- alerts: permanent rejections and bad outbox records (issue 11) ------------------------
ALERTS_REJECTED = Counter(
    _name("alerts_rejected"), "Alerts a sink refused for good (HTTP 4xx, SMTP 5xx), parked in rejected/, by sink.",
    ["sink"], registry=REGISTRY,
)
ALERT_OUTBOX_CORRUPT = Counter(
    _name("alert_outbox_corrupt"), "Outbox files that were not a valid alert record, set aside in corrupt/, by sink.",
    ["sink"], registry=REGISTRY,
)

# --- folder sources: faults ------------------------------------------------------------------
# Appended, not folded into files_ignored: that counter's labels (source only) are read by dashboards.
FOLDER_EVENTS_LOST = Counter(
    _name("folder_events_lost"),
    "Times the kernel dropped a watched folder's inotify events (queue overflow on a burst); each time the folder "
    "is scanned again, so no file is lost.", ["source"], registry=REGISTRY,
)
FILES_SKIPPED = Counter(
    _name("files_skipped"),
    "Image-named entries in watched folders never opened, by reason (not_regular: FIFO, socket, device; "
    "symlink: a link, to a file or through a folder, that could lead out of or around the tree).",
    ["source", "reason"], registry=REGISTRY,
)
SOURCE_FOLDER_PRESENT = Gauge(
    _name("source_folder_present"),
    "1 while the source's watched folder exists and is watched, 0 while it is missing (removed or replaced).",
    ["source"], registry=REGISTRY,
)

# --- state files read at start: bad records (issue 11) ---------------------------------------
STATE_RECORDS_REJECTED = Counter(
    _name("state_records_rejected"),
    "Lines of state files skipped at start as not a valid record (not UTF-8, not a JSON object, non-finite or "
    "out-of-range numbers, wrong shape), by file (journal: its tail; ledger: a folder source's ledger).",
    ["file"], registry=REGISTRY,
)
STATE_FILES_UNREADABLE = Counter(
    _name("state_files_unreadable"),
    "State files that could not be read at start (a folder, no permission, an I/O error), by file "
    "(journal, ledger); the daemon starts without them.",
    ["file"], registry=REGISTRY,
)

# --- outputs: refused writes, back-pressure (issue 11) -----------------------------------------
OUTPUT_BLOCKED = Gauge(
    _name("output_blocked"),
    "1 from a refused write to the output (disk full, I/O error) to its next successful write: journal and "
    "quarantine hold their work and retry (scoring or reading pauses, folders wait), evidence is skipped.",
    ["output"], registry=REGISTRY,
)
OUTPUT_ERRORS = Counter(
    _name("output_errors"),
    "Writes refused by the OS, by output (journal, ledger, evidence, quarantine, outbox) and errno name "
    "(ENOSPC, EIO, EDQUOT, ...).",
    ["output", "errno"], registry=REGISTRY,
)
ORPHAN_TEMPS_REMOVED = Counter(
    _name("orphan_temp_files_removed"),
    "Temporary files (.<name>.tmp) left by a crash or a refused write and removed at start, by output folder.",
    ["output"], registry=REGISTRY,
)

# --- models per source, reload, fleet (issue 12) ------------------------------------------------
MODEL_BUNDLE = Gauge(
    _name("model_bundle_info"),
    "1 for each loaded model: its config name, content identity (short sha256), bundle folder name, score.",
    ["model", "model_id", "bundle", "score"], registry=REGISTRY,
)
SOURCE_MODEL = Gauge(
    _name("source_model_info"), "1 for each source and the model (name, identity) that scores it.",
    ["source", "model", "model_id"], registry=REGISTRY,
)
THRESHOLD_RATIO = Gauge(
    _name("threshold_ratio"),
    "Current threshold of the source / its bundle's calibrated default threshold (drift of the rolling quantile).",
    ["source"], registry=REGISTRY,
)
BUILD_INFO = Gauge(
    _name("build_info"), "1, labelled with the versions of the monitor, Python and TensorFlow.",
    ["version", "python", "tensorflow"], registry=REGISTRY,
)
# As Prometheus and Alertmanager name theirs: alert on `..._successful == 0`.
CONFIG_LAST_RELOAD_SUCCESSFUL = Gauge(
    _name("config_last_reload_successful"), "1 when the last config reload (or the start) succeeded, else 0.",
    registry=REGISTRY,
)
CONFIG_LAST_RELOAD_SUCCESS_TIMESTAMP = Gauge(
    _name("config_last_reload_success_timestamp_seconds"),
    "Unix time of the last successful config reload (or of the start).", registry=REGISTRY,
)
CONFIG_RELOADS = Counter(
    _name("config_reloads"), "Config reloads asked for, by outcome (success, failure).", ["outcome"],
    registry=REGISTRY,
)
FRAMES_DISCARDED = Counter(
    _name("frames_discarded"),
    "Queued frames dropped unscored because a reload removed or replaced their source (folder files among them "
    "are scored at the next start or by the replacing source), by source.",
    ["source"], registry=REGISTRY,
)

# --- folder sources: after scoring (keep, move into sorted ok/ng, delete) -----------------------------
FILES_AFTER_SCORING = Counter(
    _name("files_after_scoring"),
    "Scored files that left the watched folder by after_scoring, by source and action (ok, ng: moved into the "
    "sorted folder by verdict; deleted).",
    ["source", "action"], registry=REGISTRY,
)
FILES_AFTER_SCORING_FAILED = Counter(
    _name("files_after_scoring_failed"),
    "Moves or deletions after scoring the OS refused, by source and errno name; the file stays in place and is "
    "tried again once a minute and at the next start.",
    ["source", "errno"], registry=REGISTRY,
)
SORTED_FILES_REMOVED = Counter(
    _name("sorted_files_removed"),
    "Files removed from a source's sorted folder by retention, by reason (age, bytes).",
    ["source", "reason"], registry=REGISTRY,
)
SORTED_BYTES = Gauge(
    _name("sorted_bytes"), "Bytes in the source's sorted folder after its last retention check.", ["source"],
    registry=REGISTRY,
)

# --- kept originals (issue 13) -------------------------------------------------------------------
ORIGINALS_KEPT = Counter(
    _name("originals_kept"),
    "Inputs kept at full resolution in output.originals, by source and kind (anomaly, normal: the sample).",
    ["source", "kind"], registry=REGISTRY,
)
ORIGINALS_REMOVED = Counter(
    _name("originals_removed"), "Kept originals removed by retention, by reason (age, bytes).", ["reason"],
    registry=REGISTRY,
)
ORIGINALS_BYTES = Gauge(
    _name("originals_bytes"), "Bytes in output.originals after the last retention check.", registry=REGISTRY,
)

# --- review: operator labels (issue 13) --------------------------------------------------------
LABELS_TOTAL = Counter(_name("labels"), "Operator labels written to the journal, by source and label.",
                       ["source", "label"], registry=REGISTRY)
LABELLED_PRECISION = Gauge(
    _name("labelled_precision"),
    "defect / (defect + false_alarm) over labelled anomalies, latest label per verdict, by source.",
    ["source"], registry=REGISTRY,
)
