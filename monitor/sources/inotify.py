"""The kernel's inotify watch of one folder (and, recursive, its subfolders), read in bulk on one thread.

The folder source's event feed where the folder is local (`poll_s` unset; a share is polled by watchdog).
Why not watchdog's inotify Observer: on a burst of 64x64 PNGs renamed in, its three threads per event (reader,
emitter, dispatcher) and its pairing of moves (a linear search of every pending event for each IN_MOVED_TO)
cost about 140 µs of interpreter time per file, half of all the GIL the pipeline held. The source needs no
pairing: a file moved out is forgotten, a file moved in is offered. Here one thread reads up to 64 KiB of
events per system call and hands them to the source in one call per read.

What the watch reports, through `FolderEvents`:
- `files(changes)`: (path, change) in kernel order, change one of OPENED (created, modified, attributes),
  CLOSED (closed after writing), MOVED_IN (renamed into the folder: complete the moment it appears, a rename being
  atomic) and GONE (deleted, moved out);
- `folder_appeared(path)`: a subfolder created or moved in (recursive: watched from then on, so its files
  raise events; those already in it raise none and are for the source to scan);
- `overflow()`: the kernel dropped events (a burst beyond fs.inotify.max_queued_events);
- `root_gone()`: the watched folder itself was deleted; its watch is dead.

Nothing follows a link below the folder (IN_DONT_FOLLOW): a link to a parent would list every file twice.
The folder's own path may be a link: the operator chose it.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import select
import struct
import threading
from collections.abc import Iterator
from typing import Protocol

from monitor.threads import StoppableThread

log = logging.getLogger(__name__)

_libc = ctypes.CDLL(None, use_errno=True)
_init1 = _libc.inotify_init1
_init1.argtypes = [ctypes.c_int]
_add_watch = _libc.inotify_add_watch
_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
_rm_watch = _libc.inotify_rm_watch
_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]

IN_MODIFY, IN_ATTRIB, IN_CLOSE_WRITE = 0x2, 0x4, 0x8
IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x40, 0x80, 0x100, 0x200
IN_DELETE_SELF = 0x400
IN_Q_OVERFLOW, IN_IGNORED = 0x4000, 0x8000
IN_ONLYDIR, IN_DONT_FOLLOW, IN_EXCL_UNLINK, IN_ISDIR = 0x01000000, 0x02000000, 0x04000000, 0x40000000
_IN_NONBLOCK, _IN_CLOEXEC = os.O_NONBLOCK, os.O_CLOEXEC

# Only what the source acts on: its own reads (IN_OPEN, IN_CLOSE_NOWRITE, IN_ACCESS) would otherwise be two of
# every three events of a file renamed in, and fill the kernel's queue twice as soon in a burst.
# IN_ATTRIB: a touch, utime or chmod of a scored file makes it a new version.
MASK = (IN_CREATE | IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE
        | IN_DELETE_SELF | IN_ONLYDIR | IN_EXCL_UNLINK)

OPENED, CLOSED, GONE, MOVED_IN = 0, 1, 2, 3
_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len: struct inotify_event before its name
_READ_BYTES = 64 * 1024
_POLL_MS = 200  # how soon the reader sees a stop request without an event


class FolderEvents(Protocol):
    """What a watch reports to (the folder source); called on the watch's thread."""

    def files(self, changes: list[tuple[str, int]]) -> None: ...

    def folder_appeared(self, path: str) -> None: ...

    def overflow(self) -> None: ...

    def root_gone(self) -> None: ...


def describe_errno(code: int) -> str:
    """What an inotify call's errno means here: the kernel's limits have names that say nothing of inotify."""
    if code == errno.ENOSPC:  # "No space left on device", with the disk half empty
        return "the inotify watch limit is reached (raise fs.inotify.max_user_watches, or set poll_s)"
    if code == errno.EMFILE:  # from inotify_init1: this user's instances, or this process's descriptors
        return ("too many inotify instances or open files (raise fs.inotify.max_user_instances or the "
                "open-file limit, or set poll_s)")
    return os.strerror(code)


def _os_error(path: str) -> OSError:
    code = ctypes.get_errno()
    return OSError(code, describe_errno(code), path)


