"""What tiled scoring costs: images/s and tiles/s of the scorer on large images vs the bare model at the tile size.

A 64x64-input bundle is scored with `tiling: {scale: 1}` (the bundle's own tiling if it has one, else added in
memory: the cost depends on the model and the tile count, not on what the weights learned). Measured in one
run, on the same scorer:

- bare: the compiled forward pass on full batches of tile-sized inputs (`score_inputs`), img/s;
- tiled: `BatchScorer.score` (the daemon's call) on random gray images of 256x256, 1 MP (1280x800) and 5 MP
  (2592x1944): working image, tiles, shared fixed-shape batches, stitching; images/s, tiles/s, and tiles/s
  over the bare img/s, and the share of the time spent in the compiled forward pass (the rest is the tiling
  itself: preprocessing, copying tiles, padding the last batch's rows, stitching). Each size at the default
  stride (half a tile) and at stride = tile (no overlap).

The machine is shared: each tiled figure is compared with the bare rate measured right before and right after
it (their mean), so that a neighbour's load shifts both sides of the ratio alike.

Prints one JSON object, then a table.

usage: python benchmarks/tiling.py [--bundle models/default] [--max-batch 32] [--seconds 4] [--scale S]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from monitor.model.bundle import Bundle, load_bundle  # noqa: E402
from monitor.model.scorer import BatchScorer  # noqa: E402
from monitor.model.tiling import tile_grid, working_size  # noqa: E402

SIZES: dict[str, tuple[int, int]] = {"256x256": (256, 256), "1MP 1280x800": (800, 1280),
                                     "5MP 2592x1944": (1944, 2592)}


def with_tiling(bundle: Bundle, stride: tuple[int, int] | None, scale: float | None = None) -> Bundle:
    """The bundle with `tiling` at `scale` (else its own, else 1) and the given stride (None: half a tile)."""
    tiling = dict(bundle.meta.get("tiling") or {"scale": 1.0})
    tiling["scale"] = scale if scale is not None else tiling["scale"]
    tiling["stride"] = list(stride) if stride is not None else None
    return Bundle(bundle.path, bundle.model, {**bundle.meta, "tiling": tiling})


def bare_rate(scorer: BatchScorer, seconds: float) -> float:
    """Tile-sized inputs per second through full compiled batches."""
    b = scorer.bundle
    x = np.random.default_rng(0).random((scorer.max_batch, b.height, b.width, b.channels), dtype=np.float32)
    scorer.score_inputs(x)  # trace
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        scorer.score_inputs(x)
        n += len(x)
    return n / (time.perf_counter() - start)


def tiled_rate(scorer: BatchScorer, shape: tuple[int, int], seconds: float) -> dict:
    """Images/s and tiles/s of BatchScorer.score on random gray images of `shape`, images_per_call at a time."""
    rng = np.random.default_rng(1)
    b = scorer.bundle
    assert b.tiling is not None
    grid = tile_grid(*working_size(*shape, b.tiling.scale), (b.height, b.width), b.tile_stride)
    # Small images several per round (their tiles share batches, as in a daemon batch), a large one alone so
    # that a round stays within the measuring time; each round in the scorer's own call groups.
    count = min(scorer.max_batch, max(1, 1000 // len(grid)))
    images = [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(count)]
    scorer.score(images[:1])  # warm
    # Time inside the compiled forward pass, in the same run: its share of the whole is the tiled path's
    # efficiency, whatever the neighbours' load (the bare path spends nearly all its time there).
    forward, in_model = scorer._forward, [0.0]

    def timed(x: object) -> object:
        t = time.perf_counter()
        try:
            return forward(x)
        finally:
            in_model[0] += time.perf_counter() - t

    scorer._forward = timed
    n_images, n_tiles, start = 0, 0, time.perf_counter()
    try:
        while time.perf_counter() - start < seconds or n_images == 0:
            for part in scorer.call_groups(images):
                out = scorer.score(images[part])
                n_images += len(out)
                n_tiles += int(out.tiles.sum())
    finally:
        scorer._forward = forward
    elapsed = time.perf_counter() - start
    return {"tiles_per_image": len(grid), "stride": list(scorer.bundle.tile_stride),
            "images_per_s": n_images / elapsed, "tiles_per_s": n_tiles / elapsed,
            "seconds_per_image": elapsed / n_images, "model_share": in_model[0] / elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default=str(REPO / "models" / "default"))
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=4.0, help="measuring time per figure")
    parser.add_argument("--scale", type=float, default=None, help="working resolution (default: the bundle's, else 1)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    base = load_bundle(args.bundle)
    tile = (base.height, base.width)
    half = with_tiling(base, None, args.scale)
    whole = with_tiling(base, tile, args.scale)
    scorers = {"half": BatchScorer(half, args.max_batch), "none": BatchScorer(whole, args.max_batch)}
    bares = [bare_rate(scorers["half"], args.seconds / 2)]
    rows = {}
    for name, shape in SIZES.items():
        for overlap, scorer in scorers.items():
            figures = tiled_rate(scorer, shape, args.seconds)
            bares.append(bare_rate(scorers["half"], args.seconds / 2))
            figures["bare_img_per_s"] = (bares[-2] + bares[-1]) / 2
            figures["tiles_per_s_over_bare"] = figures["tiles_per_s"] / figures["bare_img_per_s"]
            rows[f"{name} overlap={overlap}"] = figures
    bare = float(np.median(bares))
    result = {
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "device": scorers["half"].device},
        "date": time.strftime("%Y-%m-%d"),
        "bundle": str(args.bundle), "tile": list(tile), "channels": base.channels, "score": base.score_name,
        "scale": half.tiling.scale, "max_batch": args.max_batch,
        "bare_model_img_per_s": bare, "bare_model_img_per_s_each": bares,
        "tiled": rows,
    }
    print(json.dumps(result, indent=2))
    print()
    print(f"bundle {args.bundle}: tile {tile[0]}x{tile[1]}x{base.channels}, score {base.score_name}, scale "
          f"{half.tiling.scale:g}, max_batch {args.max_batch}, device {result['machine']['device']}")
    print(f"bare model at the tile size: {bare:9.1f} img/s (median of {len(bares)} runs, "
          f"{min(bares):.1f} to {max(bares):.1f})")
    print(f"{'image':<28} {'stride':>7} {'tiles/img':>9} {'img/s':>8} {'s/img':>8} {'tiles/s':>8} {'bare':>8} "
          f"{'ratio':>6} {'in model':>8}")
    for name, r in rows.items():
        stride = "x".join(map(str, r["stride"]))
        print(f"{name:<28} {stride:>7} {r['tiles_per_image']:>9} {r['images_per_s']:>8.2f} "
              f"{r['seconds_per_image']:>8.3f} {r['tiles_per_s']:>8.1f} {r['bare_img_per_s']:>8.1f} "
              f"{r['tiles_per_s_over_bare']:>6.2f} {r['model_share']:>8.0%}")


if __name__ == "__main__":
    main()
