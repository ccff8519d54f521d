"""Retention of a folder tree the daemon fills: the oldest files go beyond an age and a byte limit.

One rule for every such tree (a folder source's sorted files, the kept originals): files older than
`max_age_s` (by mtime) are removed, then the oldest while the total exceeds `max_bytes`; folders left empty
go too, except the ones named in `keep`. Links are never followed and never count: a tree holds only what
the daemon wrote into it.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from monitor.files import describe

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pruned:
    """What one pass removed, and what the tree holds after it."""

    removed_age: int
    removed_bytes: int
    files: int
    total_bytes: int


def prune_tree(root: Path, max_age_s: float | None, max_bytes: int | None, keep: Iterable[Path] = (),
               now: float | None = None) -> Pruned:
    """Remove files under `root` older than `max_age_s`, then the oldest beyond `max_bytes`; see the module."""
    files: list[tuple[float, int, str]] = []
    for dirpath, _dirs, names in os.walk(root, followlinks=False):
        for name in names:
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                files.append((st.st_mtime, st.st_size, path))
    files.sort()
    total = sum(size for _, size, _ in files)
    cutoff = (time.time() if now is None else now) - max_age_s if max_age_s else None
    removed = {"age": 0, "bytes": 0}
    left = len(files)
    for mtime, size, path in files:
        reason = ("age" if cutoff is not None and mtime < cutoff
                  else "bytes" if max_bytes is not None and total > max_bytes else None)
        if reason is None:
            break  # oldest first: every later file is newer, and the total only shrank
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("retention_remove_failed root=%s path=%s error=%s", root, path, describe(exc))
            continue
        total -= size
        left -= 1
        removed[reason] += 1
    remove_empty_folders(root, keep)
    return Pruned(removed["age"], removed["bytes"], left, total)


def remove_empty_folders(root: Path, keep: Iterable[Path] = ()) -> None:
    """Remove the empty folders under `root` (never `root` itself, nor those in `keep`)."""
    kept = {os.path.normpath(p) for p in keep} | {os.path.normpath(root)}
    # Bottom-up, so a day folder whose subfolders just went is empty in its turn; rmdir refuses the others.
    for dirpath, _dirs, _names in os.walk(root, topdown=False, followlinks=False):
        if os.path.normpath(dirpath) not in kept:
            try:
                os.rmdir(dirpath)
            except OSError:  # not empty (the usual case), or no permission: left as it is
                continue
