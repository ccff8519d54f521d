"""The shared thread lifecycle: a name, a stop event, a bounded join, liveness."""

import threading

from monitor.threads import StoppableThread, join_all


def _until_stopped(stop: threading.Event) -> None:
    stop.wait()


def test_a_thread_runs_under_its_name_until_stopped():
    names = []
    thread = StoppableThread("worker-a", lambda stop: (names.append(threading.current_thread().name),
                                                       stop.wait()))
    thread.start()
    assert thread.alive
    thread.stop()
    assert thread.join(5)
    assert not thread.alive and names == ["worker-a"]


def test_join_gives_up_after_its_timeout_and_says_so():
    release = threading.Event()
    thread = StoppableThread("stubborn", lambda _stop: release.wait())
    thread.start()
    thread.stop()
    assert thread.join(0.05) is False
    assert thread.alive
    release.set()
    assert thread.join(5)


def test_a_thread_never_started_joins_at_once():
    thread = StoppableThread("idle", _until_stopped)
    assert thread.join(0) and not thread.started and not thread.alive


def test_join_all_names_the_threads_still_running():
    release = threading.Event()
    quick = StoppableThread("quick", _until_stopped)
    slow = StoppableThread("slow", lambda _stop: release.wait())
    for t in (quick, slow):
        t.start()
        t.stop()
    assert join_all([quick, slow], 0.2) == ["slow"]
    release.set()
    assert join_all([slow], 5) == []


def test_a_crashing_target_is_logged_and_leaves_the_thread_not_alive(caplog):
    def crash(_stop: threading.Event) -> None:
        raise RuntimeError("boom")

    thread = StoppableThread("crasher", crash)
    thread.start()
    assert thread.join(5) and not thread.alive
    assert any("thread_crashed thread=crasher" in r.getMessage() for r in caplog.records)
