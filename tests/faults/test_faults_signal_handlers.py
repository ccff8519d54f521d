"""Signals reach the daemon's main loop without deadlocking it: Python runs a handler on the main thread, in the
middle of whatever the loop was doing, so the handler must not wait for a lock that the loop may hold."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import pytest

from monitor import daemon as daemon_module
from monitor.config import parse_config
from monitor.model.bundle import load_bundle

HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, *daemon_module.IGNORED_SIGNALS)


@pytest.fixture
def restore_handlers():
    before = {sig: signal.getsignal(sig) for sig in HANDLED}
    yield
    for sig, handler in before.items():
        signal.signal(sig, handler)


def _send_when_started(journal, signals: list[tuple[float, int]]) -> threading.Thread:
    """A thread that waits for `daemon_start` in the journal, then sends each signal to itself after its delay.

    Sent to a thread other than the main one, the signal is only noted there; the main thread runs the handler
    when it next wakes from its timed wait, which is where a handler that sets the loop's Event deadlocked.
    """
    def send() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (journal.exists() and "daemon_start" in journal.read_text()):
            time.sleep(0.02)
        for delay, sig in signals:
            time.sleep(delay)
            os.kill(os.getpid(), sig)

    thread = threading.Thread(target=send, name="signal-sender", daemon=True)
    thread.start()
    return thread


@pytest.mark.timeout(120)
@pytest.mark.parametrize("delay", [0.0, 0.07, 0.19])
def test_sigterm_during_the_main_loop_ends_the_daemon_with_exit_code_0(tmp_path, tiny_bundle, restore_handlers,
                                                                        delay):
    config = parse_config({"model": str(tiny_bundle), "sources": [{"name": "a", "folder": "inbox"}],
                           "metrics": {"enabled": False}}, tmp_path / "config.yaml")
    sender = _send_when_started(config.output.journal, [(delay, signal.SIGTERM)])
    assert daemon_module.run(config, load_bundle(tiny_bundle)) == 0
    sender.join(5)
    assert "daemon_stop" in config.output.journal.read_text().splitlines()[-1]


@pytest.mark.timeout(120)
def test_sighup_reloads_on_the_main_loop_and_a_later_sigterm_still_stops_it(tmp_path, tiny_bundle,
                                                                             restore_handlers, caplog):
    path = tmp_path / "config.yaml"
    path.write_text(f"model: {tiny_bundle}\nsources: [{{name: a, folder: inbox}}]\nmetrics: {{enabled: false}}\n")
    config = daemon_module.load_config(path)
    sender = _send_when_started(config.output.journal, [(0.05, signal.SIGHUP), (0.3, signal.SIGHUP),
                                                        (1.0, signal.SIGTERM)])
    with caplog.at_level("INFO", logger="monitor.daemon"):
        assert daemon_module.run(config, load_bundle(tiny_bundle), config_path=path) == 0
    sender.join(5)
    assert [r.message.split()[0] for r in caplog.records].count("reload_done") == 2


@pytest.mark.timeout(60)
def test_sigterm_that_lands_inside_the_loops_blocking_wait_still_stops_it(tmp_path, tiny_bundle, restore_handlers):
    """The hang seen in the field: SIGTERM noticed while the main thread held the lock of the wait it was entering.

    A profile hook sends the signal at the moment the loop enters its first blocking wait (a Condition's wait or
    a C-level get/acquire), so the handler runs right there, every time, instead of by chance.
    """
    config = parse_config({"model": str(tiny_bundle), "sources": [{"name": "a", "folder": "inbox"}],
                           "metrics": {"enabled": False}}, tmp_path / "config.yaml")
    daemon = daemon_module.Daemon(config, load_bundle(tiny_bundle))
    signal.signal(signal.SIGTERM, lambda _signum, _frame: daemon.stop())
    fired: list[str] = []

    def hook(frame, event, arg) -> None:
        if fired:
            return
        blocking = ((event == "call" and frame.f_code is threading.Condition.wait.__code__)
                    or (event == "c_call" and getattr(arg, "__name__", "") in ("get", "acquire")))
        if blocking:
            fired.append(event)
            os.kill(os.getpid(), signal.SIGTERM)

    daemon.start()
    sys.setprofile(hook)
    try:
        code = daemon.wait()
    finally:
        sys.setprofile(None)
    assert fired and code == 0
