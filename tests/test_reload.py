"""Reload (SIGHUP): the config and the bundles re-read and applied without a restart, nothing lost or doubled."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import pytest
from daemon_proc import DaemonProcess, NotifySocket, free_port, wait_until
from reload_util import Streamer, bundle_variant, drop_one, metric, rewrite_config, scrape

pytestmark = pytest.mark.slow


def base_config(bundle: Path, metrics_port: int | None = None, **extra) -> dict:
    config = {
        "model": str(bundle),
        "sources": [{"name": "line1", "folder": "inbox", "settle_ms": 20, "stable_s": 0.5}],
        "batching": {"max_batch": 8, "max_wait_ms": 20},
        "metrics": ({"host": "127.0.0.1", "port": metrics_port} if metrics_port else {"enabled": False}),
        "logging": {"level": "INFO"},
    }
    config.update(extra)
    return config


def reload_and_wait(proc: DaemonProcess, outcome: str = "reload_done", timeout: float = 90) -> None:
    """SIGHUP, then wait for the `outcome` line that this reload adds to the log."""
    before = proc.log().count(outcome)
    proc.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: proc.log().count(outcome) > before or proc.proc.poll() is not None, timeout)
    assert proc.proc.poll() is None, proc.log()


def names_of(verdicts: list[dict]) -> list[str]:
    return [Path(v["path"]).name for v in verdicts]


def test_sighup_while_files_stream_in_gives_every_file_exactly_one_verdict(tmp_path, tiny_bundle, subprocess_env):
    config = base_config(tiny_bundle)
    proc = DaemonProcess(tmp_path, config, subprocess_env).start()
    try:
        streamer = Streamer(tmp_path / "inbox", 60, "s", interval=0.03).start()
        for window in (500, 600, 700):  # a threshold change each time: the pipeline is swapped
            time.sleep(0.3)
            rewrite_config(proc.config_path, dict(config, threshold={"window": window}))
            reload_and_wait(proc)
        streamer.join()
        proc.wait_for_verdicts(60, timeout=60)
        time.sleep(1.0)  # give a wrong second verdict time to show
        names = names_of(proc.verdicts())
        assert sorted(names) == sorted(streamer.names)  # every file once: none lost, none twice
        assert "reload_failed" not in proc.log()
        assert proc.terminate() == 0
    finally:
        proc.kill()


def test_a_model_swap_under_load_names_the_model_of_every_verdict(tmp_path, tiny_bundle, subprocess_env):
    # Model B is model A with twice the margin: a verdict's threshold tells which one judged it.
    b = bundle_variant(tiny_bundle, tmp_path / "bundle-b", margin=2.0)
    config = base_config(tiny_bundle)
    proc = DaemonProcess(tmp_path / "d", config, subprocess_env).start()
    try:
        streamer = Streamer(proc.workdir / "inbox", 80, "m", interval=0.03).start()
        wait_until(lambda: len(proc.verdicts()) >= 10, 60)
        rewrite_config(proc.config_path, dict(config, model=str(b)))
        reload_and_wait(proc)
        # Files after the reload as well: under load the swap can land after the first stream has ended (its 80
        # files take 2.4 s, loading and warming B can take longer), and then no verdict would be B's.
        after = Streamer(proc.workdir / "inbox", 10, "after", interval=0.03, seed=1).start()
        streamer.join()
        after.join()
        verdicts = proc.wait_for_verdicts(90, timeout=60)
        time.sleep(1.0)
        verdicts = proc.verdicts()
        assert sorted(names_of(verdicts)) == sorted(streamer.names + after.names)  # none lost, none twice
        ids = [v["model_id"] for v in verdicts]
        assert all(v["model"] == "default" for v in verdicts)
        first, last = ids[0], ids[-1]
        assert first != last and set(ids) == {first, last}
        swap = ids.index(last)
        assert ids[swap:] == [last] * (len(ids) - swap)  # after the swap, only the new model
        # The swapped source's threshold restarted from B's calibration: twice A's margin.
        a_thresholds = [v["threshold"] for v in verdicts[:swap]]
        b_thresholds = [v["threshold"] for v in verdicts[swap:]]
        assert min(b_thresholds) > 1.5 * max(a_thresholds)
        assert "threshold_restarted source=line1" in proc.log()
    finally:
        proc.kill()


def test_a_source_added_and_removed_by_reload(tmp_path, tiny_bundle, subprocess_env):
    config = base_config(tiny_bundle)
    proc = DaemonProcess(tmp_path, config, subprocess_env).start()
    try:
        second = {"name": "line2", "folder": "inbox2", "settle_ms": 20, "stable_s": 0.5}
        rewrite_config(proc.config_path, dict(config, sources=config["sources"] + [second]))
        reload_and_wait(proc)
        assert "sources_added=line2" in proc.log()
        drop_one(tmp_path / "inbox2", "added")
        drop_one(tmp_path / "inbox", "kept")
        verdicts = proc.wait_for_verdicts(2)
        assert {(v["source"], Path(v["path"]).name) for v in verdicts} == {
            ("line2", "added0000.png"), ("line1", "kept0000.png")}

        rewrite_config(proc.config_path, dict(config, sources=[second]))
        reload_and_wait(proc)
        assert "sources_removed=line1" in proc.log()
        drop_one(tmp_path / "inbox", "after_removal")
        drop_one(tmp_path / "inbox2", "still_watched")
        wait_until(lambda: any("still_watched" in v["path"] for v in proc.verdicts()), 30)
        time.sleep(1.0)  # the removed source's file would have been scored by now
        assert not any("after_removal" in v["path"] for v in proc.verdicts())
        assert proc.terminate() == 0
    finally:
        proc.kill()


def test_a_broken_config_or_bundle_keeps_the_old_one_running(tmp_path, tiny_bundle, subprocess_env):
    broken = bundle_variant(tiny_bundle, tmp_path / "broken", corrupt_model=True)
    port = free_port()
    config = base_config(tiny_bundle, metrics_port=port)
    proc = DaemonProcess(tmp_path / "d", config, subprocess_env).start()
    inbox = proc.workdir / "inbox"
    (proc.workdir / "afile").write_text("not a folder\n")
    try:
        assert metric(scrape(port), "anomaly_monitor_config_last_reload_successful") == 1
        started_at = metric(scrape(port), "anomaly_monitor_config_last_reload_success_timestamp_seconds")
        model_id = None
        for n, (text, line) in enumerate((
                ("sources: [{name: line1, folder: inbox}\n", "error="),  # not YAML
                ({**config, "model": str(broken)}, "broken/model.keras: cannot load the Keras model"),
                ({**config, "threshold": {"window": 5}}, "threshold.window"),
                # A watched folder that is a file: refused before line1 is taken down, so line1 goes on.
                ({**config, "sources": [{**config["sources"][0], "folder": "afile"}]},
                 "sources[0].folder: cannot watch"),
        )):
            if isinstance(text, str):
                proc.config_path.write_text(text)
            else:
                rewrite_config(proc.config_path, text)
            reload_and_wait(proc, "reload_failed")
            failed = [x for x in proc.log().splitlines() if "reload_failed" in x][-1]
            assert f"file={proc.config_path}" in failed and line in failed, failed
            assert metric(scrape(port), "anomaly_monitor_config_last_reload_successful") == 0
            # The old config and model go on scoring.
            drop_one(inbox, f"after_failure{n}", seed=n)
            verdicts = proc.wait_for_verdicts(n + 1)
            assert verdicts[-1]["path"].endswith(f"after_failure{n}0000.png")
            model_id = model_id or verdicts[-1]["model_id"]
            assert verdicts[-1]["model_id"] == model_id
        rewrite_config(proc.config_path, config)
        reload_and_wait(proc)
        text = scrape(port)
        assert metric(text, "anomaly_monitor_config_last_reload_successful") == 1
        assert metric(text, "anomaly_monitor_config_last_reload_success_timestamp_seconds") > started_at
        assert metric(text, "anomaly_monitor_config_reloads_total", outcome="failure") == 4
        assert proc.terminate() == 0
    finally:
        proc.kill()


def test_reload_speaks_the_notify_protocol_reloading_then_ready(tmp_path, tiny_bundle, subprocess_env):
    notify = NotifySocket(tmp_path / "notify.sock")
    env = dict(subprocess_env, NOTIFY_SOCKET=str(notify.path))
    proc = DaemonProcess(tmp_path / "d", base_config(tiny_bundle), env)
    messages, drain = notify.messages, notify.drain
    try:
        proc.start()
        wait_until(lambda: any(m.startswith("READY=1") for m in drain()), 30)
        messages.clear()
        before_us = time.monotonic_ns() // 1000
        reload_and_wait(proc)
        after_us = time.monotonic_ns() // 1000
        wait_until(lambda: any(m.startswith("READY=1") for m in drain()), 30)
    finally:
        proc.kill()
        notify.close()
    reloading = [i for i, m in enumerate(messages) if m.startswith("RELOADING=1")]
    ready = [i for i, m in enumerate(messages) if m.startswith("READY=1")]
    assert len(reloading) == 1 and len(ready) == 1 and reloading[0] < ready[0], messages
    fields = dict(line.split("=", 1) for line in messages[reloading[0]].splitlines())
    assert before_us <= int(fields["MONOTONIC_USEC"]) <= after_us  # CLOCK_MONOTONIC, as systemd reads it
    assert "STATUS=scoring 1 sources" in messages[ready[0]]


def inotify_instances(pid: int) -> int:
    """inotify instances process `pid` holds (each folder source has its own)."""
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            count += os.readlink(fd) == "anon_inode:inotify"
    return count


def test_folder_sources_replaced_by_reloads_leave_no_inotify_instance_behind(tmp_path, tiny_bundle, subprocess_env):
    # The kernel allows a user 128 instances (fs.inotify.max_user_instances): a reload that leaked one per
    # replaced source would stop a long-running daemon from watching anything after enough reloads.
    config = base_config(tiny_bundle)
    proc = DaemonProcess(tmp_path, config, subprocess_env).start()
    try:
        assert inotify_instances(proc.proc.pid) == 1
        for settle_ms in (21, 22, 23, 24):  # each a changed source: stopped, joined, built anew
            source = dict(config["sources"][0], settle_ms=settle_ms)
            rewrite_config(proc.config_path, dict(config, sources=[source]))
            reload_and_wait(proc)
        assert proc.log().count("sources_replaced=line1") == 4
        assert inotify_instances(proc.proc.pid) == 1
        drop_one(tmp_path / "inbox", "after_reloads")  # and the last one watches
        assert names_of(proc.wait_for_verdicts(1)) == ["after_reloads0000.png"]
        assert proc.terminate() == 0
    finally:
        proc.kill()
