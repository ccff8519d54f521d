"""The cyclic garbage collector kept off the objects that live as long as the daemon.

TensorFlow, Keras and the traced batch buckets leave about a million objects on the heap, and a full
(generation-2) collection walks every one of them with the interpreter lock held: 225-255 ms on the shipped
model, during which no thread of the pipeline runs. On a line scoring 10,000 files per second one came every few
seconds (the watch thread's allocations set it off) and cost a quarter of a second each time. `gc.freeze()` moves
every object that exists now into a permanent generation that collections skip, so a full collection walks only
what the line made since: 13-15 ms.

Frozen when the daemon starts (before any pipeline thread runs) and again once every batch bucket is traced. A
reload thaws it: the models and sources it replaced were frozen, and Keras models hold reference cycles, so they
would stay for as long as the daemon runs; the main loop freezes it again a little later, after one full pass that
frees them. The daemon thaws the heap when it stops, for a process (tests, benchmarks) that goes on without it.
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
