"""Real servers for the alert tests, all on 127.0.0.1 and a free port: HTTP receiver, SMTP, Alertmanager,
mosquitto. Each is a context manager that stops what it started."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests
from netutil import free_port, port_open, wait_until

__all__ = ["free_port", "port_open", "wait_until"]


def stop_process(proc: subprocess.Popen | None) -> None:
    """Terminate a server process, then kill it if it has not exited within 10 s."""
    if proc is None:
        return
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


class WebhookServer:
    """An HTTP server that records every POST; it answers 503 to the first `fail_first` requests,
    and holds each request `delay_s` seconds before answering (a hung chat server when large)."""

    def __init__(self, fail_first: int = 0, delay_s: float = 0.0, port: int = 0) -> None:
        self.fail_first = fail_first
        self.delay_s = delay_s
        self.requests: list[dict] = []  # accepted ones: {"path", "headers", "json"}
        self.attempts = 0
        self._lock = threading.Lock()
        self._release = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                if len(body) < length:
                    # The sender died mid-request (the SIGKILL tests): nothing was delivered, as a real server
                    # would see it; recording it would put a None among the delivered payloads.
                    self.close_connection = True
                    return
                if outer.delay_s:
                    outer._release.wait(outer.delay_s)
                with outer._lock:
                    outer.attempts += 1
                    fail = outer.attempts <= outer.fail_first
                    if not fail:
                        try:
                            data = json.loads(body) if body else None
                        except ValueError:
                            data = body.decode(errors="replace")
                        outer.requests.append({"path": self.path, "headers": dict(self.headers),
                                               "json": data})
                self.send_response(503 if fail else 200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"ok": false}' if fail else b'{"ok": true}')

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="test-webhook-server", daemon=True)

    def __enter__(self) -> WebhookServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._release.set()  # let held requests finish
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def received(self) -> list[dict]:
        with self._lock:
            return [r["json"] for r in self.requests]


class SmtpServer:
    """aiosmtpd's real SMTP server; `messages` are the parsed e-mails it accepted.

    With `login`, it requires AUTH LOGIN/PLAIN with that (user, password) (over plain text: loopback only).
    """

    def __init__(self, port: int | None = None, login: tuple[str, str] | None = None,
                 tls: tuple[Path, Path] | None = None, implicit_tls: bool = False) -> None:
        import ssl

        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult

        self.port = port or free_port()
        self.messages: list[EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        outer = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):  # noqa: ANN001, N802 - aiosmtpd API
                outer.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
                outer.messages.append(message_from_bytes(envelope.content, policy=policy.default))
                return "250 OK"

        def authenticator(server, session, envelope, mechanism, auth_data):  # noqa: ANN001
            ok = login is not None and (auth_data.login.decode(), auth_data.password.decode()) == login
            return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd answers 535

        kwargs: dict = {}
        if login is not None:
            kwargs = {"authenticator": authenticator, "auth_required": True, "auth_require_tls": False}
        if tls is not None:  # (certificate, key): STARTTLS required, or TLS from the first byte
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(str(tls[0]), str(tls[1]))
            if implicit_tls:
                kwargs["ssl_context"] = context
            else:
                kwargs.update(tls_context=context, require_starttls=True)
        self._controller = Controller(Handler(), hostname="127.0.0.1", port=self.port, **kwargs)

    def __enter__(self) -> SmtpServer:
        self._controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._controller.stop()


class Alertmanager:
    """Debian's prometheus-alertmanager, clustering off, routing every alert to `webhook_url`."""

    BINARY = "prometheus-alertmanager"

    def __init__(self, workdir: Path, webhook_url: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        self.config = workdir / "alertmanager.yml"
        self.config.write_text(
            "route:\n"
            "  receiver: hook\n"
            "  group_by: ['alertname', 'source']\n"
            "  group_wait: 100ms\n"
            "  group_interval: 1s\n"
            "  repeat_interval: 1h\n"
            "receivers:\n"
            "  - name: hook\n"
            "    webhook_configs:\n"
            f"      - url: '{webhook_url}/alertmanager'\n"
            "        send_resolved: true\n"
        )
        self.storage = workdir / "data"
        self.log = workdir / "alertmanager.log"
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> Alertmanager:
        binary = shutil.which(self.BINARY)
        if binary is None:
            raise RuntimeError(f"{self.BINARY} is not installed (scripts/install-system-deps.sh installs it)")
        self._logfile = self.log.open("wb")
        self._proc = subprocess.Popen(
            [binary, f"--web.listen-address=127.0.0.1:{self.port}", "--cluster.listen-address=",
             "--storage.path", str(self.storage), "--config.file", str(self.config)],
            stdout=self._logfile, stderr=subprocess.STDOUT,
        )

        def ready() -> bool:
            try:
                return requests.get(f"{self.url}/-/ready", timeout=0.5).status_code == 200
            except requests.RequestException:
                return False

        try:
            wait_until(ready, timeout=20, interval=0.1)
        except TimeoutError:
            self.__exit__()
            raise RuntimeError(f"alertmanager did not become ready: {self.log.read_text()[-2000:]}") from None
        return self

    def __exit__(self, *exc: object) -> None:
        stop_process(self._proc)
        self._proc = None
        self._logfile.close()


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (and its key), made with the openssl command line tool."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


def mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )


