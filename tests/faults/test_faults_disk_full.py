"""Disk full on an output (issue 11): the daemon holds its work, says so, retries, and recovers without loss.

Each output that matters lives on a real, small tmpfs that the test fills with a filler file: the kernel then
refuses writes with ENOSPC (and accepts part of a write that still fits in a page: the torn-line case) as it
does on a full disk. Mounting needs root; elsewhere these tests skip.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from imagegen import anomalous_image, encode, normal_image, write_images

from monitor import metrics
from monitor.config import parse_config
from monitor.daemon import Daemon, StartupError, open_journal
from monitor.files import LineFile, is_temp_name
from monitor.journal import Journal, read_journal
from monitor.model.bundle import load_bundle
from monitor.outputs import OutputGuard, OutputStopped
from monitor.records import FileKey
from monitor.sources.ledger import Ledger

REPO = Path(__file__).resolve().parents[2]
SOURCE = "line1"


# --- tmpfs -----------------------------------------------------------------------------------------------
@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """mount("name") -> a fresh 256 KiB tmpfs at tmp_path/name; all are unmounted at teardown."""
    mounted: list[Path] = []

    def mount(name: str, size: str = "256k") -> Path:
        where = tmp_path / name
        where.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root, not an unprivileged container): "
                        f"{result.stderr.strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in reversed(mounted):
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill(folder: Path, leave: int = 0) -> Path:
    """Fill the file system of `folder` with one filler file, then give `leave` bytes (whole pages) back."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    block = b"\0" * 65536
    try:
        while True:
            os.write(fd, block)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    if leave:
        os.truncate(filler, max(0, filler.stat().st_size - leave))
    return filler


