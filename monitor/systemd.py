"""The systemd notify protocol (READY, STOPPING, WATCHDOG, STATUS) over $NOTIFY_SOCKET, no library needed."""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def notify(state: str) -> bool:
    """Send one notify datagram; False (and nothing else) when not run by systemd with Type=notify."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # an abstract socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            # Never block: a receiver that stops reading fills its queue (10 datagrams by default), and a
            # blocking send would then hang the daemon's main loop, watchdog pings and shutdown included.
            sock.setblocking(False)
            sock.connect(address)
            sock.sendall(state.encode())
        return True
    except OSError as exc:
        log.warning("systemd_notify_failed state=%s error=%s", state.split("\n")[0], exc)
        return False


def status(text: str) -> bool:
    """Set the one-line status `systemctl status` shows (STATUS=); never blocks, like `notify`."""
    return notify("STATUS=" + " ".join(text.split()))


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WatchdogSec), or None when no watchdog is set."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(0.1, int(usec) / 2e6)
    except ValueError:
        return None
