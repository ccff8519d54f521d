"""Live camera sources: one reader thread per camera, newest frame only, reconnect with backoff.

A camera is a USB index or /dev/videoN (V4L2), an rtsp:// or http:// stream (FFmpeg), or a video file
(replayed at its own frame rate, optionally looped). The reader hands at most `fps` frames per second
to the queue's latest-wins slot of the camera, so a slow scorer drops old frames instead of falling
behind. A stream that errors or delivers nothing for `read_timeout_s` is closed and reopened with
exponential backoff; one that stays down for `lost_after_s` raises a "camera_lost" event, and
"camera_found" when frames flow again.

A paused camera is not read: a live camera's capture is released (a device is free for someone else, a
stream server sees the client leave) and opened again on resume, which is not counted as a reconnect; a
video file keeps its capture and goes on from the frame where it stopped. A pause never counts towards
`lost_after_s`.
"""

from __future__ import annotations

import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable

import cv2
import numpy as np

from monitor import metrics
from monitor.batching import FrameQueue, QueueClosed
from monitor.config import CameraSourceConfig, camera_kind
from monitor.records import Frame, SourceEvent
from monitor.sources.base import PausableSource
from monitor.threads import StoppableThread

log = logging.getLogger(__name__)

_FFMPEG_OPTIONS_ENV = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
# OpenCV reads FFmpeg's capture options from one process-wide environment variable when a capture
# opens; cameras that need their own options (RTSP transport) set it and open under this lock.
_FFMPEG_ENV_LOCK = threading.Lock()

# A grab that returns faster than this came out of a buffer, not off the wire: keep draining.
_BUFFERED_GRAB_S = 0.002
_FILE_FPS_FALLBACK = 25.0
_WAIT_SLICE_S = 0.25
_PAUSE_POLL_S = 0.05  # how soon a paused reader notices resume (stop wakes it at once)


def redact(camera: int | str) -> str:
    """The camera for logs and events, without a password in its URL."""
    return re.sub(r"://([^/@:]+):[^/@]*@", r"://\1:***@", str(camera))


def crop(image: np.ndarray, roi: tuple[int, int, int, int] | None) -> np.ndarray | None:
    """The region of interest (x, y, width, height) clipped to the image; None when they don't overlap."""
    if roi is None:
        return image
    x, y, w, h = roi
    height, width = image.shape[:2]
    x1, y1 = min(x + w, width), min(y + h, height)
    if x >= width or y >= height or x1 <= x or y1 <= y:
        return None
    # A copy, so the full frame's buffer is freed and the queued crop is contiguous.
    return np.ascontiguousarray(image[y:y1, x:x1])


