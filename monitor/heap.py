"""The cyclic garbage collector kept off the objects that live as long as the daemon.

TensorFlow, Keras and the traced batch buckets leave about 320,000 objects on the heap of `monitor run` (the
shipped model), and a full (generation-2) collection walks every one of them with the interpreter lock held:
180 ms here, 225-255 ms in the benchmark's process, during which no thread of the pipeline runs. On a line
scoring 10,000 files per second the line's own allocations set one off every few seconds. `gc.freeze()` moves
every object that exists now into a permanent generation that collections skip: a full collection then walks
only what the line made since (13-15 ms in the benchmark; under 1 ms on an idle daemon).

Frozen when the daemon starts (before any pipeline thread runs) and again once every batch bucket is traced. A
reload that replaces a model thaws it: the replaced model was frozen, and Keras models hold reference cycles, so it
would stay for as long as the daemon runs; the main loop freezes the heap again a little later, after one full
pass that frees it (a pause as long as the automatic collection it stands for; seconds in a loaded test process
that holds 1.7 million objects). The daemon thaws the heap when it stops, for a process (tests, benchmarks)
that goes on without it.
"""

from __future__ import annotations

import gc
import logging
import time

log = logging.getLogger(__name__)


def freeze(reason: str) -> None:
    """Collect what is garbage now and exempt everything left from later collections."""
    start = time.perf_counter()
    found = gc.collect()
    gc.freeze()
    log.info("heap_frozen reason=%s objects=%d collected=%d seconds=%.3f", reason, gc.get_freeze_count(), found,
             time.perf_counter() - start)


def thaw() -> None:
    """Give every frozen object back to the collector."""
    gc.unfreeze()
