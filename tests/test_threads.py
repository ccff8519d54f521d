"""The shared thread lifecycle: a name, a stop event, a bounded join, liveness."""

import threading

import pytest

from monitor.threads import Handoff, StoppableThread, join_all


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


def test_a_handoff_runs_each_job_on_its_own_named_thread():
    handoff = Handoff("commit-test")
    handoff.start()
    ran = []
    handoff.submit(lambda: ran.append(threading.current_thread().name))
    handoff.wait()
    handoff.stop()
    assert handoff.join(5) and ran == ["commit-test"]


def test_a_handoff_takes_the_next_job_only_once_the_one_before_has_ended():
    handoff = Handoff("one-in-flight")
    handoff.start()
    release, order = threading.Event(), []
    handoff.submit(lambda: (release.wait(5), order.append("first")))
    submitter = threading.Thread(target=lambda: (handoff.submit(lambda: order.append("second")),
                                                 order.append("handed")))
    submitter.start()
    submitter.join(0.3)
    assert submitter.is_alive() and order == []  # the second job waits for the first
    release.set()
    submitter.join(5)
    handoff.wait()
    assert order[0] == "first" and sorted(order[1:]) == ["handed", "second"]
    handoff.stop()
    assert handoff.join(5)


def test_a_failed_job_is_raised_to_the_submitter_at_its_next_handoff_once():
    handoff = Handoff("failing")
    handoff.start()
    handoff.submit(lambda: 1 / 0)
    assert handoff.idle(5)  # idle keeps the error for the submitter
    with pytest.raises(ZeroDivisionError):
        handoff.submit(lambda: None)
    handoff.wait()  # raised once
    handoff.stop()
    assert handoff.join(5)


def test_stopping_a_handoff_still_runs_the_job_in_hand():
    handoff = Handoff("draining")
    handoff.start()
    release, ran = threading.Event(), []
    handoff.submit(lambda: (release.wait(5), ran.append(True)))
    handoff.stop()
    release.set()
    assert handoff.join(5) and ran == [True]
