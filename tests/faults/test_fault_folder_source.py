"""Fault injection on the folder source (issue 11, classes 3 and 4): its folder removed, re-created or
replaced; FIFOs and links among its files. Real folders, real FIFOs, real symlinks, the real watcher."""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from test_folder_source import Harness, png

from monitor import metrics


@pytest.fixture
def harness(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Harness]:
    """A started-on-demand folder source named after the test, stopped at the end."""
    h = Harness(tmp_path, request.node.name[:60].replace("[", "_").replace("]", "_"))
    yield h
    h.stop()


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll `condition` until it holds or `timeout` passes; returns whether it held."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def present(h: Harness) -> float:
    """The value of anomaly_monitor_source_folder_present for the harness's source."""
    return metrics.SOURCE_FOLDER_PRESENT.labels(h.config.name)._value.get()


def skipped(h: Harness, reason: str) -> float:
    """The value of anomaly_monitor_files_skipped_total{reason} for the harness's source."""
    return metrics.FILES_SKIPPED.labels(h.config.name, reason)._value.get()


@pytest.fixture(params=["inotify", "poll"])
def watched(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Harness]:
    """The harness watched by inotify, then by polling (`poll_s`, a network share): the same faults, both ways."""
    options = {"poll_s": 0.2} if request.param == "poll" else {}
    h = Harness(tmp_path, request.node.name[:60].replace("[", "_").replace("]", "_"), **options)
    yield h
    h.stop()


def names(frames: list) -> list[str]:
    """Paths of frames relative to the inbox, sorted (duplicates kept: they are the failure)."""
    return sorted(f.path.as_posix() for f in frames)


# --- class 3: the watched folder removed, re-created, replaced ---------------------------------

def test_a_removed_and_recreated_folder_is_watched_again_and_says_lost_then_found(watched, caplog):
    caplog.set_level(logging.INFO, logger="monitor.sources.folder")
    source = watched.start()
    assert present(watched) == 1
    (watched.inbox / "before.png").write_bytes(png(1))
    assert [f.path.name for f in watched.frames(1)] == ["before.png"]

    shutil.rmtree(watched.inbox)
    assert wait_for(lambda: present(watched) == 0), "the metric never said the folder was lost"
    assert "folder_lost source=" in caplog.text

    watched.inbox.mkdir()
    assert wait_for(lambda: present(watched) == 1), "the metric never said the folder was found"
    assert "folder_found source=" in caplog.text
    assert source.alive and not source.dead


def test_a_file_dropped_into_a_recreated_folder_is_scored_exactly_once(watched):
    watched.start()
    shutil.rmtree(watched.inbox)
    watched.inbox.mkdir()  # at once: the watch died with the old folder whatever the timing
    (watched.inbox / "after.png").write_bytes(png(2))
    assert [f.path.name for f in watched.frames(1)] == ["after.png"]
    assert watched.quiet_for(1.2) == []  # neither the new watch nor the backlog scan offers it again


def test_a_file_dropped_after_the_folder_is_found_again_is_scored_exactly_once(watched):
    watched.start()
    shutil.rmtree(watched.inbox)
    assert wait_for(lambda: present(watched) == 0)
    watched.inbox.mkdir()
    assert wait_for(lambda: present(watched) == 1)
    (watched.inbox / "later.png").write_bytes(png(3))
    assert [f.path.name for f in watched.frames(1)] == ["later.png"]
    assert watched.quiet_for(0.8) == []


def test_a_folder_replaced_by_a_rename_is_watched_in_its_new_form(watched, tmp_path):
    watched.start()
    staged = tmp_path / "staged"
    staged.mkdir()
    (staged / "carried.png").write_bytes(png(4))
    watched.inbox.rename(tmp_path / "old-inbox")
    staged.rename(watched.inbox)  # the path now names another folder; the old watch follows the old one
    assert [f.path.name for f in watched.frames(1)] == ["carried.png"]
    (watched.inbox / "new.png").write_bytes(png(5))
    assert [f.path.name for f in watched.frames(1)] == ["new.png"]
    (tmp_path / "old-inbox" / "stale.png").write_bytes(png(6))  # the old folder is no longer watched
    assert watched.quiet_for(0.8) == []
    assert present(watched) == 1


