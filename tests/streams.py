"""Real camera streams for tests: ffmpeg serving HTTP MJPEG, GStreamer serving RTSP, video files.

Every server binds 127.0.0.1 on a free port and is stopped by its owner (use them from fixtures with
finalizers). Waits are bounded.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import cv2
import numpy as np
from netutil import free_port

__all__ = ["free_port"]

SYSTEM_PYTHON = "/usr/bin/python3"
RTSP_SERVER_SCRIPT = Path(__file__).with_name("rtsp_server.py")

# A gray frame whose brightness is 2 x (frame number) mod 256: the frame's own content says when the
# server produced it, so a test can tell a fresh frame from a stale buffered one.
COUNTER_FILTER = "nullsrc=s={w}x{h}:r={rate},format=gray,geq=lum='mod(N*2\\,256)'"
TESTSRC_FILTER = "testsrc=size={w}x{h}:rate={rate}"


def _serving(port: int) -> bool:
    """True when a socket on 127.0.0.1:`port` listens (0A) or already serves a client (01); read from
    /proc/net/tcp, so no connection is made."""
    local = f"0100007F:{port:04X}"
    with open("/proc/net/tcp", encoding="ascii") as table:
        rows = [line.split() for line in list(table)[1:]]
    return any(row[1] == local and row[3] in ("0A", "01") for row in rows)


def have_ffmpeg() -> bool:
    return shutil.which("ffmpeg") is not None


def have_rtsp_server() -> bool:
    """True when the system Python has GStreamer's RTSP server bindings."""
    if not Path(SYSTEM_PYTHON).exists():
        return False
    probe = ('import gi; gi.require_version("GstRtspServer", "1.0"); '
             "from gi.repository import GstRtspServer")
    return subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, timeout=30).returncode == 0


def counter_value(image: np.ndarray) -> int:
    """The frame number (mod 128) a COUNTER_FILTER frame shows."""
    return int(round(float(np.mean(image)) / 2.0)) % 128


class MjpegServer:
    """ffmpeg serving a live test pattern as HTTP multipart JPEG at http://127.0.0.1:PORT/cam.mjpg.

    `ffmpeg -listen 1` serves one client and exits when it leaves, so a supervisor thread starts it
    again while the server is "up": a client that reconnects finds it. `down()` kills it and keeps it
    dead until `up()`.
    """

    def __init__(self, port: int | None = None, size: tuple[int, int] = (64, 48), rate: int = 10,
                 pattern: str = "testsrc") -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/cam.mjpg"
        template = COUNTER_FILTER if pattern == "counter" else TESTSRC_FILTER
        self._filter = template.format(w=size[0], h=size[1], rate=rate)
        self._want_up = threading.Event()
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._thread = threading.Thread(target=self._supervise, name=f"mjpeg-server-{self.port}", daemon=True)
        self.starts = 0

    def _command(self) -> list[str]:
        return ["ffmpeg", "-nostdin", "-loglevel", "error", "-re", "-f", "lavfi", "-i", self._filter,
                "-q:v", "2", "-f", "mpjpeg", "-listen", "1", self.url]

    def _supervise(self) -> None:
        while not self._stopped.is_set():
            if not self._want_up.wait(0.1):
                continue
            with self._lock:
                if self._stopped.is_set() or not self._want_up.is_set():
                    continue
                self._proc = subprocess.Popen(self._command(), stdout=subprocess.DEVNULL,
                                              stderr=subprocess.DEVNULL)
                self.starts += 1
            self._proc.wait()

    def start(self) -> MjpegServer:
        """Start serving and wait (bounded) until the port accepts connections."""
        self._want_up.set()
        self._thread.start()
        self.wait_listening()
        return self

    def wait_listening(self, timeout: float = 10.0) -> None:
        # Probing with a bare TCP connect would take ffmpeg's single client slot; watch the kernel's
        # socket table instead. A camera retrying fast may be served before we look: that counts too.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if _serving(self.port):
                return
            time.sleep(0.05)
        raise TimeoutError(f"ffmpeg did not listen on port {self.port} within {timeout} s")

    def down(self) -> None:
        """Kill the server and keep it down: the camera disappears."""
        with self._lock:
            self._want_up.clear()
            proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)

    def up(self) -> None:
        """Serve again after `down()`."""
        self._want_up.set()
        self.wait_listening()

    def stop(self) -> None:
        self._stopped.set()
        self.down()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def suspend(self) -> None:
        """SIGSTOP the server: the connection stays open but no frame arrives (a hung camera)."""
        with self._lock:
            if self._proc is not None:
                self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        with self._lock:
            if self._proc is not None:
                self._proc.send_signal(signal.SIGCONT)


class RtspServer:
    """GStreamer's RTSP server (tests/rtsp_server.py, run by the system Python) on 127.0.0.1."""

    def __init__(self, port: int | None = None, path: str = "cam") -> None:
        self.port = port or free_port()
        self.url = f"rtsp://127.0.0.1:{self.port}/{path}"
        self._path = path
        self._proc: subprocess.Popen | None = None

    def start(self, timeout: float = 15.0) -> RtspServer:
        self._proc = subprocess.Popen([SYSTEM_PYTHON, str(RTSP_SERVER_SCRIPT), str(self.port), self._path],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        ready: list[str] = []
        reader = threading.Thread(target=lambda: ready.append(self._proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        if not ready or not ready[0].startswith("ready"):
            self.stop()
            raise RuntimeError(f"the RTSP server did not start: {ready!r}")
        return self

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=10)


def write_video(path: Path, frames: list[np.ndarray], fps: float = 10.0) -> Path:
    """Write frames (uint8 gray or BGR) as a Motion-JPEG AVI with OpenCV; returns the path."""
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h), True)
    if not writer.isOpened():
        raise OSError(f"OpenCV cannot write {path}")
    try:
        for frame in frames:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR) if frame.ndim == 2 else frame)
    finally:
        writer.release()
    return path