class CameraSource(PausableSource):
    """Reads one camera in its own thread and offers its newest frames to the queue."""

    source_kind = "camera"

    def __init__(self, config: CameraSourceConfig, queue: FrameQueue,
                 on_event: Callable[[SourceEvent], None]) -> None:
        super().__init__(config.name)
        self.config = config
        self.kind = camera_kind(config.camera)
        self._queue = queue
        self._on_event = on_event
        self.thread = StoppableThread(f"camera-{self.name}", self._run)
        self._stop = self.thread.stop_event
        self._period = 1.0 / config.fps
        self._started = time.monotonic()
        self._last_frame: float | None = None  # monotonic time of the last frame handed over
        self._down_since: float | None = self._started
        self._lost = False
        self._failures = 0  # consecutive failed connections, for the backoff
        self._opened_once = False
        self._rewinding = False  # reopening a looped video file is not a reconnect
        self._roi_warned = False
        self._finished = threading.Event()  # a non-looping video file reached its end
        self.frames_read = 0
        self._up = metrics.SOURCE_UP.labels(self.name)
        self._up.set(0)
        self._read = metrics.FRAMES_READ.labels(self.name)
        self._reconnects = metrics.RECONNECTS.labels(self.name)
        metrics.SECONDS_SINCE_LAST_FRAME.labels(self.name).set_function(self.seconds_since_last_frame)

    # --- public API --------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the reader thread; a camera that is down keeps being retried in it."""
        self._started = time.monotonic()
        self._down_since = self._started
        log.info("camera_start source=%s camera=%s kind=%s fps=%s", self.name, redact(self.config.camera),
                 self.kind, self.config.fps)
        self.thread.start()

    # stop(): the capture is released by the reader thread itself, within about `read_timeout_s`:
    # OpenCV captures are not thread-safe.

    @property
    def finished(self) -> bool:
        """True once a video file without `loop` reached its end."""
        return self._finished.is_set()

    @property
    def join_timeout_s(self) -> float:
        return max(5.0, 1.5 * self.config.read_timeout_s)

    @property
    def up(self) -> bool:
        """True while frames flow: the reader runs, is not paused, and had a frame since it was last down."""
        return self._down_since is None and self.thread.alive and not self.paused

    def seconds_since_last_frame(self) -> float:
        """Seconds since the last frame was handed over (since start when none was yet)."""
        return time.monotonic() - (self._last_frame if self._last_frame is not None else self._started)

    # --- the reader thread ---------------------------------------------------------------------------
    def _run(self, _stop: threading.Event) -> None:
        try:
            while not self._stop.is_set():
                if self.paused:
                    self._wait_paused()
                    continue
                cap = self._open()
                if cap is None:
                    self._mark_down("open_failed")
                    self._backoff()
                    continue
                try:
                    ended = self._read_file(cap) if self.kind == "file" else self._read_live(cap)
                finally:
                    cap.release()
                if self._stop.is_set():
                    break
                if self.paused:
                    continue  # a live capture released for the pause: opened again on resume
                if ended and not self.config.loop:
                    self._finish()
                    break
                self._rewinding = ended and not self._failures
                if not self._rewinding:
                    self._backoff()
        except QueueClosed:
            log.info("camera_queue_closed source=%s", self.name)
        except Exception:  # a reader must not die silently: log, count, and leave the metric down
            log.exception("camera_reader_crashed source=%s", self.name)
            metrics.ERRORS.labels("camera").inc()
        finally:
            self._up.set(0)
            log.info("camera_stopped source=%s frames=%d", self.name, self.frames_read)

    def _open(self) -> cv2.VideoCapture | None:
        """Open the capture with bounded open/read timeouts; None when it cannot be opened."""
        if self._opened_once and not self._rewinding:
            self._reconnects.inc()
        self._opened_once = True
        self._rewinding = False
        camera = self.config.camera
        timeout_ms = int(self.config.read_timeout_s * 1000)
        try:
            if self.kind == "device":
                cap = self._open_device(camera)
            else:
                params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, timeout_ms,
                          cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_ms]
                cap = self._open_ffmpeg(str(camera), params)
        except cv2.error as exc:
            log.warning("camera_open_error source=%s camera=%s error=%s", self.name, redact(camera),
                        str(exc).strip().splitlines()[-1] if str(exc).strip() else exc)
            return None
        if not cap.isOpened():
            cap.release()
            log.info("camera_open_failed source=%s camera=%s", self.name, redact(camera))
            return None
        log.info("camera_opened source=%s camera=%s", self.name, redact(camera))
        return cap

    def _open_device(self, camera: int | str) -> cv2.VideoCapture:
        index = int(camera) if isinstance(camera, int) or str(camera).strip().isdigit() else str(camera)
        cap = cv2.VideoCapture(index, cv2.CAP_V4L2)
        if cap.isOpened():
            # Keep only the newest frame in the driver's queue; read timeout where the backend has one.
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
            cap.set(cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(self.config.read_timeout_s * 1000))
        return cap

    def _open_ffmpeg(self, url: str, params: list[int]) -> cv2.VideoCapture:
        transport = self.config.rtsp_transport
        if transport is None or not url.lower().startswith("rtsp"):
            return cv2.VideoCapture(url, cv2.CAP_FFMPEG, params)
        with _FFMPEG_ENV_LOCK:
            previous = os.environ.get(_FFMPEG_OPTIONS_ENV)
            options = [o for o in (previous or "").split("|") if o and not o.startswith("rtsp_transport;")]
            os.environ[_FFMPEG_OPTIONS_ENV] = "|".join([f"rtsp_transport;{transport}", *options])
            try:
                return cv2.VideoCapture(url, cv2.CAP_FFMPEG, params)
            finally:
                if previous is None:
                    os.environ.pop(_FFMPEG_OPTIONS_ENV, None)
                else:
                    os.environ[_FFMPEG_OPTIONS_ENV] = previous

    def _read_live(self, cap: cv2.VideoCapture) -> bool:
        """Grab every frame as it arrives, decode one at each sampling instant. Returns False when the
        stream failed (error, end, or no frame for `read_timeout_s`), True when stopped or paused."""
        timeout = self.config.read_timeout_s
        last_good = time.monotonic()
        next_sample = last_good
        drain_started: float | None = None
        while not self._stop.is_set() and not self.paused:
            t0 = time.monotonic()
            ok = cap.grab()
            now = time.monotonic()
            self._check_lost(now)
            if not ok:
                log.warning("camera_read_failed source=%s reason=no_frame", self.name)
                self._mark_down("read_failed")
                return False
            if now < next_sample:
                continue
            if now - t0 < _BUFFERED_GRAB_S:
                # Out of a buffer: a newer frame is probably already waiting. Keep draining, unless the
                # stream is faster than we can grab (then take what we have after one period).
                drain_started = drain_started or now
                if now - drain_started < self._period:
                    continue
            drain_started = None
            ok, image = cap.retrieve()
            if not ok or image is None:
                if now - last_good > timeout + self._period:  # frames arrive but none decodes
                    break
                continue
            last_good = now
            self._hand_over(image)
            # Keep the sampling phase when on time; after a stall start over, never a burst to catch up.
            late = now - next_sample >= self._period
            next_sample = now + self._period if late else next_sample + self._period
        else:
            return True  # stopped or paused
        log.warning("camera_read_failed source=%s reason=no_decodable_frame timeout_s=%s", self.name, timeout)
        self._mark_down("read_failed")
        return False

    def _read_file(self, cap: cv2.VideoCapture) -> bool:
        """Replay a video file at its own frame rate, sampled at `fps`. True when it reached its end."""
        file_fps = cap.get(cv2.CAP_PROP_FPS)
        if not (0 < file_fps <= 1000):
            log.warning("camera_file_fps_unknown source=%s assumed=%s", self.name, _FILE_FPS_FALLBACK)
            file_fps = _FILE_FPS_FALLBACK
        start = time.monotonic()
        index = 0
        handed = 0
        next_sample_media = 0.0
        while not self._stop.is_set():
            if self.paused:
                paused_at = time.monotonic()
                if not self._wait_paused():
                    return False
                start += time.monotonic() - paused_at  # the media clock goes on where it stopped
                continue
            media_t = index / file_fps
            delay = start + media_t - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                return False
            if not cap.grab():
                if index == 0:
                    log.warning("camera_file_unreadable source=%s camera=%s", self.name,
                                redact(self.config.camera))
                    self._mark_down("no_frame")
                    return False
                log.info("camera_file_end source=%s frames=%d loop=%s", self.name, index, self.config.loop)
                if handed == 0:
                    self._failures += 1  # a file that never yields a frame must not spin when looped
                return True
            index += 1
            self._check_lost(time.monotonic())
            if media_t + 1e-9 < next_sample_media:
                continue
            next_sample_media += self._period
            ok, image = cap.retrieve()
            if ok and image is not None and self._hand_over(image):
                handed += 1
        return False

    # --- helpers -------------------------------------------------------------------------------------
    def _hand_over(self, image: np.ndarray) -> bool:
        """Crop and offer a frame to the queue (latest wins); True when a frame was handed over."""
        region = crop(image, self.config.roi)
        if region is None:
            if not self._roi_warned:
                log.error("camera_roi_outside_frame source=%s roi=%s frame=%dx%d", self.name,
                          list(self.config.roi or ()), image.shape[1], image.shape[0])
                metrics.ERRORS.labels("camera").inc()
                self._roi_warned = True
            return False
        # With an ROI the evidence shows the whole frame with the ROI marked: one extra frame per camera waits in
        # the queue (latest wins), never more.
        full = image if self.config.roi is not None else None
        self._queue.put_latest(Frame(source=self.name, image=region, frame_time=time.time(), path=None,
                                     full_frame=full))
        now = time.monotonic()
        self._last_frame = now
        self.frames_read += 1
        self._read.inc()
        if self._down_since is not None:
            self._mark_up(now)
        return True

    def _mark_up(self, now: float) -> None:
        down_for = now - (self._down_since if self._down_since is not None else now)
        self._down_since = None
        self._failures = 0
        self._up.set(1)
        log.info("camera_up source=%s down_s=%.1f", self.name, down_for)
        if self._lost:
            self._lost = False
            self._emit("camera_found", f"frames again after {down_for:.1f} s down")

    def _mark_down(self, reason: str) -> None:
        self._failures += 1
        self._up.set(0)
        if self._down_since is None:
            # Down since its last frame, not since the failure was noticed (a read can time out first).
            self._down_since = self._last_frame if self._last_frame is not None else time.monotonic()
            log.warning("camera_down source=%s reason=%s", self.name, reason)

    def _check_lost(self, now: float) -> None:
        if self._lost or self._down_since is None:
            return
        if now - self._down_since >= self.config.lost_after_s:
            self._lost = True
            self._emit("camera_lost", f"no frame for {now - self._down_since:.1f} s from "
                                      f"{redact(self.config.camera)}")

    def _emit(self, kind: str, detail: str) -> None:
        log.warning("camera_event kind=%s source=%s detail=%r", kind, self.name, detail)
        try:
            self._on_event(SourceEvent(source=self.name, kind=kind, time=time.time(), detail=detail))
        except Exception:  # a failing listener must not kill the reader
            log.exception("camera_event_handler_failed source=%s event=%s", self.name, kind)

    def _backoff(self) -> None:
        """Wait before the next connection attempt: doubling per failure, capped, with jitter."""
        cfg = self.config
        exponent = max(0, self._failures - 1)
        delay = min(cfg.backoff_max_s, cfg.backoff_initial_s * (2 ** min(exponent, 30)))
        delay *= random.uniform(0.8, 1.2)  # jitter: cameras that failed together don't retry together
        delay = min(delay, cfg.backoff_max_s)
        log.debug("camera_retry source=%s in_s=%.2f failures=%d", self.name, delay, self._failures)
        deadline = time.monotonic() + delay
        while not self._stop.is_set() and not self.paused:
            now = time.monotonic()
            self._check_lost(now)
            if now >= deadline:
                return
            self._stop.wait(min(_WAIT_SLICE_S, deadline - now))

    def _wait_paused(self) -> bool:
        """In the reader thread: wait while paused. True on resume, False when stopped meanwhile."""
        self._up.set(0)  # no frames while paused; anomaly_monitor_source_paused says why
        log.info("camera_reading_paused source=%s camera=%s", self.name, redact(self.config.camera))
        while self.paused and not self._stop.is_set():
            self._stop.wait(_PAUSE_POLL_S)
        if self._stop.is_set():
            return False
        # The pause is not downtime: the lost clock starts again now (a camera lost before the pause stays
        # lost until frames come), the backoff starts from the beginning, and opening again is no reconnect.
        if not self._lost:
            self._down_since = time.monotonic()
        self._failures = 0
        self._rewinding = True
        log.info("camera_reading_resumed source=%s", self.name)
        return True

    def _finish(self) -> None:
        self._down_since = time.monotonic()  # no longer delivering, but finished is not lost: no event
        self._up.set(0)
        self._finished.set()
        log.info("camera_finished source=%s frames=%d", self.name, self.frames_read)
