"""The models the daemon scores with: each config name's bundle, its content identity and its warmed scorer.

A model is loaded and its compiled forward pass traced before any frame reaches it, so a reload can build
the new set beside the running one (the scorer thread goes on with the old set meanwhile) and swap it in
between two batches; the first real batch after the swap does not wait for a trace.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from monitor.model.bundle import Bundle, bundle_identity, load_bundle
from monitor.model.scorer import BatchScorer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    """One named model ready to score: what verdicts and metrics name it by, and what scores with it."""

    name: str  # the key of the config's `models:` (`default` for `model:`)
    path: Path
    identity: str  # bundle_identity: changes when any of the bundle's files changes
    bundle: Bundle
    scorer: BatchScorer
    default_threshold: float  # the bundle's calibrated threshold: the reference of threshold_ratio


def warm(scorer: BatchScorer, bundle: Bundle, all_buckets: bool = True) -> None:
    """Trace and run the forward pass of every batch bucket (1, 4, 16, ..., max_batch) once, so that no real
    batch waits for a trace: traced lazily, the first batch of each size stalled the line for about 0.2 s
    (a p99 latency of 276 ms instead of 126 ms in `make bench`'s latency run).

    `all_buckets` False: max_batch alone, and the scorer is marked `warming`; whoever asked for that runs
    `warm_rest` on a thread of its own (the daemon at start: READY=1 comes a few tenths of a second sooner,
    and a small batch meanwhile pads to max_batch instead of waiting for its trace).

    With another backend the conversion already happened in BatchScorer; this first inference pays the
    backend's own first-call costs (memory, kernel selection) before a real frame does.
    """
    if scorer.backend != "tensorflow":
        sizes: tuple[int, ...] = (1,)
    else:
        sizes = scorer.buckets if all_buckets else (scorer.max_batch,)
        scorer.warming = not all_buckets
    for size in sizes:
        scorer.score_inputs(np.zeros((size, bundle.height, bundle.width, bundle.channels), np.float32))


def warm_rest(models: Mapping[str, LoadedModel], stop: threading.Event) -> None:
    """Warm the buckets `warm(..., all_buckets=False)` left, model after model; each scorer stops `warming`."""
    for model in models.values():
        scorer = model.scorer
        if not scorer.warming:
            continue
        try:
            scorer.warm_buckets(scorer.buckets, stop)
        finally:
            scorer.warming = False


def load_model(name: str, path: Path, max_batch: int, bundle: Bundle | None = None, backend: str = "tensorflow",
               threads: int | None = None, all_buckets: bool = True) -> LoadedModel:
    """Load (unless `bundle` is given), identify and warm one model; BundleError says why it cannot be used.

    backend, threads: `scoring.backend` and `scoring.threads` (BatchScorer). all_buckets: see `warm`.

    The identity is read before the bundle: a file replaced in between gives an identity that differs from
    the next reload's, which then loads it again (never the reverse: old content under a new identity).
    """
    identity = bundle_identity(path)
    bundle = bundle if bundle is not None else load_bundle(path)
    scorer = BatchScorer(bundle, max_batch, backend=backend, threads=threads)
    warm(scorer, bundle, all_buckets)
    log.info("model_ready model=%s model_id=%s bundle=%s device=%s backend=%s", name, identity, path,
             scorer.device.replace(" ", ""), scorer.backend)
    return LoadedModel(name=name, path=Path(path), identity=identity, bundle=bundle, scorer=scorer,
                       default_threshold=float(bundle.default_threshold))


def load_models(paths: Mapping[str, Path], max_batch: int, running: Mapping[str, LoadedModel] | None = None,
                preloaded: Bundle | None = None, backend: str = "tensorflow",
                threads: int | None = None, all_buckets: bool = True) -> dict[str, LoadedModel]:
    """Every model of `paths`; one of `running` with the same name, folder, identity, batch size and backend is
    reused, and `preloaded` serves the models whose folder it was loaded from.

    backend, threads: the config's `scoring:` section, for every model. all_buckets: see `warm`.

    BundleError (from the first model that cannot be used) leaves `running` untouched.
    """
    running = running or {}
    models: dict[str, LoadedModel] = {}
    for name, path in paths.items():
        old = running.get(name)
        if (old is not None and old.path == Path(path) and old.scorer.max_batch == max_batch
                and old.scorer.requested == (backend, threads)
                and old.identity == bundle_identity(path)):
            models[name] = old
            continue
        given = preloaded if preloaded is not None and Path(preloaded.path) == Path(path) else None
        models[name] = load_model(name, Path(path), max_batch, bundle=given, backend=backend, threads=threads,
                                  all_buckets=all_buckets)
    return models