# --- class 4: special files -------------------------------------------------------------------

def test_a_fifo_named_like_an_image_does_not_block_a_following_image(harness):
    before = skipped(harness, "not_regular")
    source = harness.start()
    os.mkfifo(harness.inbox / "x.png")
    time.sleep(0.2)  # the FIFO is looked at first
    (harness.inbox / "real.png").write_bytes(png(1))
    assert [f.path.name for f in harness.frames(1, timeout=5)] == ["real.png"]
    assert skipped(harness, "not_regular") == before + 1
    assert source.alive


def test_a_fifo_in_the_backlog_does_not_block_the_backlog(harness):
    harness.inbox.mkdir(parents=True)
    os.mkfifo(harness.inbox / "a.png")
    (harness.inbox / "b.png").write_bytes(png(1))
    harness.start()
    assert [f.path.name for f in harness.frames(1, timeout=5)] == ["b.png"]
    assert harness.quiet_for(0.5) == []


def test_a_link_to_the_parent_folder_present_at_start_does_not_show_files_twice(harness):
    (harness.inbox / "sub").mkdir(parents=True)
    os.symlink("..", harness.inbox / "sub" / "up")  # inbox/sub/up/sub/up/... is inbox again
    (harness.inbox / "a.png").write_bytes(png(1))
    (harness.inbox / "sub" / "b.png").write_bytes(png(2))
    harness.start()
    (harness.inbox / "c.png").write_bytes(png(3))
    frames = harness.frames(3) + harness.quiet_for(0.8)
    assert Counter(f.path.name for f in frames) == {"a.png": 1, "b.png": 1, "c.png": 1}
    assert all("up" not in f.path.parts for f in frames)


def test_a_link_to_the_parent_folder_made_while_running_does_not_show_files_twice(harness):
    harness.start()
    (harness.inbox / "sub").mkdir()
    os.symlink("..", harness.inbox / "sub" / "up")
    time.sleep(0.2)
    (harness.inbox / "a.png").write_bytes(png(1))
    (harness.inbox / "sub" / "b.png").write_bytes(png(2))
    frames = harness.frames(2) + harness.quiet_for(0.8)
    assert Counter(f.path.name for f in frames) == {"a.png": 1, "b.png": 1}


def test_a_linked_file_is_never_read_and_is_counted_as_skipped(harness, tmp_path):
    outside = tmp_path / "outside.png"
    outside.write_bytes(png(1))
    before = skipped(harness, "symlink")
    harness.start()
    os.symlink(outside, harness.inbox / "link.png")
    assert harness.quiet_for(0.8) == []
    assert skipped(harness, "symlink") == before + 1


def test_a_link_to_a_file_in_the_folder_does_not_make_it_scored_twice(harness):
    harness.inbox.mkdir(parents=True)
    (harness.inbox / "a.png").write_bytes(png(1))
    os.symlink("a.png", harness.inbox / "alias.png")
    harness.start()
    frames = harness.frames(1) + harness.quiet_for(0.8)
    assert [f.path.name for f in frames] == ["a.png"]


def test_a_file_reached_through_a_linked_folder_is_not_read(harness, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "e.png").write_bytes(png(1))
    harness.inbox.mkdir(parents=True)
    os.symlink(elsewhere, harness.inbox / "linked")
    source = harness.start()
    # As a moved-in folder's scan or a stray event would: the path runs through the link.
    source.offer(harness.inbox / "linked" / "e.png", closed=True)
    assert harness.quiet_for(0.8) == []
    assert (elsewhere / "e.png").exists()  # not quarantined either: it is not ours