def parse(buffer: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(wd, mask, name) of each event in what one read of an inotify descriptor returned."""
    pos, end, size = 0, len(buffer), _HEADER.size
    while pos + size <= end:
        wd, mask, _cookie, length = _HEADER.unpack_from(buffer, pos)
        pos += size
        yield wd, mask, buffer[pos:pos + length].rstrip(b"\0")
        pos += length


class InotifyWatch:
    """One inotify instance for one folder source: `watch(root)` / `unwatch()` as the folder comes and goes."""

    def __init__(self, name: str, recursive: bool, events: FolderEvents) -> None:
        self.recursive = recursive
        self._events = events
        fd = _init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            raise _os_error("inotify_init1")
        self._fd = fd
        self._lock = threading.Lock()  # the maps below: changed by the reader (subfolders) and the source (root)
        self._paths: dict[int, str] = {}  # wd -> the folder's path
        self._root_wd: int | None = None
        self.thread = StoppableThread(f"watch-{name}", self._run)

    # --- lifecycle ----------------------------------------------------------------------------------------
    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.thread.stop()

    def join(self, timeout: float) -> bool:
        """Wait for the reader, then close the descriptor (the kernel drops every watch with it)."""
        joined = self.thread.join(timeout)
        if joined and self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        return joined

    # --- watches ------------------------------------------------------------------------------------------
    def watch(self, root: str) -> None:
        """Watch `root` (and its subfolders when recursive); raises OSError when the root cannot be watched."""
        root = root.rstrip(os.sep) or os.sep
        with self._lock:
            # The root may be a link (the operator's path): followed. Below it nothing is.
            wd = _add_watch(self._fd, os.fsencode(root), MASK)
            if wd < 0:
                raise _os_error(root)
            self._root_wd = wd
            self._paths[wd] = root
        if self.recursive:
            self._watch_below(root)

    def unwatch(self) -> None:
        """Stop watching the folder and everything below it (a lost folder's watches may be dead already)."""
        with self._lock:
            wds = list(self._paths)
            self._paths.clear()
            self._root_wd = None
        for wd in wds:
            _rm_watch(self._fd, wd)  # EINVAL for a watch the kernel already dropped: nothing to undo

    def watched(self) -> list[str]:
        """The folders watched now."""
        with self._lock:
            return sorted(self._paths.values())

    def _watch_below(self, folder: str) -> None:
        """Watch every folder under `folder`, not through links; ones that vanish meanwhile are skipped."""
        for dirpath, dirnames, _files in os.walk(folder, followlinks=False):
            for name in dirnames:
                self._watch_one(os.path.join(dirpath, name))

    def _watch_one(self, path: str) -> None:
        with self._lock:
            if self._root_wd is None:
                return  # unwatched meanwhile
            wd = _add_watch(self._fd, os.fsencode(path), MASK | IN_DONT_FOLLOW)
            if wd >= 0:
                self._paths[wd] = path
                return
        code = ctypes.get_errno()
        if code not in (errno.ENOENT, errno.ENOTDIR, errno.EACCES):
            log.warning("folder_watch_failed path=%s error=%r", path, describe_errno(code))

    def _forget_below(self, folder: str) -> None:
        """Drop the watches of `folder` and its subfolders (moved out of the tree: their events are not ours)."""
        prefix = folder + os.sep
        with self._lock:
            gone = [wd for wd, p in self._paths.items() if p == folder or p.startswith(prefix)]
            for wd in gone:
                del self._paths[wd]
        for wd in gone:
            _rm_watch(self._fd, wd)

    # --- the reader ---------------------------------------------------------------------------------------
    def _run(self, stop: threading.Event) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        while not stop.is_set():
            if not poller.poll(_POLL_MS):
                continue
            try:
                buffer = os.read(self._fd, _READ_BYTES)
            except BlockingIOError:
                continue
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                raise
            self._dispatch(buffer)

    def _dispatch(self, buffer: bytes) -> None:
        changes: list[tuple[str, int]] = []
        for wd, mask, name in parse(buffer):
            if mask & IN_Q_OVERFLOW:
                self._flush(changes)
                with self._lock:
                    root_path = self._paths.get(self._root_wd) if self._root_wd is not None else None
                if self.recursive and root_path is not None:
                    self._watch_below(root_path)  # subfolders made while events were lost raised none
                self._events.overflow()
                continue
            with self._lock:
                folder = self._paths.get(wd)
                root = wd == self._root_wd
            if folder is None:
                continue  # a watch dropped meanwhile (folder lost, moved out): its queued events are stale
            if mask & (IN_DELETE_SELF | IN_IGNORED):
                if mask & IN_IGNORED:
                    with self._lock:
                        if self._paths.get(wd) == folder:
                            del self._paths[wd]
                if root:
                    self._flush(changes)
                    self._events.root_gone()
                continue
            path = folder + os.sep + os.fsdecode(name)
            if mask & IN_ISDIR:
                if mask & (IN_CREATE | IN_MOVED_TO):
                    self._flush(changes)
                    if self.recursive:
                        self._watch_one(path)
                        self._watch_below(path)
                    self._events.folder_appeared(path)
                elif mask & IN_MOVED_FROM and self.recursive:
                    self._forget_below(path)
            elif mask & IN_MOVED_TO:
                changes.append((path, MOVED_IN))
            elif mask & IN_CLOSE_WRITE:
                changes.append((path, CLOSED))
            elif mask & (IN_DELETE | IN_MOVED_FROM):
                changes.append((path, GONE))
            else:
                changes.append((path, OPENED))
        self._flush(changes)

    def _flush(self, changes: list[tuple[str, int]]) -> None:
        if changes:
            self._events.files(list(changes))
            changes.clear()
