"""Log lines that untrusted text cannot split or forge.

File names, camera URLs, alert texts and exception messages come from outside: a file named
``"x.png\\n2030-01-01 00:00:00,000 ERROR monitor fake_event"`` must not add a line to the log, and one holding
``"\\x1b[2J"`` must not clear the operator's terminal. Escaping each value at each call site would miss one
sooner or later, so the daemon's log handler escapes the rendered line instead (`SafeFormatter`).

Escaped, as ``\\xNN`` or ``\\uNNNN``: C0 controls (newline, carriage return, tab, ESC ...), DEL, C1 controls,
the Unicode line and paragraph separators (U+2028, U+2029, which some viewers break lines at), the bidirectional
overrides and isolates (which make a terminal show text in another order than it was written), and lone
surrogates (how Python spells a file name's bytes that are not UTF-8; a UTF-8 stream refuses them).
Everything else passes unchanged, backslashes included, so a line with nothing to escape reads exactly as
it was logged. The price: a name holding a literal ``\\x0a`` reads like one holding a newline; the journal's
JSON keeps the exact name.
"""

from __future__ import annotations

import logging
import re

# One class of every character that is escaped; the others are kept as they are.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_UNSAFE_BUT_NEWLINE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
# Continuation lines of a traceback start with this, so a line that starts at column 0 always starts an event.
CONTINUATION = "  "


def _escape_one(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def escape_controls(text: str) -> str:
    """`text` on one line with no control characters: each one becomes ``\\xNN`` or ``\\uNNNN``."""
    if _UNSAFE.search(text) is None:
        return text  # the usual case: nothing to copy
    return _UNSAFE.sub(_escape_one, text)


def escape_block(text: str) -> str:
    """A multi-line text (a traceback) made safe to append to a log line.

    Its own newlines are kept, every other control character is escaped, and every line is indented by
    `CONTINUATION`: a hostile string inside an exception message may still start a new line, but never one
    that starts at column 0, where only events start.
    """
    if _UNSAFE_BUT_NEWLINE.search(text) is not None:
        text = _UNSAFE_BUT_NEWLINE.sub(_escape_one, text)
    return "\n".join(CONTINUATION + line for line in text.split("\n"))


class SafeFormatter(logging.Formatter):
    """A Formatter whose event line is always one line without control characters.

    The rendered line (time, level, logger, ``record.getMessage()``) is escaped with `escape_controls`;
    a traceback or stack keeps its line breaks and is indented (`escape_block`). The record is not changed,
    so other handlers (a test's caplog) see the message as it was logged.
    """

    def format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        line = escape_controls(self.formatMessage(record))
        # exc_text may have been set by another handler's formatter; it is escaped here all the same.
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        blocks = [record.exc_text] if record.exc_text else []
        if record.stack_info:
            blocks.append(self.formatStack(record.stack_info))
        for block in blocks:
            line += "\n" + escape_block(block.rstrip("\n"))
        return line
