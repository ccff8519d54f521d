"""What `monitor train DIR` with no options costs on this machine, against the old fixed defaults.

The issue's cost target: under about 10 minutes on the 2-core CPU for about 600 images of 64x64, or 300 of
256x256; part512 shows what images at the top of the native working budget (512x512) cost. For each case the
script writes the images as PNG files (a user's folder), trains with no options (`TrainOptions()`) and with
the old defaults (`auto=False`), and scores 200 images through the daemon's path
(`BatchScorer.score`). It prints a table and one JSON object on the last line.

Run: .venv/bin/python benchmarks/training_cost.py [--only gravel64,part256] [--skip-old]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import protocols  # noqa: E402
from quality import write_folder  # noqa: E402

from monitor.model.scorer import BatchScorer  # noqa: E402
from monitor.training.options import TrainOptions  # noqa: E402
from monitor.training.train import train_bundle  # noqa: E402

CASES = {
    "gravel64": ("gravel", 600, "600 gray 64x64 crops of skimage.data.gravel()"),
    "gravel64x4000": ("gravel", 4000, "4,000 gray 64x64 crops of skimage.data.gravel() (a large folder)"),
    "part256": ("part256", 300, "300 gray 256x256 cast parts"),
    "part512": ("part256", 300, "300 gray 512x512 cast parts (the part256 part rendered at twice the size)"),
}
SCORED = 200  # images scored through the daemon's path after training


def case_images(case: str) -> tuple[np.ndarray, list[np.ndarray]]:
    """The case's training images and the images its scoring cost is measured on."""
    name, n, _ = CASES[case]
    if case == "part512":
        rng = np.random.default_rng([protocols.SEED, 512])
        parts = [protocols.render_part(rng, 512).image for _ in range(n + SCORED // 4)]
        return np.stack(parts[:n]), parts[n:] * 4
    protocol = protocols.build(name, counts=protocols.replace(protocols.FULL[name], train=n))
    return protocol.train, list(protocol.test.images[:SCORED])


def measure(case: str, options: TrainOptions, workdir: Path) -> dict:
    n = CASES[case][1]
    train, images = case_images(case)
    folder = workdir / case / "good"
    if not folder.is_dir():
        write_folder(train, folder)
    out = workdir / case / ("auto" if options.auto else "old")
    started = time.perf_counter()
    bundle = train_bundle(folder, out, options)
    train_s = time.perf_counter() - started
    scorer = BatchScorer(bundle, 32)
    scorer.score(images[:8])  # traced once, as the daemon does at start
    started = time.perf_counter()
    for part in scorer.call_groups(images):
        scorer.score(images[part])
    score_ms = (time.perf_counter() - started) / len(images) * 1000
    selection = bundle.meta["training"].get("selection") or {}
    return {"case": case, "images": n, "auto": options.auto, "train_s": round(train_s, 1),
            "score_ms_per_image": round(score_ms, 2), "chosen": selection.get("chosen", bundle.score_name),
            "tiling": bundle.tiling is not None, "input": f"{bundle.height}x{bundle.width}x{bundle.channels}"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated cases: " + ",".join(CASES))
    parser.add_argument("--skip-old", action="store_true", help="do not train the old defaults")
    args = parser.parse_args()
    cases = args.only.split(",") if args.only else list(CASES)
    rows = []
    with tempfile.TemporaryDirectory(prefix="training-cost-") as tmp:
        for case in cases:
            variants = [TrainOptions(quiet=True)] + ([] if args.skip_old else
                                                     [TrainOptions(quiet=True, auto=False, allow_degenerate=True)])
            for options in variants:
                print(f"training {case} auto={options.auto} ...", file=sys.stderr, flush=True)
                rows.append(measure(case, options, Path(tmp)))
    print(f"{'case':10} {'images':>6} {'settings':10} {'train s':>8} {'score ms/img':>13}  chosen")
    for r in rows:
        print(f"{r['case']:10} {r['images']:>6} {'no options' if r['auto'] else '--no-auto':10} {r['train_s']:>8} "
              f"{r['score_ms_per_image']:>13}  {r['chosen']} input {r['input']}{' tiled' if r['tiling'] else ''}")
    print(json.dumps({"benchmark": "training_cost", "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
