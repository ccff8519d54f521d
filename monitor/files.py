"""File primitives shared by the stores: atomic writes, moves, append-only line files, safe name parts.

This module is the single owner of durable writes: every output (journal, ledger, evidence, quarantine,
outbox) writes through it, so that a refused write (a full disk, an I/O error) leaves either the old state
or the whole new one, and never a partial file, a torn line or a temporary file behind.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")

# Temporary files are `.<name>.tmp` beside their target: hidden (folder sources skip dot files) and easy to
# recognise at start, when those a crash left behind are removed (remove_orphan_temps).
TMP_PREFIX = "."
TMP_SUFFIX = ".tmp"


def safe_name(text: str) -> str:
    """`text` usable as part of a file name: every run of other characters becomes one `_`."""
    return _UNSAFE.sub("_", text)


def temp_path(path: Path) -> Path:
    """The temporary name a write of `path` goes through."""
    return path.with_name(f"{TMP_PREFIX}{path.name}{TMP_SUFFIX}")


def is_temp_name(name: str) -> bool:
    """True for a name `temp_path` makes."""
    return len(name) > len(TMP_PREFIX) + len(TMP_SUFFIX) and name.startswith(TMP_PREFIX) and name.endswith(TMP_SUFFIX)


def errno_name(exc: BaseException) -> str:
    """`ENOSPC` for an OSError with that errno: a bounded metric label and a greppable log value."""
    code = getattr(exc, "errno", None)
    return errno.errorcode.get(code, "other") if isinstance(code, int) else "other"


def describe(exc: BaseException) -> str:
    """One log token for an OS error: `ENOSPC:No_space_left_on_device`."""
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return f"{errno_name(exc)}:{text.replace(' ', '_')}"


class FolderNotWritable(Exception):
    """An output folder where no file can be made; the message names the path and says why."""


def check_writable_folder(path: Path) -> None:
    """FolderNotWritable unless files can be written at `path`: for a long command to check before it works.

    The nearest folder that exists on the way must be a folder that takes a file (a probe file is made and
    removed there); nothing is created at `path` itself, so a command refused for another reason leaves no trace.
    """
    path = Path(path)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "" if existing == path else f" (its {existing} is a file)"
        raise FolderNotWritable(f"{path}: cannot write there: not a folder{where}")
    try:
        fd, probe = tempfile.mkstemp(prefix=f"{TMP_PREFIX}probe-", suffix=TMP_SUFFIX, dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise FolderNotWritable(f"{path}: cannot write there: {exc.strerror or exc} in {existing}") from exc


class NotRegularFile(OSError):
    """A path that must be a regular file is a FIFO, a socket, a device or a folder."""

    def __init__(self, path: Path, mode: int) -> None:
        kind = "folder" if stat.S_ISDIR(mode) else "FIFO" if stat.S_ISFIFO(mode) else "socket" if stat.S_ISSOCK(
            mode) else "device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "special file"
        super().__init__(errno.EINVAL, f"not a regular file (a {kind})", str(path))
        self.kind = kind


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:  # nothing more to do: the start-time sweep removes it later
        log.warning("temp_file_left path=%s error=%s", path, describe(exc))


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new file in `folder` survive a power cut."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def atomic_write(path: Path, data: bytes, *, durable: bool = False, mode: int = 0o666) -> None:
    """Write `path` so that readers, and a crash, see the old file or the whole new one, never a part.

    The temporary file is `.<name>.tmp` beside it, removed at once when the write fails (a full disk must
    not fill up further with half-written temporaries). `durable` fsyncs the data and the folder (for files
    whose loss would lose an alert or a record; evidence images need not pay for it).
    """
    tmp = temp_path(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        try:
            _write_all(fd, data)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    if durable:
        fsync_dir(path.parent)


def copy_durable(src: Path, dst: Path) -> None:
    """Copy `src` to `dst` through a temporary name in `dst`'s folder, fsynced before the rename.

    `dst` then holds the whole file or does not exist: never a zero-byte or partial copy. The temporary is
    removed when any step fails.
    """
    tmp = temp_path(dst)
    try:
        with open(src, "rb") as fin, open(tmp, "xb") as fout:
            shutil.copyfileobj(fin, fout, 1024 * 1024)
            fout.flush()
            os.fsync(fout.fileno())
        shutil.copystat(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    fsync_dir(dst.parent)


def move_file(src: Path, dst: Path) -> None:
    """Move `src` to `dst`: a rename on one file system, else a durable copy, then the source removed.

    On failure `src` is where it was and `dst` does not exist (FileNotFoundError when `src` vanished).
    """
    try:
        os.rename(src, dst)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    else:
        fsync_dir(dst.parent)
        return
    copy_durable(src, dst)
    try:
        src.unlink()
    except FileNotFoundError:
        pass  # someone else removed it meanwhile: the copy is what is left
    except OSError:
        # Two copies are better than none, but the one at `dst` would be quarantined again: take it back.
        _unlink_quietly(dst)
        raise


def remove_orphan_temps(folder: Path, exclude: Iterable[Path] = ()) -> int:
    """Remove the temporary files (`.<name>.tmp`) a crash or a refused write left under `folder`.

    Walks without following links and skips the folders in `exclude` (and what is below them); returns how
    many were removed. Called at start, before any writer runs.
    """
    removed = 0
    if not folder.is_dir():
        return 0
    skip = {os.path.abspath(p) for p in exclude}
    for dirpath, dirs, files in os.walk(folder, followlinks=False):
        if os.path.abspath(dirpath) in skip:
            dirs.clear()
            continue
        for name in files:
            if not is_temp_name(name):
                continue
            path = Path(dirpath) / name
            try:
                if not stat.S_ISREG(os.lstat(path).st_mode):
                    continue
                path.unlink()
                removed += 1
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.warning("orphan_temp_left path=%s error=%s", path, describe(exc))
    return removed


class LineFile:
    """An append-only text file of lines: a line reaches the OS whole or not at all; `sync` fsyncs.

    Written with os.write on an O_APPEND descriptor, not through a buffered file: a buffered writer keeps
    the unwritten rest of a line after a refused write and writes it later, glued to whatever comes next.
    Here a refused write is cut back to where the line began (ftruncate frees space, so it works on a full
    disk), and the caller may simply write the same line again.

    Only a regular file is opened (O_NONBLOCK: a FIFO at the path must not block the daemon): anything else
    raises NotRegularFile. Not locked: its owner (the journal, a ledger) serialises writes with its own lock.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = None
        self._size = 0
        self._identity = (0, 0)  # (st_dev, st_ino) of the open file
        self._cut = False  # the tail holds a line cut by a refused write that could not be truncated away
        self._open()

    def _open(self) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISREG(st.st_mode):  # before the open: a FIFO with a reader would accept it
                raise NotRegularFile(self.path, st.st_mode)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC, 0o666)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise NotRegularFile(self.path, st.st_mode)
        self._fd, self._size, self._identity = fd, st.st_size, (st.st_dev, st.st_ino)

    def _still_at_path(self) -> bool:
        """True while `path` names the open file (one stat per write: WatchedFileHandler's check)."""
        try:
            st = os.stat(self.path)
        except (FileNotFoundError, NotADirectoryError):
            return False
        return (st.st_dev, st.st_ino) == self._identity

    @property
    def size(self) -> int:
        return self._size

    @property
    def closed(self) -> bool:
        return self._fd is None

    def _ensure_open(self) -> int:
        if self._fd is not None and not self._still_at_path():
            # Removed or moved away by someone else (a clean-up of var/, a rotation by hand): lines written to
            # the old file would be out of everyone's sight (the API, the review page, the next start's tail),
            # so the path gets a file again. What was written before stays wherever the old file went.
            log.warning("line_file_replaced path=%s action=reopen", self.path)
            with contextlib.suppress(OSError):
                self.close()  # leaves no descriptor even when its sync fails
            self.path.parent.mkdir(parents=True, exist_ok=True)
        if self._fd is None:
            self._open()  # a reopen after rotation failed, or the file went: try again now
        assert self._fd is not None
        return self._fd

    def ensure_open(self) -> int:
        """Open the file again if an earlier reopen failed; its size. Raises OSError when it cannot."""
        self._ensure_open()
        return self._size

    def write(self, line: str) -> None:
        """Append one line (with its newline) in full, or raise OSError and leave the file as it was."""
        self.write_many([line])

    def write_many(self, lines: list[str]) -> None:
        """Append lines in full, or raise OSError with the file cut back to its size before the call."""
        fd = self._ensure_open()
        start = self._size
        # After a cut that could not be removed, end it first, so the next record is a line of its own.
        data = (b"\n" if self._cut else b"") + "".join(lines).encode("utf-8")
        try:
            _write_all(fd, data)
        except OSError:
            try:
                self.truncate(start)
            except OSError:
                self._cut = self._size != start  # bytes of this write are left: the next one ends them
            raise
        self._size = start + len(data)
        self._cut = False

    def truncate(self, size: int) -> None:
        """Cut the file back to `size` bytes (lines written after it are gone)."""
        fd = self._ensure_open()
        try:
            os.ftruncate(fd, size)
        except OSError as exc:
            # The tail may now hold a cut line: readers skip it, and the next write ends it with a newline.
            with contextlib.suppress(OSError):
                self._size = os.fstat(fd).st_size
            log.error("line_file_truncate_failed path=%s size=%d error=%s", self.path, size, describe(exc))
            raise
        self._size = size

    def sync(self) -> None:
        """fsync: what was written survives a power cut too."""
        if self._fd is not None:
            os.fsync(self._fd)

    def close(self) -> None:
        """fsync and close; a close that cannot sync still closes (and raises)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def reopen(self) -> None:
        """Close (synced) and open `path` again, after the owner renamed or replaced the file."""
        try:
            self.close()
        finally:
            self._open()
