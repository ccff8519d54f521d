"""File primitives shared by the stores: atomic writes, append-only line files, safe file-name parts."""

from __future__ import annotations

import os
import re
from pathlib import Path

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def safe_name(text: str) -> str:
    """`text` usable as part of a file name: every run of other characters becomes one `_`."""
    return _UNSAFE.sub("_", text)


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new file in `folder` survive a power cut."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, *, durable: bool = False, mode: int = 0o666) -> None:
    """Write `path` so that readers, and a crash, see the old file or the whole new one, never a part.

    The temporary file is `.<name>.tmp` beside it. `durable` fsyncs the data and the folder (for files
    whose loss would lose an alert or a record; evidence images need not pay for it).
    """
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if durable:
        fsync_dir(path.parent)


class LineFile:
    """An append-only text file of lines: each write is flushed to the OS at once, `sync` fsyncs.

    Not locked: its owner (the journal, a ledger) serialises writes with its own lock.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - held open for the owner's life

    @property
    def size(self) -> int:
        return self._file.tell()

    def write(self, line: str) -> None:
        """Append one line (with its newline) and flush it: a crash of this process loses nothing written."""
        self._file.write(line)
        self._file.flush()

    def sync(self) -> None:
        """fsync: what was written survives a power cut too."""
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        if not self._file.closed:
            self.sync()
            self._file.close()

    def reopen(self) -> None:
        """Close (synced) and open `path` again, after the owner renamed or replaced the file."""
        self.close()
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
