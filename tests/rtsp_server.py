"""A tiny RTSP server for tests: GStreamer's RTSP server serving a live test pattern as RTP/JPEG.

Run it with the system Python (it needs python3-gi and gir1.2-gst-rtsp-server-1.0, which a virtual
environment does not see): ``/usr/bin/python3 tests/rtsp_server.py PORT [PATH]``. It binds 127.0.0.1,
prints ``ready rtsp://127.0.0.1:PORT/PATH`` once it listens, and runs until SIGTERM or SIGINT.
"""

import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

PIPELINE = (
    "( videotestsrc is-live=1 pattern={pattern} "
    "! video/x-raw,width={width},height={height},framerate={fps}/1 "
    "! videoconvert ! video/x-raw,format=I420 ! jpegenc ! rtpjpegpay name=pay0 pt=96 )"
)


def main() -> int:
    port = int(sys.argv[1])
    path = sys.argv[2] if len(sys.argv) > 2 else "cam"
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(PIPELINE.format(pattern="smpte", width=64, height=48, fps=10))
    factory.set_shared(True)  # one pipeline for every client: a reconnect joins the running stream
    server.get_mount_points().add_factory("/" + path, factory)
    if server.attach(None) == 0:
        print(f"error: cannot listen on 127.0.0.1:{port}", file=sys.stderr, flush=True)
        return 1
    loop = GLib.MainLoop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, loop.quit)
    print(f"ready rtsp://127.0.0.1:{port}/{path}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
