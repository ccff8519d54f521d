"""A daemon whose folder thread dies stops with exit code 1, so systemd restarts it."""

import threading

from monitor.config import parse_config
from monitor.daemon import Daemon
from monitor.model.bundle import load_bundle


def test_a_dead_folder_thread_ends_the_daemon_with_exit_code_1(tmp_path, tiny_bundle, monkeypatch):
    config = parse_config({"model": str(tiny_bundle), "sources": [{"name": "a", "folder": "inbox"}],
                           "metrics": {"enabled": False}}, tmp_path / "config.yaml")
    daemon = Daemon(config, load_bundle(tiny_bundle))

    # A fault no real component shows on demand: the settle loop itself crashes.
    def broken(*_args):
        raise RuntimeError("injected fault")

    monkeypatch.setattr("monitor.sources.folder.FolderSource._due_at", broken)
    daemon.start()
    (tmp_path / "inbox" / "x.png").write_bytes(b"\x89PNG")
    result = []
    waiter = threading.Thread(target=lambda: result.append(daemon.wait()), name="waiter")
    waiter.start()
    waiter.join(30)
    if waiter.is_alive():
        daemon.stop()
        waiter.join(30)
    assert result == [1]