# --- helpers ---------------------------------------------------------------------------------------------
def gauge(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(f"anomaly_monitor_{name}", labels) or 0.0


def wait_until(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def make_daemon(tmp_path: Path, bundle: Path, **output: str) -> Daemon:
    outputs = {"journal": str(tmp_path / "journal.jsonl"), "evidence": str(tmp_path / "evidence"),
               "quarantine": str(tmp_path / "quarantine"), "state": str(tmp_path / "state")}
    outputs.update(output)
    config = parse_config({
        "model": str(bundle),
        "sources": [{"name": SOURCE, "folder": str(tmp_path / "inbox"), "settle_ms": 20, "stable_s": 0.3,
                     "incomplete_timeout_s": 0.3}],
        "batching": {"max_batch": 4, "max_wait_ms": 20, "queue_size": 4},
        "output": outputs,
        "metrics": {"enabled": False},
    }, tmp_path / "config.yaml")
    daemon = Daemon(config, load_bundle(bundle))
    # Short backoff: the mechanism is the same, the test does not wait 10 s for the next try.
    daemon.outputs.first_delay_s, daemon.outputs.max_delay_s = 0.1, 0.4
    return daemon


class Running:
    """A started daemon with `wait()` in a thread, as the main thread runs it."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.code: list[int] = []
        daemon.start()
        self.waiter = threading.Thread(target=lambda: self.code.append(daemon.wait()), name="waiter")
        self.waiter.start()

    def stop(self, timeout: float = 20) -> float:
        """Stop and join; returns how long the stop took."""
        start = time.monotonic()
        self.daemon.stop()
        self.waiter.join(timeout)
        assert not self.waiter.is_alive(), "the daemon did not stop"
        assert self.code == [0]
        return time.monotonic() - start


@pytest.fixture
def start(tmpfs) -> Iterator[Callable[[Daemon], Running]]:
    """start(daemon) -> Running; whatever a failed test left running is stopped before the unmount."""
    started: list[Running] = []

    def _start(daemon: Daemon) -> Running:
        started.append(Running(daemon))
        return started[-1]

    yield _start
    for running in started:
        if running.waiter.is_alive():
            running.daemon.stop()
            running.waiter.join(30)


def drop(tmp_path: Path, images: list[np.ndarray], prefix: str) -> list[Path]:
    """Write images elsewhere, then rename them into the inbox (whole files appear at once)."""
    staged = write_images(tmp_path / "staging" / prefix, images, prefix=prefix)
    inbox = tmp_path / "inbox"
    inbox.mkdir(exist_ok=True)
    return [p.rename(inbox / p.name) for p in staged]


def verdicts_per_file(journal: Path) -> Counter[str]:
    """How many verdict lines each file name has (read_journal raises on a line that is not JSON)."""
    return Counter(r["file"]["name"] for r in read_journal(journal) if "file" in r)


def ledger_names(state: Path) -> set[str]:
    """The file names in the folder source's ledger file (each line is flushed when it is added)."""
    path = state / f"ledger-{SOURCE}.jsonl"
    return {json.loads(line)["p"] for line in path.read_text().splitlines() if line} if path.exists() else set()


def leftovers(*folders: Path) -> list[Path]:
    """Temporary files and zero-byte files under `folders` (neither may survive a refused write)."""
    found = []
    for folder in folders:
        for dirpath, _dirs, files in os.walk(folder):
            for name in files:
                path = Path(dirpath) / name
                if is_temp_name(name) or (name != "filler" and path.stat().st_size == 0):
                    found.append(path)
    return found


# --- the journal --------------------------------------------------------------------------------------------
def test_a_full_journal_disk_holds_the_batch_and_writes_every_verdict_once_after_space_returns(
        tmp_path, tiny_bundle, tmpfs, start):
    jdir = tmpfs("journal")
    daemon = make_daemon(tmp_path, tiny_bundle, journal=str(jdir / "journal.jsonl"))
    run = start(daemon)
    filler = fill(jdir)  # the journal's last page still has room: the first lines fit, one is cut at the page end
    rng = np.random.default_rng(11)
    files = drop(tmp_path, [normal_image(rng) for _ in range(30)], "n")

    wait_until(lambda: gauge("output_blocked", output="journal") == 1, 20, "output_blocked{journal} = 1")
    time.sleep(1.0)  # several retries while blocked
    assert gauge("output_errors_total", output="journal", errno="ENOSPC") >= 2
    assert all(p.exists() for p in files)  # nothing moved, nothing dropped
    written = verdicts_per_file(jdir / "journal.jsonl")  # whole lines only, even after a write cut mid-line
    assert len(written) < len(files)
    # Acknowledged (in the ledger) only what is in the journal: the rest stays in flight, held.
    source = daemon.sources.sources[SOURCE]
    assert ledger_names(tmp_path / "state") <= set(written)
    assert daemon.queue.capacity == len(daemon.queue)  # back-pressure: the queue is full, folders wait

    filler.unlink()
    wait_until(lambda: len(verdicts_per_file(jdir / "journal.jsonl")) == len(files), 20, "every verdict")
    wait_until(lambda: len(source.ledger) == len(files), 5, "every file acknowledged")
    assert gauge("output_blocked", output="journal") == 0
    run.stop()
    counts = verdicts_per_file(jdir / "journal.jsonl")
    assert set(counts) == {p.name for p in files} and set(counts.values()) == {1}
    assert ledger_names(tmp_path / "state") == {p.name for p in files}
    assert leftovers(jdir, tmp_path / "evidence", tmp_path / "state") == []


def test_stop_while_the_journal_is_blocked_ends_promptly_and_the_next_start_scores_the_rest_once(
        tmp_path, tiny_bundle, tmpfs, start):
    jdir = tmpfs("journal")
    daemon = make_daemon(tmp_path, tiny_bundle, journal=str(jdir / "journal.jsonl"))
    run = start(daemon)
    filler = fill(jdir)
    rng = np.random.default_rng(12)
    files = drop(tmp_path, [normal_image(rng) for _ in range(30)], "s")
    wait_until(lambda: gauge("output_blocked", output="journal") == 1, 20, "output_blocked{journal} = 1")

    assert run.stop() < 5  # bounded: the held batch is given up, not retried for ever
    assert all(p.exists() for p in files)
    assert ledger_names(tmp_path / "state") <= set(verdicts_per_file(jdir / "journal.jsonl"))

    filler.unlink()
    again = start(make_daemon(tmp_path, tiny_bundle, journal=str(jdir / "journal.jsonl")))
    wait_until(lambda: len(verdicts_per_file(jdir / "journal.jsonl")) == len(files), 20, "every verdict")
    again.stop()
    counts = verdicts_per_file(jdir / "journal.jsonl")
    assert set(counts) == {p.name for p in files} and set(counts.values()) == {1}


def test_a_line_cut_by_a_full_disk_is_removed_and_written_whole_later(tmpfs):
    folder = tmpfs("lines")
    lines = LineFile(folder / "l.jsonl")
    lines.write("first\n")
    filler = fill(folder)
    long_line = "x" * 10_000 + "\n"  # more than the page the file still has room in: a partial write, then ENOSPC
    with pytest.raises(OSError) as refused:
        lines.write(long_line)
    assert refused.value.errno == errno.ENOSPC
    assert (folder / "l.jsonl").read_text() == "first\n"
    filler.unlink()
    lines.write(long_line)
    lines.close()
    assert (folder / "l.jsonl").read_text() == "first\n" + long_line


def test_journal_records_refused_by_a_full_disk_are_each_written_once_by_a_later_sync(tmpfs):
    folder = tmpfs("journal")
    journal = Journal(folder / "j.jsonl")
    journal.append({"i": 0})
    filler = fill(folder)
    journal.enqueue([{"i": i, "pad": "y" * 300} for i in range(1, 40)])
    with pytest.raises(OSError):
        journal.sync()
    with pytest.raises(OSError):
        journal.append({"i": 40})  # refused too: it waits behind the others
    assert journal.queued > 0
    filler.unlink()
    journal.sync()
    journal.close()
    assert [r["i"] for r in read_journal(folder / "j.jsonl")] == list(range(41))


# --- quarantine -----------------------------------------------------------------------------------------------
def test_a_full_quarantine_disk_leaves_originals_in_place_and_quarantines_them_whole_later(
        tmp_path, tiny_bundle, tmpfs, start):
    qdir = tmpfs("quarantine")  # another file system than the inbox: a copy, not a rename
    daemon = make_daemon(tmp_path, tiny_bundle, quarantine=str(qdir))
    run = start(daemon)
    # One page left: the reason file fits, the copy does not, so each try must undo the reason file too.
    filler = fill(qdir, leave=4096)
    rng = np.random.default_rng(13)
    bad = []
    for i in range(3):
        data = encode(normal_image(rng))
        (tmp_path / "staging").mkdir(exist_ok=True)
        staged = tmp_path / "staging" / f"cut{i}.png"
        staged.write_bytes(data[: len(data) // 2] + b"\0" * 3000)  # no end marker: truncated
        (tmp_path / "inbox").mkdir(exist_ok=True)
        bad.append(staged.rename(tmp_path / "inbox" / staged.name))
    originals = {p.name: p.read_bytes() for p in bad}

    wait_until(lambda: gauge("output_blocked", output="quarantine") == 1, 20, "output_blocked{quarantine} = 1")
    time.sleep(1.0)
    assert gauge("output_errors_total", output="quarantine", errno="ENOSPC") >= 2
    assert all(p.exists() for p in bad)
    assert sorted(p.name for p in qdir.rglob("*") if p.is_file()) == ["filler"]  # nothing partial, no reason alone

    filler.unlink()
    wait_until(lambda: not any(p.exists() for p in bad), 20, "the files quarantined")
    assert gauge("output_blocked", output="quarantine") == 0
    run.stop()
    moved = [p for p in (qdir / SOURCE).iterdir() if not p.name.endswith(".reason.txt")]
    assert sorted(p.name.split("_", 1)[1] for p in moved) == sorted(originals)
    for p in moved:
        assert p.read_bytes() == originals[p.name.split("_", 1)[1]]
        assert "reason: truncated" in p.with_name(p.name + ".reason.txt").read_text()
    assert leftovers(qdir) == []


# --- evidence ------------------------------------------------------------------------------------------------------
def test_a_full_evidence_disk_keeps_verdicts_going_without_pictures_or_temporary_files(
        tmp_path, tiny_bundle, tmpfs, start):
    edir = tmpfs("evidence")
    daemon = make_daemon(tmp_path, tiny_bundle, evidence=str(edir))
    run = start(daemon)
    filler = fill(edir, leave=8192)  # room for the start of an evidence PNG, not for all of it
    rng = np.random.default_rng(14)
    drop(tmp_path, [anomalous_image(rng) for _ in range(3)], "a")
    wait_until(lambda: len(verdicts_per_file(tmp_path / "journal.jsonl")) == 3, 20, "three verdicts")
    records = [r for r in read_journal(tmp_path / "journal.jsonl") if "file" in r]
    assert all(r["anomaly"] and r["evidence"] is None for r in records)
    assert gauge("output_blocked", output="evidence") == 1
    assert leftovers(edir) == []

    filler.unlink()
    drop(tmp_path, [anomalous_image(rng)], "b")
    wait_until(lambda: len(verdicts_per_file(tmp_path / "journal.jsonl")) == 4, 20, "the fourth verdict")
    run.stop()
    last = [r for r in read_journal(tmp_path / "journal.jsonl") if "file" in r][-1]
    assert last["evidence"] is not None and Path(last["evidence"]).stat().st_size > 0
    assert gauge("output_blocked", output="evidence") == 0
    assert leftovers(edir) == []


# --- start ----------------------------------------------------------------------------------------------------------
def test_temporary_files_left_in_the_output_folders_are_removed_at_start(tmp_path, tiny_bundle):
    orphans = [tmp_path / "evidence" / ".20240101T000000.000Z_line1_x_1.png.tmp",
               tmp_path / "quarantine" / SOURCE / ".20240101T000000Z_x.png.reason.txt.tmp",
               tmp_path / "state" / "outbox" / "hook" / ".000000000001-abc.json.tmp",
               tmp_path / "state" / ".ledger-line1.jsonl.tmp"]
    kept = [tmp_path / "evidence" / "20240101T000000.000Z_line1_x_1.png",
            tmp_path / "state" / ".hidden",
            tmp_path / "inbox" / ".being-copied.png.tmp"]  # a writer's temporary in a watched folder
    for path in orphans + kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"partial")
    before = {o: gauge("orphan_temp_files_removed_total", output=o) for o in ("evidence", "quarantine", "state")}

    make_daemon(tmp_path, tiny_bundle).journal.close()

    assert [p for p in orphans if p.exists()] == []
    assert all(p.exists() for p in kept)
    after = {o: gauge("orphan_temp_files_removed_total", output=o) for o in before}
    assert {o: after[o] - before[o] for o in before} == {"evidence": 1, "quarantine": 1, "state": 2}


def test_a_watched_folder_inside_the_state_folder_keeps_its_writers_temporary_files(tmp_path):
    from monitor.files import remove_orphan_temps

    inbox = tmp_path / "state" / "inbox"
    inbox.mkdir(parents=True)
    (inbox / ".copying.png.tmp").write_bytes(b"x")
    (tmp_path / "state" / ".old.tmp").write_bytes(b"x")
    assert remove_orphan_temps(tmp_path / "state", exclude=[inbox]) == 1
    assert (inbox / ".copying.png.tmp").exists()


def test_a_journal_that_is_a_fifo_is_refused_at_start_with_exit_2_and_one_line(tmp_path, tiny_bundle,
                                                                                subprocess_env):
    journal = tmp_path / "journal.jsonl"
    os.mkfifo(journal)
    config = tmp_path / "config.yaml"
    config.write_text(f"model: {tiny_bundle}\nsources:\n  - name: a\n    folder: inbox\n"
                      f"output:\n  journal: {journal}\nmetrics:\n  enabled: false\n")
    for command in (["run", "--config", str(config)], ["check-config", str(config)]):
        # A blocking open would hang here: the timeout turns that into a failure, not a stuck suite.
        proc = subprocess.run([sys.executable, "-m", "monitor", *command], capture_output=True, text=True,
                              timeout=60, env=subprocess_env, cwd=REPO)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert lines == [f"error: {config}: output.journal: not a regular file: {journal} is a FIFO"]


def test_the_daemon_refuses_a_fifo_journal_without_opening_it(tmp_path):
    os.mkfifo(tmp_path / "journal.jsonl")
    with pytest.raises(StartupError, match="output.journal: not a regular file"):
        open_journal(tmp_path / "journal.jsonl", 2**20, 1)


def test_a_ledger_line_refused_by_a_full_disk_is_kept_in_memory_and_never_cut(tmpfs):
    folder = tmpfs("state")
    ledger = Ledger(folder / "ledger.jsonl")
    ledger.add(FileKey("a.png", 1, 1))
    filler = fill(folder)
    for i in range(200):  # more than the page left: some lines are refused
        ledger.add(FileKey(f"long-name-{i:04d}-" + "z" * 60 + ".png", i, i))
    assert len(ledger) == 201  # all in memory
    assert gauge("output_errors_total", output="ledger", errno="ENOSPC") >= 1
    filler.unlink()
    ledger.close()
    reread = Ledger(folder / "ledger.jsonl")  # every line on disk is whole: nothing rejected
    assert FileKey("a.png", 1, 1) in reread and not (folder / "ledger.jsonl.rejected").exists()
    reread.close()


# --- the guard itself ---------------------------------------------------------------------------------------------
@pytest.fixture
def notify_socket(monkeypatch) -> Iterator[socket.socket]:
    """A datagram socket standing in for systemd's notify socket."""
    folder = Path(tempfile.mkdtemp(prefix="notify-"))  # short: AF_UNIX paths are limited to 108 bytes
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(folder / "n"))
    sock.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", str(folder / "n"))
    yield sock
    sock.close()
    shutil.rmtree(folder)


def test_the_guard_retries_with_a_doubling_capped_backoff_and_reports_one_episode(caplog, notify_socket,
                                                                                  monkeypatch):
    guard = OutputGuard(first_delay_s=0.01, max_delay_s=0.04, ok_status="scoring 1 sources")
    waits: list[float] = []
    monkeypatch.setattr(guard._stop, "wait", lambda delay: waits.append(delay))
    refusals = [5]

    def write() -> str:
        if refusals[0]:
            refusals[0] -= 1
            raise OSError(errno.ENOSPC, "No space left on device")
        return "written"

    before = gauge("output_errors_total", output="journal", errno="ENOSPC")
    with caplog.at_level(logging.INFO, logger="monitor.outputs"):
        assert guard.write("journal", write) == "written"
    assert waits == [0.01, 0.02, 0.04, 0.04, 0.04]
    assert gauge("output_errors_total", output="journal", errno="ENOSPC") - before == 5
    assert gauge("output_blocked", output="journal") == 0
    events = [r.getMessage().split()[0] for r in caplog.records]
    assert events == ["output_blocked", "output_recovered"]
    assert "error=ENOSPC:No_space_left_on_device" in caplog.records[0].getMessage()
    assert "blocked_s=" in caplog.records[1].getMessage()
    assert notify_socket.recv(4096).decode() == ("STATUS=output blocked: journal (ENOSPC); "
                                                 "holding work and retrying")
    assert notify_socket.recv(4096).decode() == "STATUS=scoring 1 sources"


def test_a_stopped_guard_gives_up_held_work_at_once(monkeypatch):
    guard = OutputGuard(first_delay_s=30, max_delay_s=30)

    def refused() -> None:
        raise OSError(errno.EIO, "Input/output error")

    threading.Timer(0.2, guard.stop).start()
    started = time.monotonic()
    with pytest.raises(OutputStopped):
        guard.write("quarantine", refused)
    assert time.monotonic() - started < 5
    assert guard.blocked() == ["quarantine"] and not guard.retrying()
