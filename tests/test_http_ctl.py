"""`monitor ctl` (monitor.http.ctl.main) against the real HTTP server of a real in-process daemon."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from inprocess import Served, make_daemon, serve
from netutil import free_port

from monitor.http.control import DaemonController
from monitor.http.ctl import main
from monitor.http.server import HttpServer

pytestmark = pytest.mark.timeout(120)

TOKEN = "ctl-test-token"


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_bundle) -> Iterator[Served]:
    daemon = make_daemon(tmp_path_factory.mktemp("ctl-daemon"), tiny_bundle, [{"name": "line1", "folder": "inbox"}])
    yield from serve(daemon)


@pytest.fixture
def token_server(served, tmp_path) -> Iterator[tuple[str, Path]]:
    """A second server on the same daemon bound beyond loopback: writes need TOKEN. (url, token file)."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    server = HttpServer("0.0.0.0", 0, DaemonController(served.daemon), token_file=token_file)
    server.start()
    yield f"http://127.0.0.1:{server.port}", token_file
    server.stop()
    server.join(5)


def test_status_prints_each_source_with_its_state(served, capsys):
    assert main(["--url", served.url, "status"]) == 0
    out = capsys.readouterr().out
    assert "ready: yes" in out
    line = next(row for row in out.splitlines() if row.strip().startswith("line1"))
    assert "folder" in line and "running" in line and "model=default" in line


def test_status_json_is_the_apis_answer(served, capsys):
    assert main(["--url", served.url, "status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert [s["name"] for s in status["sources"]] == ["line1"]


def test_pause_then_resume_change_the_source_state(served, capsys):
    source = served.daemon.sources.sources["line1"]
    try:
        assert main(["--url", served.url, "pause", "line1"]) == 0
        assert capsys.readouterr().out.strip() == "line1: paused"
        assert source.state == "paused"
    finally:
        assert main(["--url", served.url, "resume", "line1"]) == 0
    assert capsys.readouterr().out.strip() == "line1: running"
    assert source.state == "running"


def test_an_unknown_source_is_exit_1_with_the_servers_reason(served, capsys):
    assert main(["--url", served.url, "pause", "nosuch"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "error: pause: HTTP 404: no source called 'nosuch'"


def test_a_daemon_that_is_not_there_is_exit_1_in_one_line(capsys):
    assert main(["--url", f"http://127.0.0.1:{free_port()}", "--timeout", "5", "status"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot reach the daemon at http://127.0.0.1:") and err.count("\n") == 1


def test_a_usage_error_is_exit_2(capsys):
    assert main(["pause"]) == 2  # no source name
    assert main(["frobnicate"]) == 2
    assert "usage:" in capsys.readouterr().err


def test_an_unreadable_token_file_is_exit_2(served, tmp_path, capsys):
    assert main(["--url", served.url, "--token-file", str(tmp_path / "missing"), "pause", "line1"]) == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'missing'}: cannot read the token")


def test_writes_beyond_loopback_go_through_with_the_token_file(served, token_server, capsys, monkeypatch):
    monkeypatch.delenv("MONITOR_API_TOKEN", raising=False)
    url, token_file = token_server
    assert main(["--url", url, "pause", "line1"]) == 1
    assert "HTTP 401" in capsys.readouterr().err
    try:
        assert main(["--url", url, "--token-file", str(token_file), "pause", "line1"]) == 0
        assert served.daemon.sources.sources["line1"].state == "paused"
    finally:
        assert main(["--url", url, "--token-file", str(token_file), "resume", "line1"]) == 0
    assert served.daemon.sources.sources["line1"].state == "running"


def test_the_token_may_come_from_the_environment(served, token_server, monkeypatch):
    url, _ = token_server
    monkeypatch.setenv("MONITOR_API_TOKEN", TOKEN)
    assert main(["--url", url, "pause", "line1"]) == 0
    assert main(["--url", url, "resume", "line1"]) == 0


def test_reload_reports_the_daemons_answer(served, capsys, monkeypatch):
    monkeypatch.setattr(served.daemon, "reload", lambda: (True, "nothing changed"), raising=False)
    assert main(["--url", served.url, "reload"]) == 0
    assert capsys.readouterr().out.strip() == "reloaded: nothing changed"
    monkeypatch.setattr(served.daemon, "reload", lambda: (False, "models.default: no such folder"), raising=False)
    assert main(["--url", served.url, "reload"]) == 1
    assert capsys.readouterr().err.strip() == "error: reload: HTTP 500: models.default: no such folder"


def test_the_url_may_come_from_the_daemons_config(served, tmp_path, tiny_bundle, capsys):
    config = tmp_path / "config.yaml"
    config.write_text(f"model: {tiny_bundle}\nsources: [{{name: line1, folder: inbox}}]\n"
                      f"metrics: {{host: 0.0.0.0, port: {served.server.port}}}\n")
    assert main(["--config", str(config), "status"]) == 0
    assert "line1" in capsys.readouterr().out


def test_a_bad_config_is_exit_2(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text("sources: 3\n")
    assert main(["--config", str(tmp_path / "config.yaml"), "status"]) == 2
    assert capsys.readouterr().err.startswith("error: ")
