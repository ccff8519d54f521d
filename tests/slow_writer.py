"""Writes a file slowly, in chunks, keeping it open: a line camera's PC copying over a slow link.

usage: python slow_writer.py SRC DEST CHUNKS PAUSE_S
"""

import sys
import time
from pathlib import Path

src, dest, chunks, pause = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
data = src.read_bytes()
step = max(1, len(data) // chunks + 1)
with open(dest, "wb") as f:
    for start in range(0, len(data), step):
        f.write(data[start:start + step])
        f.flush()
        time.sleep(pause)
