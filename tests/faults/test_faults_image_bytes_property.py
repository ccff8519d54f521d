"""Issue 11, the whole system against arbitrary image bytes: one real daemon, hypothesis writes the files.

Each example drops a batch of files into the watched folder: random bytes, valid PNG/JPEG/BMP/TIFF encodings
(8 and 16 bit, gray to BGRA), the same cut short or with bytes overwritten, empty files, headers that claim
huge images, under odd names and extensions. Whatever the bytes, each file with an image extension ends with
exactly one verdict line in the journal or exactly one quarantine entry with its reason file (never both),
each file with another extension is left alone, no error is logged and the daemon stays alive.
"""

from __future__ import annotations

import json
import logging
import re
import struct
import threading
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from monitor.config import parse_config
from monitor.daemon import Daemon
from monitor.images import IMAGE_EXTENSIONS
from monitor.model.bundle import load_bundle

pytestmark = pytest.mark.slow

# Low, so that claimed sizes above it stay far below what OpenCV would allocate if a header check missed one.
MAX_DECODED = 4 * 2**20
INCOMPLETE_TIMEOUT_S = 0.4  # a truncated or empty file is quarantined this long after its last change
ACCOUNTED_TIMEOUT_S = 20
_TOKEN = re.compile(r"f(\d{6})-")  # every file name starts with f<number>-; quarantine names keep it
_EXTENSIONS = [".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".PNG", ".JpG", ".Tiff", ".txt", "", ".png.part"]
# Name characters: letters, spaces, quotes, non-ASCII, control characters (newline, ESC); never "/" or NUL.
_NAME_CHARS = st.characters(codec="utf-8", exclude_characters="/\x00") | st.sampled_from("\n\r\t\x1b\x7f ._-'\"é")


class _ErrorRecords(logging.Handler):
    """Keeps every record at ERROR and above, and every record with a traceback, from any logger."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or record.exc_info:
            self.records.append(record)


@dataclass
class Running:
    daemon: Daemon
    inbox: Path
    journal: Path
    quarantine: Path
    errors: _ErrorRecords
    waiter: threading.Thread
    exit_code: list[int]
    counter: int = 0


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory, tiny_bundle: Path) -> Iterator[Running]:
    """One daemon for every example, stopped (and its exit code checked) at the end."""
    work = tmp_path_factory.mktemp("bytes_daemon")
    config = parse_config({
        "model": str(tiny_bundle), "metrics": {"enabled": False},
        "sources": [{"name": "line1", "folder": "inbox", "settle_ms": 20, "stable_s": 0.2,
                     "incomplete_timeout_s": INCOMPLETE_TIMEOUT_S, "max_decoded_bytes": MAX_DECODED}],
        "batching": {"max_batch": 8, "max_wait_ms": 20},
    }, work / "config.yaml")
    errors = _ErrorRecords()
    logging.getLogger().addHandler(errors)
    daemon = Daemon(config, load_bundle(tiny_bundle))
    daemon.start()
    exit_code: list[int] = []
    waiter = threading.Thread(target=lambda: exit_code.append(daemon.wait()), name="daemon-wait")
    waiter.start()
    run = Running(daemon, work / "inbox", config.output.journal, config.output.quarantine, errors, waiter,
                  exit_code)
    try:
        yield run
    finally:
        daemon.stop()
        waiter.join(60)
        logging.getLogger().removeHandler(errors)
    assert exit_code == [0], "the daemon did not stop cleanly"


# --- the files -----------------------------------------------------------------------------------

def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _claiming(fmt: str, width: int, height: int) -> bytes:
    """A small, complete-looking file whose header claims a `width` x `height` image."""
    if fmt == "png":
        ihdr = struct.pack(">IIBBBBB", width, height, 16, 6, 0, 0, 0)  # 16-bit RGBA: 8 bytes a pixel
        return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 512))
                + _png_chunk(b"IEND", b""))
    if fmt == "jpg":
        sof = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, height, width, 3) + b"\x01\x22\x00\x02\x11\x01\x03\x11\x01"
        scan = b"\xff\xda\x00\x0c\x03\x01\x00\x02\x11\x03\x11\x00\x3f\x00" + b"\0" * 64
        return b"\xff\xd8" + sof + scan + b"\xff\xd9"
    if fmt == "bmp":
        info = struct.pack("<IiiHHIIiiII", 40, width, -height, 1, 24, 0, 0, 2835, 2835, 0, 0)
        pixels = b"\0" * 64
        return b"BM" + struct.pack("<IHHI", 14 + len(info) + len(pixels), 0, 0, 14 + len(info)) + info + pixels
    # TIFF: width, height, 8 bits, 3 samples, uncompressed, strip at 8 bytes; no pixel data to speak of.
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 2),
               (273, 4, 1, 8), (277, 3, 1, 3), (278, 4, 1, height), (279, 4, 1, min(width * height * 3, 2**32 - 1))]
    ifd = struct.pack("<H", len(entries))
    for tag, kind, n, value in entries:
        inline = struct.pack("<I", value) if kind == 4 else struct.pack("<HH", value, 0)  # LONG or SHORT
        ifd += struct.pack("<HHI", tag, kind, n) + inline
    ifd += b"\0\0\0\0"  # no next directory
    return b"II*\x00" + struct.pack("<I", 8) + ifd


@st.composite
def _encoded(draw: st.DrawFn) -> bytes:
    """A valid encoding of a small random image, in a format and depth OpenCV writes."""
    fmt = draw(st.sampled_from([".png", ".jpg", ".bmp", ".tiff"]))
    depth = draw(st.sampled_from([np.uint8, np.uint16] if fmt in (".png", ".tiff") else [np.uint8]))
    channels = draw(st.sampled_from([1, 3, 4] if fmt != ".jpg" else [1, 3]))
    height, width = draw(st.integers(1, 48)), draw(st.integers(1, 48))
    shape = (height, width) if channels == 1 else (height, width, channels)
    image = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).integers(
        0, np.iinfo(depth).max, shape, dtype=depth, endpoint=True)
    ok, buf = cv2.imencode(fmt, image)
    assert ok
    return buf.tobytes()


@st.composite
def _damaged(draw: st.DrawFn) -> bytes:
    """A valid encoding cut short, or with some of its bytes overwritten (headers included)."""
    data = draw(_encoded())
    if draw(st.booleans()):
        return data[:draw(st.integers(0, len(data) - 1))]
    out = bytearray(data)
    for at, value in draw(st.lists(st.tuples(st.integers(0, len(data) - 1), st.integers(0, 255)),
                                   min_size=1, max_size=8)):
        out[at] = value
    return bytes(out)


# Claimed sizes: above MAX_DECODED, and either at most 2^22 pixels (a missed check would still allocate little)
# or above OpenCV's pixel limit (2^30, refused by OpenCV before it allocates).
_CLAIMED = st.tuples(st.sampled_from(["png", "jpg", "bmp", "tiff"]),
                     st.sampled_from([(2048, 2048), (4096, 1024), (1, 4_194_304), (65535, 65535), (40000, 30000)])
                     ).filter(lambda c: c[0] != "jpg" or max(c[1]) <= 65535)  # JPEG sizes are 16 bit

_CONTENT = st.one_of(
    st.binary(max_size=3000),
    _encoded(),
    _damaged(),
    st.just(b""),
    _CLAIMED.map(lambda c: _claiming(c[0], *c[1])),
)


@st.composite
def _files(draw: st.DrawFn) -> list[tuple[str, str, bytes]]:
    """(name after the token, extension, bytes) for 1 to 6 files."""
    return draw(st.lists(st.tuples(st.text(_NAME_CHARS, max_size=12), st.sampled_from(_EXTENSIONS), _CONTENT),
                         min_size=1, max_size=6))


# --- what became of them -----------------------------------------------------------------------------

def _verdicts(journal: Path) -> Counter:
    counts: Counter = Counter()
    if journal.exists():
        for line in journal.read_text().splitlines():
            record = json.loads(line)
            if "score" in record and record.get("path"):
                match = _TOKEN.match(Path(record["path"]).name)
                if match:
                    counts[int(match.group(1))] += 1
    return counts


def _quarantined(folder: Path) -> dict[int, list[str]]:
    """The reasons of the quarantine entries of each token, counted only once their reason file is there."""
    reasons: dict[int, list[str]] = {}
    source = folder / "line1"
    if source.exists():
        for path in source.iterdir():
            reason_file = path.with_name(path.name + ".reason.txt")
            if path.name.endswith(".reason.txt") or not reason_file.exists():
                continue
            match = _TOKEN.search(path.name)
            if match:
                reason = reason_file.read_text(errors="replace").partition("\n")[0].removeprefix("reason: ")
                reasons.setdefault(int(match.group(1)), []).append(reason)
    return reasons


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow, HealthCheck.data_too_large])
@given(files=_files())
def test_every_file_of_any_bytes_gets_one_verdict_or_one_quarantine_and_the_daemon_lives_on(running, files):
    wanted, ignored = {}, {}
    for rest, ext, data in files:
        running.counter += 1
        name = f"f{running.counter:06d}-{rest}{ext}"
        if len(name.encode()) > 255:
            name = f"f{running.counter:06d}-{ext}"
        path = running.inbox / name
        path.write_bytes(data)
        (wanted if path.suffix.lower() in IMAGE_EXTENSIONS else ignored)[running.counter] = path

    def accounted() -> bool:
        done = set(_verdicts(running.journal)) | set(_quarantined(running.quarantine))
        return set(wanted) <= done

    deadline = time.monotonic() + ACCOUNTED_TIMEOUT_S
    # An error record fails the example at once: waiting out the deadline would only slow the shrinking.
    while not accounted() and not running.errors.records and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.1)  # a second verdict or quarantine of the same file would show by now
    verdicts, quarantined = _verdicts(running.journal), _quarantined(running.quarantine)
    for token, path in wanted.items():
        outcome = (verdicts[token], len(quarantined.get(token, [])))
        assert outcome in ((1, 0), (0, 1)), f"{path.name!r}: {outcome[0]} verdicts, {outcome[1]} quarantine entries"
        assert path.exists() == (outcome == (1, 0))  # scored files stay, quarantined ones are moved
        event("verdict" if outcome == (1, 0) else f"quarantined: {quarantined[token][0]}")
    for token, path in ignored.items():
        assert (verdicts[token], len(quarantined.get(token, []))) == (0, 0) and path.exists(), \
            f"{path.name!r} was not ignored"
        event("ignored")
    errors = [f"{r.name} {r.getMessage()}" for r in running.errors.records]
    assert not errors, errors
    assert running.waiter.is_alive() and not running.daemon.sources.dead()
