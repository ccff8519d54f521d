"""The scorer hands each batch's commit (journal fsync, ledger, alerts, counters) to the commit thread and scores
the next batch meanwhile: the model never waits for the disk, and one batch at most waits for its commit."""

from __future__ import annotations

import os
import threading
import time

import cv2
import numpy as np
import pytest
import yaml
from netutil import wait_until

from monitor.config import load_config
from monitor.daemon import Daemon
from monitor.journal import read_journal

pytestmark = pytest.mark.timeout(120)


def _drop(inbox, name: str, seed: int) -> None:  # noqa: ANN001
    """A PNG renamed into the watched folder (whole when it appears: read at once)."""
    image = np.random.default_rng(seed).integers(0, 256, (32, 32), dtype=np.uint8)
    tmp = inbox.parent / f".{name}"
    cv2.imwrite(str(tmp), image)
    os.rename(tmp, inbox / name)


@pytest.fixture
def gated(tmp_path, tiny_bundle):  # noqa: ANN001
    """A running one-folder daemon whose journal fsync waits for `gate` (a slow disk), and its scorer's calls."""
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump({"model": str(tiny_bundle), "metrics": {"enabled": False},
                                           "sources": [{"name": "line", "folder": "inbox", "settle_ms": 20}]}))
    daemon = Daemon(load_config(config_path), config_path=config_path)
    gate, calls = threading.Event(), []
    real_sync, scorer = daemon.journal.sync, daemon.pipeline.models["default"].scorer
    real_score = scorer.score

    def slow_sync() -> None:
        assert gate.wait(30)
        real_sync()

    def counted_score(images):  # noqa: ANN001, ANN202
        calls.append(len(images))
        return real_score(images)

    daemon.journal.sync = slow_sync
    scorer.score = counted_score
    daemon.start()
    waiter = threading.Thread(target=daemon.wait, name="daemon-wait")
    waiter.start()
    inbox = tmp_path / "inbox"
    wait_until(lambda: inbox.is_dir(), timeout=10)
    yield daemon, inbox, gate, calls
    gate.set()
    daemon.stop()
    waiter.join(30)


def _verdicts(daemon) -> list[str]:  # noqa: ANN001
    return [os.path.basename(r["path"]) for r in read_journal(daemon.config.output.journal) if "score" in r]


def test_the_next_batch_is_scored_while_the_last_ones_journal_is_still_syncing(gated) -> None:  # noqa: ANN001
    daemon, inbox, gate, calls = gated
    _drop(inbox, "a.png", 1)
    wait_until(lambda: len(calls) == 1, timeout=20)
    _drop(inbox, "b.png", 2)
    wait_until(lambda: len(calls) == 2, timeout=20)  # scored though a.png's commit still waits on the disk
    assert _verdicts(daemon) == []
    gate.set()
    wait_until(lambda: _verdicts(daemon) == ["a.png", "b.png"], timeout=20)


def test_a_file_is_acknowledged_only_once_its_verdict_is_durable(gated) -> None:  # noqa: ANN001
    daemon, inbox, gate, calls = gated
    _drop(inbox, "a.png", 1)
    wait_until(lambda: len(calls) == 1, timeout=20)
    time.sleep(0.3)
    ledger = daemon.sources.sources["line"].ledger
    assert len(ledger) == 0  # scored, not yet durable: not in the ledger
    gate.set()
    wait_until(lambda: len(ledger) == 1, timeout=20)
    assert _verdicts(daemon) == ["a.png"]


def test_one_batch_at_most_waits_for_its_commit_while_the_disk_is_slow(gated) -> None:  # noqa: ANN001
    daemon, inbox, gate, calls = gated
    _drop(inbox, "a.png", 1)
    wait_until(lambda: len(calls) == 1, timeout=20)
    _drop(inbox, "b.png", 2)
    wait_until(lambda: len(calls) == 2, timeout=20)
    _drop(inbox, "c.png", 3)
    time.sleep(1.0)
    assert len(calls) == 2  # b.png waits for a.png's commit: c.png is not taken meanwhile (back-pressure)
    gate.set()
    wait_until(lambda: _verdicts(daemon) == ["a.png", "b.png", "c.png"], timeout=20)


def test_a_reload_waits_for_the_commit_in_flight(gated) -> None:  # noqa: ANN001
    daemon, inbox, gate, calls = gated
    _drop(inbox, "a.png", 1)
    wait_until(lambda: len(calls) == 1, timeout=20)
    results = []
    reloader = threading.Thread(target=lambda: results.append(daemon.reload()), name="reloader")
    reloader.start()
    reloader.join(1.0)
    assert reloader.is_alive()  # the swap waits: it could stop the alert dispatcher this commit releases to
    gate.set()
    reloader.join(30)
    assert results and results[0].ok
    assert _verdicts(daemon) == ["a.png"]
