"""The models the daemon scores with: each config name's bundle, its content identity and its warmed scorer.

A model is loaded and its compiled forward pass traced before any frame reaches it, so a reload can build
the new set beside the running one (the scorer thread goes on with the old set meanwhile) and swap it in
between two batches; the first real batch after the swap does not wait for a trace.
"""

from __future__ import annotations

import logging
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


def warm(scorer: BatchScorer, bundle: Bundle) -> None:
    """Trace and run the forward pass of every batch bucket (1, 4, 16, ..., max_batch) once, so that no real
    batch waits for a trace: traced lazily, the first batch of each size stalled the line for about 0.2 s
    (a p99 latency of 276 ms instead of 126 ms in `make bench`'s latency run).

    With another backend the conversion already happened in BatchScorer; this first inference pays the
    backend's own first-call costs (memory, kernel selection) before a real frame does.
    """
    sizes = scorer.buckets if scorer.backend == "tensorflow" else (1,)
    for size in sizes:
        scorer.score_inputs(np.zeros((size, bundle.height, bundle.width, bundle.channels), np.float32))


def load_model(name: str, path: Path, max_batch: int, bundle: Bundle | None = None, backend: str = "tensorflow",
               threads: int | None = None) -> LoadedModel:
    """Load (unless `bundle` is given), identify and warm one model; BundleError says why it cannot be used.

    backend, threads: `scoring.backend` and `scoring.threads` (BatchScorer).

    The identity is read before the bundle: a file replaced in between gives an identity that differs from
    the next reload's, which then loads it again (never the reverse: old content under a new identity).
    """
    identity = bundle_identity(path)
    bundle = bundle if bundle is not None else load_bundle(path)
    scorer = BatchScorer(bundle, max_batch, backend=backend, threads=threads)
    warm(scorer, bundle)
    log.info("model_ready model=%s model_id=%s bundle=%s device=%s backend=%s", name, identity, path,
             scorer.device.replace(" ", ""), scorer.backend)
    return LoadedModel(name=name, path=Path(path), identity=identity, bundle=bundle, scorer=scorer,
                       default_threshold=float(bundle.default_threshold))


def load_models(paths: Mapping[str, Path], max_batch: int, running: Mapping[str, LoadedModel] | None = None,
                preloaded: Bundle | None = None, backend: str = "tensorflow",
                threads: int | None = None) -> dict[str, LoadedModel]:
    """Every model of `paths`; one of `running` with the same name, folder, identity, batch size and backend is
    reused, and `preloaded` serves the models whose folder it was loaded from.

    backend, threads: the config's `scoring:` section, for every model.

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
        models[name] = load_model(name, Path(path), max_batch, bundle=given, backend=backend, threads=threads)
    return models
