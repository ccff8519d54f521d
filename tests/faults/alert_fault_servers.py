"""Real servers that refuse some alerts, for the fault tests of the alert sinks (issue 11, class 12).

`StatusServer` is an HTTP server whose answer to each POST comes from a rule over the JSON body, so a test
can make one alert a 400 and the next a 200. `RefusingSmtpServer` is aiosmtpd answering RCPT and DATA with
the replies a test chooses (550 for an unknown user, 450 for a busy mailbox, 554 for refused content).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from netutil import free_port

# (JSON body, how many POSTs carried this alert's source so far, this one included) -> HTTP status.
Rule = Callable[[dict, int], int]


def always_ok(body: dict, attempt: int) -> int:
    return 200


class StatusServer:
    """An HTTP server on 127.0.0.1 answering each POST with `rule(body, attempt)`; 2xx bodies are kept."""

    def __init__(self, rule: Rule = always_ok) -> None:
        self.rule = rule
        self.accepted: list[dict] = []
        self.answers: list[tuple[str, int]] = []  # (source, status) of every POST, in order
        self._per_source: dict[str, int] = {}
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = {}
                # Alertmanager's body is a list of one alert; the source is a label there.
                alert = body[0] if isinstance(body, list) and body else body
                source = str(alert.get("source") or alert.get("labels", {}).get("source", ""))
                with outer._lock:
                    outer._per_source[source] = outer._per_source.get(source, 0) + 1
                    status = outer.rule(alert, outer._per_source[source])
                    outer.answers.append((source, status))
                    if 200 <= status < 300:
                        outer.accepted.append(alert)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"ok": true}' if status < 300 else b'{"error": "refused by the test"}')

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="test-status-server", daemon=True)

    def __enter__(self) -> StatusServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def sources(self) -> list[str]:
        """The sources of the accepted alerts, in order."""
        with self._lock:
            return [str(a.get("source") or a.get("labels", {}).get("source")) for a in self.accepted]

    def statuses(self, source: str) -> list[int]:
        with self._lock:
            return [status for s, status in self.answers if s == source]


class RefusingSmtpServer:
    """aiosmtpd on 127.0.0.1: `rcpt(address, n)` and `data(message)` give the reply ("250 OK" to accept).

    `n` counts the RCPT commands for that address so far, this one included.
    """

    def __init__(self, rcpt: Callable[[str, int], str] | None = None,
                 data: Callable[[EmailMessage], str] | None = None) -> None:
        from aiosmtpd.controller import Controller

        self.port = free_port()
        self.messages: list[EmailMessage] = []
        self.rcpt_counts: dict[str, int] = {}
        outer = self

        class Handler:
            async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: ANN001, N802
                outer.rcpt_counts[address] = outer.rcpt_counts.get(address, 0) + 1
                reply = rcpt(address, outer.rcpt_counts[address]) if rcpt else "250 OK"
                if reply.startswith("250"):
                    envelope.rcpt_tos.append(address)
                return reply

            async def handle_DATA(self, server, session, envelope):  # noqa: ANN001, N802
                message = message_from_bytes(envelope.content, policy=policy.default)
                reply = data(message) if data else "250 OK"
                if reply.startswith("250"):
                    outer.messages.append(message)
                return reply

        self._controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)

    def __enter__(self) -> RefusingSmtpServer:
        self._controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._controller.stop()

    def subjects(self) -> list[str]:
        return [str(m["Subject"]) for m in self.messages]
