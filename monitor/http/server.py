"""The one HTTP server: uvicorn serving `app.build_app` on its own event loop in a named thread.

The socket is bound in `start()`, in the caller's thread, so a port in use is the caller's error at once
(and port 0 tells which port it got); `stop()` makes uvicorn close its listener, let open requests finish for
at most `GRACE_S`, and end the thread. The token for write actions comes from a token file (the config's) or
from the environment (`MONITOR_API_TOKEN`), read once at start.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import threading
import time
from pathlib import Path

import uvicorn

from monitor.http.app import TOKEN_ENV, WritePolicy, build_app
from monitor.http.control import Controller
from monitor.threads import StoppableThread

log = logging.getLogger(__name__)

GRACE_S = 2.0  # open requests get this long to finish at stop
START_TIMEOUT_S = 10.0


class TokenError(Exception):
    """The token file cannot be read or holds no token."""


def read_token(token_file: str | Path | None, environ: dict[str, str] | None = None) -> str | None:
    """The API token: the file's first line when a file is named, else `MONITOR_API_TOKEN`, else None."""
    if token_file is not None:
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise TokenError(f"{token_file}: cannot read the API token: {exc}") from None
        if not token or "\n" in token:
            raise TokenError(f"{token_file}: the API token file must hold one non-empty line")
        return token
    token = (os.environ if environ is None else environ).get(TOKEN_ENV, "").strip()
    return token or None


def is_loopback(host: str) -> bool:
    """True for an address only this machine reaches (127.0.0.0/8, ::1)."""
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def _bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (a name resolves to its first address)."""
    family, kind, proto, _name, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart must not wait out TIME_WAIT
        sock.bind(address)
        sock.listen(128)
        sock.set_inheritable(True)
    except OSError:
        sock.close()
        raise
    return sock


class HttpServer:
    """The daemon's HTTP server. `start()` returns the bound port; `stop()` then `join(timeout)`."""

    def __init__(self, host: str, port: int, controller: Controller, token_file: str | Path | None = None,
                 read_token_required: bool = False) -> None:
        self.host = host
        self.read_token_required = read_token_required  # the review page and its API need the token to read
        self.port = port
        self.controller = controller
        self.token_file = token_file
        self._sock: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self.thread = StoppableThread("http", self._run)

    def start(self) -> int:
        """Bind, start serving in the `http` thread, return the port once it answers requests.

        Raises OSError when the address cannot be bound, TokenError for a bad token file, RuntimeError when
        the server does not come up within START_TIMEOUT_S.
        """
        token = read_token(self.token_file)
        # uvicorn's own INFO lines ("Started server process") are not `event key=value` lines; our
        # http_serving line says the same. Its warnings and errors still reach the daemon's log.
        uvicorn_log = logging.getLogger("uvicorn.error")
        if uvicorn_log.getEffectiveLevel() < logging.WARNING:
            uvicorn_log.setLevel(logging.WARNING)
        self._sock = _bind(self.host, self.port)
        bound_host, port = self._sock.getsockname()[:2]
        policy = WritePolicy(token=token, required=not is_loopback(bound_host))
        if policy.required and token is None:
            log.warning("http_writes_disabled host=%s reason=no_token hint=%r", self.host,
                        f"set {TOKEN_ENV} or the token file to allow pause, resume and reload")
        config = uvicorn.Config(
            build_app(self.controller, policy, read_token_required=self.read_token_required),
            log_config=None,  # the daemon's logging as it is configured; uvicorn must not reconfigure it
            access_log=False,  # a scrape every few seconds is not an event worth a log line
            lifespan="off", loop="asyncio", http="h11", ws="none", interface="asgi3",
            server_header=False, timeout_graceful_shutdown=GRACE_S,
        )
        self._server = uvicorn.Server(config)
        self.thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._server.started:
            if not self.thread.alive or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the HTTP server on {self.host}:{port} did not start")
            time.sleep(0.01)
        self.port = port
        log.info("http_serving host=%s port=%d token=%s writes=%s", bound_host, port,
                 "set" if token else "none", "token" if token else ("off" if policy.required else "open"))
        return port

    def _run(self, _stop: threading.Event) -> None:
        assert self._server is not None and self._sock is not None
        # uvicorn installs no signal handlers outside the main thread: the daemon keeps its own.
        self._server.run(sockets=[self._sock])

    def stop(self) -> None:
        """Ask the server to end (it closes its listener, then finishes open requests); returns at once."""
        self.thread.stop()
        if self._server is not None:
            self._server.should_exit = True
        elif self._sock is not None:
            self._sock.close()

    def join(self, timeout: float) -> bool:
        """Wait up to `timeout` s for the server thread; True when it ended. The socket is closed either way."""
        ended = self.thread.join(timeout)
        if self._sock is not None:
            self._sock.close()
        return ended
