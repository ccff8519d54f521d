"""The daemon keeps the garbage collector off its long-lived objects, and a reload still frees what it replaced."""

from __future__ import annotations

import gc
import threading
import weakref

import pytest
import yaml
from netutil import wait_until
from reload_util import bundle_variant

from monitor import heap
from monitor.config import load_config
from monitor.daemon import Daemon

pytestmark = pytest.mark.timeout(120)


def _config(path, bundle) -> None:  # noqa: ANN001
    path.write_text(yaml.safe_dump({
        "model": str(bundle),
        "sources": [{"name": "line1", "folder": "inbox", "settle_ms": 20}],
        "metrics": {"enabled": False},
        "logging": {"summary_interval_s": 0},
    }))


@pytest.fixture
def running(tmp_path, tiny_bundle):  # noqa: ANN001
    config_path = tmp_path / "config.yaml"
    _config(config_path, tiny_bundle)
    daemon = Daemon(load_config(config_path), config_path=config_path)
    daemon.start()
    waiter = threading.Thread(target=daemon.wait, name="daemon-wait")
    waiter.start()
    yield daemon, config_path
    daemon.stop()
    waiter.join(30)


def test_freeze_exempts_the_objects_there_now_and_thaw_gives_them_back() -> None:
    heap.freeze("test")
    try:
        assert gc.get_freeze_count() > 0
    finally:
        heap.thaw()
    assert gc.get_freeze_count() == 0


def test_a_running_daemon_has_its_heap_frozen_and_thaws_it_when_it_stops(running) -> None:  # noqa: ANN001
    daemon, _ = running
    assert gc.get_freeze_count() > 0
    daemon.stop()
    wait_until(lambda: not daemon._scorer.alive, timeout=20)
    wait_until(lambda: gc.get_freeze_count() == 0, timeout=20)


def test_a_model_replaced_by_a_reload_is_freed_and_the_heap_frozen_again(running, tmp_path) -> None:  # noqa: ANN001
    daemon, config_path = running
    old_model = weakref.ref(daemon.bundle.model)
    _config(config_path, bundle_variant(daemon.bundle.path, tmp_path / "other_bundle", margin=1.5))
    result = daemon.reload()
    assert result.ok and "models_loaded=default" in result.message, result.message
    # Keras models hold reference cycles: only the collector frees one, and it never looks at a frozen object.
    wait_until(lambda: old_model() is None, timeout=20)
    wait_until(lambda: gc.get_freeze_count() > 0, timeout=20)
