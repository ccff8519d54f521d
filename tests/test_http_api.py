"""The one HTTP server against a real in-process daemon: metrics, health, status, pause/resume, reload, tokens."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests
from imagegen import encode, normal_image
from inprocess import Served, make_daemon, serve
from netutil import wait_until

from monitor import metrics
from monitor.daemon import Daemon
from monitor.http.control import DaemonController
from monitor.http.server import HttpServer

pytestmark = pytest.mark.timeout(120)

TOKEN = "s3cret-token-for-tests"


def png(seed: int) -> bytes:
    return encode(normal_image(np.random.default_rng(seed), 32))


def verdicts(daemon: Daemon, source: str) -> list[str]:
    """File names of the journal's verdicts of `source`, in order."""
    path = daemon.config.output.journal
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [Path(r["path"]).name for r in records if "score" in r and r.get("source") == source]


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_bundle) -> Iterator[Served]:
    yield from serve(make_daemon(tmp_path_factory.mktemp("http-daemon"), tiny_bundle))


def extra_server(served: Served, host: str, token_file: Path | None = None) -> HttpServer:
    server = HttpServer(host, 0, DaemonController(served.daemon), token_file=token_file)
    server.start()
    return server


# --- metrics and health --------------------------------------------------------------------------

def test_metrics_are_served_in_the_prometheus_text_format(served):
    response = requests.get(f"{served.url}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert 'anomaly_monitor_source_paused{source="line1"} 0.0' in response.text
    assert "anomaly_monitor_queue_depth" in response.text


def test_metrics_negotiate_openmetrics_as_the_prometheus_client_server_did(served):
    response = requests.get(f"{served.url}/metrics", timeout=10,
                            headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.rstrip().endswith("# EOF")


def test_metrics_pass_promtool_check(served):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (scripts/install-system-deps.sh)")
    text = requests.get(f"{served.url}/metrics", timeout=10).text
    res = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.strip() == "" and res.stderr.strip() == ""


def test_healthy_and_ready_answer_200_while_the_daemon_runs(served):
    assert requests.get(f"{served.url}/-/healthy", timeout=10).status_code == 200
    assert requests.get(f"{served.url}/-/ready", timeout=10).status_code == 200


def test_ready_is_503_before_the_daemon_starts_and_after_it_stops(tmp_path, tiny_bundle):
    daemon = make_daemon(tmp_path, tiny_bundle)
    server = HttpServer("127.0.0.1", 0, DaemonController(daemon))
    port = server.start()
    url = f"http://127.0.0.1:{port}"
    try:
        assert requests.get(f"{url}/-/ready", timeout=10).status_code == 503
        assert requests.get(f"{url}/-/healthy", timeout=10).status_code == 200
        daemon.start()
        assert requests.get(f"{url}/-/ready", timeout=10).status_code == 200
        daemon.stop()
        daemon.shutdown()
        assert requests.get(f"{url}/-/ready", timeout=10).status_code == 503
        assert requests.get(f"{url}/-/healthy", timeout=10).status_code == 200
    finally:
        server.stop()
        started = time.monotonic()
        assert server.join(5)
        assert time.monotonic() - started < 5
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/-/healthy", timeout=2)


def test_a_port_in_use_is_an_error_at_start(served):
    with pytest.raises(OSError):
        HttpServer("127.0.0.1", served.server.port, DaemonController(served.daemon)).start()


# --- status --------------------------------------------------------------------------------------

def test_status_lists_sources_models_thresholds_and_the_queue(served, tiny_bundle):
    status = requests.get(f"{served.url}/api/status", timeout=10).json()
    gauge = metrics.REGISTRY.get_sample_value("anomaly_monitor_threshold", {"source": "line1"})
    assert status["ready"] is True
    assert [(s["name"], s["kind"], s["state"], s["model"]) for s in status["sources"]] == [
        ("line1", "folder", "running", "default"), ("line2", "folder", "running", "default")]
    assert status["models"]["default"]["bundle"] == tiny_bundle.name
    assert status["models"]["default"]["input"] == "32x32x1"
    assert set(status["thresholds"]) == {"line1", "line2"}
    assert status["thresholds"]["line1"]["value"] == pytest.approx(gauge)
    assert status["thresholds"]["line1"]["mode"] == "rolling"
    assert status["queue"] == {"depth": 0, "capacity": served.daemon.queue.capacity}
    assert status["cameras"] == []


# --- pause and resume ----------------------------------------------------------------------------

def test_a_paused_folder_source_scores_nothing_new_and_scores_each_file_once_after_resume(served):
    url, daemon = served.url, served.daemon
    inbox = daemon.config.source("line1").folder
    (inbox / "before.png").write_bytes(png(1))
    wait_until(lambda: "before.png" in verdicts(daemon, "line1"), 30)
    answer = requests.post(f"{url}/api/sources/line1/pause", timeout=10)
    assert answer.status_code == 200 and answer.json() == {"source": "line1", "state": "paused"}
    try:
        for i in range(3):
            (inbox / f"held{i}.png").write_bytes(png(10 + i))
        (daemon.config.source("line2").folder / "other.png").write_bytes(png(20))
        wait_until(lambda: "other.png" in verdicts(daemon, "line2"), 30)  # the other source goes on
        time.sleep(0.5)
        assert [n for n in verdicts(daemon, "line1") if n.startswith("held")] == []
        states = {s["name"]: s["state"] for s in requests.get(f"{url}/api/status", timeout=10).json()["sources"]}
        assert states == {"line1": "paused", "line2": "running"}
        metrics_text = requests.get(f"{url}/metrics", timeout=10).text
        assert 'anomaly_monitor_source_paused{source="line1"} 1.0' in metrics_text
    finally:
        answer = requests.post(f"{url}/api/sources/line1/resume", timeout=10)
    assert answer.status_code == 200 and answer.json() == {"source": "line1", "state": "running"}
    wait_until(lambda: len([n for n in verdicts(daemon, "line1") if n.startswith("held")]) >= 3, 30)
    time.sleep(1.0)  # a second verdict of any file would show within this
    held = [n for n in verdicts(daemon, "line1") if n.startswith("held")]
    assert sorted(held) == ["held0.png", "held1.png", "held2.png"]
    assert verdicts(daemon, "line1").count("before.png") == 1


def test_pausing_twice_and_resuming_a_running_source_are_harmless(served):
    url = served.url
    try:
        assert requests.post(f"{url}/api/sources/line2/pause", timeout=10).status_code == 200
        assert requests.post(f"{url}/api/sources/line2/pause", timeout=10).json()["state"] == "paused"
    finally:
        assert requests.post(f"{url}/api/sources/line2/resume", timeout=10).status_code == 200
    assert requests.post(f"{url}/api/sources/line2/resume", timeout=10).json()["state"] == "running"


@pytest.mark.parametrize("name", ["nosuch", "..%2F..%2Fetc%2Fpasswd", "line1%00", "%2E%2E"])
def test_pause_or_resume_of_an_unknown_source_is_404(served, name):
    for action in ("pause", "resume"):
        response = requests.post(f"{served.url}/api/sources/{name}/{action}", timeout=10)
        assert response.status_code == 404, (name, action, response.text)


def test_a_path_is_never_taken_as_a_source_name(served):
    # A slash splits the path: no route matches, whatever lies behind it.
    response = requests.post(f"{served.url}/api/sources/../../etc/pause", timeout=10)
    assert response.status_code in (404, 405)
    assert all(s["state"] == "running" for s in requests.get(f"{served.url}/api/status", timeout=10).json()[
        "sources"])


def test_a_source_that_cannot_be_paused_answers_409(tmp_path, tiny_bundle):
    daemon = make_daemon(tmp_path, tiny_bundle)
    server = HttpServer("127.0.0.1", 0, DaemonController(daemon))
    port = server.start()
    try:
        # Built, never started: not running, so not pausable.
        response = requests.post(f"http://127.0.0.1:{port}/api/sources/line1/pause", timeout=10)
        assert response.status_code == 409
        assert "stopped" in response.json()["error"]
    finally:
        server.stop()
        server.join(5)
        daemon.journal.close()
        daemon.sources.close()


def test_reads_need_no_post_and_writes_need_post(served):
    assert requests.get(f"{served.url}/api/sources/line1/pause", timeout=10).status_code == 405
    assert requests.post(f"{served.url}/api/status", timeout=10).status_code == 405


# --- reload --------------------------------------------------------------------------------------

def test_reload_answers_the_controllers_result_and_500_with_its_message_on_failure(served, monkeypatch):
    calls: list[int] = []

    def good() -> tuple[bool, str]:
        calls.append(1)
        return True, "config and 1 model reloaded"

    monkeypatch.setattr(served.daemon, "reload", good, raising=False)
    response = requests.post(f"{served.url}/-/reload", timeout=10)
    assert response.status_code == 200
    assert response.json() == {"ok": True, "message": "config and 1 model reloaded"}
    assert calls == [1]

    def bad() -> tuple[bool, str]:
        raise ValueError("models.default: bundle input 64x64 does not match")

    monkeypatch.setattr(served.daemon, "reload", bad, raising=False)
    response = requests.post(f"{served.url}/-/reload", timeout=10)
    assert response.status_code == 500
    assert "bundle input 64x64 does not match" in response.json()["error"]

    @dataclass(frozen=True)
    class Result:  # the shape of monitor.daemon.ReloadResult
        ok: bool
        message: str

    monkeypatch.setattr(served.daemon, "reload", lambda: Result(False, "models.x: no such folder"), raising=False)
    response = requests.post(f"{served.url}/-/reload", timeout=10)
    assert response.status_code == 500 and response.json()["error"] == "models.x: no such folder"


def test_reload_without_a_daemon_reload_is_500_not_available(served, monkeypatch):
    if hasattr(served.daemon, "reload"):
        monkeypatch.delattr(type(served.daemon), "reload")
    response = requests.post(f"{served.url}/-/reload", timeout=10)
    assert response.status_code == 500
    assert response.json()["error"] == "reload not available"


# --- tokens --------------------------------------------------------------------------------------

def test_writes_beyond_loopback_need_the_bearer_token(served, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    server = extra_server(served, "0.0.0.0", token_file)
    url = f"http://127.0.0.1:{server.port}"
    try:
        assert requests.post(f"{url}/api/sources/line2/pause", timeout=10).status_code == 401
        wrong = {"Authorization": "Bearer not-the-token"}
        assert requests.post(f"{url}/api/sources/line2/pause", headers=wrong, timeout=10).status_code == 401
        basic = {"Authorization": f"Basic {TOKEN}"}
        assert requests.post(f"{url}/api/sources/line2/pause", headers=basic, timeout=10).status_code == 401
        assert requests.post(f"{url}/-/reload", timeout=10).status_code == 401
        assert served.daemon.sources.sources["line2"].state == "running"
        good = {"Authorization": f"Bearer {TOKEN}"}
        assert requests.post(f"{url}/api/sources/line2/pause", headers=good, timeout=10).status_code == 200
        assert requests.post(f"{url}/api/sources/line2/resume", headers=good, timeout=10).status_code == 200
        # Reads stay open: Prometheus scrapes without a token.
        assert requests.get(f"{url}/metrics", timeout=10).status_code == 200
        assert requests.get(f"{url}/api/status", timeout=10).status_code == 200
    finally:
        server.stop()
        server.join(5)


def test_writes_beyond_loopback_without_a_token_are_refused(served, monkeypatch):
    monkeypatch.delenv("MONITOR_API_TOKEN", raising=False)
    server = extra_server(served, "0.0.0.0")
    url = f"http://127.0.0.1:{server.port}"
    try:
        response = requests.post(f"{url}/api/sources/line2/pause", timeout=10)
        assert response.status_code == 403
        assert "MONITOR_API_TOKEN" in response.json()["error"]
        assert requests.get(f"{url}/-/healthy", timeout=10).status_code == 200
    finally:
        server.stop()
        server.join(5)


def test_the_token_may_come_from_the_environment_and_binds_loopback_too(served, monkeypatch):
    monkeypatch.setenv("MONITOR_API_TOKEN", TOKEN)
    server = extra_server(served, "127.0.0.1")
    url = f"http://127.0.0.1:{server.port}"
    try:
        assert requests.post(f"{url}/api/sources/line2/pause", timeout=10).status_code == 401
        good = {"Authorization": f"Bearer {TOKEN}"}
        assert requests.post(f"{url}/api/sources/line2/pause", headers=good, timeout=10).status_code == 200
        assert requests.post(f"{url}/api/sources/line2/resume", headers=good, timeout=10).status_code == 200
    finally:
        server.stop()
        server.join(5)


def test_loopback_without_a_token_lets_writes_through(served, monkeypatch):
    monkeypatch.delenv("MONITOR_API_TOKEN", raising=False)
    server = extra_server(served, "127.0.0.1")
    url = f"http://127.0.0.1:{server.port}"
    try:
        assert requests.post(f"{url}/api/sources/line2/pause", timeout=10).status_code == 200
        assert requests.post(f"{url}/api/sources/line2/resume", timeout=10).status_code == 200
    finally:
        server.stop()
        server.join(5)


def test_an_unreadable_or_empty_token_file_stops_the_start(served, tmp_path):
    from monitor.http.server import TokenError

    empty = tmp_path / "empty"
    empty.write_text("\n")
    for token_file in (tmp_path / "missing", empty):
        with pytest.raises(TokenError, match=str(token_file.name)):
            HttpServer("127.0.0.1", 0, DaemonController(served.daemon), token_file=token_file).start()