class Mosquitto:
    """The mosquitto broker on 127.0.0.1, anonymous access, no persistence."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        self.config = workdir / "mosquitto.conf"
        self.config.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        self.log = workdir / "mosquitto.log"
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> Mosquitto:
        binary = mosquitto_binary()
        if binary is None:
            raise RuntimeError("mosquitto is not installed (scripts/install-system-deps.sh installs it)")
        self._logfile = self.log.open("wb")
        self._proc = subprocess.Popen([binary, "-c", str(self.config)], stdout=self._logfile,
                                      stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: port_open(self.port), timeout=10, interval=0.05)
        except TimeoutError:
            self.__exit__()
            raise RuntimeError(f"mosquitto did not start: {self.log.read_text()[-2000:]}") from None
        return self

    def __exit__(self, *exc: object) -> None:
        stop_process(self._proc)
        self._proc = None
        self._logfile.close()


class MqttSubscriber:
    """A paho-mqtt 2 client that records (topic, payload, retain) of every message on `topics`."""

    def __init__(self, port: int, topics: list[str]) -> None:
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-sub-{free_port()}")
        self._topics = topics
        self._port = port

        def on_connect(client, userdata, flags, reason_code, properties):  # noqa: ANN001
            client.subscribe([(t, 1) for t in self._topics])

        def on_subscribe(client, userdata, mid, reason_codes, properties):  # noqa: ANN001
            self._subscribed.set()

        def on_message(client, userdata, msg):  # noqa: ANN001
            with self._lock:
                self.messages.append((msg.topic, msg.payload, bool(msg.retain)))

        self._client.on_connect = on_connect
        self._client.on_subscribe = on_subscribe
        self._client.on_message = on_message

    def __enter__(self) -> MqttSubscriber:
        self._client.connect("127.0.0.1", self._port, keepalive=10)
        self._client.loop_start()
        if not self._subscribed.wait(10):
            self.__exit__()
            raise RuntimeError("the test subscriber could not subscribe")
        return self

    def __exit__(self, *exc: object) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def on(self, topic: str) -> list[tuple[bytes, bool]]:
        with self._lock:
            return [(p, r) for t, p, r in self.messages if t == topic]


# --- alert test helpers ---------------------------------------------------------------------------
def anomaly(source: str = "line1", i: int = 0, evidence: Path | None = None, score: float | None = None):
    """An anomalous Verdict whose score encodes `i` (0.5 + i/1000), so tests can check order and content."""
    from monitor.records import Verdict

    now = time.time()
    return Verdict(source=source, frame_time=now, scored_at=now,
                   score=score if score is not None else 0.5 + i / 1000, threshold=0.1, anomaly=True,
                   path=Path(f"/data/{source}/img{i:04d}.png"), evidence=evidence)


def alerts_config(sinks: list[dict], **kw: object):
    """An AlertsConfig with fast retries for tests (backoff 20 ms doubling up to 200 ms)."""
    from monitor.alerts.config import AlertsConfig

    data = {"backoff_initial_s": 0.02, "backoff_max_s": 0.2, "sinks": sinks, **kw}
    return AlertsConfig.model_validate(data)


def metric(name: str, sink: str) -> float:
    """Current value of an alert metric for one sink (0 when never touched)."""
    from monitor import metrics

    return metrics.REGISTRY.get_sample_value(f"anomaly_monitor_{name}", {"sink": sink}) or 0.0
